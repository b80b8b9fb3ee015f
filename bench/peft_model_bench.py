"""PyTorch + PEFT rows of the model-level GPU table (bench/run_model_gpu.sh): tokens/s and
peak GPU memory of full finetuning, QLoRA and QDoRA on a random Llama of the given shape,
bf16, gradient checkpointing, AdamW, batch B x T tokens, one warm-up step, then timed
steps; one process builds the three models in turn.

  full (torch)            every parameter trains; bf16 parameters and bf16 AdamW state
                          (torch's AdamW keeps its state in the parameters' dtype)
  qlora (torch+peft+bnb)  the decoder's linears replaced by bitsandbytes Linear4bit (NF4,
                          block 64, double quantization, bf16 compute), then PEFT LoRA
                          r=16, alpha=32, dropout 0.05 on all 7 linears
  qdora (torch+peft+bnb)  the same with use_dora=True, dropout 0
  (without bitsandbytes the last two run on the dense bf16 model: their notes say so)

Prints markdown rows of the table run_model_gpu.sh prints:
  | train_type | layers | context | tokens/s | peak GPU MiB | notes |
and, with --go-file PATH, asks for the GPU a row at a time: before row i (from 0) it prints
READY i and waits for the file PATH.i, and after it prints DONE i. The bench script hands
the GPU to one run at a time, so a qft run that finished building its model while a
PyTorch row trained goes before the next PyTorch row rather than after all of them.

usage: peft_model_bench.py [--layers full=4,qlora=4,qdora=4] [--context 2048] [--batch 1]
         [--steps 3] [--hidden 4096 --inter 14336 --heads 32 --kv 8 --head-dim 128
          --vocab 128256 --rope-theta 500000] [--go-file PATH] [--dry-run]
--dry-run: on the CPU, a 2-layer tiny model (hidden 64, context 64, vocab 512), so the
script's code paths (bitsandbytes on the CPU when it runs there) can be checked anywhere.
--cpu-count: on the CPU at the full shape, two steps with the peak of live tensor bytes
counted by torch's MemTracker (every storage an op creates, the model's parameters and
buffers, the optimizer's state) plus the bitsandbytes quantization state, in place of
max_memory_allocated: the same kind of figure as qft's cpu_guard count, for a machine
without a GPU. The CPU's kernels are not the GPU's (bitsandbytes dequantizes through
torch ops there, SDPA takes its CPU flash kernel), so the TEMP share may differ; the row
prints the breakdown at the peak.
"""
import argparse
import gc
import os
import sys
import time
import warnings

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LABEL = {"full": "full (torch)", "qlora": "qlora (torch+peft+bnb)",
         "qdora": "qdora (torch+peft+bnb)"}


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="full=4,qlora=4,qdora=4",
                    help="comma-separated TYPE=LAYERS (types: full, qlora, qdora)")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after 1 warm-up")
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--inter", type=int, default=14336)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--rope-theta", type=float, default=500000.0)
    ap.add_argument("--go-file", default=None)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--cpu-count", action="store_true")
    a = ap.parse_args()
    a.rows = []
    for item in a.layers.split(","):
        name, _, n = item.partition("=")
        if name not in LABEL or not n.isdigit() or int(n) < 1:
            ap.error("--layers: %r is not TYPE=LAYERS with TYPE in full, qlora, qdora" % item)
        a.rows.append((name, int(n)))
    if a.dry_run:
        a.hidden, a.inter, a.heads, a.kv, a.head_dim = 64, 128, 4, 2, 16
        a.vocab, a.context = 512, 64
        a.rows = [(name, 2) for name, _ in a.rows]
    return a


def row(ttype, layers, context, tps, peak, notes):
    print("| %s | %s | %s | %s | %s | %s |" % (ttype, layers, context, tps, peak, notes),
          flush=True)


