#!/usr/bin/env bash
# Fashion-MNIST to convergence on one GPU (docs/RESULTS.md): pack the four IDX files with every core,
# then train experiments/fashion_mnist.yaml until validation error stops improving. Logs land in OUT.
#   bash bench/fashion_mnist.sh OUT [IDX_FOLDER] [section.key=value ...]
# IDX_FOLDER defaults to Debian's /usr/share/datasets/fashion-mnist (apt-get install dataset-fashion-mnist);
# PYTHON picks the interpreter (default python3, used as it is), PACK the pack's folder (14 GB).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash bench/fashion_mnist.sh OUT [IDX_FOLDER] [overrides]}
src=${2:-/usr/share/datasets/fashion-mnist}
shift $(( $# < 2 ? $# : 2 ))
python=${PYTHON:-python3}
pack=${PACK:-/tmp/fashion-mnist-pack}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
start=$(date +%s)
"$python" -m packs.fashion_mnist "$pack" --src "$src" > "$out/pack.log" 2>&1
echo "packed in $(( $(date +%s) - start )) s"
start=$(date +%s)
PYTHON="$python" NPROC=1 ./run.sh --config experiments/fashion_mnist.yaml "data.root=$pack" "log.dir=$out/tb" \
  "checkpoint.dir=${pack}-checkpoints" log.progress=false "$@" 2>&1 | tee "$out/train.log"
echo "trained and evaluated in $(( $(date +%s) - start )) s" | tee -a "$out/train.log"
