#!/usr/bin/env python3
"""Compares two `qft train` output folders: the losses in metrics.jsonl and every tensor of
model/model.safetensors (f32 saves), or of adapter/adapter_model.safetensors when the runs
saved an adapter (always f32). Standard library only, for GPU machines without numpy.

Usage: compare_runs.py A B [--loss-rel 1e-3] [--tensor-rel 1e-2]
Prints the worst relative differences; exits 1 when a tolerance is exceeded, and also when
a loss or a tensor value is not finite or two tensors differ in size (NaN compares as no
difference, and zip stops at the shorter). Tensor differences are relative to the tensor's
largest magnitude (a norm-wise bound, as bf16 tolerances are meant), losses relative to the
loss."""
import json
import math
import os
import struct
import sys


def losses(d):
    with open(f"{d}/metrics.jsonl") as f:
        return [json.loads(line)["loss"] for line in f if line.strip()]


def tensors(d):
    # a run saves model/ (output.save = "model") or, for adapter train_types, adapter/
    path = f"{d}/model/model.safetensors"
    if not os.path.exists(path) and os.path.exists(f"{d}/adapter/adapter_model.safetensors"):
        path = f"{d}/adapter/adapter_model.safetensors"
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in head.items():
        if name == "__metadata__":
            continue
        if t["dtype"] != "F32":
            sys.exit(f"{d}: {name} is {t['dtype']}; save with output.save_dtype = \"f32\"")
        a, b = t["data_offsets"]
        out[name] = struct.unpack(f"<{(b - a) // 4}f", data[a:b])
    return out


def main():
    args = sys.argv[1:]
    loss_rel, tensor_rel = 1e-3, 1e-2
    if "--loss-rel" in args:
        i = args.index("--loss-rel"); loss_rel = float(args[i + 1]); del args[i:i + 2]
    if "--tensor-rel" in args:
        i = args.index("--tensor-rel"); tensor_rel = float(args[i + 1]); del args[i:i + 2]
    a, b = args
    la, lb = losses(a), losses(b)
    if len(la) != len(lb) or not la:
        sys.exit(f"{len(la)} and {len(lb)} steps logged")
    # metrics.jsonl writes a non-finite loss as null
    for d, ls in ((a, la), (b, lb)):
        for i, x in enumerate(ls):
            if x is None or not math.isfinite(x):
                sys.exit(f"{d}: the loss of step {i + 1} is not finite: FAILED")
    worst_loss = max(abs(x - y) / abs(x) for x, y in zip(la, lb))
    ta, tb = tensors(a), tensors(b)
    if ta.keys() != tb.keys():
        sys.exit(f"different tensors: {sorted(set(ta) ^ set(tb))[:5]}")
    worst_t, where = 0.0, ""
    for k in ta:
        if len(ta[k]) != len(tb[k]):
            sys.exit(f"{k}: {len(ta[k])} values in {a}, {len(tb[k])} in {b}: FAILED")
        for d, t in ((a, ta[k]), (b, tb[k])):
            i = next((i for i, v in enumerate(t) if not math.isfinite(v)), None)
            if i is not None:
                sys.exit(f"{d}: {k}[{i}] is {t[i]}: FAILED")
        scale = max(max(abs(v) for v in ta[k]), 1e-30)
        d = max(abs(x - y) for x, y in zip(ta[k], tb[k])) / scale
        if d > worst_t:
            worst_t, where = d, k
    ok = worst_loss <= loss_rel and worst_t <= tensor_rel
    worst = f"worst {worst_t:.2e} of the tensor's scale in {where}" if where else "all equal"
    print(f"{a} vs {b}: {len(la)} losses, worst relative {worst_loss:.2e} (limit {loss_rel:g}); "
          f"{len(ta)} tensors, {worst} (limit {tensor_rel:g}): {'ok' if ok else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
