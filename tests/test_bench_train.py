"""benchmarks/bench_train.py --quick runs every setting and the loss-per-grasp comparison (no timing asserted)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_train_quick_runs_every_setting(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--quick"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for row in ("old defaults", "1 thread", "loss_points=64", "1 data worker", "batch x2, lr x2", "optimised (new defaults)"):
        assert f"\n{row}" in out, row
    assert "grasps/s" in out and "backward" in out and "hand_layer" in out
    table = out.split("after N training grasps")[1].splitlines()
    assert [line.split()[0] for line in table[2:7]] == ["0", "4", "8", "12", "16"]
