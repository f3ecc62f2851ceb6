"""Grasp types for the synthesizer: pre-shapes (joint angles) and which hand regions should touch.

Each :class:`GraspType` names a human grasp of the usual taxonomies (power wrap, precision pinch,
tripod, lateral/key grip, spherical power grasp, hook, precision disk) by

- two postures written as twist/spread/bend angles per joint (degrees, the convention of
  :mod:`dvqvae_model.hand.hand_poses`, so they mean the same on any MANO-layout hand): ``open`` (the
  hand approaching the object) and ``closed`` (the type's characteristic closed posture); the
  synthesizer starts from a random blend of the two plus jitter, the optimiser does the rest;
- the contact regions that should touch the object (finger pads per phalanx, the palm, the radial
  side of the index finger), which drive the contact and force-closure terms;
- how the hand is placed: ``"palm"`` puts the palm pad at a small stand-off from the surface
  (power grasps), ``"contacts"`` puts the centroid of the contact regions just below the surface
  so that the object part lies between the opposing digits (precision grasps, hook).

Contact regions are derived from the hand's own rest geometry (skinning parts, bone segments,
vertex normals, the anatomical joint frames of :class:`HandMetadata`), never from a hard-coded
vertex list, so they work for the stand-in hand and for MANO alike.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dvqvae_model.hand.hand_metadata import (
    FINGER_JOINTS,
    FINGER_NAMES,
    local_joint_limits,
    vertex_normals,
)
from dvqvae_model.hand.hand_poses import FingerAngles, PoseSpec, ThumbAngles

__all__ = [
    "GRASP_TYPES",
    "GRASP_TYPE_NAMES",
    "REGION_NAMES",
    "SEGMENT_NAMES",
    "GraspType",
    "HandRegions",
    "blend_local_degrees",
    "compute_hand_regions",
]

SEGMENT_NAMES: tuple[str, ...] = ("proximal", "middle", "distal")
# per digit: the three segments' pads; plus the radial side of the index (lateral grip) and the palm
REGION_NAMES: tuple[str, ...] = tuple(f"{f}.{s}" for f in FINGER_NAMES for s in SEGMENT_NAMES) + (
    "index.radial",
    "palm",
)


@dataclass(frozen=True)
class GraspType:
    """One grasp type: open/closed pre-shapes, the regions that should touch, the placement rule."""

    name: str
    description: str
    open: PoseSpec
    closed: PoseSpec
    contacts: tuple[str, ...]
    anchor: str = "palm"  # "palm" or "contacts" (see module doc)
    standoff: float = 0.008  # metres between palm pad and surface ("palm") at the start
    depth: float = 0.012  # metres the contact centroid goes below the surface ("contacts"), capped by half the local width
    weight: float = 1.0  # relative share of this type among the initial hands

    @property
    def digits(self) -> tuple[str, ...]:
        """Digits (thumb..pinky) that this type expects to touch the object."""
        seen = []
        for r in self.contacts:
            d = r.split(".")[0]
            if d in FINGER_NAMES and d not in seen:
                seen.append(d)
        return tuple(seen)


def _fingers(**kw: Any) -> dict[str, FingerAngles]:
    return {k: FingerAngles(*v) for k, v in kw.items()}


def _pads(digits: tuple[str, ...], segments: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{d}.{s}" for d in digits for s in segments)


_LONG = ("index", "middle", "ring", "pinky")

# Angles: FingerAngles(spread, mcp, pip, dip); ThumbAngles(cmc_twist, cmc_spread, cmc_bend, mcp_spread, mcp_bend, ip_bend).
GRASP_TYPES: dict[str, GraspType] = {
    # cylindrical power wrap: palm on the object, all fingers wrap around, thumb closes over them
    "power": GraspType(
        name="power",
        description="power wrap (cylindrical): palm and all digits around the object",
        open=PoseSpec(
            thumb=ThumbAngles(-20.0, 35.0, 10.0, 0.0, 5.0, 5.0),
            **_fingers(index=(0.0, 20.0, 15.0, 5.0), middle=(0.0, 20.0, 15.0, 5.0), ring=(0.0, 20.0, 15.0, 5.0), pinky=(-5.0, 20.0, 15.0, 5.0)),
        ),
        closed=PoseSpec(
            thumb=ThumbAngles(-25.0, 10.0, 30.0, -5.0, 20.0, 25.0),
            **_fingers(index=(0.0, 50.0, 60.0, 35.0), middle=(0.0, 55.0, 60.0, 35.0), ring=(0.0, 55.0, 60.0, 35.0), pinky=(-5.0, 60.0, 60.0, 35.0)),
        ),
        contacts=("palm", "thumb.middle", "thumb.distal") + _pads(_LONG, ("proximal", "middle", "distal")),
        anchor="palm",
        standoff=0.006,
        weight=1.5,
    ),
    # spherical power grasp: palm on the object, spread fingers cup it
    "spherical": GraspType(
        name="spherical",
        description="spherical power grasp: palm and spread fingers cup a round object",
        open=PoseSpec(
            thumb=ThumbAngles(-15.0, 40.0, 10.0, 0.0, 5.0, 5.0),
            **_fingers(index=(12.0, 15.0, 15.0, 5.0), middle=(3.0, 15.0, 15.0, 5.0), ring=(8.0, 15.0, 15.0, 5.0), pinky=(18.0, 15.0, 15.0, 5.0)),
        ),
        closed=PoseSpec(
            thumb=ThumbAngles(-20.0, 25.0, 30.0, 0.0, 15.0, 20.0),
            **_fingers(index=(12.0, 45.0, 45.0, 25.0), middle=(3.0, 45.0, 45.0, 25.0), ring=(8.0, 45.0, 45.0, 25.0), pinky=(18.0, 50.0, 45.0, 25.0)),
        ),
        contacts=("palm", "thumb.distal") + _pads(_LONG, ("middle", "distal")),
        anchor="palm",
        standoff=0.006,
    ),
    # prismatic precision pinch: thumb pad against the index and middle pads, ring/pinky tucked
    "pinch": GraspType(
        name="pinch",
        description="precision pinch: thumb pad opposes the index and middle pads; ring and pinky tucked",
        open=PoseSpec(
            thumb=ThumbAngles(0.0, 30.0, 25.0, 0.0, 5.0, 5.0),
            **_fingers(index=(0.0, 25.0, 20.0, 10.0), middle=(0.0, 25.0, 20.0, 10.0), ring=(0.0, 60.0, 70.0, 40.0), pinky=(0.0, 65.0, 70.0, 40.0)),
        ),
        closed=PoseSpec(
            thumb=ThumbAngles(0.0, 5.0, 35.0, -5.0, 15.0, 10.0),
            **_fingers(index=(0.0, 45.0, 40.0, 20.0), middle=(0.0, 50.0, 40.0, 20.0), ring=(0.0, 75.0, 85.0, 55.0), pinky=(0.0, 80.0, 85.0, 55.0)),
        ),
        contacts=("thumb.distal", "index.distal", "middle.distal"),
        anchor="contacts",
        depth=0.012,
    ),
    # tripod: thumb, index and middle tips around a small round part; ring and pinky relaxed
    "tripod": GraspType(
        name="tripod",
        description="tripod: thumb, index and middle finger tips around the object; ring and pinky relaxed",
        open=PoseSpec(
            thumb=ThumbAngles(-10.0, 35.0, 25.0, 0.0, 5.0, 5.0),
            **_fingers(index=(10.0, 25.0, 25.0, 10.0), middle=(-3.0, 30.0, 25.0, 10.0), ring=(-5.0, 40.0, 45.0, 20.0), pinky=(-10.0, 45.0, 45.0, 20.0)),
        ),
        closed=PoseSpec(
            thumb=ThumbAngles(-15.0, 15.0, 40.0, -5.0, 15.0, 15.0),
            **_fingers(index=(10.0, 45.0, 45.0, 20.0), middle=(-3.0, 50.0, 45.0, 20.0), ring=(-5.0, 60.0, 60.0, 30.0), pinky=(-10.0, 65.0, 60.0, 30.0)),
        ),
        contacts=("thumb.distal", "index.distal", "middle.distal"),
        anchor="contacts",
        depth=0.012,
    ),
    # precision disk: all five finger tips spread around the top of a round object
    "disk": GraspType(
        name="disk",
        description="precision disk: the five finger tips spread around the object, palm off it",
        open=PoseSpec(
            thumb=ThumbAngles(-20.0, 40.0, 20.0, 0.0, 5.0, 5.0),
            **_fingers(index=(14.0, 25.0, 20.0, 10.0), middle=(4.0, 25.0, 20.0, 10.0), ring=(9.0, 25.0, 20.0, 10.0), pinky=(19.0, 25.0, 20.0, 10.0)),
        ),
        closed=PoseSpec(
            thumb=ThumbAngles(-25.0, 25.0, 35.0, 0.0, 15.0, 15.0),
            **_fingers(index=(14.0, 45.0, 35.0, 20.0), middle=(4.0, 45.0, 35.0, 20.0), ring=(9.0, 50.0, 35.0, 20.0), pinky=(19.0, 55.0, 35.0, 20.0)),
        ),
        contacts=_pads(FINGER_NAMES, ("distal",)),
        anchor="contacts",
        depth=0.015,
    ),
    # lateral (key) grip: thumb pad presses the object against the side of the curled index finger
    "lateral": GraspType(
        name="lateral",
        description="lateral (key) grip: thumb pad against the radial side of the curled index, middle below",
        open=PoseSpec(
            thumb=ThumbAngles(-5.0, 30.0, 5.0, 0.0, 10.0, 10.0),
            **_fingers(index=(0.0, 45.0, 55.0, 25.0), middle=(0.0, 55.0, 60.0, 30.0), ring=(0.0, 70.0, 80.0, 45.0), pinky=(0.0, 75.0, 80.0, 45.0)),
        ),
        closed=PoseSpec(
            thumb=ThumbAngles(-5.0, 0.0, 10.0, 0.0, 20.0, 20.0),
            **_fingers(index=(0.0, 60.0, 65.0, 30.0), middle=(0.0, 70.0, 70.0, 35.0), ring=(0.0, 80.0, 85.0, 55.0), pinky=(0.0, 85.0, 85.0, 55.0)),
        ),
        contacts=("thumb.distal", "index.radial", "middle.middle", "middle.distal"),
        anchor="contacts",
        depth=0.008,
        weight=0.7,
    ),
    # hook: the four long fingers curled around a handle or rim, thumb and palm free
    "hook": GraspType(
        name="hook",
        description="hook: index to pinky curled around a handle or rim; thumb and palm off the object",
        open=PoseSpec(
            thumb=ThumbAngles(0.0, -5.0, 5.0, 0.0, 5.0, 5.0),
            **_fingers(index=(0.0, 10.0, 50.0, 30.0), middle=(0.0, 10.0, 50.0, 30.0), ring=(0.0, 10.0, 50.0, 30.0), pinky=(0.0, 10.0, 50.0, 30.0)),
        ),
        closed=PoseSpec(
            thumb=ThumbAngles(0.0, -10.0, 10.0, 0.0, 10.0, 10.0),
            **_fingers(index=(0.0, 20.0, 80.0, 55.0), middle=(0.0, 20.0, 80.0, 55.0), ring=(0.0, 20.0, 80.0, 55.0), pinky=(0.0, 25.0, 80.0, 55.0)),
        ),
        contacts=_pads(_LONG, ("middle", "distal")),
        anchor="contacts",
        depth=0.006,
        weight=0.6,
    ),
}
GRASP_TYPE_NAMES: tuple[str, ...] = tuple(GRASP_TYPES)


def blend_local_degrees(gt: GraspType, alpha: float | np.ndarray) -> np.ndarray:
    """Anatomical angles [...,15,3] (degrees) of ``(1 - alpha) * closed + alpha * open``, clipped to the limits."""
    a = np.asarray(alpha, dtype=np.float64)[..., None, None]
    out = (1.0 - a) * gt.closed.local_degrees() + a * gt.open.local_degrees()
    lim = np.rad2deg(local_joint_limits())
    return np.clip(out, lim[..., 0], lim[..., 1])


@dataclass
class HandRegions:
    """Vertex ids of every contact region of a hand model (rest geometry), see :data:`REGION_NAMES`.

    ``segment_of[v]`` is the digit segment (0..14 = digit * 3 + segment) a finger vertex belongs
    to (-1 for palm vertices); ``pad_dirs[d]`` the rest direction each digit's pad faces.
    """

    ids: dict[str, np.ndarray]
    segment_of: np.ndarray
    pad_dirs: np.ndarray

    def indices(self, names: tuple[str, ...] | list[str]) -> list[np.ndarray]:
        return [self.ids[n] for n in names]


def _seg_param(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ab = b - a
    t = np.clip(((p - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1), t


def compute_hand_regions(
    rest_vertices: np.ndarray,
    rest_joints: np.ndarray,
    faces: np.ndarray,
    meta: Any,
    pad_cos: float = 0.35,
) -> HandRegions:
    """Contact regions from the rest hand (mean shape, flat pose).

    A finger vertex belongs to the nearest of its digit's three bone segments (joint -> next joint,
    the last one ending at the fingertip vertex); it is a *pad* vertex if its normal faces the
    digit's pad direction (``cos > pad_cos``; pad direction = bend axis x bone axis of the
    anatomical joint frame). The radial side of the index finger: its middle and distal segment
    vertices facing the thumb. Palm: palm vertices facing along the palm normal within the central
    disc between wrist and knuckles (as ``HandMetadata.contact_ids`` defines it).
    """
    v = np.asarray(rest_vertices, np.float64)
    j = np.asarray(rest_joints, np.float64)
    f = np.asarray(faces, np.int64)
    normals = vertex_normals(v, f)
    part = np.asarray(meta.part_ids)
    tips = v[np.asarray(meta.fingertip_ids)]
    frames = np.asarray(meta.joint_frames)  # [15,3,3] rows: twist, spread, bend
    ids: dict[str, np.ndarray] = {}
    segment_of = np.full(len(v), -1, np.int64)
    pad_dirs = np.zeros((5, 3))
    for d, js in enumerate(FINGER_JOINTS):
        verts = np.flatnonzero(part == d)
        pts = [j[js[0]], j[js[1]], j[js[2]], tips[d]]
        dist = np.stack([_seg_param(v[verts], pts[k], pts[k + 1])[0] for k in range(3)], axis=1)
        seg = dist.argmin(axis=1)
        segment_of[verts] = d * 3 + seg
        for k in range(3):
            fr = frames[js[k] - 1]
            pad = np.cross(fr[2], fr[0])  # bend x twist = the direction the pad faces
            pad /= np.linalg.norm(pad)
            if k == 2:
                pad_dirs[d] = pad
            sel = verts[(seg == k) & (normals[verts] @ pad > pad_cos)]
            ids[f"{FINGER_NAMES[d]}.{SEGMENT_NAMES[k]}"] = sel
    # radial side of the index: facing the thumb's base, on the middle and distal segments
    idx = FINGER_JOINTS[1]
    bone = j[idx[2]] - j[idx[0]]
    bone /= np.linalg.norm(bone)
    towards = j[FINGER_JOINTS[0][0]] - j[idx[0]]
    radial = towards - (towards @ bone) * bone
    radial /= np.linalg.norm(radial)
    verts = np.flatnonzero((part == 1) & np.isin(segment_of, (4, 5)))
    ids["index.radial"] = verts[normals[verts] @ radial > 0.5]
    # palm pad
    pn = np.asarray(meta.palm_normal, np.float64)
    mcps = j[[1, 4, 7, 10]]
    centre = j[0] + 0.6 * (mcps.mean(axis=0) - j[0])
    radius = 0.5 * float(np.linalg.norm(mcps.mean(axis=0) - j[0]))
    rel = v - centre
    in_plane = rel - np.outer(rel @ pn, pn)
    ids["palm"] = np.flatnonzero((part == 5) & (normals @ pn > 0.7) & (np.linalg.norm(in_plane, axis=1) < radius))
    for name in REGION_NAMES:
        if len(ids[name]) == 0:
            raise ValueError(f"contact region {name!r} is empty on this hand model")
    return HandRegions(ids={n: ids[n].astype(np.int64) for n in REGION_NAMES}, segment_of=segment_of, pad_dirs=pad_dirs)


def type_table(types: Mapping[str, GraspType] | None = None) -> list[dict[str, Any]]:
    """Plain description of the grasp types (for the CLI and the dataset manifest)."""
    types = GRASP_TYPES if types is None else types
    return [
        {"name": t.name, "description": t.description, "contacts": list(t.contacts), "digits": list(t.digits), "anchor": t.anchor}
        for t in types.values()
    ]
