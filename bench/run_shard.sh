#!/usr/bin/env bash
# Sharding strategies side by side (issue 6): for 1, 2 and 4 CPU processes on this machine
# and each strategy, `qft train` on one config, printing a table of tokens/s and the bytes
# rank 0 sent per optimizer step (the transport's counters) against the strategy's figure
# computed from the model's sizes, plus each rank's peak of parameters, gradients and
# optimizer state (measured, and the figure it should be).
#
# Usage: bench/run_shard.sh [BUILD_DIR] [TRAIN_TYPE] [STEPS]
#   BUILD_DIR   default build; TRAIN_TYPE default qlora (configs/<type>.cfg); STEPS default 4.
#   $QFT_SHARD_BENCH_SETS: more overrides for every run, split at spaces, e.g.
#   '--set train.backend="cpu_guard" --set shard.cpu_offload=true'.
# The model: hidden 256, 4 layers, 4 heads (2 KV), intermediate 688, the tokenizer's
# vocabulary, sequence 256, batch 2 per rank, one OpenMP thread per rank. The global batch
# grows with the ranks (each rank trains its own micro-batches), so tokens/s compares the
# job's throughput; bytes per step are per rank.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
TYPE=${2:-qlora}
STEPS=${3:-4}
QFT=$BUILD/apps/qft
MPIRUN=(mpirun --allow-run-as-root --oversubscribe --mca btl_vader_single_copy_mechanism none)
OUT=$(mktemp -d /tmp/qft-shard-bench-XXXXXX)
trap 'rm -rf "$OUT"' EXIT
SETS=(--set train.max_steps="$STEPS" --set data.count=256 --set train.batch_size=2
      --set train.grad_accum=1 --set model.config.hidden_size=256
      --set model.config.intermediate_size=688 --set model.config.num_hidden_layers=4
      --set model.config.num_attention_heads=4 --set model.config.num_key_value_heads=2
      --set data.context_length=256 --set data.pad_to_context=true
      --set output.save='"none"')
read -ra EXTRA <<<"${QFT_SHARD_BENCH_SETS:-}"
SETS+=("${EXTRA[@]}")

echo "train_type $TYPE, $STEPS steps, $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC')${EXTRA[*]:+, ${EXTRA[*]}}"
echo
echo "| strategy | ranks | tokens/s | bytes sent per step (rank 0) | expected | peak param+grad+optim per rank (MiB) | expected (MiB) |"
echo "|---|---|---|---|---|---|---|"
for np in 1 2 4; do
  for strat in no_shard shard_grad_op full_shard hybrid_shard_grad_op hybrid_shard; do
    case $strat in hybrid_*) (( np == 4 )) || continue ;; esac
    (( np == 1 )) && [[ $strat != no_shard && $strat != full_shard ]] && continue
    env=()
    [[ $strat == hybrid_* ]] && env=(-x QFT_TRANSPORT_NODE_SIZE=2)
    log=$OUT/$strat-$np.log
    if ! "${MPIRUN[@]}" -np "$np" -x OMP_NUM_THREADS=1 "${env[@]}" "$QFT" train \
        "configs/$TYPE.cfg" "${SETS[@]}" --set shard.plugin="\"$strat\"" \
        --set output.dir="\"$OUT/run-$strat-$np\"" >"$log" 2>&1; then
      echo "| $strat | $np | failed: see below | | | | |"; tail -5 "$log"; continue
    fi
    tps=$(grep -o 'done: .*' "$log" | sed -n 's/.*| \([0-9.]*[k]*\) tok\/s.*/\1/p' | tail -1)
    comm=$(sed -n 's/.*comm: rank 0 of [0-9]* ([^)]*): \([0-9]*\) bytes sent per step measured, \([0-9a-z ]*\) expected.*/\1 \2/p' "$log")
    mem=$(sed -n 's/.*memory: rank 0 of [0-9]* ([^)]*): .* peaked at \([0-9.]*\) MiB measured, \([0-9.]*\) MiB expected.*/\1 \2/p' "$log")
    read -r cm ce <<<"${comm:-0 0}"
    read -r mm me <<<"${mem:-? ?}"
    echo "| $strat | $np | $tps | $cm | $ce | $mm | $me |"
  done
done
