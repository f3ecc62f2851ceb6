"""Rotation representations for regressing a hand's global orientation.

Why: MANO takes axis-angle, but axis-angle is discontinuous (it wraps at pi, and under the training's
uniform SO(3) augmentation many targets lie near the wrap), so an MLP regressing it is pulled
towards averages of far-apart rotations. The 6-D representation (two columns of the matrix,
Gram-Schmidt; Zhou et al., CVPR 2019) is continuous; decoders regress it and convert the matrix to
axis-angle only for the MANO parameters they publish. Every function is made of plain tensor ops
(no data-dependent Python branches), so the sampling graph still traces and exports.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ROTATION_REPRS", "rotation_dim", "rot6d_to_matrix", "matrix_to_axis_angle", "IDENTITY_6D"]

ROTATION_REPRS = ("axis_angle", "6d")
IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # first two columns of the identity


def rotation_dim(repr_name: str) -> int:
    if repr_name not in ROTATION_REPRS:
        raise ValueError(f"rotation must be one of {ROTATION_REPRS}, got {repr_name!r}")
    return 3 if repr_name == "axis_angle" else 6


def rot6d_to_matrix(x: Tensor) -> Tensor:
    """``[..., 6]`` (two 3-vectors, the matrix's first two columns before orthonormalisation) -> ``[..., 3, 3]``."""
    a1, a2 = x[..., 0:3], x[..., 3:6]
    b1 = a1 / a1.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    a2 = a2 - (b1 * a2).sum(-1, keepdim=True) * b1
    b2 = a2 / a2.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_axis_angle(m: Tensor) -> Tensor:
    """Rotation matrices ``[..., 3, 3]`` -> axis-angle ``[..., 3]`` (angle in [0, pi]), via the quaternion.

    The quaternion is taken from whichever of its four components is largest (Shepperd's method),
    so it is accurate for every rotation, including half turns where the trace formula breaks down.
    """
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # 4 * (w^2, x^2, y^2, z^2)
    sq = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], dim=-1)
    q_abs = torch.sqrt(sq.clamp(min=1e-12))
    # row r: 4 * q_r * (w, x, y, z), each accurate when q_r is large
    cand = torch.stack([
        torch.stack([sq[..., 0], m21 - m12, m02 - m20, m10 - m01], dim=-1),
        torch.stack([m21 - m12, sq[..., 1], m10 + m01, m02 + m20], dim=-1),
        torch.stack([m02 - m20, m10 + m01, sq[..., 2], m12 + m21], dim=-1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, sq[..., 3]], dim=-1),
    ], dim=-2) / (2.0 * q_abs.clamp(min=0.1)).unsqueeze(-1)
    best = q_abs.argmax(dim=-1, keepdim=True)  # [..., 1]
    quat = torch.gather(cand, -2, best.unsqueeze(-1).expand(*best.shape[:-1], 1, 4)).squeeze(-2)
    quat = quat * torch.where(quat[..., :1] < 0, -1.0, 1.0)  # w >= 0: angle in [0, pi]
    vec = quat[..., 1:]
    sin_half = vec.norm(dim=-1, keepdim=True)
    angle = 2.0 * torch.atan2(sin_half, quat[..., :1])
    small = sin_half < 1e-6
    scale = torch.where(small, 2.0 + angle * angle / 12.0, angle / sin_half.clamp(min=1e-6))
    return vec * scale
