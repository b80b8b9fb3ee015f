#!/bin/sh
# README command (a): install dependencies, build, and train the embedded demo: a tiny
# Llama on the project's own generated math problems, no download.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup-debian.sh
[ -d build ] || meson setup build
ninja -C build
exec ./build/apps/qft train "$@"
