"""Reference fixtures for quant/bnb_nf4: bitsandbytes' own 4-bit NF4 quantization on the
CPU backend, for random and awkward inputs, and a tiny Llama quantized and saved by
transformers + bitsandbytes.

Writes
  tests/fixtures/quant/nf4_cases.safetensors   one group of tensors per case:
      <case>.input            the dense input, fp32 or bf16, shape (out, in)
      <case>.packed           uint8 [(n+1)/2, 1], bitsandbytes' packed codes
      <case>.absmax           fp32 per-block absmax before double quantization
      <case>.qabsmax          uint8 codes of (absmax - offset)         (double quant only)
      <case>.nested_absmax    fp32 per-256 absmax of those             (double quant only)
      <case>.nested_quant_map fp32 [256] the dynamic map as used        (double quant only)
      <case>.offset           fp32 [1] mean(absmax)                    (double quant only)
      <case>.absmax_dq        fp32 the absmax dequantize_4bit uses     (double quant only)
      <case>.dequant          dequantize_4bit's output, in the input's dtype (flat blocks:
                              see flat_dequant for the CPU kernel's row-indexing bug)
    __metadata__: "cases" (JSON list of {name, shape, blocksize, double_quant, dtype}),
    "versions", "command".
  tests/fixtures/quant/tiny_bnb/   config.json + model.safetensors that transformers
    saved for a 2-layer, hidden-64 Llama loaded with BitsAndBytesConfig(load_in_4bit, nf4,
    double quant, bf16 compute) on the CPU, and dequant.safetensors with every quantized
    linear dequantized by bitsandbytes (fp32 values of its bf16 output), plus
    versions.json.

Run:  ~/.cache/qft-peers/bin/python tests/reference/nf4_reference.py
"""
import json
import os
import platform
import shutil
import tempfile

import bitsandbytes as bnb
import bitsandbytes.functional as F
import safetensors
import torch
import transformers
from safetensors.torch import save_file, load_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "quant")
COMMAND = "~/.cache/qft-peers/bin/python tests/reference/nf4_reference.py"
VERSIONS = {
    "bitsandbytes": bnb.__version__,
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "safetensors": safetensors.__version__,
    "python": platform.python_version(),
}

# The NF4 midpoints in fp32 as bitsandbytes' CPU quantizer computes them: exact ties.
NF4 = F.get_4bit_type("nf4", device="cpu").float()
MIDS = (NF4[:-1] + NF4[1:]) / 2


def gen(seed):
    g = torch.Generator().manual_seed(seed)
    return g


def flat_dequant(packed, st):
    """dequantize_4bit through bitsandbytes' default-backend computation (flat blocks over
    the row-major tensor, as quantize_4bit makes them)."""
    from bitsandbytes.backends.default.ops import _dequantize_4bit_compute

    absmax = st.absmax
    if st.nested:
        absmax = F.dequantize_blockwise(st.absmax, st.state2) + st.offset
    return _dequantize_4bit_compute(packed.reshape(-1), absmax.float(), st.code.float(),
                                    st.blocksize, st.shape, st.dtype)


def case_inputs():
    cases = []
    g = gen(1234)
    cases.append(("rand_b64", torch.randn(64, 96, generator=g), 64, False))
    cases.append(("rand_b64_dq", torch.randn(96, 400, generator=g) * 0.05, 64, True))
    # A block of zeros in the middle and an all-zero partial last block (700 = 10*64 + 60).
    z = torch.randn(10, 70, generator=g)
    zf = z.reshape(-1)
    zf[128:192] = 0
    zf[640:] = 0
    cases.append(("zero_block", z.clone(), 64, False))
    cases.append(("zero_block_dq", z.clone(), 64, True))
    # One outlier dominates its block.
    o = torch.randn(32, 128, generator=g) * 0.02
    o[5, 17] = 40.0
    o[20, 100] = -55.0
    cases.append(("outlier_dq", o, 64, True))
    # Lengths that are not a multiple of the block, and an odd count (padding nibble).
    cases.append(("odd_len", torch.randn(7, 45, generator=g), 64, False))
    cases.append(("odd_len_dq", torch.randn(13, 77, generator=g), 64, True))
    # bf16 input: quantized from its exact fp32 value, dequantized to bf16.
    cases.append(("bf16_dq", (torch.randn(48, 256, generator=g) * 0.03).to(torch.bfloat16), 64, True))
    cases.append(("bf16_b128", (torch.randn(40, 72, generator=g)).to(torch.bfloat16), 128, False))
    # Exact midpoints and codebook values (absmax 1 in every block): the tie rule.
    row = torch.cat([MIDS, NF4, -MIDS[:1], torch.tensor([1.0, -1.0])])
    row = row[:64] if row.numel() >= 64 else torch.cat([row, torch.zeros(64 - row.numel())])
    mid = torch.stack([row, row.flip(0), row * -1, row.roll(7)])
    mid[:, 0] = 1.0
    cases.append(("midpoints", mid, 64, False))
    # Other block sizes, with double quantization; enough blocks for >1 nested block at 32.
    for bs in (32, 128, 256, 512, 1024, 2048, 4096):
        cases.append(("rand_b%d_dq" % bs, torch.randn(64, 256, generator=g) * 0.1, bs, True))
    cases.append(("rand_b32", torch.randn(24, 40, generator=g), 32, False))
    return cases


