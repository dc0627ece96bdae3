#!/usr/bin/env bash
# One prepared script for a lent GPU machine (no network there): install the carried wheels,
# run the GPU tests, then the training-throughput benchmark. Results go to $OUT.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, lightning, diffusers, datasets; print('torch', torch.__version__, 'lightning', lightning.__version__, 'diffusers', diffusers.__version__)"
timeout 200 python3 -m pytest -q -m gpu -p no:cacheprovider -p no:warnings tests/test_gpu.py > "$OUT/gpu_tests.txt" 2>&1; grep -E "^E |passed|failed" "$OUT/gpu_tests.txt" | head -20
timeout 330 python3 benchmarks/train_throughput.py --preset ddpm-cifar10 --batch-size 128 --steps 40 --warmup 15 --workers 6 "$@" \
    2>"$OUT/bench_stderr.txt" | tee "$OUT/bench_ddpm_cifar10_b128.json"
tail -5 "$OUT/bench_stderr.txt"
