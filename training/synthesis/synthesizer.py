"""Physics-checked grasp synthesis: batched, differentiable optimisation of MANO hands on an object.

Why: we cannot download ObMan, so this is where our training grasps come from; their quality and
diversity bound every model trained on them.

Pipeline per object (:meth:`GraspSynthesizer.synthesize`):

1. Object context: a grid SDF (:class:`dvqvae_training.synthesis.sdf.ObjectSDF`, trilinear ``grid_sample``)
   for cheap differentiable distances, surface samples, and the pybullet convex decomposition
   (cached on disk by :mod:`dvqvae_training.synthesis.physics`, decomposed once per object).
2. Initial hands (hundreds at once): a grasp type per hand (:mod:`dvqvae_training.synthesis.grasp_types`),
   its pre-shape blended between open and closed plus joint jitter, random shape (betas); the hand
   is placed at a surface point that is visible from outside, palm facing the object along the
   surface normal, a random roll about the approach and a small tilt; power grasps put the palm at
   a small stand-off, precision grasps put their contact centroid just under the surface.
3. Optimisation (Adam, cosine learning-rate decay, annealed weights, hard joint limits by
   projection onto the anatomical box) of global rotation, translation and the 22 free joint
   angles (twist/spread/bend frames of the hand metadata) against

   - contact: soft-min distance of each contact region of the type (finger pads per phalanx,
     palm, radial index side) to the surface;
   - hand-into-object penetration: hand vertices inside the object (SDF);
   - object-into-hand penetration: the object's solid inside the hand's collision spheres (SDF at
     the sphere centres: thin walls and rims slicing into a finger between its vertices) and
     sampled surface points inside them (sharp edges the grid rounds off); spheres are centred
     on vertex rings along the bones and through the palm (they follow pose and shape), radii
     inscribed in the rest hand;
   - finger-finger interpenetration: overlap of spheres of different digits (and of distal
     digits with the palm), pairs that touch at rest excluded;
   - force closure: the smallest net wrench of the contact normals over convex combinations of
     the touching regions (envelope theorem: weights solved without gradient);
   - a weak pull to the initial joint angles (keeps the type's character).

   After ``cull_at`` of the steps the worse half of each type is dropped (multi-start: the
   remaining steps go to promising hands; type shares stay as initialised).
4. Acceptance, cheapest test first, every rejection counted by reason: digits in contact (at
   least three, i.e. thumb + two or three fingers), self-collision, deep penetration (SDF), the
   exact penetration volume (1 mm lattice, same definition as :mod:`dvqvae_training.evaluate.metrics`,
   evaluated only where it can be non-zero), the pybullet displacement of the published
   protocol (< 2 cm), the same with gravity pulling the object out of the palm (< 2 cm; a hand
   that only supports the object from below is not a grasp), near-duplicates of already accepted
   grasps; optionally the robustness check with gravity along the six axes (recorded as
   ``max_axis_displacement_cm``).

Determinism: everything random is drawn from generators seeded by (object id, seed); torch runs
single-threaded in the workers. Same inputs, same grasps.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import trimesh
from dvqvae_training.synthesis.grasp_types import (
    GRASP_TYPES,
    GraspType,
    HandRegions,
    blend_local_degrees,
    compute_hand_regions,
)
from dvqvae_training.synthesis.sdf import ObjectSDF, _raycasting_scene, mesh_occupancy, overlap_lattice
from torch import Tensor

from dvqvae_model.hand.hand_metadata import FINGER_JOINTS, FINGER_NAMES, local_joint_limits
from dvqvae_model.hand.hand_model import HandModel
from dvqvae_model.io import config_from_dict, config_to_dict
from dvqvae_model.pipeline.force_closure import simplex_min_norm as _simplex_min_norm

__all__ = [
    "METRIC_NAMES",
    "REJECT_REASONS",
    "SYNTH_VERSION",
    "GraspSynthesizer",
    "HandBatch",
    "HandPrior",
    "ObjectContext",
    "ObjectGrasps",
    "OptimisationResult",
    "SynthConfig",
    "fast_penetration_volume",
    "object_seed",
    "params_from_batch",
    "rotation_matrix",
]

SYNTH_VERSION = "synth-1"
REJECT_REASONS: tuple[str, ...] = (
    "culled",  # dropped half-way by the multi-start culling (not a failed grasp, a budget decision)
    "invalid",  # non-finite parameters (numerical failure of the optimisation)
    "few_digits",  # fewer than ``min_digits`` digits touch the object
    "self_collision",  # fingers interpenetrate
    "deep_penetration",  # a hand vertex or collision sphere deep inside the object (SDF pre-check)
    "penetration",  # exact penetration volume >= the limit
    "unstable",  # pybullet displacement >= the limit (protocol gravity, +y)
    "unstable_palm_away",  # holds under +y gravity but not when gravity pulls the object out of the palm
    "duplicate",  # too close to an already accepted grasp of this object
    "quota",  # not checked: the object's grasp quota was already filled
)
# per-grasp metrics stored in the dataset (dataset_format's defaults first)
METRIC_NAMES: tuple[str, ...] = (
    "displacement_cm",
    "penetration_cm3",
    "contact",
    "max_axis_displacement_cm",
    "palm_away_displacement_cm",
    "num_digits",
    "max_depth_mm",
    "energy",
    "force_closure",
)


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the synthesizer (defaults: the dataset run)."""

    hands_per_object: int = 96
    steps: int = 100
    cull_at: float = 0.4  # fraction of steps after which the worse hands are dropped (0: never)
    cull_keep: float = 0.5  # share of hands (per type) kept at the cull
    max_grasps_per_object: int = 40  # stop checking once this many are accepted (0: no cap)
    types: tuple[str, ...] = tuple(GRASP_TYPES)
    beta_std: float = 1.0
    beta_clip: float = 2.5
    # shape coefficients sampled (the rest stay 0); the stand-in's 10th shape direction is a
    # high-frequency displacement field (surface roughness +45 % per unit), so it is left out
    beta_dims: int = 9
    # optimiser
    lr_rotation: float = 0.03  # rad
    lr_translation: float = 0.003  # m
    lr_joints: float = 0.05  # rad
    lr_final_factor: float = 0.05
    # energy (distances in mm)
    contact_target_mm: float = -1.0
    softmin_mm: float = 1.5
    w_contact: float = 5.0
    w_penetration: float = 2.0
    w_object_penetration: float = 3.0
    w_self: float = 2.0
    w_force_closure: float = 10.0
    w_prior: float = 2.0
    fc_contact_mm: float = 3.0  # regions closer than this take part in force closure
    # initialisation
    init_tilt_deg: float = 15.0
    init_joint_jitter_deg: float = 6.0
    init_alpha: tuple[float, float] = (0.55, 1.0)  # blend open (1) .. closed (0)
    # object context
    sdf_pitch: float = 0.003  # target grid spacing (m): thin walls (4-9 mm) need about 3 mm
    sdf_resolution: tuple[int, int] = (48, 112)  # bounds of the grid resolution per axis
    sdf_margin: float = 0.04
    object_points: int = 768  # surface points for object-into-hand penetration
    # acceptance
    min_digits: int = 3
    digit_contact_mm: float = 3.0
    max_self_overlap_mm: float = 2.0
    max_depth_mm: float = 6.0
    max_sphere_depth_mm: float = 4.0  # the object's solid this deep inside a collision sphere: reject early
    max_penetration_cm3: float = 2.0
    max_displacement_cm: float = 2.0
    duplicate_keypoint_cm: float = 1.0  # mean 21-keypoint distance under which two grasps are one
    penetration_pitch: float = 0.001
    # a second simulation with gravity pulling the object out of the palm (along the palm normal):
    # a hand that merely supports the object from below passes the protocol's +y check but is no grasp
    palm_away_check: bool = True
    robustness: bool = False  # also simulate gravity along +-x, +-y, +-z (recorded, not required)
    # large objects: what a person does with them is grasp a thin part (an edge, a rim, a neck, a
    # handle) across its thin direction. ``align_roll`` is the share of hands whose roll about the
    # approach turns the grasp's closing direction (fingers' curl for palm grasps, thumb -> fingers
    # for precision grasps) onto the thinnest chord of the object at the approach point, and whose
    # approach points favour places with a chord a hand can close over (``graspable_chord``).
    # Objects of ``large_extent`` or more get ``large_hands`` times the hands.
    align_roll: float = 0.0
    graspable_chord: float = 0.09
    large_extent: float = 0.15
    large_hands: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SynthConfig:
        return config_from_dict(cls, d)

    def fingerprint(self) -> str:
        """Hash of the settings. Fields added after the default set was made are left out while
        they hold their neutral value, so that set's fingerprint (and its resume) stays valid."""
        import json

        d = {k: v for k, v in self.to_dict().items() if not (k in _NEUTRAL and v == _NEUTRAL[k])}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]

    @classmethod
    def large_objects(cls, **kw: Any) -> SynthConfig:
        """The settings for objects of 15 cm and more (or any object left without grasps)."""
        return cls(**{"align_roll": 0.6, "large_hands": 2.0, **kw})


