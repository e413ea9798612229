#!/usr/bin/env python3
"""llama.cpp baseline for `cotlab bench generate`: the same GGUF the default student is loaded
from (SmolLM2-135M-Instruct, Q4_1 blocks, computed as llama.cpp does), the same prompt ids
(`--save-prompts`), greedy, exactly N new tokens, through llama-cpp-python's C API: batch 1, and
all prompts at once as parallel sequences of one context (llama.cpp's batched decoding, as in its
`batched` example and `llama-server --parallel`). Prints one JSON object on the last line."""
import argparse, ctypes, json, time

import llama_cpp as L
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--gguf", required=True)
ap.add_argument("--prompts", required=True)
ap.add_argument("--new-tokens", type=int, default=64)
ap.add_argument("--threads", type=int, default=2)
a = ap.parse_args()
prompts = json.load(open(a.prompts))

L.llama_backend_init()
mp = L.llama_model_default_params()
# No extra buffer types: for Q4_1 the only one is llama.cpp's AMX repacking, whose matmul
# segfaults in llama-cpp-python 0.3.36 on Sapphire Rapids; without it llama.cpp runs its
# AVX-512 (VNNI) Q4_1 kernels, its path on every other x86-64 CPU.
mp.use_extra_bufts = False
model = L.llama_model_load_from_file(a.gguf.encode(), mp)
assert model, f"llama.cpp could not load {a.gguf}"
n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
longest = max(len(p) for p in prompts) + a.new_tokens
cp = L.llama_context_default_params()
cp.n_seq_max = len(prompts)
cp.n_ctx = longest * len(prompts)
cp.n_batch = max(sum(len(p) for p in prompts), len(prompts))
cp.n_ubatch = cp.n_batch
cp.n_threads = cp.n_threads_batch = a.threads
ctx = L.llama_init_from_model(model, cp)
assert ctx, "llama.cpp could not create a context"
batch = L.llama_batch_init(cp.n_batch, 0, 1)


def decode(items):
    """items: (token, position, sequence, wants logits)."""
    batch.n_tokens = len(items)
    for i, (tok, pos, seq, out) in enumerate(items):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = tok, pos, 1, out
        batch.seq_id[i][0] = seq
    rc = L.llama_decode(ctx, batch)
    assert rc == 0, f"llama_decode returned {rc}"


def argmax(i):
    return int(np.argmax(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(n_vocab,))))


def run(group):
    L.llama_memory_clear(L.llama_get_memory(ctx), True)
    t0 = time.perf_counter()
    items, last = [], []
    for s, p in enumerate(group):
        items += [(t, j, s, j == len(p) - 1) for j, t in enumerate(p)]
        last.append(len(items) - 1)
    decode(items)
    nxt = [argmax(i) for i in last]
    for k in range(a.new_tokens - 1):
        decode([(t, len(p) + k, s, True) for s, (t, p) in enumerate(zip(nxt, group))])
        nxt = [argmax(i) for i in range(len(group))]
    return a.new_tokens * len(group) / (time.perf_counter() - t0)


run(prompts[:1])  # warm-up
# Batch 1: the median of 3 short generations (as `cotlab bench generate`), then batch N once.
one = sorted(run(prompts[:1]) for _ in range(3))[1]
many = run(prompts)
print(json.dumps({"batch1_tokens_per_s": one, "batchN_tokens_per_s": many, "batch": len(prompts), "new_tokens": a.new_tokens, "llama_cpp_python": L.__version__}))
