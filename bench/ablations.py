"""The paper's ablations on the quickstart recipe: one training run per experiments/ablations/*.yaml
plus the unchanged baseline, each under torchrun, and their final validation errors in docs/ABLATIONS.md.

    .venv/bin/python -m bench.ablations [--only no_lrn one_tower] [--max-steps N] [section.key=value ...]

Each run is `--config experiments/quickstart.yaml --config experiments/ablations/NAME.yaml`,
in a fresh folder runs/ablations/NAME. Two-tower runs use the processes ./run.sh would
(2 on CPU, 1 on one GPU); a one-tower net always runs in one process, so that it is
one replica as in the paper rather than two data-parallel ones. --max-steps makes a
smoke run whose numbers mean nothing; the table says so.
"""

import argparse
import datetime
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from distributed.config import load_config

ROOT = Path(__file__).resolve().parent.parent
ABLATIONS = ROOT / "experiments" / "ablations"
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
FINAL = re.compile(r"final validation \((centre crop|10 patches)\): top-1 error ([\d.]+), top-5 error ([\d.]+)")
BASELINE = "baseline"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ablations", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these ablations (and the baseline) only")
    parser.add_argument("--max-steps", type=int, default=0, help="stop each run after N steps (a smoke run)")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "ablations"), help="folder for the runs' logs and checkpoints")
    parser.add_argument("--out", default=str(ROOT / "docs" / "ABLATIONS.md"), help="the table to write")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="applied to every run")
    return parser.parse_args(argv)


def processes(towers: int) -> int:
    """What ./run.sh launches for two towers (2 on CPU, 1 on one GPU, 2 on several); 1 for one tower."""
    if towers == 1:
        return 1
    return 1 if torch.cuda.device_count() == 1 else 2


def run_one(name: str, overlay: Path | None, run_dir: Path, overrides: list[str]) -> dict:
    """Train one configuration to the end; its final errors, wall time and command."""
    configs = [QUICKSTART] + ([overlay] if overlay else [])
    every = [*overrides, f"log.dir={run_dir}", f"checkpoint.dir={run_dir / 'checkpoints'}", "log.progress=false"]
    cfg = load_config([ROOT / "config.yaml", *configs], every)  # fail here, before any launch
    shutil.rmtree(run_dir, ignore_errors=True)
    command = [
        str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={processes(cfg.model.towers)}",
        "-m", "distributed.main", *(a for c in configs for a in ("--config", str(c.relative_to(ROOT)))), *every,
    ]
    print(f"[{name}] {' '.join(command[1:])}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        return {"name": name, "failed": done.returncode, "seconds": seconds, "command": command}
    errors = {way: (float(t1), float(t5)) for way, t1, t5 in FINAL.findall(done.stdout)}
    print(f"[{name}] {errors} in {seconds:.0f} s", flush=True)
    result = {"name": name, "errors": errors, "seconds": seconds, "command": command}
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result


def table(results: list[dict], max_steps: int, overrides: list[str]) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Ablations", "",
        "The paper's ablations on `experiments/quickstart.yaml` (the embedded 10-class data), one run each:",
        "`.venv/bin/python -m bench.ablations " + " ".join(
            ([f"--max-steps {max_steps}"] if max_steps else []) + overrides) + "`.", "",
        f"Written {when}; torch {torch.__version__}, {'GPU' if torch.cuda.is_available() else 'CPU'}.",
    ]
    if max_steps:
        lines += ["", f"**Smoke run: {max_steps} steps per configuration. The errors below say nothing about the "
                      "ablations; they only show that every configuration trains, evaluates and is reported.**"]
    lines += ["", "| run | overlay | val top-1 (centre) | val top-5 (centre) | val top-1 (10 patches) | val top-5 (10 patches) | wall |",
              "|---|---|---|---|---|---|---|"]
    for r in results:
        overlay = "-" if r["name"] == BASELINE else f"`experiments/ablations/{r['name']}.yaml`"
        if "failed" in r:
            cells = [f"failed (exit {r['failed']})"] + [""] * 3
        else:
            centre, ten = r["errors"].get("centre crop", (None, None)), r["errors"].get("10 patches", (None, None))
            cells = [f"{v:.4f}" if v is not None else "?" for v in (*centre, *ten)]
        lines.append(f"| {r['name']} | {overlay} | " + " | ".join(cells) + f" | {r['seconds']:.0f} s |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    overlays = sorted(ABLATIONS.glob("*.yaml"))
    if args.only:
        unknown = set(args.only) - {p.stem for p in overlays}
        if unknown:
            print(f"unknown ablation(s) {sorted(unknown)}; known: {[p.stem for p in overlays]}", file=sys.stderr)
            return 2
        overlays = [p for p in overlays if p.stem in args.only]
    overrides = [*args.overrides, *([f"train.max_steps={args.max_steps}"] if args.max_steps else [])]
    runs = Path(args.runs)
    results = [run_one(BASELINE, None, runs / BASELINE, overrides)]
    results += [run_one(p.stem, p, runs / p.stem, overrides) for p in overlays]
    Path(args.out).write_text(table(results, args.max_steps, args.overrides))
    print(f"wrote {args.out}")
    return 0 if all("failed" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
