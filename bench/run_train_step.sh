#!/bin/sh
# Prints the train-step table of bench/README.md: qft and PyTorch on the same shapes and
# thread count. usage: bench/run_train_step.sh [BUILD_DIR] [THREADS]
# PyTorch comes from the peers venv (../shared/tools/peers-venv.sh); skipped when absent.
set -eu
build=${1:-build}
threads=${2:-$(nproc)}
shape="512 8 8 8 1024 2048 256 4 6"
echo "| implementation | threads | params | batch x seq | tokens/s | peak RSS (MiB) | last loss |"
echo "|---|---|---|---|---|---|---|"
OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads "$build/bench/bench_train_step" $shape
py=${QFT_PEERS_VENV:-$HOME/.cache/qft-peers}/bin/python
if [ -x "$py" ]; then
  OMP_NUM_THREADS=$threads "$py" "$(dirname "$0")/train_step_torch.py" $shape "$threads"
else
  echo "(PyTorch row skipped: no peers venv at $py)"
fi
