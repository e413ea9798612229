#!/usr/bin/env bash
# Build cotlab and run the quickstart on the embedded data (no download needed):
# rule-teacher rationales at all six granularity levels, measured, as a table, CSV and chart.
# Outputs land in out/quickstart/. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
target="${CARGO_TARGET_DIR:-target}"
"$target/release/cotlab" run scripts/quickstart.rhai --out out/quickstart "$@"
