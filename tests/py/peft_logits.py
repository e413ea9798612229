#!/usr/bin/env python3
"""Load PEFT adapter dirs with AutoPeftModelForCausalLM (the base as adapter_config.json names
it: a Hub id from the cache, HF_HUB_OFFLINE, or a local dir) and print as JSON, per dir, the
last-position logits (f32) of the given ids. Used by tests/students.rs.
usage: peft_logits.py IDS_JSON ADAPTER_DIR..."""
import json, sys

import torch
from peft import AutoPeftModelForCausalLM

ids = torch.tensor([json.loads(sys.argv[1])])
out = {}
for d in sys.argv[2:]:
    model = AutoPeftModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        out[d] = model(input_ids=ids).logits[0, -1].tolist()
print(json.dumps(out))
