#!/usr/bin/env python3
"""Peer of bench/tokenize_speed.c: Hugging Face tokenizers encoding every GSM8K question and
answer: encode() per text on one thread, and encode_batch() with RAYON_NUM_THREADS threads
(default 1; for the all-threads row set it to the core count and TOKENIZERS_PARALLELISM=true,
without which encode_batch stays on one thread), MB/s of UTF-8 input.
Usage: [RAYON_NUM_THREADS=N] ~/.cache/qft-peers/bin/python bench/tokenize_speed_peer.py [DIR [JSONL [REPEATS]]]"""
import json
import os
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import tokenizers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

d = sys.argv[1] if len(sys.argv) > 1 else "../shared/assets/tokenizers/llama3"
data = sys.argv[2] if len(sys.argv) > 2 else "../shared/assets/datasets/gsm8k/train.jsonl"
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 5
t0 = time.perf_counter()
tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
t_load = time.perf_counter() - t0
texts = []
with open(data, encoding="utf-8") as f:
    for line in f:
        r = json.loads(line)
        texts += [r["question"], r["answer"]]
mb = sum(len(s.encode()) for s in texts) / 1e6
threads = int(os.environ["RAYON_NUM_THREADS"])
print(f"| tokenizer | threads | texts | MB | ids | load s | best of {repeats} s | MB/s |")
for mode in ("encode", "encode_batch"):
    best = 1e30
    for _ in range(repeats):
        s = time.perf_counter()
        if mode == "encode":
            n = sum(len(tok.encode(x, add_special_tokens=False).ids) for x in texts)
        else:
            n = sum(len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False))
        best = min(best, time.perf_counter() - s)
    nt = 1 if mode == "encode" else threads  # encode() of one text runs on one thread
    print(f"| HF tokenizers {tokenizers.__version__} {mode} {d} | {nt} | {len(texts)} | "
          f"{mb:.2f} | {n} | {t_load:.2f} | {best:.3f} | {mb / best:.1f} |")
