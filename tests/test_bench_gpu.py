"""bench.gpu, the device script, in its CPU smoke mode: every row measured, the table and JSON written; and
bench/gpu.sh, the steps that run it on the device."""

import json
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_device_script_smoke_mode_measures_every_row(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--smoke", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "gpu.json").read_text())
    rows = {(r["what"], r["data"], r["batch"], r["micro_batches"]) for r in result["rows"]}
    ours = [w for w, *_ in rows if w.startswith("this trainer")]
    # fp32, bf16, bf16+channels_last, +compile, bf16+grouped (no TF32 or CUDA graphs on a CPU), a micro-batch
    # row, two through the loader
    assert len(ours) == 8 and ("this trainer, bf16+channels_last+compile", "packed", 8, 1) in rows
    assert ("this trainer, bf16+grouped", "synthetic", 8, 1) in rows
    examples = [r for r in rows if r[0].startswith("torchvision alexnet")]
    assert {r[1] for r in examples} == {"synthetic", "ImageFolder + PIL"} and len(examples) == 4
    assert all(r["images_per_s"] > 0 and r["mfu"] > 0 for r in result["rows"])
    table = (tmp_path / "out" / "gpu.md").read_text()
    assert table.count("\n| ") == 1 + len(rows)  # header and a line per row
    assert result["meta"]["peak_bf16_tflops"] > 0
    assert not any(tmp_path.glob("tmp*")), "the scratch folder (JPEGs, pack, runs) must be removed"


def test_device_script_runs_the_steps_asked_for_each_row_as_it_comes(tmp_path):
    """bench/gpu.sh's `steps` step in smoke mode on a CPU: torchvision's rows first, then this trainer's in the
    order the step asks for them (no TF32 or CUDA graphs on a CPU); an unknown step is refused before anything runs."""
    env = {**os.environ, "PYTHON": sys.executable, "SMOKE": "1", "STEP_TIMEOUT": "500"}
    out = tmp_path / "out"
    proc = subprocess.run(["bash", "bench/gpu.sh", str(out), "steps"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((out / "steps" / "gpu.json").read_text())["rows"]
    examples = "torchvision alexnet, pytorch/examples, "
    assert [r["what"] for r in rows] == [examples + "bf16 autocast", examples + "fp32", "this trainer, bf16+channels_last+compile",
                                         "this trainer, bf16", "this trainer, fp32", "this trainer, bf16+channels_last"]
    assert (out / "steps" / "gpu.md").read_text().count("\n| ") == 1 + len(rows)
    assert (out / "steps.txt").read_text().startswith("== steps: exit 0 after ")
    assert "torch" in (out / "machine.txt").read_text()
    proc = subprocess.run(["bash", "bench/gpu.sh", str(tmp_path / "none"), "steps", "lodaer"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("unknown step lodaer: one of tests steps loader")
    assert not (tmp_path / "none").exists()
