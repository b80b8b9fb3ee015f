#!/usr/bin/env bash
# Host memory at load under full sharding: for 2 and 4 CPU processes, `qft train` on one
# config for one step with full_shard, printing rank 0's "loaded unit by unit" figures (the
# most of the model's buffers and its pieces it held while loading, beside the model's
# units whole and the largest unit) and the process's peak RSS when the cut finished.
# The units-whole column is what every rank held before the cut moved into the load.
#
# Usage: bench/run_load.sh [BUILD_DIR] [TRAIN_TYPE]
#   BUILD_DIR default build; TRAIN_TYPE default qlora (configs/<type>.cfg).
#   $QFT_LOAD_BENCH_SETS: more overrides for every run, split at spaces.
# The model: hidden 1024, intermediate 2816, 8 layers, 8 heads, the config's tokenizer,
# sequence 256, batch 1, one OpenMP thread per rank.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
TYPE=${2:-qlora}
QFT=$BUILD/apps/qft
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --mca btl_vader_single_copy_mechanism none)
OUT=$(mktemp -d /tmp/qft-load-bench-XXXXXX)
trap 'rm -rf "$OUT"' EXIT
SETS=(--set train.max_steps=1 --set data.count=16 --set train.batch_size=1
      --set train.grad_accum=1 --set data.context_length=256
      --set model.config.hidden_size=1024 --set model.config.intermediate_size=2816
      --set model.config.num_hidden_layers=8 --set model.config.num_attention_heads=8
      --set model.config.num_key_value_heads=8 --set output.save='"none"'
      --set shard.plugin='"full_shard"')
read -ra EXTRA <<<"${QFT_LOAD_BENCH_SETS:-}"
SETS+=("${EXTRA[@]}")

echo "train_type $TYPE, full_shard, $(date -u '+%Y-%m-%d %H:%M UTC')${EXTRA[*]:+, ${EXTRA[*]}}"
echo
echo "| ranks | held at most during the load (MiB) | units whole (MiB) | largest unit (MiB) | peak RSS at the end of the load (MiB) |"
echo "|---|---|---|---|---|"
for np in 2 4; do
  log=$OUT/$np.log
  if ! "${MPIRUN[@]}" -np "$np" -x OMP_NUM_THREADS=1 "$QFT" train "configs/$TYPE.cfg" \
      "${SETS[@]}" --set output.dir="\"$OUT/run-$np\"" >"$log" 2>&1; then
    echo "| $np | failed: see below | | | |"; tail -5 "$log"; continue
  fi
  line=$(sed -n "s/.*held at most \([0-9.]*\) MiB .* (\([0-9.]*\) MiB for all its units whole, the largest \([0-9.]*\) MiB); the process's peak RSS by then \([0-9.]*\) MiB.*/\1 \2 \3 \4/p" "$log")
  read -r held whole largest rss <<<"${line:-? ? ? ?}"
  echo "| $np | $held | $whole | $largest | $rss |"
done
