"""Training configuration: the run settings, learning-rate and contact-weight schedules, the result."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from dvqvae_training.dataset.datasets import Augmentation
from torch import Tensor

from dvqvae_model.io import config_from_dict, config_to_dict
from dvqvae_model.nets.dvqvae import HAND_SHAPES
from dvqvae_model.nets.losses import LossWeights, weighted_total

CONTACT_THRESHOLD_M = 0.005
EXIT_RESUMABLE = 75  # EX_TEMPFAIL: stopped cleanly before the end, rerun with --resume

# Fields that may change between a run and its resumption (runtime knobs, not the experiment).
RUNTIME_FIELDS = frozenset({
    "out_dir", "device", "num_threads", "num_workers", "max_minutes", "max_steps", "resume", "progress",
    "save_every_steps", "log_every_steps", "val_max_batches", "epochs",
})

# Fields only the DVQ-VAE reads: a GraspCVAE run resumes whatever they hold (it records them, and
# their defaults change as the DVQ-VAE recipe improves).
DVQVAE_ONLY_FIELDS = frozenset({"variant", "position_sees_codes", "rotation", "codebook_init_rows", "use_gating",
                                "hand_frame", "hand_shape", "codebook_size"})


# =============================================================================== configuration


@dataclass
class TrainConfig:
    """DVQ-VAE / GraspCVAE training run (defaults: the paper's optimiser, the compact model)."""

    data_dir: str = ""
    out_dir: str = "out/train"
    preset: str = "compact"  # model size preset (dvqvae_model.nets.config)
    variant: str = "full"  # DVQ-VAE ablation variant
    position_sees_codes: bool = False  # DVQVAEConfig.position_sees_codes
    hand: str = "standin"  # hand model spec (load_hand_model)
    # Start a new run from this checkpoint's weights (a directory or a bundled name such as "default"):
    # fine-tuning, or going on from committed weights when a run directory is lost. The model's settings
    # then come from the checkpoint; the run's own model settings must agree with them.
    init_from: str = ""
    # Loss weights that replace the model's (LossWeights field -> value, e.g. {"lambda_p": 1e5}) in a new
    # run; contact_scale still multiplies lambda_m, lambda_c and lambda_p. Saved with the model's config.
    loss_weights: dict = field(default_factory=dict)
    num_points: int = 0  # object points per sample; 0 = the preset's
    # optimisation
    epochs: int = 200
    batch_size: int = 32
    lr: float = 1e-4
    lr_milestones: tuple[float, ...] = (0.3, 0.6, 0.8, 0.9)  # fractions of the epochs
    lr_gamma: float = 0.5
    weight_decay: float = 0.0
    grad_clip: float = 1000.0  # max global gradient norm, a spike guard (paper-weighted losses give ~1e3); 0 = off
    # Contact terms (lambda_m consistency, lambda_c contact, lambda_p penetration) at full paper weight stall
    # reconstruction from scratch; they are scaled by ``contact_scale`` and ramped in linearly from 0 over the
    # first ``contact_warmup`` fraction of the run's steps (see ``contact_scale_at``).
    contact_scale: float = 1.0  # 1.0 = the paper's weights
    contact_warmup: float = 0.3  # fraction of all steps (epochs x batches per epoch); 0 = full scale from step 0
    # Object points used by the contact / consistency / penetration terms in training steps (0 = all);
    # validation always uses all. 256 of the compact preset's 1,024 points: the same validation loss per
    # grasp seen, a cheaper step (benchmarks/bench_train.py, docs/model-card.md).
    loss_points: int = 256
    # data
    rotate: bool = True  # uniform SO(3) augmentation of object + hand together
    # The model's input frame (DVQVAEConfig.input_frame): "principal" rotates every cloud (and its grasp) into
    # the cloud's principal axes, so the model sees objects in one orientation whatever the augmentation.
    # DVQ-VAE position decoder's orientation output (DVQVAEConfig.rotation): "6d" is continuous.
    # Both lower the validation error per grasp seen (docs/model-card.md, "Input frame and rotation").
    input_frame: str = "principal"
    rotation: str = "6d"
    # DVQ-VAE codebooks' k-means initialisation waits for this many encoder outputs per book (0 = the first
    # batch: 32 rows for 128 codes, which collapses usage for the first ~350 steps; Codebook.init_rows)
    codebook_init_rows: int = 0
    # DVQ-VAE hand encoders' input (DVQVAEConfig.hand_frame): "object" lets the codes carry where the hand is
    hand_frame: str = "centred"
    # DVQ-VAE hand shape (DVQVAEConfig.hand_shape): "given" feeds the GT betas to the decoder instead of
    # decoding them from codes that cannot hold them; a run started with init_from may switch it
    hand_shape: str = "decoded"
    # DVQ-VAE entries per hand codebook (DVQVAEConfig.codebook_size); 0 = the preset's (128, the paper's)
    codebook_size: int = 0
    use_gating: bool = True  # DVQ-VAE skeletal gating (eq. 7-8); False is Table 4's "no gating" ablation
    translate: float = 0.0
    # The node's input is one depth view of the object, so training sees one too, in this share of
    # samples: the stored cloud's points visible from a random camera ("visibility": hidden-point
    # removal, ~1 ms; "depth_camera" renders the rebuilt mesh, ~0.3-1.5 s a sample, for evaluation),
    # with depth noise along the rays and the base cut off as a table-plane removal would.
    partial_prob: float = 0.3
    partial_method: str = "visibility"
    depth_noise: float = 0.001  # m, Gaussian std (along the rays on partial views)
    table_cut: float = 0.005  # m above the object's lowest point, partial views only
    max_displacement_cm: float = 0.0  # keep only grasps that held in simulation (0 = keep all)
    val_fraction: float = 0.1  # objects held out of "train" when the dataset has no "val" split
    val_max_batches: int = 0  # 0 = the whole validation split
    num_workers: int = 0
    # bookkeeping
    seed: int = 0
    device: str = "cpu"
    num_threads: int = 0  # 0 = leave torch's default
    save_every_steps: int = 200
    log_every_steps: int = 10
    max_minutes: float = 0.0  # stop cleanly (resumable) after this much wall time; 0 = no limit
    max_steps: int = 0  # stop cleanly after this many optimiser steps in total; 0 = no limit
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.lr_milestones = tuple(float(m) for m in self.lr_milestones)
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if any(not 0.0 < m <= 1.0 for m in self.lr_milestones):
            raise ValueError(f"lr_milestones are fractions of the run in (0, 1], got {self.lr_milestones}")
        if not (math.isfinite(self.contact_scale) and self.contact_scale >= 0.0):
            raise ValueError(f"contact_scale must be a finite number >= 0, got {self.contact_scale}")
        if self.codebook_size < 0 or self.codebook_size == 1:
            raise ValueError(f"codebook_size must be >= 2 (0 = the preset's), got {self.codebook_size}")
        if self.hand_shape not in HAND_SHAPES:
            raise ValueError(f"unknown hand_shape {self.hand_shape!r}; expected one of {HAND_SHAPES}")
        if self.loss_points < 0:
            raise ValueError(f"loss_points must be >= 0 (0 = all points), got {self.loss_points}")
        known = {f.name for f in dataclasses.fields(LossWeights)}
        unknown = sorted(set(self.loss_weights) - known)
        if unknown:
            raise ValueError(f"unknown loss weights {unknown}; known: {sorted(known)}")
        self.loss_weights = {str(k): float(v) for k, v in self.loss_weights.items()}
        if not all(math.isfinite(v) for v in self.loss_weights.values()):
            raise ValueError(f"loss weights must be finite, got {self.loss_weights}")
        if not 0.0 <= self.contact_warmup <= 1.0:
            raise ValueError(f"contact_warmup is a fraction of the run in [0, 1], got {self.contact_warmup}")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return config_from_dict(cls, d)  # unknown keys are refused, as for every config

    def augmentation(self) -> Augmentation:
        return Augmentation(rotate=self.rotate, translate=self.translate, partial_prob=self.partial_prob,
                            partial_method=self.partial_method, depth_noise=self.depth_noise,
                            table_cut=self.table_cut, input_frame=self.input_frame)


@dataclass
class PriorTrainConfig(TrainConfig):
    """Prior run: the paper's Adam 3e-4 for 100 epochs (constant rate) on cached tokens."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 3e-4
    lr_milestones: tuple[float, ...] = ()
    grad_clip: float = 5.0  # spike guard; cross-entropy gradient norms are ~1
    contact_warmup: float = 0.0  # no contact terms in the prior's loss
    loss_points: int = 0  # no contact terms (keeps prior states from before the field resumable)
    token_views: int = 4  # augmented passes over the training split when caching tokens
    save_every_steps: int = 500
    log_every_steps: int = 50


@dataclass
class TrainResult:
    """What a stage returns; ``finished`` is False when it stopped early (resume to continue)."""

    stage: str
    finished: bool
    stop_reason: str  # "done" | "time_budget" | "max_steps" | "signal"
    epoch: int  # completed epochs
    step: int
    checkpoint: Optional[Path]
    state_dir: Path
    log_path: Path
    metrics: dict[str, float] = field(default_factory=dict)  # last validation
    elapsed_seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


CONTACT_TERMS = ("consistency", "contact", "penetration")  # the terms weighted by lambda_m, lambda_c, lambda_p
# Values of fields added after version-1 states were first written, for states saved without them
# (so an old run resumes only with the settings it was actually trained with).
LEGACY_CONFIG = {"contact_scale": 1.0, "contact_warmup": 0.0, "loss_points": 0, "input_frame": "centred",
                 "rotation": "axis_angle", "codebook_init_rows": 0,
                 "use_gating": True, "hand_frame": "centred", "hand_shape": "decoded", "codebook_size": 0, "init_from": "",
                 "loss_weights": {}}


def contact_scale_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Factor on the contact-term weights for the update after ``step`` completed steps.

    ``contact_scale * min(1, step / W)`` with ``W = round(contact_warmup * total_steps)`` warm-up steps
    (``W == 0``: no warm-up). A pure function of the step counter and the stored config, so a resumed run
    uses exactly the factors of an uninterrupted one.
    """
    ramp = int(round(cfg.contact_warmup * max(0, int(total_steps))))
    if ramp <= 0:
        return float(cfg.contact_scale)
    return float(cfg.contact_scale) * min(1.0, max(0, int(step)) / ramp)


def scaled_total(losses: dict[str, Tensor], weights: LossWeights, factor: float) -> Tensor:
    """``losses["total"]`` with the contact terms' weights (lambda_m, lambda_c, lambda_p) times ``factor``.

    The model's own ``total`` (the paper weights) is returned unchanged when ``factor == 1``.
    """
    if factor == 1.0:
        return losses["total"]
    w = dataclasses.replace(weights, lambda_m=weights.lambda_m * factor, lambda_c=weights.lambda_c * factor,
                            lambda_p=weights.lambda_p * factor)
    return weighted_total({k: v for k, v in losses.items() if k != "total"}, w)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``: ``lr * gamma^(milestones passed)``, milestones in epochs."""
    milestones = [int(round(m * cfg.epochs)) for m in cfg.lr_milestones]
    return cfg.lr * cfg.lr_gamma ** sum(epoch >= m for m in milestones)


