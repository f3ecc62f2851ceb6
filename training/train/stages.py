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

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from dvqvae_training.dataset.datasets import Augmentation, GraspDataset
from dvqvae_training.train.config import (
    PriorTrainConfig,
    TrainConfig,
    TrainResult,
    contact_scale_at,
    scaled_total,
)
from dvqvae_training.train.loop import (
    EpochBatchSampler,
    StepCallback,
    StopOnSignals,
    _adam,
    _deadline,
    _Loop,
    _Mean,
    _num_points,
    _prepare_state_dir,
    _result,
    _val_loader,
    cloud_contact_penetration,
    open_splits,
    seed_everything,
)
from dvqvae_training.train import distributed
from dvqvae_training.train.state import read_training_state
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from dvqvae_model.checkpoint import (
    LoadedCheckpoint,
    load_checkpoint,
    read_checkpoint_config,
    save_checkpoint,
)
from dvqvae_model.hand.hand_model import HandModel, load_hand_model
from dvqvae_model.nets.config import cvae_config, dvqvae_config, prior_config
from dvqvae_model.nets.cvae import CVAEConfig, GraspCVAE
from dvqvae_model.nets.dvqvae import DVQVAE, DVQVAEConfig
from dvqvae_model.nets.prior import GatedPixelCNNPrior, PriorConfig

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


def _grasp_call(model: nn.Module, is_dvq: bool) -> Callable[[Tensor, Tensor], Any]:
    """Reconstruction through the model: DVQ-VAE's codes, or the CVAE at its latent mean (noise 0)."""
    def call(pts: Tensor, prm: Tensor) -> Any:
        if is_dvq:
            return model(pts, prm)
        return model(pts, prm, noise=torch.zeros(pts.shape[0], model.latent_dim, device=pts.device))
    return call


#: Run settings that shape the model (or its input), as the model config names them.
_MODEL_SETTINGS = {"dvqvae": ("variant", "position_sees_codes", "input_frame", "rotation", "use_gating", "hand_frame"),
                   "cvae": ("input_frame",)}


def _initial_model(stage: str, cfg: TrainConfig, hand: HandModel) -> tuple[Any, nn.Module]:
    """(model config, model) of a new run that starts from ``cfg.init_from``'s weights."""
    ck = load_checkpoint(cfg.init_from, hand=hand)
    if ck.kind != stage:
        raise ValueError(f"init_from {cfg.init_from}: holds a {ck.kind!r} model, this stage trains a {stage!r} one")
    model_cfg = ck.model.cfg
    differ = [f"{name}: checkpoint {getattr(model_cfg, name)!r} vs run {getattr(cfg, name)!r}"
              for name in _MODEL_SETTINGS[stage] if getattr(model_cfg, name) != getattr(cfg, name)]
    if differ:
        raise ValueError(f"init_from {cfg.init_from}: the run's model settings differ from the checkpoint's "
                         f"({'; '.join(differ)}): pass the checkpoint's")
    if stage == "dvqvae" and cfg.codebook_size and cfg.codebook_size != model_cfg.codebook_size:
        raise ValueError(f"init_from {cfg.init_from}: its hand codebooks have {model_cfg.codebook_size} entries, "
                         f"the run asks for {cfg.codebook_size}")
    if stage == "dvqvae":  # the same weights serve both: the decoder's betas outputs are just unused when given
        model_cfg.hand_shape = cfg.hand_shape
    return model_cfg, ck.model


