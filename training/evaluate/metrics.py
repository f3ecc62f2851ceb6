"""Evaluation metrics of the paper's Table 1 (method-notes sec. 5), computed soundly.

- contact: a grasp is in contact if any hand vertex is inside the object or within
  5 mm of its surface (exact distances, open3d);
- penetration volume (cm^3): the volume inside both the *sealed* hand mesh and the
  object, measured as a solid (not surface-voxel) integral: cell centres of a global
  lattice of pitch ``pitch`` (default 1 mm) inside the bounding-box overlap are
  tested for being inside both meshes (ray-parity occupancy, majority of 3 rays);
  volume = count * pitch^3 (midpoint rule). Accuracy on two overlapping spheres is
  tested in tests/test_metrics.py;
- simulation displacement (cm): :mod:`dvqvae_training.synthesis.physics`;
- diversity: k-means (k = 20, fixed seed) on the 61-d parameters or on canonicalised
  21 keypoints in cm (HALO style); entropy of the cluster shares in nats (max ln k)
  and mean distance of the samples to their assigned centre ("cluster size");
- quality index Q = 0.301 * penetration (cm^3) + 0.699 * displacement (cm) on the means.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import trimesh

from dvqvae_training.synthesis.sdf import _raycasting_scene, mesh_occupancy, overlap_lattice

CONTACT_THRESHOLD = 0.005  # metres
DEFAULT_PITCH = 0.001  # metres; see module doc and the report for accuracy/time
K_CLUSTERS = 20
Q_WEIGHTS = (0.301, 0.699)


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class ObjectGeometry:
    """An object mesh with its open3d scene built once (contact and penetration queries)."""

    def __init__(self, mesh: trimesh.Trimesh):
        if not mesh.is_watertight:
            raise ValueError("metrics need a watertight object mesh")
        self.mesh = mesh
        self.scene = _raycasting_scene(mesh)
        self.bounds = np.asarray(mesh.bounds, dtype=np.float64)

    def inside(self, points: np.ndarray) -> np.ndarray:
        return mesh_occupancy(self.mesh, points, scene=self.scene)

    def unsigned_distance(self, points: np.ndarray) -> np.ndarray:
        import open3d as o3d

        pts = o3d.core.Tensor(np.ascontiguousarray(points, dtype=np.float32))
        return self.scene.compute_distance(pts).numpy().astype(np.float64)


def _geometry(obj: trimesh.Trimesh | ObjectGeometry) -> ObjectGeometry:
    return obj if isinstance(obj, ObjectGeometry) else ObjectGeometry(obj)


# =============================================================================== contact


def contact_flags(
    hand_vertices: Any, obj: trimesh.Trimesh | ObjectGeometry, threshold: float = CONTACT_THRESHOLD
) -> np.ndarray:
    """Per grasp: any hand vertex inside the object or within ``threshold`` of its surface.

    hand_vertices: [B,V,3] or [V,3] (metres). Returns bool [B].
    """
    geo = _geometry(obj)
    hv = _np(hand_vertices).astype(np.float64)
    if hv.ndim == 2:
        hv = hv[None]
    B, V, _ = hv.shape
    flat = hv.reshape(-1, 3)
    # Only vertices inside the object's box grown by the threshold can be in contact;
    # exact closest-point queries are only made for those (they are slow far away).
    lo, hi = geo.bounds[0] - threshold, geo.bounds[1] + threshold
    cand = np.all((flat >= lo) & (flat <= hi), axis=1)
    hit = np.zeros(len(flat), dtype=bool)
    if cand.any():
        pts = flat[cand]
        inside = geo.inside(pts)
        close = np.zeros(len(pts), dtype=bool)
        if (~inside).any():
            close[~inside] = geo.unsigned_distance(pts[~inside]) <= threshold
        hit[cand] = inside | close
    return hit.reshape(B, V).any(axis=1)


def contact_ratio(hand_vertices: Any, obj: trimesh.Trimesh | ObjectGeometry, threshold: float = CONTACT_THRESHOLD) -> float:
    """Share of grasps in contact (0..1)."""
    return float(contact_flags(hand_vertices, obj, threshold).mean())


# =============================================================================== penetration


def penetration_volume(
    hand_vertices: Any,
    hand_sealed_faces: Any,
    obj: trimesh.Trimesh | ObjectGeometry,
    pitch: float = DEFAULT_PITCH,
    max_points: int = 4_000_000,
) -> float:
    """Volume (m^3) inside both the sealed hand mesh [V,3]/[F,3] and the object.

    Lattice cell centres (k + 1/2) * pitch inside the overlap of the two bounding
    boxes are tested with ray-parity occupancy against both meshes; the lattice is
    global (anchored at the origin), so results do not depend on the hand's box.
    ``max_points`` guards memory (the region is processed in slabs).
    """
    geo = _geometry(obj)
    hv = _np(hand_vertices).astype(np.float64).reshape(-1, 3)
    hf = _np(hand_sealed_faces).astype(np.int64).reshape(-1, 3)
    axes = overlap_lattice(hv, geo.bounds, pitch)
    if axes is None:
        return 0.0
    hand_mesh = trimesh.Trimesh(hv, hf, process=False)
    hand_scene = _raycasting_scene(hand_mesh)
    per_slab = max(1, max_points // (len(axes[1]) * len(axes[2])))
    count = 0
    for s in range(0, len(axes[0]), per_slab):
        xs = axes[0][s : s + per_slab]
        g = np.stack(np.meshgrid(xs, axes[1], axes[2], indexing="ij"), axis=-1).reshape(-1, 3)
        in_obj = geo.inside(g)
        if not in_obj.any():
            continue
        in_hand = mesh_occupancy(hand_mesh, g[in_obj], scene=hand_scene)
        count += int(in_hand.sum())
    return count * pitch**3


def penetration_volumes_cm3(
    hand_vertices: Any, hand_sealed_faces: Any, obj: trimesh.Trimesh | ObjectGeometry, pitch: float = DEFAULT_PITCH
) -> np.ndarray:
    """Penetration volume per grasp in cm^3 for hands [B,V,3]."""
    geo = _geometry(obj)
    hv = _np(hand_vertices)
    if hv.ndim == 2:
        hv = hv[None]
    return np.array([penetration_volume(v, hand_sealed_faces, geo, pitch) * 1e6 for v in hv])


# =============================================================================== diversity


@dataclasses.dataclass(frozen=True)
class DiversityResult:
    entropy: float  # nats, at most ln(k)
    cluster_size: float  # mean distance of samples to their assigned centre (input units)
    counts: np.ndarray  # samples per cluster [k]


def cluster_entropy(labels: np.ndarray, k: int | None = None) -> float:
    """Entropy (nats) of the share of samples per cluster label."""
    labels = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels, minlength=k or 0).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def kmeans_diversity(features: Any, k: int = K_CLUSTERS, seed: int = 0, n_init: int = 10) -> DiversityResult:
    """k-means (scikit-learn, fixed seed) entropy and cluster size of features [N,D]."""
    from sklearn.cluster import KMeans

    X = _np(features).astype(np.float64).reshape(len(features), -1)
    k_eff = int(min(k, len(np.unique(X, axis=0))))
    if k_eff < 1:
        raise ValueError("need at least one sample")
    km = KMeans(n_clusters=k_eff, n_init=n_init, random_state=seed).fit(X)
    labels = km.labels_
    dist = np.linalg.norm(X - km.cluster_centers_[labels], axis=1)
    return DiversityResult(
        entropy=cluster_entropy(labels, k_eff),
        cluster_size=float(dist.mean()),
        counts=np.bincount(labels, minlength=k_eff),
    )


def canonical_keypoints(keypoints: Any) -> np.ndarray:
    """21 keypoints [N,21,3] (m) -> [N,63] in cm in a wrist-anchored palm frame.

    Removes the global pose (as HALO does before clustering), so the clusters
    reflect hand articulation and shape: origin at the wrist, x towards the middle
    knuckle, y across the palm from the pinky to the index knuckle
    (Gram-Schmidt), z = x cross y. Keypoint order: wrist, thumb 1-4, index 5-8,
    middle 9-12, ring 13-16, pinky 17-20.
    """
    kp = _np(keypoints).astype(np.float64)
    if kp.ndim == 2:
        kp = kp[None]
    rel = kp - kp[:, :1]
    x = rel[:, 9]
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    t = rel[:, 5] - rel[:, 17]
    y = t - (t * x).sum(1, keepdims=True) * x
    y = y / np.linalg.norm(y, axis=1, keepdims=True)
    z = np.cross(x, y)
    frame = np.stack([x, y, z], axis=2)  # [N,3,3], columns = axes
    return (np.einsum("nkd,nde->nke", rel, frame) * 100.0).reshape(len(kp), -1)


def diversity(params: Any, keypoints: Any | None = None, k: int = K_CLUSTERS, seed: int = 0) -> dict[str, float]:
    """Table-1 diversity of a set of generated grasps.

    ``entropy`` / ``cluster_size``: k-means on the 61-d parameters (the authors' choice);
    with ``keypoints`` [N,21,3] (m) also ``entropy_kp`` / ``cluster_size_kp`` on the
    canonicalised keypoints in cm (HALO's choice).
    """
    res = kmeans_diversity(_np(params).reshape(len(params), -1), k=k, seed=seed)
    out = {"entropy": res.entropy, "cluster_size": res.cluster_size}
    if keypoints is not None:
        kp = kmeans_diversity(canonical_keypoints(keypoints), k=k, seed=seed)
        out.update({"entropy_kp": kp.entropy, "cluster_size_kp": kp.cluster_size})
    return out


def quality_index(penetration_cm3: float, displacement_cm: float) -> float:
    """Q = 0.301 * penetration (cm^3) + 0.699 * displacement (cm)."""
    return Q_WEIGHTS[0] * float(penetration_cm3) + Q_WEIGHTS[1] * float(displacement_cm)


# =============================================================================== all together


@dataclasses.dataclass
class GraspEvaluation:
    """Per-grasp metrics of one object's grasps and their Table-1 summary."""

    contact: np.ndarray  # bool [B]
    penetration_cm3: np.ndarray  # [B]
    displacement_cm: np.ndarray | None  # [B] (None when simulation was skipped)
    pitch: float

    def summary(self) -> dict[str, float]:
        out = {
            "contact_ratio": float(self.contact.mean()),
            "penetration_cm3": float(self.penetration_cm3.mean()),
            "pitch_mm": self.pitch * 1000.0,
        }
        if self.displacement_cm is not None:
            out["displacement_cm"] = float(self.displacement_cm.mean())
            out["quality_index"] = quality_index(out["penetration_cm3"], out["displacement_cm"])
        return out


def evaluate_grasps(
    hand_vertices: Any,
    hand_sealed_faces: Any,
    hand_faces: Any,
    object_mesh: trimesh.Trimesh,
    *,
    simulate: bool = True,
    pitch: float = DEFAULT_PITCH,
    simulator: Any = None,
) -> GraspEvaluation:
    """Contact, penetration and (optionally) simulation displacement of hands [B,V,3].

    ``hand_faces`` (the open MANO faces, as in the published protocol) are used for
    the simulation, ``hand_sealed_faces`` for the penetration volume. Pass a
    :class:`dvqvae_training.synthesis.physics.GraspSimulator` of this object to reuse it.
    """
    geo = ObjectGeometry(object_mesh)
    hv = _np(hand_vertices).astype(np.float64)
    if hv.ndim == 2:
        hv = hv[None]
    contact = contact_flags(hv, geo)
    pen = penetration_volumes_cm3(hv, hand_sealed_faces, geo, pitch)
    disp = None
    if simulate:
        from dvqvae_training.synthesis.physics import GraspSimulator

        sim = simulator if simulator is not None else GraspSimulator(object_mesh)
        try:
            disp = sim.displacements(hv, _np(hand_faces)) * 100.0
        finally:
            if simulator is None:
                sim.close()
    return GraspEvaluation(contact=contact, penetration_cm3=pen, displacement_cm=disp, pitch=pitch)
