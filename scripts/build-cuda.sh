#!/usr/bin/env bash
# Builds `dyrep` with CUDA and NCCL support on a machine with no GPU and no system CUDA:
# nvcc, headers and libraries come from PyPI's CUDA 13.0 wheels (NCCL from nvidia-nccl-cu13),
# and libcuda (the driver's library, which no wheel carries) is replaced at link time by a stub
# generated from cudarc's bindings; at run time the driver's real libcuda.so.1 is loaded (same
# soname).
#
#   scripts/build-cuda.sh            # -> target/cuda/release/dyrep (features cuda, nccl)
#   scripts/build-cuda.sh --mpi      # also MPI, for several ranks under mpirun (needs Open MPI
#                                    # here and on the GPU machines: libopenmpi-dev openmpi-bin)
#   CUDA_COMPUTE_CAP=80 scripts/build-cuda.sh   # A100 instead of H100/H200 (default 90)
#
# Cache: wheels and the unpacked toolkit in ${DYREP_CUDA_CACHE:-$HOME/.cache/dyrep-cuda}, the
# build in target/cuda (a second run only rebuilds what changed).
#
# Run the binary on a machine with the NVIDIA driver and the CUDA 13 runtime libraries
# (libcudart, libnvrtc, libcublas, libcublasLt, libcurand) and NCCL 2 (libnccl.so.2): either that
# machine's own install or the same wheels (e.g. a PyTorch cu13x environment's
# site-packages/nvidia/cu13/lib and site-packages/nvidia/nccl/lib):
#   LD_LIBRARY_PATH=/path/to/nvidia/cu13/lib:/path/to/nvidia/nccl/lib target/cuda/release/dyrep train --device cuda ...
set -euo pipefail
cd "$(dirname "$0")/.."

FEATURES=cuda,nccl
for arg in "$@"; do
    case "$arg" in
        --mpi) FEATURES=$FEATURES,mpi ;;
        *) echo "build-cuda: unknown argument $arg (expected --mpi)" >&2; exit 2 ;;
    esac
done

CACHE=${DYREP_CUDA_CACHE:-$HOME/.cache/dyrep-cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
WHEELS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-nvrtc==13.0.88
    nvidia-curand==10.4.0.35
    nvidia-cublas==13.0.0.19
    nvidia-nccl-cu13==2.30.7
)

die() { echo "build-cuda: $*" >&2; exit 1; }
command -v cargo >/dev/null || die "cargo not found; install the Rust toolchain first"
command -v python3 >/dev/null || die "python3 not found (needed to fetch and unpack the CUDA wheels)"
command -v g++ >/dev/null || die "g++ not found (nvcc needs a host compiler): apt-get install g++"
command -v gcc >/dev/null || die "gcc not found (builds the libcuda link stub): apt-get install gcc"

