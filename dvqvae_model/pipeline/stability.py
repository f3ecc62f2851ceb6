"""Will the grasp hold? Stability features of a hand against the object cloud alone.

Why: ranking by penetration, contact and force closure finds shallow grasps but does not predict
the simulated displacement (README, "Ranking and refinement"): among the model's samples the
hands that hold the object are those whose contacts surround it and oppose each other, which the
closure residual of six part contacts only partly sees. These features look at every touching
hand vertex (not one per part) and are cheap (a few ms for 32 hands): they reuse the signed
distances and cloud normals ``grasp_quality.quality_terms`` has already computed. All work on a
partial depth view (contacts on the unseen back are unknown, so they count as absent).

A hand vertex is a *contact* when its signed distance to the cloud surface is below
``contact_m`` (inside counts); it can push the object along ``-n`` (``n`` the cloud's outward
normal at the nearest point), and, with friction ``mu``, along any direction within the cone of
half-angle ``atan(mu)`` about ``-n``. Features per hand (``stability_features``):

* ``coverage``    0..1: fraction of a fixed set of directions that some contact's friction cone
  contains (which pushes the hand can resist, forces only);
* ``cone_eps``    -1..1: min over directions of the best contact's cosine to it, less the cone's
  (a continuous version of coverage: > 0 when every direction is covered);
* ``balance``     0..1: 1 - |area-weighted mean contact normal| (1 = normals cancel, the contacts
  surround the object; 0 = all on one side);
* ``opposition``  -1..1: largest -n_thumb . n_p over the other touching parts p (part mean
  normals), -1 without a thumb contact or without another part in contact;
* ``opposition_any`` -1..1: largest -n_i . n_j over pairs of touching parts;
* ``centroid``    0..: distance of the cloud's centroid from the area-weighted centre of the
  contacts, over the object radius (2 = no contact);
* ``span``        0..1: mean over the cloud's principal axes of the contacts' extent along the
  axis over the cloud's (how much of the object the contacts enclose);
* ``epsilon``     Ferrari-Canny quality, approximated: friction cones linearised with four
  edges, wrenches ``[f, (x - c) x f / r]`` of the parts' contacts, and the smallest support of
  their convex hull over a fixed set of 6-D directions (> 0: the origin is inside, force
  closure; its value is the smallest wrench the grasp resists in the worst direction);
* ``area``        cm^2 of hand surface in contact; ``parts`` number of parts (of six) touching;
  ``fingers`` of the four fingers; ``thumb`` 0/1;
* ``g_resist``    0..1, needs the direction of gravity: the smallest residual of the object's
  weight (the wrench ``[g, 0]``) after the parts' contact cones push back against it
  (``force_closure.cone_min_residual``, the same linearised cones and arms as ``epsilon``): 0 when
  the contacts can carry the object (a palm under it, a pinch), 1 when no contact faces the load;
* ``g_support``   -1..1, needs gravity: the largest ``n . g`` over touching vertices (a contact
  under the object, as gravity sees it; -1 without contact).

Gravity matters because a hand that only touches the object holds it when a contact carries its
weight, and a hand around it holds it whichever way it is pulled: with the direction known (the
node's ``gravity`` parameter, the simulator's +y in the evaluation protocol), ``g_resist`` is the
single best predictor of the simulated displacement among these features (README). Without it the
two features are NaN: the trees send them down each split's learnt missing-value branch, the
logistic model counts their standardised value as 0.

``stability_term`` (``StabilityModel``) turns them into one "lower is better" term for the ranking
score: the probability that the object falls (moves more than 2 cm in the simulator's check), by
default from gradient-boosted trees over every feature and the ranking's other terms
(``boosted_trees``, ``TREE_INPUTS``), else from a logistic model of a few features; both fitted on
validation-split objects (``benchmarks/study_stability.py``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from dvqvae_model.pipeline.force_closure import cone_min_residual

__all__ = ["FEATURE_NAMES", "TREE_INPUTS", "StabilityModel", "stability_features", "stability_term", "sphere_directions"]

NUM_PARTS = 6
THUMB, PALM = 0, 5
FEATURE_NAMES: tuple[str, ...] = ("coverage", "cone_eps", "balance", "opposition", "opposition_any", "centroid",
                                  "span", "epsilon", "area", "parts", "fingers", "thumb", "g_resist", "g_support")
# what the fall trees see: every feature and the ranking's other terms (grasp_quality.quality_terms)
TREE_INPUTS: tuple[str, ...] = FEATURE_NAMES + ("penetration", "contact", "closure", "digits", "one_sidedness")


def sphere_directions(n: int) -> Tensor:
    """``n`` nearly uniform unit directions (Fibonacci sphere) -> [n, 3] (deterministic)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = torch.sqrt((1.0 - z * z).clamp(min=0.0))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=1).float()


