"""Reference batch for core/data: the seed's InstructionDataset + collate_fn logic
(AnswerDotAI/fsdp_qlora train.py) run with transformers' Llama 3 tokenizer from
../shared/assets/tokenizers/llama3, on Orca-Math-style prompts.

  ids    = tokenizer.encode(prompt + response) + [eos]
  labels = ids with the first len(tokenizer.encode(prompt)) set to -100
  batch  = pad_sequence(..., padding_value=pad_token_id = eos)[:, :context_length],
           labels padded with -100, attention_mask padded with 0

Writes tests/fixtures/train/seed_batch_llama3.json with the library versions and this
command under "meta".

Run:  ~/.cache/qft-peers/bin/python tests/reference/batch_reference.py
"""
import json
import os
import platform

import tokenizers
import torch
import transformers
from torch.nn.utils.rnn import pad_sequence
from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOK_DIR = os.path.join(ROOT, "..", "shared", "assets", "tokenizers", "llama3")
OUT = os.path.join(ROOT, "tests", "fixtures", "train", "seed_batch_llama3.json")
CONTEXT_LENGTH = 64
TEMPLATE = "###Question:\n{question}\n###Answer:\n"

PAIRS = [
    ("Mia buys 7 comic books that cost $12 each and pays with a $100 bill. How much change does Mia get?",
     "The comic books cost 7 × 12 = 84 dollars.\nThe change is 100 - 84 = 16 dollars.\n#### 16"),
    ("What is 255 ÷ 3?", "255 ÷ 3 = 85.\n#### 85"),
    ("A bus drives at 47 miles per hour for 4 hours, then at 31 miles per hour for 5 hours. "
     "How many miles does it travel in all? Show every step of the working, and explain why "
     "each step follows from the one before it.",
     "First part: 47 × 4 = 188 miles.\nSecond part: 31 × 5 = 155 miles.\n"
     "In all: 188 + 155 = 343 miles.\n#### 343"),
    ("Zoe scored 85, 98 and 72 on three tests. What is Zoe's average score?",
     "The first two scores add up to 85 + 98 = 183.\nAll three add up to 183 + 72 = 255.\n"
     "The average is 255 ÷ 3 = 85.\n#### 85"),
    ("Ünïcödé naïve café: 3 + 4?", "  3 + 4 = 7 — easy.\n#### 7"),
    ("x", "y"),
]


def main():
    tok = AutoTokenizer.from_pretrained(TOK_DIR)
    tok.pad_token_id = tok.eos_token_id  # as the seed does
    rows = []
    for q, a in PAIRS:
        prompt = TEMPLATE.format(question=q)
        example = tok.encode(prompt + a)
        example.append(tok.eos_token_id)
        example = torch.tensor(example, dtype=torch.int64)
        plen = len(tok.encode(prompt))
        labels = example.clone()
        labels[:plen] = -100
        rows.append({"prompt": prompt, "response": a, "ids": example, "labels": labels,
                     "mask": torch.ones_like(example)})
    ids = pad_sequence([r["ids"] for r in rows], batch_first=True,
                       padding_value=tok.pad_token_id)[:, :CONTEXT_LENGTH]
    labels = pad_sequence([r["labels"] for r in rows], batch_first=True,
                          padding_value=-100)[:, :CONTEXT_LENGTH]
    mask = pad_sequence([r["mask"] for r in rows], batch_first=True,
                        padding_value=0)[:, :CONTEXT_LENGTH]
    data = {
        "meta": {
            "command": "~/.cache/qft-peers/bin/python tests/reference/batch_reference.py",
            "tokenizer": "../shared/assets/tokenizers/llama3",
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "context_length": CONTEXT_LENGTH,
        "pad_id": tok.pad_token_id,
        "prompts": [r["prompt"] for r in rows],
        "responses": [r["response"] for r in rows],
        "full_lengths": [int(r["ids"].numel()) for r in rows],
        "ids": ids.tolist(),
        "labels": labels.tolist(),
        "mask": mask.tolist(),
    }
    with open(OUT, "w") as f:
        json.dump(data, f, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {OUT}: batch {tuple(ids.shape)}, full lengths {data['full_lengths']}")


if __name__ == "__main__":
    main()
