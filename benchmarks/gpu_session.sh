#!/usr/bin/env bash
# One prepared GPU session (the `device` tool's machine, ~15 min): GPU tests, then the GPU benchmark rows eager and
# compiled, then the batch sweep. Results go to ${OUT:-out/gpu}. The device image has torch + CUDA, transformers and
# accelerate but no diffusers: carry its wheels in wheels/ (pip download diffusers -d wheels/ here, then carry it).
set -uo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
pip install -q --no-index --find-links wheels/ diffusers 2>/dev/null || pip install -q diffusers
pip install -q --no-deps -e . && pip install -q safetensors datasets pytest
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 240 python -m pytest -q tests/test_gpu.py -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/test_gpu.txt"
for mode in eager compile; do
  flag=$([ $mode = compile ] && echo --compile)
  timeout 240 python benchmarks/run.py --size vit-b --device cuda --dtype bfloat16 --batch-size 64 --repeats 5 \
    $flag --json "$OUT/run_vitb_bf16_b64_$mode.json" 2>&1 | tail -20 | tee "$OUT/run_$mode.txt"
done
timeout 240 python benchmarks/batch_sweep.py --size vit-b --device cuda --dtype bfloat16 --repeats 3 \
  --batch-sizes 32,64,128,256 --json "$OUT/batch_sweep.json" 2>&1 | tail -12 | tee "$OUT/batch_sweep.txt"
timeout 300 python benchmarks/pretraining.py --preset vit-b --device cuda --mixed-precision bf16 --threads 8 \
  --train-samples 2048 --steps 200 --logging-steps 20 --num-views 2 --work-dir /tmp/bench-pretraining \
  --json "$OUT/pretraining_vitb_cuda.json" 2>&1 | tail -8 | tee "$OUT/pretraining.txt"
