"""What a sampled grasp is worth, measured against the object cloud alone (ranking and refinement).

Why: a user executes the node's best K grasps, so they must not go through the object and must
hold it. The generator over-samples candidates and keeps the best by this score; refinement
(``dvqvae_model.pipeline.refine``) minimises the same terms. Everything works on a partial depth view:
only the observed surface is trusted.

``CloudSurface``: the object cloud as an implicit surface. Normals by PCA over each point's
neighbours, oriented away from the cloud's centroid (which lies inside a convex-ish object even
for a single view); the signed distance of a query is the point-to-plane distance to its nearest
cloud point, negative inside (outside: at least its distance to that point less the cloud's
spacing, so a query beside the edge of a partial view is not "on" the surface). A query farther
than ``gate`` from every cloud point is *unknown*
(on a partial view the back of the object is missing), never counted as inside.

Terms per grasp (``quality_terms``), all "lower is better" except the prior:

* ``penetration``  cm^3-like: sum over hand vertices inside the surface of depth x vertex area
  (the hand's surface integral of depth), plus the deepest object point inside the hand (cm, the
  in-graph term) scaled to the same order;
* ``contact``      cm: mean distance to the surface of the three closest hand parts (five digits,
  palm), each part's distance its closest vertex;
* ``closure``      0..1: force-closure residual of the parts in contact (``force_closure``);
  1 with fewer than two parts in contact (a single contact cannot hold anything);
* ``digits``       number of parts (of six) NOT within ``contact_mm`` of the surface;
* ``stability``    0..1: the probability that the object falls (moves more than 2 cm in the
  simulator's check): gradient-boosted trees (``boosted_trees``) over the stability features of every
  touching vertex (friction cones, balance, span, whether the contacts can carry the object's
  weight when ``gravity`` is known, ...; ``dvqvae_model.pipeline.stability``) and the terms above.
  Also returned: each stability feature as ``f_<name>``.
* ``penetration_est``  cm^3: the learnt estimate of the penetration volume the evaluation would
  measure (gradient-boosted trees over the terms above, the stability features and where the hand
  lies behind a depth view's visible surface, ``view_shadow``; also returned as ``f_<name>``).
  When present it stands in for ``penetration`` in the score and the hold cap.
* ``displacement_est``  cm: the learnt estimate of how far the object moves in the evaluation's
  simulator check (trees over the same inputs, ``displacement_trees.json``).

``score = w_prior * prior - w_pen * penetration - w_contact * contact - w_closure * closure
- w_digits * digits - w_stability * stability - w_no_contact * [no part touching]``, with
``penetration_estimate * penetration_est`` in place of ``w_pen * penetration`` when the estimate is
there (the default) (higher is
better). The first weights were chosen on validation-split objects (not the test split) by the
mean Q of the 8 kept of 32 sampled grasps, measured with the independent metrics
(``dvqvae_training.evaluate.metrics`` / ``physics``). Among this model's samples penetration and
displacement are anti-correlated (hands that penetrate deeper hold the object better, the
simulator's depenetration forces squeeze it), so without ``stability`` the score trades
displacement for penetration. ``stability`` (weight 40, chosen with 64 candidates on validation
objects, ``benchmarks/study_stability.py``) ranks grasps by how well they would hold, but a grasp
whose penetration term reaches ``stability_max_penetration`` (5) earns no hold credit, so the term
never lifts a hand sunk into the object above one touching it (``tests/test_ranking.py``). On a
one-sided view (one depth image: the cloud's normals mostly face the camera) the penetration term
reads about 4x high, since a hand behind a thin object counts as inside, and the cap scales with it;
the learnt ``penetration_est`` (default) needs no such scaling and predicts the measured volume
better on both kinds of cloud, so it replaces the term when its trees are there.

With both learnt estimates (the default) the score is simply minus the estimated Q of the
evaluation, ``-(0.301 penetration_est + 0.699 displacement_est)`` (``QualityWeights.q_weights``),
less ``w_no_contact`` for a hand touching nothing: the hand-weighted sum above, the fall probability
and the hold cap are then not used (they remain for ``displacement_model=""``). On 206 validation
objects (5-fold cross-validation over objects, best 8 of 64) this kept grasps with displacement
1.26 -> 1.23 cm (full clouds) and 1.93 -> 1.67 cm (depth views) at the same or lower penetration;
adding the prior or the contact term to it changed nothing (README, "Ranking and refinement").
``benchmarks/bench_ranking.py`` reports the rank correlations.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from dvqvae_model.pipeline.boosted_trees import BUNDLED_DISPLACEMENT, BUNDLED_PENETRATION, configured_trees
from dvqvae_model.pipeline.force_closure import simplex_min_norm
from dvqvae_model.pipeline.stability import StabilityModel, stability_features, stability_term
from dvqvae_model.pipeline.view_shadow import shadow_features

__all__ = ["CloudSurface", "GridSurface", "QualityWeights", "TERM_NAMES", "quality_terms", "combine_terms", "vertex_areas"]

# the per-grasp terms, in the order published on grasps/scores after the total score
TERM_NAMES: tuple[str, ...] = ("prior", "penetration", "contact", "closure", "digits", "stability", "penetration_est",
                               "displacement_est")
VERTEX_STRIDE = 2  # hand vertices queried by quality_terms: every second one (the cost is the search)
NUM_PARTS = 6  # thumb, index, middle, ring, pinky, palm (hand_metadata.PART_NAMES)


@dataclass
class QualityWeights:
    """Weights of the ranking score (see module docstring)."""

    prior: float = 1.0
    penetration: float = 1.0
    contact: float = 0.5
    closure: float = 3.0
    digits: float = 0.3
    no_contact: float = 10.0  # no part touching at all: not a grasp
    contact_mm: float = 5.0  # a part touches when its closest vertex is this close (or inside)
    obj_in_hand_scale: float = 0.5  # cm of object point depth inside the hand -> penetration units
    # weight of the stability term (the fall probability, stability.py): it can outweigh at most this
    # much penetration (cm^3-like). 40 with 64 candidates and gravity known: chosen on 90
    # validation-split objects by the hold of the 8 kept (benchmarks/study_stability.py --fit --sweep;
    # README "Ranking and refinement")
    stability: float = 40.0
    # a grasp whose penetration term (cm^3-like) reaches this earns no hold credit (its stability
    # counts as 1, "falls"): the simulator holds objects with hands sunk into them, a user cannot
    # use such a hold, and the credit must never lift a deep grasp above a touching one (6 would hold
    # better on validation at the same Q, but lets a 1 cm deep hand in tests/test_ranking.py's fixture
    # outrank touching ones)
    stability_max_penetration: float = 5.0
    # ... times this on a one-sided view (|mean cloud normal| >= one_sided): there a hand behind a
    # thin object counts as inside, and the penetration term reads ~4x the measured volume (median
    # 16.8 vs 3.4 cm^3 on validation depth views); chosen on validation depth views (README)
    one_sided: float = 0.35
    one_sided_penetration_scale: float = 4.0
    stability_model: StabilityModel = field(default_factory=StabilityModel)
    # the learnt penetration estimate ``penetration_est`` (cm^3; boosted trees over the terms, the
    # stability features and view_shadow's; "bundled": assets/penetration_trees.json, a path:
    # another file, "": none). When present it stands in for the cloud's penetration term in the
    # score (weighted by ``penetration_estimate``) and in the hold cap (no one-sided scaling: it is
    # fitted on depth views too). Weight 4: chosen on validation objects (study_stability.py --sweep)
    penetration_model: str = "bundled"
    penetration_estimate: float = 4.0
    # the learnt estimate ``displacement_est`` (cm; trees over the same inputs; "bundled":
    # assets/displacement_trees.json, a path, or "": none). With ``penetration_est`` it makes the
    # score minus the estimated Q: q_weights = (penetration, displacement) of the evaluation's Q
    displacement_model: str = "bundled"
    q_weights: tuple[float, float] = (0.301, 0.699)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def vertex_areas(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area (m^2) attributed to each vertex: a third of its faces' areas -> [V]."""
    v = vertices.reshape(-1, 3).double()
    f = faces.long()
    a = 0.5 * torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]]).norm(dim=1)
    out = torch.zeros(v.shape[0], dtype=torch.float64).index_add(0, f.reshape(-1), (a / 3).repeat_interleave(3))
    return out.float()


