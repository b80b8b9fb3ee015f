"""Reference fixtures for adapters/lora and adapters/dora: PEFT's own LoRA and DoRA layers
on small fp32 torch.nn.Linear bases, one forward and backward each, and the merged weight
PEFT's merge_and_unload gives.

Writes
  tests/fixtures/adapters/peft_linear.safetensors   one group of tensors per case:
      <case>.W      (out, in)  the frozen base weight
      <case>.A      (r, in)    lora_A (PEFT's kaiming-uniform init, seeded)
      <case>.B      (out, r)   lora_B, set to random non-zero values so every gradient is
                               non-trivial (PEFT initialises it to zero)
      <case>.m      (out)      DoRA's magnitude (PEFT's init, ||W|| per row, then scaled
                               by 1 + 0.1 N(0, 1) so that m / ||W + s B A|| is not ~1)
      <case>.x      (N, in)    the input
      <case>.dy     (N, out)   the output gradient fed to backward
      <case>.y      (N, out)   the layer's output
      <case>.dx     (N, in)    x.grad
      <case>.dA, <case>.dB, <case>.dm   the adapter gradients
      <case>.merged (out, in)  merge_and_unload()'s weight
      <case>.mask   (N, in)    dropout cases only: the keep mask (1 kept, 0 dropped)
    __metadata__: "cases" (JSON list of {name, in, out, r, N, alpha, rslora, dora, dropout,
    scale, and for dropout cases seed, step, micro, layer, module_name}), "versions",
    "command".

  tests/fixtures/adapters/llama_lora/ and llama_dora/: PEFT on the tiny transformers Llama
    of tests/fixtures/llama/untied (fp32, eager attention), dropout 0:
      adapter_config.json, adapter_model.safetensors   as PEFT's save_pretrained writes
                   them, the adapter's starting point (B random, m perturbed: see above)
      expected.safetensors   ids, labels, mask (the llama fixture's batch), logits, loss,
                   "grad." + every adapter tensor's file key (its gradient on that batch),
                   adamw_losses (AdamW on the adapter tensors only, same batch:
                   losses[k] before update k, the last after the fifth update) and
                   "final." + every key (the tensors after the five updates)
      GENERATED.json   versions, command and the LoraConfig used.
    llama_lora: r 4, alpha 8, targets q,k,v,gate,up,down (fsdp_qlora's "all");
    llama_dora: r 4, alpha 8, rsLoRA, all seven linears, use_dora.

Dropout: PEFT draws its mask from torch's RNG, which qft cannot reproduce. qft draws it
from a counter-based hash of (seed, step, micro, layer, module name, element index) so
that recomputation repeats it; this script computes that same mask (keep_mask below, the
hash adapters/common/ad_dropout.c implements) and hands it to PEFT as the layer's dropout
module, so PEFT's DoRA-with-dropout formula (the base product computed a second time on
the dropped input) is checked on the very mask qft applies.

Run:  ~/.cache/qft-peers/bin/python tests/reference/peft_reference.py
"""
import copy
import json
import os
import platform

import numpy
import peft
import safetensors
import torch
import torch.nn as nn
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "adapters")
COMMAND = "~/.cache/qft-peers/bin/python tests/reference/peft_reference.py"
VERSIONS = {
    "peft": peft.__version__,
    "torch": torch.__version__,
    "safetensors": safetensors.__version__,
    "numpy": numpy.__version__,
    "python": platform.python_version(),
}

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def mix64(z):
    """splitmix64's finaliser."""
    z &= M64
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & M64
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & M64
    z ^= z >> 31
    return z


def fnv1a64(s):
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & M64
    return h


def keep_mask(seed, step, micro, layer, name, n, d, p):
    """The (n, d) keep mask qft's dropout draws for this call (see ad_dropout.c)."""
    k = mix64(seed + GOLDEN)
    k = mix64(k ^ (step & M64))
    k = mix64(k ^ (micro & M64))
    k = mix64(k ^ (layer & M64))
    k = mix64(k ^ fnv1a64(name))
    thr = int(p * 16777216.0 + 0.5)
    out = numpy.empty(n * d, dtype=numpy.float32)
    for i in range(n * d):
        h = mix64(k + (i + 1) * GOLDEN)
        out[i] = 1.0 if (h >> 40) >= thr else 0.0
    return torch.from_numpy(out.reshape(n, d))


