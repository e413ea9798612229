#!/usr/bin/env python3
"""Beam search reference: write a tiny random Llama (transformers itself builds it) and print the
tokens transformers' `generate(num_beams=N, do_sample=False)` produces for each prompt, so
tests/beam_search.rs can check cotlab's beam search token for token.
The lm_head row of EOS (id 2) is a mix of rows of tokens the model likes, so some beams end with
EOS and others run to max_new_tokens: both ways of finishing are exercised.
usage: beam_reference.py OUT_DIR TOKENIZER_DIR SPEC_JSON
SPEC_JSON: {"prompts": [[ids]], "max_new_tokens": M, "beams": [N...], "stops": [[ids]...]}
prints {"N|stop,ids": [[generated ids incl. the stop token] per prompt], ...}"""
import json, os, shutil, sys

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

out, tok_dir, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=False,
                  bos_token_id=1, eos_token_id=2)
model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
with torch.no_grad():
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.05)
    W = model.lm_head.weight
    W.mul_(20.0)  # peaked distributions: no near-ties between candidates
    W[2] = 2.0 * (W[12777] + W[24126] + W[46434] + W[10136] + W[29248]) / 5 + torch.randn(64, generator=torch.Generator().manual_seed(3)) * W.std()
model.eval()
model.save_pretrained(out, safe_serialization=True)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(tok_dir, f), out)
result = {}
with torch.no_grad():
    for n in spec["beams"]:
        for stops in spec["stops"]:
            key = f"{n}|" + ",".join(map(str, stops))
            result[key] = []
            for prompt in spec["prompts"]:
                ids = torch.tensor([prompt])
                seq = model.generate(ids, attention_mask=torch.ones_like(ids), num_beams=n, do_sample=False,
                                     max_new_tokens=spec["max_new_tokens"], eos_token_id=stops, pad_token_id=0)
                result[key].append(seq[0, len(prompt):].tolist())
print(json.dumps(result))
