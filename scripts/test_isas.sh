#!/usr/bin/env bash
# The numerical tests under each instruction set this CPU has below its own, so that one
# machine checks the tolerances other CPUs need (`make test-isas`; not part of `make test`).
#   bash scripts/test_isas.sh [ISA ...]   default: the one below the host's (AVX2 on AVX-512, AVX on AVX2)
# XLA:CPU's generated code is held to the ISA by --xla_cpu_max_isa, oneDNN's kernels by
# ONEDNN_MAX_CPU_ISA; the kernels precompiled into jaxlib (Eigen's) pick their own at run
# time and are not held.  Names: XLA's (SSE4_2, AVX, AVX2, AVX512); oneDNN's follow.
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { [[ " $flags " == *" $1 "* ]]; }
if [ $# -gt 0 ]; then
  isas=("$@")
else
  isas=()
  if has avx512f; then isas+=(AVX2); fi
  if ! has avx512f && has avx2; then isas+=(AVX); fi
fi
[ ${#isas[@]} -gt 0 ] || { echo "no instruction set below this CPU's to test"; exit 0; }
declare -A onednn=([SSE4_2]=SSE41 [AVX]=AVX [AVX2]=AVX2 [AVX512]=AVX512_CORE)
NUMERICAL="tests/model/test_layers.py tests/model/test_networks.py tests/model/test_components.py tests/training/test_optim.py
           tests/model/test_cpu.py"
status=0
for isa in "${isas[@]}"; do
  echo "== $isa: XLA_FLAGS=--xla_cpu_max_isa=$isa ONEDNN_MAX_CPU_ISA=${onednn[$isa]}"
  export ONEDNN_MAX_CPU_ISA=${onednn[$isa]}
  XLA_FLAGS="--xla_cpu_max_isa=$isa" $PY -m pytest -q -n 2 $NUMERICAL || status=1
  XLA_FLAGS="--xla_cpu_max_isa=$isa --xla_force_host_platform_device_count=8" \
    $PY -m pytest -q -n 2 tests/model/test_layouts.py \
    -k "every_layout_trains or custom_vjp or literal_pmap" || status=1
done
exit $status
