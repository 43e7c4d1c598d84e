"""The speed switches (`train.precision`, `channels_last`, `compile`, `cudnn_benchmark`, `step_graph`,
`grouped`), each `auto` resolved per device to the choice measured best there (AUTO below; README's "The
speed switches (GPU)", measured by bench/gpu.py). fp32 with the rest off is the exact reproduction every
layout is tested against; the last two apply to the one-pass step only (training/build.py `choose_step`)."""

import contextlib
from dataclasses import dataclass

import torch

from config.schema import ConfigError, TrainConfig


@dataclass(frozen=True)
class SpeedSwitches:
    """The resolved switches for one process's device."""

    precision: str
    """fp32 (no TF32 anywhere), tf32 (fp32 storage, TF32 matrix units) or bf16 (autocast)."""
    channels_last: bool
    compile: str
    """off, on (torch.compile's default mode) or cudagraphs (its reduce-overhead mode: each compiled
    stage replays as a CUDA graph, which cuts the host's launch work; a GPU feature)."""
    cudnn_benchmark: bool
    step_graph: bool = False
    """The whole one-pass step captured once and replayed as one CUDA graph (training/graphed_step.py)."""
    grouped: bool = False
    """Both towers computed as one network per layer (model/grouped.py)."""

    @staticmethod
    def resolve(train: TrainConfig, device: torch.device, one_pass: bool | None = None) -> "SpeedSwitches":
        """The config's switches with every `auto` replaced by AUTO's choice for `device`. `one_pass`: whether
        this process's layout runs the one-pass step (training/build.py `choose_step`); None where no step
        is run (evaluation)."""
        best = AUTO["cuda" if device.type == "cuda" else "cpu"]
        compile_ = best.compile if train.compile == "auto" else train.compile
        if train.channels_last == "auto":
            # Measured on a GPU: NHWC pays only when compiled (eager LRN in NHWC is slower; BENCHMARKS.md).
            channels_last = best.channels_last and compile_ != "off"
        else:
            channels_last = train.channels_last == "on"
        chosen = SpeedSwitches(
            precision=best.precision if train.precision == "auto" else train.precision,
            channels_last=channels_last,
            compile=compile_,
            cudnn_benchmark=best.cudnn_benchmark if train.cudnn_benchmark == "auto" else train.cudnn_benchmark == "on",
            step_graph=_one_pass_switch("step_graph", train.step_graph, best.step_graph, one_pass),
            grouped=_one_pass_switch("grouped", train.grouped, best.grouped, one_pass),
        )
        if device.type != "cuda" and chosen.precision == "tf32":
            raise ConfigError("train.precision=tf32 needs a GPU (TF32 is a GPU matrix-unit format); use fp32 or bf16")
        if device.type != "cuda" and chosen.compile == "cudagraphs":
            raise ConfigError("train.compile=cudagraphs needs a GPU (CUDA graphs); use on or off")
        if chosen.step_graph:
            if device.type != "cuda":
                raise ConfigError("train.step_graph=on needs a GPU (CUDA graphs); use off")
            if chosen.compile == "cudagraphs":
                raise ConfigError("train.step_graph=on already replays the whole step as one CUDA graph: "
                                  "use train.compile=on or off with it, not cudagraphs")
            if train.optimizer != "paper":
                raise ConfigError(f"train.step_graph=on needs train.optimizer=paper, not {train.optimizer}: "
                                  "the graph reads the rate from a device tensor, torch_sgd reads it on the host")
        return chosen

    def apply_process_flags(self) -> None:
        """Set the process-wide backend flags these switches mean. torch keeps them in globals,
        so they are set once, at the start of a run, for the whole process."""
        tf32 = self.precision == "tf32"
        # torch lets cuDNN use TF32 for fp32 convolutions by default; fp32 must mean fp32.
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = self.cudnn_benchmark

    def autocast(self, device: torch.device, cache: bool = True):
        """The context every forward runs in: bf16 autocast, or nothing. `cache=False` inside a CUDA graph's
        capture, as torch.cuda.graphs asks: autocast's cache of cast weights must not outlive the capture."""
        if self.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
        return contextlib.nullcontext()

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def describe(self) -> str:
        def word(on: bool) -> str:
            return "on" if on else "off"

        return (f"precision {self.precision}, channels_last {word(self.channels_last)}, compile {self.compile}, "
                f"cudnn_benchmark {word(self.cudnn_benchmark)}, step_graph {word(self.step_graph)}, "
                f"grouped {word(self.grouped)}")


def _one_pass_switch(key: str, value: str, best: bool, one_pass: bool | None) -> bool:
    """A switch that applies only to the one-pass step: `auto` is off in any other layout, `on` refused there."""
    if value == "auto":
        return best and one_pass is not False
    if value == "on" and one_pass is False:
        raise ConfigError(f"train.{key}=on needs the one-pass step: one process holding both towers, "
                          "train.micro_batches=1 and no replicas (this layout pipelines or splits the towers)")
    return value == "on"


AUTO = {
    "cuda": SpeedSwitches(precision="bf16", channels_last=True, compile="on", cudnn_benchmark=True,
                     step_graph=False, grouped=False),
    "cpu": SpeedSwitches(precision="fp32", channels_last=False, compile="off", cudnn_benchmark=False,
                    step_graph=False, grouped=False),
}
"""What `auto` means on each kind of device, from the measurements in docs/BENCHMARKS.md. step_graph and
grouped stay off until bench/gpu.py has measured them on a GPU (grouped measured slower on a CPU)."""
