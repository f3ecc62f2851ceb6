"""Training losses of DVQ-VAE (paper eq. 6-18) and of the GraspCVAE baseline, vectorised and differentiable.

Units and reductions (all distances in metres; every term is a per-sample quantity averaged over the batch):

* ``posture``     eq. 6:  sum of squared errors over the 55 posture values (10 betas + 45 pose).
* ``position``    eq. 10: sum of squared errors over the 6 position values (3 global orient + 3 transl).
* ``vertex``      eq. 11: sum over the 778 vertices of the squared distance to the corresponding GT vertex
                  (the hands share a topology, so a per-vertex L2 replaces the released code's chamfer).
* ``contact``     eq. 13: object-centric contact, mean over the object points within
                  ``contact_threshold`` (1 cm) of the GT hand of the squared distance to the nearest
                  contact-prior vertex of the predicted hand.
* ``consistency`` eq. 14: 1 - soft IoU of the GT and predicted soft contact maps (see ``consistency_loss``).
* ``penetration`` eq. 15: sum over object points inside the predicted hand of the squared distance to the
                  nearest hand vertex ("inside" = the vector to that vertex agrees with its outward normal).
* ``embedding``   eq. 3:  L_h + L_o of the codebooks (from ``Codebook``), DVQ-VAE only.
* ``kl``          KL(q(z|x) || N(0, I)) summed over latent dimensions, GraspCVAE only.
* ``joint_limit`` optional, not in the paper: squared excess of the pose outside the hand's joint limits.

``total`` = sum of weight x term with the weights of ``LossWeights`` (paper values by default).
Nearest neighbours are found with one batched matmul per chunk under ``no_grad`` (chunked to bound memory) and the
selected distances recomputed with gradient, so memory for backward is O(B*N) rather than O(B*N*V).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import torch
from smplx.lbs import batch_rodrigues
from torch import Tensor

from dvqvae_model.io import config_from_dict

from dvqvae_model.hand.hand_model import SLICE_BETAS, SLICE_GLOBAL_ORIENT, SLICE_HAND_POSE, SLICE_TRANSL

# Posture = betas + hand pose (55 values), position = global orient + translation (6 values).
POSTURE_INDEX = [*range(SLICE_BETAS.start, SLICE_BETAS.stop), *range(SLICE_HAND_POSE.start, SLICE_HAND_POSE.stop)]
POSITION_INDEX = [*range(SLICE_GLOBAL_ORIENT.start, SLICE_GLOBAL_ORIENT.stop),
                  *range(SLICE_TRANSL.start, SLICE_TRANSL.stop)]

_CHUNK_ELEMENTS = 1 << 23  # at most ~8 M distances (32 MB) per cdist call


@dataclass
class LossWeights:
    """Loss weights; defaults are the paper's (Sec. 4.1) where the paper gives one.

    ``lambda_m``: the paper writes ``-50`` because its L_m is an overlap *ratio* to be maximised. Our
    ``consistency`` term is ``1 - ratio`` (a soft, differentiable ratio), which is minimised, so the same
    pressure is a *positive* weight of 50 (``-50 * ratio == 50 * (1 - ratio) - 50``).
    ``lambda_kl`` (GraspCVAE) and ``lambda_limit`` are not paper values: our choices.
    """

    lambda_e: float = 10.0
    lambda_m: float = 50.0
    lambda_c: float = 1500.0
    lambda_p: float = 5.0
    lambda_h: float = 0.1
    lambda_v: float = 10.0
    lambda_kl: float = 10.0
    lambda_limit: float = 0.0
    contact_threshold: float = 0.01  # m: object points this close to the GT hand are "in contact" (L_c)
    cmap_scale_cm: float = 1.0  # soft contact map uses distances in cm / this scale

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LossWeights":
        return config_from_dict(cls, {k: float(v) for k, v in data.items()})

    def term_weights(self) -> dict[str, float]:
        """Weight of each named loss term in ``total``."""
        return {
            "posture": self.lambda_h, "position": self.lambda_h, "vertex": self.lambda_v,
            "contact": self.lambda_c, "consistency": self.lambda_m, "penetration": self.lambda_p,
            "embedding": self.lambda_e, "kl": self.lambda_kl, "joint_limit": self.lambda_limit,
        }


# ------------------------------------------------------------------------------------ geometry
def nearest_neighbours(src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
    """For each point of ``src[B, N, 3]`` the nearest point of ``dst[B, M, 3]``.

    Returns ``(squared distance [B, N] with gradient to both inputs, index [B, N] long)``. The index is
    ``argmin_j |d_j|^2 - 2 s.d_j`` (one ``baddbmm`` per chunk, no square roots), found without autograd;
    the distance to the chosen point is then recomputed exactly with gradient.
    """
    b, n, _ = src.shape
    m = dst.shape[1]
    with torch.no_grad():
        s, d = src.detach(), dst.detach()
        d_sq = d.pow(2).sum(-1).unsqueeze(1)  # [B, 1, M]
        chunk = max(1, _CHUNK_ELEMENTS // max(1, b * m))
        idx = torch.cat([torch.baddbmm(d_sq, s[:, i:i + chunk], d.transpose(1, 2), alpha=-2.0).argmin(dim=2)
                         for i in range(0, n, chunk)], dim=1)
    nearest = torch.gather(dst, 1, idx.unsqueeze(-1).expand(-1, -1, 3))
    return (src - nearest).pow(2).sum(-1), idx


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals of a batch of meshes ``[B, V, 3]`` with shared ``faces[F, 3]``."""
    v0 = vertices[:, faces[:, 0]]
    v1 = vertices[:, faces[:, 1]]
    v2 = vertices[:, faces[:, 2]]
    face_n = torch.cross(v1 - v0, v2 - v0, dim=-1)  # length = 2 * area
    normals = torch.zeros_like(vertices)
    for k in range(3):
        normals = normals.index_add(1, faces[:, k], face_n)
    return normals / normals.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def soft_contact_map(dist: Tensor, scale_cm: float = 1.0) -> Tensor:
    """GraspTTA-style soft contact map ``1 - 2 (sigmoid(2 d) - 0.5)`` with ``d`` in cm (/ scale).

    1 at contact, 0.24 at 1 cm, 0.04 at 2 cm; smooth, so the consistency loss has a gradient.
    """
    d = dist * (100.0 / scale_cm)
    return 1.0 - 2.0 * (torch.sigmoid(2.0 * d) - 0.5)


