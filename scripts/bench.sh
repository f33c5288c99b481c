#!/usr/bin/env bash
# Sets up (venv, torch, build) and runs the main job: fastrnn against torch.nn on the device present.
# Extra arguments go to the bench command (default: --quick).
set -euo pipefail
. "$(dirname "$0")/setup_env.sh"
if [ "$#" -eq 0 ]; then set -- --quick; fi
python -m fastrnn.bench "$@"