def _train_grasp_model(stage: str, cfg: TrainConfig, *, hand: Optional[HandModel], deadline: Optional[float],
                       on_step: Optional[StepCallback]) -> TrainResult:
    """Shared body of ``train_dvqvae`` and ``train_cvae``."""
    hand = hand if hand is not None else load_hand_model(cfg.hand)
    dist_ctx = distributed.current()  # one process, or one rank of a torchrun job
    device = torch.device(distributed.rank_device(cfg.device, dist_ctx))
    stage_dir = Path(cfg.out_dir) / stage
    resume = _prepare_state_dir(cfg, stage_dir)
    dist_ctx.barrier()
    saved = read_training_state(stage_dir / "state") if resume else None

    seed_everything(cfg.seed)
    if cfg.init_from and not saved:
        model_cfg, model = _initial_model(stage, cfg, hand)
    elif stage == "dvqvae":
        model_cfg: Any = DVQVAEConfig.from_dict(saved["model_config"]) if saved else \
            dvqvae_config(cfg.preset, variant=cfg.variant, position_sees_codes=cfg.position_sees_codes,
                          input_frame=cfg.input_frame, rotation=cfg.rotation,
                          kmeans_init_rows=cfg.codebook_init_rows, use_gating=cfg.use_gating,
                          hand_frame=cfg.hand_frame, hand_shape=cfg.hand_shape,
                          **({"codebook_size": cfg.codebook_size} if cfg.codebook_size else {}),
                          **({"num_points": cfg.num_points} if cfg.num_points else {}))
        model: nn.Module = DVQVAE(model_cfg, hand)
    else:
        model_cfg = CVAEConfig.from_dict(saved["model_config"]) if saved else \
            cvae_config(cfg.preset, input_frame=cfg.input_frame, **({"num_points": cfg.num_points} if cfg.num_points else {}))
        model = GraspCVAE(model_cfg, hand)
    if cfg.loss_weights and not saved:  # a resumed run has them in its saved model config already
        model_cfg.loss_weights = dataclasses.replace(model_cfg.loss_weights, **cfg.loss_weights)  # model.cfg is model_cfg
    data = open_splits(cfg, hand, _num_points(cfg, model_cfg.num_points))  # before the hand moves to the device
    model.to(device).train()
    optimizer = _adam(model.parameters(), cfg)
    sampler = dist_ctx.shard_sampler(EpochBatchSampler(len(data.train), cfg.batch_size, cfg.seed))
    val_loader = _val_loader(data.val, cfg) if data.val is not None else None
    is_dvq = stage == "dvqvae"
    train_model = dist_ctx.wrap(model)  # DistributedDataParallel under torchrun

    call = _grasp_call(model, is_dvq)

    def forward(batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        pts, prm = batch["points"].to(device), batch["params"].to(device)
        out = train_model(pts, prm, loss_points=cfg.loss_points)
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
        if dist_ctx.is_main:
            save_checkpoint(ckpt, model, kind=stage, model_config=model_cfg, hand_fingerprint=hand.fingerprint,
                            data_info=info, extra={"training_seconds": loop.elapsed,
                                                   "world_size": dist_ctx.world_size})
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


def validate_grasp_model(model: nn.Module, cfg: TrainConfig, hand: Optional[HandModel] = None) -> dict[str, float]:
    """The validation metrics a training run records (vertex error, losses, contact, ...) for a model
    that was not validated by one: a weight average, a checkpoint from elsewhere, other data.

    The model's own input frame and point count are used, whatever ``cfg`` says."""
    hand = hand if hand is not None else load_hand_model(cfg.hand)
    model_cfg = model.cfg
    cfg = dataclasses.replace(cfg, input_frame=getattr(model_cfg, "input_frame", cfg.input_frame))
    data = open_splits(cfg, hand, _num_points(cfg, model_cfg.num_points))
    if data.val is None:
        raise ValueError(f"{cfg.data_dir}: no validation grasps (no 'val' split and val_fraction gives none)")
    device = torch.device(cfg.device)
    model.to(device).eval()
    call = _grasp_call(model, isinstance(model, DVQVAE))
    return _grasp_validation(model, _val_loader(data.val, cfg), hand, device, cfg.val_max_batches, call)


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
            out.append(model.tokens(batch["points"].to(device), batch["params"].to(device)).cpu())
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
    if distributed.current().enabled:
        raise ValueError("the prior trains in one process (minutes on a CPU): run `dvqvae-train prior` without "
                         "torchrun, on the DVQ-VAE checkpoint the distributed run wrote")
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
    key = {"model_sha256": ck.config["files"]["model"]["sha256"], "dataset": data.info["fingerprint"],
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

