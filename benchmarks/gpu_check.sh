#!/usr/bin/env bash
# GPU check, for when a GPU machine is lent: SD-1.x-size 512x512 generation (random weights,
# built from config, nothing downloaded) through the harness's own generate() path in fp16 and
# bf16 with SDPA; prints images/s per batch size (1..32, until out of memory, via the harness's
# back-off), peak GPU memory and the projected time of the full UnlearnCanvas answer set, each
# line timestamped. Finishes in under 8 minutes on an H100, model construction included.
#
#   bash benchmarks/gpu_check.sh --fetch-wheels     # here, where PyPI is reachable: the packages the GPU
#                                                   # image lacks (diffusers, pydantic, ...) -> .whl/
#   bash benchmarks/gpu_check.sh [gpu_check.py options, e.g. --compile or --dtypes float16]
#                                                   # there, with .whl carried along
#   bash benchmarks/gpu_check.sh --model sdxl --dtypes float16
#                                                   # SDXL 1.0 base's size at 1024x1024 (batches 1..8, 10 and 20 steps)
#
# Without a GPU: .venv/bin/python benchmarks/gpu_check.py --tiny --device cpu [--model sdxl]
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

# What the harness needs beyond a plain PyTorch image (its torch, transformers, safetensors,
# pyyaml, pillow and tqdm are used as they are). Versions as in this project's environment.
WHEELS="diffusers==0.42.1 importlib_metadata==10.2.0 zipp pydantic==2.14.4 pydantic_core==2.50.5 annotated_types typing_inspection==0.4.5"

if [ "${1:-}" = "--fetch-wheels" ]; then
  "$PY" -m pip download --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $WHEELS
  exit 0
fi

if ! "$PY" -c "import diffusers, pydantic" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site .whl/*.whl
    export PYTHONPATH="/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: $PY lacks diffusers or pydantic; run 'bash benchmarks/gpu_check.sh --fetch-wheels' where PyPI is reachable and bring .whl/" >&2
    exit 2
  fi
fi

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec timeout "${GPU_CHECK_TIMEOUT:-470}" "$PY" benchmarks/gpu_check.py --device cuda "$@"
