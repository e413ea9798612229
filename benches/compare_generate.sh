#!/usr/bin/env bash
# Decoding benchmark: cotlab (candle, KV cache) vs transformers `generate` vs llama.cpp
# (llama-cpp-python on the same GGUF), same prompts, greedy, N new tokens, batch 1 and batch N,
# in one run; prints each and the ratios.
#   benches/compare_generate.sh [--batch 8] [--new-tokens 64] [-- cotlab bench generate options]
# Needs: scripts/setup.sh --torch --llamacpp (see benches/common.sh); without llama-cpp-python the
# llama.cpp column is left out, and the output says so.
set -euo pipefail
source "$(dirname "$0")/common.sh"
new=64; batch=8; extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --batch) batch="$2"; shift 2 ;;
        --new-tokens) new="$2"; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "usage: benches/compare_generate.sh [--batch N] [--new-tokens N] [-- cotlab bench generate options]" >&2; exit 2 ;;
    esac
done
c=$(RAYON_NUM_THREADS="$threads" "$bin" bench generate --batch "$batch" --new-tokens "$new" --save-prompts "$tmp/p.json" "${extra[@]}" --json | tail -1)
t=$("$py" benches/torch_generate.py --model "$hf" --prompts "$tmp/p.json" --new-tokens "$new" --threads "$threads" | tail -1)
l='null'
if "$py" -c 'import llama_cpp' 2>/dev/null; then
    l=$("$py" benches/llamacpp_generate.py --gguf "$home/models/SmolLM2-135M-Instruct.Q4_1.gguf" --prompts "$tmp/p.json" --new-tokens "$new" --threads "$threads" 2>/dev/null | tail -1)
fi
python3 - "$c" "$t" "$l" <<'PY'
import json, sys
c, t, l = (json.loads(a) for a in sys.argv[1:])
rows = [("cotlab      ", c), ("transformers", t)] + ([("llama.cpp   ", l)] if l else [])
for name, r in rows:
    print(f"{name}: batch 1 {r['batch1_tokens_per_s']:7.1f} tokens/s   batch {r['batch']} {r['batchN_tokens_per_s']:7.1f} tokens/s")
for name, r in rows[1:]:
    print(f"cotlab / {name.strip():12}: batch 1 {c['batch1_tokens_per_s'] / r['batch1_tokens_per_s']:.2f}x, batch {c['batch']} {c['batchN_tokens_per_s'] / r['batchN_tokens_per_s']:.2f}x (target >= 1.0)")
if not l:
    print("llama.cpp: not measured (no llama-cpp-python: scripts/setup.sh --llamacpp)")
PY
