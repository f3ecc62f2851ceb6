"""Training loops for DVQ-VAE, its autoregressive prior and the GraspCVAE baseline.

One loop (:class:`_Loop`) serves the three stages; each stage only says how to run a batch,
how to validate and what to write at the end:

* ``train_dvqvae``  Adam 1e-4, halved at 30/60/80/90 % of the epochs (the paper's 60/120/160/180
                    of 200), gradient clipping, per-codebook usage (batch perplexity, live codes,
                    codes revived by the codebooks' dead-code hook), validation each epoch
                    (losses, vertex error in mm, point-cloud contact ratio and penetration depth).
                    The contact terms (lambda_m, lambda_c, lambda_p) are multiplied by ``contact_scale``
                    and ramped in linearly over the first ``contact_warmup`` of the steps: at the paper's
                    weights from step 0 they stall reconstruction. The factor used is logged per step
                    (``contact_scale``) next to the loss optimised (``loss``) and the paper-weighted one
                    (``paper_loss``); validation ``loss`` is always paper-weighted, comparable across runs.
* ``train_prior``   the gated PixelCNN on the tokens the trained DVQ-VAE assigns to the *training*
                    split (encoded once, cached on disk), validated on tokens of *other* objects
                    (the released code validated on its training split). Adam 3e-4.
* ``train_cvae``    the GraspCVAE baseline with the DVQ-VAE schedule.

Resuming: every ``save_every_steps`` steps, at every epoch end and when stopping early (time
budget, ``max_steps``, SIGINT/SIGTERM) the loop writes a *training state*: model tensors (all
parameters and buffers, also the codebooks' non-persistent revival buffers), Adam's moments, the
RNG states and the loop position, as one safetensors file plus ``state.json`` (the commit point,
written atomically after the tensors). Nothing is ever unpickled. Batches come from a per-epoch
permutation seeded by (seed, epoch) and augmentation is seeded per (seed, epoch, index), so a
resumed run, even one resumed from a ``kill -9``, takes exactly the steps the uninterrupted run
would have taken. The final product of a stage is a regular inference checkpoint
(``dvqvae_model.checkpoint.save_checkpoint``) with the data description and hand fingerprint.

Output layout under ``out_dir``::

    dvqvae/{state/, log.jsonl, log.csv, checkpoint/}   DVQ-VAE alone (no prior)
    prior/{state/, log.jsonl, log.csv, tokens.safetensors}
    checkpoint/                                         DVQ-VAE + prior: what GraspGenerator loads
    cvae/{state/, log.jsonl, log.csv, checkpoint/}
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from dvqvae_model.checkpoint import LoadedCheckpoint, load_checkpoint, read_checkpoint_config, save_checkpoint
from dvqvae_model.nets.config import cvae_config, dvqvae_config, prior_config
from dvqvae_model.nets.cvae import CVAEConfig, GraspCVAE
from dvqvae_model.nets.dvqvae import DVQVAE, DVQVAEConfig
from dvqvae_model.hand.hand_model import HandModel, load_hand_model
from dvqvae_model.nets.losses import LossWeights, weighted_total
from dvqvae_model.nets.prior import GatedPixelCNNPrior, PriorConfig
from dvqvae_model.io import atomic_write_bytes, config_from_dict, config_to_dict
from dvqvae_training.dataset.dataset_format import DatasetReader
from dvqvae_training.dataset.datasets import Augmentation, GraspDataset

STATE_FORMAT = "dvqvae-train-state"
STATE_VERSION = 1
STATE_JSON = "state.json"
CONTACT_THRESHOLD_M = 0.005
EXIT_RESUMABLE = 75  # EX_TEMPFAIL: stopped cleanly before the end, rerun with --resume

# Fields that may change between a run and its resumption (runtime knobs, not the experiment).
RUNTIME_FIELDS = frozenset({
    "out_dir", "device", "num_threads", "num_workers", "max_minutes", "max_steps", "resume", "progress",
    "save_every_steps", "log_every_steps", "val_max_batches", "epochs",
})


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
    # data
    rotate: bool = True  # uniform SO(3) augmentation of object + hand together
    translate: float = 0.0
    partial_prob: float = 0.0  # share of single-view partial clouds
    depth_noise: float = 0.0
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
        if not 0.0 <= self.contact_warmup <= 1.0:
            raise ValueError(f"contact_warmup is a fraction of the run in [0, 1], got {self.contact_warmup}")

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return config_from_dict(cls, d)  # unknown keys are refused, as for every config

    def augmentation(self) -> Augmentation:
        return Augmentation(rotate=self.rotate, translate=self.translate, partial_prob=self.partial_prob,
                            depth_noise=self.depth_noise)


@dataclass
class PriorTrainConfig(TrainConfig):
    """Prior run: the paper's Adam 3e-4 for 100 epochs (constant rate) on cached tokens."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 3e-4
    lr_milestones: tuple[float, ...] = ()
    grad_clip: float = 5.0  # spike guard; cross-entropy gradient norms are ~1
    contact_warmup: float = 0.0  # no contact terms in the prior's loss
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
LEGACY_CONFIG = {"contact_scale": 1.0, "contact_warmup": 0.0}


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


# =============================================================================== training state


def _hand_prefixes(module: nn.Module) -> tuple[str, ...]:
    return tuple(name + "." for name, m in module.named_modules() if name and isinstance(m, HandModel))


def module_tensors(module: nn.Module) -> dict[str, Tensor]:
    """All parameters and buffers (persistent or not) except the hand model's: the full training state."""
    skip = _hand_prefixes(module)
    out: dict[str, Tensor] = {}
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if not name.startswith(skip):
            out[name] = t.detach().to("cpu").contiguous().clone()
    return out


