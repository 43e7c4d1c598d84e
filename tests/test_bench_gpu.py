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



def test_device_script_refuses_an_unknown_step_before_anything_runs(tmp_path):
    proc = subprocess.run(["bash", "bench/gpu.sh", str(tmp_path / "out"), "steps", "lodaer"], cwd=ROOT,
                          env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("unknown step lodaer: one of tests steps loader")
    assert not (tmp_path / "out").exists()
