"""The fast path: number format, memory layout, compilation and cuDNN autotuning, resolved per device.

Each is a config switch (`train.precision`, `train.channels_last`, `train.compile`,
`train.cudnn_benchmark`) whose `auto` is the choice measured best on that kind of
device (AUTO below; the measurements are in docs/BENCHMARKS.md, made by bench/gpu.py,
which runs on a GPU or, without one, on the CPU). `precision=fp32` with the other
switches off is the exact reproduction every layout is tested against.
"""

import contextlib
from dataclasses import dataclass

import torch

from config.schema import ConfigError, TrainConfig


@dataclass(frozen=True)
class FastPath:
    """The resolved switches for one process's device."""

    precision: str
    """fp32 (no TF32 anywhere), tf32 (fp32 storage, TF32 matrix units) or bf16 (autocast)."""
    channels_last: bool
    compile: str
    """off, on (torch.compile's default mode) or cudagraphs (its reduce-overhead mode: each compiled
    stage replays as a CUDA graph, which cuts the host's launch work; a GPU feature)."""
    cudnn_benchmark: bool

    @staticmethod
    def resolve(train: TrainConfig, device: torch.device) -> "FastPath":
        """The config's switches with every `auto` replaced by AUTO's choice for `device`."""
        best = AUTO["cuda" if device.type == "cuda" else "cpu"]
        compile_ = best.compile if train.compile == "auto" else train.compile
        if train.channels_last == "auto":
            # Measured on a GPU: NHWC pays only when compiled (eager LRN in NHWC is slower; BENCHMARKS.md).
            channels_last = best.channels_last and compile_ != "off"
        else:
            channels_last = train.channels_last == "on"
        chosen = FastPath(
            precision=best.precision if train.precision == "auto" else train.precision,
            channels_last=channels_last,
            compile=compile_,
            cudnn_benchmark=best.cudnn_benchmark if train.cudnn_benchmark == "auto" else train.cudnn_benchmark == "on",
        )
        if device.type != "cuda" and chosen.precision == "tf32":
            raise ConfigError("train.precision=tf32 needs a GPU (TF32 is a GPU matrix-unit format); use fp32 or bf16")
        if device.type != "cuda" and chosen.compile == "cudagraphs":
            raise ConfigError("train.compile=cudagraphs needs a GPU (CUDA graphs); use on or off")
        return chosen

    def apply_process_flags(self) -> None:
        """Set the process-wide backend flags these switches mean. torch keeps them in globals,
        so they are set once, at the start of a run, for the whole process."""
        tf32 = self.precision == "tf32"
        # torch lets cuDNN use TF32 for fp32 convolutions by default; fp32 must mean fp32.
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = self.cudnn_benchmark

    def autocast(self, device: torch.device):
        """The context every forward runs in: bf16 autocast, or nothing."""
        if self.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        return (f"precision {self.precision}, channels_last {'on' if self.channels_last else 'off'}, "
                f"compile {self.compile}, cudnn_benchmark {'on' if self.cudnn_benchmark else 'off'}")


AUTO = {
    "cuda": FastPath(precision="bf16", channels_last=True, compile="on", cudnn_benchmark=True),
    "cpu": FastPath(precision="fp32", channels_last=False, compile="off", cudnn_benchmark=False),
}
"""What `auto` means on each kind of device, from the measurements in docs/BENCHMARKS.md."""
