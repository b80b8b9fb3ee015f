"""PyTorch twin of bench/train_step.c: eager fp32 LlamaForCausalLM, forward + backward +
AdamW, same shapes and thread count. Prints one table row (tokens/s, peak RSS)."""
import resource
import sys
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

a = [512, 8, 8, 8, 1024, 2048, 256, 4, 6]
for i, v in enumerate(sys.argv[1:10]):
    a[i] = int(v)
H, L, NH, KV, I, V, T, B, steps = a
threads = int(sys.argv[10]) if len(sys.argv) > 10 else torch.get_num_threads()
torch.set_num_threads(threads)
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=H, num_hidden_layers=L, num_attention_heads=NH,
                  num_key_value_heads=KV, intermediate_size=I, vocab_size=V,
                  max_position_embeddings=T, tie_word_embeddings=False)
model = LlamaForCausalLM(cfg).float()
model.config._attn_implementation = "eager"
opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-5,
                        weight_decay=0.1)
ids = torch.randint(0, V, (B, T))
total = 0.0
for s in range(steps + 1):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=False)
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    opt.step()
    if s > 0:
        total += time.perf_counter() - t0
nparams = sum(p.numel() for p in model.parameters())
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
print(f"| PyTorch {torch.__version__} eager fp32 | {threads} | {nparams/1e6:.2f}M | {B} x {T} | "
      f"{B*T*steps/total:.0f} | {rss:.0f} | {out.loss.item():.4f} |")
