#!/usr/bin/env python3
"""Reference fixtures for `qft expand` (Llama-Pro block expansion).

The rule is the one fsdp_qlora's scripts/block_expansion.py applies (written here from
its description in ../shared/REFERENCE.md, not copied): for L layers and rate r,
    new = L + int(L * r);  split = int(L / (new - L))
(or split = the interval when one is given); original layer i becomes layer i + i // split,
and after every i with (i + 1) % split == 0 a copy of layer i is inserted at the next index
with o_proj and down_proj zeroed (every other tensor of the block, both RMSNorms included,
cloned). Tensors outside the blocks are kept as they are. The rule is applied with torch
on the checkpoint's own tensors, in their own dtype, so the C test can ask for bit
equality.

Cases (each writes tests/fixtures/expand/<case>.safetensors holding every tensor of the
expanded checkpoint under its Hugging Face name, with __metadata__: source (the model
folder, relative to the repository root), qft_args (what `qft expand` is given),
num_hidden_layers, source_layers, split, inserted (JSON list of new block ids), rule,
identity_check, versions, command):
  untied_r0.5    tests/fixtures/llama/untied (2 layers, fp32, untied head), rate 0.5
  llama5_r0.4    tests/fixtures/expand/llama5_bf16 (5 layers, bf16, tied head), rate 0.4
  llama5_i3      the same model, interval 3
  llama5_r0.6    the same model, rate 0.6: int(5 * 0.6) = 3 new layers asked, split =
                 int(5 / 3) = 1, so the rule inserts after every layer (10 layers); the
                 seed's script does the same and qft reproduces it
The llama5_bf16 folder is made here too: a random transformers LlamaForCausalLM (seeded),
every RMSNorm weight drawn away from 1 so that a block copied from the wrong source shows,
saved by save_pretrained in bfloat16.

Each expanded model is also loaded by transformers and checked to give the same logits
as its source on a fixed batch (the inserted blocks add exact zeros to the residual
stream): identity_check records the largest difference.

Run from the repository root:
    ~/.cache/qft-peers/bin/python tests/reference/expand_reference.py
"""
import json
import os
import platform

import safetensors
import safetensors.torch
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "expand")
COMMAND = "~/.cache/qft-peers/bin/python tests/reference/expand_reference.py"
VERSIONS = {
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "safetensors": safetensors.__version__,
    "python": platform.python_version(),
}
RULE = ("fsdp_qlora scripts/block_expansion.py: new = L + int(L*rate); split = "
        "int(L/(new-L)) (or the interval); layer i -> i + i//split; after each i with "
        "(i+1) % split == 0 a copy of layer i with o_proj and down_proj zeroed")


def split_for(n_layers, rate=None, interval=None):
    if interval is not None:
        return interval
    new_layers = n_layers + int(n_layers * rate)
    return int(n_layers / (new_layers - n_layers))


def expand_state(sd, n_layers, split):
    """The expanded state dict and the ids of the inserted blocks."""
    out, inserted, nxt = {}, [], 0
    for i in range(n_layers):
        prefix = "model.layers.%d." % i
        block = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        assert block, "no tensors for layer %d" % i
        for rest, v in block.items():
            out["model.layers.%d.%s" % (nxt, rest)] = v.clone()
        nxt += 1
        if (i + 1) % split == 0:
            for rest, v in block.items():
                zero = rest in ("self_attn.o_proj.weight", "mlp.down_proj.weight")
                out["model.layers.%d.%s" % (nxt, rest)] = torch.zeros_like(v) if zero else v.clone()
            inserted.append(nxt)
            nxt += 1
    for k, v in sd.items():
        if not k.startswith("model.layers."):
            out[k] = v.clone()
    return out, inserted, nxt


def make_llama5(folder):
    torch.manual_seed(5)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=5,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-5, initializer_range=0.2, tie_word_embeddings=True,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    model = model.to(torch.bfloat16)
    model.save_pretrained(folder)


def logits_of(folder, state=None, n_layers=None):
    """transformers' logits on a fixed batch, for a folder or (state, n_layers)."""
    cfg = LlamaConfig.from_pretrained(folder)
    if state is not None:
        cfg.num_hidden_layers = n_layers
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).float().eval()
    sd = state if state is not None else safetensors.torch.load_file(
        os.path.join(folder, "model.safetensors"))
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd.items()},
                                                strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, cfg.vocab_size, (2, 9), generator=g)
    with torch.no_grad():
        return model(input_ids=ids).logits


def write_case(name, source_rel, n_layers_src, rate=None, interval=None):
    src = os.path.join(ROOT, source_rel)
    sd = safetensors.torch.load_file(os.path.join(src, "model.safetensors"))
    split = split_for(n_layers_src, rate, interval)
    out, inserted, n_new = expand_state(sd, n_layers_src, split)
    diff = (logits_of(src, out, n_new) - logits_of(src)).abs().max().item()
    assert diff == 0.0, "%s: expanded model's logits differ by %g" % (name, diff)
    qft_args = ("--set adapter.interval=%d" % interval if interval is not None
                else "--set adapter.expansion_rate=%s" % rate)
    meta = {
        "source": source_rel,
        "qft_args": qft_args,
        "num_hidden_layers": str(n_new),
        "source_layers": str(n_layers_src),
        "split": str(split),
        "inserted": json.dumps(inserted),
        "rule": RULE,
        "identity_check": "transformers logits of expanded vs source on a (2, 9) batch: max "
                          "|diff| = %g" % diff,
        "versions": json.dumps(VERSIONS),
        "command": COMMAND,
    }
    safetensors.torch.save_file({k: v.contiguous() for k, v in out.items()},
                                os.path.join(OUT, name + ".safetensors"), metadata=meta)
    print("%s: %d -> %d layers, split %d, inserted %s, dtype %s" %
          (name, n_layers_src, n_new, split, inserted, next(iter(out.values())).dtype))


def main():
    os.makedirs(OUT, exist_ok=True)
    llama5 = os.path.join(OUT, "llama5_bf16")
    make_llama5(llama5)
    with open(os.path.join(llama5, "GENERATED.json"), "w") as f:
        json.dump({"what": "random LlamaForCausalLM (seed 5), RMSNorm weights 1 + 0.3 N(0,1), "
                           "bfloat16, source model of the expand fixtures",
                   "versions": VERSIONS, "command": COMMAND}, f, indent=2, sort_keys=True)
        f.write("\n")
    write_case("untied_r0.5", "tests/fixtures/llama/untied", 2, rate=0.5)
    write_case("llama5_r0.4", "tests/fixtures/expand/llama5_bf16", 5, rate=0.4)
    write_case("llama5_i3", "tests/fixtures/expand/llama5_bf16", 5, interval=3)
    write_case("llama5_r0.6", "tests/fixtures/expand/llama5_bf16", 5, rate=0.6)


if __name__ == "__main__":
    main()
