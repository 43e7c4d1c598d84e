"""bench.loader in its smoke mode: every table has its rows, on whatever device there is (CI keeps it working)."""

import subprocess
import sys

from tests.conftest import ROOT


def test_loader_bench_smoke_mode_measures_every_row():
    proc = subprocess.run([sys.executable, "-m", "bench.loader", "--smoke"], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    compact = [r for r in rows if r[0] == "| photograph-like (bench.images)"]
    loaders = [r for r in rows if r[0] in ("| raw", "| jpeg")]
    trainer = [r for r in rows if r[1] in ("device batches", "raw", "jpeg") and r[0] != "| pack"]
    assert len(compact) == 4 and len(loaders) == 3 and len(trainer) == 3, proc.stdout
    assert [r[2] for r in loaders] == ["before", "ring", "ring"]
    assert all(float(r[3].replace(",", "")) > 0 for r in loaders), proc.stdout
