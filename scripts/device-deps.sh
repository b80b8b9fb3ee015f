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
# comes too, for the check's multi-rank step (two ranks on one GPU): unpacked where the
# machine has no mpirun, and pointed at its new place through Open MPI's and PMIx's
# relocation variables (OPAL_PREFIX and friends, PMIX_PREFIX and friends), since both look
# for their plugins and help files at the paths they were built for. libudev and libuuid,
# which hwloc and PSM need and an Ubuntu image has, are unpacked only where they are missing.
qft_deps_pkgs="libconfig-dev libconfig9 libopenblas-dev libopenblas0-pthread
  libopenblas-pthread-dev libopenblas0 libgfortran5 libquadmath0 libpcre2-dev libpcre2-8-0
  libjansson-dev libjansson4 check libsubunit-dev libsubunit0 pkgconf pkgconf-bin libpkgconf3
  pkg-config"
qft_deps_libs="libconfig openblas libpcre2-8 jansson check"
# Open MPI 4.1 with what its libraries and plugins load (ldd of orterun, orted, libmpi and
# every MCA component, less glibc, libstdc++ and zlib)
qft_deps_mpi="openmpi-bin libopenmpi3 libopenmpi-dev openmpi-common libevent-core-2.1-7
  libevent-pthreads-2.1-7 libhwloc15 libpmix2 libucx0 libfabric1 libibverbs1 ibverbs-providers
  librdmacm1 libpsm2-2 libpsm-infinipath1 libnl-3-200 libnl-route-3-200 libmunge2 libnuma1"
qft_deps_fallback="libudev1 libuuid1"
qft_deps_bnb="bitsandbytes==0.50.2"

