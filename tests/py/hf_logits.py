#!/usr/bin/env python3
"""Load an exported model dir with transformers and print the last-position logits (f32) of the
given token ids as JSON, plus the ids transformers' tokenizer gives for a text. Used by
tests/export_transformers.rs to check that cotlab's export loads and computes the same thing."""
import json, sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, ids_json, text = sys.argv[1], sys.argv[2], sys.argv[3]
model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
model.eval()
ids = torch.tensor([json.loads(ids_json)])
with torch.no_grad():
    logits = model(input_ids=ids).logits[0, -1].tolist()
tok = AutoTokenizer.from_pretrained(model_dir)
chat = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
print(json.dumps({"logits": logits, "text_ids": tok(text, add_special_tokens=False)["input_ids"], "chat": chat}))
