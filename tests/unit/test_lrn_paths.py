"""Which LRN runs where, and that every path computes the same: the kernel against its twin on the same inputs
(eager and compiled), the fallback when the kernel cannot be built, the build's lock, and the fused companions
inside the network."""

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import fx

import kernels
from model.lrn import LocalResponseNorm, ops
from tests.conftest import ROOT
from tests.unit.lrn_comparison import FUSIONS, TOLERANCE, assert_scaled_close, inputs, value_and_grad


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("size", [5, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_kernel_equals_twin(dtype, size, layout):
    x = inputs(dtype, layout, channels=9)
    for relu, pool in FUSIONS.values():
        kernel, twin = (value_and_grad(LocalResponseNorm(size, 1e-4, 0.75, 2.0, "alpha_over_n", relu=relu, pool=pool,
                                                         implementation=way), x) for way in ("kernel", "twin"))
        tolerance = TOLERANCE.get(dtype, 2.0**-7)  # bf16: both compute in float32; at most one rounding apart
        for got, want in zip(kernel, twin):
            assert_scaled_close(got.double(), want.double(), tolerance)


@pytest.fixture
def without_kernel(monkeypatch):
    """As on a machine that cannot build the C++ kernel (or on a GPU, where `auto` takes the twin too)."""
    def no_compiler(kernel):
        raise kernels.BuildFailed("no ninja on PATH: pip install ninja")

    monkeypatch.setattr(kernels, "_load", no_compiler)
    kernels.built.cache_clear()
    yield
    monkeypatch.undo()
    kernels.built.cache_clear()
    assert LocalResponseNorm.kernel_available()  # the next test finds the kernel again


MARKS = {"kernel": "lrn.default", "twin": "autograd_function_apply", "reference": "local_response_norm"}
"""What each implementation leaves in the graph torch.compile traces: the custom op, the twin's autograd
function, or F.local_response_norm."""


def compiled_implementations(module: LocalResponseNorm, x: torch.Tensor) -> set[str]:
    """The implementations found in the graphs torch.compile traces of module(x), x requiring a gradient as in
    training (without one, Dynamo inlines the twin's autograd function and leaves no mark)."""
    graphs = []

    def keep(gm: fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(module, backend=keep, fullgraph=True)(x.detach().requires_grad_())
    names = {getattr(node.target, "__name__", "") for gm in graphs for sub in gm.modules() if isinstance(sub, fx.GraphModule)
             for node in sub.graph.nodes if node.op == "call_function"}
    return {way for way, mark in MARKS.items() if mark in names}


@pytest.mark.parametrize("implementation", ["auto", "kernel", "twin", "reference"])
def test_compiled_runs_what_eager_chooses(implementation):
    """torch.compile traces the implementation `chosen` names (torch 2.11's Dynamo once made every `auto`
    the reference: torch.compiler.is_exporting() is True inside its traces)."""
    x = inputs(torch.float32, "contiguous")
    module = LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper", relu=True, pool=(3, 2), implementation=implementation)
    assert module.chosen(x) == ("kernel" if implementation == "auto" else implementation)
    assert compiled_implementations(module, x) == {module.chosen(x)}


@pytest.mark.usefixtures("without_kernel")
def test_compiled_auto_without_the_kernel_runs_the_twin():
    """What a GPU compiles: `auto` where the C++ kernel does not apply."""
    x = inputs(torch.float32, "contiguous")
    with pytest.warns(RuntimeWarning, match="could not be built"):
        assert compiled_implementations(LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper"), x) == {"twin"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("implementation", ["auto", "twin"])
def test_compiled_equals_eager_reference(implementation, dtype):
    """torch.compile (fullgraph: the custom op and the twin trace without a break) forward and backward, fused.
    The twin's input gradient was exactly zero here in float32 and float64 under torch 2.11 (model/lrn/twin.py)."""
    torch._dynamo.reset()
    x = inputs(dtype, "contiguous")
    module = LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper", relu=True, pool=(3, 2), implementation=implementation)
    compiled = torch.compile(module, fullgraph=True, dynamic=False)
    got, got_grad = value_and_grad(compiled, x)
    want, want_grad = value_and_grad(LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper", relu=True, pool=(3, 2),
                                                       implementation="reference"), x)
    assert_scaled_close(got, want, TOLERANCE[dtype])
    assert_scaled_close(got_grad, want_grad, TOLERANCE[dtype])


@pytest.mark.usefixtures("without_kernel")
def test_without_the_kernel_the_twin_runs_and_says_so_once():
    with pytest.warns(RuntimeWarning, match="could not be built .*no ninja on PATH.*pure-torch twin"):
        assert kernels.built(ops.KERNEL) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second use says nothing more
        assert kernels.built(ops.KERNEL) is None
        assert not LocalResponseNorm.kernel_available()
        module = LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper", relu=True, pool=(3, 2))
        x = inputs(torch.float32, "contiguous")
        assert module.chosen(x) == "twin"
        got, got_grad = value_and_grad(module, x)
    module.implementation = "reference"
    want, want_grad = value_and_grad(module, x)
    assert_scaled_close(got, want, 1e-6)
    assert_scaled_close(got_grad, want_grad, 1e-6)


def test_unknown_implementation_is_refused():
    with pytest.raises(ValueError, match="'fast'.*must be one of"):
        LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper", implementation="fast")


_BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from torch.utils import cpp_extension
    import kernels
    from model.lrn import ops

    kernels.CACHE = Path(sys.argv[1])
    log = Path(sys.argv[2])

    def load(build_directory, **kwargs):  # a slow build that notes when it starts and ends
        assert not (Path(build_directory) / "lock").exists(), "torch's stale lock was left in place"
        with open(log, "a") as f:
            f.write("start\\n")
        time.sleep(1.0)
        with open(log, "a") as f:
            f.write("end\\n")
        return "built"

    cpp_extension.load = load
    print(kernels.built(ops.KERNEL))
""")


def test_processes_starting_at_once_build_one_at_a_time(tmp_path):
    """Two processes at once: the file lock lets one build while the other waits (a build killed earlier left
    torch's own lock file behind: it is cleared, not waited on forever)."""
    cache, log = tmp_path / "cache", tmp_path / "log"
    stale = ops.KERNEL.build_folder().relative_to(kernels.CACHE)
    (cache / stale).mkdir(parents=True)
    (cache / stale / "lock").touch()
    procs = [subprocess.Popen([sys.executable, "-c", _BUILDER, str(cache), str(log)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all(out.strip() == "built" for out, _ in outputs)
    assert log.read_text().split() == ["start", "end", "start", "end"]  # never both inside at once


def test_fused_network_equals_the_network_before():
    """Both towers, eager, float64: the net with its fused, fast companions, and the same net running
    F.local_response_norm with separate ReLU and max-pool modules, each against the same weights in an
    independent plain network (tests/unit/reference_net.py: the paper's LRN by its formula, per tower):
    the logits and every weight's gradient."""
    from config.model import ModelConfig
    from model.alexnet import AlexNet
    from model.export import grouped_state_dict
    from tests.unit.reference_net import by_layer, plain_grouped_alexnet

    torch.manual_seed(0)
    x = torch.randn(2, 3, 227, 227, dtype=torch.float64) * 50
    plain = plain_grouped_alexnet(10).double()
    results = {}
    for implementation in ("auto", "reference"):
        net = AlexNet(ModelConfig(num_classes=10, bias_init=0.1)).double().eval()
        net.init_paper(seed=0)
        if implementation == "reference":  # the companions one by one, as the stage table lists them
            LocalResponseNorm.set_implementation_in(net, implementation)
            for tower in net.towers.values():
                tower.steps = {name: ("act", "lrn", "pool") if steps == ("act_lrn_pool",) else steps
                               for name, steps in tower.steps.items()}
        logits = net(x)
        logits.square().sum().backward()
        results[implementation] = logits.detach(), grouped_state_dict({n: p.grad for n, p in net.named_parameters()})
    weights = grouped_state_dict(net.state_dict())
    with torch.no_grad():
        for key, param in by_layer(plain).items():
            param.copy_(weights[key])
    want_logits = plain(x)
    want_logits.square().sum().backward()
    for implementation, (logits, grads) in results.items():
        assert_scaled_close(logits, want_logits.detach(), 1e-12)
        for name, param in by_layer(plain).items():
            assert_scaled_close(grads[name], param.grad, 1e-10)


def test_without_lrn_or_relu_nothing_is_fused():
    from config.model import ModelConfig
    from model.alexnet import AlexNet

    assert AlexNet(ModelConfig()).towers["0"].steps["conv1"] == ("act_lrn_pool",)
    assert AlexNet(ModelConfig()).towers["0"].steps["conv5"] == ("act", "pool", "flatten")
    for cfg in (ModelConfig(lrn="none"), ModelConfig(activation="tanh")):
        tower = AlexNet(cfg).towers["0"]
        assert tower.steps["conv1"] == ("act", "lrn", "pool")
        assert not hasattr(tower, "act_lrn_pool")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("compiled", [False, True])
def test_on_cuda_the_twin_runs_and_equals_the_reference(compiled):
    """On a GPU `auto` is the twin (the C++ kernel is for CPU tensors): eager and compiled (the twin is what
    the compiled graph runs, not the reference it is compared with), against F ops on the GPU."""
    x = inputs(torch.float32, "contiguous").cuda()
    module = LocalResponseNorm(5, 1e-4, 0.75, 2.0, "paper", relu=True, pool=(3, 2))
    assert module.chosen(x) == "twin"
    assert compiled_implementations(module, x) == {"twin"}
    torch._dynamo.reset()
    got, got_grad = value_and_grad(torch.compile(module, fullgraph=True) if compiled else module, x)
    module.implementation = "reference"
    want, want_grad = value_and_grad(module, x)
    assert_scaled_close(got, want, 1e-6)
    assert_scaled_close(got_grad, want_grad, 1e-6)
