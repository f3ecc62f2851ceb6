"""Will the object fall? Gradient-boosted trees over the ranking's terms, stored as plain arrays.

Why trees: the fall model (``stability``) decides which of the sampled grasps the node publishes.
A logistic model of four features predicts the simulated displacement with held-out Spearman
+0.49 (full clouds) / +0.33 (depth views); trees over every stability feature and ranking term
reach +0.51 / +0.38 and keep grasps that hold better (README, "Ranking and refinement"). They are
fitted with scikit-learn (``benchmarks/study_stability.py analyse --fit --gbt --save-trees``),
monotone in each input where physics says which way it goes, and saved as JSON numbers: loading
runs no code (no pickle), and evaluating them needs only numpy.

JSON: ``{"format": "dvqvae-fall-trees/1", "columns": [...], "baseline": b, "fall_cm": 2.0,
"feature" / "threshold" / "left" / "right" / "leaf" / "missing_left" / "value": [trees][nodes]}``
(trees padded to one node count). A sample goes left at a split when ``x <= threshold``, or when
``x`` is NaN and ``missing_left`` (an unknown input, e.g. gravity, follows the training's choice).
The fall probability is ``sigmoid(baseline + sum of the leaves reached)``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["FORMAT", "FallTrees", "cached_trees", "trees_from_sklearn"]

FORMAT = "dvqvae-fall-trees/1"
BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "fall_trees.json"
_ARRAYS = ("feature", "threshold", "left", "right", "leaf", "missing_left", "value")


@dataclass(frozen=True)
class FallTrees:
    columns: tuple[str, ...]
    baseline: float
    fall_cm: float
    feature: np.ndarray  # [T, N] int
    threshold: np.ndarray  # [T, N] float
    left: np.ndarray  # [T, N] int
    right: np.ndarray  # [T, N] int
    leaf: np.ndarray  # [T, N] bool
    missing_left: np.ndarray  # [T, N] bool
    value: np.ndarray  # [T, N] float

    def probability(self, x: np.ndarray) -> np.ndarray:
        """P(displacement > ``fall_cm``) for inputs ``x [H, len(columns)]`` (NaN = unknown) -> [H]."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.columns):
            raise ValueError(f"fall trees need [H, {len(self.columns)}] inputs ({', '.join(self.columns)}), got {x.shape}")
        t = np.arange(self.feature.shape[0])[:, None]
        node = np.zeros((self.feature.shape[0], x.shape[0]), dtype=np.int64)  # [T, H]
        rows = np.arange(x.shape[0])[None, :]
        for _ in range(self.feature.shape[1]):  # a path is never longer than the node count
            done = self.leaf[t, node]
            if done.all():
                break
            v = x[rows, self.feature[t, node]]
            go_left = np.where(np.isnan(v), self.missing_left[t, node], v <= self.threshold[t, node])
            node = np.where(done, node, np.where(go_left, self.left[t, node], self.right[t, node]))
        raw = self.baseline + self.value[t, node].sum(0)
        return 1.0 / (1.0 + np.exp(-raw))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "columns": list(self.columns), "baseline": self.baseline,
                               "fall_cm": self.fall_cm}
        for name in _ARRAYS:
            a = getattr(self, name)
            out[name] = a.astype(int).tolist() if a.dtype != np.float64 else [[float(f"{v:.7g}") for v in r] for r in a]
        return out

    def save(self, path: str | Path) -> Path:
        from dvqvae_model.io import atomic_write_bytes

        atomic_write_bytes(path, json.dumps(self.to_dict(), separators=(",", ":")).encode())
        return Path(path)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FallTrees":
        if d.get("format") != FORMAT:
            raise ValueError(f"not a fall-trees file (format {d.get('format')!r}, expected {FORMAT!r})")
        arrays = {name: np.asarray(d[name]) for name in _ARRAYS}
        shape = arrays["feature"].shape
        if len(shape) != 2 or any(a.shape != shape for a in arrays.values()):
            raise ValueError(f"fall trees: arrays of different shapes {[a.shape for a in arrays.values()]}")
        columns = tuple(str(c) for c in d["columns"])
        n = shape[1]
        for name in ("left", "right"):
            if arrays[name].size and not ((arrays[name] >= 0) & (arrays[name] < n)).all():
                raise ValueError(f"fall trees: {name} child index out of range")
        if arrays["feature"].size and not ((arrays["feature"] >= 0) & (arrays["feature"] < len(columns))).all():
            raise ValueError("fall trees: feature index out of range")
        return cls(columns=columns, baseline=float(d["baseline"]), fall_cm=float(d["fall_cm"]),
                   feature=arrays["feature"].astype(np.int64), threshold=arrays["threshold"].astype(np.float64),
                   left=arrays["left"].astype(np.int64), right=arrays["right"].astype(np.int64),
                   leaf=arrays["leaf"].astype(bool), missing_left=arrays["missing_left"].astype(bool),
                   value=arrays["value"].astype(np.float64))

    @classmethod
    def load(cls, path: str | Path) -> "FallTrees":
        return cls.from_dict(json.loads(Path(path).read_text()))


@lru_cache(maxsize=4)
def cached_trees(path: str = str(BUNDLED)) -> FallTrees:
    """The fall trees in ``path`` (default: the ones shipped with the package), read once per process:
    the ranking asks for them on every call."""
    return FallTrees.load(path)


def trees_from_sklearn(model: Any, columns: Sequence[str], fall_cm: float) -> FallTrees:
    """A fitted binary ``HistGradientBoostingClassifier`` -> ``FallTrees`` (numerical splits only)."""
    trees = [p[0].nodes for p in model._predictors]
    n = max(len(t) for t in trees)
    pad = {name: np.zeros((len(trees), n), dtype=np.float64 if name in ("threshold", "value") else np.int64)
           for name in _ARRAYS}
    for i, nodes in enumerate(trees):
        if nodes["is_categorical"].any():
            raise ValueError("categorical splits are not supported")
        k = len(nodes)
        pad["feature"][i, :k] = nodes["feature_idx"]
        pad["threshold"][i, :k] = nodes["num_threshold"]
        pad["left"][i, :k] = nodes["left"]
        pad["right"][i, :k] = nodes["right"]
        pad["leaf"][i, :k] = nodes["is_leaf"]
        pad["leaf"][i, k:] = 1  # padding: leaves of value 0, never reached
        pad["missing_left"][i, :k] = nodes["missing_go_to_left"]
        pad["value"][i, :k] = nodes["value"]
    return FallTrees(columns=tuple(columns), baseline=float(np.ravel(model._baseline_prediction)[0]),
                     fall_cm=float(fall_cm), feature=pad["feature"], threshold=pad["threshold"], left=pad["left"],
                     right=pad["right"], leaf=pad["leaf"].astype(bool), missing_left=pad["missing_left"].astype(bool),
                     value=pad["value"])
