# Sourced by scripts/test.sh and scripts/bench.sh: creates (once) the virtual environment .venv with the
# CUDA build of torch, and builds fastrnn's extension in place. Idempotent; safe to source repeatedly.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="${FASTRNN_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV" >&2
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# torch 2.14.1 is the CUDA 13.0 build: with it the CUDA sources compile and link even without a GPU.
if ! python -c "import torch, pytest, pytest_benchmark, numpy, expecttest, ninja, matplotlib, onnx, onnxscript, onnxruntime" 2>/dev/null; then
  echo "== installing Python dependencies" >&2
  python -m pip install -q --disable-pip-version-check torch==2.14.1 numpy pytest pytest-benchmark \
    expecttest ninja setuptools wheel matplotlib onnx==1.23.2 onnxscript==0.7.2 onnxruntime==1.32.0
fi

# The CUDA toolkit: CUDA_HOME must name its root explicitly (torch guesses wrong from a wrapper nvcc).
if [ -z "${CUDA_HOME:-}" ] && [ "${FASTRNN_SKIP_CUDA:-0}" != "1" ]; then
  for d in /usr/local/cuda /usr/local/cuda-*; do
    if [ -x "$d/bin/nvcc" ]; then export CUDA_HOME="$(cd "$d" && pwd -P)"; break; fi
  done
fi
# GPU code: TORCH_CUDA_ARCH_LIST when the caller sets it, else csrc/cuda/cuda_archs.txt (setup.py reads it).
export MAX_JOBS="${MAX_JOBS:-2}"
# Warnings in fastrnn's sources are errors (the compile gate) for every caller alike: the flag is part of
# the compile commands, so a caller that left it unset would make the next one rebuild everything.
export FASTRNN_WERROR="${FASTRNN_WERROR:-1}"

echo "== building fastrnn (CUDA_HOME=${CUDA_HOME:-none}, arch ${TORCH_CUDA_ARCH_LIST:-csrc/cuda/cuda_archs.txt})" >&2
mkdir -p build
if ! python setup.py build_ext --inplace > build/setup.log 2>&1; then
  tail -n 80 build/setup.log >&2
  echo "build failed: full log in build/setup.log" >&2
  exit 1
fi
