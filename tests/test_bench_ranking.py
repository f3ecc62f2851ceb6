"""benchmarks/bench_ranking.py end to end on a toy test object (--quick): every setting of the README's
side-by-side table, both clouds, the score's rank correlations, the JSON (no timing asserted)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_train import write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"raw", "rank 2x", "rank 2x no disp est", "rank+refine", "rank+refine 150ms", "rank+refine long"}


def test_bench_ranking_measures_every_setting(hand, tmp_path):
    root = write_toy_dataset(tmp_path / "data", hand, num_points=1024, grasps=1, objects={"test": (("box", 3),)})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_ranking.py"), "--quick", "--threads", "1",
                           "--data", str(root), "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {(r["view"], r["setting"]): r for r in report["rows"]}
    assert set(rows) == {(v, s) for v in ("full", "partial") for s in SETTINGS}, sorted(rows)
    for r in rows.values():
        assert r["K"] == 2 and 0.0 <= r["contact_pct"] <= 100.0 and r["penetration_cm3"] >= 0.0
        assert r["displacement_cm"] >= 0.0 and r["Q"] == pytest.approx(0.301 * r["penetration_cm3"]
                                                                      + 0.699 * r["displacement_cm"])
    for view in ("full", "partial"):  # the node's score and its estimates are correlated with both metrics
        for term in ("score", "penetration_est", "displacement_est", "graph score"):
            assert f"{view}|{term}" in report["spearman"]
    assert "| partial | 2 | rank+refine long |" in proc.stdout
