"""The paper's ablations on the quickstart recipe, and its Figure 1 claim, written to docs/ABLATIONS.md.

    .venv/bin/python -m bench.ablations [--only no_lrn one_tower] [--seeds 0 1] [--no-figure1]
                                        [--figure1-epochs N] [--max-steps N] [--reuse] [section.key=value ...]

The table: one training run per experiments/ablations/*.yaml plus the unchanged baseline,
each `--config experiments/quickstart.yaml --config experiments/ablations/NAME.yaml` under
torchrun in a fresh folder runs/ablations/NAME (NAME-seedS for train.seed=S), and its final
validation errors, averaged over the seeds, beside the paper's reported effect.

Figure 1: ReLU and tanh trained as the paper's Figure 1 was, without regularisation
(no dropout, no weight decay) at a fixed learning rate, each until its training error
over an epoch is at most 25% (train.stop_at_train_error) or --figure1-epochs pass. The
paper: ReLU gets there six times sooner.

Two-tower runs use the processes ./run.sh would (2 on CPU, 1 on one GPU); a one-tower
net runs in one process, one replica as in the paper rather than two data-parallel ones.
Each run leaves runs/ablations/NAME/result.json; --reuse takes a run from there instead of
training it again when its command is unchanged. --max-steps makes a smoke run whose
numbers mean nothing; the document says so.
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

from bench import command
from config.loading import load_config

ROOT = Path(__file__).resolve().parent.parent
ABLATIONS = ROOT / "experiments" / "ablations"
QUICKSTART = ROOT / "experiments" / "quickstart.yaml"
FINAL = re.compile(r"final validation \((centre crop|10 patches)\): top-1 error ([\d.]+), top-5 error ([\d.]+)")
BASELINE = "baseline"
TARGET = 0.25
# What follows this line in the document is written by hand and kept when the runner rewrites it.
NOTES_MARKER = "<!-- Above: written by bench.ablations. Below: notes by hand, kept when it rewrites this file. -->"
# PAPER.md, "Ablations the paper reports": what each idea was worth on ImageNet.
PAPER_EFFECT = {
    "relu_vs_tanh": "ReLU reaches 25% training error 6x sooner (Figure 1; see below)",
    "no_lrn": "LRN lowers error by 1.4% top-1, 1.2% top-5",
    "non_overlapping_pool": "overlapping pooling lowers error by 0.4% top-1, 0.3% top-5",
    "one_tower": "two towers lower error by 1.7% top-1, 1.2% top-5 against one of half width",
    "no_pca": "PCA colour noise lowers top-1 error by over 1%",
    "no_dropout": "without dropout, substantial overfitting; dropout doubles the iterations to converge",
}
# Figure 1: "no regularization of any kind", learning rates fixed for each net.
FIGURE1_SETTINGS = ["model.dropout=0", "train.weight_decay=0", "train.lr_drops=0", f"train.stop_at_train_error={TARGET}"]
FIGURE1_RUNS = {"figure1_relu": None, "figure1_tanh": ABLATIONS / "relu_vs_tanh.yaml"}
# Measured: without dropout the ReLU net at the quickstart's lr 0.005 reaches loss 0.21 at step 38,
# then jumps to 18 at step 40 (the no_dropout ablation does the same). Half of it is stable.
# A lower rate can only slow ReLU down, so it makes the measured ratio an underestimate.
FIGURE1_LR = (0.0025, 0.005)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = command.parser("bench.ablations", __doc__)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these ablations (and the baseline) only")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="train.seed of each table run")
    parser.add_argument("--no-figure1", action="store_true", help="skip the ReLU vs tanh runs of Figure 1")
    parser.add_argument("--figure1-epochs", type=int, default=40, help="most epochs of each Figure 1 run")
    parser.add_argument("--figure1-lr", type=float, nargs=2, default=FIGURE1_LR, metavar=("RELU", "TANH"),
                        help="the fixed learning rate of each Figure 1 net")
    parser.add_argument("--max-steps", type=int, default=0, help="stop each run after N steps (a smoke run)")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep each run's checkpoints (about 0.5 GB each); by default they are removed after it")
    parser.add_argument("--reuse", action="store_true", help="take runs whose result.json has the same command")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "ablations"), help="folder for the runs' logs and checkpoints")
    parser.add_argument("--out", default=str(ROOT / "docs" / "ABLATIONS.md"), help="the document to write")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="applied to every run")
    return parser.parse_args(argv)


def processes(towers: int) -> int:
    """What ./run.sh launches for two towers (2 on CPU, 1 on one GPU, 2 on several); 1 for one tower."""
    if towers == 1:
        return 1
    return 1 if torch.cuda.device_count() == 1 else 2


def epoch_training_errors(run_dir: Path) -> list[float]:
    """The run's training top-1 error over each epoch, from its TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [e.value for e in events.Scalars("error/train_epoch_top1")]


