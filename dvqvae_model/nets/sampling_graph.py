"""The inference core as one tensor-in / tensor-out module (the thing that gets exported).

``SamplingGraph`` (DVQ-VAE) and ``CVAESamplingGraph`` (GraspCVAE baseline) map

    points [B, N, 3] float32 (centred), noise [B*K, ...] float32, temperature [] float32
    -> params [B*K, 61], vertices [B*K, 778, 3], keypoints [B*K, 21, 3], scores [B*K]

with ``B = 1`` in the agreed single-object interface (noise ``[K, H, V]`` Gumbel for DVQ-VAE,
``[K, latent]`` standard normal for the CVAE). Grasps ``b*K .. b*K+K-1`` belong to object ``b``.
There is no random op, no data-dependent Python control flow and only fixed loops, so the
module is meant to export unchanged. Checked: ``torch.export`` (tests) and ONNX opset 17 with a
dynamic K (TorchScript exporter) matching eager in onnxruntime; TensorRT is unverified (no GPU).

Score (higher is better), computed inside the graph, all cheap:

    score = w_prior * prior_term - w_pen * penetration_cm - w_contact * contact_cm

* ``prior_term``: DVQ-VAE: mean per-token log-probability of the sampled hand tokens under the
  prior (untempered); CVAE: mean per-dimension log-density of the latent under N(0, I).
* ``penetration_cm``: deepest object point inside the hand, in cm. Uses an evenly strided subset
  of at most ``num_score_points`` object points (N is static, so the stride is a constant):
  a point is inside when it lies behind the outward normal of its nearest hand vertex and
  within 2 cm of it (the gate keeps far points on concave regions from counting).
* ``contact_cm``: mean distance (cm) of the three fingertips closest to the object surface
  (all object points) -- a grasp needs at least thumb plus two fingers near the surface.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from dvqvae_model.nets.prior import GatedPixelCNNPrior

FINGERTIP_KEYPOINTS = (4, 8, 12, 16, 20)  # thumb, index, middle, ring, pinky tips in the 21-keypoint order
PENETRATION_GATE_M = 0.02


@dataclass
class ScoreWeights:
    """Weights of the in-graph grasp score (see module docstring)."""

    prior: float = 1.0
    penetration: float = 1.0
    contact: float = 0.5
    num_contact_tips: int = 3

    @property
    def prior_only(self) -> bool:
        """No geometric term: the score is the prior's alone and the graph skips the geometry.
        (A generator that ranks measures the geometry itself; computing it twice cost ~15 ms of
        the node's ~110 ms model stage at 64 candidates.)"""
        return self.penetration == 0.0 and self.contact == 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _vertex_face_table(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """[V, M] ids of the faces around each vertex, padded with ``F`` (a zero dummy face)."""
    num_faces = len(faces)
    around: list[list[int]] = [[] for _ in range(num_vertices)]
    for fi, f in enumerate(faces):
        for v in f:
            around[int(v)].append(fi)
    width = max(1, max(len(a) for a in around))
    table = np.full((num_vertices, width), num_faces, dtype=np.int64)
    for v, a in enumerate(around):
        table[v, : len(a)] = a
    return table


class GraspScorer(nn.Module):
    """Geometric plausibility of posed hands against object points, export-friendly.

    Vertex normals use a padded vertex->faces gather table instead of ``index_add`` so that the
    graph stays plain gathers and reductions for every exporter.
    """

    def __init__(self, faces: Tensor, num_vertices: int, weights: Optional[ScoreWeights] = None,
                 num_score_points: int = 128) -> None:
        super().__init__()
        self.weights = weights or ScoreWeights()
        self.num_score_points = int(num_score_points)
        f = faces.detach().cpu().long()
        self.register_buffer("faces", f.clone(), persistent=False)
        table = _vertex_face_table(f.numpy(), num_vertices)
        self.register_buffer("vertex_faces", torch.from_numpy(table), persistent=False)
        self.register_buffer("tip_ids", torch.tensor(FINGERTIP_KEYPOINTS, dtype=torch.long), persistent=False)

    def face_normals(self, vertices: Tensor) -> Tensor:
        """Area-weighted face normals ``[B, F+1, 3]`` (last row: the zero dummy face)."""
        v0 = vertices[:, self.faces[:, 0]]
        v1 = vertices[:, self.faces[:, 1]]
        v2 = vertices[:, self.faces[:, 2]]
        fn = torch.cross(v1 - v0, v2 - v0, dim=-1)
        return torch.cat([fn, torch.zeros_like(fn[:, :1])], dim=1)

    def vertex_normals(self, vertices: Tensor, vertex_ids: Optional[Tensor] = None) -> Tensor:
        """Unit vertex normals ``[B, V, 3]``, or only at ``vertex_ids [B, M]`` -> ``[B, M, 3]``."""
        fn = self.face_normals(vertices)
        if vertex_ids is None:
            n = fn[:, self.vertex_faces].sum(dim=2)
        else:
            b, m = vertex_ids.shape
            # Index with a flat id list: a permuted [B, M] index makes a non-viewable result in
            # torch.export's core-ATen program for B > 1.
            around = self.vertex_faces[vertex_ids.reshape(-1)].reshape(b, -1)  # [B, M*W]
            n = torch.gather(fn, 1, around.unsqueeze(-1).expand(-1, -1, 3)).reshape(b, m, -1, 3).sum(dim=2)
        return n / n.norm(dim=-1, keepdim=True).clamp(min=1e-12)

    def geometry_terms(self, points: Tensor, vertices: Tensor, keypoints: Tensor) -> tuple[Tensor, Tensor]:
        """(penetration_cm [B*K], contact_cm [B*K]) for ``points [B, N, 3]`` and ``B*K`` hands.

        Hands ``b*K .. b*K+K-1`` are scored against object ``b``. Points are never repeated per
        hand: each object's points meet all its K hands in one batched matrix product, and the
        squared distances use ``min_v(|v|^2 - 2 p.v) + |p|^2`` so that only one [M, K*V] tensor
        is made.
        """
        num_objects, num_points = points.shape[0], points.shape[1]
        num_hands, num_vertices = vertices.shape[0], vertices.shape[1]
        per_object = num_hands // num_objects
        stride = max(1, num_points // self.num_score_points)
        sp = points[:, ::stride][:, : self.num_score_points]  # [B, M, 3]
        m = sp.shape[1]
        v = vertices.reshape(num_objects, per_object * num_vertices, 3)  # [B, K*V, 3]
        vsq = (v * v).sum(-1).unsqueeze(1)  # [B, 1, K*V]
        d = torch.baddbmm(vsq, sp, v.transpose(1, 2), alpha=-2.0)  # |v|^2 - 2 p.v  [B, M, K*V]
        # a 2-D row-wise min is markedly faster on CPU than the same reduction on a 4-D view
        d_min, nn_idx = d.reshape(-1, num_vertices).min(dim=1)
        d_min = d_min.reshape(num_objects, m, per_object)  # [B, M, K]
        nn_idx = nn_idx.reshape(num_objects, m, per_object)
        nn_d2 = (d_min + (sp * sp).sum(-1, keepdim=True)).clamp(min=0.0)
        nn_d2 = nn_d2.permute(0, 2, 1).reshape(num_hands, m)  # [B*K, M]
        nn_idx = nn_idx.permute(0, 2, 1).reshape(num_hands, m)
        gather = nn_idx.unsqueeze(-1).expand(-1, -1, 3)
        nn_v = torch.gather(vertices, 1, gather)
        nn_n = self.vertex_normals(vertices, nn_idx)
        sp_k = sp.unsqueeze(1).expand(num_objects, per_object, m, 3).reshape(num_hands, m, 3)
        behind = ((nn_v - sp_k) * nn_n).sum(-1) > 0.0
        dist = torch.sqrt(nn_d2 + 1e-12)
        inside = behind & (dist < PENETRATION_GATE_M)
        penetration_cm = (dist * inside.to(dist.dtype)).amax(dim=1) * 100.0

        tips = keypoints[:, self.tip_ids].reshape(num_objects, per_object * 5, 3)  # [B, K*5, 3]
        psq = (points * points).sum(-1).unsqueeze(1)  # [B, 1, N]
        td = torch.baddbmm(psq, tips, points.transpose(1, 2), alpha=-2.0).amin(dim=2)  # [B, K*5]
        td2 = (td + (tips * tips).sum(-1)).clamp(min=0.0).reshape(num_hands, 5)
        tip_d = torch.sqrt(td2 + 1e-12)
        k = max(1, min(5, int(self.weights.num_contact_tips)))
        closest = -torch.topk(-tip_d, k, dim=1).values
        contact_cm = closest.mean(dim=1) * 100.0
        return penetration_cm, contact_cm

    def combine(self, prior_term: Tensor, penetration_cm: Tensor, contact_cm: Tensor) -> Tensor:
        w = self.weights
        return w.prior * prior_term - w.penetration * penetration_cm - w.contact * contact_cm

    def forward(self, points: Tensor, vertices: Tensor, keypoints: Tensor, prior_term: Tensor) -> Tensor:
        if self.weights.prior_only:  # a static setting: the exported graph simply has no geometry
            return self.weights.prior * prior_term
        pen, con = self.geometry_terms(points, vertices, keypoints)
        return self.combine(prior_term, pen, con)


def _repeat_per_object(x: Tensor, num_objects: int, per_object: Any) -> Tensor:
    """[B, ...] -> [B*K, ...] with each object's row repeated K times (export-friendly)."""
    shape = x.shape[1:]
    return x.unsqueeze(1).expand(num_objects, per_object, *shape).reshape(-1, *shape)


class SamplingGraph(nn.Module):
    """DVQ-VAE inference: object encoders -> object token -> prior -> hand codes -> decoders -> score."""

    def __init__(self, model: nn.Module, prior: GatedPixelCNNPrior, faces: Tensor, num_vertices: int = 778,
                 *, top_k: Optional[int] = None, score_weights: Optional[ScoreWeights] = None,
                 num_score_points: int = 128) -> None:
        super().__init__()
        self.model = model
        self.prior = prior
        self.top_k = top_k
        self.scorer = GraspScorer(faces, num_vertices, score_weights, num_score_points)
        self.num_hand_tokens = int(prior.num_hand_tokens)

    def forward(self, points: Tensor, noise: Tensor, temperature: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.sample_all(points, noise, temperature)[:4]  # type: ignore[return-value]

    def _object_features(self, points: Tensor, num_grasps: int) -> tuple[Tensor, Tensor, Tensor]:
        """(object token per grasp [B*K], z_t [B*K, C], z_p [B*K, C]) for ``points [B, N, 3]``."""
        num_objects = points.shape[0]
        per_object = num_grasps // num_objects
        z_t, z_p = self.model.encode_object(points)
        obj_k = _repeat_per_object(self.model.object_tokens(z_t), num_objects, per_object)
        return (obj_k, _repeat_per_object(z_t, num_objects, per_object),
                _repeat_per_object(z_p, num_objects, per_object))

    def sample_all(self, points: Tensor, noise: Tensor,
                   temperature: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``forward``'s four outputs plus the sampled hand tokens ``[B*K, H]`` (int64).

        Exported artifacts return the tokens as a fifth output (``TokenOutputs``) so that a parity
        check can tell a token flipped on a near-tie from a geometry error.
        """
        obj_k, z_t, z_p = self._object_features(points, noise.shape[0])
        tokens, log_prob = self.prior.sample(obj_k, noise, temperature, self.top_k)
        codes = self.model.hand_codes_from_tokens(tokens)
        dec = self.model.decode(codes, z_t, z_p)
        scores = self.scorer(points, dec.vertices, dec.keypoints, log_prob / float(self.num_hand_tokens))
        return dec.params, dec.vertices, dec.keypoints, scores, tokens

    def token_margins(self, points: Tensor, noise: Tensor, temperature: Tensor) -> tuple[Tensor, Tensor]:
        """Eager diagnostics: (tokens [B*K, H], margins [B*K, H]), the gap between the best and the
        second best perturbed score at each sampling step (see ``GatedPixelCNNPrior.sample``)."""
        obj_k, _, _ = self._object_features(points, noise.shape[0])
        tokens, _, margins = self.prior.sample(obj_k, noise, temperature, self.top_k, return_margins=True)
        return tokens, margins


class TokenOutputs(nn.Module):
    """Export wrapper: a ``SamplingGraph`` with the sampled tokens as a fifth output (``sample_all``)."""

    def __init__(self, graph: SamplingGraph) -> None:
        super().__init__()
        self.sampler = graph  # not "graph": an exported GraphModule has its own .graph

    def forward(self, points: Tensor, noise: Tensor,
                temperature: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return self.sampler.sample_all(points, noise, temperature)


class CVAESamplingGraph(nn.Module):
    """GraspCVAE inference with the same graph shape: latent ``z = temperature * noise``."""

    def __init__(self, model: nn.Module, faces: Tensor, num_vertices: int = 778, *,
                 score_weights: Optional[ScoreWeights] = None, num_score_points: int = 128) -> None:
        super().__init__()
        self.model = model
        self.scorer = GraspScorer(faces, num_vertices, score_weights, num_score_points)

    def forward(self, points: Tensor, noise: Tensor, temperature: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        num_objects = points.shape[0]
        per_object = noise.shape[0] // num_objects
        obj_feat = self.model.encode_object(points)  # [B, C]
        z = noise * temperature
        dec = self.model.decode(z, _repeat_per_object(obj_feat, num_objects, per_object))
        # log N(z; 0, I) per dimension: higher for latents near the mode of the prior
        prior_term = -0.5 * (z * z).mean(dim=1) - 0.5 * float(np.log(2.0 * np.pi))
        scores = self.scorer(points, dec.vertices, dec.keypoints, prior_term)
        return dec.params, dec.vertices, dec.keypoints, scores