# 1. The CUDA 13.0 toolkit from PyPI wheels, unpacked into one tree.
mkdir -p "$CACHE/wheels"
TOOLKIT="$CACHE/toolkit"
STAMP="$TOOLKIT/.complete-$(printf '%s\n' "${WHEELS[@]}" | sha256sum | cut -c1-16)"
if [ ! -e "$STAMP" ]; then
    echo "build-cuda: fetching ${#WHEELS[@]} CUDA wheels into $CACHE/wheels"
    python3 -m pip download --quiet --no-deps --only-binary=:all: \
        --dest "$CACHE/wheels" "${WHEELS[@]}" || die "pip download failed (is PyPI reachable?)"
    rm -rf "$TOOLKIT.partial"
    mkdir -p "$TOOLKIT.partial"
    for spec in "${WHEELS[@]}"; do
        name=${spec%%==*}
        version=${spec##*==}
        wheel=$(ls "$CACHE/wheels/${name//-/_}-${version}-"*.whl 2>/dev/null | head -1)
        [ -n "$wheel" ] || die "wheel for $spec not found in $CACHE/wheels"
        python3 -m zipfile -e "$wheel" "$TOOLKIT.partial"
    done
    rm -rf "$TOOLKIT"
    mv "$TOOLKIT.partial" "$TOOLKIT"
    touch "$STAMP"
fi
CUDA_ROOT="$TOOLKIT/nvidia/cu13"
[ -x "$CUDA_ROOT/bin/nvcc" ] || chmod +x "$CUDA_ROOT"/bin/* "$CUDA_ROOT"/nvvm/bin/* 2>/dev/null || true
[ -x "$CUDA_ROOT/bin/nvcc" ] || die "nvcc missing from $CUDA_ROOT/bin after unpacking"

NCCL_LIB="$TOOLKIT/nvidia/nccl/lib"
[ -e "$NCCL_LIB/libnccl.so.2" ] || die "libnccl.so.2 missing from $NCCL_LIB after unpacking"

# Unversioned names for the linker (the wheels ship only libfoo.so.N).
for lib in "$CUDA_ROOT"/lib/lib*.so.* "$NCCL_LIB"/lib*.so.*; do
    base=$(basename "$lib")
    plain="$(dirname "$lib")/${base%%.so.*}.so"
    [ -e "$plain" ] || ln -s "$base" "$plain"
done
[ -e "$CUDA_ROOT/lib64" ] || ln -s lib "$CUDA_ROOT/lib64"

# 2. Make sure cudarc's sources are here, then build a libcuda.so stub with every driver
# symbol its bindings declare (soname libcuda.so.1, so the driver's library is used at run time).
cargo fetch --quiet
CUDARC_SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort | tail -1 || true)
[ -n "$CUDARC_SRC" ] || die "cudarc sources not found after cargo fetch"
STUB_DIR="$CACHE/stub"
mkdir -p "$STUB_DIR"
if [ ! -s "$STUB_DIR/libcuda_stub.c" ] || [ ! -e "$STUB_DIR/libcuda.so" ]; then
    { grep -rhoE 'pub (unsafe )?fn cu[A-Za-z0-9_]+\(' "$CUDARC_SRC/src/driver/sys" || true; } \
        | sed -E 's/pub (unsafe )?fn (cu[A-Za-z0-9_]+)\(/\2/' | sort -u \
        | awk '{ printf "void %s(void) {}\n", $1 }' > "$STUB_DIR/libcuda_stub.c"
    [ -s "$STUB_DIR/libcuda_stub.c" ] || die "no driver symbols found in $CUDARC_SRC/src/driver/sys"
    gcc -shared -fPIC -o "$STUB_DIR/libcuda.so" -Wl,-soname,libcuda.so.1 "$STUB_DIR/libcuda_stub.c"
fi

# 3. Build.
export PATH="$CUDA_ROOT/bin:$PATH"
export CUDA_HOME="$CUDA_ROOT" CUDA_PATH="$CUDA_ROOT" CUDA_ROOT="$CUDA_ROOT" NVCC="$CUDA_ROOT/bin/nvcc"
export CUDARC_CUDA_VERSION=13000  # cudarc spells 13.0 as 13000
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$STUB_DIR -L native=$CUDA_ROOT/lib -L native=$NCCL_LIB"
export LIBRARY_PATH="$STUB_DIR:$CUDA_ROOT/lib:$NCCL_LIB${LIBRARY_PATH:+:$LIBRARY_PATH}"
echo "build-cuda: nvcc $("$NVCC" --version | tail -1), compute capability $CUDA_COMPUTE_CAP, features $FEATURES"
cargo build --release -p dyrep-cli --features "$FEATURES" --target-dir target/cuda
BIN=target/cuda/release/dyrep
[ -x "$BIN" ] || die "build finished but $BIN is missing"
echo "build-cuda: built $BIN"
echo "build-cuda: it needs at run time (ldd):"
ldd "$BIN" | grep -E 'cuda|nvrtc|cublas|curand|nccl|mpi' || true
# Smoke test on this machine: the stub stands in for the driver's libcuda.so.1, so the binary
# must load and run a command that does not touch the GPU.
ln -sf libcuda.so "$STUB_DIR/libcuda.so.1"
if LD_LIBRARY_PATH="$STUB_DIR:$CUDA_ROOT/lib:$NCCL_LIB" "$BIN" ops > /dev/null; then
    echo "build-cuda: smoke test ok (the binary loads with the CUDA 13 libraries)"
else
    die "the built binary does not start (see above)"
fi
# A compact copy for machines reached through a size limit (the binary carries candle's PTX
# kernels as text: ~60 MB stripped, ~12 MB compressed); scripts/gpu-check.sh unpacks it.
if command -v strip >/dev/null && command -v xz >/dev/null; then
    strip -o target/cuda/dyrep-stripped "$BIN"
    xz -T0 -6 -c target/cuda/dyrep-stripped > target/cuda/dyrep.xz.partial
    mv target/cuda/dyrep.xz.partial target/cuda/dyrep.xz
    rm -f target/cuda/dyrep-stripped
    echo "build-cuda: compact copy target/cuda/dyrep.xz ($(du -h target/cuda/dyrep.xz | cut -f1); DYREP_BIN=target/cuda/dyrep.xz scripts/gpu-check.sh unpacks it)"
fi
echo "build-cuda: on a machine with the NVIDIA driver, run it with LD_LIBRARY_PATH reaching the"
echo "CUDA 13 and NCCL libraries, e.g. LD_LIBRARY_PATH=$CUDA_ROOT/lib:$NCCL_LIB $BIN --device cuda verify --kernels"
