#!/usr/bin/env python3
"""Load an exported model dir with transformers as its config.json asks (dtype "auto") and in
f32, and print as JSON: the dtype it loaded in, the config's dtype, and the f32 model's
last-position logits of the given ids. Used by tests/students.rs for bf16 and sharded exports.
usage: hf_load_export.py MODEL_DIR IDS_JSON"""
import json, sys

import torch
from transformers import AutoConfig, AutoModelForCausalLM

model_dir, ids = sys.argv[1], json.loads(sys.argv[2])
auto = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
config = AutoConfig.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
model.eval()
with torch.no_grad():
    logits = model(input_ids=torch.tensor([ids])).logits[0, -1].tolist()
print(json.dumps({"loaded_dtype": str(auto.dtype), "config_dtype": str(config.dtype), "logits": logits}))
