#!/usr/bin/env bash
# ./run.sh [--config FILE] [section.key=value ...]   train under torchrun (distributed/launch.py)
# ./run.sh test [pytest arguments]                   lint (ruff), then the test suite (tests/unit alone: ./run.sh test tests/unit)
# Both create .venv and install requirements.txt first when needed (or use $PYTHON as it is, below).
# Training runs the main job's recipe, experiments/quickstart.yaml on the embedded data, unless --config
# names another (--config experiments/paper.yaml: the paper's); overrides apply on top.
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
else
  venv=.venv
  if [ ! -x "$venv/bin/python" ] || ! cmp -s requirements.txt "$venv/.installed-requirements"; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt
    cp requirements.txt "$venv/.installed-requirements"
  fi
  python="$venv/bin/python"
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

# The launcher checks the run in one process (a user error: one line, exit 2, before torchrun starts),
# then runs torchrun's own launcher; Ctrl-C ends with one line naming the command that continues (exit 130).
exec "$python" -m distributed.launch "$@"
