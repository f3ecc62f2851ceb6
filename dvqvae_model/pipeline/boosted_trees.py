"""Gradient-boosted trees over the ranking's terms, stored as plain arrays: the ranking's learnt models.

Why trees: what the node publishes is decided by predictions no formula gives well, all fitted
on validation objects' candidates measured by the evaluation's own metrics
(``benchmarks/study_stability.py analyse --fit --gbt --save-trees / --save-pen-trees /
--save-disp-trees``):
* will the object fall? (``stability``, ``fall_trees.json``, link "logistic": a probability).
  A logistic model of four features predicts the simulated displacement with held-out Spearman
  +0.49 (full clouds) / +0.33 (depth views); trees over every feature and term do better and keep
  grasps that hold better (README, "Ranking and refinement");
* how deep is the hand in the object? (``penetration_model``, ``penetration_trees.json``, link
  "log1p": cm^3). On one depth view the cloud's signed distance cannot see the object's back;
  trees over it, the stability features and where the hand lies behind the visible surface
  (``view_shadow``) predict the measured volume better (README);
* how far will the object move in the simulator's check? (``displacement_model``,
  ``displacement_trees.json``, link "log1p": cm, the same inputs). With both estimates the ranking
  orders candidates by the evaluation's own Q (0.301 penetration + 0.699 displacement), estimated.
Monotone in each input where physics says which way it goes, and saved as JSON numbers: loading
runs no code (no pickle), and evaluating them needs only numpy.

JSON: ``{"format": "dvqvae-boosted-trees/1", "columns": [...], "baseline": b, "link": "logistic" |
"log1p", "target": "...", "feature" / "threshold" / "left" / "right" / "leaf" / "missing_left" /
"value": [trees][nodes], "offset": column or ""}`` (trees padded to one node count; the older "dvqvae-fall-trees/1" files
are read as logistic). A sample goes left at a split when ``x <= threshold``, or when ``x`` is NaN
and ``missing_left`` (an unknown input, e.g. gravity, follows the training's choice). The
prediction is ``link(baseline + sum of the leaves reached)``: ``sigmoid``, or ``expm1`` (with
``log1p(offset column)`` added first, when the trees learnt a factor on that column).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["FORMAT", "BoostedTrees", "cached_trees", "configured_trees", "trees_from_sklearn"]

FORMAT = "dvqvae-boosted-trees/1"
_FALL_FORMAT = "dvqvae-fall-trees/1"  # the first files: fall trees only, logistic
ASSETS = Path(__file__).resolve().parents[1] / "assets"
BUNDLED = ASSETS / "fall_trees.json"
BUNDLED_PENETRATION = ASSETS / "penetration_trees.json"
BUNDLED_DISPLACEMENT = ASSETS / "displacement_trees.json"
LINKS = ("logistic", "log1p")
_ARRAYS = ("feature", "threshold", "left", "right", "leaf", "missing_left", "value")


@dataclass(frozen=True)
class BoostedTrees:
    columns: tuple[str, ...]
    baseline: float
    link: str  # LINKS: "logistic" -> a probability, "log1p" -> expm1 (a volume fitted on log1p)
    target: str  # what it predicts, for people: e.g. "displacement > 2 cm"
    feature: np.ndarray  # [T, N] int
    threshold: np.ndarray  # [T, N] float
    left: np.ndarray  # [T, N] int
    right: np.ndarray  # [T, N] int
    leaf: np.ndarray  # [T, N] bool
    missing_left: np.ndarray  # [T, N] bool
    value: np.ndarray  # [T, N] float
    # link log1p only: a column whose log1p is added to the raw sum (the trees then learn a factor on
    # that column's value, and beyond the values they were fitted on they scale with it; "": none)
    offset: str = ""

    def __post_init__(self) -> None:
        if self.link not in LINKS:
            raise ValueError(f"boosted trees: link {self.link!r} is not one of {LINKS}")
        if self.offset and (self.link != "log1p" or self.offset not in self.columns):
            raise ValueError(f"boosted trees: offset {self.offset!r} needs link log1p and one of the columns")

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The target (``link`` of the raw sum) for inputs ``x [H, len(columns)]`` (NaN = unknown) -> [H]."""
        raw = self.raw(x)
        if self.link == "logistic":
            return 1.0 / (1.0 + np.exp(-raw))
        if self.offset:
            raw = raw + np.log1p(np.maximum(np.asarray(x, dtype=np.float64)[:, self.columns.index(self.offset)], 0.0))
        return np.expm1(raw)

    def predict_features(self, features: dict[str, Any]) -> Any:
        """``predict`` for a dict of per-hand tensors ``[H]`` holding every column (scalars broadcast)."""
        import torch

        missing = [c for c in self.columns if c not in features]
        if missing:
            raise ValueError(f"the trees of {self.target!r} need {missing}")
        ref = features[self.columns[0]]
        x = torch.stack([features[c].to(torch.float64).expand_as(ref) for c in self.columns], 1)
        return torch.from_numpy(self.predict(x.cpu().numpy())).to(ref.dtype).to(ref.device)

    def raw(self, x: np.ndarray) -> np.ndarray:
        """``baseline`` + the sum of the leaves ``x [H, len(columns)]`` reaches -> [H]."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.columns):
            raise ValueError(f"boosted trees need [H, {len(self.columns)}] inputs ({', '.join(self.columns)}), got {x.shape}")
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
        return self.baseline + self.value[t, node].sum(0)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "columns": list(self.columns), "baseline": self.baseline,
                               "link": self.link, "target": self.target, "offset": self.offset}
        for name in _ARRAYS:
            a = getattr(self, name)
            out[name] = a.astype(int).tolist() if a.dtype != np.float64 else [[float(f"{v:.7g}") for v in r] for r in a]
        return out

    def save(self, path: str | Path) -> Path:
        from dvqvae_model.io import atomic_write_bytes

        atomic_write_bytes(path, json.dumps(self.to_dict(), separators=(",", ":")).encode())
        return Path(path)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BoostedTrees":
        if d.get("format") == _FALL_FORMAT:
            d = {**d, "link": "logistic", "target": f"displacement > {float(d['fall_cm']):g} cm"}
        elif d.get("format") != FORMAT:
            raise ValueError(f"not a boosted-trees file (format {d.get('format')!r}, expected {FORMAT!r})")
        arrays = {name: np.asarray(d[name]) for name in _ARRAYS}
        shape = arrays["feature"].shape
        if len(shape) != 2 or any(a.shape != shape for a in arrays.values()):
            raise ValueError(f"boosted trees: arrays of different shapes {[a.shape for a in arrays.values()]}")
        columns = tuple(str(c) for c in d["columns"])
        n = shape[1]
        for name in ("left", "right"):
            if arrays[name].size and not ((arrays[name] >= 0) & (arrays[name] < n)).all():
                raise ValueError(f"boosted trees: {name} child index out of range")
        if arrays["feature"].size and not ((arrays["feature"] >= 0) & (arrays["feature"] < len(columns))).all():
            raise ValueError("boosted trees: feature index out of range")
        return cls(columns=columns, baseline=float(d["baseline"]), link=str(d["link"]), target=str(d["target"]),
                   offset=str(d.get("offset", "")),
                   feature=arrays["feature"].astype(np.int64), threshold=arrays["threshold"].astype(np.float64),
                   left=arrays["left"].astype(np.int64), right=arrays["right"].astype(np.int64),
                   leaf=arrays["leaf"].astype(bool), missing_left=arrays["missing_left"].astype(bool),
                   value=arrays["value"].astype(np.float64))

    @classmethod
    def load(cls, path: str | Path) -> "BoostedTrees":
        return cls.from_dict(json.loads(Path(path).read_text()))


@lru_cache(maxsize=4)
def cached_trees(path: str = str(BUNDLED)) -> BoostedTrees:
    """The trees in ``path`` (default: the fall trees shipped with the package), read once per
    process: the ranking asks for them on every call."""
    return BoostedTrees.load(path)


def configured_trees(setting: str, bundled: Path = BUNDLED) -> BoostedTrees:
    """The trees a setting names ("bundled": the package's file ``bundled``; else a path), read once
    per process; ValueError naming the file when it cannot be read."""
    path = str(bundled) if setting == "bundled" else str(setting)
    try:
        return cached_trees(path)
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path!r}: cannot read its trees ({e})") from e


def trees_from_sklearn(model: Any, columns: Sequence[str], target: str, offset: str = "") -> BoostedTrees:
    """A fitted binary ``HistGradientBoostingClassifier`` (link logistic) or a
    ``HistGradientBoostingRegressor`` fitted on log1p of its target, less log1p of the column
    ``offset`` if given (link log1p) -> ``BoostedTrees`` (numerical splits only)."""
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
    link = "logistic" if hasattr(model, "predict_proba") else "log1p"
    return BoostedTrees(columns=tuple(columns), baseline=float(np.ravel(model._baseline_prediction)[0]), link=link,
                        target=target, offset=offset, feature=pad["feature"], threshold=pad["threshold"], left=pad["left"],
                        right=pad["right"], leaf=pad["leaf"].astype(bool),
                        missing_left=pad["missing_left"].astype(bool), value=pad["value"])
