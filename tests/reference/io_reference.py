#!/usr/bin/env python3
"""Fixtures for core/io (safetensors and Hugging Face Llama folders).

Generate (writes tests/fixtures/io/):
    ~/.cache/qft-peers/bin/python tests/reference/io_reference.py

  py_tensors.safetensors   tensors written by Python's safetensors in F32, BF16, F16, I64,
                           I32 (odd shapes, a 0-d scalar, an empty tensor), with the
                           versions and this command in its __metadata__
  py_tensors.json          the same tensors' values (floats are the exact fp32 values)
  tiny_llama_f32/          LlamaForCausalLM(config).save_pretrained, fp32, untied head
  tiny_llama_bf16/         the same weights cast to bf16
  tiny_llama_tied_bf16/    tied embeddings, Llama 3 RoPE scaling, an eos list (bf16)
  tiny_llama_values.json   per-tensor checksums and sample values of the three models

Check a folder qft wrote (qft_hf_model_save) against one of the fixtures:
    ~/.cache/qft-peers/bin/python tests/reference/io_reference.py \
        --check-qft-dir DIR --against tests/fixtures/io/tiny_llama_f32 [--dtype bf16]
It opens DIR/model.safetensors with safetensors.safe_open, loads DIR with transformers'
AutoModelForCausalLM.from_pretrained, and compares every weight and a forward pass.
"""
import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import safetensors
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(ROOT, "tests", "fixtures", "io")
COMMAND = "~/.cache/qft-peers/bin/python tests/reference/io_reference.py"


def versions():
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
    }


def provenance():
    return {"command": COMMAND, "versions": versions()}


def flat_values(t):
    """Exact values as JSON numbers: fp32 values for floats (a double holds them exactly),
    Python ints for integers."""
    if t.dtype.is_floating_point:
        return [float(x) for x in t.float().reshape(-1).tolist()]
    return [int(x) for x in t.reshape(-1).tolist()]


def make_py_tensors():
    g = torch.Generator().manual_seed(20240611)
    tensors = {
        # odd shapes so a wrong stride or a transposed read shows up
        "f32.odd": torch.randn(3, 5, 7, generator=g),
        "bf16.odd": (3.0 * torch.randn(7, 3, generator=g)).to(torch.bfloat16),
        "f16.odd": torch.randn(5, 11, generator=g).to(torch.float16),
        # beyond 2^32 so a truncated read shows up
        "i64.ids": torch.randint(-(2**40), 2**40, (13,), generator=g, dtype=torch.int64),
        "i32.grid": torch.randint(-(2**30), 2**30, (4, 3), generator=g, dtype=torch.int32),
        "f32.scalar": torch.tensor(-2.75, dtype=torch.float32),
        "f16.empty": torch.zeros(2, 0, dtype=torch.float16),
        "layers.0.weight": torch.randn(2, 9, generator=g).to(torch.bfloat16),
    }
    meta = {"format": "pt", "qft_command": COMMAND, "qft_versions": json.dumps(versions())}
    path = os.path.join(OUT, "py_tensors.safetensors")
    save_file(tensors, path, metadata=meta)
    expect = {
        "_provenance": provenance(),
        "tensors": {
            name: {
                "dtype": {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
                          torch.int64: "I64", torch.int32: "I32"}[t.dtype],
                "shape": list(t.shape),
                "values": flat_values(t),
            }
            for name, t in tensors.items()
        },
    }
    with open(os.path.join(OUT, "py_tensors.json"), "w") as f:
        json.dump(expect, f, indent=1)
        f.write("\n")


TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256, intermediate_size=128)


def randomize_norms(model, seed):
    # transformers initialises RMSNorm weights to ones, which would hide an indexing error
    # in the loader; spread them around 1 instead.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))


