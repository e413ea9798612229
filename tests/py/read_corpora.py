"""Read the corpora cotlab wrote with the readers users train with (tests/corpora.rs runs this).

argv: DIR TOKENIZER_DIR. DIR holds expected.json ([{question, rationale, answer}]), the written
files and dataset_info.json. Checks, per file: Hugging Face `datasets.load_dataset("json")` gives
the same questions, rationales and answers; TRL's SFTTrainer prepares the messages and
prompt-completion files on a tiny Llama (token ids, completion mask, the question in the
rendered text); every dataset_info.json entry reads as LLaMA-Factory's parser and converters
read it (documented schema: data/README.md). With LLAMAFACTORY_SRC set (an unpacked llamafactory
wheel), LLaMA-Factory's own parser and converters run on the entries too.
Prints one line per check; exits non-zero at the first mismatch.
"""

import json
import os
import sys
import tempfile

from datasets import load_dataset

root, tok_dir = sys.argv[1], sys.argv[2]
expected = json.load(open(os.path.join(root, "expected.json")))
info = json.load(open(os.path.join(root, "dataset_info.json")))


def fields(fmt, row):
    """(question, rationale) of one row as its format's readers see it."""
    if fmt == "alpaca":
        q = row["instruction"] + ("\n" + row["input"] if row["input"] else "")
        return q, row["output"]
    if fmt == "sharegpt":
        c = row["conversations"]
        assert [t["from"] for t in c] == ["human", "gpt"], c
        return c[0]["value"], c[1]["value"]
    if fmt == "messages":
        m = row["messages"]
        assert [t["role"] for t in m] == ["user", "assistant"], m
        return m[0]["content"], m[1]["content"]
    if fmt == "prompt-completion":
        return row["prompt"], row["completion"]
    raise SystemExit(f"unknown format {fmt}")


files = {}
for name, entry in sorted(info.items()):
    fmt = name.split("__")[0]
    path = os.path.join(root, entry["file_name"])
    ds = load_dataset("json", data_files=path, split="train")
    got = [fields(fmt, r) + (r["answer"],) for r in ds]
    want = [(e["question"], e["rationale"], e["answer"]) for e in expected]
    assert got == want, f"{path}: {got[:2]} != {want[:2]}"
    assert all(r["cotlab"]["source"] and r["id"] for r in ds), f"{path}: provenance fields missing"
    print(f"datasets.load_dataset: {entry['file_name']} ({fmt}) {len(ds)} rows identical")
    files[name] = (fmt, path, ds)

# LLaMA-Factory: the documented schema, checked as its parser and converters use it.
for name, entry in sorted(info.items()):
    fmt, path, ds = files[name]
    allowed = {"file_name", "formatting", "columns", "tags", "ranking", "split", "num_samples", "subset", "folder", "file_sha1"}
    assert set(entry) <= allowed, f"{name}: unknown keys {set(entry) - allowed}"
    formatting = entry.get("formatting", "alpaca")
    assert formatting in ("alpaca", "sharegpt"), formatting
    cols = entry.get("columns", {})
    if formatting == "alpaca":
        assert set(cols) <= {"prompt", "query", "response", "history", "system", "tools", "images", "videos", "audios"}, cols
        for r in ds:
            assert isinstance(r[cols.get("prompt", "instruction")], str) and isinstance(r[cols.get("response", "output")], str), r
            if "query" in cols:
                assert isinstance(r[cols["query"]], str)
    else:
        tags = entry.get("tags", {})
        assert set(cols) <= {"messages", "system", "tools", "images", "videos", "audios"}, cols
        role, content = tags.get("role_tag", "from"), tags.get("content_tag", "value")
        user, assistant = tags.get("user_tag", "human"), tags.get("assistant_tag", "gpt")
        for r in ds:
            turns = r[cols.get("messages", "conversations")]
            # The converter: user (or observation) turns at even positions, assistant at odd ones.
            for i, t in enumerate(turns):
                assert t[role] == (user if i % 2 == 0 else assistant), (name, i, t)
                assert isinstance(t[content], str)
            assert len(turns) % 2 == 0
    print(f"llamafactory schema: {name} -> {entry['file_name']} ({formatting}) ok")

if os.environ.get("LLAMAFACTORY_SRC"):
    import importlib.abc
    import importlib.machinery
    import types

    class Stub(types.ModuleType):
        __path__ = []

        def __getattr__(self, k):
            if k.startswith("__"):
                raise AttributeError(k)
            return "stub_" + k if k.isupper() else type(k, (), {})

    class Stubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        """peft and torchaudio are imported by llamafactory's data package but not used by the parser or converters."""

        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("peft", "torchaudio"):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)

        def create_module(self, spec):
            return Stub(spec.name)

        def exec_module(self, m):
            pass

    sys.meta_path.insert(0, Stubs())
    sys.path.insert(0, os.environ["LLAMAFACTORY_SRC"])
    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.parser import get_dataset_list

    class DataArgs:
        media_dir = root
        dataset_dir = root

    for name, attr in zip(sorted(info), get_dataset_list(sorted(info), root)):
        fmt, path, ds = files[name]
        assert attr.load_from == "file" and attr.dataset_name == info[name]["file_name"], attr
        conv = get_dataset_converter(attr.formatting, attr, DataArgs())
        for r, e in zip(ds, expected):
            out = conv(r)
            assert out["_prompt"][-1]["content"] == e["question"], (name, out["_prompt"])
            assert out["_response"][0]["content"] == e["rationale"], (name, out["_response"])
        print(f"llamafactory converter: {name} ({attr.formatting}) {len(ds)} rows identical")

# TRL: the SFT dataset preparation on a tiny model, for the formats TRL reads.
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from trl import SFTConfig, SFTTrainer
from trl.data_utils import maybe_apply_chat_template

tok = AutoTokenizer.from_pretrained(tok_dir)
tok.chat_template = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
tok.pad_token = tok.eos_token
torch.manual_seed(0)
model = LlamaForCausalLM(
    LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
)
for name in sorted(files):
    fmt, path, ds = files[name]
    if fmt not in ("messages", "prompt-completion"):
        continue
    rendered = maybe_apply_chat_template(ds[0], tok)
    text = rendered.get("text", rendered.get("prompt", "") + rendered.get("completion", ""))
    assert expected[0]["question"] in text and expected[0]["rationale"] in text, rendered
    with tempfile.TemporaryDirectory() as out:
        args = SFTConfig(output_dir=out, max_length=512, report_to="none", use_cpu=True, dataset_num_proc=None)
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
        prepared = trainer.train_dataset
        assert len(prepared) == len(expected), len(prepared)
        assert "input_ids" in prepared.column_names, prepared.column_names
        ids = prepared[0]["input_ids"]
        decoded = tok.decode(ids)
        assert expected[0]["question"] in decoded and expected[0]["rationale"] in decoded, decoded
        if fmt == "prompt-completion":
            # The loss covers the completion only: TRL folds its completion mask into `labels` (-100 elsewhere).
            if "completion_mask" in prepared.column_names:
                trained = [t for t, m in zip(ids, prepared[0]["completion_mask"]) if m]
            else:
                trained = [t for t in prepared[0]["labels"] if t != -100]
            assert 0 < len(trained) < len(ids), (len(trained), len(ids))
            text = tok.decode(trained)
            assert expected[0]["rationale"] in text and expected[0]["question"] not in text, text
    print(f"trl SFTTrainer: {os.path.basename(path)} ({fmt}) {len(prepared)} rows prepared")
print("all readers agree")
