#!/usr/bin/env python3
"""Reference fixtures for qft's Llama forward and backward.

Builds tiny random LlamaForCausalLM models with transformers (fp32, eager attention),
saves each as a Hugging Face folder under tests/fixtures/llama/<variant>/, and writes
expected.safetensors beside it: one fixed right-padded batch (ids, labels, mask), the
logits and loss of a forward pass, the gradient of every parameter ("grad." + HF name),
and the loss trajectory of torch.optim.AdamW on that same batch.

Run from the repository root:
    ~/.cache/qft-peers/bin/python tests/reference/llama_reference.py
"""
import json
import os
import sys

import numpy as np
import safetensors
import safetensors.torch
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

COMMAND = "~/.cache/qft-peers/bin/python tests/reference/llama_reference.py"
OUT_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "llama")

B, T = 2, 12
PAD_ID = 0
ADAMW = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-5, weight_decay=0.1)
ADAMW_STEPS = 5

COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=176,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    rms_norm_eps=1e-5,
    # Larger than transformers' 0.02 so attention is far from uniform and the test can
    # tell a wrong score from a right one.
    initializer_range=0.2,
    pad_token_id=PAD_ID,
    bos_token_id=1,
    eos_token_id=2,
    attention_bias=False,
    mlp_bias=False,
)

VARIANTS = {
    # (a) plain RoPE, separate lm_head
    "untied": dict(COMMON, tie_word_embeddings=False, rope_theta=10000.0),
    # (b) tied head and Llama 3.1 RoPE scaling; original_max_position_embeddings is small so
    # that the scaling changes frequencies at head_dim 16.
    "tied_llama3": dict(
        COMMON,
        tie_word_embeddings=True,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8,
        },
    ),
}


def make_batch(vocab, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.int64)
    # second row: 8 real tokens, right-padded
    ids[1, 8:] = PAD_ID
    mask[1, 8:] = 0
    labels = ids.clone()
    labels[0, :3] = -100  # a "prompt" that is not trained on
    labels[0, 7] = -100
    labels[1, :2] = -100
    labels[1, 8:] = -100  # padding
    return ids, labels, mask


def build(name, kwargs, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(**kwargs)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager", torch_dtype=torch.float32)
    # Norm weights away from 1, so a test cannot pass while ignoring them.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
    model = model.float().train()
    out_dir = os.path.join(OUT_ROOT, name)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)

    ids, labels, mask = make_batch(cfg.vocab_size, seed + 1)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    tensors = {
        "ids": ids.to(torch.int32),
        "labels": labels.to(torch.int32),
        "mask": mask.to(torch.int32),
        "logits": out.logits.detach().float().contiguous(),
        "loss": out.loss.detach().reshape(1).float(),
    }
    for n, p in model.named_parameters():
        tensors["grad." + n] = p.grad.detach().float().contiguous()
    if cfg.tie_word_embeddings:
        assert "lm_head.weight" not in dict(model.named_parameters())

    # AdamW on the same batch from the saved weights: losses[k] is the loss before update k
    # (k = 0..4), losses[5] the loss after the fifth update.
    opt = torch.optim.AdamW(model.parameters(), **ADAMW)
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

    meta = {
        "command": COMMAND,
        "variant": name,
        "seed": str(seed),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "attn_implementation": "eager",
        "adamw": json.dumps({"lr": ADAMW["lr"], "betas": list(ADAMW["betas"]), "eps": ADAMW["eps"],
                             "weight_decay": ADAMW["weight_decay"], "steps": ADAMW_STEPS}),
        "adamw_losses": "losses[k] = loss before update k (k < steps); last = after the last update",
        "labels": "transformers convention: unshifted; the loss shifts (logits[t] predicts labels[t+1])",
    }
    safetensors.torch.save_file(tensors, os.path.join(out_dir, "expected.safetensors"), metadata=meta)
    with open(os.path.join(out_dir, "GENERATED.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"{name}: loss {out.loss.item():.6f}, adamw {['%.6f' % l for l in losses]}")


def main():
    torch.set_num_threads(1)  # reproducible reductions
    for i, (name, kw) in enumerate(VARIANTS.items()):
        build(name, kw, seed=1234 + 100 * i)


if __name__ == "__main__":
    main()
