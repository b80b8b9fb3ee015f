#!/bin/sh
# Prints the adapters table of bench/README.md: train-step time of full, LoRA, DoRA, QLoRA
# and QDoRA for qft (bench_adapter_step) and PyTorch + PEFT (adapter_step_torch.py), same
# shape and thread count, one process per (implementation, train_type). The whole set is
# run ROUNDS times, taking turns, and each cell keeps its fastest step: on a shared machine
# the minimum is the figure least disturbed by other work.
# usage: bench/run_adapter_step.sh [BUILD_DIR] [THREADS] [STEPS] [ROUNDS]
# Needs the plugins built: ninja -C BUILD_DIR bench/bench_adapter_step
#   adapters/lora/qft_lora.so adapters/dora/qft_dora.so quant/bnb_nf4/qft_bnb_nf4.so
# PyTorch comes from the peers venv (../shared/tools/peers-venv.sh); skipped when absent.
set -eu
build=${1:-build}
threads=${2:-$(nproc)}
steps=${3:-5}
rounds=${4:-2}
here=$(dirname "$0")
py=${QFT_PEERS_VENV:-$HOME/.cache/qft-peers}/bin/python
[ -x "$py" ] || py=
out=$(mktemp)
trap 'rm -f "$out"' EXIT
export OMP_NUM_THREADS="$threads" OPENBLAS_NUM_THREADS="$threads"
r=0
while [ "$r" -lt "$rounds" ]; do
  for t in full lora dora qlora qdora; do
    "$build/bench/bench_adapter_step" "$t" "$steps" >>"$out"
    if [ -n "$py" ]; then
      "$py" "$here/adapter_step_torch.py" "$t" "$steps" "$threads" 2>/dev/null | grep '^RESULT' >>"$out"
    fi
  done
  r=$((r + 1))
done
echo "$(date -u +%Y-%m-%d) $(uname -m), $threads threads (OMP_NUM_THREADS), $(nproc) cores seen," \
     "load average $(cut -d' ' -f1-3 /proc/loadavg); fastest of $steps steps x $rounds rounds"
[ -n "$py" ] || echo "(PyTorch columns empty: no peers venv)"
awk '
$1 == "RESULT" {
  k = $2 " " $3
  if (!(k in ms) || $7 + 0 < ms[k] + 0) {
    ms[k] = $7; tps[k] = $9; rss[k] = $10; tr[k] = $5; tot[k] = $6; note[k] = $12
  }
}
function cell(k, f) { return (k in ms) ? f : "-" }
END {
  printf "| train_type | trainable / total params | qft ms/step | qft tokens/s | qft peak RSS MiB |"
  printf " PyTorch+PEFT ms/step | PyTorch tokens/s | PyTorch peak RSS MiB | PyTorch / qft |\n"
  printf "|---|---|---|---|---|---|---|---|---|\n"
  n = split("full lora dora qlora qdora", T, " ")
  for (i = 1; i <= n; i++) {
    q = "qft " T[i]; p = "torch " T[i]
    printf "| %s | %.2fM / %.2fM | %s | %s | %s | %s | %s | %s | %s |\n", T[i],
      tr[q] / 1e6, tot[q] / 1e6, cell(q, ms[q]), cell(q, tps[q]), cell(q, rss[q]),
      cell(p, ms[p] (note[p] != "" ? " (" note[p] ")" : "")), cell(p, tps[p]), cell(p, rss[p]),
      (q in ms && p in ms) ? sprintf("%.2fx", ms[p] / ms[q]) : "-"
  }
  printf "\n"
  if (("qft dora" in ms) && ("qft lora" in ms))
    printf "qft DoRA / qft LoRA: %.2fx (goal <= 1.25)\n", ms["qft dora"] / ms["qft lora"]
  if (("qft qdora" in ms) && ("qft qlora" in ms))
    printf "qft QDoRA / qft QLoRA: %.2fx\n", ms["qft qdora"] / ms["qft qlora"]
  if (("torch dora" in ms) && ("torch lora" in ms))
    printf "PEFT DoRA / PEFT LoRA: %.2fx\n", ms["torch dora"] / ms["torch lora"]
  if (("qft qdora" in ms) && ("torch dora" in ms))
    printf "qft QDoRA / PEFT DoRA on the dense model: %.2fx (goal < 1)\n",
      ms["qft qdora"] / ms["torch dora"]
  if (("qft qdora" in ms) && ("torch qdora" in ms))
    printf "qft QDoRA / PEFT QDoRA (bitsandbytes 4-bit): %.2fx\n", ms["qft qdora"] / ms["torch qdora"]
}' "$out"
