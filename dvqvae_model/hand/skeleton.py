"""Skeletal bend angles of the hand (paper eq. 7), used by the skeletal gating of the decoder.

Eq. 7 measures the interior angle at a joint between the bones to its neighbours
(pi for a straight finger). We return the *bend* ``pi - theta_i``, i.e. the angle between
consecutive bone vectors, so a flat finger gives 0 and a right-angle flexion gives pi/2; it carries
the same information and is better conditioned as a network input.

Output order (10 values): for each finger in part order thumb, index, middle, ring, pinky:
  [angle(wrist->j1, j1->j2), angle(j1->j2, j2->j3)]
with (j1, j2, j3) the finger's three MANO joints (thumb 13,14,15; index 1,2,3; middle 4,5,6;
ring 10,11,12; pinky 7,8,9). ``BEND_ANGLE_NAMES`` spells this out.

The angle is ``atan2(|u x v|, u . v)`` on unit vectors with a smoothed norm, which is accurate
near 0 and pi and has finite gradients everywhere (acos has an infinite slope at a straight
finger, where the gradient would be NaN).
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["BEND_ANGLE_NAMES", "FINGER_CHAINS", "bend_angles", "angle_between"]

# (j1, j2, j3) per finger in part order; the chain starts at the wrist (joint 0).
FINGER_CHAINS: tuple[tuple[int, int, int], ...] = ((13, 14, 15), (1, 2, 3), (4, 5, 6), (10, 11, 12), (7, 8, 9))
BEND_ANGLE_NAMES: tuple[str, ...] = tuple(
    f"{finger}_{joint}" for finger in ("thumb", "index", "middle", "ring", "pinky") for joint in ("j1", "j2")
)

_EPS = 1e-12


def _safe_unit(x: Tensor) -> Tensor:
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + _EPS)


def angle_between(u: Tensor, v: Tensor) -> Tensor:
    """Angle in [0, pi] between vectors u and v [..., 3], NaN-free value and gradient."""
    uu, vv = _safe_unit(u), _safe_unit(v)
    c = torch.linalg.cross(uu, vv, dim=-1)
    sin = torch.sqrt((c * c).sum(-1) + _EPS)
    cos = (uu * vv).sum(-1)
    return torch.atan2(sin, cos)


def bend_angles(joints: Tensor) -> Tensor:
    """Bend angles [B,10] (radians) from MANO-ordered joints [B,16,3]; see module docstring."""
    if joints.shape[-2:] != (16, 3):
        raise ValueError(f"bend_angles expects joints [...,16,3] in MANO order, got {list(joints.shape)}")
    idx = torch.tensor(FINGER_CHAINS, device=joints.device)  # [5,3]
    j1 = joints[..., idx[:, 0], :]
    j2 = joints[..., idx[:, 1], :]
    j3 = joints[..., idx[:, 2], :]
    wrist = joints[..., :1, :]
    b0, b1, b2 = j1 - wrist, j2 - j1, j3 - j2  # [...,5,3]
    a1 = angle_between(b0, b1)
    a2 = angle_between(b1, b2)
    return torch.stack([a1, a2], dim=-1).flatten(-2)  # [...,10]
