#!/usr/bin/env python3
"""Write tiny random Hugging Face models of each supported family with transformers itself
(the reference implementation), and print their last-position logits for fixed ids, so
tests/hf_families.rs can check that cotlab loads and computes each family exactly.
usage: tiny_hf_models.py OUT_DIR TOKENIZER_DIR"""
import json, os, shutil, sys

import torch
from transformers import AutoModelForCausalLM, BloomConfig, GemmaConfig, LlamaConfig, Qwen2Config, Qwen3Config

out, tok_dir = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
common = dict(vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
configs = {
    "llama": LlamaConfig(**common, rope_theta=10000.0, tie_word_embeddings=False),
    "llama3": LlamaConfig(**common, tie_word_embeddings=True, rope_parameters={
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "qwen2": Qwen2Config(**common, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=True),
    # head_dim 24, not hidden_size / heads: q/k/o are not square, the per-head norms are 24 wide.
    "qwen3": Qwen3Config(**common, head_dim=24, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=False),
    "qwen3_tied": Qwen3Config(**common, tie_word_embeddings=True),
    "gemma": GemmaConfig(**common, head_dim=24, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True),
    "bloom": BloomConfig(vocab_size=49152, hidden_size=64, n_layer=2, n_head=4),
}
ids = [1, 9690, 198, 2683, 359, 253, 5356, 28, 2]
result = {"ids": ids}
for name, cfg in configs.items():
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():  # non-trivial norms and biases, so every term is tested
            p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    d = os.path.join(out, name)
    model.save_pretrained(d, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(tok_dir, f), d)
    with torch.no_grad():
        result[name] = model(input_ids=torch.tensor([ids])).logits[0, -1].tolist()
print(json.dumps(result))
