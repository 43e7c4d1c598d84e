#!/usr/bin/env bash
# ./run.sh [--config FILE] [section.key=value ...]   train under torchrun
# ./run.sh test [pytest arguments]                   lint (ruff), then the test suite (tests/unit alone: ./run.sh test tests/unit)
# Both create .venv and install requirements.txt first when needed (or use $PYTHON as it is, below).
# With no arguments the main job runs: experiments/quickstart.yaml on the embedded data.
# NPROC overrides the processes per node (default: 2 on CPU, 1 per GPU up to 2).
# On one GPU, `NPROC=2 ./run.sh parallel.backend=gloo` puts the two tower processes on it (NCCL refuses
# two ranks on one device); their exchanges go through host memory: it tests the two-process CUDA path,
# while one process holding both towers is the fast layout there.
set -euo pipefail
cd "$(dirname "$0")"

# PYTHON=/path/to/python uses that interpreter as it is, with no venv: for a machine whose Python already
# has torch >= 2.11 and the rest, such as a GPU image without a package registry.
if [ -n "${PYTHON:-}" ]; then
  python="$PYTHON"
  torchrun=("$python" -m torch.distributed.run)
else
  venv=.venv
  if [ ! -x "$venv/bin/python" ] || ! cmp -s requirements.txt "$venv/.installed-requirements"; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
    cp requirements.txt "$venv/.installed-requirements"
  fi
  python="$venv/bin/python"
  torchrun=("$venv/bin/torchrun")
fi

if [ "${1:-}" = "test" ]; then
  shift
  # The linter first (rules in ruff.toml); an interpreter given as $PYTHON may lack it (a GPU image).
  if "$python" -m ruff --version >/dev/null 2>&1; then
    "$python" -m ruff check .
  elif [ -z "${PYTHON:-}" ]; then
    echo "ruff is missing from $venv: rm -rf $venv and run again" >&2; exit 1
  else
    echo "note: $python has no ruff; lint skipped" >&2
  fi
  # No path: pytest.ini's testpaths (tests/, all of it); `./run.sh test tests/unit` runs the fast tests alone.
  exec "$python" -m pytest -q "$@"
fi

if [ "$#" -eq 0 ]; then
  set -- --config experiments/quickstart.yaml
fi
# Elastic restarts (--max-restarts) must not reuse the agent's store, which still holds the
# dead workers' addresses (pytorch/pytorch#135712); see docs/SCALING.md.
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
gpus=$("$python" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -eq 0 ]; then nproc=2; elif [ "$gpus" -eq 1 ]; then nproc=1; else nproc=2; fi
exec "${torchrun[@]}" --standalone --nproc_per_node="${NPROC:-$nproc}" -m distributed.main "$@"
