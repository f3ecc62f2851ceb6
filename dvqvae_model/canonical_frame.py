"""The object's own frame: principal axes of its centred cloud, signs fixed by skewness.

A PointNet is not rotation-equivariant: under uniform SO(3) augmentation the position decoder has
to regress the hand's global orientation from an object seen in any orientation, which is what
kept the first bundled model's grasps 30 degrees off and deep in the object. Rotating every cloud
into its principal-axes frame before the model (and the grasps back after it) removes most of
that rotation: the model sees each object in (nearly) one orientation, whatever the camera's.

Frame rows are unit axes; ``x_canonical = R @ x_centred``. Axis 0 is the direction of largest
variance, axis 1 the second, axis 2 = axis 0 x axis 1 (a proper rotation, det +1). The sign of
axes 0 and 1 makes the third moment of the points along them non-negative (the heavier tail
points along +axis). Symmetric objects leave some axes or signs undetermined; their grasps are
then equally valid in either choice, so the model only sees more variety there.
"""
from __future__ import annotations

import numpy as np

__all__ = ["INPUT_FRAMES", "principal_frame", "check_input_frame"]

INPUT_FRAMES = ("centred", "principal")


def check_input_frame(frame: str) -> str:
    if frame not in INPUT_FRAMES:
        raise ValueError(f"input_frame must be one of {INPUT_FRAMES}, got {frame!r}")
    return frame


def principal_frame(points: np.ndarray) -> np.ndarray:
    """Rotation ``R [3, 3]`` (rows = axes) taking centred ``points [N, 3]`` into their principal frame."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) < 3:
        raise ValueError(f"principal_frame needs points [N >= 3, 3], got shape {p.shape}")
    p = p - p.mean(axis=0)
    _, vecs = np.linalg.eigh(p.T @ p)  # ascending eigenvalues
    axes = vecs[:, ::-1].T.copy()  # rows: largest variance first
    for i in (0, 1):
        if np.sum((p @ axes[i]) ** 3) < 0.0:
            axes[i] = -axes[i]
    axes[2] = np.cross(axes[0], axes[1])
    return axes