def tensor_summary(t):
    v = t.float().reshape(-1).double().numpy()
    n = v.size
    # weighted sum: catches permuted or transposed reads that a plain sum would not
    w = (np.arange(n) % 97 + 1).astype(np.float64)
    g = np.random.default_rng(n)
    idx = sorted(set([0, n - 1, n // 2] + [int(i) for i in g.integers(0, n, 5)]))
    return {
        "shape": list(t.shape),
        "dtype": str(t.dtype).replace("torch.", ""),
        "sum": math.fsum(v.tolist()),
        "wsum": math.fsum((v * w).tolist()),
        "abs_wsum": math.fsum((np.abs(v) * w).tolist()),
        "samples": [[i, float(v[i])] for i in idx],
    }


def save_tiny(name, model, dtype):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    model.to(dtype).save_pretrained(d)
    with open(os.path.join(d, "qft_provenance.json"), "w") as f:
        json.dump(provenance(), f, indent=1)
        f.write("\n")
    summary = {}
    with safe_open(os.path.join(d, "model.safetensors"), framework="pt") as f:
        for k in sorted(f.keys()):
            summary[k] = tensor_summary(f.get_tensor(k))
    return summary


def make_tiny_models():
    torch.manual_seed(1234)
    cfg = transformers.LlamaConfig(**TINY)
    model = transformers.LlamaForCausalLM(cfg)
    randomize_norms(model, 99)
    values = {"_provenance": provenance(), "config": TINY, "models": {}}
    values["models"]["tiny_llama_f32"] = save_tiny("tiny_llama_f32", model, torch.float32)
    values["models"]["tiny_llama_bf16"] = save_tiny("tiny_llama_bf16", model, torch.bfloat16)

    torch.manual_seed(4321)
    cfg_t = transformers.LlamaConfig(
        **TINY, tie_word_embeddings=True, max_position_embeddings=4096,
        rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 1024},
        bos_token_id=1, eos_token_id=[7, 9], pad_token_id=3)
    tied = transformers.LlamaForCausalLM(cfg_t)
    randomize_norms(tied, 98)
    values["models"]["tiny_llama_tied_bf16"] = save_tiny("tiny_llama_tied_bf16", tied,
                                                         torch.bfloat16)
    with open(os.path.join(OUT, "tiny_llama_values.json"), "w") as f:
        json.dump(values, f, indent=1)
        f.write("\n")


def check_qft_dir(qdir, against, dtype):
    """Loads what qft wrote with the peers and compares it with the fixture it came from."""
    ok = True
    path = os.path.join(qdir, "model.safetensors")
    with safe_open(path, framework="pt") as f:
        keys = sorted(f.keys())
        meta = f.metadata()
        print(f"safe_open({path}): {len(keys)} tensors, metadata {meta}")
        with safe_open(os.path.join(against, "model.safetensors"), framework="pt") as g:
            ref_keys = sorted(g.keys())
            if keys != ref_keys:
                print(f"FAIL: tensor names differ: {set(keys) ^ set(ref_keys)}")
                ok = False
            for k in keys:
                a = f.get_tensor(k)
                b = g.get_tensor(k)
                if dtype == "bf16":
                    b = b.to(torch.bfloat16)
                if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
                    print(f"FAIL: {k}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}")
                    ok = False
    same_bytes = open(path, "rb").read() == open(os.path.join(against, "model.safetensors"),
                                                  "rb").read()
    print(f"model.safetensors byte-identical to the transformers-written fixture: {same_bytes}")
    cfg = transformers.AutoConfig.from_pretrained(qdir)
    ref_cfg = transformers.AutoConfig.from_pretrained(against)
    for key in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
                "tie_word_embeddings", "max_position_embeddings", "rope_parameters",
                "bos_token_id", "pad_token_id"]:
        a, b = getattr(cfg, key), getattr(ref_cfg, key)
        if a != b:
            print(f"FAIL: config {key}: qft {a!r} vs fixture {b!r}")
            ok = False
    print(f"config: dtype {cfg.dtype}, rope {cfg.rope_parameters}, eos {cfg.eos_token_id}")
    m = transformers.AutoModelForCausalLM.from_pretrained(qdir, dtype=torch.float32)
    r = transformers.AutoModelForCausalLM.from_pretrained(against, dtype=torch.float32)
    if dtype == "bf16":
        r = r.to(torch.bfloat16).to(torch.float32)
    ids = torch.tensor([[5, 17, 200, 3, 99, 1, 255, 42]])
    with torch.no_grad():
        la, lb = m(ids).logits, r(ids).logits
    diff = (la - lb).abs().max().item()
    print(f"from_pretrained forward: max |logits(qft dir) - logits(fixture)| = {diff:.3g}")
    if diff != 0.0:
        ok = False
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check-qft-dir")
    ap.add_argument("--against")
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    args = ap.parse_args()
    if args.check_qft_dir:
        return check_qft_dir(args.check_qft_dir, args.against, args.dtype)
    os.makedirs(OUT, exist_ok=True)
    make_py_tensors()
    make_tiny_models()
    for name in sorted(os.listdir(OUT)):
        p = os.path.join(OUT, name)
        size = sum(os.path.getsize(os.path.join(p, x)) for x in os.listdir(p)) if os.path.isdir(
            p) else os.path.getsize(p)
        print(f"{name}: {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
