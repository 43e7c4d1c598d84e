"""Past one machine: two torchrun agents as two nodes (c10d rendezvous), 2 replicas x 2 towers across
them, each node in its own network namespace where the machine allows it (so the replicas' traffic
crosses a network interface), on loopback where it does not; and a node lost mid-run, started again, the run
resuming and ending bitwise equal to one that never stopped."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from bench.netns import Namespaces, namespaces_unavailable
from bench.workers import free_port
from checkpoints import store
from tests import trainer_runs
from tests.processes import CPU_ENV, children, final_state, wait_for
from tests.trainer_runs import DETERMINISTIC, initial_state, small_config, small_words, train, weights_and_velocity

RUN = [*DETERMINISTIC, "train.micro_batches=1", "parallel.timeout_s=30"]
"""4 images a step over 2 replicas, dropout off: the 2x2 comparison of test_scale_and_faults."""

ENV = {**CPU_ENV, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}


def agent(endpoint: str, run_dir: Path, *overrides: str, restarts: int = 0, node: tuple[str, ...] = ()) -> list[str]:
    """One node's torchrun: 2 processes, joining a 2-node run at `endpoint` (HOST:PORT); `node`: more
    torchrun options for this node. Later overrides replace earlier ones."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_dir.name}",
            f"--max-restarts={restarts}", *node, "-m", "distributed.main",
            *small_words(run_dir, *RUN, *overrides)]


def finish(*procs: subprocess.Popen, limit_s: float = 300) -> None:
    for proc in procs:
        rc = proc.wait(timeout=limit_s)
        assert rc == 0, f"{proc.args[-1]} rc {rc}: {proc.err.read_text()[-3000:]}"


def assert_two_by_two_follows_one_process(tmp_path: Path, run_dir: Path) -> None:
    """As test_replicas_match_one_process_with_the_whole_batch: step 1 equals one process's step on all
    4 images; the final weights equal one process taking them as 2 micro-batches (the same grouping)."""
    torch.set_num_threads(1)
    start = initial_state(small_config(tmp_path / "start", *DETERMINISTIC))
    plain = weights_and_velocity(train(tmp_path / "plain", *RUN, "train.max_steps=1"))
    grouped = weights_and_velocity(train(tmp_path / "grouped", *RUN, "train.micro_batches=2"))
    first = final_state(run_dir / "ck" / "step_00000001")
    last = final_state(run_dir / "ck" / "step_00000003")  # read in this one process, whatever wrote it
    for reference, state in ((plain, first), (grouped, last)):
        assert state.keys() >= reference.keys()
        for key, value in reference.items():
            trainer_runs.assert_moved_alike(state[key], value, start[key], key)
    names = sorted(p.name for p in (run_dir / "ck").iterdir() if p.is_dir())
    assert names == ["step_00000001", "step_00000002", "step_00000003"], names  # each written once


def test_two_nodes_follow_one_process(tmp_path, launch):
    """Each node in its own network namespace where the machine allows it, so the replicas' traffic
    crosses a network interface; on loopback where it does not (the same run, one network stack)."""
    run_dir = tmp_path / "two-nodes"
    extra = ("checkpoint.every_steps=1", "checkpoint.keep=3")
    if namespaces_unavailable():
        endpoint = f"127.0.0.1:{free_port()}"
        nodes = [launch(agent(endpoint, run_dir, *extra), f"node{n}", ENV) for n in range(2)]
        finish(*nodes)
    else:
        net = Namespaces()
        try:
            net.up()
            endpoint = f"{net.addresses[0]}:{free_port()}"
            nodes = []
            for n in range(2):
                # Node 0 holds the rendezvous store and says so (the endpoint is not this machine's hostname);
                # each node advertises its own address, and gloo binds the veth, the only way to the other.
                node = (f"--rdzv-conf=is_host={'true' if n == 0 else 'false'}", f"--local-addr={net.addresses[n]}")
                nodes.append(launch(net.run_in(n, agent(endpoint, run_dir, *extra, node=node)), f"node{n}",
                                    {**ENV, "GLOO_SOCKET_IFNAME": net.links[n]}))
            finish(*nodes)
            # The replicas' gradient all-reduce crossed the veth: each step, each tower's ~30M gradients.
            sent = [net.sent_bytes(n) for n in range(2)]
        finally:
            net.down()
        assert min(sent) > 3 * 30e6 * 4 / 2, sent
    assert "processes: 4 (2 replica(s) x 2 tower process(es))" in "".join(n.out.read_text() for n in nodes)
    assert_two_by_two_follows_one_process(tmp_path, run_dir)


def test_a_lost_node_started_again_resumes_and_ends_bitwise_equal(tmp_path, launch):
    """kill -9 of one node's agent and workers after checkpoint 3; that node started again by hand with
    the same command (what a user does for a lost machine); the survivor's agent restarts its workers,
    both nodes meet again, every process resumes from checkpoint 3 and the run ends where an
    uninterrupted one does."""
    six_steps = ("data.synthetic_train_images=24", "train.max_steps=6", "checkpoint.every_steps=3", "checkpoint.keep=2")
    whole_at = f"127.0.0.1:{free_port()}"
    whole = [launch(agent(whole_at, tmp_path / "whole", *six_steps), f"whole{n}", ENV) for n in range(2)]
    finish(*whole)

    endpoint, run_dir = f"127.0.0.1:{free_port()}", tmp_path / "lost"
    command = agent(endpoint, run_dir, *six_steps, restarts=1)
    host = launch(command, "host", ENV)  # the first to bind the endpoint holds the rendezvous store
    wait_for_store(endpoint)
    lost = launch(command, "lost", ENV)
    wait_for(run_dir / "ck" / "step_00000003", lost)
    # The machine is gone: its agent and both of its workers (torchrun starts each worker in a session
    # of its own, so the agent's process group does not hold them).
    workers = children(lost.pid)
    assert len(workers) == 2
    for pid in (lost.pid, *workers):
        os.kill(pid, signal.SIGKILL)
    lost.wait()
    again = launch(command, "again", ENV)
    finish(host, again)
    assert "resumed from" in host.out.read_text() + again.out.read_text()
    final = store.latest(tmp_path / "whole" / "ck"), store.latest(run_dir / "ck")
    assert [p.name for p in final] == ["step_00000006", "step_00000006"]
    a, b = (final_state(p) for p in final)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def wait_for_store(endpoint: str, limit_s: float = 60) -> None:
    """Until something listens at endpoint: the first agent has bound the rendezvous store."""
    import socket
    import time

    host, port = endpoint.rsplit(":", 1)
    deadline = time.monotonic() + limit_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens at {endpoint} after {limit_s}s"
            time.sleep(0.1)
