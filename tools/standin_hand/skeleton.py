"""Rest skeleton of the stand-in right hand in MANO's frame and joint order.

Why: every later step (implicit surface, skinning, joint regressor, shape
directions) is driven by one explicit skeleton, so the conventions live here.

Frame (MANO's): fingers point along -x, the thumb towards +z, the palm normal
is about -y (the back of the hand faces +y), the wrist joint sits near
(0.096, 0.006, 0.006) m. Joint order: 0 wrist, 1-3 index, 4-6 middle,
7-9 pinky, 10-12 ring, 13-15 thumb. Units: metres.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PARENTS = np.array([-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14], dtype=np.int64)
WRIST = np.array([0.0957, 0.0064, 0.0062])
PALM_NORMAL = np.array([0.0, -1.0, 0.0])

#: finger name -> the three MANO joints of its chain (proximal to distal).
FINGER_JOINTS: dict[str, tuple[int, int, int]] = {
    "thumb": (13, 14, 15),
    "index": (1, 2, 3),
    "middle": (4, 5, 6),
    "ring": (10, 11, 12),
    "pinky": (7, 8, 9),
}
#: part order used everywhere in the project: thumb, index, middle, ring, pinky, palm.
PART_NAMES = ("thumb", "index", "middle", "ring", "pinky", "palm")

#: bone lengths in metres: wrist->first joint, then the three segments to the tip.
BONE_LENGTHS: dict[str, tuple[float, float, float, float]] = {
    "index": (0.091, 0.033, 0.022, 0.024),
    "middle": (0.095, 0.032, 0.023, 0.027),
    "ring": (0.086, 0.029, 0.025, 0.024),
    "pinky": (0.082, 0.021, 0.019, 0.019),
    "thumb": (0.039, 0.031, 0.027, 0.035),
}


@dataclass(frozen=True)
class FingerSpec:
    """Placement and thickness of one finger chain.

    base_yz: (y, z) of the first chain joint (MCP; CMC for the thumb) except
    for the thumb, whose first joint is placed by `base_dir`.
    dirs: unit directions of the three segments (first joint -> ... -> tip).
    radii: half-widths (m) at first joint, second, third and at the tip.
    """

    name: str
    base_yz: tuple[float, float]
    dirs: tuple[tuple[float, float, float], ...]
    radii: tuple[float, float, float, float]
    flatten: float = 0.86  # palmar-dorsal thickness / width of the cross-section
    base_dir: tuple[float, float, float] | None = None


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _finger_dirs(splay_deg: float, pitch_deg: tuple[float, float, float]) -> tuple:
    """Segment directions: pointing -x, splayed in the palm plane, pitched to the palm."""
    out = []
    a = np.deg2rad(splay_deg)
    for p in pitch_deg:
        b = np.deg2rad(p)
        out.append(tuple(_unit([-np.cos(a) * np.cos(b), -np.sin(b), np.sin(a) * np.cos(b)])))
    return tuple(out)


FINGERS: dict[str, FingerSpec] = {
    "index": FingerSpec("index", (0.0030, 0.0290), _finger_dirs(6.0, (2.0, 5.0, 7.0)),
                        (0.0115, 0.0105, 0.0095, 0.0086)),
    "middle": FingerSpec("middle", (0.0060, 0.0060), _finger_dirs(0.5, (2.0, 5.0, 7.0)),
                         (0.0118, 0.0108, 0.0097, 0.0088)),
    "ring": FingerSpec("ring", (0.0040, -0.0155), _finger_dirs(-6.0, (2.0, 5.0, 7.0)),
                       (0.0112, 0.0101, 0.0091, 0.0083)),
    "pinky": FingerSpec("pinky", (0.0000, -0.0360), _finger_dirs(-13.0, (2.0, 5.0, 7.0)),
                        (0.0101, 0.0090, 0.0081, 0.0074)),
    "thumb": FingerSpec("thumb", (0.0, 0.0),
                        (tuple(_unit([-0.60, -0.25, 0.76])), tuple(_unit([-0.74, -0.18, 0.65])),
                         tuple(_unit([-0.84, -0.12, 0.53]))),
                        (0.0140, 0.0122, 0.0108, 0.0096), flatten=0.88,
                        base_dir=tuple(_unit([-0.62, -0.30, 0.72]))),
}


@dataclass
class Skeleton:
    """Joint positions (16,3), fingertip points (5,3 in PART order) and per-finger data."""

    joints: np.ndarray
    tips: dict[str, np.ndarray] = field(default_factory=dict)

    def chain_points(self, finger: str) -> np.ndarray:
        """(4,3): the three chain joints followed by the fingertip point."""
        j = FINGER_JOINTS[finger]
        return np.vstack([self.joints[list(j)], self.tips[finger][None]])

    def bone_direction(self, joint: int) -> np.ndarray:
        """Unit direction of the bone driven by `joint` (joint -> its child or tip)."""
        for name, js in FINGER_JOINTS.items():
            if joint in js:
                pts = self.chain_points(name)
                k = js.index(joint)
                return _unit(pts[k + 1] - pts[k])
        return np.array([-1.0, 0.0, 0.0])  # the wrist bone points along the hand

    def bend_axis(self, finger: str) -> np.ndarray:
        """Axis about which a positive rotation flexes the finger towards the palm."""
        pts = self.chain_points(finger)
        d = _unit(pts[-1] - pts[0])
        if finger == "thumb":
            # the thumb curls across the palm: towards -y and -z (towards the fingers)
            target = _unit(np.array([0.0, -1.0, -0.8]))
        else:
            target = PALM_NORMAL
        return _unit(np.cross(d, target))


def build_skeleton(scale: float = 1.0) -> Skeleton:
    """Place the 16 joints and the 5 fingertips from the bone lengths above."""
    joints = np.zeros((16, 3))
    joints[0] = WRIST
    tips: dict[str, np.ndarray] = {}
    for name, spec in FINGERS.items():
        lengths = np.array(BONE_LENGTHS[name]) * scale
        js = FINGER_JOINTS[name]
        if spec.base_dir is not None:
            base = WRIST + lengths[0] * np.array(spec.base_dir)
        else:
            y, z = spec.base_yz
            dy, dz = y - WRIST[1], z - WRIST[2]
            dx = -np.sqrt(lengths[0] ** 2 - dy ** 2 - dz ** 2)
            base = WRIST + np.array([dx, dy, dz])
        p = base
        joints[js[0]] = p
        for k in range(3):
            p = p + lengths[k + 1] * np.array(spec.dirs[k])
            if k < 2:
                joints[js[k + 1]] = p
        tips[name] = p
    return Skeleton(joints=joints, tips=tips)