def quantize_linears(model, bnb, device):
    """Every decoder nn.Linear -> bnb Linear4bit, quantized where `device` is (NF4, block
    64, double quantization, bf16 compute): what BitsAndBytesConfig(load_in_4bit,
    bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=
    bfloat16) loads, made from a random model instead of a checkpoint."""
    import torch
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, lin in list(parent.named_children()):
                if not isinstance(lin, torch.nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False,
                                      compute_dtype=torch.bfloat16, quant_type="nf4",
                                      compress_statistics=True, quant_storage=torch.uint8,
                                      device="meta")
                q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False,
                                             quant_type="nf4", compress_statistics=True,
                                             blocksize=64, quant_storage=torch.uint8,
                                             module=q)
                q.weight = q.weight.to(device)  # quantizes (the dense rows are dropped)
                if getattr(q.weight, "quant_state", None) is None:
                    raise RuntimeError("bitsandbytes did not quantize %s" % name)
                setattr(parent, name, q)
                del lin


def quant_state_tensors(model):
    """The tensors of every Params4bit's quantization state (absmax, code, the nested
    state's), which are neither parameters nor buffers: MemTracker sees only what it is
    given or what an op creates."""
    import torch
    out, seen = [], set()

    def walk(qs):
        if qs is None or id(qs) in seen:
            return
        seen.add(id(qs))
        for v in vars(qs).values():
            if isinstance(v, torch.Tensor):
                out.append(v)
            elif hasattr(v, "absmax"):  # the nested QuantState
                walk(v)

    for p in model.parameters():
        walk(getattr(p, "quant_state", None))
    return out


def run_one(a, ttype, layers, device, versions, bnb):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=a.hidden, intermediate_size=a.inter,
                      num_hidden_layers=layers, num_attention_heads=a.heads,
                      num_key_value_heads=a.kv, head_dim=a.head_dim, vocab_size=a.vocab,
                      rope_theta=a.rope_theta, max_position_embeddings=max(a.context, 8192),
                      tie_word_embeddings=False)
    notes = []
    on_gpu = device.type == "cuda"
    t0 = time.perf_counter()
    with torch.device(device):
        model = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16)
    if ttype != "full":
        if bnb is not None:
            quantize_linears(model, bnb, device)
            # what transformers' bnb loader sets, and what PEFT reads to pick its 4-bit
            # LoRA/DoRA layers (peft.tuners.lora.bnb) over the plain ones
            model.is_loaded_in_4bit = True
            notes.append("bnb NF4 (block 64, double quant), bf16 compute")
        else:
            notes.append("bitsandbytes absent: LoRA/DoRA on the dense bf16 model")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if ttype != "full":
        from peft import LoraConfig, get_peft_model
        pc = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05 if ttype == "qlora" else 0.0,
                        target_modules=TARGETS, use_dora=ttype == "qdora",
                        task_type="CAUSAL_LM")
        model = get_peft_model(model, pc)
        adapted = [m for m in model.modules() if hasattr(m, "lora_A")]
        kinds = sorted({type(m).__module__.rsplit(".", 1)[-1] + "." + type(m).__name__
                        for m in adapted})
        notes.append("%d adapted linears (%s)" % (len(adapted), ", ".join(kinds)))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.0)
    build_s = time.perf_counter() - t0
    if on_gpu:
        # the peak of training (weights resident, as in qft's figure), not of the dense
        # bf16 linears that existed before quantization
        torch.cuda.reset_peak_memory_stats()
    g = torch.Generator(device="cpu").manual_seed(42)
    ids = torch.randint(0, a.vocab, (a.batch, a.context), generator=g).to(device)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    def sync():
        if on_gpu:
            torch.cuda.synchronize()

    if a.cpu_count:
        from torch.distributed._tools.mem_tracker import MemTracker
        mt = MemTracker()
        mt.track_external(model, opt)

        class NoHook:  # stands for the gradient hooks frozen parameters cannot take
            def remove(self):
                pass

        # MemTracker hooks every parameter of a module it enters for its gradient; frozen
        # ones (the base, and parameter objects bitsandbytes makes afresh) cannot take a
        # hook, so each is given a stand-in first
        track = mt._track_module_params_and_buffers

        def track_frozen_too(module, install_grad_hooks=True):
            for p in module.parameters():
                if not p.requires_grad and mt._param_to_grad_hook_handles.get(p) is None:
                    mt._param_to_grad_hook_handles[p] = (NoHook(), NoHook())
            return track(module, install_grad_hooks)

        mt._track_module_params_and_buffers = track_frozen_too
        # the quantization state is static: its bytes are added (MemTracker hooks only
        # tensors that take gradients)
        qs_bytes = sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                        for t in quant_state_tensors(model)}.values())
        t1 = time.perf_counter()
        with mt:
            for i in range(2):  # the first allocates the optimizer's state
                if i:
                    mt.reset_mod_stats()
                loss = step()
        timed, dt = 2, time.perf_counter() - t1
        snap = mt.get_tracker_snapshot("peak")[torch.device("cpu")]
        total = snap.pop("Total") + qs_bytes
        peak = "%.0f (counted on the CPU)" % (total / 2**20)
        notes.append("bitsandbytes quantization state %.0f MiB" % (qs_bytes / 2**20))
        notes.append("at the peak: " + ", ".join(
            "%s %.0f MiB" % (str(k).rsplit(".", 1)[-1].lower(), v / 2**20)
            for k, v in snap.items() if v))
    else:
        loss = step()  # warm-up: kernels chosen, optimizer state allocated
        sync()
        timed, t1 = a.steps, time.perf_counter()
        for _ in range(timed):
            loss = step()
        sync()
        dt = time.perf_counter() - t1
        peak = "%.0f" % (torch.cuda.max_memory_allocated() / 2**20) if on_gpu else "n/a (cpu)"
    tps = a.batch * a.context * timed / dt
    notes += ["%.2fM trainable" % (n_train / 1e6), "%.3f s/step" % (dt / timed),
              "loss %.3f" % float(loss), "build %.1f s" % build_s,
              "bf16 storage, SDPA attention, gradient checkpointing, AdamW"]
    if a.dry_run:
        notes.append("DRY RUN on the CPU, tiny shape")
    elif a.cpu_count:
        notes.append("on the CPU, tokens/s not comparable")
    notes.append(versions)
    row(LABEL[ttype], layers, a.context, "%.0f" % tps, peak, "; ".join(notes))
    del model, opt, params, ids, loss
    gc.collect()
    if on_gpu:
        torch.cuda.empty_cache()


