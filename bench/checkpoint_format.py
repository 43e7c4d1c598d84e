"""The checkpoint format: size, save and load time of the paper's net, safetensors (the project's) against
DCP's default files (.metadata pickle and .distcp, the format before).

    .venv/bin/python -m bench.checkpoint_format [--repeats 3] [--dir DIR]

One process holding both towers of the paper's AlexNet (1000 classes, 60,965,224 parameters) saves its
whole training state (weights, velocity, progress: what a checkpoint holds) through
checkpoints/store.save, and through `dcp.save` with the default FileSystemWriter; each is loaded back
into fresh tensors (store.load: headers checked, then DCP's HuggingFace reader; `dcp.load` with the
default FileSystemReader, which unpickles, trusted here since this process wrote the files). Runs
alternate (A, B, A, B, ...) so drifting load on a shared machine falls on both; it prints each time and
the medians' ratio. Then each format's save is repeated in a fresh process to read the peak memory it
adds (safetensors' writer builds each file in memory first). Files go to --dir (default: a temporary
folder under runs/, the disk a run writes to), removed afterwards.
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from checkpoints import store
from config.model import ModelConfig
from model.alexnet import AlexNet

ROOT = Path(__file__).resolve().parent.parent


def paper_state() -> dict:
    """The paper's net's training state as the trainer checkpoints it, with non-zero velocities."""
    torch.manual_seed(0)
    net = AlexNet(ModelConfig(num_classes=1000))
    state = {"model": net.state_dict(), "velocity": {k: torch.randn_like(p) for k, p in net.named_parameters()},
             "progress": {"step": torch.tensor(1000), "epoch_tally": torch.zeros(2),
                          "best": torch.tensor(0.5, dtype=torch.float64)}}
    return state


def empty_like(state: dict) -> dict:
    return {k: empty_like(v) if isinstance(v, dict) else torch.empty_like(v) for k, v in state.items()}


def save(fmt: str, state: dict, folder: Path) -> Path:
    if fmt == "safetensors":
        return store.save(state, folder, 1, keep=1)
    dcp.save(state, checkpoint_id=folder / "step_00000001")
    return folder / "step_00000001"


def load(fmt: str, state: dict, path: Path) -> None:
    if fmt == "safetensors":
        store.load(state, path)
    else:
        dcp.load(state, checkpoint_id=path)


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def peak_memory_of_save(fmt: str, folder: Path) -> float:
    """MB of resident memory a save adds at its peak to a process holding the state (a fresh process; the
    kernel's high-water mark reset once the state is built)."""
    code = ("import sys; from pathlib import Path; from bench.checkpoint_format import paper_state, resident, save; "
            "s = paper_state(); open('/proc/self/clear_refs', 'w').write('5'); before = resident('VmRSS'); "
            f"save({fmt!r}, s, Path({str(folder)!r})); print(resident('VmHWM') - before)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def resident(field: str) -> float:
    """A /proc/self/status memory figure (VmRSS now, VmHWM the peak), in MB."""
    line = next(t for t in Path("/proc/self/status").read_text().splitlines() if t.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    parent = args.dir or ROOT / "runs"
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="checkpoint_format.", dir=parent))
    formats = ("safetensors", "distcp")
    times = {(f, op): [] for f in formats for op in ("save", "load")}
    sizes = {}
    state = paper_state()
    try:
        for repeat in range(args.repeats):
            for fmt in formats:
                folder = work / fmt
                start = time.perf_counter()
                path = save(fmt, state, folder)
                times[fmt, "save"].append(time.perf_counter() - start)
                sizes[fmt] = size(path)
                target = empty_like(state)
                start = time.perf_counter()
                load(fmt, target, path)
                times[fmt, "load"].append(time.perf_counter() - start)
                assert all(torch.equal(target["model"][k], v) for k, v in state["model"].items())
                shutil.rmtree(folder)
        memory = {fmt: peak_memory_of_save(fmt, work / f"{fmt}-memory") for fmt in formats}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"paper's net, one process, {args.repeats} runs each, alternating; torch {torch.__version__}")
    for fmt in formats:
        print(f"  {fmt:<12} {sizes[fmt] / 1e6:8.1f} MB   save " + " ".join(f"{t:.2f}" for t in times[fmt, "save"])
              + " s   load " + " ".join(f"{t:.2f}" for t in times[fmt, "load"])
              + f" s   save adds {memory[fmt]:.0f} MB of peak memory")
    for op in ("save", "load"):
        ratio = statistics.median(times["safetensors", op]) / statistics.median(times["distcp", op])
        print(f"  {op}: safetensors / distcp = {ratio:.2f} (medians)")
    print(f"  size: safetensors / distcp = {sizes['safetensors'] / sizes['distcp']:.4f}")


if __name__ == "__main__":
    main()
