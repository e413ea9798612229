#!/usr/bin/env bash
# Decoding benchmark: cotlab (candle, KV cache) vs transformers `generate` vs llama.cpp
# (llama-cpp-python on the same GGUF), same prompts, greedy, N new tokens, batch 1 and batch N,
# in one run; prints each and the ratios.
#   benches/compare_generate.sh [--batch 8] [--new-tokens 64] [-- cotlab bench generate options]
#   benches/compare_generate.sh --eval [--limit 300]
#     the evaluation out of the box: `cotlab eval --task svamp --limit N` with no other flags
#     (default weights and batch size) against llama.cpp batch 1 on the same GGUF (16 SVAMP
#     prompts x 64 tokens) right before and right after it; prints tokens/s and both ratios.
# Needs: scripts/setup.sh --torch --llamacpp (see benches/common.sh); without llama-cpp-python the
# llama.cpp column is left out, and the output says so.
set -euo pipefail
source "$(dirname "$0")/common.sh"
new=64; batch=8; extra=(); eval=0; limit=300
while [ $# -gt 0 ]; do
    case "$1" in
        --batch) batch="$2"; shift 2 ;;
        --new-tokens) new="$2"; shift 2 ;;
        --eval) eval=1; shift ;;
        --limit) limit="$2"; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "usage: benches/compare_generate.sh [--batch N] [--new-tokens N] [-- cotlab bench generate options] | --eval [--limit N]" >&2; exit 2 ;;
    esac
done
gguf="$home/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ "$eval" = 1 ]; then
    "$py" -c 'import llama_cpp' 2>/dev/null || { echo "--eval needs llama-cpp-python: scripts/setup.sh --llamacpp" >&2; exit 1; }
    RAYON_NUM_THREADS="$threads" "$bin" bench generate --prompts svamp:16 --batch 1 --new-tokens 1 --save-prompts "$tmp/p.json" >/dev/null 2>&1
    llama() { "$py" benches/llamacpp_generate.py --gguf "$gguf" --prompts "$tmp/p.json" --new-tokens 64 --threads "$threads" 2>/dev/null | tail -1; }
    before=$(llama)
    RAYON_NUM_THREADS="$threads" "$bin" eval --task svamp --limit "$limit" --out "$tmp/eval" 2>"$tmp/eval.log" || { cat "$tmp/eval.log" >&2; exit 1; }
    after=$(llama)
    python3 - "$tmp/eval/results.json" "$before" "$after" "$tmp/eval.log" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))
before, after = (json.loads(a) for a in sys.argv[2:4])
batch = re.search(r"\[eval\] batch (\d+)", open(sys.argv[4]).read())
tokens = r["mean_tokens"] * r["n"]
rate = tokens / r["seconds"]
print(f"cotlab eval --task svamp --limit {r['n']} (no other flags: {r['decoded_with']} weights, batch {batch.group(1) if batch else '?'}): "
      f"{tokens:.0f} tokens in {r['seconds']:.1f} s, {rate:.1f} tokens/s, {r['correct']}/{r['n']} correct")
for name, l in (("before", before), ("after", after)):
    print(f"llama.cpp batch 1 {name}: {l['batch1_tokens_per_s']:.1f} tokens/s -> cotlab eval / llama.cpp {rate / l['batch1_tokens_per_s']:.2f}x (target >= 3.0)")
PY
    exit 0
fi
c=$(RAYON_NUM_THREADS="$threads" "$bin" bench generate --batch "$batch" --new-tokens "$new" --save-prompts "$tmp/p.json" "${extra[@]}" --json | tail -1)
t=$("$py" benches/torch_generate.py --model "$hf" --prompts "$tmp/p.json" --new-tokens "$new" --threads "$threads" | tail -1)
l='null'
if "$py" -c 'import llama_cpp' 2>/dev/null; then
    l=$("$py" benches/llamacpp_generate.py --gguf "$gguf" --prompts "$tmp/p.json" --new-tokens "$new" --threads "$threads" 2>/dev/null | tail -1)
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
