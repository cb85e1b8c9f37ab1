#!/usr/bin/env bash
# The GPU path in at most 8 minutes on one GPU: the tests marked `cuda` (every family a few steps in bf16 and in
# fp16 with the grad scaler, every sampler on CUDA against the CPU, channels_last, torch.compile), then training
# throughput of difflab's engine against the diffusers loop at 32x32x3 and 64x64x3 on synthetic data.
# Results: docs/benchmarks/gpu.md (by hand from the printed table) and docs/benchmarks/gpu.json.
#   bash benchmarks/gpu_check.sh            (from the repository root; needs the bench extra for diffusers)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
start=$(date +%s)
# 1. correctness on CUDA (about 4 minutes at most)
timeout 270 "$PY" -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider -o addopts="" -rs
tests=$?
echo "cuda tests: exit $tests after $(( $(date +%s) - start )) s"
# 2. throughput: 2 sizes x 2 precisions x 2 libraries x (warm-up + 20 s) (about 3 minutes)
timeout 200 "$PY" benchmarks/gpu_throughput.py --device cuda --sizes 32 64 --seconds 20 --warmup 5 \
    --json docs/benchmarks/gpu.json
bench=$?
echo "throughput: exit $bench; total $(( $(date +%s) - start )) s"
exit $(( tests != 0 ? tests : bench ))
