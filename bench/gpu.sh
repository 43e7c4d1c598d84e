#!/usr/bin/env bash
# The GPU check, in steps that each end within STEP_TIMEOUT (290 s: a device call may run 600 s), most
# important first, each writing its results as it goes; for a machine whose python3 already has
# torch >= 2.11 (nothing is installed). Everything lands in OUT: machine.txt, STEP.log, and bench.gpu's
# tables in OUT/STEP/gpu.md.
#   bash bench/gpu.sh OUT [STEP ...]      (no STEP: all of them, in this order)
#
#   tests        the CUDA tests but the graphed step's (pytest -m cuda)
#   steps        this trainer's step against torchvision's at batch 128, device batches: the table's core
#   loader       bench.loader: the ring and nvJPEG at 4/8/16 loading processes, the trainer through them
#   graph-tests  tests/test_cuda_graphs.py: the whole step as one CUDA graph, the grouped arithmetic
#   graphs       their rows at batch 128 (what train.step_graph's and train.grouped's `auto` wait for)
#   data         packed images through the loader, the examples' ImageFolder + PIL, micro-batches
#   large        batch 512
# Expected on one H100 (from the 2026-11-27 H200 run's parts; the split steps have not run yet): tests 2-3 min,
# steps 2, loader 3, graph-tests 2, graphs 2, data 2, large 2. SMOKE=1 runs each at tiny sizes (CPU too).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash bench/gpu.sh OUT [STEP ...]}
shift
steps=("$@")
all=(tests steps loader graph-tests graphs data large)
[ "${#steps[@]}" -gt 0 ] || steps=("${all[@]}")
for step in "${steps[@]}"; do
  [[ " ${all[*]} " == *" $step "* ]] || { echo "unknown step $step: one of ${all[*]}" >&2; exit 2; }
done
python=${PYTHON:-python3}
smoke=()
[ -z "${SMOKE:-}" ] || smoke=(--smoke)
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv || true
  "$python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} 2>&1 | tee "$out/machine.txt"

limit=(timeout --kill-after=10 "${STEP_TIMEOUT:-290}")

gpu() {  # bench.gpu into OUT/STEP
  "${limit[@]}" "$python" -m bench.gpu --out "$out/$step" "${smoke[@]}" "$@"
}

cuda_tests() {
  PYTHON="$python" "${limit[@]}" ./run.sh test -m cuda -p no:cacheprovider -rs -o timeout=120 "$@"
}

run() {
  case $1 in
    tests) cuda_tests tests --ignore tests/test_cuda_graphs.py ;;
    steps) gpu --rows baseline ours --batches 128 --variants bf16+channels_last+compile \
             bf16+channels_last+cudagraphs bf16 fp32 tf32 bf16+channels_last ;;
    loader) "${limit[@]}" "$python" -m bench.loader "${smoke[@]}" ;;
    graph-tests) cuda_tests tests/test_cuda_graphs.py ;;
    graphs) gpu --rows ours --batches 128 --variants bf16+step_graph bf16+channels_last+compile+step_graph \
              bf16+grouped bf16+grouped+step_graph bf16+channels_last+compile+grouped+step_graph ;;
    data) gpu --rows packed imagefolder micro-batches --batches 128 --variants bf16+channels_last \
            bf16+channels_last+compile ;;
    large) gpu --rows ours --batches 512 --variants bf16+channels_last+compile bf16+channels_last+cudagraphs bf16 \
             fp32 tf32 bf16+channels_last ;;
  esac
}

failed=()
for step in "${steps[@]}"; do
  start=$SECONDS
  run "$step" 2>&1 | tee "$out/$step.log"
  status=${PIPESTATUS[0]}
  echo "== $step: exit $status after $((SECONDS - start)) s" | tee -a "$out/steps.txt"
  [ "$status" -eq 0 ] || failed+=("$step")
done
[ "${#failed[@]}" -eq 0 ] || { echo "failed or cut short (exit 124: STEP_TIMEOUT): ${failed[*]}" >&2; exit 1; }
