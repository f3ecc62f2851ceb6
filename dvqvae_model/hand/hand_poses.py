"""Named hand poses (rest, fist, pinch, grasp-like, ...) as anatomical joint angles.

Poses are written as twist/spread/bend angles per joint (degrees), so they mean the same thing on
any MANO-layout hand: :func:`pose_vector` maps them through the hand's joint frames
(``HandMetadata.joint_frames``, see :mod:`dvqvae_model.hand.hand_metadata`) into the 45 axis-angle
values. They stay inside the joint limits and double as grasp pre-shapes for the data synthesiser.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .hand_metadata import FINGER_JOINTS, FINGER_NAMES, HandMetadata, pose_from_local

__all__ = ["FingerAngles", "ThumbAngles", "PoseSpec", "NAMED_POSES", "pose_vector", "named_pose", "named_pose_params"]


@dataclass(frozen=True)
class FingerAngles:
    """A long finger in degrees: MCP spread (+ = away from the middle finger) and MCP/PIP/DIP bend."""

    spread: float = 0.0
    mcp: float = 0.0
    pip: float = 0.0
    dip: float = 0.0

    def local(self) -> np.ndarray:
        return np.array([[0.0, self.spread, self.mcp], [0.0, 0.0, self.pip], [0.0, 0.0, self.dip]])


@dataclass(frozen=True)
class ThumbAngles:
    """Thumb in degrees: CMC twist/spread(abduction)/bend (across the palm), MCP spread/bend, IP bend."""

    cmc_twist: float = 0.0
    cmc_spread: float = 0.0
    cmc_bend: float = 0.0
    mcp_spread: float = 0.0
    mcp_bend: float = 0.0
    ip_bend: float = 0.0

    def local(self) -> np.ndarray:
        return np.array(
            [
                [self.cmc_twist, self.cmc_spread, self.cmc_bend],
                [0.0, self.mcp_spread, self.mcp_bend],
                [0.0, 0.0, self.ip_bend],
            ]
        )


@dataclass(frozen=True)
class PoseSpec:
    """One named hand pose: thumb plus the four long fingers."""

    thumb: ThumbAngles = field(default_factory=ThumbAngles)
    index: FingerAngles = field(default_factory=FingerAngles)
    middle: FingerAngles = field(default_factory=FingerAngles)
    ring: FingerAngles = field(default_factory=FingerAngles)
    pinky: FingerAngles = field(default_factory=FingerAngles)

    def local_degrees(self) -> np.ndarray:
        """Angles [15,3] (twist, spread, bend) in MANO joint order 1..15, degrees."""
        out = np.zeros((15, 3))
        for name, js in zip(FINGER_NAMES, FINGER_JOINTS):
            out[[j - 1 for j in js]] = getattr(self, name).local()
        return out


# Angles were chosen by hand and then refined on the stand-in by a small optimisation (thumb tip
# onto the index/middle middle phalanges for the fist, thumb and index pads together for the pinch)
# within the joint limits; they are plain numbers so every hand model gets the same posture.
NAMED_POSES: dict[str, PoseSpec] = {
    "rest": PoseSpec(),
    # all fingers curled into the palm, thumb folded over the index and middle fingers
    "fist": PoseSpec(
        thumb=ThumbAngles(cmc_twist=-34.0, cmc_spread=-15.0, cmc_bend=18.0, mcp_spread=-10.0, mcp_bend=20.0, ip_bend=47.0),
        index=FingerAngles(mcp=80.0, pip=90.0, dip=65.0),
        middle=FingerAngles(mcp=85.0, pip=90.0, dip=65.0),
        ring=FingerAngles(mcp=85.0, pip=90.0, dip=65.0),
        pinky=FingerAngles(mcp=85.0, pip=90.0, dip=65.0),
    ),
    # precision pinch: thumb pad meets index pad, the other fingers relaxed
    "pinch": PoseSpec(
        thumb=ThumbAngles(cmc_twist=1.0, cmc_spread=-9.0, cmc_bend=27.0, mcp_spread=-10.0, mcp_bend=11.0, ip_bend=2.0),
        index=FingerAngles(spread=15.0, mcp=41.0, pip=38.0, dip=23.0),
        middle=FingerAngles(mcp=30.0, pip=40.0, dip=20.0),
        ring=FingerAngles(mcp=35.0, pip=45.0, dip=20.0),
        pinky=FingerAngles(mcp=40.0, pip=45.0, dip=20.0),
    ),
    # cylindrical power grasp (about 5 cm diameter): fingers wrap, thumb opposes them
    "grasp": PoseSpec(
        thumb=ThumbAngles(cmc_twist=-15.0, cmc_spread=5.0, cmc_bend=25.0, mcp_spread=-5.0, mcp_bend=10.0, ip_bend=10.0),
        index=FingerAngles(mcp=45.0, pip=55.0, dip=30.0),
        middle=FingerAngles(mcp=50.0, pip=55.0, dip=30.0),
        ring=FingerAngles(mcp=50.0, pip=55.0, dip=30.0),
        pinky=FingerAngles(spread=-5.0, mcp=55.0, pip=55.0, dip=30.0),
    ),
}


def pose_vector(meta: HandMetadata, spec: PoseSpec) -> np.ndarray:
    """45 axis-angle hand-pose values of ``spec`` on the hand described by ``meta``."""
    return pose_from_local(meta, np.deg2rad(spec.local_degrees()))


def named_pose(meta: HandMetadata, name: str) -> np.ndarray:
    """45 hand-pose values of a named pose (see ``NAMED_POSES``)."""
    if name not in NAMED_POSES:
        raise KeyError(f"unknown pose '{name}'; known: {sorted(NAMED_POSES)}")
    return pose_vector(meta, NAMED_POSES[name])


def named_pose_params(meta: HandMetadata, name: str, dtype: torch.dtype = torch.float32) -> Tensor:
    """A [1,61] parameter vector (mean shape, no global rotation/translation) for a named pose."""
    params = torch.zeros(1, 61, dtype=dtype)
    params[0, 13:58] = torch.as_tensor(named_pose(meta, name), dtype=dtype)
    return params