def wrench_directions(n: int) -> Tensor:
    """The 12 signed axes and ``n - 12`` fixed pseudo-random unit directions of 6-D wrench space."""
    g = torch.Generator().manual_seed(0)
    rnd = torch.randn(max(0, n - 12), 6, generator=g)
    axes = torch.cat([torch.eye(6), -torch.eye(6)])
    d = torch.cat([axes, rnd])
    return (d / d.norm(dim=1, keepdim=True)).float()


_DIRS3 = sphere_directions(48)
_DIRS6 = wrench_directions(96)


def _cone_edges(normals: Tensor, mu: float, edges: int = 4) -> Tensor:
    """Unit force directions of the linearised friction cones about ``-normals [..., 3]`` -> [..., E, 3]."""
    axis = -normals
    helper = torch.where(axis[..., :1].abs() < 0.9, torch.tensor([1.0, 0.0, 0.0], dtype=axis.dtype),
                         torch.tensor([0.0, 1.0, 0.0], dtype=axis.dtype))
    t1 = torch.linalg.cross(axis, helper, dim=-1)
    t1 = t1 / t1.norm(dim=-1, keepdim=True).clamp(min=1e-9)
    t2 = torch.linalg.cross(axis, t1, dim=-1)
    ang = torch.arange(edges, dtype=axis.dtype) * (2.0 * math.pi / edges)
    tang = torch.cos(ang)[:, None] * t1.unsqueeze(-2) + torch.sin(ang)[:, None] * t2.unsqueeze(-2)
    e = axis.unsqueeze(-2) + mu * tang
    return e / e.norm(dim=-1, keepdim=True)


