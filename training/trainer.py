"""The training loop: forward, loss, backward, step; validation, logs and checkpoints at its edges.

Each edge is a component that owns its cadence and its state (training/build.py builds them):
the logger says which steps are log steps, the validator which end an epoch, the checkpoint
folder which are saved; the plateau schedule reads each validation error; `Progress` and the
schedule are saved with every checkpoint through their own state_dict (training/saved_state.py).
"""

import math

import torch
import yaml
from tqdm import tqdm

from checkpoints.folder import CheckpointFolder
from config.schema import Config, to_dict
from distributed.feed import training_batches
from distributed.layout import Layout
from distributed.pipeline import StepKind
from distributed.reductions import from_every_tower
from model.seeds import derive_seed
from training.build import build
from training.conv1_figure import conv1_kernels
from training.error_counts import topk_wrong
from training.evaluation import CENTRE, TEN_PATCHES, ErrorRates
from training.graphed_step import StaticStep
from training.progress import Window
from training.saved_state import NonFiniteLoss


class Trainer:
    """Runs one process's share of training: the loop, and what happens at each epoch's end."""

    def __init__(self, cfg: Config, layout: Layout, checkpoints: CheckpointFolder | None = None) -> None:
        """`checkpoints`: the run's checkpoint folder as the program claimed it (programs/train.py); else
        this process's own, unclaimed, for a trainer used in one process (the tests, the benchmarks)."""
        self.cfg, self.layout, self.plan = cfg, layout, layout.plan
        self.device = self.plan.device
        parts = build(cfg, layout)
        self.data, self.order, self.model = parts.data, parts.order, parts.model
        self.kind, self.pipeline, self.speed = parts.kind, parts.pipeline, parts.speed
        self.optimizer, self.schedule, self.augment = parts.optimizer, parts.schedule, parts.augment
        self.logger, self.validator = parts.logger, parts.validator
        self.saved, self.checkpoints = parts.saved, checkpoints or CheckpointFolder(cfg, self.plan)
        self.progress = parts.progress
        self.replica_batch = cfg.train.batch_size // self.plan.replicas
        self.total_steps = cfg.train.epochs * self.order.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.stopping = False  # the run reached train.stop_at_train_error, or converged
        self.graphed = None  # the step over static buffers, replayed as one CUDA graph
        if self.kind is StepKind.GRAPHED:
            self.graphed = StaticStep(self.model, self.pipeline, self.optimizer, self.augment, self.speed, self.device)

    @property
    def step(self) -> int:
        return self.progress.step

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step on a replica batch; returns (summed loss, wrong top-1/top-5) without syncing."""
        self.model.train()
        aug_rng = self.seed_step()
        if self.graphed is not None:
            return self.graphed(images, labels, aug_rng)
        inputs = self.augment.train(images, aug_rng, self.plan.replica * len(labels), self.cfg.train.batch_size)
        # Evaluation feeds NCHW crops as they come: the convolutions follow their weights' layout anyway.
        inputs = inputs.contiguous(memory_format=self.speed.memory_format)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, logits = self.pipeline(inputs, labels, self.autocast)
        self.optimizer.step()
        return loss_sum, topk_wrong(logits, labels)

    def seed_step(self) -> torch.Generator:
        """Seed this step's draws: the towers' dropout generators from (seed, step, replica); returns the
        augmentation's generator from (seed, step), drawn for the whole batch (the same in every layout)."""
        seed = self.cfg.train.seed
        self.model.seed_dropout(derive_seed(seed, "dropout", self.step, self.plan.replica))
        return torch.Generator().manual_seed(derive_seed(seed, "augment", self.step))

    def autocast(self):
        return self.speed.autocast(self.device)

    def feed(self, first_step: int):
        """Every remaining step's batch: one loader for the run, prefetching across epoch ends (and so
        under the validation at each), instead of new loading processes every epoch."""
        return training_batches(self.data.train, self.order, self.cfg, self.layout, first_step, self.total_steps)

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint that loads, if there is one."""
        path = self.checkpoints.resume(self.saved)
        if path is None:
            return False
        if self.plan.logs:
            print(f"resumed from {path} at step {self.step}", flush=True)
        return True

    def run(self) -> ErrorRates:
        """Train to the configured length; validate and checkpoint at each epoch's end."""
        resuming = self.checkpoints.resumes()  # or refuses another run's checkpoint.dir
        self.checkpoints.check_space(self.saved.checkpoint_bytes)
        if self.plan.logs:
            p = self.plan
            print(f"processes: {p.world} ({p.replicas} replica(s) x {p.tower_processes} tower process(es)) on "
                  f"{self.device}, backend {p.backend}; {self.speed.describe()}", flush=True)
        if resuming:
            self.resume()
        self.logger.text("config", "```\n" + yaml.safe_dump(to_dict(self.cfg), sort_keys=False) + "\n```")
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (self.plan.logs and self.cfg.log.progress),
                   desc="training", unit="step", dynamic_ncols=True)
        window, last_validation = Window(self.device), None
        feed = self.feed(min(self.step, self.total_steps))  # a run resumed past a shortened length trains no step
        while self.step < self.total_steps and not self.stopping:
            images, labels = window.next_batch(feed)
            loss, wrong = self.train_step(images, labels)
            window.add(loss, wrong, len(labels))
            self.progress.count(wrong[0], len(labels))
            bar.update(1)
            if self.logger.should_log(self.step):
                self._log(window, bar)
                window = Window(self.device)
            epoch_end = self.validator.should_validate(self.step)
            if epoch_end:
                last_validation = self._end_of_epoch()
            if self.checkpoints.due(self.step, epoch_end):
                self._stop_if_loss_not_finite(window)
                self.checkpoints.save(self.step, self.saved)
        feed.close()
        if self.stopping:  # ended early (train.stop_at_train_error, or converged): the bar ends full, where it stopped
            bar.total = self.step
            bar.refresh()
        bar.close()
        mid_epoch = not self.validator.should_validate(self.step)
        if mid_epoch:  # stopped by max_steps: keep the place, leave the schedule be
            self._stop_if_loss_not_finite(window)
            self.checkpoints.save(self.step, self.saved)
        return self._final_validation(last_validation if not mid_epoch else None)

    def _end_of_epoch(self) -> ErrorRates:
        """Validate, let the schedule read it, decide whether to stop, log the epoch."""
        epoch = self.step // self.order.steps_per_epoch
        train_top1 = self.progress.end_epoch()
        result = self.validator(self.model)[CENTRE]
        dropped = self.schedule.step(result.top1)
        converged = self.cfg.train.stop_when_converged and self.schedule.converged
        target = self.cfg.train.stop_at_train_error
        self.stopping = (0 < target and train_top1 <= target) or converged
        self.logger.conv1_kernels(from_every_tower(conv1_kernels(self.model), self.layout.tower_group), self.step)
        self.logger.scalars(self.step, {
            "error/val_top1": result.top1, "error/val_top5": result.top5, "loss/val": result.loss, "epoch": epoch,
            "error/train_epoch_top1": train_top1,
        })
        if self.plan.logs:
            note = f", lr dropped to {self.schedule.lr:g}" if dropped else ""
            if converged:
                note += "; validation error stopped improving after the last lr drop, stopping"
            elif self.stopping:
                note += f"; reached train.stop_at_train_error={target:g}, stopping"
            print(f"epoch {epoch}: train top-1 error {train_top1:.4f}, val top-1 error {result.top1:.4f}, "
                  f"top-5 {result.top5:.4f}{note}", flush=True)
        if not math.isfinite(result.loss):  # every process alike (summed over replicas), before the epoch's save
            raise NonFiniteLoss(f"validation loss is {result.loss} after step {self.step}; stopped, the last good "
                                f"checkpoint in {self.checkpoints.dir} is kept")
        return result

    def _final_validation(self, last_epoch: ErrorRates | None) -> ErrorRates:
        """The ten patches, and the centre crop unless the last epoch's stands (no steps since it)."""
        final = self.validator(self.model, (TEN_PATCHES,) if last_epoch else (CENTRE, TEN_PATCHES))
        centre, ten = final.get(CENTRE, last_epoch), final[TEN_PATCHES]
        if self.plan.logs:
            print(f"final validation (centre crop): top-1 error {centre.top1:.4f}, top-5 error {centre.top5:.4f}", flush=True)
            print(f"final validation (10 patches): top-1 error {ten.top1:.4f}, top-5 error {ten.top5:.4f}", flush=True)
        self.logger.scalars(self.step, {
            "error/final_val_top1": centre.top1, "error/final_val_top5": centre.top5,
            "error/final_val10_top1": ten.top1, "error/final_val10_top5": ten.top5,
        })
        self.logger.close()
        return centre

    def _stop_if_loss_not_finite(self, window: Window, loss: float | None = None) -> None:
        """Stop (every process alike: the loss is summed over replicas) when the loss since the last log is
        NaN or infinite; checked at log steps and before every checkpoint, so none is written after it."""
        if loss is None:
            loss = window.loss_over(self.layout.replica_group)
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"training loss became {loss} by step {self.step} (rank {self.plan.rank}); "
                f"stopped, the last good checkpoint in {self.checkpoints.dir} is kept"
            )

    def _log(self, window: Window, bar: tqdm) -> None:
        loss, wrong1, wrong5, images = window.totals(self.layout.replica_group)
        self._stop_if_loss_not_finite(window, loss)
        elapsed, steps = window.elapsed(), self.cfg.log.every_steps
        forward, backward = self.pipeline.exposed.take()  # what the steps spent waiting for exchanges to land
        values = {
            "loss/train": loss / images,
            "error/train_top1": wrong1 / images,
            "error/train_top5": wrong5 / images,
            "lr": self.schedule.lr,
            "throughput/images_per_s": images / elapsed,
            "time/step_s": elapsed / steps,
            "time/data_wait_s": window.data_wait / steps,
            "time/data_wait_pct": 100 * window.data_wait / elapsed,
            "time/exchange_forward_s": forward / steps,
            "time/exchange_backward_s": backward / steps,
            "time/exchange_pct": 100 * (forward + backward) / elapsed,
        }
        self.logger.scalars(self.step, values)
        bar.set_postfix(loss=f"{values['loss/train']:.3f}", img_s=f"{values['throughput/images_per_s']:.0f}")
