#!/usr/bin/env bash
# Sets up (venv, torch, build) and runs fastrnn's whole test suite. Extra arguments go to pytest.
set -euo pipefail
. "$(dirname "$0")/setup_env.sh"
python -m pytest tests -q "$@"
