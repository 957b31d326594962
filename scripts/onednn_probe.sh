#!/usr/bin/env bash
# Times the seed network's convolutions in oneDNN (the onednn-cpu-gomp wheel that requirements.txt
# installs into .venv/) beside XLA:CPU's, for docs/performance.md. Needs g++ and `make venv`.
#   bash scripts/onednn_probe.sh [WORK_DIR] [BATCH]   (BATCH, default 32: oneDNN's part; XLA's is at 32)
set -eu
work=${1:-/tmp/onednn_probe}
mkdir -p "$work"
g++ -O2 -std=c++17 benchmarks/onednn_convolutions.cpp -I.venv/include -L.venv/lib -ldnnl \
  -Wl,-rpath,"$PWD/.venv/lib" -o "$work/onednn_convolutions"
OMP_NUM_THREADS=$(nproc) "$work/onednn_convolutions" "${2:-32}"
.venv/bin/python -m benchmarks.xla_convolutions
