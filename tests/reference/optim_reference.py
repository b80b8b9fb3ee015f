"""Reference fixtures for core/train: torch's AdamW and SGD (single-tensor path), torch's
clip_grad_norm_, and the seed's learning-rate schedules as transformers computes them.

Writes tests/fixtures/train/optim.json and tests/fixtures/train/schedule.json. Each file
records the library versions and the command that produced it under "meta".

Run:  ~/.cache/qft-peers/bin/python tests/reference/optim_reference.py
"""
import json
import math
import os
import platform
import sys

import numpy as np
import torch
import transformers
from transformers.optimization import (
    get_constant_schedule,
    get_cosine_with_min_lr_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "train")
COMMAND = "~/.cache/qft-peers/bin/python tests/reference/optim_reference.py"

# Two tensors, as a model's trainable set would be: the C side sees them as one flat
# buffer, so this also checks that per-tensor updates and norms equal flat ones.
SIZES = (500, 277)
N_STEPS = 5


def meta():
    return {
        "command": COMMAND,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def floats(t):
    # repr of a float32 widened to double is exact, so the C side recovers every bit.
    return [float(x) for x in t.detach().reshape(-1).to(torch.float32).numpy()]


def make_params(gen):
    return [torch.randn(n, generator=gen, dtype=torch.float32) for n in SIZES]


def make_grads(gen):
    out = []
    for s in range(N_STEPS):
        # Different scales per step, so the second moment sees a varied history.
        scale = [1.0, 0.3, 2.5, 0.05, 1.7][s]
        out.append([torch.randn(n, generator=gen, dtype=torch.float32) * scale for n in SIZES])
    return out


def run_optimizer(make_opt, params0, grads, lrs):
    params = [p.clone().requires_grad_(True) for p in params0]
    opt = make_opt(params)
    history = []
    for s in range(N_STEPS):
        for g in opt.param_groups:
            g["lr"] = lrs[s]
        for p, g in zip(params, grads[s]):
            p.grad = g.clone()
        opt.step()
        history.append(floats(torch.cat([p.detach() for p in params])))
    return history


def optim_fixture():
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(1234)
    params0 = make_params(gen)
    grads = make_grads(gen)
    flat_grads = [floats(torch.cat(g)) for g in grads]

    cases = []
    # The seed's AdamW: betas (0.9, 0.95), eps 1e-5, weight decay 0.1.
    lrs = [0.01, 0.02, 0.05, 0.03, 0.015]
    cases.append({
        "name": "adamw_seed", "kind": "adamw", "beta1": 0.9, "beta2": 0.95, "eps": 1e-5,
        "weight_decay": 0.1, "momentum": 0.0, "lr": lrs,
        "params": run_optimizer(lambda p: torch.optim.AdamW(
            p, lr=lrs[0], betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1, foreach=False),
            params0, grads, lrs)})
    # torch's defaults, where the lerp weight and bias corrections differ.
    lrs2 = [0.001, 0.003, 0.002, 0.004, 0.001]
    cases.append({
        "name": "adamw_default", "kind": "adamw", "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
        "weight_decay": 0.01, "momentum": 0.0, "lr": lrs2,
        "params": run_optimizer(lambda p: torch.optim.AdamW(
            p, lr=lrs2[0], betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, foreach=False),
            params0, grads, lrs2)})
    # beta1 = 0.3: lerp weight 0.7 takes torch's other lerp branch.
    lrs3 = [0.02, 0.02, 0.01, 0.01, 0.005]
    cases.append({
        "name": "adamw_low_beta1", "kind": "adamw", "beta1": 0.3, "beta2": 0.9, "eps": 1e-6,
        "weight_decay": 0.0, "momentum": 0.0, "lr": lrs3,
        "params": run_optimizer(lambda p: torch.optim.AdamW(
            p, lr=lrs3[0], betas=(0.3, 0.9), eps=1e-6, weight_decay=0.0, foreach=False),
            params0, grads, lrs3)})
    slrs = [0.1, 0.05, 0.02, 0.08, 0.03]
    cases.append({
        "name": "sgd_momentum_wd", "kind": "sgd", "beta1": 0.0, "beta2": 0.0, "eps": 0.0,
        "weight_decay": 0.1, "momentum": 0.9, "lr": slrs,
        "params": run_optimizer(lambda p: torch.optim.SGD(
            p, lr=slrs[0], momentum=0.9, weight_decay=0.1, foreach=False), params0, grads, slrs)})
    cases.append({
        "name": "sgd_plain", "kind": "sgd", "beta1": 0.0, "beta2": 0.0, "eps": 0.0,
        "weight_decay": 0.0, "momentum": 0.0, "lr": slrs,
        "params": run_optimizer(lambda p: torch.optim.SGD(
            p, lr=slrs[0], foreach=False), params0, grads, slrs)})

    clips = []
    for max_norm, scale in ((0.3, 1.0), (1.0, 0.01), (5.0, 0.2)):
        g = [t.clone() * scale for t in grads[0]]
        ps = [torch.zeros(n, requires_grad=True) for n in SIZES]
        for p, gi in zip(ps, g):
            p.grad = gi.clone()
        before = floats(torch.cat(g))
        total = torch.nn.utils.clip_grad_norm_(ps, max_norm, foreach=False)
        clips.append({"max_norm": max_norm, "grads": before, "total_norm": float(total),
                      "clipped": floats(torch.cat([p.grad for p in ps]))})

    return {"meta": meta(), "n": sum(SIZES), "tensor_sizes": list(SIZES),
            "params0": floats(torch.cat(params0)), "grads": flat_grads, "cases": cases,
            "clip": clips}


def schedule_fixture():
    cases = []
    base_lr = 1e-3
    for total in (10, 37, 100, 253):
        warm = int(total * 0.1)  # the seed's num_warmup_steps
        for kind in ("constant", "linear", "cosine"):
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.SGD([p], lr=base_lr)
            if kind == "constant":
                sch = get_constant_schedule(opt)
            elif kind == "linear":
                sch = get_linear_schedule_with_warmup(opt, warm, total)
            else:
                # The seed's get_cosine_one_cycle_scheduler(min_lr_fraction=0.1) is this
                # transformers schedule with num_cycles 0.5.
                sch = get_cosine_with_min_lr_schedule_with_warmup(
                    opt, warm, total, num_cycles=0.5, min_lr_rate=0.1)
            lrs = []
            for _ in range(total):
                lrs.append(sch.get_last_lr()[0])
                opt.step()
                sch.step()
            cases.append({"kind": kind, "total_steps": total, "warmup": 0.1,
                          "warmup_steps": warm if kind != "constant" else 0,
                          "min_lr_ratio": 0.1, "lr": base_lr, "lrs": lrs})
    return {"meta": meta(), "cases": cases}


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, data in (("optim.json", optim_fixture()), ("schedule.json", schedule_fixture())):
        path = os.path.join(OUT, name)
        with open(path, "w") as f:
            json.dump(data, f)
            f.write("\n")
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    sys.exit(main())
