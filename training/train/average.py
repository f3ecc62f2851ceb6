"""Weight averaging of grasp-model checkpoints (``dvqvae-train average``).

Why: two fine-tuning runs from the same weights trade one metric for another (deeper grasps that
hold, or shallower ones that slip); the plain average of their weights often lands between them
at no training cost (the bundled default model is such an average, see docs/model-card.md). This
only makes sense for checkpoints that share an ancestor, so their codebooks still line up: the
inputs must agree on kind, model config, hand and every tensor's name and shape, or nothing is
written.

Floating-point tensors (weights, codebooks, their EMA statistics) are mixed in float64 and cast
back; integer buffers (counters) are taken from the first input. The result is a regular
inference checkpoint without a prior (train one on its tokens with ``dvqvae-train prior``) and
the first input's config (its loss weights, if fine-tuning changed them: they steer training only).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from dvqvae_model.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint, save_checkpoint

__all__ = ["average_state", "average_checkpoints"]


def _mix_weights(n: int, mix: Optional[Sequence[float]]) -> list[float]:
    if n < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {n}")
    if mix is None:
        return [1.0 / n] * n
    if len(mix) != n:
        raise ValueError(f"{len(mix)} mixing weights for {n} checkpoints")
    if not all(math.isfinite(w) and w >= 0.0 for w in mix) or sum(mix) <= 0.0:
        raise ValueError(f"mixing weights must be finite, >= 0 and not all 0, got {list(mix)}")
    total = float(sum(mix))
    return [float(w) / total for w in mix]


def average_state(states: Sequence[dict[str, torch.Tensor]], mix: Optional[Sequence[float]] = None
                  ) -> dict[str, torch.Tensor]:
    """The ``mix``-weighted mean (normalised to sum 1; default equal) of state dicts with equal keys and shapes."""
    weights = _mix_weights(len(states), mix)
    first = states[0]
    for i, s in enumerate(states[1:], start=2):
        if set(s) != set(first):
            extra, missing = sorted(set(s) - set(first)), sorted(set(first) - set(s))
            raise ValueError(f"checkpoint {i} has other tensors than the first (extra {extra[:3]}, missing {missing[:3]})")
        for k, t in s.items():
            if t.shape != first[k].shape:
                raise ValueError(f"checkpoint {i}: {k} has shape {tuple(t.shape)}, the first {tuple(first[k].shape)}")
    out = {}
    for k, t in first.items():
        if t.is_floating_point():
            acc = sum(w * s[k].detach().double() for w, s in zip(weights, states))
            out[k] = acc.to(t.dtype)
        else:
            out[k] = t.clone()
    return out


#: Model-config fields that only steer training (fine-tuning runs change them): not compared.
TRAINING_ONLY = ("loss_weights", "kmeans_init", "kmeans_init_rows", "dead_code_threshold")


def _same_lineage(cks: Sequence[LoadedCheckpoint], paths: Sequence[Any]) -> None:
    a = cks[0]
    for p, ck in zip(paths[1:], cks[1:]):
        if ck.kind != a.kind:
            raise ValueError(f"{p} holds a {ck.kind!r} model, {paths[0]} a {a.kind!r} one")
        ca, cb = a.config["model_config"], ck.config["model_config"]
        differ = sorted(k for k in set(ca) | set(cb) if k not in TRAINING_ONLY and ca.get(k) != cb.get(k))
        if differ:
            raise ValueError(f"{p}: model config differs from {paths[0]}'s ({', '.join(differ)})")


def average_checkpoints(paths: Sequence[str | Path], out_dir: str | Path, mix: Optional[Sequence[float]] = None, *,
                        hand: Any = None, validate: Optional[Callable[[nn.Module], dict[str, float]]] = None) -> Path:
    """Write the weight average of the grasp-model checkpoints ``paths`` to ``out_dir/<kind>/checkpoint``
    (a training run's layout, so ``dvqvae-train prior --out out_dir`` trains its prior) and return that path.

    ``validate(model) -> metrics``, if given, measures the averaged model before it is saved; its
    metrics go into the checkpoint's ``data_info.val_metrics`` like a training run's.
    """
    weights = _mix_weights(len(paths), mix)
    try:
        cks = [load_checkpoint(p, hand=hand) for p in paths]
    except CheckpointError as e:
        raise ValueError(str(e)) from None
    _same_lineage(cks, paths)
    base = cks[0]
    base.model.load_state_dict(average_state([ck.model.state_dict() for ck in cks], weights))
    base.model.eval()
    info = dict(base.config.get("data_info") or {})
    info.update(stage=base.kind, averaged_from=[str(p) for p in paths], mix=weights,
                val_metrics=validate(base.model) if validate is not None else {})
    for k in ("train_config", "epochs", "steps"):  # a single run's: not this model's
        info.pop(k, None)
    return save_checkpoint(Path(out_dir) / base.kind / "checkpoint", base.model, kind=base.kind,
                           model_config=base.model_config, hand_fingerprint=base.config["hand_fingerprint"],
                           data_info=info, extra={"averaged": True})
