#!/bin/sh
# README command (b): install dependencies, build, and run the whole test suite.
# Tests that need a GPU, Python peers or ../shared skip with a message where those are absent.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
[ -d build-test ] || meson setup build-test
ninja -C build-test
meson test -C build-test --print-errorlogs --num-processes 2 "$@"
