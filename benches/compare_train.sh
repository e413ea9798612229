#!/usr/bin/env bash
# Training benchmarks: cotlab (candle) vs PyTorch + transformers on the same model, data, precision
# and optimizer, both in one run; prints both and the ratios.
#   benches/compare_train.sh [--lora] [--batch 4] [--seq 256] [--steps 3]
#       the raw step: one fixed batch of random ids, every token in the loss.
#   benches/compare_train.sh --job [--lora] [--steps 2] [--task svamp --teacher gpt-4o --level 3]
#       the real job: SFT on release rationales with the paper's recipe (global batch 4 x 16,
#       response-only loss, cosine lr 5e-5), against the same steps done the HF Trainer way
#       (benches/torch_job.py: micro-batches padded to their longest, full logits).
# Needs: scripts/setup.sh --torch (see benches/common.sh); --job also the release data
# ($COTLAB_DATA or --data-dir).
set -euo pipefail
source "$(dirname "$0")/common.sh"
job=0
lora=()
args=()
for a in "$@"; do
    case "$a" in
        --job) job=1 ;;
        --lora) lora=(--lora); args+=("$a") ;;
        *) args+=("$a") ;;
    esac
done
if [ "$job" = 1 ]; then
    c=$(RAYON_NUM_THREADS="$threads" "$bin" bench job "${args[@]}" --save-plan "$tmp/plan.json" --json | tail -1)
    t=$("$py" benches/torch_job.py --model "$hf" --plan "$tmp/plan.json" --threads "$threads" "${lora[@]}" | tail -1)
    python3 - "$c" "$t" <<'PY'
import json, sys
c, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"job {c['corpus']} ({c['examples']} examples), {c['steps']} timed steps of {c['batch_size']} x {c['grad_accum']}, {c['tokens_per_step']:.0f} tokens/step")
for name, r in (("cotlab      ", c), ("transformers", t)):
    print(f"{name}: {r['tokens_per_s']:8.1f} tokens/s  {r['step_s']:7.2f} s/step  {r['cpu_s_per_step']:7.1f} CPU-s/step  peak RSS {r['peak_rss_mb']:7.0f} MB  losses {[round(x, 4) for x in r['losses']]}")
print(f"ratio       : speed {c['tokens_per_s'] / t['tokens_per_s']:.2f}x transformers (target >= 1.5), memory {c['peak_rss_mb'] / t['peak_rss_mb']:.2f}x")
PY
    exit 0
fi
[ "${#args[@]}" -gt 0 ] || args=(--batch 4 --seq 256 --steps 3)
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
print(f"ratio  : speed {c['tokens_per_s'] / t['tokens_per_s']:.2f}x PyTorch (target >= 1.0), memory {c['peak_rss_mb'] / t['peak_rss_mb']:.2f}x (target <= 1.0)")
PY
