#!/usr/bin/env bash
# Times the seed network's convolutions in oneDNN (Debian's libdnnl 2.6, OpenMP) beside XLA:CPU's,
# for the oneDNN lead of docs/performance.md. Needs g++; fetches the packages without root.
#   bash scripts/onednn_probe.sh [WORK_DIR]
set -eu
work=${1:-/tmp/onednn_probe}
mkdir -p "$work/debs"
(cd "$work/debs" && apt-get download libdnnl2 libdnnl-dev ocl-icd-libopencl1)
for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
lib="$work/root/usr/lib/x86_64-linux-gnu"
g++ -O2 -std=c++17 benchmarks/onednn_convolutions.cpp -I"$work/root/usr/include" -L"$lib" -ldnnl \
  -Wl,-rpath-link,"$lib" -o "$work/onednn_convolutions"
LD_LIBRARY_PATH="$lib" OMP_NUM_THREADS=$(nproc) "$work/onednn_convolutions"
.venv/bin/python -m benchmarks.xla_convolutions
