#!/usr/bin/env bash
# ./run.sh [--config FILE] [section.key=value ...]   train under torchrun (programs/launch.py)
# ./run.sh test [pytest arguments]                   lint (ruff), then the test suite (tests/unit alone: ./run.sh test tests/unit)
# ./run.sh test-oldest [pytest arguments]            the fast tests (or those given) under the oldest torch supported
# Both create .venv and install requirements.txt first when needed (or use $PYTHON as it is, below).
# Training runs the main job's recipe, experiments/quickstart.yaml on the embedded data, unless --config
# names another (--config experiments/paper.yaml: the paper's); overrides apply on top.
# `./run.sh test` with no arguments (what CI runs) also runs test-oldest, in .venv-torch2.11: torch 2.11 and
# torchvision 0.26 (requirements-torch2.11.txt) with the rest of requirements.txt.
# NPROC overrides the processes per node (default: 2 on CPU, 1 per GPU up to 2).
# On one GPU, `NPROC=2 ./run.sh parallel.backend=gloo` puts the two tower processes on it (NCCL refuses
# two ranks on one device); their exchanges go through host memory: it tests the two-process CUDA path,
# while one process holding both towers is the fast layout there.
set -euo pipefail
cd "$(dirname "$0")"

# venv DIR REQUIREMENTS...: DIR is a venv holding exactly these pinned files' packages, installed when they change.
venv() {
  local dir=$1
  shift
  if [ ! -x "$dir/bin/python" ] || ! cat "$@" | cmp -s - "$dir/.installed-requirements"; then
    local files=() file
    for file in "$@"; do files+=(-r "$file"); done
    python3 -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "${files[@]}"
    cat "$@" > "$dir/.installed-requirements"
  fi
}

# PYTHON=/path/to/python uses that interpreter as it is, with no venv: for a machine whose Python already
# has torch >= 2.11 and the rest, such as a GPU image without a package registry.
if [ -n "${PYTHON:-}" ]; then
  python="$PYTHON"
else
  venv .venv requirements.txt
  python=.venv/bin/python
fi

# The oldest torch the code supports (README's torch >= 2.11; a GPU image may have just that): the fast tests,
# tests/unit and the CPU tests of the GPU paths, run under it too, so that a difference of torch's shows on CPU.
oldest=.venv-torch2.11
oldest_tests=(tests/unit tests/test_fast_path.py tests/test_graphed_step.py tests/test_grouped.py
              tests/test_cuda_loader.py)
oldest_venv() {  # requirements-torch2.11.txt's torch pair, and the rest of requirements.txt as it is
  local rest
  rest=$(mktemp)
  grep -v -E '^(torch|torchvision)==' requirements.txt > "$rest"
  venv "$oldest" requirements-torch2.11.txt "$rest"
  rm "$rest"
}

if [ "${1:-}" = "test-oldest" ]; then
  shift
  oldest_venv
  if [ "$#" -eq 0 ]; then set -- "${oldest_tests[@]}"; fi
  exec "$oldest/bin/python" -m pytest -q "$@"
fi

if [ "${1:-}" = "test" ]; then
  shift
  # The linter first (rules in ruff.toml); an interpreter given as $PYTHON may lack it (a GPU image).
  if "$python" -m ruff --version >/dev/null 2>&1; then
    "$python" -m ruff check .
  elif [ -z "${PYTHON:-}" ]; then
    echo "ruff is missing from .venv: rm -rf .venv and run again" >&2; exit 1
  else
    echo "note: $python has no ruff; lint skipped" >&2
  fi
  # With paths (`./run.sh test tests/unit`), or an interpreter given as $PYTHON: those tests under it alone.
  if [ "$#" -gt 0 ] || [ -n "${PYTHON:-}" ]; then
    exec "$python" -m pytest -q "$@"
  fi
  # No path: pytest.ini's testpaths (tests/, all of it), then the fast tests under the oldest torch; both run,
  # and either failing fails the whole.
  status=0
  "$python" -m pytest -q || status=$?
  echo "== the fast tests under the oldest torch supported ($oldest)"
  oldest_venv
  "$oldest/bin/python" -m pytest -q "${oldest_tests[@]}" || status=$?
  exit "$status"
fi

# The launcher checks the run in one process (a user error: one line, exit 2, before torchrun starts),
# then runs torchrun's own launcher; Ctrl-C ends with one line naming the command that continues (exit 130).
exec "$python" -m programs.launch "$@"