# fields added after the first dataset, with the value that reproduces the behaviour before them
_NEUTRAL: dict[str, Any] = {"align_roll": 0.0, "graspable_chord": 0.09, "large_extent": 0.15, "large_hands": 1.0}


def object_seed(object_id: str, seed: int) -> int:
    """64-bit seed of one object's synthesis, from its id and the run seed (order independent)."""
    return int.from_bytes(hashlib.sha256(f"{object_id}:{int(seed)}".encode()).digest()[:8], "big") & ((1 << 63) - 1)


# =============================================================================== rotations


def _skew(w: Tensor) -> Tensor:
    z = torch.zeros_like(w[..., 0])
    return torch.stack(
        [
            torch.stack([z, -w[..., 2], w[..., 1]], -1),
            torch.stack([w[..., 2], z, -w[..., 0]], -1),
            torch.stack([-w[..., 1], w[..., 0], z], -1),
        ],
        -2,
    )


def rotation_matrix(rotvec: Tensor) -> Tensor:
    """Rodrigues' formula, differentiable at zero: axis-angle [...,3] -> [...,3,3]."""
    theta2 = (rotvec * rotvec).sum(-1, keepdim=True)[..., None]
    theta = torch.sqrt(theta2 + 1e-16)
    K = _skew(rotvec)
    small = theta2 < 1e-8
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / (theta2 + 1e-16))
    eye = torch.eye(3, dtype=rotvec.dtype).expand(K.shape)
    return eye + a * K + b * (K @ K)


