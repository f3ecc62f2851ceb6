"""PointNet encoders (shared per-point MLP + max-pool), optionally several independent ones run as one.

Every encoder of DVQ-VAE and of the GraspCVAE baseline is a PointNet. The six hand-part encoders are
independent networks with identical shapes, so they are evaluated together as *grouped* layers: one
batched matmul per layer instead of six networks, no Python loop over parts. Parts with different
vertex counts are padded by repeating one of their own vertices, which leaves the max-pool unchanged.

Internally the layout is group-major rows ``[G, B*P, C]`` and each per-point layer is one fused
``addmm`` / ``baddbmm``, not a ``Conv1d``: on CPU a batch of small point sets (K grasp hands of a few
hundred vertices) runs several times faster this way.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMS = ("batch", "none")


class GroupedLinear(nn.Module):
    """G independent linear layers on ``x[G, N, C_in]`` -> ``[G, N, C_out]`` (one fused (b)addmm)."""

    def __init__(self, in_dim: int, out_dim: int, groups: int = 1) -> None:
        super().__init__()
        self.groups = int(groups)
        self.weight = nn.Parameter(torch.empty(groups, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(groups, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if self.groups == 1:
            return torch.addmm(self.bias.squeeze(0), x.squeeze(0), self.weight.squeeze(0)).unsqueeze(0)
        return torch.baddbmm(self.bias, x, self.weight)


class GroupedBatchNorm(nn.Module):
    """Batch norm of ``x[G, N, C]`` over the N rows (batch x points) per group and channel.

    Exactly ``nn.BatchNorm1d`` over ``G*C`` channels (same statistics, running averages and native
    kernel via ``F.batch_norm``), for the group-major layout.
    """

    def __init__(self, channels: int, groups: int = 1, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.groups = int(groups)
        self.channels = int(channels)
        self.momentum = float(momentum)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(groups * channels))
        self.bias = nn.Parameter(torch.zeros(groups * channels))
        self.register_buffer("running_mean", torch.zeros(groups * channels))
        self.register_buffer("running_var", torch.ones(groups * channels))

    def forward(self, x: Tensor) -> Tensor:
        g, n, c = x.shape
        flat = x.squeeze(0) if g == 1 else x.transpose(0, 1).reshape(n, g * c)
        y = F.batch_norm(flat, self.running_mean, self.running_var, self.weight, self.bias,
                         self.training, self.momentum, self.eps)
        return y.unsqueeze(0) if g == 1 else y.reshape(n, g, c).transpose(0, 1)


def _layers(in_dim: int, widths: Sequence[int], groups: int, norm: str, final_activation: bool,
            final_norm: bool) -> nn.Sequential:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    if not widths:
        raise ValueError("need at least one layer width")
    layers: list[nn.Module] = []
    prev = in_dim
    for i, w in enumerate(widths):
        last = i == len(widths) - 1
        layers.append(GroupedLinear(prev, w, groups))
        if norm == "batch" and (not last or final_norm):
            layers.append(GroupedBatchNorm(w, groups))
        if not last or final_activation:
            layers.append(nn.ReLU())
        prev = w
    return nn.Sequential(*layers)


class GroupedMLP(nn.Module):
    """G independent MLPs applied to ``x[B, G, C_in]`` -> ``[B, G, C_out]``.

    Hidden layers get norm + ReLU; the output layer is linear.
    """

    def __init__(self, in_dim: int, widths: Sequence[int], groups: int = 1, norm: str = "none") -> None:
        super().__init__()
        self.groups = int(groups)
        self.out_dim = int(widths[-1])
        self.net = _layers(in_dim, widths, groups, norm, final_activation=False, final_norm=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.transpose(0, 1)).transpose(0, 1)


class PointNet(nn.Module):
    """G independent PointNets over point sets ``[B, G, P, C_in]`` (or ``[B, P, C_in]`` when G == 1).

    Per-point shared MLP ``widths`` (norm + ReLU on all but the last layer, which gets norm only, like
    the original PointNet feature extractor, so the pooled feature is not forced non-negative), then a
    max-pool over points. ``use_stn`` adds the input T-Net predicting a 3x3 transform per set
    (identity-initialised), as in the paper's encoders.
    Returns the global features ``[B, G, widths[-1]]`` (or ``[B, widths[-1]]``).
    """

    def __init__(self, widths: Sequence[int] = (64, 128, 1024), in_dim: int = 3, groups: int = 1,
                 norm: str = "batch", use_stn: bool = False) -> None:
        super().__init__()
        self.groups = int(groups)
        self.in_dim = int(in_dim)
        self.out_dim = int(widths[-1])
        self.mlp = _layers(in_dim, widths, groups, norm, final_activation=False, final_norm=True)
        self.stn: TNet | None = None
        if use_stn:
            if in_dim < 3:
                raise ValueError("the STN transforms xyz and needs in_dim >= 3")
            self.stn = TNet(widths=widths, groups=groups, norm=norm)

    def forward(self, points: Tensor) -> Tensor:
        squeeze = points.dim() == 3
        if squeeze:
            if self.groups != 1:
                raise ValueError("grouped PointNet expects points [B, G, P, C]")
            points = points.unsqueeze(1)
        if points.shape[1] != self.groups or points.shape[3] != self.in_dim:
            raise ValueError(f"expected [B, {self.groups}, P, {self.in_dim}], got {tuple(points.shape)}")
        if self.stn is not None:
            rot = self.stn(points[..., :3])  # [B, G, 3, 3]
            xyz = torch.matmul(points[..., :3], rot)
            points = torch.cat([xyz, points[..., 3:]], dim=-1) if self.in_dim > 3 else xyz
        b, g, p, c = points.shape
        x = points.transpose(0, 1).reshape(g, b * p, c)  # group-major rows: one GEMM per layer
        feat = self.mlp(x).reshape(g, b, p, self.out_dim).amax(dim=2).transpose(0, 1)  # [B, G, C]; amax: no index tensor
        return feat.squeeze(1) if squeeze else feat


class TNet(nn.Module):
    """Input transform network of PointNet: predicts ``I + delta`` (3x3) per point set."""

    def __init__(self, widths: Sequence[int], groups: int = 1, norm: str = "batch") -> None:
        super().__init__()
        self.groups = int(groups)
        self.encoder = PointNet(widths=widths, in_dim=3, groups=groups, norm=norm, use_stn=False)
        hidden = (max(widths[-1] // 2, 9), max(widths[-1] // 4, 9), 9)
        self.head = GroupedMLP(widths[-1], hidden, groups=groups, norm=norm)
        last = self.head.net[-1]
        assert isinstance(last, GroupedLinear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.register_buffer("eye", torch.eye(3).reshape(1, 1, 9), persistent=False)

    def forward(self, xyz: Tensor) -> Tensor:  # [B, G, P, 3] -> [B, G, 3, 3]
        delta = self.head(self.encoder(xyz))
        return (delta + self.eye).reshape(xyz.shape[0], self.groups, 3, 3)


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters (used for the size presets)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