class FixedDropout(nn.Module):
    """Inverted dropout with a given keep mask, as nn.Dropout applies its own."""

    def __init__(self, mask, p):
        super().__init__()
        self.mask = mask
        self.p = p

    def forward(self, x):
        return x * self.mask / (1.0 - self.p)


class One(nn.Module):
    def __init__(self, d_in, d_out):
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x):
        return self.proj(x)


def run_case(name, *, d_in, d_out, r, n, alpha, rslora, dora, dropout, seed, tensors, cases):
    torch.manual_seed(seed)
    base = One(d_in, d_out)
    with torch.no_grad():
        base.proj.weight.copy_(torch.randn(d_out, d_in) * 0.2)
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], lora_dropout=dropout,
                          use_dora=dora, use_rslora=rslora)
    model = peft.get_peft_model(base, cfg)
    layer = model.base_model.model.proj
    scale = layer.scaling["default"]
    with torch.no_grad():
        layer.lora_B["default"].weight.copy_(torch.randn(d_out, r) * 0.3)
        if dora:
            mv = layer.lora_magnitude_vector["default"].weight
            mv.mul_(1.0 + 0.1 * torch.randn(d_out))
    meta = {"name": name, "in": d_in, "out": d_out, "r": r, "N": n, "alpha": alpha,
            "rslora": rslora, "dora": dora, "dropout": dropout, "scale": scale}
    mask = None
    if dropout > 0:
        st = {"seed": 42 + seed, "step": 7, "micro": 1, "layer": 3,
              "module_name": "model.layers.3.self_attn.q_proj"}
        mask = keep_mask(st["seed"], st["step"], st["micro"], st["layer"], st["module_name"],
                         n, d_in, dropout)
        layer.lora_dropout["default"] = FixedDropout(mask, dropout)
        meta.update(st)
    model.train()
    x = torch.randn(n, d_in, requires_grad=True)
    dy = torch.randn(n, d_out)
    y = layer(x)
    y.backward(dy)
    A = layer.lora_A["default"].weight
    B = layer.lora_B["default"].weight
    t = {"W": layer.base_layer.weight, "A": A, "B": B, "x": x, "dy": dy, "y": y,
         "dx": x.grad, "dA": A.grad, "dB": B.grad}
    if dora:
        mv = layer.lora_magnitude_vector["default"].weight
        t["m"] = mv
        t["dm"] = mv.grad
    if mask is not None:
        t["mask"] = mask
    merged = copy.deepcopy(model).merge_and_unload()
    t["merged"] = merged.proj.weight
    for k, v in t.items():
        tensors[f"{name}.{k}"] = v.detach().float().contiguous().clone()
    cases.append(meta)


LLAMA_DIR = os.path.join(ROOT, "tests", "fixtures", "llama", "untied")
ADAMW = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
ADAMW_STEPS = 5


def file_key(name):
    """A parameter's key in PEFT's adapter_model.safetensors (no adapter name; the
    magnitude without its .weight)."""
    name = name.replace(".default", "")
    if name.endswith("lora_magnitude_vector.weight"):
        name = name[: -len(".weight")]
    return name


