"""Interop check, run by hand where the peers are installed: a folder written by
`qft quantize --method bnb_nf4` loads in transformers + bitsandbytes as a 4-bit model, and
bitsandbytes dequantizes its bytes to the values qft dequantizes them to.

  build/apps/qft quantize tests/fixtures/io/tiny_llama_f32 --method bnb_nf4 -o /tmp/qnf4
  ~/.cache/qft-peers/bin/python tests/reference/bnb_roundtrip.py /tmp/qnf4 \
      tests/fixtures/io/tiny_llama_f32 [QFT_DEQUANTIZED_DIR]

QFT_DEQUANTIZED_DIR is the packed folder loaded by qft with the bnb_nf4 plugin and saved
dense in f32 (qft_hf_model_load_build, then qft_hf_model_save: a few lines against libqft).

Last run (2026-11-29, transformers 5.24.0, bitsandbytes 0.50.2, CPU): every block linear
loads as Linear4bit; all 14 dequantized weights equal qft's after rounding to the
quant_state dtype (bf16), max difference 0.0; the 4-bit model's logits differ from the dense
original's by 0.116 of the largest logit (4-bit error on a tiny random model)."""
import sys

import bitsandbytes.functional as F
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

folder = sys.argv[1] if len(sys.argv) > 1 else "/tmp/qnf4"
dense_dir = sys.argv[2] if len(sys.argv) > 2 else "tests/fixtures/io/tiny_llama_f32"
q = AutoModelForCausalLM.from_pretrained(folder, device_map="cpu")
d = AutoModelForCausalLM.from_pretrained(dense_dir)
kinds = {type(m).__name__ for n, m in q.named_modules() if n.endswith("_proj")}
print("block linears load as:", kinds)
# Before any forward: bitsandbytes' CPU path may repack the weights on first use.
# qft's own dequantization comes from a dequantized folder given as the third argument;
# bitsandbytes returns the quant_state dtype (bf16 here), so compare after that rounding.
if len(sys.argv) > 3:
    ref = load_file(sys.argv[3] + "/model.safetensors")
    worst, n_lin = 0.0, 0
    for n, m in q.named_modules():
        if type(m).__name__ == "Linear4bit":
            w = F.dequantize_4bit(m.weight.data, m.weight.quant_state)
            r = ref[n + ".weight"].to(w.dtype)
            worst = max(worst, (w.float() - r.float()).abs().max().item())
            n_lin += 1
    print(f"{n_lin} linears: max |bitsandbytes dequant - qft dequant (in {w.dtype})| =", worst)
ids = torch.tensor([[1, 5, 9, 77, 130, 201, 17, 3]])
with torch.no_grad():
    lq, ld = q(ids).logits.float(), d(ids).logits.float()
print("logits 4-bit vs dense: max diff / max |dense| =", ((lq - ld).abs().max() / ld.abs().max()).item())
