"""``GraspGenerator``: object point cloud in, ranked hand grasps out (one object, no ROS).

Pipeline: ``prepare_cloud`` (filter, resample to ``num_points``, centre) -> seeded noise made
here -> ``SamplingGraph`` (tensor-in/tensor-out, exportable) for ``candidates`` grasps per object
-> ranking by ``grasp_quality`` (penetration, contact, force closure, prior, measured against the
cloud) and keeping the best ``num_grasps`` -> optional refinement of those (``refine``) -> map
back to the input frame -> sort by score. The constructor's defaults are the raw path (the
graph's own score, nothing after it); the node's settings are
``GraspGenerator.from_checkpoint(path, **DEFAULTS.generator_options())``
(``dvqvae_model.pipeline.defaults``), which ``dvqvae-grasp generate`` uses too.

Frames: the cloud is centred (translated) and, for models trained with ``input_frame="principal"``,
rotated into its principal axes (``dvqvae_model.canonical_frame``). Ranking and refinement work
in that model frame; at the end the motion is undone: vertices, keypoints and joints are rotated
back and get the centre added, and the MANO parameters are moved exactly (global orientation and
translation about the wrist, ``dvqvae_model.hand.rigid_motion``); the finger pose is unchanged.
Grasps are therefore returned in the frame of the input points.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from dvqvae_model.runtime import ExportableGraph, InferenceBackend, config_dict, select_backend
from dvqvae_model.hand.hand_model import KEYPOINT_SOURCE, SLICE_TRANSL, HandModel, load_hand_model
from dvqvae_model.hand.rigid_motion import WristJoint, transform_hand_params
from dvqvae_model.pipeline.grasp_quality import (
    TERM_NAMES,
    CloudSurface,
    QualityWeights,
    combine_terms,
    quality_terms,
    vertex_areas,
)
from dvqvae_model.pipeline.preprocess import CloudError, prepare_cloud
from dvqvae_model.nets.prior import GatedPixelCNNPrior, gumbel_noise
from dvqvae_model.pipeline.refine import RefineConfig, refine_grasps
from dvqvae_model.nets.sampling_graph import CVAESamplingGraph, SamplingGraph, ScoreWeights

MIN_INPUT_POINTS = 64
# Largest side of an object's bounding box a human hand can grasp: a 2 mm speck or a 3 m wall is
# refused by preprocessing (CloudError naming min_extent / max_extent) instead of getting grasps.
MIN_OBJECT_EXTENT = 0.01
MAX_OBJECT_EXTENT = 1.0
# joints[j] = keypoints[JOINTS_FROM_KEYPOINTS[j]]: the 16 MANO joints are a subset of the 21 keypoints.
JOINTS_FROM_KEYPOINTS: tuple[int, ...] = tuple(KEYPOINT_SOURCE.index(j) for j in range(16))


def _learnt_models(weights: QualityWeights) -> None:
    """Read the ranking's tree files (fall, penetration, displacement) now, so that a bad path or file
    is an error naming it when the generator is made, not on the first cloud."""
    from dvqvae_model.pipeline.boosted_trees import BUNDLED, BUNDLED_DISPLACEMENT, BUNDLED_PENETRATION, configured_trees

    for field_name, setting, bundled in (("stability_model.trees", weights.stability_model.trees, BUNDLED),
                                         ("penetration_model", weights.penetration_model, BUNDLED_PENETRATION),
                                         ("displacement_model", weights.displacement_model, BUNDLED_DISPLACEMENT)):
        if setting:
            try:
                configured_trees(setting, bundled)
            except ValueError as e:
                raise ValueError(f"QualityWeights.{field_name}: {e}") from e


@dataclass
class GraspSet:
    """K grasps for one object, best first, in the frame of the input points (metres)."""

    params: np.ndarray  # [K, 61] float32: betas | global_orient | hand_pose | transl
    vertices: np.ndarray  # [K, 778, 3] float32
    keypoints: np.ndarray  # [K, 21, 3] float32
    joints: np.ndarray  # [K, 16, 3] float32, MANO joint order
    scores: np.ndarray  # [K] float32, higher is better, descending
    faces: np.ndarray  # [F, 3] int64 (hand mesh topology)
    timing: dict[str, float] = field(default_factory=dict)  # milliseconds
    centre: np.ndarray = field(default_factory=lambda: np.zeros(3))  # cloud centre in the input frame
    seed: int = 0
    # per-grasp score terms (grasp_quality.TERM_NAMES, each [K] float32, same order as scores);
    # empty on the raw path (ranking off)
    terms: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.params.shape[0])

    def top(self, n: int) -> "GraspSet":
        """The ``n`` best grasps."""
        return GraspSet(self.params[:n], self.vertices[:n], self.keypoints[:n], self.joints[:n],
                        self.scores[:n], self.faces, dict(self.timing), self.centre, self.seed,
                        {k: v[:n] for k, v in self.terms.items()})


def _artifact_score_weights(backend_options: Optional[dict[str, Any]]) -> Optional[ScoreWeights]:
    """The graph score weights a prebuilt artifact (``backend_options["artifact"]``) was exported with,
    or None (no artifact, or one the backend will refuse with its own message)."""
    from dvqvae_model.runtime.artifacts import read_sidecar

    artifact = (backend_options or {}).get("artifact")
    if not artifact:
        return None
    try:
        return ScoreWeights(**read_sidecar(artifact)["graph"]["score_weights"])
    except (RuntimeError, ValueError, KeyError, TypeError, OSError):
        return None


def _unit_gravity(gravity: Optional[Sequence[float]]) -> Optional[np.ndarray]:
    """``gravity`` as a unit vector [3], None when unknown (None or zero); ValueError when not 3 finite numbers."""
    if gravity is None:
        return None
    g = np.asarray(gravity, dtype=np.float64).reshape(-1)
    if g.shape != (3,) or not np.all(np.isfinite(g)):
        raise ValueError(f"gravity must be 3 finite numbers (a direction), got {gravity!r}")
    norm = float(np.linalg.norm(g))
    return g / norm if norm >= 1e-9 else None


def _random_seed() -> int:
    return int(np.random.SeedSequence().entropy % (2**63 - 1))


class GraspGenerator:
    """DVQ-VAE (with its prior) or GraspCVAE wrapped for inference on raw object clouds."""

    def __init__(
        self,
        model: nn.Module,
        prior: Optional[GatedPixelCNNPrior] = None,
        *,
        hand: HandModel,
        num_points: Optional[int] = None,
        device: Union[str, torch.device] = "cpu",
        refine: bool = False,
        refine_steps: Optional[int] = None,
        refine_time_ms: Optional[float] = None,
        refine_config: Optional[RefineConfig] = None,
        candidates: int = 0,
        ranking: bool = False,
        gravity: Optional[Sequence[float]] = None,
        quality_weights: Optional[QualityWeights] = None,
        score_weights: Optional[ScoreWeights] = None,
        num_score_points: int = 128,
        sampling: str = "voxel",
        crop_box: Optional[Sequence[float]] = None,
        crop_radius: Optional[float] = None,
        remove_outliers: bool = True,
        min_points: int = MIN_INPUT_POINTS,
        min_extent: float = MIN_OBJECT_EXTENT,
        max_extent: float = MAX_OBJECT_EXTENT,
        backend: Union[str, InferenceBackend] = "eager",
        backend_options: Optional[dict[str, Any]] = None,
    ) -> None:
        self.device = torch.device(device)
        self.hand = hand
        self.model = model.to(self.device).eval()
        # DVQ-VAE samples tokens through its prior; the CVAE samples a Gaussian latent
        self.kind = "dvqvae" if hasattr(model, "hand_codes_from_tokens") else "cvae"
        if self.kind == "dvqvae" and prior is None:
            raise ValueError("a DVQ-VAE model needs its prior to sample hand tokens")
        self.prior = prior.to(self.device).eval() if prior is not None else None
        cfg_points = getattr(getattr(model, "cfg", None), "num_points", None)
        self.num_points = int(num_points if num_points is not None else (cfg_points or 3000))
        self.refine = bool(refine)
        self.refine_config = refine_config or RefineConfig()
        if refine_steps is not None:
            self.refine_config.steps = int(refine_steps)
        if refine_time_ms is not None:
            self.refine_config.max_time_s = float(refine_time_ms) / 1000.0
        self.candidates = int(candidates)  # sampled per object before ranking; < num_grasps = num_grasps
        self.ranking = bool(ranking)
        # the direction gravity pulls in, in the input cloud's frame (None or zero: unknown); the
        # ranking's stability term asks whether the contacts can carry the object's weight
        _unit_gravity(gravity)  # a bad value fails here, not on the first cloud
        self.gravity = gravity
        self.quality_weights = quality_weights or QualityWeights()
        _learnt_models(self.quality_weights)  # a missing or malformed trees file fails here too
        # ranking measures penetration and contact itself (score_candidates): the graph then scores by
        # the prior alone instead of computing the same geometry a second time, unless a prebuilt
        # artifact fixes the graph's score (the ranking recovers the prior from either)
        # (``_raw_geometry``: if the node turns ranking off later, the raw path adds the geometry back)
        explicit = score_weights is not None
        if score_weights is None and self.ranking:
            score_weights = (_artifact_score_weights(backend_options)
                             or ScoreWeights(penetration=0.0, contact=0.0))
        self.score_weights = score_weights or ScoreWeights()
        self._raw_geometry = not explicit and self.score_weights.prior_only
        self.num_score_points = int(num_score_points)
        with torch.no_grad():
            self._vertex_areas = vertex_areas(hand.rest().vertices[0], hand.faces).to(self.device)
        self._refine_warm = False
        # sampling "voxel" by default: as even as farthest-point sampling (the training clouds are
        # area-uniform surface samples, which both approximate) at ~1/10 of its cost on 2 CPU cores
        # (~2 ms vs ~25 ms for 6,000 -> 3,000 points), which matters for a node at camera rate.
        self.prepare_kwargs: dict[str, Any] = dict(
            crop_box=tuple(crop_box) if crop_box is not None else None,
            crop_radius=crop_radius,
            remove_outliers=remove_outliers,
            sampling=sampling,
            min_points=max(MIN_INPUT_POINTS, int(min_points)),
            min_extent=float(min_extent),
            max_extent=float(max_extent),
            frame=str(getattr(getattr(model, "cfg", None), "input_frame", "centred")),
        )
        self._wrist: Optional[WristJoint] = None  # built on the first rotated cloud
        self.faces = hand.faces.detach().cpu().numpy().astype(np.int64)
        self._graphs: dict[Optional[int], nn.Module] = {}
        self._joint_index = torch.tensor(JOINTS_FROM_KEYPOINTS, dtype=torch.long)
        # Inference backend (dvqvae_model.runtime.backends): "eager" | "torchscript" | "onnx" | "tensorrt" | "auto"
        # or a backend object; backend_options: artifact, cache_dir, force_rebuild, fp16, max_grasps.
        # What runtimes and exporters see of this generator: the graph, its inputs and noise.
        self.exportable = ExportableGraph(
            kind=self.kind, num_points=self.num_points, noise_tail=self.noise_shape(1)[1:],
            hand_fingerprint=str(hand.fingerprint), device=self.device,
            build_graph=self.graph, draw_noise=self.make_noise,
            model_config=config_dict(self.model),
            prior_config=config_dict(self.prior) if self.prior is not None else None,
            score_weights=self.score_weights.to_dict(), num_score_points=self.num_score_points,
        )
        self.backend: InferenceBackend = select_backend(backend, self.exportable, **(backend_options or {}))
        logging.getLogger(__name__).info("GraspGenerator inference backend: %s", self.backend.describe())

    @property
    def backend_name(self) -> str:
        """Which backend runs the sampling graph ("eager", "torchscript", "onnx" or "tensorrt")."""
        return self.backend.name

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: Union[str, Path], hand: Union[str, HandModel] = "standin",
                        device: Union[str, torch.device] = "cpu", **kwargs: Any) -> "GraspGenerator":
        """Load a checkpoint (safetensors + JSON, validated) and wrap it."""
        from dvqvae_model.checkpoint import load_checkpoint

        hand_model = load_hand_model(hand) if isinstance(hand, str) else hand
        ck = load_checkpoint(path, hand=hand_model, device=device)
        return cls(ck.model, ck.prior, hand=hand_model, device=device, **kwargs)

    def graph(self, top_k: Optional[int] = None) -> nn.Module:
        """The exportable tensor-in/tensor-out module (one per ``top_k``; submodules shared)."""
        key = int(top_k) if top_k is not None else None
        if key not in self._graphs:
            if self.kind == "dvqvae":
                g: nn.Module = SamplingGraph(self.model, self.prior, self.hand.faces, self.hand.num_vertices,
                                             top_k=key, score_weights=self.score_weights,
                                             num_score_points=self.num_score_points)
            else:
                g = CVAESamplingGraph(self.model, self.hand.faces, self.hand.num_vertices,
                                      score_weights=self.score_weights, num_score_points=self.num_score_points)
            self._graphs[key] = g.to(self.device).eval()
        return self._graphs[key]

    def noise_shape(self, num_grasps: int) -> tuple[int, ...]:
        if self.kind == "dvqvae":
            assert self.prior is not None
            return (num_grasps, self.prior.num_hand_tokens, self.prior.max_vocab)
        return (num_grasps, int(self.model.latent_dim))

    def make_noise(self, num_grasps: int, seed: int) -> Tensor:
        """Sampling noise from a generator seeded with ``seed`` (Gumbel or standard normal)."""
        gen = torch.Generator().manual_seed(int(seed))
        shape = self.noise_shape(num_grasps)
        if self.kind == "dvqvae":
            noise = gumbel_noise(*shape, generator=gen)
        else:
            noise = torch.randn(shape, generator=gen, dtype=torch.float32)
        return noise.to(self.device)

    # ------------------------------------------------------------------ inference
    def _prepare(self, points: Any, seed: int):
        arr = np.asarray(points)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise CloudError(f"points must be an [N, 3] array, got shape {arr.shape}")
        if arr.shape[0] < MIN_INPUT_POINTS:
            raise CloudError(f"need at least {MIN_INPUT_POINTS} points, got {arr.shape[0]}")
        return prepare_cloud(arr, self.num_points, seed=int(seed), **self.prepare_kwargs)

    def run_graph(self, points: Tensor, noise: Tensor, temperature: float, top_k: Optional[int]) -> tuple[Tensor, ...]:
        """Run the sampling graph through the selected backend (``self.backend``; eager by default)."""
        return self.backend(points, noise, temperature, top_k)

    def _check_args(self, num_grasps: int, temperature: float, top_k: Optional[int]) -> None:
        if int(num_grasps) < 1:
            raise ValueError(f"num_grasps must be >= 1, got {num_grasps}")
        if not float(temperature) >= 0.0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and int(top_k) < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")

    def num_candidates(self, num_grasps: int, candidates: Optional[int] = None) -> int:
        """Grasps sampled per object for ``num_grasps`` kept: ``candidates`` (or the generator's),
        at least ``num_grasps``; the raw path (ranking off) samples exactly ``num_grasps``."""
        if not self.ranking:
            return int(num_grasps)
        c = self.candidates if candidates is None else int(candidates)
        return max(int(num_grasps), c)

    def generate(self, points: Any, num_grasps: int, *, temperature: float = 1.0, top_k: Optional[int] = None,
                 seed: Optional[int] = None, candidates: Optional[int] = None,
                 gravity: Optional[Sequence[float]] = None) -> GraspSet:
        """Sample ``num_grasps`` grasps for the object cloud ``points [N, 3]`` (N >= 64, any frame).

        Same ``seed`` -> same grasps; ``seed=None`` draws a fresh one (stored in ``GraspSet.seed``).
        ``temperature`` 0 is greedy (DVQ-VAE) / the latent mean (CVAE); ``top_k`` truncates the
        prior (DVQ-VAE only). ``gravity``: the direction gravity pulls in, in the frame of ``points``
        (default: the generator's; zero: unknown).
        """
        return self.generate_batch([points], num_grasps, temperature=temperature, top_k=top_k,
                                   seeds=[seed] if seed is not None else None, candidates=candidates,
                                   gravity=gravity)[0]

    def generate_batch(self, clouds: Sequence[Any], num_grasps: int, *, temperature: float = 1.0,
                       top_k: Optional[int] = None,
                       seeds: Union[None, int, Sequence[Optional[int]]] = None,
                       candidates: Optional[int] = None, gravity: Optional[Sequence[float]] = None) -> list[GraspSet]:
        """Grasps for several objects in one batched pass; equal to per-object ``generate`` calls
        with the same seeds. ``seeds``: None (fresh), an int (object i gets ``seed + i``) or a list.
        ``candidates``: grasps sampled per object before ranking (default: the generator's).
        ``gravity``: the direction gravity pulls in, the same for every cloud (default: the generator's).
        """
        self._check_args(num_grasps, temperature, top_k)
        if len(clouds) == 0:
            return []
        if seeds is None:
            seed_list = [_random_seed() for _ in clouds]
        elif isinstance(seeds, (int, np.integer)):
            seed_list = [int(seeds) + i for i in range(len(clouds))]
        else:
            seed_list = [int(s) if s is not None else _random_seed() for s in seeds]
            if len(seed_list) != len(clouds):
                raise ValueError(f"{len(seed_list)} seeds for {len(clouds)} clouds")
        k = int(num_grasps)
        c = self.num_candidates(k, candidates)
        t0 = time.perf_counter()
        prepared = [self._prepare(cl, s) for cl, s in zip(clouds, seed_list)]
        points = torch.from_numpy(np.stack([p.points for p in prepared])).to(self.device)
        noise = torch.cat([self.make_noise(c, s) for s in seed_list], dim=0)
        t1 = time.perf_counter()
        params, vertices, keypoints, scores = self.run_graph(points, noise, temperature, top_k)
        params, vertices, keypoints, scores = (x.clone() for x in (params, vertices, keypoints, scores))
        t2 = time.perf_counter()
        terms: dict[str, Tensor] = {}
        if self.ranking or self.refine:  # refinement needs the cloud surface and the scores too
            with torch.no_grad():
                surface = CloudSurface(points)
                g = self._model_frame_gravity(self.gravity if gravity is None else gravity, prepared)
                scores, terms = self.score_candidates(points, surface, vertices, keypoints, scores, g)
                keep = self._best_per_object(scores, len(prepared), c, k)
                params, vertices, keypoints, scores = (x[keep] for x in (params, vertices, keypoints, scores))
                terms = {name: v[keep] for name, v in terms.items()}
        elif self._raw_geometry:  # the raw path on a graph built for ranking: its own score, as a raw graph's
            with torch.no_grad():
                obj_in_hand, tip_contact = self.graph(None).scorer.geometry_terms(points, vertices, keypoints)
                raw = ScoreWeights()
                scores = scores - raw.penetration * obj_in_hand - raw.contact * tip_contact
        t2r = time.perf_counter()
        if self.refine:
            params, vertices, keypoints, scores, terms = self._refine(points, surface, params, vertices, keypoints,
                                                                      scores, terms, g)
        t3 = time.perf_counter()

        joint_idx = self._joint_index.to(keypoints.device)
        joints = keypoints[:, joint_idx]
        out: list[GraspSet] = []
        for b, prep in enumerate(prepared):
            sl = slice(b * k, (b + 1) * k)
            centre = np.asarray(prep.centre, dtype=np.float64)
            p, back = self._params_to_input_frame(params[sl].cpu().numpy(), prep)
            s = scores[sl].cpu().numpy().astype(np.float32)
            order = np.argsort(-s, kind="stable")
            object_terms = {name: terms[name][sl].cpu().numpy().astype(np.float32)[order] for name in TERM_NAMES
                            if name in terms}
            out.append(GraspSet(
                params=p[order],
                vertices=back(vertices[sl].cpu().numpy())[order],
                keypoints=back(keypoints[sl].cpu().numpy())[order],
                joints=back(joints[sl].cpu().numpy())[order],
                scores=s[order],
                faces=self.faces,
                centre=centre,
                seed=seed_list[b],
                terms=object_terms,
            ))
        t4 = time.perf_counter()
        n = len(prepared)
        timing = {
            "preprocess_ms": (t1 - t0) * 1e3 / n,
            "inference_ms": (t2 - t1) * 1e3 / n,
            "rank_ms": (t2r - t2) * 1e3 / n,
            "refine_ms": (t3 - t2r) * 1e3 / n,
            "candidates": float(c),
            "total_ms": (t4 - t0) * 1e3 / n,
            "batch_objects": float(n),
        }
        for gs in out:
            gs.timing = dict(timing)
        return out

    @staticmethod
    def _model_frame_gravity(gravity: Optional[Sequence[float]], prepared: Sequence[Any]) -> Optional[Tensor]:
        """Unit gravity direction per object in the model frame [B, 3] (the clouds' rotations
        applied), or None when unknown (None or a zero vector)."""
        g = _unit_gravity(gravity)
        if g is None:
            return None
        rows = [np.asarray(p.rotation, dtype=np.float64) @ g for p in prepared]  # model = R (x - c)
        return torch.from_numpy(np.stack(rows)).float()

    def _params_to_input_frame(self, params: np.ndarray, prep: Any) -> tuple[np.ndarray, Any]:
        """MANO parameters [K, 61] moved from the model's frame to the input frame, and the point map."""
        centre = np.asarray(prep.centre, dtype=np.float64)
        rotation = np.asarray(prep.rotation, dtype=np.float64)
        if np.array_equal(rotation, np.eye(3)):  # centred only: a translation (exact in float32)
            c32 = centre.astype(np.float32)
            p = params.astype(np.float32)
            p[:, SLICE_TRANSL] += c32
            return p, lambda x: (x + c32).astype(np.float32)
        if self._wrist is None:
            self._wrist = WristJoint(self.hand)
        wrist = self._wrist(params[:, :10].astype(np.float64))
        p = transform_hand_params(params.astype(np.float64), rotation.T, centre, wrist).astype(np.float32)
        return p, lambda x: (x.astype(np.float64) @ rotation + centre).astype(np.float32)

    # ------------------------------------------------------------------ ranking and refinement
    def score_candidates(self, points: Tensor, surface: CloudSurface, vertices: Tensor, keypoints: Tensor,
                         graph_scores: Tensor, gravity: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Tensor]]:
        """(score [B*K], terms) of hands against their centred clouds ``points [B, N, 3]``; ``gravity
        [B, 3]`` in the model frame (``_model_frame_gravity``) or None.

        The prior term is recovered from the graph's score (which is prior minus its own cheap
        geometric terms), so the exported graph stays as it is.
        """
        scorer = self.graph(None).scorer
        obj_in_hand, tip_contact = scorer.geometry_terms(points, vertices, keypoints)
        sw = scorer.weights
        prior = (graph_scores + sw.penetration * obj_in_hand + sw.contact * tip_contact) / max(sw.prior, 1e-9)
        terms = quality_terms(surface, vertices, self.hand.part_ids, self._vertex_areas, obj_in_hand,
                              self.quality_weights, gravity=gravity)
        terms["prior"] = prior
        return combine_terms(prior, terms, self.quality_weights), terms

    @staticmethod
    def _best_per_object(scores: Tensor, num_objects: int, per_object: int, keep: int) -> Tensor:
        """Flat indices of the ``keep`` best of each object's ``per_object`` candidates."""
        if keep >= per_object:
            return torch.arange(num_objects * per_object, device=scores.device)
        top = scores.reshape(num_objects, per_object).topk(keep, dim=1).indices
        base = torch.arange(num_objects, device=scores.device).unsqueeze(1) * per_object
        return (top + base).reshape(-1)

    def _refine(self, points: Tensor, surface: CloudSurface, params: Tensor, vertices: Tensor, keypoints: Tensor,
                scores: Tensor, terms: dict[str, Tensor],
                gravity: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Refine the best ``refine_config.top`` grasps of each object in the centred frame, then re-score.

        A refined grasp replaces its sample only if its score rose and its penetration did not
        (as the cloud measures it, and as the learnt estimate does: on a depth view the cloud cannot
        see the object's back), so refinement never makes a published grasp worse by those measures.
        """
        cfg = self.refine_config
        num_objects = points.shape[0]
        per_object = params.shape[0] // num_objects
        top = per_object if cfg.top <= 0 else min(per_object, int(cfg.top))
        sel = self._best_per_object(scores, num_objects, per_object, top)
        if not self._refine_warm:  # the first autograd pass pays lazy set-up: not on the clock
            warm = RefineConfig(**{**cfg.to_dict(), "steps": 1, "max_time_s": 1e9})
            refine_grasps(self.hand, params[sel][::top], surface, warm, areas=self._vertex_areas)
            self._refine_warm = True
        refined, self.last_refine_info = refine_grasps(self.hand, params[sel], surface, cfg, areas=self._vertex_areas)
        with torch.no_grad():
            out = self.hand.from_params(refined)
            # score against the same surfaces; objects are grouped, so score per object slice
            new_scores, new_terms = self.score_candidates(points, surface, out.vertices, out.keypoints,
                                                          self._graph_score_of(terms["prior"][sel], points, out), gravity)
            better = (new_scores > scores[sel]) & (new_terms["penetration"] <= terms["penetration"][sel] + 1e-6)
            if "penetration_est" in terms:  # nor deeper by the learnt estimate, which sees behind a depth view
                better &= new_terms["penetration_est"] <= terms["penetration_est"][sel] + 1e-6
            params, vertices, keypoints, scores = params.clone(), vertices.clone(), keypoints.clone(), scores.clone()
            params[sel] = torch.where(better.unsqueeze(1), refined, params[sel])
            vertices[sel] = torch.where(better[:, None, None], out.vertices, vertices[sel])
            keypoints[sel] = torch.where(better[:, None, None], out.keypoints, keypoints[sel])
            scores[sel] = torch.where(better, new_scores, scores[sel])
            terms = {name: v.clone() for name, v in terms.items()}
            for name in terms:
                if name in new_terms and terms[name].dim() == 1:
                    terms[name][sel] = torch.where(better, new_terms[name], terms[name][sel])
        return params, vertices, keypoints, scores, terms

    def _graph_score_of(self, prior: Tensor, points: Tensor, out: Any) -> Tensor:
        """The graph's score of posed hands with a known prior term (inverse of ``score_candidates``)."""
        scorer = self.graph(None).scorer
        obj_in_hand, tip_contact = scorer.geometry_terms(points, out.vertices, out.keypoints)
        sw = scorer.weights
        return sw.prior * prior - sw.penetration * obj_in_hand - sw.contact * tip_contact