def run_llama(variant, *, targets, dora, rslora, seed):
    from safetensors import safe_open
    from transformers import LlamaForCausalLM
    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(LLAMA_DIR, attn_implementation="eager",
                                             dtype=torch.float32)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets,
                          use_dora=dora, use_rslora=rslora, task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn_like(p) * 0.3)
            elif "lora_magnitude_vector" in n:
                p.mul_(1.0 + 0.1 * torch.randn_like(p))
    model.train()
    out_dir = os.path.join(OUT_DIR, variant)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    # the model card PEFT adds is noise here; the base path is made relative to the
    # repository root so the fixture does not name this machine's checkout
    card = os.path.join(out_dir, "README.md")
    if os.path.exists(card):
        os.remove(card)
    cfg_path = os.path.join(out_dir, "adapter_config.json")
    with open(cfg_path) as f:
        saved = json.load(f)
    saved["base_model_name_or_path"] = os.path.relpath(LLAMA_DIR, ROOT)
    with open(cfg_path, "w") as f:
        json.dump(saved, f, indent=2, sort_keys=True)
    with safe_open(os.path.join(LLAMA_DIR, "expected.safetensors"), "pt") as f:
        ids, labels, mask = (f.get_tensor(k).long() for k in ("ids", "labels", "mask"))
    params = {file_key(n): p for n, p in model.named_parameters() if p.requires_grad}
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    tensors = {"ids": ids.to(torch.int32), "labels": labels.to(torch.int32),
               "mask": mask.to(torch.int32), "logits": out.logits.detach().float().contiguous(),
               "loss": out.loss.detach().reshape(1).float()}
    for k, p in params.items():
        tensors["grad." + k] = p.grad.detach().float().contiguous().clone()
    opt = torch.optim.AdamW(list(params.values()), **ADAMW)
    losses = []
    for _ in range(ADAMW_STEPS):
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        losses.append(loss.item())
        loss.backward()
        opt.step()
    with torch.no_grad():
        losses.append(model(input_ids=ids, attention_mask=mask, labels=labels).loss.item())
    tensors["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)
    for k, p in params.items():
        tensors["final." + k] = p.detach().float().contiguous().clone()
    meta = {"command": COMMAND, "variant": variant, "seed": str(seed), "base": "tests/fixtures/llama/untied",
            "lora_config": json.dumps({"r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
                                       "target_modules": targets, "use_dora": dora,
                                       "use_rslora": rslora}),
            "adamw": json.dumps({"lr": ADAMW["lr"], "betas": list(ADAMW["betas"]), "eps": ADAMW["eps"],
                                 "weight_decay": ADAMW["weight_decay"], "steps": ADAMW_STEPS,
                                 "params": "adapter tensors only"}),
            "adamw_losses": "losses[k] = loss before update k (k < steps); last = after the last update",
            "attn_implementation": "eager", "versions": json.dumps(VERSIONS)}
    save_file(tensors, os.path.join(out_dir, "expected.safetensors"), metadata=meta)
    for fn in ("expected.safetensors", "adapter_model.safetensors"):
        os.chmod(os.path.join(out_dir, fn), 0o644)
    with open(os.path.join(out_dir, "GENERATED.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"{variant}: loss {out.loss.item():.6f}, adamw {['%.6f' % l for l in losses]}, "
          f"{len(params)} adapter tensors")


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    torch.set_num_threads(1)
    tensors, cases = {}, []
    common = dict(d_in=37, d_out=29, r=4, n=11, alpha=8)
    run_case("lora", rslora=False, dora=False, dropout=0.0, seed=1, tensors=tensors, cases=cases, **common)
    run_case("lora_rs", rslora=True, dora=False, dropout=0.0, seed=2, tensors=tensors, cases=cases, **common)
    run_case("dora", rslora=False, dora=True, dropout=0.0, seed=3, tensors=tensors, cases=cases, **common)
    run_case("dora_rs", rslora=True, dora=True, dropout=0.0, seed=4, tensors=tensors, cases=cases, **common)
    run_case("lora_drop", rslora=False, dora=False, dropout=0.3, seed=5, tensors=tensors, cases=cases, **common)
    run_case("dora_drop", rslora=False, dora=True, dropout=0.3, seed=6, tensors=tensors, cases=cases, **common)
    # a wider rank and other shapes, so that no dimension is a multiple of another
    run_case("dora_r8", d_in=50, d_out=67, r=8, n=13, alpha=16, rslora=False, dora=True,
             dropout=0.0, seed=7, tensors=tensors, cases=cases)
    path = os.path.join(OUT_DIR, "peft_linear.safetensors")
    save_file(tensors, path, metadata={"cases": json.dumps(cases), "versions": json.dumps(VERSIONS),
                                       "command": COMMAND})
    os.chmod(path, 0o644)
    print(f"wrote {path}: {len(cases)} cases, {len(tensors)} tensors")
    run_llama("llama_lora", targets=["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
              dora=False, rslora=False, seed=11)
    run_llama("llama_dora", targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                     "down_proj"], dora=True, rslora=True, seed=12)


if __name__ == "__main__":
    main()
