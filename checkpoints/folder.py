"""checkpoint.dir, owned by one object: `CheckpointFolder` claims it, says whether the run resumes and
from where, which steps are saved, saves and prunes, and names the newest; it holds the step saved last.
The key is read here, once (`configured`).

Its helpers: checkpoints/run_folder.py (the run's folders probed and locked) and checkpoints/store.py
(a checkpoint on disk: written atomically, complete once marked, loadable into any layout).
"""

import shutil
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol

from checkpoints import run_folder, store
from checkpoints.store import CheckpointError
from config.errors import UserError
from config.schema import Config
from distributed.layout import Plan
from distributed.reductions import any_process

KEY = "checkpoint.dir"


def configured(cfg: Config) -> str:
    """checkpoint.dir as the user gave it: for the owner below, and for the commands that only read a checkpoint."""
    return cfg.checkpoint.dir


class Contents(Protocol):
    """What this process's checkpoint holds (training/saved_state.py `SavedState`)."""

    def tensors(self) -> dict:
        """Fresh entries: what a save writes, and what a load fills in place."""

    def restore(self, state: dict, path: Path) -> None:
        """Hand the entries loaded from checkpoint `path` to the parts that keep them."""

    def check_finite(self, step: int, folder: str) -> None:
        """Stop the run, on every process alike, unless every weight is finite: nothing is saved after that."""


class CheckpointFolder:
    """The run's checkpoint.dir, as this process of `plan` sees it."""

    def __init__(self, cfg: Config, plan: Plan) -> None:
        self.dir = configured(cfg)
        self.every_steps, self.keep = cfg.checkpoint.every_steps, cfg.checkpoint.keep
        self.model, self.resume_asked, self.log_dir, self.plan = cfg.model, cfg.train.resume, cfg.log.dir, plan
        self.saved_step: int | None = None
        """The step saved or resumed from last: never written twice."""

    def claim(self) -> AbstractContextManager[None]:
        """Probe checkpoint.dir (every process writes its own files) and, on rank 0, log.dir (only it writes
        events); rank 0 locks both while the block runs. Call before any process group."""
        folders = {KEY: self.dir, **({"log.dir": self.log_dir} if self.plan.logs else {})}
        return run_folder.claim(folders, lock_them=self.plan.rank == 0)

    def check_unclaimed(self) -> None:
        """What `claim` and `resumes` refuse, checked for rank 0 before any process starts (./run.sh's
        launcher): the folders writable and not held by a live run (the locks taken and released at once),
        and, unless resuming, no other run's checkpoints; resuming, the newest checkpoint of this architecture
        (one that cannot be read is left to the run, which sets it aside). Each process still checks itself."""
        with self.claim():
            pass
        newest = self.newest()
        if newest is None:
            return
        if not self.resume_asked:
            raise self._another_run(newest)
        try:
            store.check_model(newest, self.model)
        except store.BrokenCheckpoint:
            pass

    def newest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        return store.latest(self.dir)

    def resumes(self) -> bool:
        """Whether this run continues from its checkpoints: train.resume, or torchrun restarted a process.
        A run that does not refuses a folder holding a complete checkpoint: it is another run's, and pruning
        by step number would delete this run's checkpoints instead of it.

        A machine whose agent was lost and is started again counts its workers' restarts from 0 while the
        survivors' agents count 1, so the processes agree by a MAX over all of them: every process resumes,
        or none. That needs the process group, so this runs after it starts."""
        if self.resume_asked or any_process(self.plan.restarts > 0, self.plan.device):
            return True
        newest = self.newest()
        if any_process(newest is not None, self.plan.device):
            raise self._another_run(newest)
        return False

    def _another_run(self, newest: Path | None) -> UserError:
        found = f" (newest: {newest.name})" if newest else ""
        return UserError(f"{KEY}={self.dir} holds another run's checkpoints{found}: continue that run with "
                         f"train.resume=true, or start this one in another {KEY} (and log.dir)")

    def check_space(self, checkpoint_bytes: int) -> None:
        """Stop before the first step when the disk cannot hold the checkpoints the run keeps: at the peak,
        `keep` complete ones beside the one being written; those already there count as written."""
        root = Path(self.dir)
        to_write = max(1, self.keep + 1 - len(store.complete(root)))
        existing = next(p for p in (root, *root.parents) if p.exists())  # a folder not made yet: its parent's disk
        free = shutil.disk_usage(existing).free
        if free < to_write * checkpoint_bytes:
            raise CheckpointError(
                f"{KEY}={self.dir}: {free / 1e9:.2f} GB free, but {to_write} more checkpoint(s) of "
                f"{checkpoint_bytes / 1e9:.2f} GB each are needed (checkpoint.keep={self.keep}); free space or lower "
                "checkpoint.keep"
            )

    def due(self, step: int, epoch_end: bool) -> bool:
        """Whether `step` is saved: each epoch's end, and every checkpoint.every_steps, once."""
        every = self.every_steps
        return step != self.saved_step and (epoch_end or (every > 0 and step % every == 0))

    def save(self, step: int, contents: Contents) -> Path | None:
        """Checkpoint `step` and prune to checkpoint.keep, unless it is saved already; a weight no longer
        finite on some process stops the run instead (an update can overflow on a finite loss)."""
        if step == self.saved_step:
            return None
        contents.check_finite(step, self.dir)
        path = store.save(contents.tensors(), self.dir, step, self.keep, self.model)
        self.saved_step = step
        return path

    def resume(self, contents: Contents) -> Path | None:
        """Load the newest complete checkpoint that loads on every process into `contents`; None, and nothing
        changed, when there is none. One that cannot be read is renamed step_N.broken (never deleted), named
        with the reason, and the one before it is tried; every process takes the same decision on each, so
        none trains on while a peer gave up. When every one is broken the run stops: a failed read may have
        filled some tensors already. A checkpoint of another architecture is the user's error, not broken."""
        aside = []
        for path in reversed(store.complete(self.dir)):
            state, broken = contents.tensors(), None
            try:
                store.load(state, path, self.model)
            except store.BrokenCheckpoint as err:
                broken = err
            if not any_process(broken is not None, self.plan.device):
                contents.restore(state, path)
                self.saved_step = store.step_of(path)
                return path
            aside.append(path.name)
            if store.is_writer():
                moved = store.set_aside(path)
                reason = broken or f"checkpoint {path} failed to load on another process"
                print(f"warning: {reason}; set aside as {moved.name}, trying the checkpoint before it",
                      file=sys.stderr, flush=True)
        if aside:
            raise UserError(f"no checkpoint in {KEY}={self.dir} loads ({', '.join(aside)} set aside as *.broken): "
                            "run again to start from step 0, or put back a good copy")
        return None
