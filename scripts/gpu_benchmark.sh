#!/usr/bin/env bash
# The benchmark on a GPU, the project and its PyTorch twin side by side in one run
# (docs/performance.md, "GPU").
#   bash scripts/gpu_benchmark.sh OUTDIR REFERENCE_DIR
# REFERENCE_DIR holds the seed's torch_seed_benchmark.py.
set -u
out=${1:-bench_out}; ref=${2:?usage: gpu_benchmark.sh OUTDIR REFERENCE_DIR}; steps=${STEPS:-30}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
python3 - "$out" "$steps" <<'PY'
import json, sys
from alexnet_jax.benchmark import run_benchmark
out, steps = sys.argv[1], int(sys.argv[2])
results = []
for variant in ("tf_benchmark", "paper"):
    for dtype in ("float32", "bfloat16"):
        for batch in (128, 256):
            print(f"== jax {variant} {dtype} batch {batch}", flush=True)
            results.append(run_benchmark(variant, batch, steps, dtype, burn_in=5))
json.dump(results, open(f"{out}/jax.json", "w"), indent=1)
PY
for batch in 128 256; do
  echo "== torch tf_benchmark float32 batch $batch"
  python3 "$ref/torch_seed_benchmark.py" --batch $batch --steps $steps --burn_in 5 --json "$out/torch_b$batch.json"
  echo "== torch.compile tf_benchmark float32 batch $batch"
  timeout 300 python3 "$ref/torch_seed_benchmark.py" --batch $batch --steps $steps --burn_in 5 --compile --json "$out/torch_compile_b$batch.json"
done
