"""The one training loop (:class:`_Loop`) the stages share, and what it needs: seeded per-epoch batches,
the data splits, running means, the run log and clean stops on signals."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import random
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from dvqvae_training.dataset.dataset_format import DatasetReader
from dvqvae_training.dataset.datasets import Augmentation, GraspDataset
from dvqvae_training.train.config import (
    CONTACT_THRESHOLD_M,
    DVQVAE_ONLY_FIELDS,
    LEGACY_CONFIG,
    RUNTIME_FIELDS,
    TrainConfig,
    TrainResult,
    lr_at,
)
from dvqvae_training.train.state import (
    load_training_state,
    read_training_state,
    restore_training_state,
    save_training_state,
)
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from dvqvae_model.hand.hand_model import HandModel
from dvqvae_model.io import atomic_write_bytes
from dvqvae_training.train import distributed
from dvqvae_training.train.tensorboard_log import TensorBoardMirror

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
        val = make("val", val_augment or Augmentation(input_frame=cfg.input_frame))
        source = "val"
        val_ids = _index_object_ids(reader, val.index)
    else:
        held = _holdout_ids(train_ids, cfg.val_fraction, f"holdout-{cfg.seed}")
        val_ids = np.array([], dtype=object)
        if held:
            mask = np.array([o in held for o in train_ids], dtype=bool)
            val = make("train", val_augment or Augmentation(input_frame=cfg.input_frame))
            val.index, val_ids = train.index[mask], train_ids[mask]
            train.index, train_ids = train.index[~mask], train_ids[~mask]
            source = "holdout"
    if val is not None and len(val) == 0:
        val, source = None, "none"
    manifest = reader.manifest
    info = {
        "dataset": str(Path(cfg.data_dir).resolve()),
        "fingerprint": reader.fingerprint,
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

    def __init__(self, stage_dir: Path, enabled: bool = True) -> None:
        self.jsonl = Path(stage_dir) / "log.jsonl"
        self.csv = Path(stage_dir) / "log.csv"
        self.enabled = enabled  # False on the non-main ranks of a distributed run
        self.tensorboard = TensorBoardMirror(Path(stage_dir) / "tensorboard") if enabled else None

    def trim(self, step: int, epochs_done: int) -> None:
        """Drop records written after the state we resume from (they will be written again)."""
        if not self.enabled:
            return
        if self.tensorboard is not None:
            self.tensorboard.purge_after(step)
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
        if not self.enabled:
            return
        if self.tensorboard is not None:
            self.tensorboard.write(record)
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
        self.dist = distributed.current()
        self.log = RunLog(self.stage_dir, enabled=self.dist.is_main)
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
        if self.dist.is_main:  # ranks hold identical states (see dvqvae_training.train.distributed)
            save_training_state(self.state_dir, self.modules, self.optimizer, self.meta())

    def restore(self) -> None:
        """Continue from the saved state (checked against the current config)."""
        tensors, meta = load_training_state(self.state_dir)
        ignore = DVQVAE_ONLY_FIELDS if self.stage == "cvae" else frozenset()
        _check_resumable({**LEGACY_CONFIG, **meta["config"]}, self.cfg.to_dict(),
                         ignore=ignore | _same_data(meta.get("data_info"), self.describe.get("data_info")))
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
        reason = self._local_stop_reason()
        if self.dist.enabled:  # every rank stops at the same step, for the most urgent reason of any
            reason = self.dist.agree_on(reason, ("max_steps", "time_budget", "signal"))
        return reason

    def _local_stop_reason(self) -> Optional[str]:
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
                self.metrics = self.validate() if self.dist.is_main else {}
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
        if self.dist.any_rank(not bool(torch.isfinite(loss))):  # all ranks skip together (DDP)
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
        for m in self.modules.values():  # no-op in one process
            self.dist.sync_model(m)
        return dict(stats, grad_norm=float(gn))


def _epoch_line(rec: dict[str, Any]) -> str:
    keys = [k for k in ("train_loss", "train_contact_scale", "val_loss", "val_vertex_err_mm", "val_contact_ratio", "val_pen_depth_mm",
                        "val_nll", "val_accuracy") if k in rec]
    body = "  ".join(f"{k}={rec[k]:.4g}" for k in keys)
    return f"[{rec['stage']}] epoch {rec['epoch']} step {rec['step']} lr {rec['lr']:.3g}  {body}"


def _check_resumable(saved: dict[str, Any], now: dict[str, Any], ignore: frozenset[str] = frozenset()) -> None:
    diff = {k: (saved.get(k), v) for k, v in now.items()
            if k not in RUNTIME_FIELDS and k not in ignore and saved.get(k) != v}
    if diff:
        lines = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"cannot resume: the run was started with different settings ({lines})")


def _same_data(saved: Optional[dict[str, Any]], now: Optional[dict[str, Any]]) -> frozenset[str]:
    """``{"data_dir"}`` when both runs know their data's content fingerprint and it matches (a copy of
    the data elsewhere resumes); raises when it differs, even at the same path (the data changed under
    the run). States written before fingerprints compare the path only."""
    before, after = (saved or {}).get("fingerprint"), (now or {}).get("fingerprint")
    if not before or not after:
        return frozenset()
    if before != after:
        raise ValueError(f"cannot resume: the data set is not the one the run started on (content fingerprint "
                         f"saved {before} vs now {after}: shards added or rewritten since); resume on that data "
                         "or start a new run")
    return frozenset({"data_dir"})


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
    if not distributed.current().is_main:
        return exists
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


