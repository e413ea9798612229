#!/usr/bin/env python3
"""transformers `generate` baseline for `cotlab bench generate`: the same model (HF dir from
`cotlab export --model default`), the same prompt ids (`--save-prompts`), greedy, exactly N new
tokens, batch 1 and batch N (left padding). Prints one JSON object on the last line."""
import argparse, json, time

import torch
from transformers import AutoModelForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True)
ap.add_argument("--prompts", required=True)
ap.add_argument("--new-tokens", type=int, default=64)
ap.add_argument("--threads", type=int, default=0)
a = ap.parse_args()
if a.threads:
    torch.set_num_threads(a.threads)
model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
prompts = json.load(open(a.prompts))


def run(batch):
    width = max(len(p) for p in batch)
    ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=a.new_tokens,
                             min_new_tokens=a.new_tokens, do_sample=False, pad_token_id=0)
    return (out.shape[1] - width) * len(batch) / (time.perf_counter() - t0)


run(prompts[:1])  # warm-up
one, many = run(prompts[:1]), run(prompts)
print(json.dumps({"batch1_tokens_per_s": one, "batchN_tokens_per_s": many, "batch": len(prompts), "new_tokens": a.new_tokens}))
