#!/usr/bin/env bash
# The GPU checks, in one call on a CUDA machine: device facts, the CUDA tests, the GPU training benchmark
# (extra arguments go to benchmarks/train_throughput.py), the vLLM tests where vllm is installed, then
# #17's scale-out check: the 1B preset under torchrun/FSDP2 on every GPU of the machine, a short
# pretraining stage of the default flow with its BPB eval (the corpus and tokenizer stages built by one
# process first, at a reduced size). Logs go to OUTDIR (default /tmp/gpu); fsdp1b.txt ends with the BPB
# table, and OUTDIR/run1b/flow.json holds it.
#     bash benchmarks/gpu_check.sh [OUTDIR] [--gpu-batch 4 --gpu-peer ...]
set -o pipefail
out=${1:-/tmp/gpu}; shift || true
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit,driver_version --format=csv | tee "$out/device.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/device.txt"
python3 -m pytest -o addopts="" -p no:cacheprovider -q -rs tests/test_cuda.py tests/model/test_flex.py tests/model/test_kernels.py \
    tests/train/test_losses.py 2>&1 | tee "$out/tests.txt" | tail -25
python3 benchmarks/train_throughput.py "$@" 2>&1 | grep -v Warning | tee "$out/bench.txt"
# #15: the vLLM backend against the real vLLM (parity with the native engine, an inflight update, the
# mismatch band share in an RL batch), where the vllm package is installed: the lent image has none
if python3 -c "import vllm" 2>/dev/null; then
  python3 -m pytest -o addopts="" -p no:cacheprovider -q -rs -s tests/generate/test_vllm.py tests/rl/test_vllm_backend.py 2>&1 \
      | tee "$out/vllm.txt" | tail -8
else
  echo "vllm: not installed on this machine; the vLLM checks did not run" | tee "$out/vllm.txt"
fi
# #17: the same commands run with 2 CPU ranks and the tiny preset in tests/test_docs_commands.py
small="stages.corpus.pretrain_bytes=300000 stages.corpus.midtrain_bytes=100000 stages.tokenizer.train_bytes=300000"
python3 -m flowlm.cli train tiny --run-dir "$out/run1b" --no-progress --stage corpus --stage tokenizer $small \
    > "$out/fsdp1b.txt" 2>&1
torchrun --nproc_per_node "$(nvidia-smi -L | wc -l)" -m flowlm.cli train tiny --run-dir "$out/run1b" --no-progress \
    --stage pretrain $small model.preset=1b stages.pretrain.steps=8 stages.pretrain.checkpoint_every=8 \
    2>&1 | tee -a "$out/fsdp1b.txt" | tail -12