def _rotvec_np(R: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(np.asarray(R, np.float64)).as_rotvec()


# =============================================================================== hand-side constants


class HandPrior:
    """Everything the synthesizer needs to know about the hand, computed once from its rest pose.

    Contact regions (:func:`compute_hand_regions`), collision spheres (centre = mean of a ring of
    vertices, so they follow pose and shape; radius = inscribed at rest), the sphere pairs checked
    for finger-finger collisions, the anatomical joint frames and limits, and per grasp type the
    padded region index tables used in batched energies.
    """

    def __init__(self, hand: HandModel, types: Mapping[str, GraspType] | None = None):
        self.hand = hand
        self.meta = hand.meta
        self.types = dict(GRASP_TYPES if types is None else types)
        self.type_names = tuple(self.types)
        with torch.no_grad():
            rest = hand.rest()
        v = rest.vertices[0].double().numpy()
        j = rest.joints[0].double().numpy()
        faces = hand.faces.numpy().astype(np.int64)
        self.rest_vertices, self.rest_joints = v, j
        self.regions: HandRegions = compute_hand_regions(v, j, faces, self.meta)
        self.frames = torch.as_tensor(self.meta.joint_frames, dtype=torch.float32)  # [15,3,3]
        lim = torch.as_tensor(local_joint_limits(), dtype=torch.float32)  # [15,3,2]
        self.free = (lim[..., 1] - lim[..., 0]) > 1e-6  # [15,3]
        self.lim_lo = lim[..., 0][self.free]
        self.lim_hi = lim[..., 1][self.free]
        self.num_free = int(self.free.sum())
        self.part_ids = torch.as_tensor(self.meta.part_ids, dtype=torch.long)
        self.palm_normal = np.asarray(self.meta.palm_normal, np.float64)
        fdir = j[4] - j[0]
        fdir = fdir - (fdir @ self.palm_normal) * self.palm_normal
        self.finger_dir = fdir / np.linalg.norm(fdir)
        self._build_spheres(v, j, faces)
        self._build_type_tables()
        self.closing_angle = self._closing_angles()

    # ------------------------------------------------------------------ collision spheres
    def _build_spheres(self, v: np.ndarray, j: np.ndarray, faces: np.ndarray) -> None:
        mesh = trimesh.Trimesh(v, np.asarray(self.meta.sealed_faces), process=False)
        scene = _raycasting_scene(mesh)
        import open3d as o3d

        def inscribed(c: np.ndarray) -> np.ndarray:
            d = scene.compute_distance(o3d.core.Tensor(c.astype(np.float32))).numpy().astype(np.float64)
            inside = mesh_occupancy(mesh, c, scene=scene)
            return np.where(inside, d, -1.0)

        rings: list[np.ndarray] = []
        owner: list[int] = []  # digit 0..4, 5 = palm
        segment: list[int] = []  # 0 proximal .. 2 distal, -1 palm
        seg_of = self.regions.segment_of
        tips = v[np.asarray(self.meta.fingertip_ids)]
        fractions = ((0.2, 0.5, 0.8), (0.25, 0.75), (0.2, 0.55, 0.85))
        for d, js in enumerate(FINGER_JOINTS):
            pts = [j[js[0]], j[js[1]], j[js[2]], tips[d]]
            for k in range(3):
                a, b = pts[k], pts[k + 1]
                L = float(np.linalg.norm(b - a))
                axis = (b - a) / L
                ids = np.flatnonzero(seg_of == d * 3 + k)
                s = (v[ids] - a) @ axis
                for fr in fractions[k]:
                    pos = min(fr * L, L - 0.008) if k == 2 else fr * L
                    for half in (0.003, 0.005, 0.008):
                        ring = ids[np.abs(s - pos) <= half]
                        if len(ring) >= 5:
                            break
                    if len(ring) >= 3:
                        rings.append(ring)
                        owner.append(d)
                        segment.append(k)
        # palm: a grid in the palm plane; ring = palm vertices above/below the grid point
        pn = self.palm_normal
        u = self.finger_dir
        w = np.cross(pn, u)
        palm = np.flatnonzero(np.asarray(self.meta.part_ids) == 5)
        rel = v[palm] - j[0]
        pu, pw = rel @ u, rel @ w
        length = float((j[4] - j[0]) @ u)
        for su in np.arange(0.15, 0.95, 0.12) * length:
            for sw in np.arange(-0.04, 0.0401, 0.01):
                near = palm[np.hypot(pu - su, pw - sw) <= 0.006]
                if len(near) < 4:
                    continue
                up = (v[near] - j[0]) @ pn
                if up.max() - up.min() < 0.01:  # needs both palm surfaces (a column through the palm)
                    continue
                rings.append(near)
                owner.append(5)
                segment.append(-1)
        centres = np.stack([v[r].mean(0) for r in rings])
        radius = inscribed(centres) * 0.95
        keep = radius > 0.004
        self.sphere_rings_list = [r for r, k in zip(rings, keep) if k]
        self.sphere_owner = np.asarray(owner)[keep]
        self.sphere_segment = np.asarray(segment)[keep]
        self.sphere_radius_np = radius[keep]
        K = max(len(r) for r in self.sphere_rings_list)
        idx = np.zeros((len(self.sphere_rings_list), K), np.int64)
        wgt = np.zeros((len(self.sphere_rings_list), K), np.float32)
        for s, r in enumerate(self.sphere_rings_list):
            idx[s, : len(r)] = r
            wgt[s, : len(r)] = 1.0 / len(r)
        self.sphere_idx = torch.as_tensor(idx)
        self.sphere_w = torch.as_tensor(wgt)
        self.sphere_radius = torch.as_tensor(self.sphere_radius_np, dtype=torch.float32)
        # finger-finger pairs: different digits; a digit's proximal spheres never against the palm;
        # pairs already touching at rest (neighbouring knuckles, thumb web) are left out
        c = centres[keep]
        r = self.sphere_radius_np
        S = len(c)
        o, sg = self.sphere_owner, self.sphere_segment
        dist = np.linalg.norm(c[:, None] - c[None], axis=-1)
        pair = (o[:, None] != o[None]) & (dist > r[:, None] + r[None] + 0.002)
        palm_pair = (o[:, None] == 5) | (o[None] == 5)
        proximal = (sg[:, None] == 0) | (sg[None] == 0)
        pair &= ~(palm_pair & proximal)
        pair &= ~((o[:, None] == 5) & (o[None] == 5))
        iu = np.triu_indices(S, 1)
        sel = pair[iu]
        self.pair_i = torch.as_tensor(iu[0][sel])
        self.pair_j = torch.as_tensor(iu[1][sel])

    def spheres(self, vertices: Tensor) -> tuple[Tensor, Tensor]:
        """Collision sphere centres [B,S,3] of posed vertices [B,V,3] and radii [S]."""
        ring = vertices[:, self.sphere_idx]  # [B,S,K,3]
        return (ring * self.sphere_w[None, :, :, None]).sum(2), self.sphere_radius

    # ------------------------------------------------------------------ grasp-type tables
    def _build_type_tables(self) -> None:
        names = self.type_names
        rmax = max(len(self.types[n].contacts) for n in names)
        kmax = max(len(self.regions.ids[r]) for n in names for r in self.types[n].contacts)
        T = len(names)
        idx = np.zeros((T, rmax, kmax), np.int64)
        vmask = np.zeros((T, rmax, kmax), bool)
        rmask = np.zeros((T, rmax), bool)
        for t, n in enumerate(names):
            for r, reg in enumerate(self.types[n].contacts):
                ids = self.regions.ids[reg]
                idx[t, r, : len(ids)] = ids
                vmask[t, r, : len(ids)] = True
                rmask[t, r] = True
        self.type_region_idx = torch.as_tensor(idx)
        self.type_vertex_mask = torch.as_tensor(vmask)
        self.type_region_mask = torch.as_tensor(rmask)

    def _closing_angles(self) -> dict[str, float]:
        """Per type, the angle of its closing direction about the palm normal, from the finger
        direction (radians): 0 for grasps whose fingers curl (palm grasps, hook); for grasps with
        the thumb, the direction from the thumb's contacts to the fingers' in the closed pre-shape."""
        a = self.palm_normal
        u = self.finger_dir
        w = np.cross(a, u)
        out: dict[str, float] = {}
        for name, gt in self.types.items():
            thumb = [r for r in gt.contacts if r.startswith("thumb.")]
            fingers = [r for r in gt.contacts if r.split(".")[0] in FINGER_NAMES[1:]]
            if gt.anchor == "palm" or not thumb or not fingers:
                out[name] = 0.0
                continue
            theta = torch.as_tensor(self.local_pose(blend_local_degrees(gt, 0.0))[None], dtype=torch.float32)
            with torch.no_grad():
                z = torch.zeros(1, 3)
                v = self.hand(torch.zeros(1, 10), z, self.hand_pose(theta), z).vertices[0].double().numpy()
            c = v[np.concatenate([self.regions.ids[r] for r in fingers])].mean(0) - v[np.concatenate([self.regions.ids[r] for r in thumb])].mean(0)
            out[name] = float(np.arctan2(c @ w, c @ u))
        return out

    def local_pose(self, degrees: np.ndarray) -> np.ndarray:
        """Free anatomical angles (radians) [..., num_free] of full local degrees [...,15,3]."""
        return np.deg2rad(np.asarray(degrees))[..., self.free.numpy()]

    def hand_pose(self, theta_free: Tensor) -> Tensor:
        """45 axis-angle pose values [B,45] of the free anatomical angles [B,num_free] (linear)."""
        B = theta_free.shape[0]
        full = theta_free.new_zeros((B, 15, 3))
        full[:, self.free] = theta_free
        return torch.einsum("kac,bka->bkc", self.frames.to(theta_free), full).reshape(B, 45)


# =============================================================================== object context


@dataclass
class ObjectContext:
    """One object prepared for synthesis: mesh, grid SDF, surface samples, exact-geometry scene."""

    mesh: trimesh.Trimesh
    sdf: ObjectSDF
    points: Tensor  # [P,3] surface points (object-into-hand penetration)
    init_points: np.ndarray  # [N,3] candidate approach points
    init_normals: np.ndarray  # [N,3] their outward normals
    scene: Any  # open3d raycasting scene of the mesh (exact contact / occupancy)
    scale: float  # half the largest extent (m), normalises torques
    grid_error: float  # bound of the grid SDF's error (sqrt(3) * grid pitch), metres
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def build(cls, mesh: trimesh.Trimesh, config: SynthConfig, rng: np.random.Generator) -> ObjectContext:
        t0 = time.perf_counter()
        side = float(mesh.extents.max()) + 2 * config.sdf_margin
        lo_res, hi_res = config.sdf_resolution
        res = int(np.clip(math.ceil(side / config.sdf_pitch) + 1, lo_res, hi_res))
        sdf = ObjectSDF.from_mesh(mesh, resolution=res, margin=config.sdf_margin)
        t1 = time.perf_counter()
        seed = int(rng.integers(2**31))
        pts, _ = trimesh.sample.sample_surface(mesh, config.object_points, seed=seed)
        cand, cfid = trimesh.sample.sample_surface(mesh, 4 * config.hands_per_object + 64, seed=seed + 1)
        normals = np.asarray(mesh.face_normals[cfid], np.float64)
        # keep approach points that are visible from outside: the outward ray stays clear of the object
        c = torch.as_tensor(cand, dtype=torch.float32)
        n = torch.as_tensor(normals, dtype=torch.float32)
        steps = torch.tensor([0.01, 0.02, 0.035, 0.05])
        probe = c[:, None, :] + n[:, None, :] * steps[None, :, None]
        with torch.no_grad():
            clear = (sdf.query(probe.reshape(-1, 3)).reshape(len(c), -1) > 0.6 * steps[None]).all(1).numpy()
        if clear.sum() < 16:  # e.g. a tiny object inside its own bounds: fall back to all points
            clear[:] = True
        ctx = cls(
            mesh=mesh,
            sdf=sdf,
            points=torch.as_tensor(np.asarray(pts), dtype=torch.float32),
            init_points=np.asarray(cand, np.float64)[clear],
            init_normals=normals[clear],
            scene=_raycasting_scene(mesh),
            scale=float(mesh.extents.max() / 2),
            grid_error=float(math.sqrt(3.0) * float(sdf.pitch[0])),
        )
        ctx.timings = {"sdf_s": t1 - t0, "context_s": time.perf_counter() - t0}
        return ctx

    def local_width(self, points: np.ndarray, normals: np.ndarray, max_len: float = 0.3, step: float = 0.002) -> np.ndarray:
        """Thickness of the object along -normal from each surface point (first exit, metres)."""
        p = torch.as_tensor(points, dtype=torch.float32)
        n = torch.as_tensor(normals, dtype=torch.float32)
        ts = torch.arange(step, max_len, step)
        with torch.no_grad():
            q = p[:, None, :] - n[:, None, :] * ts[None, :, None]
            d = self.sdf.query(q.reshape(-1, 3)).reshape(len(p), -1)
        outside = d > 0
        first = torch.where(outside.any(1), outside.float().argmax(1), torch.full((len(p),), len(ts) - 1))
        return ts[first].numpy().astype(np.float64)

    def thinnest_chord(
        self, points: np.ndarray, normals: np.ndarray, directions: int = 12, max_len: float = 0.25, step: float = 0.003
    ) -> tuple[np.ndarray, np.ndarray]:
        """The thinnest direction across the object at each surface point and its chord length.

        From the middle of the local thickness below each point (half ``local_width`` along
        -normal, at most 2 cm deep), chords along ``directions`` directions perpendicular to the
        normal are measured to where they leave the object (both ways). Returns unit directions
        [N,3] and chord lengths [N] (metres): the line a hand closes across to hold that part.
        """
        p = np.asarray(points, np.float64)
        n = np.asarray(normals, np.float64)
        depth = np.minimum(0.5 * self.local_width(p, n), 0.02)
        q = p - n * depth[:, None]
        h = np.where(np.abs(n[:, :1]) < 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
        t1 = np.cross(n, h)
        t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
        t2 = np.cross(n, t1)
        ang = np.arange(directions) * np.pi / directions
        dirs = np.cos(ang)[None, :, None] * t1[:, None] + np.sin(ang)[None, :, None] * t2[:, None]  # [N,K,3]
        ts = torch.arange(step, max_len, step)
        chord = np.zeros((len(p), directions))
        with torch.no_grad():
            for sign in (1.0, -1.0):
                d = torch.as_tensor(sign * dirs, dtype=torch.float32)
                probe = torch.as_tensor(q, dtype=torch.float32)[:, None, None] + d[:, :, None] * ts[None, None, :, None]
                sd = self.sdf.query(probe.reshape(-1, 3)).reshape(len(p), directions, len(ts))
                out = sd > 0
                first = torch.where(out.any(-1), out.float().argmax(-1), torch.full(out.shape[:2], len(ts) - 1))
                chord += ts[first].numpy()
        k = chord.argmin(1)
        return dirs[np.arange(len(p)), k], chord[np.arange(len(p)), k]

    def exact_distance(self, points: np.ndarray) -> np.ndarray:
        """Exact signed distance (negative inside) of points [N,3] (open3d)."""
        import open3d as o3d

        pts = np.ascontiguousarray(points, dtype=np.float32)
        dist = self.scene.compute_distance(o3d.core.Tensor(pts)).numpy().astype(np.float64)
        inside = mesh_occupancy(self.mesh, pts, scene=self.scene)
        return np.where(inside, -dist, dist)


# =============================================================================== hand batches


@dataclass
class HandBatch:
    """Hands being optimised: pose as (R0, delta rotation about the anchor, anchor position)."""

    type_idx: Tensor  # [B] long, index into HandPrior.type_names
    betas: Tensor  # [B,10]
    theta: Tensor  # [B,num_free] anatomical angles (radians)
    theta0: Tensor  # [B,num_free] initial angles (prior)
    R0: Tensor  # [B,3,3]
    delta: Tensor  # [B,3] axis-angle applied on top of R0 (world frame, about the anchor)
    anchor_local: Tensor  # [B,3] anchor point in the hand's local (unposed-global) frame
    anchor_world: Tensor  # [B,3]

    def select(self, keep: Tensor) -> HandBatch:
        return HandBatch(**{f.name: getattr(self, f.name)[keep] for f in dataclasses.fields(self)})


def params_from_batch(hand: HandModel, prior: HandPrior, batch: HandBatch) -> Tensor:
    """MANO parameters [B,61] of the batch (global orientation about the rest wrist, then translation)."""
    with torch.no_grad():
        pose = prior.hand_pose(batch.theta)
        R = rotation_matrix(batch.delta) @ batch.R0
        zeros = torch.zeros_like(batch.delta)
        j0 = hand(batch.betas, zeros, pose, zeros).joints[:, 0]
        # v = R (v_loc - c_loc) + c_world = R (v_loc - j0) + j0 + transl
        transl = batch.anchor_world - (R @ batch.anchor_local[..., None])[..., 0] + (R @ j0[..., None])[..., 0] - j0
        Rn = R.double().numpy()
        ok = np.isfinite(Rn).all(axis=(1, 2))
        rv = np.full((len(Rn), 3), np.nan)
        if ok.any():
            rv[ok] = _rotvec_np(Rn[ok]).reshape(-1, 3)
        orient = torch.as_tensor(rv, dtype=torch.float32)
        return torch.cat([batch.betas, orient.reshape(-1, 3), pose, transl], dim=1)


@dataclass
class OptimisationResult:
    batch: HandBatch
    params: Tensor  # [B,61]
    vertices: Tensor  # [B,V,3]
    keypoints: Tensor  # [B,21,3]
    energy: Tensor  # [B] final total energy
    terms: dict[str, Tensor]  # [B] per term (unweighted)
    culled_types: Tensor  # [C] type index of every hand dropped by the cull
    seconds: float


@dataclass
class ObjectGrasps:
    """Accepted grasps of one object plus the bookkeeping of everything that was tried."""

    params: np.ndarray  # [G,61] float32
    types: list[str]  # [G]
    metrics: dict[str, np.ndarray]  # name -> [G]
    candidates: int
    rejected: dict[str, int]
    per_type: dict[str, dict[str, int]]  # type -> {"tried": n, "accepted": m}
    timings: dict[str, float]

    @property
    def accepted(self) -> int:
        return len(self.params)

    def summary(self) -> dict[str, Any]:
        return {
            "candidates": int(self.candidates),
            "accepted": int(self.accepted),
            "rejected": {k: int(v) for k, v in self.rejected.items()},
            "per_type": self.per_type,
            "timings": {k: round(float(v), 4) for k, v in self.timings.items()},
        }


# =============================================================================== penetration volume


def fast_penetration_volume(
    hand_vertices: np.ndarray,
    hand_sealed_faces: np.ndarray,
    ctx: ObjectContext,
    pitch: float = 0.001,
    block: int = 4,
    hand_far: float = 0.035,
) -> float:
    """Volume (m^3) inside both the sealed hand and the object, exactly as
    :func:`dvqvae_training.evaluate.metrics.penetration_volume` counts it (global lattice of cell centres
    (k + 1/2) * pitch in the bounding-box overlap, majority ray-parity occupancy of both meshes),
    but only where a lattice point can be inside both.

    The lattice is split into blocks of ``block``^3 points; a block is skipped when the exact
    signed distance of its centre to the object or to the hand exceeds the block's half diagonal
    (signed distance is 1-Lipschitz, so no point of the block can then be inside that mesh). For
    a grasp touching the object this leaves a thin shell around the contact; the result is the
    same count as the full lattice (tested in tests/test_synthesizer.py). Cheap bounds decide most
    blocks before any exact query: the grid SDF (error at most ``ctx.grid_error``) for the object,
    and for the hand the distance to its nearest vertex (every point inside the hand is within
    ``hand_far`` of a vertex: the palm's half thickness, about 2.2 cm on the stand-in, plus slack).
    """
    import open3d as o3d

    hv = np.asarray(hand_vertices, np.float64).reshape(-1, 3)
    axes = overlap_lattice(hv, np.asarray(ctx.mesh.bounds), pitch)
    if axes is None:
        return 0.0
    # blocks along each axis: start index, centre, half extent
    starts = [np.arange(0, len(a), block) for a in axes]
    cen, half = [], []
    for a, st in zip(axes, starts):
        last = np.minimum(st + block, len(a)) - 1
        cen.append(0.5 * (a[st] + a[last]))
        half.append(0.5 * (a[last] - a[st]))
    C = np.stack(np.meshgrid(*cen, indexing="ij"), -1).reshape(-1, 3)
    H = np.stack(np.meshgrid(*half, indexing="ij"), -1).reshape(-1, 3)
    rad = np.linalg.norm(H, axis=1) + 1e-7
    # object side: the grid SDF is within ``grid_error`` of the true distance; exact queries only
    # in the band where the grid cannot decide
    with torch.no_grad():
        gs = ctx.sdf.query(torch.as_tensor(C, dtype=torch.float32)).double().numpy()
    ok = gs <= rad + ctx.grid_error
    band = ok & (gs >= -(rad + ctx.grid_error))
    if band.any():
        ok[band] = ctx.exact_distance(C[band]) <= rad[band]
    if not ok.any():
        return 0.0
    # hand side: a point inside the hand lies within ``hand_far`` of a hand vertex, so farther
    # blocks are outside; exact signed distances for the rest
    from scipy.spatial import cKDTree

    cand = np.flatnonzero(ok)
    dv, _ = cKDTree(hv).query(C[cand], k=1)
    cand = cand[dv <= hand_far + rad[cand]]
    if len(cand) == 0:
        return 0.0
    hand_mesh = trimesh.Trimesh(hv, np.asarray(hand_sealed_faces, np.int64), process=False)
    hscene = _raycasting_scene(hand_mesh)
    Cq = C[cand]
    dist = hscene.compute_distance(o3d.core.Tensor(Cq.astype(np.float32))).numpy().astype(np.float64)
    inside = mesh_occupancy(hand_mesh, Cq, scene=hscene)
    d_hand = np.where(inside, -dist, dist)
    sel = cand[d_hand <= rad[cand]]
    if len(sel) == 0:
        return 0.0
    # fine lattice points of the selected blocks
    nb = [len(s) for s in starts]
    bi, bj, bk = np.unravel_index(sel, nb)
    offs = np.stack(np.meshgrid(*(np.arange(block),) * 3, indexing="ij"), -1).reshape(-1, 3)
    idx = np.stack([bi, bj, bk], 1)[:, None, :] * block + offs[None]  # [S,block^3,3]
    idx = idx.reshape(-1, 3)
    valid = (idx[:, 0] < len(axes[0])) & (idx[:, 1] < len(axes[1])) & (idx[:, 2] < len(axes[2]))
    idx = idx[valid]
    g = np.stack([axes[0][idx[:, 0]], axes[1][idx[:, 1]], axes[2][idx[:, 2]]], 1)
    in_obj = mesh_occupancy(ctx.mesh, g, scene=ctx.scene)
    g = g[in_obj]
    if len(g) == 0:
        return 0.0
    return float(mesh_occupancy(hand_mesh, g, scene=hscene).sum()) * pitch**3


# =============================================================================== the synthesizer


class GraspSynthesizer:
    """Batched grasp synthesis on one object at a time (see module doc)."""

    def __init__(self, hand: HandModel, config: SynthConfig = SynthConfig(), types: Mapping[str, GraspType] | None = None):
        unknown = [t for t in config.types if t not in (types or GRASP_TYPES)]
        if unknown:
            raise ValueError(f"unknown grasp types {unknown}; known: {sorted(types or GRASP_TYPES)}")
        all_types = dict(types or GRASP_TYPES)
        self.hand = hand
        self.config = config
        self.prior = HandPrior(hand, {n: all_types[n] for n in config.types})
        self.faces_np = hand.faces.numpy().astype(np.int64)
        self.sealed_np = np.asarray(hand.meta.sealed_faces, np.int64)
        self.digit_vertices = [torch.as_tensor(np.flatnonzero(hand.meta.part_ids == d)) for d in range(5)]

    # ------------------------------------------------------------------ initialisation
    def initial_hands(self, ctx: ObjectContext, rng: np.random.Generator, n: int | None = None) -> HandBatch:
        """Pre-shaped hands around the object (deterministic in ``rng``)."""
        cfg, pr = self.config, self.prior
        B = int(n or cfg.hands_per_object)
        names = pr.type_names
        w = np.array([pr.types[t].weight for t in names], np.float64)
        counts = np.floor(w / w.sum() * B).astype(int)
        for i in np.argsort(-(w / w.sum() * B - counts))[: B - counts.sum()]:
            counts[i] += 1
        type_idx = np.repeat(np.arange(len(names)), counts)
        # shape, joint angles
        betas = np.clip(rng.normal(0.0, cfg.beta_std, size=(B, 10)), -cfg.beta_clip, cfg.beta_clip)
        betas[:, max(0, min(10, cfg.beta_dims)) :] = 0.0
        alpha = rng.uniform(*cfg.init_alpha, size=B)
        deg = np.stack([blend_local_degrees(pr.types[names[t]], a) for t, a in zip(type_idx, alpha)])
        theta = pr.local_pose(deg) + np.deg2rad(cfg.init_joint_jitter_deg) * rng.normal(size=(B, pr.num_free))
        theta = np.clip(theta, pr.lim_lo.numpy(), pr.lim_hi.numpy())
        theta_t = torch.as_tensor(theta, dtype=torch.float32)
        betas_t = torch.as_tensor(betas, dtype=torch.float32)
        with torch.no_grad():
            z = torch.zeros(B, 3)
            local = self.hand(betas_t, z, pr.hand_pose(theta_t), z).vertices.double().numpy()
        # anchors in the local frame
        anchor_local = np.zeros((B, 3))
        for b in range(B):
            gt = pr.types[names[type_idx[b]]]
            regs = ("palm",) if gt.anchor == "palm" else gt.contacts
            ids = np.concatenate([pr.regions.ids[r] for r in regs])
            anchor_local[b] = local[b, ids].mean(0)
        # approach points and frames
        aligned = np.zeros(B, bool)
        if cfg.align_roll > 0:
            # one extra draw stream, so that the hands of align_roll = 0 are the same as before it
            arng = np.random.default_rng(rng.integers(2**63))
            thin_dir, chord = ctx.thinnest_chord(ctx.init_points, ctx.init_normals)
            aligned = arng.uniform(size=B) < cfg.align_roll
        pick = rng.choice(len(ctx.init_points), size=B, replace=len(ctx.init_points) < B)
        if aligned.any():
            # aligned hands favour places with a chord a hand can close over (an edge, a rim, a handle)
            ok = chord < cfg.graspable_chord
            w = np.where(ok, 1.0, 0.03)
            pick[aligned] = arng.choice(len(ctx.init_points), size=int(aligned.sum()), p=w / w.sum())
        p, nrm = ctx.init_points[pick], ctx.init_normals[pick]
        width = ctx.local_width(p, nrm)
        roll = rng.uniform(0.0, 2 * np.pi, size=B)
        tilt_axis = rng.normal(size=(B, 3))
        tilt = np.deg2rad(cfg.init_tilt_deg) * np.abs(rng.normal(size=B)).clip(0, 2.0)
        R0 = np.zeros((B, 3, 3))
        world = np.zeros((B, 3))
        a_loc, u_loc = pr.palm_normal, pr.finger_dir
        local_basis = np.stack([a_loc, u_loc, np.cross(a_loc, u_loc)], axis=1)  # columns
        for b in range(B):
            a_w = -nrm[b]  # palm normal points into the object
            h = np.array([1.0, 0.0, 0.0]) if abs(a_w[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
            t1 = np.cross(a_w, h)
            t1 /= np.linalg.norm(t1)
            t2 = np.cross(a_w, t1)
            if aligned[b]:
                # the closing direction sits at angle roll + phi in (t1, t2): put it on the thin chord
                d = thin_dir[pick[b]]
                phi = pr.closing_angle[names[type_idx[b]]]
                roll[b] = np.arctan2(d @ t2, d @ t1) - phi + arng.choice([0.0, np.pi]) + arng.normal(0.0, np.deg2rad(12.0))
            u_w = np.cos(roll[b]) * t1 + np.sin(roll[b]) * t2
            world_basis = np.stack([a_w, u_w, np.cross(a_w, u_w)], axis=1)
            R = world_basis @ local_basis.T
            ax = tilt_axis[b] - (tilt_axis[b] @ a_w) * a_w
            ax /= max(np.linalg.norm(ax), 1e-9)
            from scipy.spatial.transform import Rotation

            R0[b] = Rotation.from_rotvec(ax * tilt[b]).as_matrix() @ R
            gt = pr.types[names[type_idx[b]]]
            if gt.anchor == "palm":
                world[b] = p[b] + nrm[b] * gt.standoff
            else:
                world[b] = p[b] - nrm[b] * min(gt.depth, 0.5 * width[b])
        f32 = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)
        return HandBatch(
            type_idx=torch.as_tensor(type_idx, dtype=torch.long),
            betas=betas_t,
            theta=theta_t.clone(),
            theta0=theta_t.clone(),
            R0=f32(R0),
            delta=torch.zeros(B, 3),
            anchor_local=f32(anchor_local),
            anchor_world=f32(world),
        )

    # ------------------------------------------------------------------ energy
    def pose_hands(self, batch: HandBatch, theta: Tensor, delta: Tensor, anchor_world: Tensor) -> tuple[Tensor, Tensor]:
        """World vertices [B,V,3] and keypoints [B,21,3] of the batch with the given free variables."""
        z = torch.zeros_like(delta)
        out = self.hand(batch.betas, z, self.prior.hand_pose(theta), z)
        R = rotation_matrix(delta) @ batch.R0
        c = batch.anchor_local[:, None, :]
        v = ((out.vertices - c) @ R.transpose(1, 2)) + anchor_world[:, None, :]
        k = ((out.keypoints - c) @ R.transpose(1, 2)) + anchor_world[:, None, :]
        return v, k

    def energy_terms(
        self, ctx: ObjectContext, batch: HandBatch, vertices: Tensor, theta: Tensor
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Unweighted energies [B] per term, plus per-region soft-min distances [B,R] (mm) and region mask."""
        cfg, pr = self.config, self.prior
        B = vertices.shape[0]
        d = ctx.sdf.query(vertices.reshape(-1, 3)).reshape(B, -1) * 1000.0  # [B,V] mm (one grid, no batch expand)
        # contact regions of each hand's type
        ridx = pr.type_region_idx[batch.type_idx]  # [B,R,K]
        vmask = pr.type_vertex_mask[batch.type_idx]
        rmask = pr.type_region_mask[batch.type_idx]
        dr = torch.gather(d, 1, ridx.reshape(B, -1)).reshape(ridx.shape)
        tau = cfg.softmin_mm
        logits = (-dr / tau).masked_fill(~vmask, -1e9)
        dmin = -tau * torch.logsumexp(logits, dim=2)  # [B,R]
        err = dmin - cfg.contact_target_mm
        huber = torch.where(err.abs() < 2.0, 0.25 * err**2, err.abs() - 1.0)
        e_contact = (huber * rmask).sum(1)
        # hand into object
        pen = torch.relu(-d)
        e_pen = (pen + pen**2).sum(1)
        # object into hand: object points inside collision spheres
        centres, radii = pr.spheres(vertices)
        csdf = ctx.sdf.query(centres.reshape(-1, 3)).reshape(B, -1)
        # the object's solid inside a collision sphere (thin walls and rims slicing into a finger
        # between its vertices), plus sampled surface points inside the spheres (sharp edges the
        # grid SDF rounds off)
        solid = torch.relu(radii[None] - csdf) * 1000.0
        e_obj = (solid**2).sum(1) + _object_in_spheres(ctx.points, centres, radii, csdf.detach(), ctx.grid_error)
        # finger-finger
        cd = (centres.index_select(1, pr.pair_i) - centres.index_select(1, pr.pair_j)).norm(dim=-1) * 1000.0
        over = torch.relu((radii[pr.pair_i] + radii[pr.pair_j]) * 1000.0 - cd)
        e_self = (over**2).sum(1)
        # force closure over touching regions (weights on the simplex solved without gradient)
        w = torch.softmax(logits, dim=2)  # [B,R,K]
        x = (w[..., None] * torch.gather(vertices, 1, ridx.reshape(B, -1, 1).expand(-1, -1, 3)).reshape(*ridx.shape, 3)).sum(2)
        n = ctx.sdf.normals(x.reshape(-1, 3)).reshape(x.shape)  # outward normals [B,R,3]
        gate = rmask.float() * torch.sigmoid((cfg.fc_contact_mm - dmin) / 1.0)
        torque = torch.cross(x, n, dim=-1) / ctx.scale
        wrench = torch.cat([n, torque], dim=-1) * gate[..., None]  # [B,R,6]
        lam = _simplex_min_norm(wrench.detach(), gate.detach() > 0.05)
        net = (lam[..., None] * wrench).sum(1)
        e_fc = (net**2).sum(1)
        e_prior = ((theta - batch.theta0) ** 2).sum(1)
        terms = {
            "contact": e_contact,
            "penetration": e_pen,
            "object_penetration": e_obj,
            "self": e_self,
            "force_closure": e_fc,
            "prior": e_prior,
        }
        return terms, dmin, rmask

    def _weights(self, frac: float) -> dict[str, float]:
        cfg = self.config
        ramp = min(1.0, 0.2 + 0.8 * frac / 0.5)
        fc = min(1.0, max(0.0, (frac - 0.25) / 0.3))
        return {
            "contact": cfg.w_contact,
            "penetration": cfg.w_penetration * ramp,
            "object_penetration": cfg.w_object_penetration * ramp,
            "self": cfg.w_self,
            "force_closure": cfg.w_force_closure * fc,
            "prior": cfg.w_prior,
        }

    # ------------------------------------------------------------------ optimisation
    def optimise(self, ctx: ObjectContext, batch: HandBatch) -> OptimisationResult:
        """Adam on (rotation, anchor position, joint angles) with annealed weights (see module doc)."""
        cfg, pr = self.config, self.prior
        t0 = time.perf_counter()
        theta = batch.theta.clone().requires_grad_(True)
        delta = batch.delta.clone().requires_grad_(True)
        anchor = batch.anchor_world.clone().requires_grad_(True)
        groups = [
            {"params": [delta], "lr": cfg.lr_rotation},
            {"params": [anchor], "lr": cfg.lr_translation},
            {"params": [theta], "lr": cfg.lr_joints},
        ]
        opt = torch.optim.Adam(groups, betas=(0.9, 0.99))
        base = [g["lr"] for g in opt.param_groups]
        cull_step = int(cfg.cull_at * cfg.steps) if cfg.cull_at > 0 and cfg.cull_keep < 1 else -1
        culled = []
        lo, hi = pr.lim_lo, pr.lim_hi
        for step in range(cfg.steps):
            frac = step / max(1, cfg.steps - 1)
            scale = cfg.lr_final_factor + (1 - cfg.lr_final_factor) * 0.5 * (1 + math.cos(math.pi * frac))
            for g, b0 in zip(opt.param_groups, base):
                g["lr"] = b0 * scale
            wts = self._weights(frac)
            v, _ = self.pose_hands(batch, theta, delta, anchor)
            terms, _, _ = self.energy_terms(ctx, batch, v, theta)
            per_hand = sum(wts[k] * terms[k] for k in terms)
            opt.zero_grad(set_to_none=True)
            per_hand.sum().backward()
            opt.step()
            with torch.no_grad():
                theta.data = torch.maximum(torch.minimum(theta.data, hi), lo)
            if step == cull_step:
                keep = self._cull_mask(batch.type_idx, per_hand.detach())
                culled.append(batch.type_idx[~keep])
                batch = batch.select(keep)
                theta = theta.detach()[keep].requires_grad_(True)
                delta = delta.detach()[keep].requires_grad_(True)
                anchor = anchor.detach()[keep].requires_grad_(True)
                opt = _reindexed_adam(opt, [delta, anchor, theta], keep)
        with torch.no_grad():
            final = HandBatch(
                type_idx=batch.type_idx, betas=batch.betas, theta=theta.detach(), theta0=batch.theta0,
                R0=batch.R0, delta=delta.detach(), anchor_local=batch.anchor_local, anchor_world=anchor.detach(),
            )  # fmt: skip
            params = params_from_batch(self.hand, pr, final)
            # every later check runs on the hand the stored float32 parameters reproduce, so a
            # re-simulation from the dataset sees exactly the tested mesh (contacts are chaotic:
            # 1e-6 m can change a displacement by centimetres near the threshold)
            out = self.hand.from_params(params)
            v, kp = out.vertices, out.keypoints
            terms, _, _ = self.energy_terms(ctx, final, v, final.theta)
            wts = self._weights(1.0)
            energy = sum(wts[k] * terms[k] for k in terms)
        return OptimisationResult(
            batch=final,
            params=params,
            vertices=v,
            keypoints=kp,
            energy=energy,
            terms=terms,
            culled_types=torch.cat(culled) if culled else torch.zeros(0, dtype=torch.long),
            seconds=time.perf_counter() - t0,
        )

    def _cull_mask(self, type_idx: Tensor, energy: Tensor) -> Tensor:
        keep = torch.zeros_like(type_idx, dtype=torch.bool)
        for t in type_idx.unique():
            ids = torch.nonzero(type_idx == t)[:, 0]
            k = max(1, round(len(ids) * self.config.cull_keep))
            order = torch.argsort(energy[ids], stable=True)
            keep[ids[order[:k]]] = True
        return keep

    # ------------------------------------------------------------------ acceptance
    def synthesize(
        self,
        mesh: trimesh.Trimesh,
        seed: int = 0,
        object_id: str | None = None,
        simulator: Any = None,
        cache_dir: str | None = None,
    ) -> ObjectGrasps:
        """Optimise and check grasps on ``mesh``; deterministic in (object_id, seed)."""
        from dvqvae_training.synthesis.physics import GraspSimulator

        cfg, pr = self.config, self.prior
        oid = object_id if object_id is not None else _mesh_id(mesh)
        s = object_seed(oid, seed)
        rng = np.random.default_rng(s)
        torch.manual_seed(s & 0x7FFFFFFF)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        ctx = ObjectContext.build(mesh, cfg, rng)
        timings.update(ctx.timings)
        large = float(mesh.extents.max()) >= cfg.large_extent
        batch = self.initial_hands(ctx, rng, n=round(cfg.hands_per_object * cfg.large_hands) if large else None)
        t1 = time.perf_counter()
        res = self.optimise(ctx, batch)
        timings["optimise_s"] = time.perf_counter() - t1
        names = pr.type_names
        rejected = {r: 0 for r in REJECT_REASONS}
        per_type = {t: {"tried": 0, "accepted": 0} for t in names}
        for t in batch.type_idx.tolist():
            per_type[names[t]]["tried"] += 1
        rejected["culled"] = len(res.culled_types)
        # ---- cheap checks (batched)
        t2 = time.perf_counter()
        B = len(res.params)
        with torch.no_grad():
            d = ctx.sdf.query(res.vertices.reshape(-1, 3)).reshape(B, -1) * 1000.0
            digit_min = torch.stack([d[:, ids].min(1).values for ids in self.digit_vertices], 1)  # [B,5]
            centres, radii = pr.spheres(res.vertices)
            csdf = ctx.sdf.query(centres.reshape(-1, 3)).reshape(B, -1)
            sphere_depth = (torch.relu(radii[None] - csdf).amax(1) * 1000.0).numpy()
            cd = (centres[:, pr.pair_i] - centres[:, pr.pair_j]).norm(dim=-1)
            self_over = torch.relu(radii[pr.pair_i] + radii[pr.pair_j] - cd).amax(1) * 1000.0 if len(pr.pair_i) else torch.zeros(B)
        max_depth = torch.relu(-d.min(1).values).numpy()
        reason: list[str | None] = [None] * B
        vert_np = res.vertices.double().numpy()
        with torch.no_grad():
            Rw = rotation_matrix(res.batch.delta) @ res.batch.R0
            palm_world = (Rw @ torch.as_tensor(pr.palm_normal, dtype=torch.float32)).double().numpy()
        num_digits = np.zeros(B, np.int64)
        finite = torch.isfinite(res.params).all(1).numpy() & np.isfinite(vert_np).all(axis=(1, 2))
        for b in range(B):
            if not finite[b]:
                reason[b] = "invalid"
            elif self_over[b] > cfg.max_self_overlap_mm:
                reason[b] = "self_collision"
            elif max_depth[b] > cfg.max_depth_mm or sphere_depth[b] > cfg.max_sphere_depth_mm:
                reason[b] = "deep_penetration"
            elif int((digit_min[b] < cfg.digit_contact_mm + 1.0).sum()) < cfg.min_digits:  # grid pre-check, exact below
                reason[b] = "few_digits"
        # exact digit contacts on the survivors
        for b in range(B):
            if reason[b] is None:
                ed = ctx.exact_distance(vert_np[b])
                num_digits[b] = sum(int(ed[self.digit_vertices[k].numpy()].min() * 1000.0 < cfg.digit_contact_mm) for k in range(5))
                if num_digits[b] < cfg.min_digits:
                    reason[b] = "few_digits"
        timings["screen_s"] = time.perf_counter() - t2
        # ---- expensive checks in an order that mixes types and favours low energy
        order = _interleave_by_type(res.batch.type_idx.numpy(), res.energy.numpy())
        accepted: list[int] = []
        metrics: dict[str, list[float]] = {m: [] for m in METRIC_NAMES}
        kp_cm = res.keypoints.double().numpy() * 100.0
        own_sim = simulator is None
        t_pen = t_sim = 0.0
        sim = None
        try:
            for b in order:
                if reason[b] is not None:
                    continue
                if cfg.max_grasps_per_object and len(accepted) >= cfg.max_grasps_per_object:
                    reason[b] = "quota"
                    continue
                if accepted and cfg.duplicate_keypoint_cm > 0:
                    dist = np.linalg.norm(kp_cm[accepted] - kp_cm[b][None], axis=-1).mean(1)
                    if dist.min() < cfg.duplicate_keypoint_cm:
                        reason[b] = "duplicate"
                        continue
                ta = time.perf_counter()
                pen = fast_penetration_volume(vert_np[b], self.sealed_np, ctx, cfg.penetration_pitch) * 1e6
                t_pen += time.perf_counter() - ta
                if pen >= cfg.max_penetration_cm3:
                    reason[b] = "penetration"
                    continue
                ta = time.perf_counter()
                if sim is None:
                    sim = simulator if simulator is not None else GraspSimulator(mesh, cache_dir=cache_dir)
                    timings["vhacd_s"] = time.perf_counter() - ta
                    ta = time.perf_counter()
                disp = sim.displacement(vert_np[b], self.faces_np) * 100.0
                away = np.nan
                if disp < cfg.max_displacement_cm and cfg.palm_away_check:
                    g = palm_world[b] * float(np.linalg.norm(sim.config.gravity))
                    away = sim.displacement(vert_np[b], self.faces_np, gravity=g) * 100.0
                axes = np.nan
                ok = disp < cfg.max_displacement_cm and not (away >= cfg.max_displacement_cm)
                if ok and cfg.robustness:
                    axes = float(sim.displacements(vert_np[b][None], self.faces_np, directions="axes").max()) * 100.0
                t_sim += time.perf_counter() - ta
                if disp >= cfg.max_displacement_cm:
                    reason[b] = "unstable"
                    continue
                if away >= cfg.max_displacement_cm:
                    reason[b] = "unstable_palm_away"
                    continue
                accepted.append(b)
                metrics["displacement_cm"].append(disp)
                metrics["penetration_cm3"].append(pen)
                metrics["contact"].append(1.0)
                metrics["max_axis_displacement_cm"].append(axes)
                metrics["palm_away_displacement_cm"].append(away)
                metrics["num_digits"].append(float(num_digits[b]))
                metrics["max_depth_mm"].append(float(max_depth[b]))
                metrics["energy"].append(float(res.energy[b]))
                metrics["force_closure"].append(float(res.terms["force_closure"][b]))
        finally:
            if own_sim and sim is not None:
                sim.close()
        timings["penetration_s"] = t_pen
        timings["physics_s"] = t_sim
        timings["total_s"] = time.perf_counter() - t0
        for b in range(B):
            if reason[b] is not None:
                rejected[reason[b]] += 1
        for b in accepted:
            per_type[names[int(res.batch.type_idx[b])]]["accepted"] += 1
        accepted_sorted = sorted(accepted)  # stable storage order (by hand index)
        pos = [accepted.index(b) for b in accepted_sorted]
        return ObjectGrasps(
            params=res.params[accepted_sorted].numpy().astype(np.float32) if accepted else np.zeros((0, 61), np.float32),
            types=[names[int(res.batch.type_idx[b])] for b in accepted_sorted],
            metrics={k: np.asarray(v, np.float64)[pos] if v else np.zeros(0) for k, v in metrics.items()},
            candidates=len(batch.type_idx),
            rejected=rejected,
            per_type=per_type,
            timings=timings,
        )


# =============================================================================== helpers


def _object_in_spheres(points: Tensor, centres: Tensor, radii: Tensor, sphere_sdf: Tensor, slack: float) -> Tensor:
    """Sum over hands of squared depths (mm^2) of object points inside collision spheres -> [B].

    Overlapping (hand, point, sphere) triples are found without gradient: only spheres whose
    centre is within radius + ``slack`` (the grid SDF's error) of the surface can hold a surface
    point; their distances to the points are tabulated, and the differentiable distances are
    recomputed for the overlapping triples alone (a dense [B,P,S] backward pass costs ~10x more).
    """
    B = centres.shape[0]
    with torch.no_grad():
        # spheres farther from the surface than their radius hold no surface point (SDF bound)
        near = sphere_sdf < radii[None] + slack
        bs = torch.nonzero(near)  # [M,2]
        if len(bs) == 0:
            return centres.sum((1, 2)) * 0.0
        dist = torch.cdist(centres[bs[:, 0], bs[:, 1]][None], points[None])[0]  # [M,P]
        m, p = torch.nonzero(dist < radii[bs[:, 1]][:, None], as_tuple=True)
    if len(m) == 0:
        return centres.sum((1, 2)) * 0.0
    b, s = bs[m, 0], bs[m, 1]
    d = (points[p] - centres[b, s]).norm(dim=-1)
    depth = (radii[s] - d).clamp_min(0.0) * 1000.0
    return torch.zeros(B, dtype=centres.dtype).index_add(0, b, depth**2)


def _reindexed_adam(opt: torch.optim.Adam, new_params: list[Tensor], keep: Tensor) -> torch.optim.Adam:
    """A new Adam over ``new_params`` carrying over the moments of the kept rows."""
    groups = []
    for g, p in zip(opt.param_groups, new_params):
        groups.append({"params": [p], "lr": g["lr"]})
    new = torch.optim.Adam(groups, betas=opt.defaults["betas"])
    for g_old, p_new in zip(opt.param_groups, new_params):
        st = opt.state.get(g_old["params"][0])
        if st:
            new.state[p_new] = {
                "step": st["step"].clone() if torch.is_tensor(st["step"]) else st["step"],
                "exp_avg": st["exp_avg"][keep].clone(),
                "exp_avg_sq": st["exp_avg_sq"][keep].clone(),
            }
    return new


def _interleave_by_type(type_idx: np.ndarray, energy: np.ndarray) -> list[int]:
    """Hand indices, lowest energy first within each type, types taken round-robin."""
    queues = []
    for t in np.unique(type_idx):
        ids = np.flatnonzero(type_idx == t)
        queues.append(list(ids[np.argsort(energy[ids], kind="stable")]))
    out: list[int] = []
    while any(queues):
        for q in queues:
            if q:
                out.append(int(q.pop(0)))
    return out


def _mesh_id(mesh: trimesh.Trimesh) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(np.round(np.asarray(mesh.vertices, np.float64), 6)).tobytes())
    h.update(np.ascontiguousarray(np.asarray(mesh.faces, np.int64)).tobytes())
    return "mesh-" + h.hexdigest()[:12]
