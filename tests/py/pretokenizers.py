#!/usr/bin/env python3
"""The reference for tests/students.rs: the normalizer and pre-tokenizer of Llama-3's and
Qwen2's tokenizer.json (as those files hold them), on the BPE vocabulary and merges of a given
tokenizer.json, run by the `tokenizers` library itself. Prints, for each name and each string,
the pre-tokenizer's pieces and the ids; and the pieces that llama.cpp's own spelling of each
regex (llama-vocab.cpp, `(?i:...)` written out) gives, which must be the same.
usage: pretokenizers.py TOKENIZER_JSON STRINGS_JSON"""
import json, sys

from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers

tok_json, strings = sys.argv[1], json.loads(sys.argv[2])

# From meta-llama/Llama-3.2-1B-Instruct and Qwen/Qwen2.5-0.5B-Instruct tokenizer.json.
HF = {
    "llama-bpe": {
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
             "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
    },
    "qwen2": {
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
             "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
    },
}
# llama.cpp's regexes for LLAMA_VOCAB_PRE_TYPE_LLAMA3 and _QWEN2.
LLAMA_CPP = {
    "llama-bpe": "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    "qwen2": "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
}

base = json.load(open(tok_json, encoding="utf-8"))
out = {}
for name, parts in HF.items():
    spec = dict(base, normalizer=parts["normalizer"], pre_tokenizer=parts["pre_tokenizer"], post_processor=None)
    tok = Tokenizer.from_str(json.dumps(spec))
    # A non-special added token, as Qwen's <think> (the GGUF marks it user-defined).
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False)])
    alt = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA_CPP[name]), "isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    norm = tok.normalizer or normalizers.Sequence([])
    rows = []
    for s in strings:
        n = norm.normalize_str(s)
        rows.append({
            "pieces": [p for p, _ in tok.pre_tokenizer.pre_tokenize_str(n)],
            "llama_cpp_pieces": [p for p, _ in alt.pre_tokenize_str(n)],
            "ids": tok.encode(s, add_special_tokens=False).ids,
        })
    out[name] = rows
print(json.dumps(out))