def run_one(name: str, overlay: Path | None, run_dir: Path, overrides: list[str], reuse: bool, keep: bool) -> dict:
    """Train one configuration to the end; its final errors, per-epoch training errors, wall time and command."""
    configs = [QUICKSTART] + ([overlay] if overlay else [])
    every = [*overrides, f"log.dir={run_dir}", f"checkpoint.dir={run_dir / 'checkpoints'}", "log.progress=false"]
    cfg = load_config([ROOT / "config.yaml", *configs], every)  # fail here, before any launch
    command = [
        "torchrun", "--standalone", f"--nproc_per_node={processes(cfg.model.towers)}",
        "-m", "distributed.main", *(a for c in configs for a in ("--config", str(c.relative_to(ROOT)))), *every,
    ]
    saved = run_dir / "result.json"
    if reuse and saved.exists():
        result = json.loads(saved.read_text())
        if result["command"] == command:
            print(f"[{name}] reused {saved}", flush=True)
            return result
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"[{name}] {' '.join(command)}", flush=True)
    start = time.perf_counter()
    torchrun = str(Path(sys.executable).parent / "torchrun")
    done = subprocess.run([torchrun, *command[1:]], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        return {"name": name, "failed": done.returncode, "seconds": seconds, "command": command}
    errors = {way: (float(t1), float(t5)) for way, t1, t5 in FINAL.findall(done.stdout)}
    result = {"name": name, "errors": errors, "train_epoch_top1": epoch_training_errors(run_dir),
              "steps_per_epoch": cfg.data.synthetic_train_images // cfg.train.batch_size,
              "seconds": seconds, "command": command}
    print(f"[{name}] {errors} in {seconds:.0f} s", flush=True)
    saved.write_text(json.dumps(result, indent=1))
    if not keep:  # 16 runs of weights and velocity filled 17 GB of disk
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    return result


def epochs_to_target(result: dict) -> int | None:
    """The first epoch (counted from 1) whose training error is at most TARGET; None if none was."""
    return next((i + 1 for i, e in enumerate(result.get("train_epoch_top1", [])) if e <= TARGET), None)


def seed_mean(runs: list[dict], way: str, k: int) -> tuple[float, str]:
    """The mean over seeds of one error, and its cell: the mean, then each seed's value when there are several."""
    values = [r["errors"][way][k] for r in runs]
    mean = sum(values) / len(values)
    each = f" ({', '.join(f'{v:.3f}' for v in values)})" if len(values) > 1 else ""
    return mean, f"{mean:.3f}{each}"


def ablation_table(groups: dict[str, list[dict]]) -> list[str]:
    """One row per configuration; `groups` maps its name to its runs, one per seed."""
    lines = ["| run | overlay | val top-1 | Δ top-1 | val top-5 | Δ top-5 | top-1, 10 patches | paper (ImageNet) | wall |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = groups.get(BASELINE)
    base_ok = base and not any("failed" in r for r in base)
    for name, runs in groups.items():
        overlay = "-" if name == BASELINE else f"`{name}.yaml`"
        paper = PAPER_EFFECT.get(name, "")
        wall = f"{sum(r['seconds'] for r in runs):.0f} s"
        failed = [r for r in runs if "failed" in r]
        if failed:
            lines.append(f"| {name} | {overlay} | failed (exit {failed[0]['failed']}) | | | | | {paper} | {wall} |")
            continue
        (t1, t1_cell), (t5, t5_cell) = seed_mean(runs, "centre crop", 0), seed_mean(runs, "centre crop", 1)
        deltas = ["", ""]
        if base_ok and name != BASELINE:
            b1, b5 = seed_mean(base, "centre crop", 0)[0], seed_mean(base, "centre crop", 1)[0]
            deltas = [f"{100 * (t1 - b1):+.1f}%", f"{100 * (t5 - b5):+.1f}%"]
        ten = seed_mean(runs, "10 patches", 0)[1]
        lines.append(f"| {name} | {overlay} | {t1_cell} | {deltas[0]} | {t5_cell} | {deltas[1]} | {ten} | {paper} | {wall} |")
    return lines


def figure1_section(relu: dict, tanh: dict, max_epochs: int) -> list[str]:
    if "failed" in relu or "failed" in tanh:
        return ["A Figure 1 run failed; see the runner's output."]
    epochs = max(len(relu["train_epoch_top1"]), len(tanh["train_epoch_top1"]))
    lines = ["Training top-1 error over each epoch (TensorBoard `error/train_epoch_top1`):", "",
             "| epoch | " + " | ".join(str(i + 1) for i in range(epochs)) + " |", "|---|" + "---|" * epochs]
    for label, r in (("ReLU", relu), ("tanh", tanh)):
        cells = [f"{e:.2f}" for e in r["train_epoch_top1"]]
        lines.append(f"| {label} | " + " | ".join(cells + [""] * (epochs - len(cells))) + " |")
    reached_relu, reached_tanh = epochs_to_target(relu), epochs_to_target(tanh)
    lines.append("")
    if reached_relu and reached_tanh:
        lines.append(f"Epochs to {TARGET:.0%} training error: ReLU {reached_relu}, tanh {reached_tanh}: "
                     f"ReLU is **{reached_tanh / reached_relu:.1f}x** faster (the paper: about 6x).")
    elif reached_relu:
        lines.append(f"Epochs to {TARGET:.0%} training error: ReLU {reached_relu}; tanh had not reached it after "
                     f"{len(tanh['train_epoch_top1'])} epochs, so ReLU is **more than "
                     f"{len(tanh['train_epoch_top1']) / reached_relu:.1f}x** faster (the paper: about 6x).")
    else:
        lines.append(f"Neither net reached {TARGET:.0%} training error within {max_epochs} epochs.")
    return lines


def document(groups: dict[str, list[dict]], figure1: dict, args: argparse.Namespace) -> str:
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    flags = [*(["--only", *args.only] if args.only else []),
             *(["--seeds", *map(str, args.seeds)] if args.seeds != [0] else []),
             *(["--no-figure1"] if args.no_figure1 else []),
             *([f"--figure1-epochs {args.figure1_epochs}"] if args.figure1_epochs != 40 else []),
             *(["--figure1-lr", *map(str, args.figure1_lr)] if tuple(args.figure1_lr) != FIGURE1_LR else []),
             *([f"--max-steps {args.max_steps}"] if args.max_steps else []), *args.overrides]
    every_run = [r for runs in groups.values() for r in runs] + list(figure1.values())
    steps = next((r["steps_per_epoch"] for r in every_run if "steps_per_epoch" in r), None)
    lines = [
        "# Ablations", "",
        "What each of the paper's ideas is worth here, measured by one run per seed on the quickstart",
        "recipe (`experiments/quickstart.yaml`: the embedded 10-class data, 1280 training and 256",
        f"validation images, batch 128, {steps} steps an epoch). Produced by",
        "", "```sh", " ".join([".venv/bin/python -m bench.ablations", *flags]), "```", "",
        f"Written {when}; torch {torch.__version__}, {'GPU' if torch.cuda.is_available() else 'CPU'}; "
        "each run's command is in runs/ablations/NAME/result.json.",
    ]
    if args.max_steps:
        lines += ["", f"**Smoke run: {args.max_steps} steps per configuration. The errors below say nothing about "
                      "the ablations; they only show that every configuration trains, evaluates and is reported.**"]
    lines += ["", "## Final validation error", "",
              "Top-1 and top-5 error on the centre crop after the quickstart's 4 epochs, the mean over "
              f"train.seed {', '.join(map(str, args.seeds))} (each seed's value in brackets); Δ is against the",
              "baseline (positive: the ablation is worse). Chance is 0.90 top-1, 0.50 top-5.", "",
              *ablation_table(groups)]
    if figure1:
        lines += ["", "## Figure 1: ReLU against tanh", "",
                  "As the paper's Figure 1: no dropout, no weight decay, a fixed learning rate "
                  f"(ReLU {args.figure1_lr[0]:g}, tanh {args.figure1_lr[1]:g}; the paper tuned each net's), "
                  "each run stopped at the first "
                  f"epoch with at most {TARGET:.0%} training error, or after {args.figure1_epochs} epochs.", "",
                  *figure1_section(figure1["figure1_relu"], figure1["figure1_tanh"], args.figure1_epochs)]
    return "\n".join(lines) + "\n"


def write_keeping_notes(out: Path, text: str) -> None:
    """Write the measured document, keeping the hand-written notes below NOTES_MARKER."""
    notes = out.read_text().partition(NOTES_MARKER)[2] if out.exists() else ""
    out.write_text(text + "\n" + NOTES_MARKER + (notes or "\n"))


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
    groups = {}
    for name, overlay in [(BASELINE, None), *((p.stem, p) for p in overlays)]:
        groups[name] = [
            run_one(name, overlay, runs / (f"{name}-seed{seed}" if seed else name),
                    [*overrides, *([f"train.seed={seed}"] if seed else [])], args.reuse, args.keep_checkpoints)
            for seed in args.seeds
        ]
    figure1 = {}
    if not args.no_figure1:
        long = [*overrides, *FIGURE1_SETTINGS, f"train.epochs={args.figure1_epochs}"]
        figure1 = {name: run_one(name, overlay, runs / name, [*long, f"train.lr={lr}"], args.reuse, args.keep_checkpoints)
                   for (name, overlay), lr in zip(FIGURE1_RUNS.items(), args.figure1_lr)}
    write_keeping_notes(Path(args.out), document(groups, figure1, args))
    print(f"wrote {args.out}")
    every_run = [r for group in groups.values() for r in group] + list(figure1.values())
    return 0 if all("failed" not in r for r in every_run) else 1


if __name__ == "__main__":
    sys.exit(main())
