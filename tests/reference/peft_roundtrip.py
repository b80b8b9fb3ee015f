#!/usr/bin/env python3
"""The PEFT interop round trip of issue 5, run by hand where the peers are installed.

1. PEFT loads qft's adapters. tests/fixtures/export/qft_lora and qft_dora are adapters
   qft trained (one AdamW step from PEFT's fixtures) and saved with qft_peft_save
   (written by tests/export/test_peft.c). Each is loaded onto the base
   tests/fixtures/llama/untied with PeftModel.from_pretrained; every tensor of the file
   must land in the model (get_peft_model_state_dict gives them back unchanged), and the
   logits on the ids of qft_logits.safetensors must equal qft's within 1e-5 relative to
   their largest magnitude.
2. transformers loads qft's merges. For PEFT's own adapter fixtures
   (tests/fixtures/adapters/llama_lora, llama_dora) and qft's, `qft merge --dtype f32`
   writes a merged folder; transformers loads it as a plain LlamaForCausalLM, and its
   logits are compared with PEFT's merge_and_unload() model of the same adapter (1e-5),
   and its weights with PEFT's merged weights. The bf16 merge (`--dtype bf16`) is compared
   with PEFT's merged weights cast to bf16: the share of bit-equal weights and the largest
   difference in bf16 ulps are reported.

Writes tests/fixtures/export/roundtrip.json (the figures, versions, command). Exits
non-zero when a check fails.

Run from the repository root, after building qft:
    ~/.cache/qft-peers/bin/python tests/reference/peft_roundtrip.py --qft BUILD/apps/qft
(or set QFT_BIN). Without a qft binary, part 2 is skipped and says so.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy
import peft
import safetensors
import safetensors.torch
import torch
import transformers
from peft import PeftModel
from peft.utils import get_peft_model_state_dict
from transformers import LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = os.path.join(ROOT, "tests", "fixtures", "llama", "untied")
EXPORT = os.path.join(ROOT, "tests", "fixtures", "export")
COMMAND = "~/.cache/qft-peers/bin/python tests/reference/peft_roundtrip.py --qft BUILD/apps/qft"
VERSIONS = {
    "peft": peft.__version__,
    "torch": torch.__version__,
    "transformers": transformers.__version__,
    "safetensors": safetensors.__version__,
    "numpy": numpy.__version__,
    "python": platform.python_version(),
}
TOL = 1e-5


def rel_err(a, b):
    """max |a - b| / max |b|, in float64."""
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max()).item()


def load_base(dtype=torch.float32, folder=BASE):
    m = LlamaForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation="eager")
    return m.eval()


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def peft_loads_qft(name, results, failures):
    folder = os.path.join(EXPORT, name)
    qft = safetensors.torch.load_file(os.path.join(folder, "qft_logits.safetensors"))
    ids = qft["ids"].long()
    model = PeftModel.from_pretrained(load_base(), folder).eval()
    # every tensor of qft's file is in the model, unchanged
    saved = safetensors.torch.load_file(os.path.join(folder, "adapter_model.safetensors"))
    back = get_peft_model_state_dict(model)
    assert set(back) == set(saved), (sorted(set(back) ^ set(saved)))[:5]
    tensor_err = max((back[k].float() - saved[k]).abs().max().item() for k in saved)
    e = rel_err(logits(model, ids), qft["logits"])
    results["peft_loads_qft"][name] = {
        "tensors": len(saved),
        "tensor_max_abs_diff_after_load": tensor_err,
        "logits_rel_err_vs_qft": e,
        "tolerance": TOL,
    }
    print("%s: PeftModel.from_pretrained, %d tensors (max |diff| after load %g); logits rel "
          "err vs qft %.3e" % (name, len(saved), tensor_err, e))
    if e > TOL or tensor_err != 0.0:
        failures.append("%s: PEFT's logits of qft's adapter off by %.3e" % (name, e))


def bf16_compare(ours, theirs):
    """Share of bit-equal bf16 weights and the largest difference in ulps."""
    a = ours.contiguous().view(torch.int16).int()
    b = theirs.to(torch.bfloat16).contiguous().view(torch.int16).int()
    # bf16 bit patterns order like the numbers within one sign
    return (a == b).double().mean().item(), (a - b).abs().max().item()


def merge_check(qft_bin, adapter_dir, label, ids, results, failures):
    peft_merged = PeftModel.from_pretrained(load_base(), adapter_dir).merge_and_unload().eval()
    want = logits(peft_merged, ids)
    want_sd = {k: v for k, v in peft_merged.state_dict().items()}
    row = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dt in ("f32", "bf16"):
            out = os.path.join(tmp, dt)
            subprocess.run([qft_bin, "merge", "--base", BASE, "--adapter", adapter_dir, "-o",
                            out, "--dtype", dt], check=True, capture_output=True)
            ours = safetensors.torch.load_file(os.path.join(out, "model.safetensors"))
            if dt == "f32":
                model = load_base(torch.float32, out)
                e = rel_err(logits(model, ids), want)
                w = max(rel_err(ours[k], want_sd[k]) for k in ours)
                row["f32_logits_rel_err_vs_peft_merge_and_unload"] = e
                row["f32_worst_weight_rel_err"] = w
                print("%s: qft merge f32 loaded by transformers: logits rel err vs PEFT "
                      "merge_and_unload %.3e, worst weight rel err %.3e" % (label, e, w))
                if e > TOL:
                    failures.append("%s: merged logits off by %.3e" % (label, e))
            else:
                equal, ulps = [], 0
                for k, v in ours.items():
                    eq, u = bf16_compare(v, want_sd[k])
                    equal.append((eq, v.numel()))
                    ulps = max(ulps, u)
                share = sum(e * n for e, n in equal) / sum(n for _, n in equal)
                model = load_base(torch.bfloat16, out)
                e = rel_err(logits(model, ids), want)
                row["bf16_weights_bit_equal_share"] = share
                row["bf16_max_ulp_diff"] = ulps
                row["bf16_logits_rel_err_vs_f32_peft_merge"] = e
                print("%s: qft merge bf16: %.4f%% of weights bit-equal to PEFT's merge cast to "
                      "bf16 (max %d ulp); logits (bf16 model) rel err vs f32 PEFT merge %.3e"
                      % (label, 100 * share, ulps, e))
    results["merge"][label] = row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qft", default=os.environ.get("QFT_BIN"))
    args = ap.parse_args()
    torch.manual_seed(0)
    results = {"peft_loads_qft": {}, "merge": {}, "versions": VERSIONS, "command": COMMAND}
    failures = []
    for name in ("qft_lora", "qft_dora"):
        peft_loads_qft(name, results, failures)
    ids = safetensors.torch.load_file(
        os.path.join(EXPORT, "qft_lora", "qft_logits.safetensors"))["ids"].long()
    if args.qft and os.access(args.qft, os.X_OK):
        for label, d in (("peft:llama_lora", "adapters/llama_lora"),
                         ("peft:llama_dora", "adapters/llama_dora"),
                         ("qft:qft_lora", "export/qft_lora"),
                         ("qft:qft_dora", "export/qft_dora")):
            merge_check(args.qft, os.path.join(ROOT, "tests", "fixtures", d), label, ids,
                        results, failures)
    else:
        print("merge checks skipped: no qft binary (--qft PATH or QFT_BIN)")
        results["merge"] = "skipped: no qft binary given"
    with open(os.path.join(EXPORT, "roundtrip.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
        f.write("\n")
    for msg in failures:
        print("FAIL:", msg)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
