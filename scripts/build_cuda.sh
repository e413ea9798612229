#!/usr/bin/env bash
# Build a CUDA-enabled cotlab on a machine with no GPU and no CUDA install (the CPU dev/CI
# machines), to carry to a GPU machine that has a driver but no Rust toolchain.
#
#   scripts/build_cuda.sh            cotlab binary:        $CARGO_TARGET_DIR/release/cotlab
#   scripts/build_cuda.sh --tests    also the CUDA test binary (tests/cuda.rs), path printed
#   scripts/build_cuda.sh --check    only `cargo check --features cuda` (lib, bin, tests/cuda.rs)
#   scripts/build_cuda.sh --env      print the exports below, to build by hand (eval "$(...)")
#
# What it does (each step skipped when already done, so it is idempotent):
# 1. The CUDA 13.0 toolkit pieces candle needs, as PyPI wheels, into a venv under
#    ~/.cache/cotlab (COTLAB_CUDA_VENV): nvcc + cicc/nvvm + crt/cccl headers (to compile candle's
#    kernels to PTX and its MoE/GGUF kernels to a static lib), and cudart, nvrtc, cublas(Lt),
#    curand (to link). 13.0 because candle's PTX is JIT-compiled by the GPU machine's driver,
#    which is CUDA 13.0 there: an nvcc newer than the driver makes PTX it refuses.
# 2. What the wheels lack for linking: unversioned lib*.so symlinks (-lcublas needs libcublas.so)
#    and a stub libcuda.so (the driver library; the real one comes with the GPU's driver), built
#    here from the list of driver functions cudarc declares.
# 3. cargo build --release --features cuda with NVCC, CUDA_HOME, CUDARC_CUDA_VERSION=13000 and
#    CUDA_COMPUTE_CAP=90 (H100/H200; candle turns 90 into sm_90a). Override CUDA_COMPUTE_CAP for
#    other cards (80 = A100); a binary built for 90 runs only on Hopper.
#
# The build writes to $CARGO_TARGET_DIR (default ~/.cache/cotlab-target-cuda, kept apart from the
# CPU build so neither invalidates the other). The binary is dynamically linked against
# libcuda.so.1 (driver), libcudart.so.13, libcublas.so.13 (which needs libcublasLt.so.13) and
# libcurand.so.10 (nvrtc is linked as unused and dropped): on the GPU machine these come from the driver and the CUDA 13 toolkit or the
# nvidia-* wheels there (scripts/gpu_check.sh finds them and sets LD_LIBRARY_PATH).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
mode=build
for arg in "$@"; do
    case "$arg" in
        --tests) mode=tests ;;
        --check) mode=check ;;
        --env) mode=env ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "usage: scripts/build_cuda.sh [--tests|--check|--env]" >&2; exit 2 ;;
    esac
done
die() { echo "build_cuda: error: $*" >&2; exit 1; }
say() { echo "build_cuda: $*" >&2; }

venv="${COTLAB_CUDA_VENV:-$HOME/.cache/cotlab/cuda-venv}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cotlab-target-cuda}"
# CUDA 13.0 update 2, one version of each piece.
pins=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-cuda-cccl==13.0.85
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-nvrtc==13.0.88
    nvidia-cublas==13.0.2.14
    nvidia-curand==10.4.0.35
)

# ---- 1. toolkit wheels
stamp="$venv/.cotlab-cuda-pins"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${pins[*]}" ]; then
    command -v python3 >/dev/null || die "python3 not found (needed to install the CUDA wheels)"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || die "could not create the venv $venv (apt-get install python3-venv?)"
    say "installing the CUDA 13.0 toolkit wheels into $venv (about 1.2 GB installed)..."
    "$venv/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check "${pins[@]}" \
        || die "pip could not install ${pins[*]} (is PyPI reachable?)"
    echo "${pins[*]}" >"$stamp"
fi
cu="$(ls -d "$venv"/lib/python3*/site-packages/nvidia/cu13 2>/dev/null | head -1)"
[ -n "$cu" ] && [ -x "$cu/bin/nvcc" ] || die "no nvcc under $venv/lib/python3*/site-packages/nvidia/cu13/bin: remove $venv and run again"

# ---- 2. link names and the driver stub
for lib in cudart nvrtc cublas cublasLt curand; do
    real="$(cd "$cu/lib" && ls lib$lib.so.[0-9]* 2>/dev/null | grep -E "^lib$lib\.so\.[0-9]+$" | head -1)"
    [ -n "$real" ] || die "lib$lib.so.N missing in $cu/lib"
    [ -e "$cu/lib/lib$lib.so" ] || ln -s "$real" "$cu/lib/lib$lib.so"
