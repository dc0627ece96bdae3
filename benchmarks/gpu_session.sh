#!/usr/bin/env bash
# One prepared script for a lent GPU machine (no network there): install the carried wheels
# (see the device tool's notes; they live in .whl/, ignored by git), then each part asked for, in
# order. Results go to $OUT.  Usage: bash benchmarks/gpu_session.sh [tests] [throughput] [probes] [rise]
#   tests       tests/training/test_gpu.py: bf16 / channels_last / compile, live probes under CUDA graphs (~4 min)
#   throughput  train_throughput.py: CUDA graphs / compiled / eager x observers on and off (~8 min;
#               the goal's variant first, a JSON line after each, so a time limit keeps what ran),
#               and the DataModule's loader (data_loader.py, seconds)
# A 15-minute device budget holds about one of tests / throughput plus the machine's start: run
# throughput first (the numbers), tests in a second call if time is left.
# (rise needs scipy and scikit-image wheels among the carried ones: diffprobe.explain imports them)
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
cd benchmarks
for what in "$@"; do
  case $what in
    tests) (cd .. && timeout 420 python3 -m pytest -q -m gpu -p no:cacheprovider -p no:warnings tests/training/test_gpu.py > "$OUT/gpu_tests.txt" 2>&1; grep -E "^E |passed|failed" "$OUT/gpu_tests.txt" | head -20) ;;
    # CUDA graphs / compiled / eager, each with the full observation stack on and off, then OnlineProbes step by step
    throughput)
      python3 data_loader.py 2>"$OUT/data_loader_stderr.txt" | tail -1 | tee "$OUT/data_loader.json"
      timeout 540 python3 train_throughput.py --preset ddpm-cifar10 --batch-size 128 --steps 40 --warmup 15 --workers 6 --variants cudagraphs,compiled,eager 2>"$OUT/throughput_stderr.txt" | tail -1 | tee "$OUT/throughput.json" ;;
    probes)
      timeout 120 python3 probe_fit.py 2>"$OUT/probe_fit_stderr.txt" | tail -1 | tee "$OUT/probe_fit.json"
      timeout 240 python3 probe_overhead.py --preset ddpm-cifar10 --image-size 32 --batch-size 128 --steps 60 --warmup 10 --monitor-every 60 --repeats 2 2>"$OUT/probe_overhead_stderr.txt" | tail -1 | tee "$OUT/probe_overhead.json"
      tail -3 "$OUT/probe_overhead_stderr.txt" ;;
    rise) timeout 200 python3 rise.py --preset ddpm-cifar10 --image-size 32 --masks 500 --batch-size 250 --repeats 3 2>"$OUT/rise_stderr.txt" | tail -1 | tee "$OUT/rise.json" ;;
  esac
done
