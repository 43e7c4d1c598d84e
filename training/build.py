"""Building a training run's parts from the config and the layout, apart from running them."""

from dataclasses import dataclass

from torch.optim import Optimizer

from config.schema import Config, ConfigError, TrainConfig
from data.augment import Augmenter
from data.imageset import Datasets
from data.order import EpochOrder
from data.ring import ring_bytes, ring_slots, shared_memory_room
from distributed.exchange import for_layout
from distributed.layout import Layout, Plan
from distributed.pipeline import PipelinedStep, StepKind
from model.alexnet import AlexNet
from training.cpu_kernels import build_cpu_kernels
from training.datasets import data_sizes, open_datasets
from training.evaluation import Validator
from training.metrics import MetricLogger
from training.optimizer import build_optimizer
from training.plateau import PlateauSchedule
from training.progress import Progress
from training.saved_state import SavedState
from training.speed import SpeedSwitches


@dataclass
class Parts:
    """What one process of a run trains with."""

    data: Datasets
    order: EpochOrder
    model: AlexNet
    kind: StepKind
    pipeline: PipelinedStep
    optimizer: Optimizer
    schedule: PlateauSchedule
    augment: Augmenter
    speed: SpeedSwitches
    progress: Progress
    logger: MetricLogger
    validator: Validator
    saved: SavedState


MAX_STEPS = 2**63 - 1
"""Most steps a run counts: the loader's length and every step number are 64-bit."""


def check_data(cfg: Config) -> None:
    """Open the data's description only (no images) and check it fits the model and the batch, and that the
    run's length in steps can be counted: run in every process before any process group starts, so bad data
    fails there and not inside a collective."""
    try:
        classes, train_images = data_sizes(cfg.data)
    except (OSError, ValueError) as err:
        raise ConfigError(str(err)) from None
    t = cfg.train
    if classes > cfg.model.num_classes:
        raise ConfigError(f"model.num_classes={cfg.model.num_classes} but the data has {classes} classes")
    if t.batch_size > train_images:
        raise ConfigError(f"train.batch_size={t.batch_size} is more than the {train_images} training "
                          "images: an epoch would hold no step; lower the batch or give more data")
    steps = t.epochs * (train_images // t.batch_size)
    if min(steps, t.max_steps or steps) > MAX_STEPS:
        raise ConfigError(f"train.epochs={t.epochs} of {train_images // t.batch_size} steps is {steps} steps, more "
                          f"than the {MAX_STEPS} a run can count; lower train.epochs or set train.max_steps")


def check_memory(cfg: Config, plan: Plan) -> None:
    """Check, before any process group, that the loaders' rings fit in the shared memory of this machine:
    each loading tower process allocates a ring for the training batches at its start and one for the
    validation batches at each epoch's end, while the first still lives (data/ring.py)."""
    d, batch = cfg.data, cfg.train.batch_size // plan.replicas
    loaders = max(1, plan.local_world // plan.tower_processes)
    needed = 2 * loaders * ring_bytes(d.workers, d.prefetch, batch)
    room, what = shared_memory_room()
    if needed > room:
        raise ConfigError(
            f"data.workers={d.workers} x data.prefetch={d.prefetch}: {loaders} loading process(es) with rings of "
            f"{ring_slots(d.workers, d.prefetch)} batches of {batch} images, for training and validation, take "
            f"{needed / 1e9:.1f} GB of shared memory, more than the {room / 1e9:.1f} GB {what}; lower data.workers "
            "or data.prefetch"
        )


def choose_step(plan: Plan, train: TrainConfig) -> tuple[StepKind, SpeedSwitches]:
    """The step's kind and the switches it runs with, decided here for the run: every tower in this process,
    one micro-batch and no replicas run the step whole (or, with train.step_graph, as one CUDA graph, which
    needs that layout); any other layout pipelines. Refuses (ConfigError) a switch this layout or device
    cannot take, so programs/train.py calls it before any process group as well."""
    whole = plan.tower_processes == 1 and plan.replicas == 1 and train.micro_batches == 1
    speed = SpeedSwitches.resolve(train, plan.device, one_pass=whole)
    if speed.step_graph:
        return StepKind.GRAPHED, speed
    return (StepKind.WHOLE if whole else StepKind.PIPELINED), speed


def build(cfg: Config, layout: Layout) -> Parts:
    """The parts of a run on this process, its speed switches applied. The weights start from the
    paper's init on the CPU, so every layout and device starts from the same numbers."""
    plan, t = layout.plan, cfg.train
    kind, speed = choose_step(plan, t)
    speed.apply_process_flags()
    if plan.device.type == "cpu":
        build_cpu_kernels()  # built now if it must be (said once), rather than silently inside the first step
    data = open_datasets(cfg.data, t.seed, cfg.parallel.timeout_s)
    order = EpochOrder(len(data.train), t.batch_size, t.seed)
    exchange = for_layout(layout)
    model = AlexNet(cfg.model, plan.tower_indices(cfg.model.towers), exchange)
    model.init_paper(t.seed)
    model.to(plan.device, memory_format=speed.memory_format)
    if speed.grouped:
        model.group_towers()
    if speed.compile != "off":
        model.compile_stages("reduce-overhead" if speed.compile == "cudagraphs" else None)
    optimizer = build_optimizer(model.parameters(), t.optimizer, t.lr, t.momentum, t.weight_decay)
    schedule = PlateauSchedule(optimizer, t.lr, t.lr_factor, t.lr_drops, t.plateau_patience)
    augment = Augmenter.from_config(data.stats, cfg.data, cfg.model.input_size, plan.device)
    progress = Progress(plan.device, layout.replica_group, plan.replica)
    return Parts(
        data=data,
        order=order,
        model=model,
        kind=kind,
        pipeline=PipelinedStep(model, exchange, layout.replica_group, kind, t.micro_batches),
        optimizer=optimizer,
        schedule=schedule,
        augment=augment,
        speed=speed,
        progress=progress,
        logger=MetricLogger(cfg.log.dir, enabled=plan.logs, every_steps=cfg.log.every_steps),
        validator=Validator(data.val, augment, cfg, layout, lambda: speed.autocast(plan.device), order.steps_per_epoch),
        saved=SavedState(model, optimizer, {"progress": progress, "schedule": schedule}, plan),
    )
