#!/usr/bin/env bash
# The GPU check in one command, for a machine whose python3 already has torch >= 2.11 (nothing is
# installed): the CUDA tests, then bench.gpu's table, then bench.loader's. Everything lands in OUT.
#   bash bench/gpu.sh OUT [bench.gpu arguments, e.g. --smoke]
# About 6 minutes on one H100 (docs/BENCHMARKS.md); PYTHON picks another interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash bench/gpu.sh OUT [--smoke]}
shift
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  "$python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} 2>&1 | tee "$out/machine.txt"
PYTHON="$python" ./run.sh test -m cuda -p no:cacheprovider -rs -o timeout=240 2>&1 | tee "$out/cuda_tests.log"
tests=${PIPESTATUS[0]}
timeout "${BENCH_TIMEOUT:-1200}" "$python" -m bench.gpu --out "$out" "$@" 2>&1 | tee "$out/bench.log"
bench=${PIPESTATUS[0]}
timeout "${BENCH_TIMEOUT:-1200}" "$python" -m bench.loader 2>&1 | tee "$out/loader.md"   # the loader's GPU rows
loader=${PIPESTATUS[0]}
echo "cuda tests exit $tests, bench exit $bench, loader bench exit $loader"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ] && [ "$loader" -eq 0 ]
