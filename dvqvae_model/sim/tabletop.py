"""Simulated tabletop scenes: several objects on a table, seen by a depth camera, with ground truth.

What a real depth camera delivers (the whole scene: table, every object) plus what only a
simulator knows: which object each pixel belongs to. Used by the fake camera node, the
segmentation benchmark and tests to measure segmentation (IoU of the chosen object's pixels).

Conventions follow ``dvqvae_model.sim.depth_camera``: optical camera frame, depth = z in metres,
``inf`` = no return. World frame: the table top is the plane z = 0 (normal +z), centred at the
origin; objects stand on it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import open3d as o3d
import open3d.core as o3c
import trimesh

from dvqvae_model.sim import depth_camera as dc

__all__ = ["TABLE", "TabletopScene", "make_tabletop_scene", "target_label", "noisy_frame", "pixel_iou",
           "TabletopCamera"]

TABLE = 0  # label of table pixels; objects are 1..K, misses are -1
TABLE_THICKNESS = 0.03


@dataclass
class TabletopScene:
    """A static scene rendered once: clean depth and per-pixel labels (-1 miss, 0 table, k = object k)."""

    intrinsics: dc.CameraIntrinsics
    cam_to_world: np.ndarray
    depth: np.ndarray  # [H, W] float32 metres, inf = miss
    labels: np.ndarray  # [H, W] int16
    meshes: list[trimesh.Trimesh] = field(default_factory=list)  # placed objects, world frame

    @property
    def table_normal_cam(self) -> np.ndarray:
        """The table's up normal in the camera frame (what a segmenter's expected normal is)."""
        return self.cam_to_world[:3, :3].T @ np.array([0.0, 0.0, 1.0])

    def object_mesh_cam(self, label: int) -> trimesh.Trimesh:
        """Object ``label`` (1..K) posed in the camera frame."""
        mesh = self.meshes[label - 1].copy()
        mesh.apply_transform(np.linalg.inv(self.cam_to_world))
        return mesh


def _place(meshes: Sequence[trimesh.Trimesh], rng: np.random.Generator, spread: float, gap: float,
           touching: bool, first_fixed: bool = False) -> list[trimesh.Trimesh]:
    """Rotate each mesh about z at random, stand it on z = 0, spread them without overlap (footprint
    circles at least ``gap`` apart; ``touching`` puts the second object against the first)."""
    placed: list[trimesh.Trimesh] = []
    discs: list[tuple[np.ndarray, float]] = []
    for i, mesh in enumerate(meshes):
        m = mesh.copy()
        if not (first_fixed and i == 0):
            m.apply_transform(trimesh.transformations.rotation_matrix(rng.uniform(0, 2 * math.pi), [0, 0, 1]))
        lo, hi = m.bounds
        m.apply_translation([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]])
        radius = float(np.linalg.norm(np.asarray(m.vertices)[:, :2], axis=1).max())
        for _ in range(500):
            if i == 0:
                xy = np.zeros(2) if first_fixed else rng.uniform(-0.03, 0.03, 2)
            elif touching and i == 1:
                a = rng.uniform(0, 2 * math.pi)
                xy = discs[0][0] + (discs[0][1] + radius) * np.array([math.cos(a), math.sin(a)])
            else:
                xy = rng.uniform(-spread, spread, 2)
            if (touching and i == 1) or all(np.linalg.norm(xy - c) >= r + radius + gap for c, r in discs):
                break
        else:
            raise ValueError(f"could not place {len(meshes)} objects {gap:g} m apart within +-{spread:g} m")
        if touching and i == 1:
            # Move back along the line of centres until the meshes' footprints (not circles) touch.
            d = xy - discs[0][0]
            d /= np.linalg.norm(d)
            first = np.asarray(placed[0].vertices)[:, :2]
            verts = np.asarray(m.vertices)[:, :2]
            reach_first = float(((first - discs[0][0]) @ d).max())
            reach_self = float((-(verts @ d)).max())
            xy = discs[0][0] + d * (reach_first + reach_self + 0.001)
        m.apply_translation([xy[0], xy[1], 0.0])
        placed.append(m)
        discs.append((np.asarray(xy, dtype=np.float64), radius))
    return placed


def make_tabletop_scene(
    meshes: Sequence[trimesh.Trimesh],
    rng: np.random.Generator,
    *,
    intrinsics: dc.CameraIntrinsics | None = None,
    distance: float | tuple[float, float] = (0.5, 0.8),
    elevation_deg: float | tuple[float, float] = (35.0, 75.0),
    azimuth_deg: float | None = None,
    roll_deg: float | tuple[float, float] = (-15.0, 15.0),
    table_size: float = 1.0,
    table: bool = True,
    spread: float = 0.2,
    gap: float = 0.03,
    touching: bool = False,
    look_at_xy: tuple[float, float] | None = None,
    first_fixed: bool = False,
) -> TabletopScene:
    """Place ``meshes`` on a table and render them from a camera aimed at the first object.

    Ranges (lo, hi) are drawn uniformly from ``rng``. ``roll_deg`` rolls the camera about its axis (the
    table appears at an angle in the image). ``look_at_xy`` aims the camera elsewhere on the table
    (e.g. so that an object touches the image border). ``first_fixed`` keeps the first object unrotated at the
    table centre.
    """
    intrinsics = intrinsics or dc.CameraIntrinsics()

    def draw(v: float | tuple[float, float]) -> float:
        return float(rng.uniform(*v)) if isinstance(v, tuple) else float(v)

    placed = _place(meshes, rng, spread, gap, touching, first_fixed)
    scene = o3d.t.geometry.RaycastingScene()
    ids: dict[int, int] = {}
    for k, m in enumerate(placed, start=1):
        gid = scene.add_triangles(o3c.Tensor(np.ascontiguousarray(m.vertices, dtype=np.float32)),
                                  o3c.Tensor(np.ascontiguousarray(m.faces, dtype=np.uint32)))
        ids[int(gid)] = k
    if table:
        slab = trimesh.creation.box(extents=(table_size, table_size, TABLE_THICKNESS))
        slab.apply_translation([0.0, 0.0, -TABLE_THICKNESS / 2])
        gid = scene.add_triangles(o3c.Tensor(np.ascontiguousarray(slab.vertices, dtype=np.float32)),
                                  o3c.Tensor(np.ascontiguousarray(slab.faces, dtype=np.uint32)))
        ids[int(gid)] = TABLE
    first = placed[0]
    target = np.array([*(first.bounds.mean(axis=0)[:2] if look_at_xy is None else look_at_xy),
                       first.bounds[1, 2] / 2])
    az = math.radians(draw((0.0, 360.0)) if azimuth_deg is None else azimuth_deg)
    el = math.radians(draw(elevation_deg))
    direction = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    pose = dc.look_at(target + draw(distance) * direction, target, (0.0, 0.0, 1.0))
    roll = math.radians(draw(roll_deg))
    c, s = math.cos(roll), math.sin(roll)
    pose[:3, :3] = pose[:3, :3] @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

    dirs = dc._pixel_rays(intrinsics) @ pose[:3, :3].T
    rays = np.empty((intrinsics.height, intrinsics.width, 6), dtype=np.float32)
    rays[..., :3] = pose[:3, 3]
    rays[..., 3:] = dirs
    hit = scene.cast_rays(o3c.Tensor(rays))
    t = hit["t_hit"].numpy()
    gids = hit["geometry_ids"].numpy().astype(np.int64)
    ok = np.isfinite(t) & (t > 0)
    depth = np.where(ok, t, np.inf).astype(np.float32)
    lut = np.full(max(ids) + 2, -1, dtype=np.int16)
    for gid, label in ids.items():
        lut[gid] = label
    labels = np.where(ok, lut[np.where(ok, gids, max(ids) + 1)], -1).astype(np.int16)
    return TabletopScene(intrinsics, pose, depth, labels, placed)


def noisy_frame(scene: TabletopScene, rng: np.random.Generator, noise: float = 1.0,
                dropout: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(noisy depth [H, W] float32 with inf = miss, labels with lost returns set to -1)."""
    depth = scene.depth
    if noise > 0 or dropout > 0:
        depth = dc.add_depth_noise(depth, rng, 0.001 * noise, 0.0019 * noise, dropout=dropout)
    labels = np.where(np.isfinite(depth), scene.labels, -1).astype(np.int16)
    return depth, labels


