"""The fall trees (dvqvae_model.pipeline.fall_trees): scikit-learn's predictions from plain JSON arrays."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from dvqvae_model.pipeline.fall_trees import FallTrees, cached_trees, trees_from_sklearn
from dvqvae_model.pipeline.stability import TREE_INPUTS


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3))
    y = (x[:, 0] - 0.5 * x[:, 1] + 0.3 * rng.normal(size=2000)) > 0.2
    m = HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=8, random_state=0).fit(x, y)
    return m, trees_from_sklearn(m, ("a", "b", "c"), 2.0)


def test_trees_predict_as_scikit_learn_and_survive_json(fitted, tmp_path) -> None:
    m, trees = fitted
    x = np.random.default_rng(1).normal(size=(500, 3))
    np.testing.assert_allclose(trees.probability(x), m.predict_proba(x)[:, 1], atol=1e-9)
    back = FallTrees.load(trees.save(tmp_path / "t.json"))
    np.testing.assert_allclose(back.probability(x), m.predict_proba(x)[:, 1], atol=1e-6)
    x[:50, 0] = np.nan  # unknown input: each split sends it where the training did, as scikit-learn does
    np.testing.assert_allclose(back.probability(x), m.predict_proba(x)[:, 1], atol=1e-6)
    with pytest.raises(ValueError, match=r"\[H, 3\]"):
        trees.probability(x[:, :2])


def test_a_bad_trees_file_is_refused(fitted, tmp_path) -> None:
    _, trees = fitted
    d = trees.to_dict()
    for change, message in ((lambda d: d.update(format="pickle"), "not a fall-trees file"),
                            (lambda d: d["left"][0].__setitem__(0, 10_000), "out of range"),
                            (lambda d: d["feature"][0].__setitem__(0, 7), "feature index"),
                            (lambda d: d["value"].pop(), "shapes")):
        bad = json.loads(json.dumps(d))
        change(bad)
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            FallTrees.load(tmp_path / "bad.json")


def test_bundled_trees_read_the_ranking_terms() -> None:
    trees = cached_trees()
    assert trees.columns == TREE_INPUTS and trees.fall_cm == 2.0
    p = trees.probability(np.zeros((4, len(TREE_INPUTS))))
    assert np.all((p > 0) & (p < 1))
