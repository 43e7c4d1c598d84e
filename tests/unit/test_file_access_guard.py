"""The guard of issue 23: every file the program opens, reads, writes, renames or removes goes through files/.

The classes of hostile input were closed once, in files/ (regular files only, never blocking, bounded reads,
atomic writes and removals that never follow a link); a new reader written with a plain `open(` or
`torch.load(` would open them again. So this scans the program's source (not tests/ or bench/) for calls
that touch files by name, and fails on any outside files/ that is not on the allow-list below, each entry
with its reason. A call writing into a handle a primitive gave (`with replacing(path) as out:
torch.save(x, out)`) is the primitive's write and passes. An allow-list entry that matches nothing fails
too, so the list only shrinks.
"""

import ast
from pathlib import Path

from tests.conftest import ROOT

SCANNED = ("checkpoints", "config", "data", "distributed", "files", "kernels", "model", "packs", "programs", "results",
           "training")
PRIMITIVES = "files"
"""The package the rules live in: its own opens are the point."""

BY_NAME = {"open", "save_image", "save_file", "load_file", "safe_open", "SummaryWriter", "rmtree", "memmap"}
"""Functions that open a file by name, called bare."""
BY_MODULE = {
    "os.open", "os.rename", "os.replace", "os.remove", "os.unlink", "os.rmdir", "os.mkdir", "os.makedirs",
    "os.truncate", "os.symlink", "os.link", "os.mkfifo", "shutil.rmtree", "shutil.move", "shutil.copy",
    "shutil.copyfile", "shutil.copytree", "torch.load", "torch.save", "np.load", "np.save", "np.memmap",
    "np.fromfile", "np.savez", "numpy.load", "gzip.open", "gzip.GzipFile", "bz2.open", "lzma.open", "tarfile.open",
    "zipfile.ZipFile", "Image.open", "fcntl.flock", "fcntl.lockf", "mmap.mmap", "torch.onnx.export",
    "dcp.save", "dcp.load", "safetensors.safe_open", "tempfile.mkdtemp", "tempfile.NamedTemporaryFile",
}
"""Module functions that open, write, move or remove a file by name."""
METHODS = {"read_text", "read_bytes", "write_text", "write_bytes", "unlink", "rmdir", "mkdir", "touch",
           "symlink_to", "hardlink_to", "rename", "open", "chmod", "save_file", "load_file", "safe_open"}
"""Path methods (and the like) that do; `replace` counts with one argument (str.replace takes two), `save`
with a file name or a format (PIL's Image.save)."""
HANDLES = {"replacing", "atomic_path", "open_regular"}
"""Primitives whose `with ... as name` gives a handle (or a fresh path) that calls may write into or read."""

ALLOWED = {
    ("packs/synthetic_cache.py", "cache_name", ".read_bytes"):
        "our own source files (the generator's), hashed to name the cache: nobody hands these over",
    ("kernels/__init__.py", "CppKernel.build_folder", ".read_bytes"):
        "our own C++ sources, hashed to name the build folder: nobody hands these over",
    ("training/metrics.py", "MetricLogger.__init__", "SummaryWriter"):
        "TensorBoard writes its event files by name into log.dir, which the run probed and locked before "
        "(checkpoints/run_folder.py); their names carry the time, host and pid, so none can be placed ahead of it",
    ("checkpoints/shards.py", "write", "dcp.save"):
        "DCP's writers create their files by name in the step_N.partial folder store.save made itself "
        "(files.make_folder, after removing any leftover or link of that name)",
    ("checkpoints/shards.py", "read", "dcp.load"):
        "DCP's reader opens the folder's files by name, after shards.check refused links and files that are not "
        "regular, and read every header bounded",
    ("results/onnx.py", "export_onnx", "torch.onnx.export"):
        "called without a file: it returns the program, which program.save writes into atomic_path's new file",
    ("checkpoints/tensor_file.py", "open_checked", "safetensors.safe_open"):
        "safetensors maps the file by name, after files.open_regular proved it regular and its header's length "
        "was held to the limit",
}
"""(file, function, call) -> why it may stay."""