done
[ -e "$cu/lib64" ] || ln -s lib "$cu/lib64"
stub="$cu/lib/stubs/libcuda.so"
stub_version="cotlab-libcuda-stub-2"
if [ ! -f "$stub" ] || [ "$(cat "$stub.version" 2>/dev/null)" != "$stub_version" ]; then
    command -v cc >/dev/null || die "no C compiler (cc) for the libcuda stub (apt-get install gcc)"
    cudarc="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort -V | tail -1 || true)"
    # (|| true: with pipefail a failed ls would end the script here instead of fetching.)
    if [ -z "$cudarc" ]; then
        (cd "$repo" && cargo fetch --quiet) || die "cargo fetch failed"
        cudarc="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort -V | tail -1 || true)"
    fi
    [ -f "$cudarc/src/driver/sys/mod.rs" ] || die "cudarc 0.19 source not found under ~/.cargo/registry/src"
    mkdir -p "$cu/lib/stubs"
    tmp="$(mktemp -d)"
    # Every driver entry point cudarc may link to. Only the names matter at link time; on the GPU
    # machine the driver's real libcuda.so.1 is loaded instead. Each stub returns
    # CUDA_ERROR_NO_DEVICE (100), so with stubs-run/ on LD_LIBRARY_PATH the CUDA build also runs
    # on a machine without a GPU: no device found, `auto` falls back to the CPU, CUDA tests skip.
    grep -oE '^\s*fn cu[A-Za-z0-9_]+\(' "$cudarc/src/driver/sys/mod.rs" | sed -E 's/^\s*fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u \
        | awk '{ printf "int %s(void) { return 100; }\n", $1 }' >"$tmp/stub.c"
    [ "$(wc -l <"$tmp/stub.c")" -gt 100 ] || die "found too few driver functions in $cudarc/src/driver/sys/mod.rs"
    cc -shared -fPIC -fno-builtin -Wl,-soname,libcuda.so.1 -o "$stub" "$tmp/stub.c" || die "could not build the libcuda stub"
    rm -rf "$tmp"
    mkdir -p "$cu/lib/stubs-run"
    ln -sf ../stubs/libcuda.so "$cu/lib/stubs-run/libcuda.so.1"
    echo "$stub_version" >"$stub.version"
    say "libcuda stub: $stub ($(nm -D --defined-only "$stub" | wc -l) symbols)"
fi

# ---- 3. environment and cargo
export NVCC="$cu/bin/nvcc"
export CUDA_HOME="$cu" CUDA_PATH="$cu" CUDA_ROOT="$cu"
export CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export PATH="$cu/bin:$PATH"
export LD_LIBRARY_PATH="$cu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# nvcc compiles candle's kernels in parallel; keep it to the cores cargo would use.
export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
"$NVCC" --version | grep -q 'release 13.0' || die "$NVCC is not CUDA 13.0"

if [ "$mode" = env ]; then
    for v in NVCC CUDA_HOME CUDA_PATH CUDA_ROOT CUDARC_CUDA_VERSION CUDA_COMPUTE_CAP PATH LD_LIBRARY_PATH CARGO_TARGET_DIR CUDAFORGE_THREADS; do
        printf 'export %s=%q\n' "$v" "${!v}"
    done
    exit 0
fi

cd "$repo"
SECONDS=0
case "$mode" in
    check)
        say "cargo check --features cuda (lib, bin, tests/cuda.rs) into $CARGO_TARGET_DIR"
        cargo check --release --features cuda --lib --bin cotlab --test cuda
        say "check passed in ${SECONDS} s"
        ;;
    build|tests)
        say "cargo build --release --features cuda (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP) into $CARGO_TARGET_DIR"
        cargo build --release --features cuda --bin cotlab
        bin="$CARGO_TARGET_DIR/release/cotlab"
        [ -x "$bin" ] || die "cargo finished but $bin is missing"
        # Each build writes this binary; the CPU build's own target dir is untouched.
        say "built in ${SECONDS} s: $bin (CUDA, sm_$CUDA_COMPUTE_CAP)"
        if [ "$mode" = tests ]; then
            cargo test --release --features cuda --test cuda --no-run || die "the CUDA test binary did not build"
            test_bin="$(cargo test --release --features cuda --test cuda --no-run --message-format=json 2>/dev/null \
                | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cuda": print(m["executable"])' | tail -1)"
            [ -n "$test_bin" ] && [ -x "$test_bin" ] || die "could not build the CUDA test binary (run: cargo test --release --features cuda --test cuda --no-run)"
            say "test binary: $test_bin"
            echo "$test_bin" >"$CARGO_TARGET_DIR/release/cuda-test-path"
        fi
        # What the binary needs at run time (libcuda.so.1 comes from the GPU machine's driver).
        missing="$(ldd "$bin" | awk '/not found/ { print $1 }' | tr '\n' ' ')"
        say "runtime libraries not found on this machine: ${missing:-none} (libcuda.so.1 is expected: it is the driver's)"
        ;;
esac