@dataclass
class StabilityModel:
    """Feature settings and the fall model: P(displacement > ``fall_cm``) from the gradient-boosted trees
    in ``trees`` ("bundled": ``dvqvae_model/assets/fall_trees.json``; a path: another file; "": none),
    else logistic(coef . z + intercept), z the standardised ``features`` (plain numbers). Both fitted
    by ``benchmarks/study_stability.py``."""

    contact_mm: float = 5.0  # a vertex touches within this distance of the surface (or inside)
    mu: float = 1.0  # friction coefficient of the features' cones (not the simulator's)
    max_depth_mm: float = 1e3  # vertices deeper inside than this are not contacts (their normals are unreliable)
    # fitted on the bundled model's candidates: 90 validation-split objects x (full cloud + one depth
    # view) x 64, gravity along the simulator's +y (benchmarks/study_stability.py analyse --fit
    # --features cone_eps,balance,span,g_resist --fall-cm 2)
    features: tuple[str, ...] = ("cone_eps", "balance", "span", "g_resist")
    mean: tuple[float, ...] = (-0.72302, 0.41021, 0.71869, 0.31115)
    std: tuple[float, ...] = (0.4141, 0.20774, 0.20034, 0.33098)
    coef: tuple[float, ...] = (-0.46447, 0.07906, -0.35888, 0.41555)
    intercept: float = -1.26952
    # 100 trees of 8 leaves over TREE_INPUTS, monotone where physics says which way an input goes;
    # fitted on the same candidates (study_stability.py analyse --fit --gbt --save-trees)
    trees: str = "bundled"
    fall_cm: float = 2.0

    def __post_init__(self) -> None:
        unknown = [f for f in self.features if f not in FEATURE_NAMES]
        if unknown or not len(self.features) == len(self.mean) == len(self.std) == len(self.coef):
            raise ValueError(f"StabilityModel: unknown features {unknown} or lengths differ "
                             f"({len(self.features)}, {len(self.mean)}, {len(self.std)}, {len(self.coef)})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stability_features(vertices: Tensor, part_ids: Tensor, areas: Tensor, sd: Tensor, normals: Tensor,
                       centre: Tensor, scale: Tensor, axes: Tensor, extent: Tensor,
                       model: Optional[StabilityModel] = None, gravity: Optional[Tensor] = None) -> dict[str, Tensor]:
    """Per-hand stability features ``[H]`` (module docstring).

    ``vertices [H, V, 3]`` (any subset of the hand's vertices), their ``part_ids [V]`` and
    ``areas [V]`` (m^2), signed distances ``sd [H, V]`` (m) and the cloud's outward normal at
    their nearest point ``normals [H, V, 3]``; per hand the object's ``centre [H, 3]``, radius
    ``scale [H]``, principal ``axes [H, 3, 3]`` (rows) and ``extent [H, 3]`` along them; ``gravity
    [H, 3]``: the unit direction the object is pulled in, or None (unknown: the gravity features
    are NaN). Not differentiable (ranking only). Finite for hands without contacts.
    """
    w = model or StabilityModel()
    with torch.no_grad():
        v, n = vertices.float(), normals.float()
        h = v.shape[0]
        touch = (sd < w.contact_mm / 1000.0) & (sd > -w.max_depth_mm / 1000.0)
        a = areas.float().unsqueeze(0) * touch.float()  # [H, V] contact area per vertex
        total = a.sum(1)
        has = total > 0
        denom = total.clamp(min=1e-12)
        # forces the contacts can apply: cones about -n
        cos_cone = math.cos(math.atan(w.mu))
        dirs = _DIRS3.to(v.dtype)
        cosines = torch.einsum("hvc,dc->hvd", -n, dirs)  # [H, V, D]
        cosines = torch.where(touch.unsqueeze(-1), cosines, torch.full_like(cosines, -2.0))
        best = cosines.max(dim=1).values  # [H, D]
        coverage = (best >= cos_cone).float().mean(1)
        cone_eps = torch.where(has, best.min(dim=1).values - cos_cone, torch.full_like(total, -1.0 - cos_cone))
        mean_n = (a.unsqueeze(-1) * n).sum(1) / denom.unsqueeze(-1)
        balance = torch.where(has, 1.0 - mean_n.norm(dim=1), torch.zeros_like(total))
        # per part: contact area and mean normal
        onehot = torch.nn.functional.one_hot(part_ids.long(), NUM_PARTS).to(v.dtype)  # [V, 6]
        part_area = a @ onehot  # [H, 6]
        part_n = torch.einsum("hv,vp,hvc->hpc", a, onehot, n)
        part_n = part_n / part_n.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        part_touch = part_area > 0
        dots = -torch.einsum("hpc,hqc->hpq", part_n, part_n)  # [H, 6, 6]: -n_p . n_q
        pair = part_touch.unsqueeze(2) & part_touch.unsqueeze(1) & ~torch.eye(NUM_PARTS, dtype=torch.bool)
        dots = torch.where(pair, dots, torch.full_like(dots, -1.0))
        opposition = dots[:, THUMB].max(dim=1).values
        opposition_any = dots.flatten(1).max(dim=1).values
        cpos = (a.unsqueeze(-1) * v).sum(1) / denom.unsqueeze(-1)
        centroid = torch.where(has, (cpos - centre).norm(dim=1) / scale.clamp(min=1e-3), torch.full_like(total, 2.0))
        # span of the contacts along the cloud's principal axes
        proj = torch.einsum("hvc,hac->hva", v - centre.unsqueeze(1), axes)  # [H, V, 3]
        big = torch.full_like(proj, 1e3)
        hi = torch.where(touch.unsqueeze(-1), proj, -big).max(dim=1).values
        lo = torch.where(touch.unsqueeze(-1), proj, big).min(dim=1).values
        span = torch.where(has.unsqueeze(-1), ((hi - lo) / extent.clamp(min=1e-3)).clamp(0.0, 1.0),
                           torch.zeros_like(hi)).mean(1)
        # Ferrari-Canny epsilon of the parts' contacts (area-weighted centre and normal per part)
        ppos = torch.einsum("hv,vp,hvc->hpc", a, onehot, v) / part_area.clamp(min=1e-12).unsqueeze(-1)
        edges = _cone_edges(part_n, w.mu)  # [H, 6, E, 3]
        arm = (ppos - centre.unsqueeze(1)) / scale.clamp(min=1e-3).view(-1, 1, 1)
        torque = torch.linalg.cross(arm.unsqueeze(2).expand_as(edges), edges, dim=-1)
        wrench = torch.cat([edges, torque], dim=-1).reshape(h, -1, 6)  # [H, 6E, 6]
        active = part_touch.unsqueeze(-1).expand(-1, -1, edges.shape[2]).reshape(h, -1)
        support = torch.einsum("hwc,dc->hwd", wrench, _DIRS6.to(v.dtype))
        support = torch.where(active.unsqueeze(-1), support, torch.full_like(support, -2.0))
        epsilon = support.max(dim=1).values.min(dim=1).values.clamp(min=-2.0)
        epsilon = torch.where(has, epsilon, torch.full_like(total, -2.0))
        fingers = part_touch[:, 1:PALM].sum(1).float()
        if gravity is not None:  # can the contacts carry the object's weight?
            g = gravity.to(v.dtype)
            load = torch.cat([g, torch.zeros_like(g)], dim=-1)  # the weight's wrench about the centre
            g_resist = cone_min_residual(wrench, load, active)
            g_support = torch.where(touch, (n * g.unsqueeze(1)).sum(-1), torch.full_like(sd, -1.0)).max(1).values
        else:
            g_resist = g_support = torch.full_like(total, float("nan"))
        return {"coverage": coverage, "cone_eps": cone_eps, "balance": balance, "opposition": opposition,
                "opposition_any": opposition_any, "centroid": centroid, "span": span, "epsilon": epsilon,
                "area": total * 1e4, "parts": part_touch.sum(1).float(), "fingers": fingers,
                "thumb": part_touch[:, THUMB].float(), "g_resist": g_resist, "g_support": g_support}


def stability_term(features: dict[str, Tensor], model: Optional[StabilityModel] = None) -> Tensor:
    """The ``stability`` term ``[H]`` in 0..1 (lower is better): the fall model's probability that
    the object moves more than ``model.fall_cm`` in the simulator's check. ``features``: the
    stability features, and for trees the ranking's other terms as well (``TREE_INPUTS``)."""
    m = model or StabilityModel()
    if m.trees:
        from dvqvae_model.pipeline.boosted_trees import configured_trees

        return configured_trees(m.trees).predict_features(features)
    logit = torch.full_like(features["coverage"], float(m.intercept))
    for name, mean, std, coef in zip(m.features, m.mean, m.std, m.coef):
        z = (features[name] - float(mean)) / float(std)
        logit = logit + float(coef) * torch.nan_to_num(z, nan=0.0)  # NaN: unknown (gravity), neutral
    return torch.sigmoid(logit)
