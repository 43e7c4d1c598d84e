"""The one metric logger: slash-named scalars, text and the conv1 kernels to TensorBoard on rank 0, nothing on
the others; a failed write stops the run with one line (LogFailed)."""

import functools
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.tensorboard import SummaryWriter

from training.conv1_figure import colourfulness, kernel_grid


class LogFailed(OSError):
    """TensorBoard could not write into log.dir (its disk full, most often); the run stops with one line."""


class MetricLogger:
    """Slash-named scalars (`loss/train`, `error/val_top1`, ...) to TensorBoard, when enabled.

    TensorBoard writes from a thread of its own and hands a failed write to the next call here: each call
    turns it into a LogFailed naming log.dir, and the thread's own traceback is left unprinted."""

    def __init__(self, log_dir: str | Path, enabled: bool, every_steps: int = 1) -> None:
        self.log_dir, self.writer = log_dir, None
        if enabled:
            _writer_thread_errors_reach_the_caller()
            with self._writing():
                self.writer = SummaryWriter(str(log_dir))
        self.every_steps = every_steps

    @contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as err:
            raise LogFailed(f"log.dir={self.log_dir}: TensorBoard cannot write there ({err.strerror or err}); free "
                            "space there, or give another log.dir, and resume (train.resume=true)") from None

    def should_log(self, step: int) -> bool:
        """Whether `step` is a log step (log.every_steps): the only steps the host waits for the device."""
        return step % self.every_steps == 0

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer:
            with self._writing():
                for tag, value in values.items():
                    self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, text: str) -> None:
        if self.writer:
            with self._writing():
                self.writer.add_text(tag, text)

    def conv1_kernels(self, kernels: dict[int, torch.Tensor], step: int) -> None:
        """Figure 3 as training goes: each tower's kernel grid (`kernels/conv1_tower<t>`) and
        colourfulness (`kernels/colour_tower<t>`), from `conv1_kernels`."""
        if self.writer:
            kernels = {t: w.cpu() for t, w in kernels.items()}
            with self._writing():
                for t, w in kernels.items():
                    self.writer.add_image(f"kernels/conv1_tower{t}", kernel_grid(w), step)
            self.scalars(step, {f"kernels/colour_tower{t}": colourfulness(w) for t, w in kernels.items()})

    def close(self) -> None:
        if self.writer:
            with self._writing():
                self.writer.close()


@functools.cache
def _writer_thread_errors_reach_the_caller() -> None:
    """Leave unprinted the traceback of TensorBoard's writing thread: it keeps its error for the next write,
    where MetricLogger raises it as one line (the thread's report would add 30 lines beside it)."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if type(args.thread).__module__ != "tensorboard.summary.writer.event_file_writer":
            previous(args)

    threading.excepthook = hook
