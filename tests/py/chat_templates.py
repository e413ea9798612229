#!/usr/bin/env python3
"""Chat-template reference: render each template file for each conversation with transformers'
own `render_jinja_template` (what `apply_chat_template(tokenize=False)` calls), `strftime_now`
pinned to 2024-07-26 12:00 as in the fixtures' expected_renderings.json, bos '<s>', eos '</s>'.
usage: chat_templates.py SPEC_JSON   SPEC_JSON: {"templates": [path...], "conversations": [{"messages": [...], "add_generation_prompt": bool}]}
prints {path: [rendering or {"error": "<type>: <message>"} per conversation]}"""
import datetime, json, sys

from transformers.utils import chat_template_utils as ctu


class Pinned(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime.datetime(2024, 7, 26, 12, 0, 0)


ctu.datetime = Pinned
spec = json.loads(sys.argv[1])
out = {}
for path in spec["templates"]:
    text = open(path, encoding="utf-8").read()
    rows = []
    for c in spec["conversations"]:
        try:
            rendered = ctu.render_jinja_template(conversations=[c["messages"]], chat_template=text, add_generation_prompt=c["add_generation_prompt"], bos_token="<s>", eos_token="</s>")
            rows.append(rendered[0][0])
        except Exception as e:
            rows.append({"error": f"{type(e).__name__}: {e}"})
    out[path] = rows
print(json.dumps(out))