def load_module_tensors(module: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Inverse of :func:`module_tensors`; refuses missing, unexpected or mis-shaped entries."""
    skip = _hand_prefixes(module)
    own = {n: t for n, t in list(module.named_parameters()) + list(module.named_buffers()) if not n.startswith(skip)}
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(f"training state does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, t in own.items():
            src = tensors[name]
            if src.shape != t.shape:
                raise ValueError(f"training state: {name} has shape {tuple(src.shape)}, model {tuple(t.shape)}")
            t.copy_(src.to(t.device, t.dtype))


def _optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Adam state -> (tensors ``optim.{param}.{key}``, JSON with param groups and scalar entries)."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"optim.{pid}.{key}"] = v.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[key] = v
    groups = json.loads(json.dumps(sd["param_groups"], default=list))
    return tensors, {"param_groups": groups, "scalars": scalars}


def _load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = t
    for pid, entries in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


def _rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    py = random.getstate()
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def _set_rng_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    v, st, gauss = meta["python"]
    random.setstate((v, tuple(st), gauss))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_training_state(state_dir: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                        meta: dict[str, Any]) -> Path:
    """Write a training state: ``state-<step>-<id>.safetensors`` first, then ``state.json`` (atomic).

    ``state.json`` names the tensor file and its sha256; it is replaced only after the tensors are on
    disk, so a crash at any point leaves the previous complete state in force. Older tensor files
    are removed afterwards.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    for name, module in modules.items():
        tensors.update({f"module.{name}.{k}": v for k, v in module_tensors(module).items()})
    opt_tensors, opt_meta = _optimizer_state(optimizer)
    rng_tensors, rng_meta = _rng_state()
    tensors.update(opt_tensors)
    tensors.update(rng_tensors)
    fname = f"state-{int(meta.get('step', 0)):09d}-{uuid.uuid4().hex[:8]}.safetensors"
    tmp = state_dir / (fname + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": STATE_FORMAT})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, state_dir / fname)
    doc = dict(meta, format=STATE_FORMAT, format_version=STATE_VERSION, tensors_file=fname,
               sha256=_sha256(state_dir / fname), optimizer=opt_meta, rng=rng_meta,
               saved_unix=time.time())
    atomic_write_bytes(state_dir / STATE_JSON, json.dumps(doc, indent=1, sort_keys=True).encode())
    for p in state_dir.iterdir():  # superseded or half-written tensor files
        if p.name != fname and p.name.startswith("state-"):
            p.unlink(missing_ok=True)
    return state_dir / STATE_JSON


def read_training_state(state_dir: Path) -> Optional[dict[str, Any]]:
    """``state.json`` of a state directory, or None when there is none."""
    path = Path(state_dir) / STATE_JSON
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    if meta.get("format") != STATE_FORMAT or meta.get("format_version") != STATE_VERSION:
        raise ValueError(f"{path} is not a version-{STATE_VERSION} {STATE_FORMAT} file")
    return meta


def load_training_state(state_dir: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, meta) of a training state, checksum verified; safetensors + JSON only."""
    meta = read_training_state(state_dir)
    if meta is None:
        raise FileNotFoundError(f"no training state in {state_dir}")
    path = Path(state_dir) / meta["tensors_file"]
    if not path.is_file() or _sha256(path) != meta["sha256"]:
        raise ValueError(f"training state {path} is missing or corrupted (sha256 mismatch)")
    return load_file(str(path)), meta


def restore_training_state(tensors: dict[str, Tensor], meta: dict[str, Any], modules: dict[str, nn.Module],
                           optimizer: torch.optim.Optimizer) -> None:
    for name, module in modules.items():
        prefix = f"module.{name}."
        load_module_tensors(module, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    _load_optimizer_state(optimizer, tensors, meta["optimizer"])
    _set_rng_state(tensors, meta["rng"])


# =============================================================================== data


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of a permutation seeded by (seed, epoch); ``skip`` leading batches on resume.

    Only full batches (BatchNorm needs more than one sample), unless the split is smaller than one
    batch: then one batch of everything.
    """

    def __init__(self, size: int, batch_size: int, seed: int, shuffle: bool = True) -> None:
        self.size, self.batch_size, self.seed, self.shuffle = int(size), int(batch_size), int(seed), shuffle
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)

    def batches(self) -> list[list[int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        if self.size == 0:
            return []
        if self.size < self.batch_size:
            return [order]
        n = self.size // self.batch_size
        return [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(n)]

    def num_batches(self) -> int:
        return 0 if self.size == 0 else max(1, self.size // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches()[self.skip:]

    def __len__(self) -> int:
        return max(0, self.num_batches() - self.skip)


def _index_object_ids(reader: DatasetReader, index: np.ndarray) -> np.ndarray:
    """Object id of every (shard, row) grasp of a dataset index."""
    out = np.empty(len(index), dtype=object)
    for k, (s, r) in enumerate(index):
        d = reader.load_shard(int(s))
        out[k] = str(d["object_id"][int(d["grasp_object"][int(r)])])
    return out


def _holdout_ids(ids: Sequence[str], fraction: float, salt: str) -> set[str]:
    """A deterministic ``fraction`` of the objects (at least one when there are two or more)."""
    uniq = sorted(set(ids))
    if len(uniq) < 2 or fraction <= 0:
        return set()
    count = min(len(uniq) - 1, max(1, int(round(fraction * len(uniq)))))
    ranked = sorted(uniq, key=lambda o: hashlib.sha256(f"{salt}:{o}".encode()).hexdigest())
    return set(ranked[:count])


@dataclass
class SplitData:
    train: GraspDataset
    val: Optional[GraspDataset]
    train_objects: list[str]
    val_objects: list[str]
    val_source: str  # "val" split, "holdout" from train, or "none"
    info: dict[str, Any]


def open_splits(cfg: TrainConfig, hand: HandModel, num_points: int, val_augment: Optional[Augmentation] = None,
                train_augment: Optional[Augmentation] = None) -> SplitData:
    """Train / validation datasets of ``cfg.data_dir``, split by object.

    Validation is the dataset's "val" split; without one, a deterministic ``val_fraction`` of the
    training objects is held out (and removed from training).
    """
    if not cfg.data_dir:
        raise ValueError("no data_dir given")
    reader = DatasetReader(cfg.data_dir)
    metric_filter = None
    if cfg.max_displacement_cm > 0:
        if "displacement_cm" not in reader.metric_names:
            raise ValueError("max_displacement_cm given but the dataset has no displacement_cm metric")
        col = reader.metric_names.index("displacement_cm")
        limit = float(cfg.max_displacement_cm)
        metric_filter = lambda m: not (m[col] > limit)  # noqa: E731 - NaN (not simulated) is kept

    def make(split: str, augment: Augmentation) -> GraspDataset:
        return GraspDataset(reader, split, num_points=num_points, augment=augment, hand=hand, seed=cfg.seed,
                            metric_filter=metric_filter)

    train = make("train", train_augment or cfg.augmentation())
    if len(train) == 0:
        raise ValueError(f"{cfg.data_dir}: no training grasps (split 'train' is empty)")
    train_ids = _index_object_ids(reader, train.index)
    val: Optional[GraspDataset] = None
    source = "none"
    if reader.num_objects("val") > 0:
        val = make("val", val_augment or Augmentation())
        source = "val"
        val_ids = _index_object_ids(reader, val.index)
    else:
        held = _holdout_ids(train_ids, cfg.val_fraction, f"holdout-{cfg.seed}")
        val_ids = np.array([], dtype=object)
        if held:
            mask = np.array([o in held for o in train_ids], dtype=bool)
            val = make("train", val_augment or Augmentation())
            val.index, val_ids = train.index[mask], train_ids[mask]
            train.index, train_ids = train.index[~mask], train_ids[~mask]
            source = "holdout"
    if val is not None and len(val) == 0:
        val, source = None, "none"
    manifest = reader.manifest
    info = {
        "dataset": str(Path(cfg.data_dir).resolve()),
        "generator_version": manifest.get("generator_version"),
        "dataset_hand_fingerprint": manifest.get("hand_fingerprint"),
        "num_objects": {s: reader.num_objects(s) for s in ("train", "val", "test")},
        "num_grasps": {s: reader.num_grasps(s) for s in ("train", "val", "test")},
        "train_grasps_used": len(train),
        "val_grasps_used": len(val) if val is not None else 0,
        "validation": source,
        "augmentation": dataclasses.asdict(train.augment),
        "max_displacement_cm": cfg.max_displacement_cm or None,
    }
    return SplitData(train, val, sorted(set(train_ids)), sorted(set(val_ids)), source, info)


# =============================================================================== metrics


@torch.no_grad()
def cloud_contact_penetration(vertices: Tensor, points: Tensor, normals: Tensor,
                              threshold: float = CONTACT_THRESHOLD_M) -> tuple[Tensor, Tensor]:
    """Point-cloud proxies of Table-1 contact and penetration (cheap enough for every epoch).

    A hand vertex is inside the object when it lies behind the outward normal of its nearest object
    point. Returns (contact [B] bool: any vertex inside or within ``threshold``, depth [B] in mm: the
    deepest inside vertex). The mesh-exact metrics are in ``dvqvae_training.evaluate.evaluate``.
    """
    contact, depth = [], []
    for v, p, n in zip(vertices, points, normals):
        dist, idx = torch.cdist(v, p).min(dim=1)
        signed = ((v - p[idx]) * n[idx]).sum(-1)
        inside = signed < 0
        contact.append(bool(((dist <= threshold) | inside).any()))
        depth.append(float(torch.where(inside, -signed, torch.zeros_like(signed)).max()) * 1000.0)
    return torch.tensor(contact), torch.tensor(depth)


class _Mean:
    """Running means of named scalars (JSON-serialisable for mid-epoch resume)."""

    def __init__(self, state: Optional[dict[str, list[float]]] = None) -> None:
        self.sums: dict[str, list[float]] = {k: list(v) for k, v in (state or {}).items()}

    def add(self, stats: dict[str, float], weight: float = 1.0) -> None:
        for k, v in stats.items():
            s = self.sums.setdefault(k, [0.0, 0.0])
            s[0] += float(v) * weight
            s[1] += weight

    def means(self) -> dict[str, float]:
        return {k: s[0] / s[1] for k, s in self.sums.items() if s[1] > 0}


# =============================================================================== logging


class RunLog:
    """JSON-lines log (every record) plus a CSV of epoch rows; trimmed to the state on resume."""

    def __init__(self, stage_dir: Path) -> None:
        self.jsonl = Path(stage_dir) / "log.jsonl"
        self.csv = Path(stage_dir) / "log.csv"

    def trim(self, step: int, epochs_done: int) -> None:
        """Drop records written after the state we resume from (they will be written again)."""
        if self.jsonl.is_file():
            keep = []
            for line in self.jsonl.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by the crash
                if (rec.get("kind") == "epoch" and rec.get("epoch", 0) <= epochs_done) or \
                        (rec.get("kind") != "epoch" and rec.get("step", 0) <= step):
                    keep.append(line)
            atomic_write_bytes(self.jsonl, ("\n".join(keep) + "\n" if keep else "").encode())
        if self.csv.is_file():
            with open(self.csv, newline="") as f:
                rows = list(csv.DictReader(f))
            fields = list(rows[0].keys()) if rows else []
            rows = [r for r in rows if int(float(r.get("epoch", 0))) <= epochs_done]
            if fields:
                self._write_csv(fields, rows)
            else:
                self.csv.unlink()

    def _write_csv(self, fields: list[str], rows: list[dict[str, Any]]) -> None:
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write_bytes(self.csv, buf.getvalue().encode())

    def write(self, record: dict[str, Any]) -> None:
        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record, sort_keys=True, default=float) + "\n")
        if record.get("kind") == "epoch":
            flat = {k: v for k, v in record.items() if isinstance(v, (int, float, str, bool))}
            if self.csv.is_file():
                with open(self.csv, newline="") as f:
                    fields = next(csv.reader(f), None) or list(flat)
                with open(self.csv, "a", newline="") as f:
                    csv.DictWriter(f, fieldnames=fields, extrasaction="ignore").writerow(flat)
            else:
                self._write_csv(list(flat), [flat])


# =============================================================================== the loop


class StopOnSignals:
    """While active, SIGINT/SIGTERM only set ``StopOnSignals.signal``; the loop then saves and stops.

    Re-entrant (a stage inside ``train_all`` inside the CLI): handlers are installed by the outermost
    ``with`` and restored when it ends, so a signal during token encoding or checkpoint writing also
    leads to a clean, resumable stop. Main thread only; a second signal interrupts at once.
    """

    signal: Optional[int] = None
    _depth = 0
    _old: dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignals":
        cls = StopOnSignals
        if cls._depth == 0:
            cls.signal = None
            if threading.current_thread() is threading.main_thread():
                cls._old = {sig: signal.signal(sig, cls._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        cls._depth += 1
        return self

    @staticmethod
    def _handle(signum: int, frame: Any) -> None:
        if StopOnSignals.signal is not None:
            raise KeyboardInterrupt
        StopOnSignals.signal = signum

    def __exit__(self, *exc: Any) -> None:
        cls = StopOnSignals
        cls._depth -= 1
        if cls._depth == 0:
            for sig, old in cls._old.items():
                signal.signal(sig, old)
            cls._old = {}


StepCallback = Callable[["_Loop", int, dict[str, float]], None]


class _Loop:
    """Epochs of batches with a resumable position; the stage supplies forward / validate / finalize."""

    def __init__(self, stage: str, cfg: TrainConfig, stage_dir: Path, modules: dict[str, nn.Module],
                 optimizer: torch.optim.Optimizer, dataset: Dataset, sampler: EpochBatchSampler,
                 forward: Callable[[Any], tuple[Tensor, dict[str, float]]],
                 validate: Callable[[], dict[str, float]], deadline: Optional[float],
                 on_step: Optional[StepCallback], describe: dict[str, Any]) -> None:
        self.stage, self.cfg, self.stage_dir = stage, cfg, Path(stage_dir)
        self.state_dir = self.stage_dir / "state"
        self.modules, self.optimizer = modules, optimizer
        self.dataset, self.sampler = dataset, sampler
        self.forward, self.validate = forward, validate
        self.deadline, self.on_step = deadline, on_step
        self.describe = describe  # JSON facts stored in the state (configs, data info)
        self.log = RunLog(self.stage_dir)
        self.epoch = self.batch_in_epoch = self.step = 0
        self.finished = False
        self.elapsed = 0.0
        self.acc = _Mean()
        self.metrics: dict[str, float] = {}
        self.params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        self.bad_steps = 0

    def total_steps(self) -> int:
        """Optimiser steps of the whole run (``epochs`` x batches per epoch): the warm-up's time base."""
        return int(self.cfg.epochs) * self.sampler.num_batches()

    # ---------------------------------------------------------------- state
    def meta(self) -> dict[str, Any]:
        return {"stage": self.stage, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "step": self.step, "finished": self.finished, "elapsed_seconds": self.elapsed,
                "epoch_stats": self.acc.sums, "metrics": self.metrics, "config": self.cfg.to_dict(),
                "scheduler": {"kind": "step", "base_lr": self.cfg.lr, "gamma": self.cfg.lr_gamma,
                              "milestones_epochs": [int(round(m * self.cfg.epochs)) for m in self.cfg.lr_milestones],
                              "lr": self.optimizer.param_groups[0]["lr"]},
                **self.describe}

    def save(self) -> None:
        save_training_state(self.state_dir, self.modules, self.optimizer, self.meta())

    def restore(self) -> None:
        """Continue from the saved state (checked against the current config)."""
        tensors, meta = load_training_state(self.state_dir)
        _check_resumable({**LEGACY_CONFIG, **meta["config"]}, self.cfg.to_dict())
        restore_training_state(tensors, meta, self.modules, self.optimizer)
        self.epoch, self.batch_in_epoch, self.step = meta["epoch"], meta["batch_in_epoch"], meta["step"]
        # a finished run resumed with more epochs continues training
        self.finished = bool(meta["finished"]) and self.epoch >= self.cfg.epochs
        self.elapsed = float(meta["elapsed_seconds"])
        self.acc = _Mean(meta["epoch_stats"])
        self.metrics = dict(meta.get("metrics", {}))
        self.log.trim(self.step, self.epoch)
        self.log.write({"kind": "event", "event": "resumed", "stage": self.stage, "step": self.step,
                        "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch})

    # ---------------------------------------------------------------- running
    def _stop_reason(self) -> Optional[str]:
        if StopOnSignals.signal is not None:
            return "signal"
        if self.cfg.max_steps and self.step >= self.cfg.max_steps:
            return "max_steps"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "time_budget"
        return None

    def _set_lr(self) -> float:
        lr = lr_at(self.cfg, self.epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def _train_mode(self, on: bool) -> None:
        for m in self.modules.values():
            m.train(on)

    def run(self) -> str:
        """Train until the last epoch or a stop condition; returns the stop reason ("done" at the end)."""
        cfg = self.cfg
        t_start = time.monotonic()
        elapsed0 = self.elapsed
        loader = DataLoader(self.dataset, batch_sampler=self.sampler, num_workers=cfg.num_workers,
                            generator=torch.Generator().manual_seed(cfg.seed))
        with StopOnSignals():
            while self.epoch < cfg.epochs and not self.finished:
                lr = self._set_lr()
                self.sampler.set_epoch(self.epoch, skip=self.batch_in_epoch)
                if hasattr(self.dataset, "set_epoch"):
                    self.dataset.set_epoch(self.epoch)
                self._train_mode(True)
                bar = tqdm(total=self.sampler.num_batches(), initial=self.batch_in_epoch, disable=not cfg.progress,
                           desc=f"{self.stage} {self.epoch + 1}/{cfg.epochs}", dynamic_ncols=True, leave=False)
                try:
                    for batch in loader:
                        reason = self._stop_reason()
                        if reason:
                            self.elapsed = elapsed0 + time.monotonic() - t_start
                            self.save()
                            self.log.write({"kind": "event", "event": "stopped", "reason": reason, "step": self.step,
                                            "epoch": self.epoch, "stage": self.stage})
                            return reason
                        stats = self._train_step(batch)
                        self.step += 1
                        self.batch_in_epoch += 1
                        self.acc.add(stats)
                        bar.update(1)
                        bar.set_postfix(loss=f"{stats.get('loss', float('nan')):.4g}")
                        if cfg.log_every_steps and self.step % cfg.log_every_steps == 0:
                            self.log.write({"kind": "step", "stage": self.stage, "epoch": self.epoch + 1,
                                            "step": self.step, "lr": lr, **stats})
                        if self.on_step is not None:
                            self.on_step(self, self.step, stats)
                        if cfg.save_every_steps and self.step % cfg.save_every_steps == 0:
                            self.elapsed = elapsed0 + time.monotonic() - t_start
                            self.save()
                finally:
                    bar.close()
                # epoch end: validate, log, save
                self._train_mode(False)
                self.metrics = self.validate()
                self._train_mode(True)
                self.elapsed = elapsed0 + time.monotonic() - t_start
                record = {"kind": "epoch", "stage": self.stage, "epoch": self.epoch + 1, "step": self.step, "lr": lr,
                          "elapsed_s": round(self.elapsed, 2),
                          **{f"train_{k}": v for k, v in self.acc.means().items()},
                          **{f"val_{k}": v for k, v in self.metrics.items()}}
                self.log.write(record)
                if cfg.progress:
                    tqdm.write(_epoch_line(record))
                self.epoch += 1
                self.batch_in_epoch = 0
                self.acc = _Mean()
                self.save()
        self.elapsed = elapsed0 + time.monotonic() - t_start
        return "done"

    def _train_step(self, batch: Any) -> dict[str, float]:
        loss, stats = self.forward(batch)
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            # A non-finite loss would poison Adam's moments: skip the update, give up if it persists.
            self.bad_steps += 1
            if self.bad_steps > 20:
                raise FloatingPointError(f"{self.stage}: loss not finite for {self.bad_steps} consecutive steps")
            return dict(stats, skipped=1.0)
        self.bad_steps = 0
        loss.backward()
        if self.cfg.grad_clip > 0:
            gn = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        else:
            gn = torch.sqrt(sum((p.grad.detach() ** 2).sum() for p in self.params if p.grad is not None))
        self.optimizer.step()
        return dict(stats, grad_norm=float(gn))


def _epoch_line(rec: dict[str, Any]) -> str:
    keys = [k for k in ("train_loss", "train_contact_scale", "val_loss", "val_vertex_err_mm", "val_contact_ratio", "val_pen_depth_mm",
                        "val_nll", "val_accuracy") if k in rec]
    body = "  ".join(f"{k}={rec[k]:.4g}" for k in keys)
    return f"[{rec['stage']}] epoch {rec['epoch']} step {rec['step']} lr {rec['lr']:.3g}  {body}"


def _check_resumable(saved: dict[str, Any], now: dict[str, Any]) -> None:
    diff = {k: (saved.get(k), v) for k, v in now.items() if k not in RUNTIME_FIELDS and saved.get(k) != v}
    if diff:
        lines = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"cannot resume: the run was started with different settings ({lines})")


def seed_everything(seed: int) -> None:
    """Seed torch, numpy's and Python's global generators (a fresh run; a resumed one restores them)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _deadline(cfg: TrainConfig, deadline: Optional[float]) -> Optional[float]:
    if deadline is not None:
        return deadline
    return time.monotonic() + 60.0 * cfg.max_minutes if cfg.max_minutes > 0 else None


def _prepare_state_dir(cfg: TrainConfig, stage_dir: Path) -> bool:
    """True when a saved state should be restored; refuses to silently overwrite a run."""
    exists = read_training_state(stage_dir / "state") is not None
    if exists and not cfg.resume:
        raise FileExistsError(f"{stage_dir / 'state'} holds a training state: pass resume=True (--resume) "
                              "to continue it, or choose another out_dir")
    if not exists and (stage_dir / "log.jsonl").exists():
        (stage_dir / "log.jsonl").unlink()  # a run that never saved a state: start its log afresh
        (stage_dir / "log.csv").unlink(missing_ok=True)
    return exists


def _num_points(cfg: TrainConfig, model_cfg_points: int) -> int:
    return int(cfg.num_points) if cfg.num_points else int(model_cfg_points)


def _adam(params: Any, cfg: TrainConfig) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _val_loader(ds: Dataset, cfg: TrainConfig) -> DataLoader:
    sampler = EpochBatchSampler(len(ds), cfg.batch_size, cfg.seed, shuffle=False)
    return DataLoader(ds, batch_sampler=sampler, num_workers=cfg.num_workers)


def _result(stage: str, loop: _Loop, reason: str, checkpoint: Optional[Path], info: dict[str, Any]) -> TrainResult:
    return TrainResult(stage=stage, finished=reason == "done", stop_reason=reason, epoch=loop.epoch, step=loop.step,
                       checkpoint=checkpoint, state_dir=loop.state_dir, log_path=loop.log.jsonl,
                       metrics=dict(loop.metrics), elapsed_seconds=loop.elapsed, info=info)


# =============================================================================== grasp models (DVQ-VAE, CVAE)


def _grasp_validation(model: nn.Module, loader: Optional[DataLoader], hand: HandModel, device: torch.device,
                      max_batches: int, call: Callable[[Tensor, Tensor], Any]) -> dict[str, float]:
    """Reconstruction metrics of a grasp model on the validation split (eval mode, no grad)."""
    if loader is None:
        return {}
    acc = _Mean()
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if max_batches and i >= max_batches:
                break
            pts, prm, nrm = batch["points"].to(device), batch["params"].to(device), batch["normals"].to(device)
            out = call(pts, prm)
            gt = hand.from_params(prm)
            pred = out.decoding.vertices
            contact, depth = cloud_contact_penetration(pred, pts, nrm)
            gt_contact, gt_depth = cloud_contact_penetration(gt.vertices, pts, nrm)
            stats = {"loss": float(out.losses["total"]),
                     **{k: float(v) for k, v in out.losses.items() if k != "total"},
                     "vertex_err_mm": float((pred - gt.vertices).norm(dim=-1).mean()) * 1000.0,
                     "contact_ratio": float(contact.float().mean()),
                     "pen_depth_mm": float(depth.mean()),
                     "gt_contact_ratio": float(gt_contact.float().mean()),
                     "gt_pen_depth_mm": float(gt_depth.mean())}
            tokens = getattr(out, "tokens", None)
            if tokens is not None:  # distinct tokens per slot seen in validation: a quick collapse check
                stats["tokens_distinct"] = float(np.mean([len(torch.unique(t)) for t in tokens.T]))
            acc.add(stats, weight=float(pts.shape[0]))
    return acc.means()


def _train_grasp_model(stage: str, cfg: TrainConfig, *, hand: Optional[HandModel], deadline: Optional[float],
                       on_step: Optional[StepCallback]) -> TrainResult:
    """Shared body of ``train_dvqvae`` and ``train_cvae``."""
    hand = hand if hand is not None else load_hand_model(cfg.hand)
    device = torch.device(cfg.device)
    stage_dir = Path(cfg.out_dir) / stage
    resume = _prepare_state_dir(cfg, stage_dir)
    saved = read_training_state(stage_dir / "state") if resume else None

    seed_everything(cfg.seed)
    if stage == "dvqvae":
        model_cfg: Any = DVQVAEConfig.from_dict(saved["model_config"]) if saved else \
            dvqvae_config(cfg.preset, variant=cfg.variant, position_sees_codes=cfg.position_sees_codes,
                          **({"num_points": cfg.num_points} if cfg.num_points else {}))
        model: nn.Module = DVQVAE(model_cfg, hand)
    else:
        model_cfg = CVAEConfig.from_dict(saved["model_config"]) if saved else \
            cvae_config(cfg.preset, **({"num_points": cfg.num_points} if cfg.num_points else {}))
        model = GraspCVAE(model_cfg, hand)
    data = open_splits(cfg, hand, _num_points(cfg, model_cfg.num_points))  # before the hand moves to the device
    model.to(device).train()
    optimizer = _adam(model.parameters(), cfg)
    sampler = EpochBatchSampler(len(data.train), cfg.batch_size, cfg.seed)
    val_loader = _val_loader(data.val, cfg) if data.val is not None else None
    is_dvq = stage == "dvqvae"

    def call(pts: Tensor, prm: Tensor) -> Any:
        if is_dvq:
            return model(pts, prm)
        return model(pts, prm, noise=torch.zeros(pts.shape[0], model.latent_dim, device=pts.device))

    def forward(batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        pts, prm = batch["points"].to(device), batch["params"].to(device)
        out = model(pts, prm)
        scale = contact_scale_at(cfg, loop.step, loop.total_steps())
        total = scaled_total(out.losses, model_cfg.loss_weights, scale)
        stats = {"loss": float(total.detach()), "paper_loss": float(out.losses["total"].detach()),
                 "contact_scale": scale}
        stats.update({k: float(v.detach()) for k, v in out.losses.items() if k != "total"})
        if is_dvq:
            for key, values in out.usage.items():  # perplexity, used_codes, ... per codebook
                for name, v in zip(out.codebook_names, values.tolist()):
                    stats[f"{key}_{name}"] = float(v)
            revived = sum(int(getattr(cb, "last_revived", 0)) for cb in (model.object_codebook, model.hand_codebook))
            stats["revived_codes"] = float(revived)
        return total, stats

    def validate() -> dict[str, float]:
        return _grasp_validation(model, val_loader, hand, device, cfg.val_max_batches, call)

    describe = {"model_config": model_cfg.to_dict(), "hand_fingerprint": hand.fingerprint, "data_info": data.info,
                "train_objects": data.train_objects, "val_objects": data.val_objects}
    loop = _Loop(stage, cfg, stage_dir, {"model": model}, optimizer, data.train, sampler, forward, validate,
                 _deadline(cfg, deadline), on_step, describe)
    already_done = False
    if resume:
        loop.restore()
        already_done = loop.finished
    else:
        loop.log.write({"kind": "event", "event": "started", "stage": stage, "step": 0, "config": cfg.to_dict(),
                        "model_config": model_cfg.to_dict(), "data_info": data.info,
                        "parameters": sum(p.numel() for p in model.parameters())})
    reason = loop.run()
    ckpt = None
    if reason == "done" and already_done and (stage_dir / "checkpoint" / "config.json").is_file():
        ckpt = stage_dir / "checkpoint"
    elif reason == "done":
        ckpt = stage_dir / "checkpoint"
        info = dict(data.info, stage=stage, train_config=cfg.to_dict(), epochs=loop.epoch, steps=loop.step,
                    val_metrics=loop.metrics, train_objects=len(data.train_objects), val_objects=len(data.val_objects))
        model.eval()
        save_checkpoint(ckpt, model, kind=stage, model_config=model_cfg, hand_fingerprint=hand.fingerprint,
                        data_info=info, extra={"training_seconds": loop.elapsed})
        if not loop.finished:
            loop.finished = True
            loop.save()
    return _result(stage, loop, reason, ckpt, {"train_objects": data.train_objects, "val_objects": data.val_objects})


def train_dvqvae(cfg: TrainConfig, *, hand: Optional[HandModel] = None, deadline: Optional[float] = None,
                 on_step: Optional[StepCallback] = None) -> TrainResult:
    """Train (or resume) the DVQ-VAE; the finished model goes to ``out_dir/dvqvae/checkpoint``.

    ``deadline`` (``time.monotonic()`` seconds) overrides ``cfg.max_minutes`` (used by ``train_all``).
    ``on_step(loop, step, stats)`` is called after every optimiser step (logging hooks, tests).
    """
    with StopOnSignals():
        return _train_grasp_model("dvqvae", cfg, hand=hand, deadline=deadline, on_step=on_step)


def train_cvae(cfg: TrainConfig, *, hand: Optional[HandModel] = None, deadline: Optional[float] = None,
               on_step: Optional[StepCallback] = None) -> TrainResult:
    """Train (or resume) the GraspCVAE baseline; the model goes to ``out_dir/cvae/checkpoint``."""
    with StopOnSignals():
        return _train_grasp_model("cvae", cfg, hand=hand, deadline=deadline, on_step=on_step)


# =============================================================================== prior


class TokenDataset(Dataset):
    """Cached token sequences ``[M, 1+H]``."""

    def __init__(self, tokens: Tensor) -> None:
        self.tokens = tokens.long()

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"tokens": self.tokens[i]}


@torch.no_grad()
def encode_tokens(model: DVQVAE, dataset: GraspDataset, views: int, batch_size: int, device: torch.device,
                  progress: bool = False, desc: str = "tokens") -> tuple[Tensor, list[str]]:
    """Tokens ``[views * len, 1+H]`` the (eval-mode) DVQ-VAE assigns to ``views`` augmented passes."""
    model.eval()
    out, ids = [], []
    for v in range(views):
        dataset.set_epoch(v)
        batches = [list(range(i, min(i + batch_size, len(dataset)))) for i in range(0, len(dataset), batch_size)]
        loader = DataLoader(dataset, batch_sampler=batches)
        for batch in tqdm(loader, disable=not progress, desc=f"{desc} {v + 1}/{views}", leave=False):
            res = model(batch["points"].to(device), batch["params"].to(device), compute_losses=False)
            out.append(res.tokens.cpu())
            ids.extend(batch["object_id"])
    tokens = torch.cat(out) if out else torch.zeros(0, 1 + model.num_hand_tokens, dtype=torch.long)
    return tokens.long(), ids


def _token_cache(path: Path, key: dict[str, Any], build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Tokens from ``path`` when its key matches (same model weights, data, views), else built and saved."""
    key_json = json.dumps(key, sort_keys=True)
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("key") == key_json:
            t = load_file(str(path))
            return {"train": t["train"], "val": t["val"], "train_objects": json.loads(meta["train_objects"]),
                    "val_objects": json.loads(meta["val_objects"]), "cached": True}
    res = build()
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"train": res["train"].contiguous(), "val": res["val"].contiguous()}, str(tmp),
              metadata={"key": key_json, "train_objects": json.dumps(res["train_objects"]),
                        "val_objects": json.dumps(res["val_objects"])})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return dict(res, cached=False)


def train_prior(cfg: PriorTrainConfig, *, model_checkpoint: Optional[str | Path] = None,
                hand: Optional[HandModel] = None, deadline: Optional[float] = None,
                on_step: Optional[StepCallback] = None) -> TrainResult:
    with StopOnSignals():
        return _train_prior(cfg, model_checkpoint=model_checkpoint, hand=hand, deadline=deadline, on_step=on_step)


def _train_prior(cfg: PriorTrainConfig, *, model_checkpoint: Optional[str | Path], hand: Optional[HandModel],
                 deadline: Optional[float], on_step: Optional[StepCallback]) -> TrainResult:
    """Train (or resume) the prior on the tokens of a trained DVQ-VAE; writes ``out_dir/checkpoint``.

    ``model_checkpoint`` defaults to ``out_dir/dvqvae/checkpoint``. Tokens of the training split are
    computed once (``token_views`` augmented passes) and cached in ``out_dir/prior/tokens.safetensors``;
    validation tokens come from other objects (the "val" split, or a held-out share of "train").
    """
    hand = hand if hand is not None else load_hand_model(cfg.hand)
    device = torch.device(cfg.device)
    out_dir = Path(cfg.out_dir)
    stage_dir = out_dir / "prior"
    ckpt_path = Path(model_checkpoint) if model_checkpoint else out_dir / "dvqvae" / "checkpoint"
    ck_meta = read_checkpoint_config(ckpt_path)
    if ck_meta["kind"] != "dvqvae":
        raise ValueError(f"{ckpt_path} holds a {ck_meta['kind']!r} model; the prior needs a DVQ-VAE")
    resume = _prepare_state_dir(cfg, stage_dir)
    saved = read_training_state(stage_dir / "state") if resume else None

    # Tokens must come from the distribution the DVQ-VAE was trained on (its augmentation), for both splits.
    trained_aug = (ck_meta.get("data_info") or {}).get("augmentation")
    aug = Augmentation(**trained_aug) if trained_aug else cfg.augmentation()
    num_points = cfg.num_points or int(ck_meta["model_config"].get("num_points", 3000))
    data = open_splits(cfg, hand, num_points, val_augment=aug, train_augment=aug)  # before the hand moves
    ck: LoadedCheckpoint = load_checkpoint(ckpt_path, hand=hand, device=str(device))
    model: DVQVAE = ck.model  # type: ignore[assignment]
    model.eval()
    shard_sums = [sh["sha256"] for sh in data.train.reader.shards]
    key = {"model_sha256": ck.config["files"]["model"]["sha256"], "dataset": data.info["dataset"],
           "data_sha256": hashlib.sha256(json.dumps(shard_sums).encode()).hexdigest(),
           "train_grasps": len(data.train), "val_grasps": len(data.val) if data.val is not None else 0,
           "views": cfg.token_views, "seed": cfg.seed, "augmentation": dataclasses.asdict(aug),
           "num_points": data.train.num_points}

    def build() -> dict[str, Any]:
        train, train_ids = encode_tokens(model, data.train, cfg.token_views, cfg.batch_size, device, cfg.progress,
                                         "encode train")
        if data.val is not None:
            val, val_ids = encode_tokens(model, data.val, 1, cfg.batch_size, device, cfg.progress, "encode val")
        else:
            val, val_ids = torch.zeros(0, train.shape[1], dtype=torch.long), []
        return {"train": train, "val": val, "train_objects": sorted(set(train_ids)),
                "val_objects": sorted(set(val_ids))}

    tok = _token_cache(stage_dir / "tokens.safetensors", key, build)
    overlap = set(tok["train_objects"]) & set(tok["val_objects"])
    if overlap:
        raise RuntimeError(f"prior validation objects overlap its training objects: {sorted(overlap)[:5]}")

    seed_everything(cfg.seed)
    p_cfg = PriorConfig.from_dict(saved["prior_config"]) if saved else \
        dataclasses.replace(prior_config(cfg.preset, model.cfg), vocab_sizes=tuple(model.token_vocab_sizes))
    prior = GatedPixelCNNPrior(p_cfg).to(device).train()
    optimizer = _adam(prior.parameters(), cfg)
    train_set = TokenDataset(tok["train"])
    sampler = EpochBatchSampler(len(train_set), cfg.batch_size, cfg.seed)
    val_tokens = tok["val"].to(device)

    def forward(batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        loss = prior.nll(batch["tokens"].to(device))
        return loss, {"loss": float(loss.detach())}

    def validate() -> dict[str, float]:
        if val_tokens.shape[0] == 0:
            return {}
        acc = _Mean()
        with torch.no_grad():
            for i in range(0, val_tokens.shape[0], cfg.batch_size):
                t = val_tokens[i:i + cfg.batch_size]
                logits = prior.logits(t)
                nll = prior.nll(t)
                hit = (logits.argmax(-1) == t[:, 1:]).float().mean()
                acc.add({"nll": float(nll), "accuracy": float(hit)}, weight=float(t.shape[0]))
        m = acc.means()
        m["loss"] = m["nll"]
        m["perplexity"] = math.exp(m["nll"])
        return m

    describe = {"prior_config": p_cfg.to_dict(), "model_checkpoint": str(ckpt_path.resolve()),
                "model_sha256": key["model_sha256"], "hand_fingerprint": hand.fingerprint, "data_info": data.info,
                "train_objects": tok["train_objects"], "val_objects": tok["val_objects"],
                "tokens": {"train": int(tok["train"].shape[0]), "val": int(tok["val"].shape[0])}}
    loop = _Loop("prior", cfg, stage_dir, {"prior": prior}, optimizer, train_set, sampler, forward, validate,
                 _deadline(cfg, deadline), on_step, describe)
    already_done = False
    if resume:
        if saved and saved.get("model_sha256") != key["model_sha256"]:
            raise ValueError("cannot resume the prior: the DVQ-VAE checkpoint changed since the run started")
        loop.restore()
        already_done = loop.finished
    else:
        loop.log.write({"kind": "event", "event": "started", "stage": "prior", "step": 0, "config": cfg.to_dict(),
                        "prior_config": p_cfg.to_dict(), "tokens": describe["tokens"],
                        "token_cache": "reused" if tok["cached"] else "built",
                        "parameters": sum(p.numel() for p in prior.parameters())})
    reason = loop.run()
    final = None
    if reason == "done" and already_done and (out_dir / "checkpoint" / "config.json").is_file():
        final = out_dir / "checkpoint"
    elif reason == "done":
        final = out_dir / "checkpoint"
        model_info = ck.config.get("data_info") or {}
        info = dict(model_info, prior={"train_config": cfg.to_dict(), "epochs": loop.epoch, "steps": loop.step,
                                       "val_metrics": loop.metrics, "tokens": describe["tokens"],
                                       "train_objects": len(tok["train_objects"]),
                                       "val_objects": len(tok["val_objects"])})
        prior.eval()
        save_checkpoint(final, model, prior, kind="dvqvae", model_config=model.cfg, prior_config=p_cfg,
                        hand_fingerprint=hand.fingerprint, data_info=info,
                        extra={"dvqvae_checkpoint": str(ckpt_path.resolve()), "prior_training_seconds": loop.elapsed})
        if not loop.finished:
            loop.finished = True
            loop.save()
    return _result("prior", loop, reason, final, {"train_objects": tok["train_objects"],
                                                  "val_objects": tok["val_objects"], "tokens": describe["tokens"]})


def train_all(cfg: TrainConfig, prior_cfg: PriorTrainConfig, *, hand: Optional[HandModel] = None,
              deadline: Optional[float] = None, on_step: Optional[StepCallback] = None) -> list[TrainResult]:
    """DVQ-VAE, then its prior, into ``out_dir/checkpoint``; one time budget (``cfg.max_minutes``) for both.

    A finished stage is skipped on resume (its state says so); stops early, resumably, like the stages.
    """
    hand = hand if hand is not None else load_hand_model(cfg.hand)
    deadline = _deadline(cfg, deadline)
    with StopOnSignals():
        results = [train_dvqvae(cfg, hand=hand, deadline=deadline, on_step=on_step)]
        if not results[0].finished:
            return results
        results.append(train_prior(prior_cfg, model_checkpoint=results[0].checkpoint, hand=hand, deadline=deadline,
                                   on_step=on_step))
    return results
