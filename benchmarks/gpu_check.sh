#!/usr/bin/env bash
# The GPU checks, in one call on a CUDA machine: device facts, the CUDA tests, then the GPU training
# benchmark (extra arguments go to benchmarks/train_throughput.py). Logs go to OUTDIR (default /tmp/gpu).
#     bash benchmarks/gpu_check.sh [OUTDIR] [--gpu-batch 4 --gpu-peer ...]
set -o pipefail
out=${1:-/tmp/gpu}; shift || true
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit,driver_version --format=csv | tee "$out/device.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/device.txt"
python3 -m pytest -p no:cacheprovider -q -rs tests/test_cuda.py tests/model/test_flex.py tests/model/test_kernels.py \
    tests/train/test_losses.py 2>&1 | tee "$out/tests.txt" | tail -25
python3 benchmarks/train_throughput.py "$@" 2>&1 | grep -v Warning | tee "$out/bench.txt"
