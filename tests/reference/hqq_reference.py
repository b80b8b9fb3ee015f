"""Reference fixtures for quant/hqq: the hqq library's own Quantizer (half-quadratic
proximal refinement of the zero point, early stop) on the CPU in fp32, for nbits 2, 3, 4
and 8, both axes, with and without the meta-quantization of zero and scale (quant_zero /
quant_scale, as the seed's hqq v0.1.8 did it: zero 8-bit with one global min/max, scale
8-bit in groups of 128 along axis 0), and an HQQLinear state_dict as hqq serializes it.

Writes tests/fixtures/quant/hqq_cases.safetensors, one group per case:
  <case>.input      fp32 (out, in)
  <case>.W_q        hqq's packed codes (uint8; int32 for 3-bit)
  <case>.scale      fp32, hqq's stored scale (1/s), shape as hqq keeps it
  <case>.zero       fp32, the refined zero point
  <case>.dequant    fp32 Quantizer.dequantize with compute_dtype float32
  meta-quantized cases also: <case>.zero_q, <case>.zero_scale, <case>.zero_zero,
  <case>.scale_q, <case>.scale_scale, <case>.scale_zero (uint8 codes and their fp32
  statistics), and <case>.dequant is then HQQLinear-style: zero and scale dequantized first.
  __metadata__: "cases" (JSON), "versions", "command".
and tests/fixtures/quant/hqq_linear.safetensors: HQQLinear(nbits 4, group 64, axis 1,
compute fp32).state_dict() under the prefix "model.layers.0.mlp.up_proj." plus
"ref.dequant" (its dequantize()) and "ref.input".

Run:  ~/.cache/qft-peers/bin/python tests/reference/hqq_reference.py
"""
import json
import os
import platform

import hqq
import safetensors
import torch
from hqq.core.quantize import BaseQuantizeConfig, HQQLinear, Quantizer
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "quant")
COMMAND = "~/.cache/qft-peers/bin/python tests/reference/hqq_reference.py"
try:
    from importlib.metadata import version as _v
    HQQ_VERSION = _v("hqq")
except Exception:  # pragma: no cover
    HQQ_VERSION = getattr(hqq, "__version__", "unknown")
VERSIONS = {"hqq": HQQ_VERSION, "torch": torch.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version()}


def quantize(W, nbits, gs, axis, optimize=True, round_zero=None):
    if round_zero is None:
        round_zero = nbits == 4  # hqq_base_quant_config's rule
    W_q, meta = Quantizer.quantize(W, nbits=nbits, channel_wise=True, group_size=gs,
                                   optimize=optimize, round_zero=round_zero, axis=axis,
                                   bitpack=True, compute_dtype=torch.float32,
                                   view_as_float=False, device="cpu")
    meta["compute_dtype"] = torch.float32
    return W_q, meta


def main():
    g = torch.Generator().manual_seed(2024)
    cases = [
        ("b4_ax1", 4, 64, 1, True, (128, 256), 0.02),
        ("b4_ax0", 4, 64, 0, True, (128, 256), 0.02),
        ("b4_ax1_big", 4, 64, 1, True, (512, 512), 0.02),
        ("b4_ax0_gs128", 4, 128, 0, True, (96, 256), 1.0),
        ("b4_noopt", 4, 64, 1, False, (64, 192), 0.05),
        ("b2_ax1", 2, 64, 1, True, (128, 128), 0.02),
        ("b3_ax1", 3, 64, 1, True, (80, 128), 0.02),
        ("b3_ax0", 3, 64, 0, True, (80, 128), 0.02),
        ("b8_ax1", 8, 64, 1, True, (64, 128), 0.02),
        ("b4_ax0_meta", 4, 64, 0, True, (256, 256), 0.02),
    ]
    tensors, meta_list = {}, []
    for name, nbits, gs, axis, opt, shape, sd in cases:
        W = torch.randn(*shape, generator=g) * sd
        # heavier tails, as real weights have
        W[torch.rand(*shape, generator=g) < 0.01] *= 6
        W_q, meta = quantize(W, nbits, gs, axis, optimize=opt)
        tensors[name + ".input"] = W.contiguous()
        tensors[name + ".W_q"] = W_q.contiguous()
        tensors[name + ".scale"] = meta["scale"].float().contiguous()
        tensors[name + ".zero"] = meta["zero"].float().contiguous()
        entry = {"name": name, "nbits": nbits, "group_size": gs, "axis": axis, "optimize": opt,
                 "round_zero": nbits == 4, "shape": list(shape), "meta_quant": False}
        if name.endswith("_meta"):
            # v0.1.8's meta-quantization: zero with one global min/max, scale in groups
            # of 128 (Quantizer.quantize's own default axis, 0), 8 bits, no refinement.
            zq, zmeta = Quantizer.quantize(meta["zero"], nbits=8, channel_wise=False,
                                           group_size=None, optimize=False, round_zero=False,
                                           bitpack=True, compute_dtype=torch.float32,
                                           view_as_float=False, device="cpu")
            sq, smeta = Quantizer.quantize(meta["scale"], nbits=8, channel_wise=True,
                                           group_size=128, optimize=False, round_zero=False,
                                           bitpack=True, compute_dtype=torch.float32,
                                           view_as_float=False, device="cpu")
            zmeta["compute_dtype"] = torch.float32
            smeta["compute_dtype"] = torch.float32
            tensors[name + ".zero_q"] = zq.contiguous()
            tensors[name + ".zero_scale"] = zmeta["scale"].reshape(-1).float().contiguous()
            tensors[name + ".zero_zero"] = zmeta["zero"].reshape(-1).float().contiguous()
            tensors[name + ".scale_q"] = sq.contiguous()
            tensors[name + ".scale_scale"] = smeta["scale"].reshape(-1).float().contiguous()
            tensors[name + ".scale_zero"] = smeta["zero"].reshape(-1).float().contiguous()
            m2 = dict(meta)
            m2["zero"] = Quantizer.dequantize(zq, zmeta)
            m2["scale"] = Quantizer.dequantize(sq, smeta)
            deq = Quantizer.dequantize(W_q, m2)
            entry["meta_quant"] = True
        else:
            deq = Quantizer.dequantize(W_q, meta)
        tensors[name + ".dequant"] = deq.float().contiguous()
        meta_list.append(entry)
    os.makedirs(OUT_DIR, exist_ok=True)
    save_file(tensors, os.path.join(OUT_DIR, "hqq_cases.safetensors"),
              metadata={"cases": json.dumps(meta_list), "versions": json.dumps(VERSIONS),
                        "command": COMMAND})

    # An HQQLinear as hqq itself serializes it (current default: axis 1).
    W = torch.randn(96, 128, generator=g) * 0.02
    lin = torch.nn.Linear(128, 96, bias=False)
    lin.weight.data = W.clone()
    cfg = BaseQuantizeConfig(nbits=4, group_size=64, axis=1)
    hl = HQQLinear(lin, cfg, compute_dtype=torch.float32, device="cpu", del_orig=False)
    sd = hl.state_dict()
    out = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            out["model.layers.0.mlp.up_proj." + k] = v.contiguous()
    out["ref.dequant"] = hl.dequantize().float().contiguous()
    out["ref.input"] = W.contiguous()
    save_file(out, os.path.join(OUT_DIR, "hqq_linear.safetensors"),
              metadata={"versions": json.dumps(VERSIONS), "command": COMMAND})
    print("hqq_cases: %d cases; hqq_linear: %d tensors" % (len(meta_list), len(out)))


if __name__ == "__main__":
    main()