def target_label(depth: np.ndarray, labels: np.ndarray, intrinsics: dc.CameraIntrinsics,
                 min_pixels: int = 100) -> int:
    """The object the segmenter's ``nearest_axis`` rule should pick: the visible object (>= ``min_pixels``
    pixels) whose points' centroid makes the smallest angle with the optical axis; 0 if none."""
    points = dc.depth_to_points(np.where(labels > 0, depth, np.inf), intrinsics, organized=True)
    best, best_angle = 0, math.inf
    for k in np.unique(labels[labels > 0]):
        p = points[labels == k]
        if len(p) < min_pixels:
            continue
        c = p.mean(axis=0)
        angle = math.atan2(math.hypot(c[0], c[1]), c[2])
        if angle < best_angle:
            best, best_angle = int(k), angle
    return best


def pixel_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean pixel masks (1.0 when both are empty)."""
    predicted, truth = np.asarray(predicted, bool), np.asarray(truth, bool)
    union = np.count_nonzero(predicted | truth)
    return 1.0 if union == 0 else np.count_nonzero(predicted & truth) / union


class TabletopCamera:
    """A static tabletop scene and camera: noisy frames on demand, with the target object's true pixels.

    The target is the object the camera is aimed at (``target_label`` of the clean render), what the
    segmenter's default ``nearest_axis`` rule should pick.
    """

    def __init__(self, scene: TabletopScene) -> None:
        self.scene = scene
        self.target = target_label(scene.depth, scene.labels, scene.intrinsics)

    @property
    def intrinsics(self) -> dc.CameraIntrinsics:
        return self.scene.intrinsics

    def capture(self, rng: np.random.Generator, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """(noisy depth [H, W] float32 metres, inf = no return; boolean mask of the target's pixels)."""
        depth, labels = noisy_frame(self.scene, rng, noise=noise)
        return depth, labels == self.target if self.target else np.zeros(labels.shape, dtype=bool)
