"""The ranking's boosted trees (dvqvae_model.pipeline.boosted_trees): scikit-learn's predictions from plain JSON arrays."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from dvqvae_model.pipeline.boosted_trees import BUNDLED_DISPLACEMENT, BUNDLED_PENETRATION, BoostedTrees, cached_trees, trees_from_sklearn
from dvqvae_model.pipeline.stability import TREE_INPUTS
from dvqvae_model.pipeline.view_shadow import SHADOW_NAMES


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 3))
    y = (x[:, 0] - 0.5 * x[:, 1] + 0.3 * rng.normal(size=2000)) > 0.2
    m = HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=8, random_state=0).fit(x, y)
    return m, trees_from_sklearn(m, ("a", "b", "c"), "displacement > 2 cm")


def test_trees_predict_as_scikit_learn_and_survive_json(fitted, tmp_path) -> None:
    m, trees = fitted
    x = np.random.default_rng(1).normal(size=(500, 3))
    np.testing.assert_allclose(trees.predict(x), m.predict_proba(x)[:, 1], atol=1e-9)
    back = BoostedTrees.load(trees.save(tmp_path / "t.json"))
    np.testing.assert_allclose(back.predict(x), m.predict_proba(x)[:, 1], atol=1e-6)
    x[:50, 0] = np.nan  # unknown input: each split sends it where the training did, as scikit-learn does
    np.testing.assert_allclose(back.predict(x), m.predict_proba(x)[:, 1], atol=1e-6)
    with pytest.raises(ValueError, match=r"\[H, 3\]"):
        trees.predict(x[:, :2])


def test_a_bad_trees_file_is_refused(fitted, tmp_path) -> None:
    _, trees = fitted
    d = trees.to_dict()
    for change, message in ((lambda d: d.update(format="pickle"), "not a boosted-trees file"),
                            (lambda d: d["left"][0].__setitem__(0, 10_000), "out of range"),
                            (lambda d: d["feature"][0].__setitem__(0, 7), "feature index"),
                            (lambda d: d["value"].pop(), "shapes"),
                            (lambda d: d.update(link="relu"), "link")):
        bad = json.loads(json.dumps(d))
        change(bad)
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            BoostedTrees.load(tmp_path / "bad.json")


def test_bundled_trees_read_the_ranking_terms() -> None:
    trees = cached_trees()
    assert trees.columns == TREE_INPUTS and trees.link == "logistic" and trees.target == "displacement > 2 cm"
    p = trees.predict(np.zeros((4, len(TREE_INPUTS))))
    assert np.all((p > 0) & (p < 1))


def test_regression_trees_predict_the_volume_they_were_fitted_on(tmp_path) -> None:
    """A regressor fitted on log1p(volume) comes back as volumes (link log1p), as scikit-learn's expm1."""
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 3, size=(3000, 2))
    m = HistGradientBoostingRegressor(max_iter=40, max_leaf_nodes=8, random_state=0).fit(x, np.log1p(x[:, 0] ** 2))
    trees = BoostedTrees.load(trees_from_sklearn(m, ("a", "b"), "volume").save(tmp_path / "r.json"))
    assert trees.link == "log1p"
    q = rng.uniform(0, 3, size=(200, 2))
    np.testing.assert_allclose(trees.predict(q), np.expm1(m.predict(q)), rtol=1e-5, atol=1e-6)  # 7 digits in JSON
    assert np.corrcoef(trees.predict(q), q[:, 0] ** 2)[0, 1] > 0.95


def test_first_fall_trees_files_still_load(fitted, tmp_path) -> None:
    m, trees = fitted
    d = trees.to_dict()
    old = {k: v for k, v in d.items() if k not in ("link", "target")} | {"format": "dvqvae-fall-trees/1", "fall_cm": 2.0}
    (tmp_path / "old.json").write_text(json.dumps(old))
    back = BoostedTrees.load(tmp_path / "old.json")
    x = np.random.default_rng(3).normal(size=(50, 3))
    assert back.link == "logistic" and back.target == "displacement > 2 cm"
    np.testing.assert_allclose(back.predict(x), m.predict_proba(x)[:, 1], atol=1e-6)


def test_bundled_penetration_trees_read_the_terms_and_the_view_shadow() -> None:
    trees = cached_trees(str(BUNDLED_PENETRATION))
    assert trees.columns == TREE_INPUTS + SHADOW_NAMES and trees.link == "log1p" and trees.offset == "penetration"
    # a factor on the cloud's term: hands far deeper than any fitted on keep ranking by how deep they are
    x = np.zeros((3, len(trees.columns)))
    x[:, trees.columns.index("penetration")] = (100.0, 200.0, 400.0)
    est = trees.predict(x)
    assert np.all(np.diff(est) > 0)
    np.testing.assert_allclose((1 + est[1:]) / (1 + est[:-1]), (201 / 101, 401 / 201), rtol=0.05)


def test_bundled_displacement_trees_read_the_terms_and_the_view_shadow() -> None:
    trees = cached_trees(str(BUNDLED_DISPLACEMENT))
    assert trees.columns == TREE_INPUTS + SHADOW_NAMES and trees.link == "log1p" and not trees.offset
    assert trees.target.startswith("displacement cm")
    est = trees.predict(np.random.default_rng(0).uniform(0.0, 5.0, size=(64, len(trees.columns))))
    assert np.all(np.isfinite(est) & (est >= 0))  # cm; what it says of grasps: tests/test_stability.py


def test_an_offset_needs_its_column_and_the_log_link(fitted) -> None:
    _, trees = fitted
    with pytest.raises(ValueError, match="offset"):
        BoostedTrees.from_dict({**trees.to_dict(), "link": "log1p", "offset": "zz"})
    with pytest.raises(ValueError, match="offset"):
        BoostedTrees.from_dict({**trees.to_dict(), "offset": "a"})


def test_a_generator_with_a_bad_trees_file_fails_when_made(tmp_path) -> None:
    from dvqvae_model.pipeline.generator import _learnt_models
    from dvqvae_model.pipeline.grasp_quality import QualityWeights

    _learnt_models(QualityWeights())  # the bundled files read
    (tmp_path / "bad.json").write_text('{"format": "pickle"}')
    for path in (tmp_path / "missing.json", tmp_path / "bad.json"):
        with pytest.raises(ValueError, match="penetration_model.*cannot read its trees"):
            _learnt_models(QualityWeights(penetration_model=str(path)))
        with pytest.raises(ValueError, match="displacement_model.*cannot read its trees"):
            _learnt_models(QualityWeights(displacement_model=str(path)))
    _learnt_models(QualityWeights(penetration_model="", displacement_model=""))  # none asked for: nothing to read
