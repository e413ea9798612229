#!/usr/bin/env bash
# Training benchmarks: cotlab (candle) vs PyTorch + transformers on the same model, data, precision
# and optimizer, both in one run; prints both and the ratios.
#   benches/compare_train.sh [--bf16] [--lora] [--batch 4] [--seq 256] [--steps 3]
#       the raw step: one fixed batch of random ids, every token in the loss. --bf16: cotlab
#       --dtype bf16 against PyTorch's torch.autocast("cpu", dtype=torch.bfloat16), and cotlab's
#       f32 losses on the same batch beside cotlab's bf16 ones (first and last within 2 %).
#   benches/compare_train.sh --job [--bf16] [--lora] [--steps 2] [--task svamp --teacher gpt-4o --level 3]
#       the real job: SFT on release rationales with the paper's recipe (global batch 4 x 16,
#       response-only loss, cosine lr 5e-5), against the same steps done the HF Trainer way
#       (benches/torch_job.py: micro-batches padded to their longest, full logits); --bf16:
#       cotlab --dtype bf16 against the Trainer's bf16=True (the forward under CPU autocast).
# Needs: scripts/setup.sh --torch (see benches/common.sh); --job also the release data
# ($COTLAB_DATA or --data-dir).
set -euo pipefail
source "$(dirname "$0")/common.sh"
job=0
bf16=0
lora=()
args=()
for a in "$@"; do
    case "$a" in
        --job) job=1 ;;
        --lora) lora=(--lora); args+=("$a") ;;
        --bf16) bf16=1 ;;
        *) args+=("$a") ;;
    esac
done
if [ "$job" = 1 ]; then
    dt=(); tdt=()
    [ "$bf16" = 1 ] && { dt=(--dtype bf16); tdt=(--bf16); }
    c=$(RAYON_NUM_THREADS="$threads" "$bin" bench job "${args[@]}" "${dt[@]}" --save-plan "$tmp/plan.json" --json | tail -1)
    t=$("$py" benches/torch_job.py --model "$hf" --plan "$tmp/plan.json" --threads "$threads" "${lora[@]}" "${tdt[@]}" | tail -1)
    python3 - "$c" "$t" <<'PY'
import json, platform, sys
c, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor()) if platform.system() == "Linux" else platform.processor()
print(f"job {c['corpus']} ({c['examples']} examples), {c['steps']} timed steps of {c['batch_size']} x {c['grad_accum']}, {c['tokens_per_step']:.0f} tokens/step; "
      f"cotlab {c.get('dtype', 'f32')} vs transformers {t['dtype']}{' autocast' if t['dtype'] == 'bf16' else ''}, CPU {cpu}")
for name, r in (("cotlab      ", c), ("transformers", t)):
    print(f"{name}: {r['tokens_per_s']:8.1f} tokens/s  {r['step_s']:7.2f} s/step  {r['cpu_s_per_step']:7.1f} CPU-s/step  peak RSS {r['peak_rss_mb']:7.0f} MB  losses {[round(x, 4) for x in r['losses']]}")
print(f"ratio       : speed {c['tokens_per_s'] / t['tokens_per_s']:.2f}x transformers (target >= 1.5), memory {c['peak_rss_mb'] / t['peak_rss_mb']:.2f}x")
PY
    exit 0
fi
[ "${#args[@]}" -gt 0 ] || args=(--batch 4 --seq 256 --steps 3)
if [ "$bf16" = 1 ]; then
    c=$(RAYON_NUM_THREADS="$threads" "$bin" bench train "${args[@]}" --dtype bf16 --save-batch "$tmp/batch.json" --json | tail -1)
    f=$(RAYON_NUM_THREADS="$threads" "$bin" bench train "${args[@]}" --dtype f32 --json | tail -1)
    torch_bf16=(--bf16)
    target=1.2
else
    c=$(RAYON_NUM_THREADS="$threads" "$bin" bench train "${args[@]}" --save-batch "$tmp/batch.json" --json | tail -1)
    f=null
    torch_bf16=()
    target=1.0
fi
steps=$(echo "$c" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["losses"]) - 1)')
t=$("$py" benches/torch_train.py --model "$hf" --batch "$tmp/batch.json" --steps "$steps" --threads "$threads" "${lora[@]}" "${torch_bf16[@]}" | tail -1)
python3 - "$c" "$t" "$f" "$target" <<'PY'
import json, platform, sys
c, t, f, target = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor()) if platform.system() == "Linux" else platform.processor()
print(f"mode {c['mode']}, cotlab {c['dtype']}{' on ' + c['gemm'] if c.get('gemm') else ''} vs PyTorch {t.get('dtype', 'f32')}{' autocast' if t.get('dtype') == 'bf16' else ''}, CPU {cpu}, {c['threads']} threads")
for name, r in (("cotlab ", c), ("pytorch", t)):
    print(f"{name}: {r['tokens_per_s']:8.1f} tokens/s  {r['step_s']:6.2f} s/step (fwd {r['fwd_s']:.2f} bwd {r['bwd_s']:.2f} opt {r['opt_s']:.2f})  "
          f"{r['cpu_s_per_step']:6.1f} CPU-s/step  peak RSS {r['peak_rss_mb']:7.0f} MB  losses {[round(x, 4) for x in r['losses']]}")
print(f"ratio  : speed {c['tokens_per_s'] / t['tokens_per_s']:.2f}x PyTorch (target >= {target}), memory {c['peak_rss_mb'] / t['peak_rss_mb']:.2f}x (target <= 1.0)")
if f is not None:
    rel = [abs(b - a) / abs(a) * 100 for a, b in ((f['losses'][0], c['losses'][0]), (f['losses'][-1], c['losses'][-1]))]
    print(f"cotlab f32 on the same batch: {f['tokens_per_s']:8.1f} tokens/s  losses {[round(x, 4) for x in f['losses']]}")
    print(f"bf16 vs f32 losses: first {rel[0]:.2f} %, last {rel[1]:.2f} % (target <= 2 %); bf16 speed {c['tokens_per_s'] / f['tokens_per_s']:.2f}x cotlab f32")
PY