# Unpacks every .deb of directory $1 under $2.
qft_deps_unpack() {
    mkdir -p "$2" || return 1
    for qft_deps_f in "$1"/*.deb; do dpkg-deb -x "$qft_deps_f" "$2" || return 1; done
}

qft_deps_fetch() {
    root=$(cd "$(dirname "$0")/.." && pwd)
    mkdir -p "$root/.devkit" && cd "$root/.devkit" || return 1
    rm -f ./*.deb fallback/*.deb
    # shellcheck disable=SC2086 # the lists split on purpose
    apt-get download $qft_deps_pkgs $qft_deps_mpi || return 1
    mkdir -p fallback && (cd fallback && apt-get download $qft_deps_fallback) || return 1
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
    qft_deps_kit=${QFT_DEVKIT:-$PWD/.devkit}
    qft_deps_root=${QFT_DEPS:-/tmp/qft-deps}
    qft_deps_lib="$qft_deps_root/usr/lib/x86_64-linux-gnu"
    # QFT_DEPS_FORCE=1 uses the kit even where the machine has the libraries (to try it)
    if [ "${QFT_DEPS_FORCE:-0}" != 1 ] && command -v pkg-config >/dev/null 2>&1 &&
        pkg-config --exists $qft_deps_libs 2>/dev/null; then
        qft_deps_mpi_env
        qft_deps_nccl_env
        return 0 # the machine has them
    fi
    if ! ls "$qft_deps_kit"/*.deb >/dev/null 2>&1; then
        echo "device-deps: this machine lacks $qft_deps_libs (or pkg-config) and $qft_deps_kit" \
             "holds no .deb files: run scripts/device-deps.sh fetch where apt works and carry" \
             ".devkit" >&2
        return 1
    fi
    qft_deps_unpack "$qft_deps_kit" "$qft_deps_root" || return 1
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
    qft_deps_mpi_env
    qft_deps_nccl_env
}

# NCCL from python3's nvidia-nccl wheel (which PyTorch brings), where neither CUDA's lib64
# nor the system has libnccl.so (or QFT_DEPS_FORCE=1): the wheel holds lib/libnccl.so.2 and
# include/nccl.h but no libnccl.so to link with, so a directory of links stands in for it,
# and QFT_NCCL_ROOT names it for meson (-Dqft_nccl_root, as gpu-check.sh passes it).
qft_deps_nccl_env() {
    if [ "${QFT_DEPS_FORCE:-0}" != 1 ]; then
        for qft_deps_f in /usr/local/cuda/lib64/libnccl.so /usr/lib/x86_64-linux-gnu/libnccl.so; do
            [ -e "$qft_deps_f" ] && return 0
        done
    fi
    qft_deps_whl=$(python3 -c 'import nvidia.nccl as m; print(list(m.__path__)[0])' 2>/dev/null) ||
        return 0
    [ -f "$qft_deps_whl/lib/libnccl.so.2" ] && [ -f "$qft_deps_whl/include/nccl.h" ] || return 0
    mkdir -p "$qft_deps_root/nccl/lib" || return 0
    ln -sf "$qft_deps_whl/lib/libnccl.so.2" "$qft_deps_root/nccl/lib/libnccl.so"
    ln -sf "$qft_deps_whl/lib/libnccl.so.2" "$qft_deps_root/nccl/lib/libnccl.so.2"
    ln -sfn "$qft_deps_whl/include" "$qft_deps_root/nccl/include"
    export QFT_NCCL_ROOT="$qft_deps_root/nccl"
    export LD_LIBRARY_PATH="$qft_deps_root/nccl/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "device-deps: NCCL from python3's wheel ($qft_deps_whl), linked under $QFT_NCCL_ROOT"
}

# Open MPI from the kit, where the machine has no mpirun (or QFT_DEPS_FORCE=1). Unpacks the
# kit when qft_deps_env has not (a machine with the C libraries but no MPI); failures only
# leave the multi-rank step to report "no mpirun".
qft_deps_mpi_env() {
    [ "${QFT_DEPS_FORCE:-0}" != 1 ] && mpirun --version >/dev/null 2>&1 && return 0
    ls "$qft_deps_kit"/libopenmpi3_*.deb >/dev/null 2>&1 || return 0 # a kit from before MPI
    [ -x "$qft_deps_root/usr/bin/orterun" ] || qft_deps_unpack "$qft_deps_kit" "$qft_deps_root" || return 0
    qft_deps_ompi="$qft_deps_lib/openmpi"
    qft_deps_pmix="$qft_deps_lib/pmix2"
    # what update-alternatives would have made: mpirun, mpicc and PSM's soname link
    mkdir -p "$qft_deps_root/alt" || return 0
    ln -sf "$qft_deps_root/usr/bin/orterun" "$qft_deps_root/alt/mpirun"
    ln -sf "$qft_deps_root/usr/bin/opal_wrapper" "$qft_deps_root/alt/mpicc"
    ln -sf "$qft_deps_root/usr/lib/libpsm1/libpsm_infinipath.so.1.16" \
        "$qft_deps_lib/libpsm_infinipath.so.1"
    qft_deps_path="$qft_deps_ompi/lib:$qft_deps_lib:$qft_deps_root/lib/x86_64-linux-gnu"
    for qft_deps_so in libudev.so.1 libuuid.so.1; do
        # not grep -q: under a caller's pipefail its early exit would fail ldconfig's side
        ldconfig -p 2>/dev/null | grep "$qft_deps_so " >/dev/null && continue
        qft_deps_unpack "$qft_deps_kit/fallback" "$qft_deps_root/fallback" || return 0
        qft_deps_path="$qft_deps_path:$qft_deps_root/fallback/usr/lib/x86_64-linux-gnu"
        qft_deps_path="$qft_deps_path:$qft_deps_root/fallback/lib/x86_64-linux-gnu"
        echo "device-deps: this machine lacks $qft_deps_so: the kit's Debian 12 copy is used"
        break
    done
    export PATH="$qft_deps_root/alt:$PATH"
    export LD_LIBRARY_PATH="$qft_deps_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export LIBRARY_PATH="$qft_deps_ompi/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
    export OPAL_PREFIX="$qft_deps_root/usr" OPAL_LIBDIR="$qft_deps_ompi/lib" \
        OPAL_PKGLIBDIR="$qft_deps_ompi/lib/openmpi3" OPAL_INCLUDEDIR="$qft_deps_ompi/include" \
        OPAL_SYSCONFDIR="$qft_deps_root/etc/openmpi" OPAL_DATADIR="$qft_deps_root/usr/share/openmpi" \
        OPAL_PKGDATADIR="$qft_deps_root/usr/share/openmpi"
    export PMIX_PREFIX="$qft_deps_pmix" PMIX_LIBDIR="$qft_deps_pmix/lib" \
        PMIX_PKGLIBDIR="$qft_deps_pmix/lib/pmix" PMIX_DATADIR="$qft_deps_pmix/share" \
        PMIX_PKGDATADIR="$qft_deps_pmix/share/pmix"
    # meson finds MPI through ompi-c.pc: where qft_deps_env did not point pkg-config at the
    # kit, add the kit's Open MPI .pc files to the machine's own
    if [ -z "${PKG_CONFIG_SYSROOT_DIR:-}" ]; then
        mkdir -p "$qft_deps_root/mpi-pc" || return 0
        for qft_deps_f in "$qft_deps_ompi"/lib/pkgconfig/*.pc; do
            sed "s|^prefix=/usr|prefix=$qft_deps_root/usr|" "$qft_deps_f" \
                >"$qft_deps_root/mpi-pc/$(basename "$qft_deps_f")"
        done
        export PKG_CONFIG_PATH="$qft_deps_root/mpi-pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    fi
    if mpirun --version >/dev/null 2>&1; then
        echo "device-deps: Open MPI from the kit ($(mpirun --version 2>&1 | head -1))"
    else
        echo "device-deps: the kit's Open MPI does not run here: the multi-rank step will" \
             "report no mpirun" >&2
        PATH=$(echo "$PATH" | sed "s|$qft_deps_root/alt:||")
    fi
}

case "${1:-}" in
fetch) qft_deps_fetch ;;
env) qft_deps_env ;;
*) echo "usage: scripts/device-deps.sh fetch | . scripts/device-deps.sh env" >&2; false ;;
esac