class CloudSurface:
    """Object cloud(s) ``[B, N, 3]`` as surfaces with estimated normals (see module docstring)."""

    def __init__(self, points: Tensor, *, num_points: int = 512, neighbours: int = 12, gate: float = 0.02) -> None:
        if points.dim() == 2:
            points = points.unsqueeze(0)
        b, n = points.shape[0], points.shape[1]
        stride = max(1, n // num_points)
        self.points = points[:, ::stride][:, :num_points].contiguous()  # [B, M, 3]
        self.gate = float(gate)
        self._trees: Optional[list[cKDTree]] = None  # built on the first CPU query (_nearest)
        k = int(min(neighbours, n))
        d = torch.cdist(self.points, points)  # [B, M, N]
        idx = d.topk(k, dim=2, largest=False).indices
        nb = torch.gather(points.unsqueeze(1).expand(b, self.points.shape[1], n, 3), 2,
                          idx.unsqueeze(-1).expand(-1, -1, -1, 3))  # [B, M, k, 3]
        centred = nb - nb.mean(dim=2, keepdim=True)
        cov = centred.transpose(2, 3) @ centred  # [B, M, 3, 3]
        _, vecs = torch.linalg.eigh(cov)
        normals = vecs[..., 0]  # smallest eigenvalue: the normal
        outward = self.points - points.mean(dim=1, keepdim=True)
        flip = (normals * outward).sum(-1, keepdim=True) < 0
        self.normals = torch.where(flip, -normals, normals).contiguous()
        # typical spacing of the kept points (their nearest other kept point): the resolution of the surface
        own = torch.cdist(self.points, self.points).topk(2, dim=2, largest=False).values[..., 1]
        self.spacing = own.median(dim=1).values.unsqueeze(1)  # [B, 1]: per object (a batch mixes objects)
        self.scale = (points.amax(1) - points.amin(1)).norm(dim=1) / 2.0  # [B] object radius
        # principal axes (rows, largest first) and the cloud's extent along them (stability's span)
        self.centre = self.points.mean(dim=1)  # [B, 3]
        rel = self.points - self.centre.unsqueeze(1)
        _, axes = torch.linalg.eigh(rel.transpose(1, 2) @ rel)
        self.axes = axes.flip(-1).transpose(1, 2).contiguous()  # [B, 3, 3]
        proj = rel @ self.axes.transpose(1, 2)
        self.extent = proj.amax(1) - proj.amin(1)  # [B, 3]
        # |mean normal|: ~0 for a cloud all round the object, large for one depth view (its normals
        # face the camera); a one-sided view's penetration estimate reads high (QualityWeights)
        self.one_sidedness = self.normals.mean(dim=1).norm(dim=-1)  # [B]

    @property
    def num_objects(self) -> int:
        return int(self.points.shape[0])

    def signed_distance(self, queries: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(signed distance [B, Q] m, known [B, Q] bool, nearest normal [B, Q, 3]) of ``queries [B, Q, 3]``.

        ``known`` is False farther than ``gate`` from the cloud (outside by assumption: sd >= 0).
        Differentiable in ``queries`` (the nearest point is chosen without gradient).
        """
        with torch.no_grad():
            idx, nn_d2 = self._nearest(queries.detach())
        return self._signed(queries, idx, nn_d2)

    def _nearest(self, queries: Tensor) -> tuple[Tensor, Tensor]:
        """(index [B, Q] of the nearest kept point, squared distance [B, Q]): a k-d tree per object on
        the CPU (4x faster than the brute-force product for a ranking's 64 hands), brute force elsewhere."""
        if queries.device.type == "cpu":
            if self._trees is None:
                self._trees = [cKDTree(pts.double().numpy()) for pts in self.points]
            found = [tree.query(q.double().numpy()) for tree, q in zip(self._trees, queries)]
            idx = torch.from_numpy(np.stack([i for _, i in found]).astype(np.int64))
            d2 = torch.from_numpy(np.stack([d for d, _ in found]) ** 2).to(queries.dtype)
            return idx, d2
        p = self.points
        psq = (p * p).sum(-1).unsqueeze(1)  # [B, 1, M]
        d2 = torch.baddbmm(psq, queries, p.transpose(1, 2), alpha=-2.0)  # |p|^2 - 2 q.p
        nn_d2, idx = d2.min(dim=2)
        return idx, (nn_d2 + (queries ** 2).sum(-1)).clamp(min=0.0)

    def _signed(self, queries: Tensor, idx: Tensor, nn_d2: Tensor,
                rows: slice = slice(None)) -> tuple[Tensor, Tensor, Tensor]:
        """``signed_distance`` given each query's nearest point (differentiable in the queries);
        ``rows``: the objects the queries belong to."""
        p, normals, spacing = self.points[rows], self.normals[rows], self.spacing[rows]
        g = idx.unsqueeze(-1).expand(-1, -1, 3)
        nn_p = torch.gather(p, 1, g)
        nn_n = torch.gather(normals, 1, g)
        plane = ((queries - nn_p) * nn_n).sum(-1)
        # outside, the distance is at least the distance to the nearest point less the spacing: a
        # query beside the edge of a partial view is not "on" the plane of its nearest point
        euclid = torch.sqrt(((queries - nn_p) ** 2).sum(-1) + 1e-12)
        sd = torch.where(plane > 0, torch.maximum(plane, euclid - spacing), plane)
        known = nn_d2 < self.gate**2
        sd = torch.where(known | (sd > 0), sd, sd.detach() * 0.0 + self.gate)
        return sd, known, nn_n


    def grid(self, resolution: int = 32) -> "GridSurface":
        """This surface's signed distance, known flag and normal sampled on a grid (``GridSurface``)."""
        return GridSurface(self, resolution)


class GridSurface:
    """A ``CloudSurface`` sampled once on a ``resolution^3`` grid per object, queried by trilinear
    interpolation (the same ``signed_distance`` interface, differentiable in the queries).

    Why: refinement queries the surface at every step for every hand vertex; a nearest-neighbour
    search over the cloud per query is most of a step's cost, a grid lookup is nearly free. The
    grid spans the cloud's box plus ``gate`` and one cell on each side; beyond it queries are
    unknown and outside (as they are for the cloud). Accuracy is that of the grid (a fraction of a
    cell near edges of the surface): callers that publish check the result with the exact surface
    (``GraspGenerator`` re-scores refined grasps with ``CloudSurface``).
    """

    def __init__(self, surface: CloudSurface, resolution: int = 32) -> None:
        if resolution < 2:
            raise ValueError(f"grid resolution must be >= 2, got {resolution}")
        for name in ("points", "normals", "gate", "spacing", "scale", "centre", "axes", "extent", "one_sidedness"):
            setattr(self, name, getattr(surface, name))
        b = surface.num_objects
        pad = surface.gate + 0.0
        lo, hi = surface.points.amin(1) - pad, surface.points.amax(1) + pad  # [B, 3]
        cell = (hi - lo) / (resolution - 1)
        self.lo, self.hi = lo - cell, hi + cell
        t = torch.linspace(0.0, 1.0, resolution, dtype=lo.dtype)
        # grid_sample's volume is [D, H, W] = [z, y, x]; its sample coordinates are (x, y, z)
        gz, gy, gx = torch.meshgrid(t, t, t, indexing="ij")
        unit = torch.stack([gx, gy, gz], -1).reshape(1, -1, 3)
        queries = self.lo.unsqueeze(1) + unit * (self.hi - self.lo).unsqueeze(1)  # [B, R^3, 3]
        parts = []
        with torch.no_grad():  # nearest points by a k-d tree (C speed), then the surface's own rule
            for b_i in range(b):
                tree = cKDTree(surface.points[b_i].double().numpy())
                dist, idx = tree.query(queries[b_i].double().numpy())
                sd, known, n = surface._signed(queries[b_i:b_i + 1],
                                               torch.from_numpy(idx.astype(np.int64)).unsqueeze(0),
                                               torch.from_numpy(dist ** 2).to(queries.dtype).unsqueeze(0),
                                               slice(b_i, b_i + 1))
                parts.append(torch.cat([sd.unsqueeze(-1), known.unsqueeze(-1).to(sd.dtype), n], -1))
        field = torch.cat(parts, 0)  # [B, R^3, 5]
        self.field = field.transpose(1, 2).reshape(b, 5, resolution, resolution, resolution).contiguous()
        self.resolution = int(resolution)

    @property
    def num_objects(self) -> int:
        return int(self.field.shape[0])

    def signed_distance(self, queries: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(signed distance [B, Q], known [B, Q], normal [B, Q, 3]) by trilinear interpolation."""
        u = (queries - self.lo.unsqueeze(1)) / (self.hi - self.lo).unsqueeze(1) * 2.0 - 1.0
        out = torch.nn.functional.grid_sample(self.field, u.unsqueeze(2).unsqueeze(2), mode="bilinear",
                                              padding_mode="border", align_corners=True)[..., 0, 0]  # [B, 5, Q]
        inside_box = (u.detach().abs() <= 1.0).all(-1)
        sd = torch.where(inside_box, out[:, 0], out[:, 0].detach() * 0.0 + self.gate)
        known = inside_box & (out[:, 1].detach() > 0.5)
        n = out[:, 2:5].transpose(1, 2)
        n = n / n.norm(dim=-1, keepdim=True).clamp(min=1e-9)
        return sd, known, n


def _per_object(x: Tensor, num_objects: int) -> Tensor:
    """[B*K, ...] -> [B, K*..., 3]-style grouping for per-object queries."""
    return x.reshape(num_objects, -1, x.shape[-1])


def quality_terms(surface: CloudSurface | GridSurface, vertices: Tensor, part_ids: Tensor, areas: Tensor,
                  obj_in_hand_cm: Optional[Tensor] = None, weights: Optional[QualityWeights] = None,
                  vertex_stride: int = VERTEX_STRIDE, features: bool = True,
                  closure_iters: int = 40, gravity: Optional[Tensor] = None) -> dict[str, Tensor]:
    """Per-grasp terms ``[B*K]`` (see module docstring) for hands ``vertices [B*K, V, 3]``.

    Hands ``b*K .. b*K+K-1`` belong to object ``b`` of ``surface``. Differentiable in the vertices
    (penetration and contact; the closure weights are solved without gradient). Every
    ``vertex_stride``-th vertex is queried (its area scaled up): the nearest-point search is the
    cost. Extra keys: ``part_distance [B*K, 6]`` (m) and ``depth`` ``[B*K, V']`` (m, >= 0); with
    ``features`` (off in refinement, whose energy has its own closure term) ``stability`` and the
    stability features ``f_<name>`` (``stability.FEATURE_NAMES``) and, with
    ``weights.penetration_model``, ``penetration_est`` and its inputs ``view_shadow.SHADOW_NAMES``
    (as ``f_<name>``). ``closure_iters``: iterations of the closure weights' solver (refinement
    takes fewer: there the term only steers).
    ``gravity [B, 3]``: per object the unit direction the object is pulled in (the hands' frame),
    or None (unknown): the stability features ``g_resist`` / ``g_support`` need it.
    """
    w = weights or QualityWeights()
    if vertex_stride > 1:
        vertices = vertices[:, ::vertex_stride]
        areas = areas[::vertex_stride] * float(vertex_stride)
        part_ids = part_ids[::vertex_stride]
    num_hands, num_vertices = vertices.shape[0], vertices.shape[1]
    b = surface.num_objects
    sd, known, normals = surface.signed_distance(_per_object(vertices, b))
    sd = sd.reshape(num_hands, num_vertices)
    normals = normals.reshape(num_hands, num_vertices, 3)
    depth = (-sd).clamp(min=0.0)
    penetration = (depth * areas).sum(1) * 1e6  # m^3 -> cm^3
    if obj_in_hand_cm is not None:
        penetration = penetration + w.obj_in_hand_scale * obj_in_hand_cm
    # per part: the closest vertex's distance to the surface (inside counts as touching)
    dist = sd.clamp(min=0.0)
    big = torch.full((num_hands, NUM_PARTS, num_vertices), 1.0, dtype=dist.dtype)
    onehot = torch.nn.functional.one_hot(part_ids, NUM_PARTS).T.bool().unsqueeze(0)  # [1, 6, V]
    per_part = torch.where(onehot, dist.unsqueeze(1).expand(-1, NUM_PARTS, -1), big)  # [H, 6, V]
    part_d, part_v = per_part.min(dim=2)  # [H, 6]
    contact = (-torch.topk(-part_d, 3, dim=1).values).mean(1) * 100.0  # cm
    touching = part_d < w.contact_mm / 1000.0
    digits = (~touching).sum(1).to(vertices.dtype)
    # force closure of the touching parts: contact point = the part's closest vertex, normal from the cloud
    g = part_v.unsqueeze(-1).expand(-1, -1, 3)
    x = torch.gather(vertices, 1, g)
    n = torch.gather(normals, 1, g)
    centre = surface.points.mean(dim=1).repeat_interleave(num_hands // b, dim=0).unsqueeze(1)  # [H, 1, 3]
    scale = surface.scale.clamp(min=1e-3).repeat_interleave(num_hands // b).view(-1, 1, 1)
    torque = torch.linalg.cross(x - centre, n, dim=-1) / scale
    wrench = torch.cat([n, torque], dim=-1) * touching.unsqueeze(-1).to(n.dtype)
    lam = simplex_min_norm(wrench.detach(), touching, iters=closure_iters)
    net = (lam.unsqueeze(-1) * wrench).sum(1)
    closure = torch.where(touching.sum(1) >= 2, (net * net).sum(1), torch.ones_like(net[:, 0]))
    out = {"penetration": penetration, "contact": contact, "closure": closure, "digits": digits,
           "part_distance": part_d, "depth": depth,
           "one_sidedness": surface.one_sidedness.repeat_interleave(num_hands // b)}
    if features:
        per = num_hands // b
        feats = stability_features(vertices, part_ids, areas, sd, normals,
                                   surface.centre.repeat_interleave(per, dim=0),
                                   surface.scale.repeat_interleave(per), surface.axes.repeat_interleave(per, dim=0),
                                   surface.extent.repeat_interleave(per, dim=0), w.stability_model,
                                   gravity.repeat_interleave(per, dim=0) if gravity is not None else None)
        inputs = {**feats, **{k: out[k] for k in ("penetration", "contact", "closure", "digits", "one_sidedness")}}
        out["stability"] = stability_term(inputs, w.stability_model)
        out.update({f"f_{k}": v for k, v in feats.items()})
        if w.penetration_model or w.displacement_model:
            shadow = shadow_features(surface.points, surface.normals, surface.spacing, vertices, areas)
            out.update({f"f_{k}": v for k, v in shadow.items()})
            for name, setting, bundled in (("penetration_est", w.penetration_model, BUNDLED_PENETRATION),
                                           ("displacement_est", w.displacement_model, BUNDLED_DISPLACEMENT)):
                if setting:
                    out[name] = configured_trees(setting, bundled).predict_features({**inputs, **shadow})
    return out



def combine_terms(prior: Tensor, terms: dict[str, Tensor], weights: Optional[QualityWeights] = None) -> Tensor:
    """The ranking score (higher is better) from the prior term and ``quality_terms``."""
    w = weights or QualityWeights()
    no_contact = w.no_contact * (terms["digits"] >= NUM_PARTS).to(prior.dtype)
    if "penetration_est" in terms and "displacement_est" in terms:  # the estimated Q of the evaluation
        return -(w.q_weights[0] * terms["penetration_est"] + w.q_weights[1] * terms["displacement_est"]) - no_contact
    stability = terms.get("stability", torch.zeros_like(prior))
    cap = torch.full_like(prior, w.stability_max_penetration)
    if "penetration_est" in terms:
        penetration, weight = terms["penetration_est"], w.penetration_estimate
    else:
        penetration, weight = terms["penetration"], w.penetration
        if "one_sidedness" in terms:
            cap = torch.where(terms["one_sidedness"] >= w.one_sided, cap * w.one_sided_penetration_scale, cap)
    stability = torch.where(penetration < cap, stability, torch.ones_like(stability))
    return (w.prior * prior - weight * penetration - w.contact * terms["contact"]
            - w.closure * terms["closure"] - w.digits * terms["digits"]
            - w.stability * stability - no_contact)


def as_numpy(terms: dict[str, Tensor]) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in terms.items()}
