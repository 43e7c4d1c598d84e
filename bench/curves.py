"""A run's TensorBoard curves as one PNG, for the docs.

    python -m bench.curves LOG_DIR OUT.png [--title TEXT]

Left: training loss (per log window) and validation loss (per epoch); right: training error over each
epoch and validation top-1/top-5 error, with the learning rate on a log axis.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from bench import command  # noqa: E402


def scalars(log_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: ([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
            for tag in events.Tags()["scalars"]}


def plot(log_dir: Path, target: Path, title: str) -> None:
    s = scalars(log_dir)
    steps_per_epoch = s["epoch"][0][0] / s["epoch"][1][0]
    fig, (loss_ax, error_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for tag, label in (("loss/train", "training loss"), ("loss/val", "validation loss")):
        if tag not in s:  # a run shorter than one log window has no training-loss points
            continue
        steps, values = s[tag]
        loss_ax.plot([x / steps_per_epoch for x in steps], values, label=label)
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy", yscale="log")
    loss_ax.legend()
    for tag, label in (("error/train_epoch_top1", "training top-1 (over the epoch)"),
                       ("error/val_top1", "validation top-1 (centre crop)"), ("error/val_top5", "validation top-5")):
        steps, values = s[tag]
        error_ax.plot([x / steps_per_epoch for x in steps], values, marker=".", label=label)
    error_ax.set(xlabel="epoch", ylabel="error", yscale="log")
    if "lr" in s:
        lr_ax = error_ax.twinx()
        steps, values = s["lr"]
        lr_ax.plot([x / steps_per_epoch for x in steps], values, color="grey", linestyle=":", label="learning rate")
        lr_ax.set(ylabel="learning rate (dotted)", yscale="log")
    error_ax.legend(loc="center right", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def main() -> None:
    parser = command.parser("bench.curves", __doc__)
    parser.add_argument("log_dir", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--title", default="")
    args = parser.parse_args()
    plot(args.log_dir, args.target, args.title)


if __name__ == "__main__":
    main()
