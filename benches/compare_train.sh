#!/usr/bin/env bash
# Train-step benchmark: cotlab (candle) vs PyTorch + transformers on the same model, batch, ids and
# precision, in one run; prints both and the ratios.
#   benches/compare_train.sh [--lora] [--batch 4] [--seq 256] [--steps 3]
# Needs: scripts/setup.sh --torch (see benches/common.sh).
set -euo pipefail
source "$(dirname "$0")/common.sh"
args=(--batch 4 --seq 256 --steps 3)
lora=()
for a in "$@"; do [ "$a" = "--lora" ] && lora=(--lora); done
[ "$#" -gt 0 ] && args=("$@")
c=$(RAYON_NUM_THREADS="$threads" "$bin" bench train "${args[@]}" --save-batch "$tmp/batch.json" --json | tail -1)
steps=$(echo "$c" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["losses"]) - 1)')
t=$("$py" benches/torch_train.py --model "$hf" --batch "$tmp/batch.json" --steps "$steps" --threads "$threads" "${lora[@]}" | tail -1)
python3 - "$c" "$t" <<'PY'
import json, sys
c, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"mode {c['mode']}")
for name, r in (("cotlab ", c), ("pytorch", t)):
    print(f"{name}: {r['tokens_per_s']:8.1f} tokens/s  {r['step_s']:6.2f} s/step (fwd {r['fwd_s']:.2f} bwd {r['bwd_s']:.2f} opt {r['opt_s']:.2f})  "
          f"{r['cpu_s_per_step']:6.1f} CPU-s/step  peak RSS {r['peak_rss_mb']:7.0f} MB  losses {[round(x, 4) for x in r['losses']]}")
print(f"ratio  : speed {c['tokens_per_s'] / t['tokens_per_s']:.2f}x PyTorch (target >= 1.0), memory {c['peak_rss_mb'] / t['peak_rss_mb']:.2f}x (target <= 1.5)")
PY
