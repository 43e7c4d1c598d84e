"""The training loop: forward, loss, backward, step; evaluation, logs and checkpoints at its edges."""

import itertools
import math
import time

import torch
import torch.distributed as dist
import yaml
from tqdm import tqdm

from checkpoints import run_folder, store
from config.schema import Config, to_dict
from data.loader import train_batches
from distributed.feed import shared_batches, validation_batches
from distributed.layout import Layout, any_process
from model.seeds import derive_seed
from training.build import build
from training.evaluation import CENTRE, TEN_PATCHES, ErrorRates, evaluate
from training.metrics import conv1_kernels, topk_wrong


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class Trainer:
    """Runs one process's share of training: the loop, and the end of each epoch."""

    def __init__(self, cfg: Config, layout: Layout) -> None:
        self.cfg, self.layout, self.plan = cfg, layout, layout.plan
        self.device = self.plan.device
        parts = build(cfg, layout)
        self.fast = parts.fast
        self.data, self.order, self.model, self.pipeline = parts.data, parts.order, parts.model, parts.pipeline
        self.optimizer, self.schedule, self.augment, self.logger = parts.optimizer, parts.schedule, parts.augment, parts.logger
        self.replica_batch = cfg.train.batch_size // self.plan.replicas
        self.step = 0
        self.saved_step: int | None = None  # the checkpoint this run wrote or resumed last: never written twice
        # Training top-1 errors and images of the epoch so far, over this replica (the paper's Figure 1 axis).
        self.epoch_tally = torch.zeros(2, device=self.device)
        self.reached_target = False
        self.total_steps = cfg.train.epochs * self.order.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step on a replica batch; returns (summed loss, wrong top-1/top-5) without syncing."""
        self.model.train()
        seed, replica = self.cfg.train.seed, self.plan.replica
        # Augmentation is drawn for the whole batch (the same in every layout); dropout per replica.
        aug_rng = torch.Generator().manual_seed(derive_seed(seed, "augment", self.step))
        self.model.seed_dropout(derive_seed(seed, "dropout", self.step, replica))
        inputs = self.augment.train(images, aug_rng, replica * len(labels), self.cfg.train.batch_size)
        # Evaluation feeds NCHW crops as they come: the convolutions follow their weights' layout anyway.
        inputs = inputs.contiguous(memory_format=self.fast.memory_format)
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum, logits = self.pipeline(inputs, labels, self.cfg.train.micro_batches, self._autocast)
        self.optimizer.step()
        return loss_sum, topk_wrong(logits, labels)

    def _autocast(self):
        return self.fast.autocast(self.device)

    def feed(self, first_step: int):
        """Every remaining step's batch: one loader for the run, prefetching across epoch ends (and so
        under the evaluation at each), instead of new loading processes every epoch."""
        loaded = None
        if self.plan.loads_data:
            loaded = train_batches(
                self.data.train, self.order, first_step, self.total_steps, self.plan.replica, self.plan.replicas,
                self.cfg.data.workers, self.cfg.data.prefetch, self.device.type == "cuda",
            )
        sizes = itertools.repeat(self.replica_batch, self.total_steps - first_step)
        return shared_batches(loaded, sizes, self.layout.tower_group, self.device)

    def evaluate(self, ways=(CENTRE,)) -> dict[str, ErrorRates]:
        """The validation set's error rates, summed over replicas (training/evaluation.py)."""
        batches = validation_batches(self.data.val, self.cfg, self.layout)
        return evaluate([self.model], self.augment, batches, self.layout.replica_group, self._autocast, ways)

    def _sum_over_replicas(self, t: torch.Tensor) -> None:
        if self.layout.replica_group is not None:
            dist.all_reduce(t, group=self.layout.replica_group)

    # -- checkpoints -----------------------------------------------------------------------

    def _state(self) -> dict:
        progress = {"step": torch.tensor(self.step), "epoch_tally": self.epoch_tally.cpu()}
        # float64: the best validation error must come back exactly, or a resumed run could count a tie as a gain
        progress.update({k: torch.tensor(float(v), dtype=torch.float64) for k, v in self.schedule.state_dict().items()})
        return store.training_state(self.model, self.optimizer, progress)

    def _check_checkpoint_space(self) -> None:
        # A checkpoint holds the weights and the velocity of every tower (replicas write one copy).
        weights = sum(t.nbytes for t in self.model.state_dict().values())
        store.check_space(self.cfg.checkpoint.dir, 2 * weights * self.plan.tower_processes, self.cfg.checkpoint.keep)

    def save(self) -> None:
        """Checkpoint the run, unless this step is saved already (a run resumed at its end) or a weight is
        no longer finite (an update can overflow on a finite loss)."""
        if self.step == self.saved_step:
            return
        finite = all(p.isfinite().all() for p in self.model.parameters())
        if any_process(not finite, self.device):
            raise NonFiniteLoss(
                f"weights became non-finite by step {self.step}; stopped, the last good checkpoint in "
                f"{self.cfg.checkpoint.dir} is kept"
            )
        store.save(self._state(), self.cfg.checkpoint.dir, self.step, self.cfg.checkpoint.keep, self.cfg.model)
        self.saved_step = self.step

    def resume(self) -> bool:
        """Continue from the newest complete checkpoint that loads, if there is one (run_folder.load_newest)."""
        found = run_folder.load_newest(self._state, self.cfg.checkpoint.dir, self.cfg.model, self.device)
        if found is None:
            return False
        path, state = found
        progress = state["progress"]
        self.step = int(progress["step"])
        self.epoch_tally = progress["epoch_tally"].to(self.device)
        self.schedule.load_state_dict({k: progress[k].item() for k in ("best", "epochs_without_gain", "drops")})
        self.saved_step = self.step
        if self.plan.logs:
            print(f"resumed from {path} at step {self.step}", flush=True)
        return True

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> ErrorRates:
        """Train to the configured length, evaluating and checkpointing each epoch."""
        resuming = run_folder.resumes(self.cfg, self.plan)  # or refuses another run's checkpoint.dir
        self._check_checkpoint_space()
        if self.plan.logs:
            p = self.plan
            print(f"processes: {p.world} ({p.replicas} replica(s) x {p.tower_processes} tower process(es)) on "
                  f"{self.device}, backend {p.backend}; {self.fast.describe()}", flush=True)
        if resuming:
            self.resume()
        self.logger.text("config", "```\n" + yaml.safe_dump(to_dict(self.cfg), sort_keys=False) + "\n```")
        per_epoch = self.order.steps_per_epoch
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (self.plan.logs and self.cfg.log.progress),
                   unit="step", dynamic_ncols=True)
        window = _Window(self.device)
        result = None
        feed = self.feed(self.step)
        while self.step < self.total_steps and not self.reached_target:
            wait_start = time.perf_counter()
            images, labels = next(feed)
            window.data_wait += time.perf_counter() - wait_start
            loss, wrong = self.train_step(images, labels)
            window.add(loss, wrong, len(labels))
            self.epoch_tally[0] += wrong[0]
            self.epoch_tally[1] += len(labels)
            self.step += 1
            bar.update(1)
            if self.step % self.cfg.log.every_steps == 0:
                self._log_window(window, bar)
                window = _Window(self.device)
            epoch_end = self.step % per_epoch == 0
            if epoch_end:
                result = self._end_of_epoch(self.step // per_epoch - 1)
            elif self.cfg.checkpoint.every_steps and self.step % self.cfg.checkpoint.every_steps == 0:
                self._check_finite(window)
                self.save()
        feed.close()
        bar.close()
        mid_epoch = self.step % per_epoch != 0
        if mid_epoch:  # stopped by max_steps: keep the place, leave the schedule be
            self._check_finite(window)
            self.save()
        # The last epoch's centre-crop rates stand unless steps followed it (or, resumed after the
        # last epoch, there are none): then the centre crop is measured with the ten patches.
        final = self.evaluate((TEN_PATCHES,) if result and not mid_epoch else (CENTRE, TEN_PATCHES))
        result = final.get(CENTRE, result)
        ten = final[TEN_PATCHES]
        if self.plan.logs:
            print(f"final validation (centre crop): top-1 error {result.top1:.4f}, top-5 error {result.top5:.4f}", flush=True)
            print(f"final validation (10 patches): top-1 error {ten.top1:.4f}, top-5 error {ten.top5:.4f}", flush=True)
        self.logger.scalars(self.step, {
            "error/final_val_top1": result.top1, "error/final_val_top5": result.top5,
            "error/final_val10_top1": ten.top1, "error/final_val10_top5": ten.top5,
        })
        self.logger.close()
        return result

    def _end_of_epoch(self, epoch: int) -> ErrorRates:
        tally = self.epoch_tally.clone()
        self._sum_over_replicas(tally)
        self.epoch_tally.zero_()
        wrong, images = tally.tolist()
        train_top1 = wrong / images
        target = self.cfg.train.stop_at_train_error
        result = self.evaluate()[CENTRE]
        dropped = self.schedule.step(result.top1)
        converged = self.cfg.train.stop_when_converged and self.schedule.converged
        self.reached_target = (0 < target and train_top1 <= target) or converged
        self.logger.conv1_kernels(conv1_kernels(self.model, self.layout.tower_group), self.step)
        self.logger.scalars(self.step, {
            "error/val_top1": result.top1, "error/val_top5": result.top5, "loss/val": result.loss, "epoch": epoch + 1,
            "error/train_epoch_top1": train_top1,
        })
        if self.plan.logs:
            note = f", lr dropped to {self.schedule.lr:g}" if dropped else ""
            if converged:
                note += "; validation error stopped improving after the last lr drop, stopping"
            elif self.reached_target:
                note += f"; reached train.stop_at_train_error={target:g}, stopping"
            print(f"epoch {epoch + 1}: train top-1 error {train_top1:.4f}, val top-1 error {result.top1:.4f}, "
                  f"top-5 {result.top5:.4f}{note}", flush=True)
        if not math.isfinite(result.loss):
            raise NonFiniteLoss(f"validation loss is {result.loss} after step {self.step}; last good checkpoint kept")
        self.save()
        return result

    def _check_finite(self, window: "_Window") -> None:
        # Summed over replicas, so every process takes the same decision and none is left
        # waiting in save() for a peer that stopped.
        loss = window.loss.clone()
        self._sum_over_replicas(loss)
        self._stop_if_not_finite(loss.item())

    def _stop_if_not_finite(self, loss: float) -> None:
        if not math.isfinite(loss):
            raise NonFiniteLoss(
                f"training loss became {loss} by step {self.step} (rank {self.plan.rank}); "
                f"stopped, the last good checkpoint in {self.cfg.checkpoint.dir} is kept"
            )

    def _log_window(self, window: "_Window", bar: tqdm) -> None:
        # The one host sync of a log step: everything accumulated on the device comes back at once.
        sums = torch.cat([window.loss[None], window.wrong, torch.tensor([float(window.images)], device=self.device)])
        self._sum_over_replicas(sums)
        loss, wrong1, wrong5, images = sums.tolist()
        self._stop_if_not_finite(loss)
        elapsed = time.perf_counter() - window.start
        steps = self.cfg.log.every_steps
        exposed = self.pipeline.exposed  # what the steps spent waiting for exchanges to land
        values = {
            "loss/train": loss / images,
            "error/train_top1": wrong1 / images,
            "error/train_top5": wrong5 / images,
            "lr": self.schedule.lr,
            "throughput/images_per_s": images / elapsed,
            "time/step_s": elapsed / steps,
            "time/data_wait_s": window.data_wait / steps,
            "time/data_wait_pct": 100 * window.data_wait / elapsed,
            "time/exchange_forward_s": exposed.forward / steps,
            "time/exchange_backward_s": exposed.backward / steps,
            "time/exchange_pct": 100 * (exposed.forward + exposed.backward) / elapsed,
        }
        exposed.forward = exposed.backward = 0.0
        self.logger.scalars(self.step, values)
        bar.set_postfix(loss=f"{values['loss/train']:.3f}", img_s=f"{values['throughput/images_per_s']:.0f}")


class _Window:
    """Sums over the steps since the last log, kept on the device until the log step."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.wrong = torch.zeros(2, device=device)
        self.images = 0
        self.data_wait = 0.0
        self.start = time.perf_counter()

    def add(self, loss: torch.Tensor, wrong: torch.Tensor, images: int) -> None:
        self.loss += loss
        self.wrong += wrong
        self.images += images
