#!/usr/bin/env bash
# Builds libfastrnn with CMake (find_package(Torch)), as a C++ user would, into build-cmake/ and checks
# that loading it registers the fastrnn:: operators and runs one of them. Needs the environment of
# scripts/setup_env.sh (a Python with torch). Extra arguments go to cmake's configure step
# (e.g. -DFASTRNN_CUDA=ON).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${FASTRNN_CMAKE_BUILD:-$ROOT/build-cmake}"
PREFIX="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')"
args=(-DCMAKE_PREFIX_PATH="$PREFIX" -DFASTRNN_WERROR=ON)
# torch's CMake config insists on finding the CUDA libraries its own build used (the CUDA wheel of torch):
# the toolkit root, and nvrtc, which ships in the nvidia-* wheels rather than in the toolkit.
if [ -n "${CUDA_HOME:-}" ]; then
  args+=(-DCUDA_TOOLKIT_ROOT_DIR="$CUDA_HOME" -DCUDAToolkit_ROOT="$CUDA_HOME")
  nvrtc="$(python - <<'PY'
import glob, os, sys
for entry in sys.path:
    hits = sorted(glob.glob(os.path.join(entry, "nvidia", "*", "lib", "libnvrtc.so*")))
    if hits:
        print(hits[0]); break
PY
)"
  [ -n "$nvrtc" ] && args+=(-DCUDA_nvrtc_LIBRARY="$nvrtc")
fi
# GPU code (with -DFASTRNN_CUDA=ON): TORCH_CUDA_ARCH_LIST when the caller sets it, else csrc/cuda/cuda_archs.txt,
# as in setup.py (CMakeLists.txt).
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$ROOT" -B "$BUILD" "${generator[@]}" "${args[@]}" "$@" > "$BUILD.configure.log" 2>&1 ||
  { tail -n 40 "$BUILD.configure.log"; exit 1; }
cmake --build "$BUILD" -j "${MAX_JOBS:-2}"
python - "$BUILD/libfastrnn.so" <<'PY'
import sys, torch
torch.ops.load_library(sys.argv[1])
x, h, c = torch.randn(3, 2, 4), torch.zeros(2, 5), torch.zeros(2, 5)
w_ih, w_hh = torch.randn(20, 4), torch.randn(20, 5)
out, hy, cy, ws = torch.ops.fastrnn.lstm_forward(x, None, h, c, w_ih, w_hh, None, None, None, False, True)
assert out.shape == (3, 2, 5) and torch.equal(out[-1], hy) and ws.shape == (6, 25), (out.shape, ws.shape)
print("libfastrnn (CMake build) registers and runs fastrnn::lstm_forward")
PY
