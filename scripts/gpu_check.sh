#!/usr/bin/env bash
# The CUDA device check: everything a few minutes on a lent GPU machine should verify, in one run.
#
# Here (a CPU machine with Rust), once per change to what is checked:
#   scripts/gpu_check.sh --prepare
#       builds the CUDA cotlab and the CUDA test binary (scripts/build_cuda.sh --tests), and puts
#       into .gpu/ (ignored by git): cotlab.xz and cuda-tests.xz (stripped, xz-compressed) and
#       tokenizer.json (SmolLM2's, from the default student). About 45 MB: it travels within the
#       device tool's 64 MiB. Run it in the checkout the device tool sends.
# There (the GPU machine: driver + CUDA 13, no Rust, no internet), with carry [".gpu"]:
#   bash scripts/gpu_check.sh            (writes logs and summary.json under $OUT, else .gpu/out)
#
# What runs there (a few minutes on an H200 when all is well; the steps' timeouts add up to 9 min,
# so a run under the device tool's 600 s limit always ends with its summary):
#   1. the GPU, driver and CUDA libraries found (LD_LIBRARY_PATH is set here, see below);
#   2. tests/cuda.rs on CUDA (COTLAB_REQUIRE_CUDA=1: a missing device fails, never skips):
#      the custom ops' backward on CUDA vs CPU, every weight of a SmolLM2-135M-shaped model
#      getting a gradient in f32 and bf16 vs the CPU, LoRA, bf16 decoding;
#   3. SFT benchmarks (forward + backward + AdamW, bf16 compute, f32 master weights and
#      optimizer state): the default student's architecture (SmolLM2-135M) and Llama-3.2-1B's
#      (1.24B), both with random weights (the 94 MB GGUF does not fit the 64 MiB carry; speed
#      and memory depend on the shapes only); plus SmolLM2-135M in f32 for comparison.
#      Tokens/s, TFLOP/s, MFU against 989 TFLOP/s (H100/H200 dense bf16), device memory;
#   4. batched greedy decoding (bf16, KV cache): both architectures, batch 1 and 64;
#   5. one summary table (and summary.json).
#
# Libraries: the binaries link libcuda.so.1 (the driver's), libcudart.so.13, libcublas.so.13
# (+ libcublasLt.so.13) and libcurand.so.10. They are looked for on LD_LIBRARY_PATH, in the
# driver's and the toolkit's usual places and in Python's nvidia-* CUDA 13 wheels (torch's venv),
# and their folders put on LD_LIBRARY_PATH; a missing one stops the check with its name.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
gpu="$repo/.gpu"

if [ "${1:-}" = "--prepare" ]; then
    set -e
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/cotlab-target-cuda}"
    "$repo/scripts/build_cuda.sh" --tests
    bin="$CARGO_TARGET_DIR/release/cotlab"
    test_bin="$(cat "$CARGO_TARGET_DIR/release/cuda-test-path")"
    mkdir -p "$gpu"
    for pair in "cotlab:$bin" "cuda-tests:$test_bin"; do
        name="${pair%%:*}" src="${pair#*:}"
        strip -o "$gpu/$name" "$src"
        rm -f "$gpu/$name.xz"
        xz -T0 -6 "$gpu/$name"
    done
    # The tokenizer, from the default student, with this very binary: the stub libcuda makes it
    # run here (no GPU: the CPU).
    eval "$("$repo/scripts/build_cuda.sh" --env)"
    cu_lib="$(dirname "$NVCC")/../lib"
    LD_LIBRARY_PATH="$cu_lib:$cu_lib/stubs-run" "$bin" export --model default --tokenizer-only --out "$gpu"
    ls -la "$gpu"
    echo "gpu_check: prepared $(du -sh "$gpu" | cut -f1) in .gpu/; on the GPU machine run: bash scripts/gpu_check.sh (carry: [\".gpu\"])" >&2
    exit 0
fi
# --dry-run: the same steps on the CPU at toy sizes (no GPU needed; checks this script and the
# binaries' output here, with the stub libcuda on LD_LIBRARY_PATH, see docs/cuda.md).
dry=0
case "${1:-}" in
    "") ;;
    --dry-run) dry=1 ;;
    *) echo "usage: scripts/gpu_check.sh [--prepare|--dry-run]" >&2; exit 2 ;;
esac

