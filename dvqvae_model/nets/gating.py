"""Skeletal-physics gating of the decoded hand pose (paper eq. 7-8).

``pose' = pose + G(theta) * T(pose)``: ``theta`` are the ten bend angles between adjacent bones of the
hand posed with the *decoded* pose (``dvqvae_model.hand.skeleton.bend_angles``), ``G`` maps them to a gate in
(0, 1) per pose value and ``T`` proposes a correction from the pose itself. The released code defines
the network but never trains or uses it; here it sits in the decoding path and is trained by the
posture / vertex / contact losses that follow it.

T's output layer starts small (not zero, so that G receives gradient from the first step), which makes
the module close to the identity at initialisation: a freshly built model decodes as if ungated.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


def mlp(in_dim: int, widths: Sequence[int]) -> nn.Sequential:
    """Plain MLP: Linear+ReLU for hidden layers, linear output."""
    layers: list[nn.Module] = []
    prev = in_dim
    for i, w in enumerate(widths):
        layers.append(nn.Linear(prev, w))
        if i < len(widths) - 1:
            layers.append(nn.ReLU(inplace=True))
        prev = w
    return nn.Sequential(*layers)


class SkeletalGating(nn.Module):
    """Gated residual pose correction driven by bone angles (eq. 8).

    ``gate_widths`` default to the paper's G: 10-256-512-45, ``transform_widths`` to T: 45-256-512-45.
    """

    def __init__(self, num_angles: int = 10, pose_dim: int = 45,
                 gate_hidden: Sequence[int] = (256, 512), transform_hidden: Sequence[int] = (256, 512),
                 init_scale: float = 1e-2) -> None:
        super().__init__()
        self.num_angles = int(num_angles)
        self.pose_dim = int(pose_dim)
        self.gate = mlp(num_angles, (*gate_hidden, pose_dim))
        self.transform = mlp(pose_dim, (*transform_hidden, pose_dim))
        last = self.transform[-1]
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            last.weight.mul_(init_scale)
            last.bias.zero_()

    def forward(self, pose: Tensor, angles: Tensor) -> tuple[Tensor, Tensor]:
        """``pose[B, 45]``, ``angles[B, 10]`` (radians) -> (corrected pose ``[B, 45]``, gate ``[B, 45]``)."""
        gate = torch.sigmoid(self.gate(angles))
        return pose + gate * self.transform(pose), gate

    def from_joints(self, pose: Tensor, joints: Tensor) -> tuple[Tensor, Tensor]:
        """Same as ``forward`` with the angles computed from posed joints ``[B, 16, 3]`` (MANO order)."""
        from dvqvae_model.hand.skeleton import bend_angles

        return self.forward(pose, bend_angles(joints))
