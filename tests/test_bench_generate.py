"""benchmarks/bench_generate.py runs every variant and prints its stage split (no timing asserted)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_generate_times_every_variant(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_generate.py"), "--rounds", "1",
                           "--candidates", "16"], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("  ")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("  ") and "x" in line[-3:]}
    assert set(rows) == {"defaults", "graph geometry", "logistic, no gravity", "no displacement estimate",
                         "cloud penetration term", "16 candidates", "raw"}, proc.stdout
    assert rows["defaults"].rstrip().endswith("1.00x")
    assert float(rows["raw"].split()[3]) == 0.0  # the raw path does no ranking (its rank column)
