#!/usr/bin/env bash
# Build a separate virtual environment with a matching torch + torch_xla pair and run the XLA
# tests on torch_xla's CPU device. The main environment is never touched.
#   usage: bash tools/xla_env.sh            (env: XLA_VENV=.venv-xla, TORCH_XLA_VERSION=2.9.0)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${XLA_VENV:-$ROOT/.venv-xla}"
XLA_VERSION="${TORCH_XLA_VERSION:-2.9.0}"
# torch_xla X.Y.Z is built against torch X.Y.Z (and torchvision 0.(Y+15).Z): the pair must match.
TORCH_VERSION="${TORCH_VERSION:-$XLA_VERSION}"
PYTHON="${PYTHON:-python3.11}"

# Ignore this machine's pip config (it caps torch below the version torch_xla needs).
export PIP_CONFIG_FILE=/dev/null
PIP=("$VENV/bin/python" -m pip --isolated --disable-pip-version-check)

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"${PIP[@]}" install -q --upgrade pip
# The CPU torch build lives on download.pytorch.org; fall back to PyPI's default build when
# that index cannot be reached.
if ! "${PIP[@]}" install -q --retries 0 --timeout 15 "torch==$TORCH_VERSION" \
    --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple 2>/dev/null; then
  echo "xla_env: CPU torch index unreachable, installing torch==$TORCH_VERSION from PyPI"
  "${PIP[@]}" install -q "torch==$TORCH_VERSION"
fi
"${PIP[@]}" install -q "torch_xla==$XLA_VERSION" "torch==$TORCH_VERSION"
# What the XLA tests import (the project's test conftest needs transformers and gin).
"${PIP[@]}" install -q "torch==$TORCH_VERSION" "gin-config==0.5.0" torchdiffeq "transformers>=4.45" \
    safetensors pillow numpy scipy filelock "pytest>=8"
"${PIP[@]}" install -q --no-deps -e "$ROOT"

PJRT_DEVICE=CPU "$VENV/bin/python" -c "import torch, torch_xla; print('torch', torch.__version__, 'torch_xla', torch_xla.__version__)"
cd "$ROOT"
PJRT_DEVICE=CPU "$VENV/bin/python" -m pytest -q tests/test_xla.py "$@"
