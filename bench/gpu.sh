#!/usr/bin/env bash
# The GPU throughput table in one command (issue 13): bench/gpu.sh [--quick] [--budget SECONDS] [--out FILE]
# Needs a Python with torch (CUDA build), diffusers and transformers: $PYTHON, else .venv/bin/python, else
# python3. Writes bench/results-gpu.json (and a copy under $OUT when that is set, as on the device machine).
# Ends within ~8 minutes: a time guard (--budget, default 420 s) skips the rows not started by then.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import torch, diffusers, transformers" 2>/dev/null; then
  echo "bench/gpu.sh: $PY lacks torch, diffusers or transformers; set PYTHON=... (see 'make install')" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
timeout 470 "$PY" bench/gpu.py "$@"
if [ -n "${OUT:-}" ] && [ -f bench/results-gpu.json ]; then cp bench/results-gpu.json "$OUT/"; fi
