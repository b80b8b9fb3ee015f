#!/bin/sh
# What qft builds with, for a GPU machine whose image lacks it and cannot fetch it (the
# device machines: nvcc, meson, ninja and gcc there, but not libconfig, OpenBLAS, PCRE2,
# jansson, Check or pkg-config, and no network). Two verbs:
#
#   scripts/device-deps.sh fetch   here, on a Debian 12 machine with apt and pip: downloads
#                                  the .deb files into .devkit/, and bitsandbytes (the PyTorch
#                                  baseline's 4-bit layers; the image has torch, transformers
#                                  and peft) into .devkit/py with only its CUDA 13 binaries:
#                                  about 24 MB, .gitignore'd, to be carried to the GPU machine
#                                  with the working tree
#   . scripts/device-deps.sh env   there (sourced; scripts/gpu-check.sh does it): when
#                                  pkg-config does not find the libraries already, unpacks
#                                  .devkit/*.deb under $QFT_DEPS (/tmp/qft-deps by default,
#                                  never /) and points pkg-config, the compiler, the linker
#                                  and the loader at it; and puts .devkit/py on PYTHONPATH
#                                  when python3 cannot import bitsandbytes
#
# Debian 12's libraries run on a newer glibc (the GPU image's is Ubuntu 24.04's). Open MPI
# is left out (its plugins do not relocate simply): there the multi-rank steps report
# "no mpirun".
qft_deps_pkgs="libconfig-dev libconfig9 libopenblas-dev libopenblas0-pthread
  libopenblas-pthread-dev libopenblas0 libgfortran5 libquadmath0 libpcre2-dev libpcre2-8-0
  libjansson-dev libjansson4 check libsubunit-dev libsubunit0 pkgconf pkgconf-bin libpkgconf3
  pkg-config"
qft_deps_libs="libconfig openblas libpcre2-8 jansson check"
qft_deps_bnb="bitsandbytes==0.50.2"

qft_deps_fetch() {
    root=$(cd "$(dirname "$0")/.." && pwd)
    mkdir -p "$root/.devkit" && cd "$root/.devkit" || return 1
    # shellcheck disable=SC2086 # the list splits on purpose
    apt-get download $qft_deps_pkgs || return 1
    # the wheel for the GPU image's Python (3.12), unpacked without the binaries for other
    # CUDA and ROCm versions (about 100 MB of its 129)
    tmp=$(mktemp -d) || return 1
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_24_x86_64 --platform manylinux2014_x86_64 \
        -d "$tmp" "$qft_deps_bnb" || return 1
    rm -rf py && mkdir py && (cd py && python3 -m zipfile -e "$tmp"/bitsandbytes-*.whl .) || return 1
    find py -name 'libbitsandbytes_*.so' ! -name 'libbitsandbytes_cuda13*.so' ! -name '*cpu*' -delete
    rm -rf "$tmp"
    du -sh "$root/.devkit"
}

qft_deps_env() {
    if [ -d "${QFT_DEVKIT:-$PWD/.devkit}/py" ] && ! python3 -c 'import bitsandbytes' 2>/dev/null; then
        export PYTHONPATH="${QFT_DEVKIT:-$PWD/.devkit}/py${PYTHONPATH:+:$PYTHONPATH}"
    fi
    # QFT_DEPS_FORCE=1 uses the kit even where the machine has the libraries (to try it)
    if [ "${QFT_DEPS_FORCE:-0}" != 1 ] && command -v pkg-config >/dev/null 2>&1 &&
        pkg-config --exists $qft_deps_libs 2>/dev/null; then
        return 0 # the machine has them
    fi
    qft_deps_kit=${QFT_DEVKIT:-$PWD/.devkit}
    if ! ls "$qft_deps_kit"/*.deb >/dev/null 2>&1; then
        echo "device-deps: this machine lacks $qft_deps_libs (or pkg-config) and $qft_deps_kit" \
             "holds no .deb files: run scripts/device-deps.sh fetch where apt works and carry" \
             ".devkit" >&2
        return 1
    fi
    qft_deps_root=${QFT_DEPS:-/tmp/qft-deps}
    mkdir -p "$qft_deps_root" || return 1
    for qft_deps_f in "$qft_deps_kit"/*.deb; do dpkg-deb -x "$qft_deps_f" "$qft_deps_root" || return 1; done
    qft_deps_lib="$qft_deps_root/usr/lib/x86_64-linux-gnu"
    export PKG_CONFIG="$qft_deps_root/usr/bin/pkgconf"
    # only the kit's .pc files, their /usr paths moved under the unpacked root
    export PKG_CONFIG_LIBDIR="$qft_deps_lib/pkgconfig:$qft_deps_lib/openblas-pthread/pkgconfig"
    export PKG_CONFIG_SYSROOT_DIR="$qft_deps_root"
    qft_deps_ld="$qft_deps_lib:$qft_deps_lib/openblas-pthread"
    export LD_LIBRARY_PATH="$qft_deps_ld${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LIBRARY_PATH="$qft_deps_ld${LIBRARY_PATH:+:$LIBRARY_PATH}"
    export PATH="$PATH:$qft_deps_root/usr/bin"
    "$PKG_CONFIG" --exists $qft_deps_libs || {
        echo "device-deps: unpacked $qft_deps_kit under $qft_deps_root, but pkg-config still" \
             "misses some of: $qft_deps_libs" >&2
        return 1
    }
    echo "device-deps: using $qft_deps_kit, unpacked under $qft_deps_root"
}

case "${1:-}" in
fetch) qft_deps_fetch ;;
env) qft_deps_env ;;
*) echo "usage: scripts/device-deps.sh fetch | . scripts/device-deps.sh env" >&2; false ;;
esac