def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _ours(tree: ast.Module) -> set[str]:
    """Names a file imports from the program's own packages: calls on them are scanned where they are defined."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in SCANNED:
            names |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            names |= {alias.asname or alias.name for alias in node.names if alias.name.split(".")[0] in SCANNED}
    return names


def _touches_files(call: ast.Call, ours: set[str]) -> str | None:
    """What the call is, if it is one that opens, writes, moves or removes a file by name."""
    func = call.func
    if isinstance(func, ast.Name) and func.id in BY_NAME:
        return func.id
    if not isinstance(func, ast.Attribute):
        return None
    dotted = _dotted(func)
    if dotted in BY_MODULE:
        return dotted
    if dotted and dotted.split(".")[0] in ours:
        return None
    method = func.attr
    if method in METHODS or (method == "replace" and len(call.args) == 1 and not call.keywords) or \
            (method == "save" and call.args and (_a_path(call.args[0]) or any(k.arg == "format" for k in call.keywords))):
        return "." + method
    return None


def _a_path(node: ast.AST) -> bool:
    """Whether `node` spells a file name (`folder / "x.png"`, a string, Path(...)): PIL's Image.save(name) is told
    from the program's own `.save(step)` only so."""
    return (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div)) or isinstance(node, (ast.Constant, ast.JoinedStr)) \
        or (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("Path", "str"))


def _handle_names(function: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(function):
        if isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                called = item.context_expr.func if isinstance(item.context_expr, ast.Call) else None
                name = called.id if isinstance(called, ast.Name) else called.attr if isinstance(called, ast.Attribute) else None
                if name in HANDLES and isinstance(item.optional_vars, ast.Name):
                    names.add(item.optional_vars.id)
    return names


def _uses_handle(call: ast.Call, handles: set[str]) -> bool:
    values = [*call.args, *(k.value for k in call.keywords)]
    for value in values:
        if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "str" and value.args:
            value = value.args[0]  # str(partial)
        if isinstance(value, ast.Name) and value.id in handles:
            return True
    return False


def file_calls() -> dict[tuple[str, str, str], int]:
    """(file, function, call) -> line of every call that touches a file by name outside a primitive's handle."""
    found = {}
    for path in sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py")):
        where = str(path.relative_to(ROOT))
        tree = ast.parse(path.read_text(), filename=where)
        ours = _ours(tree)

        def visit(node: ast.AST, scope: str, handles: set[str]) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    inner = f"{scope}.{child.name}" if scope else child.name
                    visit(child, inner, handles | _handle_names(child))
                    continue
                if isinstance(child, ast.Call):
                    what = _touches_files(child, ours)
                    if what and not _uses_handle(child, handles):
                        found.setdefault((where, scope or "<module>", what), child.lineno)
                visit(child, scope, handles)

        visit(tree, "", set())
    return found


def test_every_file_access_goes_through_the_primitives():
    outside = {key: line for key, line in file_calls().items()
               if key[0].split("/")[0] != PRIMITIVES and key not in ALLOWED}
    assert not outside, "file access outside files/ (use its primitives, or allow it in ALLOWED with why):\n" + \
        "\n".join(f"  {f}:{line} in {fn}: {what}(" for (f, fn, what), line in sorted(outside.items()))


def test_the_allow_list_holds_nothing_stale():
    calls = file_calls()
    stale = [key for key in ALLOWED if key not in calls]
    assert not stale, f"allowed, but no longer there (remove the entries): {stale}"


def test_the_guard_finds_what_it_is_for(tmp_path, monkeypatch):
    """A mutation of the scan's input: each kind of call it looks for, planted in a scanned file, is found."""
    planted = ROOT / "files" / "_guard_probe.py"
    assert not planted.exists()
    source = ("import torch, numpy as np, os, shutil\nfrom pathlib import Path\n"
              "def reader(p):\n    open(p)\n    torch.load(p)\n    np.load(p)\n    Path(p).read_text()\n"
              "    os.replace(p, p)\n    Path(p).replace(p)\n    shutil.rmtree(p)\n    'a'.replace('a', 'b')\n"
              "    image.save(p / 'x.png')\n    self.saver.save(3)\n")
    monkeypatch.setattr(Path, "rglob", lambda self, pattern: [planted] if self.name == "data" else [])
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source)
    monkeypatch.setattr(Path, "relative_to", lambda self, other: Path("data/probe.py"))
    found = {what for (_, fn, what) in file_calls() if fn == "reader"}
    assert found == {"open", "torch.load", "np.load", ".read_text", "os.replace", ".replace", "shutil.rmtree", ".save"}
