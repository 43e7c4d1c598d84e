"""A piece of the program run in a process of its own, with its memory capped and a deadline: what the
tests of hostile input use, so that the promise "a refusal takes under 1 GB and never hangs" is what is
checked, and so that code that breaks it fails its test instead of taking the machine's memory.

The cap is RLIMIT_DATA set to what the imports took plus LIMIT: an allocation past it fails (MemoryError,
or torch's RuntimeError) where the program would otherwise have grown. The process runs in a session of
its own and is killed whole at its deadline (a read blocked on a pipe, or a pool of packing processes).
"""

import json
import os
import signal
import subprocess
import sys

from tests.conftest import ROOT
from tests.processes import CPU_ENV

LIMIT = 2**30
"""Memory a refusal may take beyond the program's imports: the issue's "under 1 GB"."""

_CAP = """
import json, resource, sys
def _data_bytes():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmData:"))
_cap = _data_bytes() + {limit}
resource.setrlimit(resource.RLIMIT_DATA, (_cap, _cap))
_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""

_OUTCOME = """
_outcome = {{"error": None, "kinds": [], "message": "", "value": None}}
try:
    _outcome["value"] = repr({action})[:1000]
except BaseException as err:
    _outcome.update(error=type(err).__name__, kinds=[c.__name__ for c in type(err).__mro__], message=str(err)[:2000])
_outcome["grew_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - _before) / 1024
print("OUTCOME " + json.dumps(_outcome))
"""


def _run(code: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=CPU_ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"still running after {timeout} s (blocked?): {err[-2000:]}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def call(imports: str, action: str, timeout: float = 120) -> dict:
    """Evaluate the expression `action` after the statements `imports`, capped: {"error": the exception's
    type name or None, "kinds": the names of its classes, "message", "value": repr of the result, "grew_mib":
    peak memory past the imports}."""
    done = _run(imports + _CAP.format(limit=LIMIT) + _OUTCOME.format(action=action), [], timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("OUTCOME ")]
    assert lines, f"no outcome (exit {done.returncode}): {done.stderr[-3000:]}"
    return json.loads(lines[-1].removeprefix("OUTCOME "))


def program(module: str, argv: list[str], timeout: float = 300, capped: bool = True) -> subprocess.CompletedProcess:
    """`python -m module argv...` (module: distributed.main, results.__main__, packs.prepare...), capped after
    its imports unless not `capped` (a run that trains: the paper's net alone takes most of the 1 GiB)."""
    cap = _CAP.format(limit=LIMIT) if capped else ""
    code = f"import sys\nfrom {module} import main\n" + cap + "sys.exit(main(sys.argv[1:]))"
    return _run(code, argv, timeout)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The one `error: ...` line of a refused command (exit status 2, no traceback)."""
    assert done.returncode == 2 and "Traceback" not in done.stderr, f"exit {done.returncode}: {done.stderr[-3000:]}"
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-3000:]
    return errors[0]