# What comes back from the device tool is at most 8 files: gpu_check.log, cuda-tests.txt,
# summary.txt, summary.json and steps.tar.gz (each step's output and memory trace).
res="${OUT:-$gpu/out}"
mkdir -p "$res"
work="$(mktemp -d)"
out="$work/steps"
mkdir -p "$out"
exec > >(tee -a "$res/gpu_check.log") 2>&1
say() { echo "gpu_check: $*"; }
die() { echo "gpu_check: error: $*"; exit 1; }
SECONDS=0

# ---- 1. machine, driver, libraries
for f in cotlab.xz cuda-tests.xz tokenizer.json; do
    [ -f "$gpu/$f" ] || die ".gpu/$f missing: run scripts/gpu_check.sh --prepare on the build machine and carry .gpu"
done
if [ "$dry" = 1 ]; then
    say "dry run: CPU, toy sizes"
else
    nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader || die "nvidia-smi failed: no GPU?"
fi
command -v nvcc >/dev/null && nvcc --version | tail -2
xz -dc "$gpu/cotlab.xz" >"$work/cotlab" && xz -dc "$gpu/cuda-tests.xz" >"$work/cuda-tests" || die "could not unpack the binaries"
chmod +x "$work/cotlab" "$work/cuda-tests"

# Folders that may hold the driver's and the CUDA 13 libraries: LD_LIBRARY_PATH's first.
IFS=: read -r -a cands <<<"${LD_LIBRARY_PATH:-}"
cands+=(/usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64
    /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13.0/lib64)
for d in /usr/local/cuda-13*/targets/x86_64-linux/lib /opt/*/.venv/lib/python3*/site-packages/nvidia/cu13/lib \
    /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib /usr/local/lib/python3*/dist-packages/nvidia/cu13/lib; do
    [ -d "$d" ] && cands+=("$d")
done
if command -v python3 >/dev/null; then
    while IFS= read -r d; do [ -n "$d" ] && cands+=("$d"); done < <(python3 - <<'PY' 2>/dev/null
import glob, os, site
for s in site.getsitepackages() + [site.getusersitepackages()]:
    for d in glob.glob(os.path.join(s, "nvidia", "cu13", "lib")) + glob.glob(os.path.join(s, "nvidia", "*", "lib")):
        print(d)
PY
)
fi
ldpath=""
# What the binaries need (readelf: libcuda, libcudart, libcublas, libcurand; libcublasLt through
# libcublas). libnvrtc is linked only if used: looked for, not required.
for lib in libcuda.so.1 libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13; do
    found=""
    for d in "${cands[@]}"; do
        if [ -e "$d/$lib" ]; then found="$d"; break; fi
    done
    if [ -z "$found" ]; then
        p="$(ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 == l { print $NF; exit }')"
        [ -n "$p" ] && found="$(dirname "$p")"
    fi
    if [ -z "$found" ] && [ "$lib" = libnvrtc.so.13 ]; then say "$lib not found (not needed by this build)"; continue; fi
    [ -n "$found" ] || die "$lib not found (looked in ${cands[*]} and ldconfig)"
    say "$lib: $found"
    case ":$ldpath:" in *":$found:"*) ;; *) ldpath="${ldpath:+$ldpath:}$found" ;; esac
done
export LD_LIBRARY_PATH="$ldpath${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
if ldd "$work/cotlab" | grep -q 'not found'; then
    ldd "$work/cotlab" | grep 'not found'
    die "cotlab's libraries are not all found"
fi

