"""The exchange time the step logs (distributed/pipeline.py ExposedTime): a wait that blocks the host (gloo) timed
on the host's clock; one that only makes the CUDA stream wait (NCCL) timed on the GPU, between events."""

import time

import pytest
import torch
import torch.distributed as dist

from distributed.exchange import ProcessGroupExchange
from distributed.pipeline import ExposedTime
from model.exchange import LocalExchange, Pending


class _Blocking:
    """A collective that blocks the host for `seconds` in wait(), as gloo's do."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def wait(self) -> None:
        time.sleep(self.seconds)


def test_a_wait_that_blocks_the_host_is_timed_there_and_taken_once():
    exposed = ExposedTime(on_stream=False)
    assert exposed.wait(Pending(_Blocking(0.05), lambda: "landed"), "backward") == "landed"
    forward, backward = exposed.take()
    assert forward == 0 and 0.05 <= backward < 5
    assert exposed.take() == (0.0, 0.0)


def _one_rank_group(backend: str) -> ProcessGroupExchange:
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return ProcessGroupExchange(dist.group.WORLD)


def test_gloo_and_in_process_exchanges_are_timed_on_the_host():
    try:
        assert not _one_rank_group("gloo").waits_on_stream
    finally:
        dist.destroy_process_group()
    assert not LocalExchange().waits_on_stream


class _StreamWait:
    """NCCL's Work.wait(): the current stream waits for the collective's stream; the host goes on at once."""

    def __init__(self, landed: torch.cuda.Event) -> None:
        self.landed = landed

    def wait(self) -> None:
        torch.cuda.current_stream().wait_event(self.landed)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_on_a_gpu_the_streams_wait_is_timed_not_the_hosts():
    """A collective that lands 50 ms from now on another stream: the host's wait takes no time, the stream's
    takes the 50 ms, and that is what is taken."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10**7)
    end.record()
    end.synchronize()
    cycles = int(10**7 * 50 / start.elapsed_time(end))  # a GPU spin of about 50 ms
    collective = torch.cuda.Stream()
    with torch.cuda.stream(collective):
        torch.cuda._sleep(cycles)
        landed = torch.cuda.Event()
        landed.record()
    exposed = ExposedTime(on_stream=True)
    host = time.perf_counter()
    exposed.wait(Pending(_StreamWait(landed), lambda: None), "forward")
    host = time.perf_counter() - host
    forward, backward = exposed.take()
    assert host < 0.02 and 0.04 < forward < 0.5 and backward == 0, (host, forward)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_nccl_exchanges_are_timed_on_the_stream():
    torch.cuda.set_device(0)
    try:
        assert _one_rank_group("nccl").waits_on_stream
    finally:
        dist.destroy_process_group()