# --------------------------------------------------------------------------------- loss terms
def param_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Sum of squared errors per sample, batch mean."""
    return (pred - target).pow(2).sum(-1).mean()


def vertex_loss(pred_vertices: Tensor, gt_vertices: Tensor) -> Tensor:
    """Sum over vertices of squared per-vertex distance, batch mean (eq. 11)."""
    return (pred_vertices - gt_vertices).pow(2).sum(-1).sum(-1).mean()


def contact_loss(obj_points: Tensor, pred_contact_vertices: Tensor, gt_obj_d2: Tensor,
                 threshold: float = 0.01) -> Tensor:
    """Object-centric contact (eq. 13): GT-contact object points pulled to the predicted contact prior.

    ``gt_obj_d2[B, N]``: squared distance of each object point to the GT hand. Samples with no GT
    contact contribute zero.
    """
    d2, _ = nearest_neighbours(obj_points, pred_contact_vertices)
    mask = (gt_obj_d2 < threshold ** 2).to(d2.dtype)
    per_sample = (d2 * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)
    return per_sample.mean()


def consistency_loss(pred_obj_d2: Tensor, gt_obj_d2: Tensor, scale_cm: float = 1.0) -> Tensor:
    """Contact-map consistency (eq. 14), soft and differentiable: ``1 - softIoU(c_gt, c_pred)``.

    ``c`` are GraspTTA soft contact maps on the object points from the distances to the GT / predicted
    hand and ``softIoU(a, b) = sum(ab) / (sum(a^2) + sum(b^2) - sum(ab))`` (Tanimoto). For binary maps
    this is |P_m ∩ P^_m| / |P_m ∪ P^_m|, the paper's overlap ratio with the union in the denominator.
    Why not the paper's |P_m ∩ P^_m| / |P_m| literally: with soft maps that ratio is maximised by
    c_pred = 1 wherever c_gt > 0 (it pulls the hand onto points the GT hand only came near), and in our
    overfit runs its one-sided pull stalled training worse than this form. The soft IoU is 1 exactly
    when the two maps agree. The term is in [0, 1] and minimised, hence the positive ``lambda_m`` (the
    paper's -50 on a maximised ratio). Note: the released code thresholds both maps, so its term has
    no gradient at all; at the paper's weight this differentiable term is strong (see ``LossWeights``).
    """
    c_pred = soft_contact_map(torch.sqrt(pred_obj_d2 + 1e-8), scale_cm)
    with torch.no_grad():
        c_gt = soft_contact_map(torch.sqrt(gt_obj_d2 + 1e-8), scale_cm)
    inter = (c_gt * c_pred).sum(-1)
    union = c_gt.pow(2).sum(-1) + c_pred.pow(2).sum(-1) - inter
    return (1.0 - inter / union.clamp_min(1e-6)).mean()


def penetration_loss(obj_points: Tensor, hand_vertices: Tensor, hand_normals: Tensor,
                     obj_d2: Tensor | None = None, obj_idx: Tensor | None = None) -> Tensor:
    """Object points inside the hand (eq. 15-16): sum of squared distance to the nearest hand vertex.

    A point is inside when ``(v_nn - p) . n_nn > 0`` (nearest vertex v_nn with outward normal n_nn).
    ``obj_d2`` / ``obj_idx`` may be passed if already computed by ``nearest_neighbours``.
    """
    if obj_d2 is None or obj_idx is None:
        obj_d2, obj_idx = nearest_neighbours(obj_points, hand_vertices)
    gather = obj_idx.unsqueeze(-1).expand(-1, -1, 3)
    nn_v = torch.gather(hand_vertices, 1, gather)
    nn_n = torch.gather(hand_normals, 1, gather)
    inside = ((nn_v - obj_points) * nn_n).sum(-1).detach() > 0
    return (obj_d2 * inside.to(obj_d2.dtype)).sum(-1).mean()


def joint_limit_loss(hand_pose: Tensor, limits: Tensor) -> Tensor:
    """Squared excess of ``hand_pose[B, 45]`` outside ``limits[45, 2]`` (radians), summed, batch mean."""
    low = (limits[:, 0] - hand_pose).clamp_min(0.0)
    high = (hand_pose - limits[:, 1]).clamp_min(0.0)
    return (low.pow(2) + high.pow(2)).sum(-1).mean()


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dims, batch mean."""
    return (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(-1)).mean()


# ----------------------------------------------------------------------------------- combined
def grasp_losses(obj_points: Tensor, pred_params: Tensor, pred_vertices: Tensor, gt_params: Tensor,
                 gt_vertices: Tensor, faces: Tensor, contact_ids: Tensor,
                 weights: LossWeights | None = None, joint_limits: Tensor | None = None,
                 extra: Mapping[str, Tensor] | None = None, loss_points: int = 0,
                 pred_rotation: Tensor | None = None) -> dict[str, Tensor]:
    """All reconstruction and contact terms for predicted vs GT grasps, plus weighted ``total``.

    ``obj_points[B, N, 3]``, params ``[B, 61]``, vertices ``[B, 778, 3]``, ``faces[F, 3]`` (for normals),
    ``contact_ids[C]`` (contact-prior vertices). ``extra`` adds named terms (e.g. ``embedding``, ``kl``)
    that are weighted by ``LossWeights.term_weights`` into ``total``.

    ``loss_points`` (0 = all): the contact, consistency and penetration terms use only the first
    ``loss_points`` object points, a training-time saving (the nearest-neighbour searches dominate a
    CPU step). The caller must pass points in random order (training clouds are random resamples), so
    the subset is a uniform sample: the mean-type terms stay unbiased estimates and the penetration sum
    is scaled by ``N / loss_points`` to keep its magnitude.

    ``pred_rotation [B, 3, 3]`` (decoders that regress a continuous rotation): the ``position`` term
    compares rotation matrices (entries) and translations instead of axis-angle vectors, whose wrap at
    pi would make the target jump between near-identical hands.
    """
    w = weights or LossWeights()
    n_all = obj_points.shape[1]
    pen_scale = 1.0
    if 0 < loss_points < n_all:
        obj_points, pen_scale = obj_points[:, :loss_points], n_all / loss_points
    dev = pred_params.device
    post = torch.as_tensor(POSTURE_INDEX, device=dev)
    posi = torch.as_tensor(POSITION_INDEX, device=dev)
    terms: dict[str, Tensor] = {
        "posture": param_loss(pred_params[:, post], gt_params[:, post]),
        "position": param_loss(pred_params[:, posi], gt_params[:, posi]) if pred_rotation is None else
        param_loss(torch.cat([pred_rotation.flatten(1), pred_params[:, SLICE_TRANSL]], dim=1),
                   torch.cat([batch_rodrigues(gt_params[:, SLICE_GLOBAL_ORIENT]).flatten(1), gt_params[:, SLICE_TRANSL]],
                             dim=1)),
        "vertex": vertex_loss(pred_vertices, gt_vertices),
    }
    with torch.no_grad():
        gt_d2, _ = nearest_neighbours(obj_points, gt_vertices)
    pred_d2, pred_idx = nearest_neighbours(obj_points, pred_vertices)
    terms["contact"] = contact_loss(obj_points, pred_vertices[:, contact_ids], gt_d2, w.contact_threshold)
    terms["consistency"] = consistency_loss(pred_d2, gt_d2, w.cmap_scale_cm)
    normals = vertex_normals(pred_vertices, faces)
    terms["penetration"] = penetration_loss(obj_points, pred_vertices, normals, pred_d2, pred_idx) * pen_scale
    if joint_limits is not None and w.lambda_limit != 0.0:
        terms["joint_limit"] = joint_limit_loss(pred_params[:, SLICE_HAND_POSE], joint_limits)
    if extra:
        terms.update(extra)
    terms["total"] = weighted_total(terms, w)
    return terms


def weighted_total(terms: Mapping[str, Tensor], weights: LossWeights) -> Tensor:
    """Sum of weight x term over the named terms present (unknown names are an error)."""
    table = weights.term_weights()
    total: Tensor | None = None
    for name, value in terms.items():
        if name == "total":
            continue
        if name not in table:
            raise KeyError(f"no weight for loss term {name!r}")
        part = table[name] * value
        total = part if total is None else total + part
    if total is None:
        raise ValueError("no loss terms")
    return total
