# Sourced by the compare_*.sh benchmarks: builds cotlab, exports the default student as an HF dir
# for the Python side (once), and sets $py, $bin, $hf, $tmp, $threads.
# Needs: scripts/setup.sh (the model) and a Python with torch + transformers
# ($COTLAB_PYTHON, default ~/.cache/cotlab/venv/bin/python; scripts/setup.sh --torch makes it).
cd "$(dirname "$0")/.."
home="${COTLAB_HOME:-$HOME/.cache/cotlab}"
py="${COTLAB_PYTHON:-$home/venv/bin/python}"
# $COTLAB_BIN: time another build (e.g. an older commit's binary) instead of building this one.
if [ -n "${COTLAB_BIN:-}" ]; then
    bin="$COTLAB_BIN"
else
    cargo build --release --quiet
    bin="${CARGO_TARGET_DIR:-target}/release/cotlab"
fi
hf="$home/models/smollm2-135m-instruct-hf"
[ -d "$hf" ] || "$bin" export --model default --out "$hf"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
threads="${RAYON_NUM_THREADS:-$(nproc)}"