# Device memory, polled while each step runs (the driver's view, all processes).
poll_start() { [ "$dry" = 1 ] && { : >"$out/smi-$1.txt"; poll=""; return; }; nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$out/smi-$1.txt" 2>/dev/null & poll=$!; }
poll_stop() { [ -n "$poll" ] && { kill "$poll" 2>/dev/null; wait "$poll" 2>/dev/null; }; sort -n "$out/smi-$1.txt" | tail -1; }
status=0
results="$out/results.jsonl"
: >"$results"
step() { # name timeout command...: runs, keeps the JSON line it prints, records peak memory
    local name="$1" t="$2"; shift 2
    say "---- $name (timeout ${t}s): $*"
    poll_start "$name"
    local t0=$SECONDS rc
    timeout "$t" "$@" >"$out/$name.json"
    rc=$?
    local peak; peak="$(poll_stop "$name")"
    say "$name: exit $rc in $((SECONDS - t0)) s, nvidia-smi peak ${peak:-?} MiB"
    local line; line="$(tail -1 "$out/$name.json" 2>/dev/null)"
    python3 - "$name" "$rc" "${peak:-0}" "$line" >>"$results" <<'PY'
import json, sys
name, rc, peak, line = sys.argv[1], int(sys.argv[2]), float(sys.argv[3] or 0), sys.argv[4]
try:
    r = json.loads(line)
except Exception:
    r = {}
r.update({"step": name, "exit": rc, "smi_peak_mib": peak})
print(json.dumps(r))
PY
    [ "$rc" -eq 0 ] || status=1
}

# ---- 2. the CUDA tests
say "---- cuda tests (timeout 150s)"
t0=$SECONDS
require=1
[ "$dry" = 1 ] && require=0
COTLAB_TEST_TOKENIZER="$gpu/tokenizer.json" COTLAB_REQUIRE_CUDA=$require timeout 150 "$work/cuda-tests" --test-threads=1 --nocapture 2>&1 | tee "$res/cuda-tests.txt"
trc=${PIPESTATUS[0]}
say "cuda tests: exit $trc in $((SECONDS - t0)) s"
[ "$trc" -eq 0 ] || status=1

# ---- 3. SFT benchmarks
tok="$gpu/tokenizer.json"
c=(--device cuda --tokenizer "$tok")
small=(--batch 16 --seq 512) big=(--batch 4 --seq 1024) gen=(--batch 64 --new-tokens 128) big_arch=llama-1b
if [ "$dry" = 1 ]; then
    c=(--device cpu --tokenizer "$tok") small=(--batch 1 --seq 16) big=(--batch 1 --seq 16) gen=(--batch 2 --new-tokens 4) big_arch=smollm2-135m
fi
step sft-smollm2-135m-bf16 75 "$work/cotlab" bench train "${c[@]}" --dtype bf16 --peak-tflops 989 --random smollm2-135m "${small[@]}" --steps 5 --json
step sft-smollm2-135m-f32 45 "$work/cotlab" bench train "${c[@]}" --dtype f32 --random smollm2-135m "${small[@]}" --steps 3 --json
step sft-$big_arch-bf16 150 "$work/cotlab" bench train "${c[@]}" --dtype bf16 --peak-tflops 989 --random $big_arch "${big[@]}" --steps 5 --json
# ---- 4. batched decoding
step gen-smollm2-135m-bf16 60 "$work/cotlab" bench generate "${c[@]}" --dtype bf16 --random smollm2-135m "${gen[@]}" --json
step gen-$big_arch-bf16 60 "$work/cotlab" bench generate "${c[@]}" --dtype bf16 --random $big_arch "${gen[@]}" --json

# ---- 5. summary
python3 - "$results" "$trc" "$SECONDS" "$res/summary.json" <<'PY' | tee "$res/summary.txt"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"\n==== cotlab GPU check: cuda tests exit {sys.argv[2]}, {sys.argv[3]} s in all ====")
print(f"{'step':26} {'exit':>4} {'tok/s':>10} {'s/step':>7} {'TFLOP/s':>8} {'MFU':>6} {'dev MB':>8} {'smi MiB':>8}  losses / decoding")
for r in rows:
    if "tokens_per_s" in r:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-"
        mem = f"{r['device_mem_mb']:.0f}" if r.get("device_mem_mb") is not None else "-"
        losses = ", ".join(f"{x:.3f}" for x in r.get("losses", [])[:3])
        print(f"{r['step']:26} {r['exit']:>4} {r['tokens_per_s']:>10.0f} {r['step_s']:>7.3f} {r['tflops']:>8.1f} {mfu:>6} {mem:>8} {r['smi_peak_mib']:>8.0f}  {losses}")
    elif "batchN_tokens_per_s" in r:
        print(f"{r['step']:26} {r['exit']:>4} {r['batchN_tokens_per_s']:>10.0f} {'':>7} {'':>8} {'':>6} {r.get('device_mem_mb') or 0:>8.0f} {r['smi_peak_mib']:>8.0f}  batch {r['batch']}; batch 1: {r['batch1_tokens_per_s']:.1f} tok/s")
    else:
        print(f"{r['step']:26} {r['exit']:>4}  (no result: see {r['step']}.json and gpu_check.log)")
json.dump(rows, open(sys.argv[4], "w"), indent=1)
PY
tar -C "$work" -czf "$res/steps.tar.gz" steps
rm -rf "$work"
say "done in $SECONDS s; status $status"
exit "$status"
