#!/usr/bin/env bash
# Decoding benchmark: cotlab (candle, KV cache) vs transformers generate, same model, prompts,
# greedy, N new tokens, batch 1 and batch N, in one run; prints both and the ratios.
#   benches/compare_generate.sh [--batch 8] [--new-tokens 64]
set -euo pipefail
source "$(dirname "$0")/common.sh"
new=64; batch=8
while [ $# -gt 0 ]; do case "$1" in --batch) batch="$2"; shift 2;; --new-tokens) new="$2"; shift 2;; *) shift;; esac; done
c=$(RAYON_NUM_THREADS="$threads" "$bin" bench generate --batch "$batch" --new-tokens "$new" --save-prompts "$tmp/p.json" --json | tail -1)
t=$("$py" benches/torch_generate.py --model "$hf" --prompts "$tmp/p.json" --new-tokens "$new" --threads "$threads" | tail -1)
python3 - "$c" "$t" <<'PY'
import json, sys
c, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for name, r in (("cotlab      ", c), ("transformers", t)):
    print(f"{name}: batch 1 {r['batch1_tokens_per_s']:7.1f} tokens/s   batch {r['batch']} {r['batchN_tokens_per_s']:7.1f} tokens/s")
print(f"ratio       : batch 1 {c['batch1_tokens_per_s'] / t['batch1_tokens_per_s']:.2f}x, batch {c['batch']} {c['batchN_tokens_per_s'] / t['batchN_tokens_per_s']:.2f}x (target >= 1.0)")
PY
