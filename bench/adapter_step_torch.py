"""PyTorch + PEFT twin of bench/adapter_step.c: one train_type's step time (forward +
backward + AdamW on the trainable tensors) on the same random Llama shape, eager fp32,
the same thread count, no gradient checkpointing.

usage: adapter_step_torch.py TRAIN_TYPE [steps [threads [rank [dropout]]]]
  full         every parameter trains
  lora, dora   PEFT LoraConfig(r, lora_alpha=16, target_modules = fsdp_qlora's "all":
               q, k, v, gate, up, down; use_dora for dora) on the dense fp32 model
  qlora, qdora the decoder's linears replaced by bitsandbytes Linear4bit (NF4, block 64,
               double quantization, fp32 compute, on the CPU), then the same PEFT config
               (PEFT's bnb.Linear4bit LoRA/DoRA layers); if bitsandbytes cannot run here,
               the line says so and falls back to PEFT on the dense model
Prints one machine-readable line:
  RESULT torch TYPE threads trainable total fastest_ms median_ms tokens_per_s rss_mib loss [note]
"""
import resource
import sys
import time
import warnings

import torch
from transformers import LlamaConfig, LlamaForCausalLM

warnings.filterwarnings("ignore")
ttype = sys.argv[1] if len(sys.argv) > 1 else "lora"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 5
threads = int(sys.argv[3]) if len(sys.argv) > 3 else torch.get_num_threads()
rank = int(sys.argv[4]) if len(sys.argv) > 4 else 64
dropout = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
torch.set_num_threads(threads)
torch.manual_seed(0)
H, L, NH, KV, I, V, T, B = 512, 8, 8, 8, 1024, 2048, 256, 4
cfg = LlamaConfig(hidden_size=H, num_hidden_layers=L, num_attention_heads=NH,
                  num_key_value_heads=KV, intermediate_size=I, vocab_size=V,
                  max_position_embeddings=T, tie_word_embeddings=False)
model = LlamaForCausalLM(cfg).float()
model.config._attn_implementation = "eager"
TARGETS = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]
note = ""


def quantize_linears(model):
    """Every decoder nn.Linear -> bitsandbytes Linear4bit (NF4, block 64, double quant)."""
    import bitsandbytes as bnb
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, lin in list(parent.named_children()):
                if not isinstance(lin, torch.nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False,
                                      compute_dtype=torch.float32, quant_type="nf4",
                                      compress_statistics=True, quant_storage=torch.uint8)
                q.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False,
                                             quant_type="nf4", compress_statistics=True,
                                             blocksize=64)
                q = q.to("cpu")  # quantizes
                assert getattr(q.weight, "quant_state", None) is not None
                setattr(parent, name, q)


if ttype in ("qlora", "qdora"):
    try:
        quantize_linears(model)
        x = torch.randn(2, 3, H)
        model.model.layers[0].self_attn.q_proj(x).sum()  # does a 4-bit product run here?
        note = "bnb-4bit-cpu"
    except Exception as e:  # noqa: BLE001 - report whatever stops bitsandbytes
        model = LlamaForCausalLM(cfg).float()
        model.config._attn_implementation = "eager"
        note = "bnb-unavailable-dense-fallback(%s)" % type(e).__name__
if ttype != "full":
    from peft import LoraConfig, get_peft_model
    pc = LoraConfig(r=rank, lora_alpha=16, lora_dropout=dropout, target_modules=TARGETS,
                    use_dora=ttype in ("dora", "qdora"), task_type="CAUSAL_LM")
    model = get_peft_model(model, pc)
model.train()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
ids = torch.randint(0, V, (B, T))
dt = []
for s in range(steps + 1):  # step 0 warms up
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=False)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    opt.step()
    if s > 0:
        dt.append(time.perf_counter() - t0)
dt.sort()
fastest, median = dt[0], dt[len(dt) // 2]
trainable = sum(p.numel() for p in params)
total = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in model.parameters())
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print("RESULT torch %s %d %d %d %.1f %.1f %.0f %.0f %.4f %s" % (
    ttype, threads, trainable, total, fastest * 1e3, median * 1e3, B * T / fastest, rss,
    out.loss.item(), note))