def main():
    a = parse_args()
    warnings.filterwarnings("ignore")
    try:
        import peft
        import torch
        import transformers
    except Exception as e:  # noqa: BLE001 - any import failure means: no comparison here
        print("PyTorch + PEFT rows skipped: python %s cannot import torch, transformers and "
              "peft (%s: %s)" % (sys.executable, type(e).__name__, e), flush=True)
        return 0
    if not a.dry_run and not a.cpu_count and not torch.cuda.is_available():
        print("PyTorch + PEFT rows skipped: torch %s sees no CUDA device" % torch.__version__,
              flush=True)
        return 0
    try:
        import bitsandbytes as bnb
        bnb_v = "bitsandbytes %s" % bnb.__version__
    except Exception as e:  # noqa: BLE001
        bnb, bnb_v = None, "no bitsandbytes (%s)" % type(e).__name__
    versions = "torch %s, transformers %s, peft %s, %s" % (
        torch.__version__, transformers.__version__, peft.__version__, bnb_v)
    device = torch.device("cpu" if a.dry_run or a.cpu_count else "cuda")
    torch.manual_seed(0)
    rc = 0
    for i, (ttype, layers) in enumerate(a.rows):
        if a.go_file:  # this row's GPU turn
            print("READY %d" % i, flush=True)
            while not os.path.exists("%s.%d" % (a.go_file, i)):
                time.sleep(0.05)
        try:
            run_one(a, ttype, layers, device, versions, bnb)
        except Exception as e:  # noqa: BLE001 - one row's failure must not hide the others
            rc = 1
            msg = str(e).splitlines()[0][:200] if str(e) else ""
            row(LABEL[ttype], layers, a.context, "failed", "-",
                "%s: %s; %s" % (type(e).__name__, msg, versions))
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if a.go_file:
            if device.type == "cuda":
                torch.cuda.synchronize()  # nothing of this row left on the GPU
            print("DONE %d" % i, flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
