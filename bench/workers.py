"""Start a function in several local gloo processes, set up as torchrun would: for tests and benchmarks."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from config.cli import quiet_known_warnings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, init: bool, fn, args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    quiet_known_warnings()
    if init:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_workers(world: int, fn, *args, init: bool = True) -> None:
    """Run fn(rank, world, *args) in `world` gloo processes with torchrun's variables and one thread each.

    fn must be importable (module level). With init=False the process group is left to
    fn (the trainer joins it itself from the environment).
    """
    mp.spawn(_worker, args=(world, free_port(), init, fn, args), nprocs=world, join=True)
