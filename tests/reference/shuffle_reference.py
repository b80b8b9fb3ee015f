"""Reference for the dataset plugins' shuffle: `datasets.Dataset.shuffle(seed=s)` is
`numpy.random.default_rng(s).permutation(len(dataset))`, i.e. SeedSequence(s) -> PCG64 ->
Generator.permutation. This script records, from numpy itself:

  seedseq   the SeedSequence pool and generate_state words for a few seeds
  pcg64     the PCG64 state after seeding, raw next_uint64 / next_uint32 draws (through the
            bit generator's ctypes interface, so the 32-bit buffering is numpy's own) and one
            interleaved 32/64 sequence
  perms     permutations for several n and seeds: whole for n <= 1000, else the first and
            last 50 entries plus a checksum h = (h * 1000003 + p + 1) mod 2^64 over all p
  gsm8k / alpaca
            when ../shared/assets/datasets is present: the seed's rendered prompts for the
            first rows of the shuffled files (the seed's templates, as in fsdp_qlora train.py)

Writes tests/fixtures/data/shuffle_numpy.json with the library versions and this command
under "meta". When the `datasets` package is importable it also checks that
Dataset.shuffle(seed) gives the same order and records its version.

Run:  ~/.cache/qft-peers/bin/python tests/reference/shuffle_reference.py
"""
import json
import os
import platform
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "data", "shuffle_numpy.json")
SHARED = os.path.join(ROOT, "..", "shared", "assets", "datasets")
MASK64 = (1 << 64) - 1

ORCA = "###Question:\n{question}\n###Answer:\n"
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                "further context. Write a response that appropriately completes the request.\n\n"
                "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
ALPACA_NO_INPUT = ("Below is an instruction that describes a task. Write a response that "
                   "appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
                   "### Response:")


def checksum(perm):
    h = 0
    for p in perm.tolist():
        h = (h * 1000003 + p + 1) & MASK64
    return str(h)  # as a string: JSON readers differ on integers past 2^53


def seedseq_entry(seed):
    ss = np.random.SeedSequence(seed)
    return {"seed": str(seed),
            "pool": [int(x) for x in ss.pool],
            "state_u32_8": [int(x) for x in ss.generate_state(8, np.uint32)],
            "state_u64_4": [str(int(x)) for x in ss.generate_state(4, np.uint64)]}


def pcg64_entry(seed):
    st = np.random.PCG64(seed).state["state"]
    draws64 = np.random.PCG64(seed)
    c = draws64.ctypes
    u64 = [str(int(c.next_uint64(c.state))) for _ in range(6)]
    g32 = np.random.PCG64(seed)
    c = g32.ctypes
    u32 = [int(c.next_uint32(c.state)) for _ in range(7)]
    gm = np.random.PCG64(seed)
    c = gm.ctypes
    mixed = []
    for kind in ["32", "64", "32", "32", "64", "32"]:
        v = c.next_uint32(c.state) if kind == "32" else c.next_uint64(c.state)
        mixed.append([kind, str(int(v))])
    return {"seed": str(seed), "state_hex": "%032x" % st["state"], "inc_hex": "%032x" % st["inc"],
            "next_uint64": u64, "next_uint32": u32, "mixed": mixed}


def perm_entry(n, seed):
    perm = np.random.default_rng(seed).permutation(n)
    e = {"n": n, "seed": str(seed), "checksum": checksum(perm)}
    if n <= 1000:
        e["perm"] = perm.tolist()
    else:
        e["first"] = perm[:50].tolist()
        e["last"] = perm[-50:].tolist()
    return e, perm


def main():
    out = {"meta": {
        "generator": "tests/reference/shuffle_reference.py",
        "command": "~/.cache/qft-peers/bin/python tests/reference/shuffle_reference.py",
        "numpy": np.__version__, "python": platform.python_version(),
        "checksum": "h = (h * 1000003 + p + 1) mod 2^64 over the permutation, from h = 0",
    }}
    big_seed = (1 << 40) + 7  # two 32-bit entropy words
    out["seedseq"] = [seedseq_entry(s) for s in (42, 0, big_seed)]
    out["pcg64"] = [pcg64_entry(s) for s in (42, 0, big_seed)]
    perms = []
    keep = {}
    for seed in (42, 0):
        for n in (1, 2, 6, 10, 200, 1000, 7473, 200000):
            e, p = perm_entry(n, seed)
            perms.append(e)
            keep[(n, seed)] = p
    e, _ = perm_entry(1000, big_seed)
    perms.append(e)
    out["perms"] = perms

    try:
        import datasets
        for n, seed in ((10, 42), (7473, 42), (1000, 0)):
            ds = datasets.Dataset.from_dict({"i": list(range(n))}).shuffle(seed=seed)
            if ds["i"][:] != keep[(n, seed)].tolist():
                sys.exit("datasets.Dataset.shuffle(seed=%d) differs from numpy for n=%d" % (seed, n))
        out["meta"]["datasets"] = datasets.__version__
        # the peers venv lacks `datasets`; this run used a venv layered on it
        out["meta"]["command"] = ("~/.cache/qft-peers/bin/python -m venv --system-site-packages V && "
                                  "V/bin/pip install datasets && V/bin/python "
                                  "tests/reference/shuffle_reference.py")
        out["meta"]["datasets_check"] = "Dataset.shuffle(seed) == default_rng(seed).permutation(n) for n=10, 7473 (seed 42), 1000 (seed 0)"
    except ImportError:
        out["meta"]["datasets"] = "not installed; not cross-checked"

    gsm = os.path.join(SHARED, "gsm8k", "train.jsonl")
    if os.path.exists(gsm):
        with open(gsm, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
        perm = keep[(len(rows), 42)]
        out["gsm8k"] = {
            "file": "../shared/assets/datasets/gsm8k/train.jsonl", "rows": len(rows), "seed": 42,
            "first_indices": perm[:5].tolist(),
            "first_prompts": [ORCA.format_map(rows[i]) for i in perm[:3].tolist()],
            "first_responses": [rows[i]["answer"] for i in perm[:3].tolist()],
            # the validation pool of eval_holdout = 500 on a file this size: the last 500 rows
            "eval500_first_index": int(perm[len(rows) - 500]),
            "eval500_first_prompt": ORCA.format_map(rows[int(perm[len(rows) - 500])]),
        }
    alp = os.path.join(SHARED, "alpaca", "alpaca_200.json")
    if os.path.exists(alp):
        with open(alp, encoding="utf-8") as f:
            rows = json.load(f)

        def render(r):
            return (ALPACA_NO_INPUT if r.get("input", "") == "" else ALPACA_INPUT).format_map(r)

        with_input = next(i for i, r in enumerate(rows) if r.get("input", "") != "")
        perm = np.random.default_rng(42).permutation(len(rows))
        out["alpaca"] = {
            "file": "../shared/assets/datasets/alpaca/alpaca_200.json", "rows": len(rows),
            "row0_prompt": render(rows[0]), "row0_response": rows[0]["output"],
            "first_with_input": with_input, "with_input_prompt": render(rows[with_input]),
            "shuffled42_first_index": int(perm[0]), "shuffled42_first_prompt": render(rows[int(perm[0])]),
        }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print("wrote", OUT, os.path.getsize(OUT), "bytes")


if __name__ == "__main__":
    main()
