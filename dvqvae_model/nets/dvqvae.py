"""DVQ-VAE (paper Sec. 3): part-aware decomposed VQ-VAE with dual-stage (posture, then position) decoding.

Training path (``forward``)::

    GT params -> hand layer -> vertices, mean-centred (hand_frame) -> 6 part PointNets (one grouped net) -> z_f [B,6,D]
    object points -> type PointNet -> z_t ; pose PointNet -> z_p
    z_f -> 6 hand codebooks ; z_t -> object codebook (its token is the prior's condition)
    decode(quantised z_f, continuous z_t, z_p)

Decoding (``decode``, also the inference path after the prior has produced tokens)::

    [6 codes ; z_t] -> posture MLP -> betas, pose
    hand posed at the origin with that pose -> bend angles -> skeletal gating -> pose'   (eq. 7-8)
    hand posed at the origin with pose' -> centred vertices -> (gradient stopped) PointNet -> z_h  (eq. 9)
    [z_h ; z_p (; 6 codes if position_sees_codes)] -> position MLP -> global orient, transl
    final hand = rigid transform of the origin-posed hand (exactly the hand layer with the full 61 params:
    MANO's global rotation acts about joint 0 and the translation is added after, so no third LBS pass)

Ablation variants (``DVQVAEConfig.variant``):

* ``full``               the paper's model.
* ``single_codebook``    a *single VQ-VAE*: the whole hand (all vertices) goes through one PointNet whose
                         MLP head emits six latent slots, all quantised with ONE shared codebook (the
                         image-VQ-VAE arrangement the paper contrasts with). Six tokens remain, so the
                         prior and generator are unchanged; only the part decomposition and the per-part
                         codebooks are removed.
* ``no_dual_stage``      one MLP decodes all 61 parameters from [codes ; z_t ; z_p] (gating still applied).
* ``one_object_encoder`` no pose encoder: z_p := z_t.
* ``reverse_order``      position first from [codes ; z_p], then posture from [codes ; z_t ; sg(position)].

Everything in ``decode`` is tensor-in / tensor-out without data-dependent control flow.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from smplx.lbs import batch_rodrigues

from dvqvae_model.canonical_frame import check_input_frame
from dvqvae_model.io import SerializableConfig
from dvqvae_model.nets.codebook import Codebook
from dvqvae_model.nets.gating import SkeletalGating, mlp
from dvqvae_model.hand.hand_model import SLICE_BETAS, HandModel, HandOutput
from dvqvae_model.nets.losses import LossWeights, grasp_losses
from dvqvae_model.nets.pointnet import GroupedMLP, PointNet
from dvqvae_model.nets.rotations import IDENTITY_6D, matrix_to_axis_angle, rot6d_to_matrix, rotation_dim

VARIANTS = ("full", "single_codebook", "no_dual_stage", "one_object_encoder", "reverse_order")
PART_NAMES = ("thumb", "index", "middle", "ring", "pinky", "palm")
NUM_PARTS = 6
POSTURE_DIM = 55  # 10 betas + 45 pose
POSITION_DIM = 6  # 3 global orient (axis-angle) + 3 transl; 9 with the 6-D rotation (DVQVAEConfig.rotation)


#: What the hand encoders see (DVQVAEConfig.hand_frame).
HAND_FRAMES = ("centred", "object")
#: Where the hand's shape (MANO betas) comes from (DVQVAEConfig.hand_shape).
HAND_SHAPES = ("decoded", "given")


def _tuple(x: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(v) for v in x)


@dataclass
class DVQVAEConfig(SerializableConfig):
    """Serialisable DVQ-VAE hyper-parameters. Defaults are the paper sizes (see ``config.preset``)."""

    variant: str = "full"
    num_points: int = 3000
    codebook_size: int = 128  # per hand codebook
    object_codebook_size: int = 128
    hand_code_dim: int = 256
    part_pointnet_widths: tuple[int, ...] = (64, 128, 1024)
    part_mlp_widths: tuple[int, ...] = (512,)  # hidden widths; output is hand_code_dim
    object_pointnet_widths: tuple[int, ...] = (64, 128, 1024)  # z_t / z_p dim = last width
    position_pointnet_widths: tuple[int, ...] = (64, 128, 1024)
    posture_decoder_widths: tuple[int, ...] = (1024, 256)
    position_decoder_widths: tuple[int, ...] = (1024, 128)
    gate_hidden: tuple[int, ...] = (256, 512)
    transform_hidden: tuple[int, ...] = (256, 512)
    use_gating: bool = True
    use_stn: bool = True
    norm: str = "batch"
    beta: float = 0.25
    dead_code_threshold: float = 0.03
    kmeans_init: bool = True
    kmeans_init_rows: int = 0  # codebooks' k-means waits for this many encoder outputs (0 = first batch; Codebook)
    position_num_vertices: int = 778  # vertices fed to the position PointNet (farthest-point subset)
    # The paper's position decoder sees [sg(z_h) ; z_p] only: the posture at the origin and the object.
    # The hand codes are encoded from the hand *in the object frame*, so they carry its orientation;
    # without them the decoder cannot tell which side of the object the grasp is on, and under SO(3)
    # augmentation it regresses to the mean (hands at the object centre). True adds the codes.
    position_sees_codes: bool = False
    part_max_vertices: int = 0  # >0: thin larger hand parts to this many vertices (farthest-point)
    point_scale: float = 10.0  # points are multiplied by this before every PointNet (metres -> dm, O(1))
    # Frame the model's input cloud is given in (dvqvae_model.canonical_frame): "centred" (translated
    # to its mean, as every model before this field) or "principal" (also rotated into its principal axes).
    # GraspGenerator applies it before the model and undoes it on the grasps.
    input_frame: str = "centred"
    # How the position decoder regresses the global orientation: "axis_angle" (the paper's, MANO's own
    # parameters) or "6d" (continuous, nets.rotations; converted to axis-angle for the published parameters,
    # and the position loss compares rotation matrices).
    rotation: str = "axis_angle"
    # What the hand encoders see: "centred" (the paper's: mean-centred vertices, so the codes hold the
    # posture and orientation but not *where* the hand is; the position decoder must infer the
    # translation from the object and posture, and regresses to the mean where several places fit) or
    # "object" (the vertices in the object frame, so the codes also carry the hand's place).
    hand_frame: str = "centred"
    # Where the hand's shape (betas) comes from: "decoded" (the paper's: the posture decoder emits them
    # from the codes) or "given" (an input of ``decode``: the data's shape in training, the mean hand,
    # zeros, when none is given, as at inference). The shape is one continuous property of the whole
    # hand, not of a part, and the quantised part codes hold none of it (the breakdown's "betas variance
    # recovered", docs/model-card.md): about 6 mm of the reconstruction's vertex error. "given" keeps the
    # same weights (the decoder's betas outputs go unused).
    hand_shape: str = "decoded"
    loss_weights: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if isinstance(self.loss_weights, Mapping):
            self.loss_weights = LossWeights.from_dict(self.loss_weights)
        for f in fields(self):
            if f.name.endswith("_widths") or f.name.endswith("_hidden"):
                setattr(self, f.name, _tuple(getattr(self, f.name)))
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of {VARIANTS}")
        if self.norm not in ("batch", "none"):
            raise ValueError(f"unknown norm {self.norm!r}")
        check_input_frame(self.input_frame)
        if self.hand_frame not in HAND_FRAMES:
            raise ValueError(f"unknown hand_frame {self.hand_frame!r}; expected one of {HAND_FRAMES}")
        if self.hand_shape not in HAND_SHAPES:
            raise ValueError(f"unknown hand_shape {self.hand_shape!r}; expected one of {HAND_SHAPES}")
        rotation_dim(self.rotation)

    @property
    def object_feature_dim(self) -> int:
        return self.object_pointnet_widths[-1]

    @property
    def position_dim(self) -> int:
        """Position decoder outputs: orientation (3 or 6) + translation (3)."""
        return rotation_dim(self.rotation) + 3


@dataclass
class GraspDecoding:
    """Decoded grasps (object frame) plus the intermediates of the two stages."""

    params: Tensor  # [B, 61] betas | global_orient | hand_pose | transl
    vertices: Tensor  # [B, 778, 3]
    joints: Tensor  # [B, 16, 3] MANO order
    keypoints: Tensor  # [B, 21, 3]
    posture_raw: Tensor  # [B, 55] posture decoder output before gating
    gate: Tensor  # [B, 45] gating values (zeros when gating is off)
    canonical_vertices: Tensor  # [B, 778, 3] hand posed at the origin (zero orient / transl)
    rotation: Tensor | None = None  # [B, 3, 3] global orientation as regressed ("6d" models; for the loss)


@dataclass
class DVQVAEOutput:
    """Result of a training forward pass."""

    decoding: GraspDecoding
    tokens: Tensor  # [B, 1 + H] long, object token first
    losses: dict[str, Tensor]  # named raw terms + weighted "total"
    usage: dict[str, Tensor]  # "perplexity" / "used_codes" / "batch_used_codes" [num codebooks], by codebook_names
    codebook_names: tuple[str, ...]
    z_t: Tensor
    z_p: Tensor
    z_hand: Tensor  # [B, H, D] continuous hand latents


def rigid_place(points: Tensor, root: Tensor, global_orient: Tensor, transl: Tensor,
                rotation: Tensor | None = None) -> Tensor:
    """MANO's global transform of origin-posed ``points[B, P, 3]``: ``R (p - j0) + j0 + t``
    (``R`` = ``rotation [B, 3, 3]`` when given, else from the axis-angle ``global_orient``)."""
    rot = batch_rodrigues(global_orient) if rotation is None else rotation  # [B, 3, 3]
    root = root.unsqueeze(1)
    return torch.matmul(points - root, rot.transpose(1, 2)) + root + transl.unsqueeze(1)


def farthest_point_subset(points: np.ndarray, count: int) -> np.ndarray:
    """Deterministic farthest-point sampling of ``count`` indices (start: the point nearest the mean)."""
    n = points.shape[0]
    if count >= n:
        return np.arange(n)
    chosen = np.empty(count, dtype=np.int64)
    chosen[0] = int(np.argmin(((points - points.mean(0)) ** 2).sum(1)))
    dist = ((points - points[chosen[0]]) ** 2).sum(1)
    for i in range(1, count):
        chosen[i] = int(np.argmax(dist))
        dist = np.minimum(dist, ((points - points[chosen[i]]) ** 2).sum(1))
    return np.sort(chosen)


def part_index_table(part_ids: np.ndarray, rest_vertices: np.ndarray | None = None, max_count: int = 0,
                     num_parts: int = NUM_PARTS) -> np.ndarray:
    """``[num_parts, P]`` vertex ids per part, padded by repeating the part's first vertex.

    Repeating a member keeps the max-pool of a PointNet unchanged, so padded parts batch exactly.
    With ``max_count > 0`` parts larger than that are thinned to ``max_count`` vertices by farthest-point
    sampling on ``rest_vertices`` (the palm has ~2.5x the vertices of a finger: padding every part to
    the palm's size would waste most of the part encoder's compute).
    """
    groups = [np.flatnonzero(part_ids == i) for i in range(num_parts)]
    if any(g.size == 0 for g in groups):
        raise ValueError("every hand part needs at least one vertex")
    if max_count > 0:
        if rest_vertices is None:
            raise ValueError("thinning parts needs the rest vertices")
        groups = [g if g.size <= max_count else g[farthest_point_subset(rest_vertices[g], max_count)]
                  for g in groups]
    pmax = max(g.size for g in groups)
    return np.stack([np.concatenate([g, np.full(pmax - g.size, g[0])]) for g in groups]).astype(np.int64)


class DVQVAE(nn.Module):
    """The DVQ-VAE generator (see module docstring). ``hand`` is kept as a submodule for the forward
    passes; checkpoints exclude its buffers (``dvqvae_model.checkpoint``)."""

    def __init__(self, cfg: DVQVAEConfig, hand: HandModel) -> None:
        super().__init__()
        self.cfg = cfg
        self.hand = hand
        self.variant = cfg.variant
        self.num_hand_tokens = NUM_PARTS
        self.token_vocab_sizes: tuple[int, ...] = (cfg.object_codebook_size,) + (cfg.codebook_size,) * NUM_PARTS
        d, c_obj = cfg.hand_code_dim, cfg.object_feature_dim
        meta = hand.meta
        with torch.no_grad():
            rest = hand.rest().vertices[0].detach().cpu().numpy()

        # --- hand encoder(s)
        if cfg.variant == "single_codebook":
            self.hand_pointnet = PointNet(cfg.part_pointnet_widths, groups=1, norm=cfg.norm, use_stn=cfg.use_stn)
            self.hand_head = GroupedMLP(cfg.part_pointnet_widths[-1], (*cfg.part_mlp_widths, NUM_PARTS * d),
                                        groups=1, norm=cfg.norm)
            self.codebook_names: tuple[str, ...] = ("object", "hand_shared")
            num_books = 1
        else:
            table = part_index_table(np.asarray(meta.part_ids), rest, cfg.part_max_vertices)
            self.register_buffer("part_index", torch.from_numpy(table), persistent=False)
            self.hand_pointnet = PointNet(cfg.part_pointnet_widths, groups=NUM_PARTS, norm=cfg.norm,
                                          use_stn=cfg.use_stn)
            self.hand_head = GroupedMLP(cfg.part_pointnet_widths[-1], (*cfg.part_mlp_widths, d),
                                        groups=NUM_PARTS, norm=cfg.norm)
            self.codebook_names = ("object",) + PART_NAMES
            num_books = NUM_PARTS

        # --- object encoders
        self.type_encoder = PointNet(cfg.object_pointnet_widths, norm=cfg.norm, use_stn=cfg.use_stn)
        self.pose_encoder = None if cfg.variant == "one_object_encoder" else \
            PointNet(cfg.object_pointnet_widths, norm=cfg.norm, use_stn=cfg.use_stn)

        # --- codebooks
        self.object_codebook = Codebook(cfg.object_codebook_size, c_obj, beta=cfg.beta,
                                        dead_code_threshold=cfg.dead_code_threshold, kmeans_init=cfg.kmeans_init,
                                        init_rows=cfg.kmeans_init_rows)
        self.hand_codebook = Codebook(cfg.codebook_size, d, beta=cfg.beta, num_books=num_books,
                                      dead_code_threshold=cfg.dead_code_threshold, kmeans_init=cfg.kmeans_init,
                                      init_rows=cfg.kmeans_init_rows)

        # --- decoders
        codes_dim = NUM_PARTS * d
        self.position_pointnet: PointNet | None = None
        if cfg.variant == "no_dual_stage":
            self.posture_decoder = mlp(codes_dim + 2 * c_obj, (*cfg.posture_decoder_widths, POSTURE_DIM + cfg.position_dim))
            self.position_decoder = None
        elif cfg.variant == "reverse_order":
            self.position_decoder = mlp(codes_dim + c_obj, (*cfg.position_decoder_widths, cfg.position_dim))
            self.posture_decoder = mlp(codes_dim + c_obj + cfg.position_dim, (*cfg.posture_decoder_widths, POSTURE_DIM))
        else:
            self.posture_decoder = mlp(codes_dim + c_obj, (*cfg.posture_decoder_widths, POSTURE_DIM))
            self.position_pointnet = PointNet(cfg.position_pointnet_widths, norm=cfg.norm, use_stn=cfg.use_stn)
            self.position_decoder = mlp(cfg.position_pointnet_widths[-1] + c_obj
                                        + (codes_dim if cfg.position_sees_codes else 0),
                                        (*cfg.position_decoder_widths, cfg.position_dim))
        for dec in (self.posture_decoder, self.position_decoder):
            if dec is not None:  # start near the flat hand at the object centre
                with torch.no_grad():
                    dec[-1].weight.mul_(0.1)
                    dec[-1].bias.zero_()
        if cfg.rotation == "6d":  # ... with the identity orientation (a zero 6-D vector has none)
            with torch.no_grad():
                dec = self.position_decoder if self.position_decoder is not None else self.posture_decoder
                start = 0 if self.position_decoder is not None else POSTURE_DIM
                dec[-1].bias[start:start + 6] = torch.tensor(IDENTITY_6D)
        self.gating = SkeletalGating(10, 45, cfg.gate_hidden, cfg.transform_hidden) if cfg.use_gating else None

        # --- fixed tables from the hand layer
        self.register_buffer("contact_ids", torch.as_tensor(np.asarray(meta.contact_ids), dtype=torch.long),
                             persistent=False)
        self.register_buffer("joint_limits", torch.as_tensor(np.asarray(meta.joint_limits), dtype=torch.float32),
                             persistent=False)
        self.register_buffer("position_index", torch.from_numpy(
            farthest_point_subset(rest, cfg.position_num_vertices)), persistent=False)

    # ------------------------------------------------------------------------------- encoders
    def encode_object(self, obj_points: Tensor) -> tuple[Tensor, Tensor]:
        """Centred object points ``[B, N, 3]`` -> (z_t, z_p), each ``[B, C_obj]``."""
        pts = obj_points * self.cfg.point_scale
        z_t = self.type_encoder(pts)
        z_p = z_t if self.pose_encoder is None else self.pose_encoder(pts)
        return z_t, z_p

    def hand_input(self, vertices: Tensor) -> Tensor:
        """GT hand vertices in the object frame -> what the hand encoders see (``cfg.hand_frame``)."""
        if self.cfg.hand_frame == "object":
            return vertices
        return vertices - vertices.mean(dim=1, keepdim=True)

    def encode_hand(self, centred_vertices: Tensor) -> Tensor:
        """Hand vertices ``[B, 778, 3]`` as ``hand_input`` gives them -> continuous hand latents ``[B, 6, D]``."""
        centred_vertices = centred_vertices * self.cfg.point_scale
        if self.cfg.variant == "single_codebook":
            feat = self.hand_pointnet(centred_vertices).unsqueeze(1)  # [B, 1, C]
            return self.hand_head(feat).reshape(centred_vertices.shape[0], NUM_PARTS, self.cfg.hand_code_dim)
        parts = centred_vertices[:, self.part_index]  # [B, 6, Pmax, 3]
        return self.hand_head(self.hand_pointnet(parts))

    def object_tokens(self, z_t: Tensor) -> Tensor:
        """Nearest object code index ``[B]`` (long): the prior's condition."""
        return self.object_codebook.nearest(z_t.unsqueeze(1))[:, 0]

    @torch.no_grad()
    def tokens(self, obj_points: Tensor, hand_params: Tensor) -> Tensor:
        """Tokens ``[B, 1+H]`` (object, then hand) that ``forward`` assigns to GT grasps, without
        decoding them: what the prior is trained on, at about twice ``forward``'s speed."""
        gt = self.hand.from_params(hand_params)
        z_hand = self.encode_hand(self.hand_input(gt.vertices))
        z_t = self.type_encoder(obj_points * self.cfg.point_scale)
        return torch.cat([self.object_tokens(z_t).unsqueeze(1), self.hand_codebook.nearest(z_hand)], dim=1)

    def hand_codes_from_tokens(self, tokens: Tensor) -> Tensor:
        """Hand tokens ``[B, 6]`` -> codes ``[B, 6, D]`` (slot i reads codebook i, or the shared one)."""
        return self.hand_codebook.lookup(tokens)

    # -------------------------------------------------------------------------------- decoding
    def _pose_at_origin(self, betas: Tensor, pose: Tensor) -> HandOutput:
        zeros = betas.new_zeros(betas.shape[0], 3)
        return self.hand(betas, zeros, pose, zeros)

    def _gate(self, betas: Tensor, pose: Tensor) -> tuple[Tensor, Tensor]:
        if self.gating is None:
            return pose, pose.new_zeros(pose.shape)
        first = self._pose_at_origin(betas, pose)
        return self.gating.from_joints(pose, first.joints)

    def _position_feature(self, canonical_vertices: Tensor) -> Tensor:
        """Eq. 9: PointNet on the origin-posed, centred hand with the gradient stopped at its input."""
        assert self.position_pointnet is not None
        v = canonical_vertices.detach()
        v = (v - v.mean(dim=1, keepdim=True)) * self.cfg.point_scale
        return self.position_pointnet(v[:, self.position_index])

    def decode(self, hand_codes: Tensor, z_t: Tensor, z_p: Tensor, betas: Tensor | None = None) -> GraspDecoding:
        """Hand codes ``[B, 6, D]`` + object features -> grasps in the (centred) object frame.

        ``betas [B, 10]``: the hand's shape when ``cfg.hand_shape == "given"`` (``None``: the mean hand);
        ignored when the shape is decoded."""
        codes = hand_codes.reshape(hand_codes.shape[0], -1)
        variant = self.cfg.variant
        if variant == "no_dual_stage":
            out = self.posture_decoder(torch.cat([codes, z_t, z_p], dim=1))
            if self.cfg.rotation == "axis_angle":  # MANO's parameter layout (as models trained before "6d")
                posture_raw = torch.cat([out[:, 0:10], out[:, 13:58]], dim=1)
                position = torch.cat([out[:, 10:13], out[:, 58:61]], dim=1)
            else:
                posture_raw, position = out[:, :POSTURE_DIM], out[:, POSTURE_DIM:]
        elif variant == "reverse_order":
            assert self.position_decoder is not None
            position = self.position_decoder(torch.cat([codes, z_p], dim=1))
            posture_raw = self.posture_decoder(torch.cat([codes, z_t, position.detach()], dim=1))
        else:
            posture_raw = self.posture_decoder(torch.cat([codes, z_t], dim=1))
            position = None
        if self.cfg.hand_shape == "given":
            betas = posture_raw.new_zeros(posture_raw.shape[0], 10) if betas is None else betas
        else:
            betas = posture_raw[:, :10]
        pose, gate = self._gate(betas, posture_raw[:, 10:])
        canon = self._pose_at_origin(betas, pose)
        if position is None:
            assert self.position_decoder is not None
            inputs = [self._position_feature(canon.vertices), z_p] + ([codes] if self.cfg.position_sees_codes else [])
            position = self.position_decoder(torch.cat(inputs, dim=1))
        transl = position[:, -3:]
        if self.cfg.rotation == "6d":
            rot: Tensor | None = rot6d_to_matrix(position[:, :6])
            orient = matrix_to_axis_angle(rot)
        else:
            rot, orient = None, position[:, :3]
        root = canon.joints[:, 0]
        params = torch.cat([betas, orient, pose, transl], dim=1)
        return GraspDecoding(
            params=params,
            vertices=rigid_place(canon.vertices, root, orient, transl, rot),
            joints=rigid_place(canon.joints, root, orient, transl, rot),
            keypoints=rigid_place(canon.keypoints, root, orient, transl, rot),
            posture_raw=posture_raw,
            gate=gate,
            canonical_vertices=canon.vertices,
            rotation=rot,
        )

    # ------------------------------------------------------------------------------- training
    def forward(self, obj_points: Tensor, hand_params: Tensor, compute_losses: bool = True,
                loss_points: int = 0) -> DVQVAEOutput:
        """Reconstruct GT grasps through the codebooks; returns decodings, tokens, losses and usage.

        ``loss_points``: contact terms on that many object points only (see ``losses.grasp_losses``)."""
        gt = self.hand.from_params(hand_params)
        z_hand = self.encode_hand(self.hand_input(gt.vertices))
        z_t, z_p = self.encode_object(obj_points)
        hq = self.hand_codebook(z_hand)
        oq = self.object_codebook(z_t.unsqueeze(1))
        decoding = self.decode(hq.quantized, z_t, z_p, betas=hand_params[:, SLICE_BETAS])
        tokens = torch.cat([oq.indices, hq.indices], dim=1)
        losses: dict[str, Tensor] = {}
        if compute_losses:
            losses = grasp_losses(obj_points, decoding.params, decoding.vertices, hand_params, gt.vertices,
                                  self.hand.faces, self.contact_ids, self.cfg.loss_weights,
                                  joint_limits=self.joint_limits, extra={"embedding": hq.loss + oq.loss},
                                  loss_points=loss_points, pred_rotation=decoding.rotation)
        usage = {
            "perplexity": torch.cat([oq.perplexity, hq.perplexity]),
            "used_codes": torch.cat([oq.used_codes, hq.used_codes]),
            "batch_used_codes": torch.cat([oq.batch_used_codes, hq.batch_used_codes]),
        }
        return DVQVAEOutput(decoding=decoding, tokens=tokens, losses=losses, usage=usage,
                            codebook_names=self.codebook_names, z_t=z_t, z_p=z_p, z_hand=z_hand)

    def usage_report(self) -> dict[str, int]:
        """Live codes per codebook (EMA usage), e.g. for logging the paper's Fig. 4."""
        used = torch.cat([self.object_codebook.used_codes(), self.hand_codebook.used_codes()])
        return {name: int(n) for name, n in zip(self.codebook_names, used)}
