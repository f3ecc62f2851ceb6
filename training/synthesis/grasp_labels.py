"""Grasp-type labels read off the final grasp, not the pre-shape it started from.

The synthesizer starts every hand from a grasp-type pre-shape (power, pinch, ...), but the
optimiser is free to end somewhere else: a "pinch" pre-shape can end with the object standing on
the palm, a "power" pre-shape can end as a fingertip grasp from below. The pre-shape is kept as
``grasp_type``; this module gives the honest label of what the hand ended as, from its contacts:

- which digits touch the object (any vertex of the digit within ``contact_mm`` of the surface),
- whether the palm pad touches,
- whether the long fingers wrap (their proximal pads touch: a power wrap),
- whether the index finger's radial side carries the grip (lateral / key grip),
- whether the thumb opposes a finger (the mean surface normal at the thumb's contacts points
  against the mean normal at some touching finger's contacts).

Rules, first match wins (the names follow the synthesizer's types where they mean the same):

=============  ============================================================================
power          palm + thumb + >= 2 fingers, fingers wrapping (>= 2 proximal pads); the
               palm is what the fingers close against
spherical      palm + thumb + >= 2 fingers, fingertips only
hook           no thumb, >= 2 fingers (palm or not)
support        palm and fewer than 2 fingers: the object rests on the hand
lateral        thumb + the index finger's radial side, index pad not touching, no palm
disk           thumb opposing >= 3 fingers, no palm
tripod         thumb opposing 2 fingers, no palm
pinch          thumb opposing 1 finger, no palm
other          anything else (e.g. thumb without opposition, a single digit)
=============  ============================================================================

Distances come from the object's surface points and normals (what a dataset stores and what a
depth camera gives), so the same labeller works on synthesized data, on generated grasps and on
partial views: a hand vertex touches if its distance to the tangent plane of the nearest surface
point is below ``contact_mm`` and that point is near, or if it lies behind that plane (inside the object, up to ``max_depth_mm``);
"near" means within ``contact_mm`` plus the point spacing of that point's normal line, which also
keeps a vertex that is merely behind the plane of a far-off point from counting.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from dvqvae_model.hand.hand_metadata import FINGER_NAMES
from dvqvae_model.hand.hand_model import HandModel
from dvqvae_training.synthesis.grasp_types import HandRegions, compute_hand_regions

__all__ = ["GRASP_LABELS", "GraspLabeller", "LabelFeatures", "label_from_features"]

GRASP_LABELS: tuple[str, ...] = ("power", "spherical", "pinch", "tripod", "disk", "lateral", "hook", "support", "other")
_LONG = FINGER_NAMES[1:]  # index, middle, ring, pinky


@dataclass(frozen=True)
class LabelFeatures:
    """What the label is decided from (one grasp)."""

    thumb: bool
    fingers: int  # long fingers touching (0..4)
    palm: bool
    wrap: int  # long fingers whose proximal pad touches
    index_radial: bool  # the index finger's radial side touches
    index_pad: bool  # the index finger's distal pad touches
    opposed: bool  # the thumb's contact normals point against the touching fingers'


def label_from_features(f: LabelFeatures) -> str:
    """The rule table of the module doc."""
    if f.palm:
        if f.thumb and f.fingers >= 2:  # the palm opposes the fingers
            return "power" if f.wrap >= 2 else "spherical"
        if not f.thumb and f.fingers >= 2:
            return "hook"
        return "support"
    if not f.thumb:
        return "hook" if f.fingers >= 2 else "other"
    if f.index_radial and not f.index_pad:
        return "lateral"
    if not f.opposed:
        return "other"
    return {0: "other", 1: "pinch", 2: "tripod"}.get(f.fingers, "disk")


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


class GraspLabeller:
    """Labels batches of grasps of one hand model on objects given as surface points + normals."""

    def __init__(
        self,
        hand: HandModel,
        contact_mm: float = 3.0,
        opposition_cos: float = 0.0,
        max_depth_mm: float = 10.0,
        regions: HandRegions | None = None,
    ):
        self.hand = hand
        self.max_depth = max_depth_mm / 1000.0
        self.opposition_cos = opposition_cos
        self.contact = contact_mm / 1000.0
        if regions is None:
            with torch.no_grad():
                rest = hand.rest()
            regions = compute_hand_regions(
                rest.vertices[0].double().numpy(), rest.joints[0].double().numpy(), hand.faces.numpy().astype(np.int64), hand.meta
            )
        self.regions = regions
        part = np.asarray(hand.meta.part_ids)
        self.digits = [np.flatnonzero(part == d) for d in range(5)]
        self.palm = regions.ids["palm"]
        self.wrap = [regions.ids[f"{f}.proximal"] for f in _LONG]
        self.index_radial = regions.ids["index.radial"]
        self.index_pad = regions.ids["index.distal"]

    def vertices(self, params: np.ndarray, batch: int = 256) -> np.ndarray:
        """Hand vertices [G,V,3] of parameter rows [G,61]."""
        p = torch.as_tensor(np.asarray(params, np.float32).reshape(-1, 61))
        out = []
        with torch.no_grad():
            for i in range(0, len(p), batch):
                out.append(self.hand.from_params(p[i : i + batch]).vertices.numpy())
        return np.concatenate(out) if out else np.zeros((0, self.hand.num_vertices, 3), np.float32)

    def features(self, vertices: np.ndarray, points: np.ndarray, normals: np.ndarray) -> list[LabelFeatures]:
        """Contact features of hands [G,V,3] on one object (points, normals [N,3])."""
        pts = np.asarray(points, np.float64)
        nrm = np.asarray(normals, np.float64)
        tree = cKDTree(pts)
        spacing = float(np.median(tree.query(pts, k=2)[0][:, 1])) if len(pts) > 1 else 0.0
        v = np.asarray(vertices, np.float64)
        G, V, _ = v.shape
        dist, idx = tree.query(v.reshape(-1, 3))
        n_at = nrm[idx]
        plane = np.einsum("ij,ij->i", v.reshape(-1, 3) - pts[idx], n_at)
        lateral = np.sqrt(np.maximum(dist**2 - plane**2, 0.0))
        # near the nearest point's normal line, and in front within contact_mm or behind (inside)
        touch = (lateral < self.contact + spacing) & (plane < self.contact) & (plane > -self.max_depth)
        touch = touch.reshape(G, V)
        n_at = n_at.reshape(G, V, 3)
        out = []
        for g in range(G):
            t = touch[g]
            dig = [bool(t[ids].any()) for ids in self.digits]
            opposed = False
            if dig[0] and any(dig[1:]):
                n_thumb = _unit(n_at[g, self.digits[0][t[self.digits[0]]]].mean(0))
                dots = [float(n_thumb @ _unit(n_at[g, ids[t[ids]]].mean(0))) for d, ids in enumerate(self.digits[1:], 1) if dig[d]]
                opposed = min(dots) < self.opposition_cos
            out.append(
                LabelFeatures(
                    thumb=dig[0],
                    fingers=int(sum(dig[1:])),
                    palm=bool(t[self.palm].any()),
                    wrap=int(sum(bool(t[ids].any()) for ids in self.wrap)),
                    index_radial=bool(t[self.index_radial].any()),
                    index_pad=bool(t[self.index_pad].any()),
                    opposed=opposed,
                )
            )
        return out

    def label(self, params: np.ndarray, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """Label indices into :data:`GRASP_LABELS` (int16 [G]) of parameter rows [G,61] on one object."""
        params = np.asarray(params, np.float32).reshape(-1, 61)
        if len(params) == 0:
            return np.zeros(0, np.int16)
        feats = self.features(self.vertices(params), points, normals)
        return np.array([GRASP_LABELS.index(label_from_features(f)) for f in feats], np.int16)
