"""benchmarks/study_stability.py end to end on five toy validation objects: it collects, analyses and
writes both tree files the package ships (the way they are refitted for a new default model)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from dvqvae_model.pipeline.boosted_trees import BoostedTrees
from dvqvae_model.pipeline.stability import TREE_INPUTS
from dvqvae_model.pipeline.view_shadow import SHADOW_NAMES
from test_train import write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

pytestmark = pytest.mark.usefixtures("one_thread")


def test_collect_analyse_and_save_the_trees(hand, tmp_path, capsys) -> None:
    import study_stability

    val = (("box", 3), ("sphere", 6), ("cylinder", 7), ("box", 8), ("bottle", 9))
    root = write_toy_dataset(tmp_path / "data", hand, num_points=1024, grasps=1, objects={"val": val})
    out = tmp_path / "study"
    study_stability.main(["collect", "--data", str(root), "--max-objects", "5", "--candidates", "8", "--out", str(out)])
    assert len(list(out.glob("*.npz"))) == 5 and not list(out.glob("*.tmp.npz"))
    with np.load(next(out.glob("*.npz"))) as z:
        assert z["full_pen"].shape == z["partial_disp"].shape == (8,) and np.isfinite(z["partial_disp"]).all()
    study_stability.main(["collect", "--data", str(root), "--max-objects", "5", "--out", str(out)])  # resumes: nothing to do
    fall, pen, disp = tmp_path / "fall.json", tmp_path / "pen.json", tmp_path / "disp.json"
    study_stability.main(["analyse", "--out", str(out), "--keep", "2", "--fit", "--gbt", "--sweep", "",
                          "--save-trees", str(fall), "--save-pen-trees", str(pen), "--save-disp-trees", str(disp)])
    text = capsys.readouterr().out
    assert "5 objects, 8 candidates per cloud" in text and "penetration trees on 24 inputs" in text
    assert BoostedTrees.load(fall).columns == TREE_INPUTS and BoostedTrees.load(fall).link == "logistic"
    learnt = BoostedTrees.load(pen)
    assert learnt.columns == TREE_INPUTS + SHADOW_NAMES and learnt.link == "log1p" and learnt.offset == "penetration"
    assert "estimated Q (penetration + displacement trees" in text
    moved = BoostedTrees.load(disp)
    assert moved.columns == TREE_INPUTS + SHADOW_NAMES and moved.link == "log1p" and not moved.offset
    # another collection (here: two of the objects again, as another model's candidates would be) joins
    # every fit with --extra: the tables still score --out's clouds only, the saved trees change
    other = tmp_path / "other"
    other.mkdir()
    for f in sorted(out.glob("*.npz"))[:2]:
        (other / f.name).write_bytes(f.read_bytes())
    disp2 = tmp_path / "disp2.json"
    study_stability.main(["analyse", "--out", str(out), "--extra", str(other), "--keep", "2", "--fit", "--gbt",
                          "--sweep", "", "--save-disp-trees", str(disp2)])
    text = capsys.readouterr().out
    assert "5 objects, 8 candidates per cloud" in text and "2 objects' candidates join every fit" in text
    x = np.random.default_rng(0).random((50, len(moved.columns)))
    assert not np.allclose(BoostedTrees.load(disp2).raw(x), moved.raw(x))