def make_cases():
    tensors, meta = {}, []
    for name, x, bs, dq in case_inputs():
        x = x.contiguous()
        packed, st = F.quantize_4bit(x, blocksize=bs, compress_statistics=dq, quant_type="nf4",
                                     quant_storage=torch.uint8)
        deq = flat_dequant(packed, st)
        cpu = F.dequantize_4bit(packed, st)
        # bitsandbytes 0.50.2's CPU C kernel (taken when the last dim is even) indexes absmax
        # per row, so it disagrees with its own flat blocks whenever in % blocksize != 0;
        # the fixture records the flat-block values (CUDA's and the default backend's).
        kernel_ok = bool(torch.equal(cpu, deq))
        tensors[name + ".input"] = x
        tensors[name + ".packed"] = packed.contiguous()
        tensors[name + ".dequant"] = deq.contiguous()
        tensors[name + ".quant_map"] = st.code.float().contiguous()
        if dq:
            # The pre-compression absmax is not kept by quantize_4bit; the op gives it again.
            _, absmax = torch.ops.bitsandbytes.quantize_4bit.default(x, bs, "nf4", torch.uint8)
            tensors[name + ".absmax"] = absmax.contiguous()
            tensors[name + ".qabsmax"] = st.absmax.contiguous()
            tensors[name + ".nested_absmax"] = st.state2.absmax.contiguous()
            tensors[name + ".nested_quant_map"] = st.state2.code.contiguous()
            tensors[name + ".offset"] = st.offset.reshape(1).float().contiguous()
            absmax_dq = F.dequantize_blockwise(st.absmax, st.state2) + st.offset
            tensors[name + ".absmax_dq"] = absmax_dq.float().contiguous()
        else:
            tensors[name + ".absmax"] = st.absmax.contiguous()
        meta.append({"name": name, "shape": list(x.shape), "blocksize": bs, "double_quant": dq,
                     "dtype": str(x.dtype).replace("torch.", ""),
                     "bnb_cpu_kernel_agrees": kernel_ok})
    os.makedirs(OUT_DIR, exist_ok=True)
    save_file(tensors, os.path.join(OUT_DIR, "nf4_cases.safetensors"),
              metadata={"cases": json.dumps(meta), "versions": json.dumps(VERSIONS),
                        "command": COMMAND})
    print("nf4_cases: %d cases, %d tensors" % (len(meta), len(tensors)))


def make_tiny_model():
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(42)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    dense = LlamaForCausalLM(cfg)
    # Default init has std 0.02; widen a few rows so blocks differ in scale.
    with torch.no_grad():
        for p in dense.parameters():
            if p.dim() == 2:
                p.mul_(1.0 + torch.rand(p.shape[0], 1) * 4)
    dense = dense.to(torch.bfloat16)
    out = os.path.join(OUT_DIR, "tiny_bnb")
    with tempfile.TemporaryDirectory() as tmp:
        dense.save_pretrained(tmp, safe_serialization=True)
        q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.bfloat16,
                               bnb_4bit_quant_storage=torch.uint8)
        qm = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=q, device_map="cpu",
                                                  dtype=torch.bfloat16)
        if os.path.isdir(out):
            shutil.rmtree(out)
        qm.save_pretrained(out, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(out, extra)
        if os.path.exists(p):
            os.remove(p)
    deq = {}
    for name, mod in qm.named_modules():
        if isinstance(mod, bnb.nn.Linear4bit):
            w = flat_dequant(mod.weight.data, mod.weight.quant_state)
            assert torch.equal(w, F.dequantize_4bit(mod.weight.data, mod.weight.quant_state))
            deq[name + ".weight"] = w.float().contiguous()
    save_file(deq, os.path.join(out, "dequant.safetensors"),
              metadata={"versions": json.dumps(VERSIONS), "command": COMMAND})
    with open(os.path.join(out, "versions.json"), "w") as f:
        json.dump({"versions": VERSIONS, "command": COMMAND,
                   "note": "model.safetensors and config.json written by transformers' "
                           "save_pretrained of a bitsandbytes 4-bit (nf4, double quant) "
                           "LlamaForCausalLM on the CPU; dequant.safetensors holds "
                           "bitsandbytes.functional.dequantize_4bit of every Linear4bit"},
                  f, indent=2)
    print("tiny_bnb: %d quantized linears" % len(deq))


if __name__ == "__main__":
    make_cases()
    make_tiny_model()
