#!/usr/bin/env python3
"""Write a tiny random Llama model with transformers, beside the given tokenizer, for tests that
run real Python tools (lm-eval) on a model cotlab also loads.
usage: tiny_llama.py OUT_DIR TOKENIZER_DIR"""
import os, shutil, sys

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

out, tok_dir = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
cfg = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=512, tie_word_embeddings=True, eos_token_id=2, bos_token_id=1)
model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
model.save_pretrained(out, safe_serialization=True)
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(tok_dir, f), out)
