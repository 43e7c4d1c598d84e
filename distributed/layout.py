"""Which towers and which replica each process holds, and the groups they talk over.

World size W = replicas x tower processes. With tower processes 2 the ranks
(2r, 2r+1) hold towers 0 and 1 of replica r; with 1, each rank holds both towers
of its own replica. The arithmetic is checked from torchrun's environment before
any process group starts; the groups come from a DeviceMesh (replica, tower).
`plan_from_env` is the one place the program reads torchrun's environment.
"""

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from config.schema import Config, ConfigError


@dataclass(frozen=True)
class Plan:
    """The arithmetic of a layout, known before any process group exists."""

    world: int
    rank: int
    local_rank: int
    tower_processes: int
    """Processes one replica's towers are spread over: 1 or 2."""
    replicas: int
    device: torch.device
    backend: str
    """nccl or gloo."""
    restarts: int = 0
    """Times torchrun has restarted this process's workers (TORCHELASTIC_RESTART_COUNT)."""
    restarts_share_store: bool = False
    """torchrun may restart workers into the store the dead ones used (pytorch#135712): worth a warning."""
    local_world: int = 1
    """Processes of the run on this machine (LOCAL_WORLD_SIZE): they share its memory."""

    @property
    def replica(self) -> int:
        return self.rank // self.tower_processes

    @property
    def tower_rank(self) -> int:
        """This process's place among its replica's tower processes."""
        return self.rank % self.tower_processes

    def tower_indices(self, towers: int) -> tuple[int, ...]:
        return (self.tower_rank,) if self.tower_processes == 2 else tuple(range(towers))

    @property
    def loads_data(self) -> bool:
        """The first tower process of each replica runs the loader and shares its batches."""
        return self.tower_rank == 0

    @property
    def logs(self) -> bool:
        return self.rank == 0

    @property
    def exchanges_via_host(self) -> bool:
        """Tower processes talk over gloo with CUDA tensors (sharing one GPU): exchanges go through host memory."""
        return self.backend == "gloo" and self.device.type == "cuda"


def plan_from_env(cfg: Config, env: dict[str, str] | None = None) -> Plan:
    """Check the world size and batch arithmetic against `cfg`, from torchrun's variables."""
    env = dict(os.environ) if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", "0"))
    local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    split = cfg.model.towers == 2 and cfg.parallel.tower_parallel and world > 1
    if split and world % 2:
        raise ConfigError(
            f"world size {world}: one tower per process needs 1, 2 or an even number of processes "
            "(or parallel.tower_parallel=false for one replica per process)"
        )
    tower_processes = 2 if split else 1
    replicas = world // tower_processes
    per_step = replicas * cfg.train.micro_batches
    if cfg.train.batch_size % per_step:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} is not divisible by {replicas} replica(s) x "
            f"train.micro_batches={cfg.train.micro_batches}"
        )
    backend = cfg.parallel.backend
    device = _device(cfg.train.device, local_rank, local_world, backend)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("parallel.backend=nccl needs a GPU per process; use gloo (or auto) on CPU")
    # torchrun keeps the dead generation's keys in the store it shares with restarted workers,
    # so a restart can dial a dead peer and fail; a store per generation (docs/SCALING.md) avoids it.
    shares_store = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0
    return Plan(world, rank, local_rank, tower_processes, replicas, device, backend,
                int(env.get("TORCHELASTIC_RESTART_COUNT", "0")), shares_store, local_world)


def _device(choice: str, local_rank: int, local_world: int, backend: str) -> torch.device:
    has_cuda = torch.cuda.is_available()
    if choice == "cuda" and not has_cuda:
        raise ConfigError("train.device=cuda but no GPU is visible")
    if choice == "cpu" or not has_cuda:
        return torch.device("cpu")
    gpus = torch.cuda.device_count()
    if local_world > gpus:
        if backend != "gloo":
            raise ConfigError(
                f"{local_world} processes on this node but {gpus} GPU(s): NCCL needs one GPU per process; "
                "run --nproc_per_node=1 to hold both towers in one process, or parallel.backend=gloo to let "
                "the processes share the GPU (slower: exchanges go through host memory)"
            )
        return torch.device("cuda", local_rank % gpus)
    return torch.device("cuda", local_rank)


@dataclass
class Layout:
    """A plan with its process groups (None where a group would hold one rank)."""

    plan: Plan
    tower_group: dist.ProcessGroup | None
    replica_group: dist.ProcessGroup | None


def start(plan: Plan, timeout_s: float) -> Layout:
    """Join the process group (when there is more than one process) and build the mesh."""
    if plan.world == 1:
        return Layout(plan, None, None)
    if plan.device.type == "cuda":
        torch.cuda.set_device(plan.device)
    # The timeout bounds every collective: a dead or stalled peer fails the survivors
    # instead of hanging them.
    dist.init_process_group(plan.backend, timeout=timedelta(seconds=timeout_s))
    mesh = init_device_mesh(
        plan.device.type, (plan.replicas, plan.tower_processes), mesh_dim_names=("replica", "tower")
    )
    tower_group = mesh.get_group("tower") if plan.tower_processes > 1 else None
    replica_group = mesh.get_group("replica") if plan.replicas > 1 else None
    return Layout(plan, tower_group, replica_group)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
