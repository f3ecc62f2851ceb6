"""GraspCVAE baseline (GraspTTA's generator without test-time adaptation).

Object PointNet (1024) + hand PointNet (1024, on the GT hand vertices in the object frame) -> encoder MLP
2048-512-256 -> mu, logvar (64). Decoder: [z ; object feature] -> 1024-256 -> 61 parameters, then the hand
layer. Inference draws z from N(0, I) through an explicit ``noise`` input, so sampling is tensor-only.
Same data interface and loss dictionary as DVQ-VAE (``losses.grasp_losses`` plus a ``kl`` term).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from dvqvae_model.canonical_frame import check_input_frame
from dvqvae_model.io import SerializableConfig
from dvqvae_model.nets.dvqvae import GraspDecoding
from dvqvae_model.nets.gating import mlp
from dvqvae_model.hand.hand_model import HandModel
from dvqvae_model.nets.losses import LossWeights, grasp_losses, kl_divergence
from dvqvae_model.nets.pointnet import PointNet


@dataclass
class CVAEConfig(SerializableConfig):
    """Serialisable GraspCVAE hyper-parameters (defaults: GraspTTA sizes)."""

    num_points: int = 3000
    object_pointnet_widths: tuple[int, ...] = (64, 128, 1024)
    hand_pointnet_widths: tuple[int, ...] = (64, 128, 1024)
    encoder_widths: tuple[int, ...] = (512, 256)  # hidden widths after [obj ; hand]; then mu / logvar
    latent_dim: int = 64
    decoder_widths: tuple[int, ...] = (1024, 256)  # hidden widths; output 61
    use_stn: bool = True
    norm: str = "batch"
    point_scale: float = 10.0  # points are multiplied by this before the PointNets (metres -> dm)
    # Frame the model's input cloud is given in (dvqvae_model.canonical_frame): "centred" (translated
    # to its mean, as every model before this field) or "principal" (also rotated into its principal axes).
    # GraspGenerator applies it before the model and undoes it on the grasps.
    input_frame: str = "centred"
    loss_weights: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if isinstance(self.loss_weights, Mapping):
            self.loss_weights = LossWeights.from_dict(self.loss_weights)
        for f in fields(self):
            if f.name.endswith("_widths"):
                setattr(self, f.name, tuple(int(v) for v in getattr(self, f.name)))
        if self.norm not in ("batch", "none"):
            raise ValueError(f"unknown norm {self.norm!r}")
        check_input_frame(self.input_frame)


GraspCVAEConfig = CVAEConfig  # name used by dvqvae_model.checkpoint


@dataclass
class CVAEOutput:
    decoding: GraspDecoding
    mu: Tensor  # [B, latent]
    logvar: Tensor  # [B, latent]
    losses: dict[str, Tensor]


class GraspCVAE(nn.Module):
    """Conditional VAE over the 61 hand parameters given the object point cloud."""

    def __init__(self, cfg: CVAEConfig, hand: HandModel) -> None:
        super().__init__()
        self.cfg = cfg
        self.hand = hand
        self.object_encoder = PointNet(cfg.object_pointnet_widths, norm=cfg.norm, use_stn=cfg.use_stn)
        self.hand_encoder = PointNet(cfg.hand_pointnet_widths, norm=cfg.norm, use_stn=cfg.use_stn)
        c_obj, c_hand = cfg.object_pointnet_widths[-1], cfg.hand_pointnet_widths[-1]
        self.encoder = mlp(c_obj + c_hand, (*cfg.encoder_widths, 2 * cfg.latent_dim))
        self.decoder = mlp(cfg.latent_dim + c_obj, (*cfg.decoder_widths, 61))
        with torch.no_grad():
            self.decoder[-1].weight.mul_(0.1)
            self.decoder[-1].bias.zero_()
        self.register_buffer("contact_ids", torch.as_tensor(np.asarray(hand.meta.contact_ids), dtype=torch.long),
                             persistent=False)
        self.register_buffer("joint_limits", torch.as_tensor(np.asarray(hand.meta.joint_limits),
                                                             dtype=torch.float32), persistent=False)

    @property
    def latent_dim(self) -> int:
        return self.cfg.latent_dim

    def encode_object(self, obj_points: Tensor) -> Tensor:
        return self.object_encoder(obj_points * self.cfg.point_scale)

    def encode(self, obj_feature: Tensor, hand_vertices: Tensor) -> tuple[Tensor, Tensor]:
        """-> (mu, logvar), each ``[B, latent]``."""
        h = self.encoder(torch.cat([obj_feature, self.hand_encoder(hand_vertices * self.cfg.point_scale)], dim=1))
        return h[:, :self.cfg.latent_dim], h[:, self.cfg.latent_dim:]

    def decode(self, z: Tensor, obj_feature: Tensor) -> GraspDecoding:
        params = self.decoder(torch.cat([z, obj_feature], dim=1))
        out = self.hand.from_params(params)
        return GraspDecoding(params=params, vertices=out.vertices, joints=out.joints, keypoints=out.keypoints,
                             posture_raw=torch.cat([params[:, 0:10], params[:, 13:58]], dim=1),
                             gate=params.new_zeros(params.shape[0], 45),
                             canonical_vertices=out.vertices)

    def forward(self, obj_points: Tensor, hand_params: Tensor, noise: Tensor | None = None,
                compute_losses: bool = True, loss_points: int = 0) -> CVAEOutput:
        """Training pass. ``noise[B, latent]`` (reparameterisation) is drawn if not given;
        ``loss_points`` as in ``DVQVAE.forward``."""
        gt = self.hand.from_params(hand_params)
        obj_feature = self.encode_object(obj_points)
        mu, logvar = self.encode(obj_feature, gt.vertices)
        if noise is None:
            noise = torch.randn_like(mu)
        z = mu + noise * torch.exp(0.5 * logvar)
        decoding = self.decode(z, obj_feature)
        losses: dict[str, Tensor] = {}
        if compute_losses:
            losses = grasp_losses(obj_points, decoding.params, decoding.vertices, hand_params, gt.vertices,
                                  self.hand.faces, self.contact_ids, self.cfg.loss_weights,
                                  joint_limits=self.joint_limits, extra={"kl": kl_divergence(mu, logvar)},
                                  loss_points=loss_points)
        return CVAEOutput(decoding=decoding, mu=mu, logvar=logvar, losses=losses)

    def sample(self, obj_points: Tensor, noise: Tensor) -> GraspDecoding:
        """K grasps for one object (``obj_points[1, N, 3]``) or one per object (``[K, N, 3]``);
        ``noise[K, latent]`` ~ N(0, I) supplied by the caller."""
        obj_feature = self.encode_object(obj_points)
        obj_feature = obj_feature.expand(noise.shape[0], -1)
        return self.decode(noise, obj_feature)
