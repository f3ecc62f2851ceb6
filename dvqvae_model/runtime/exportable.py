"""The one description of the exportable sampling graph that runtimes and exporters work from.

A runtime needs to know what to trace (the tensor-in/tensor-out graph for a ``top_k``), what its
inputs are (cloud size, noise shape, how to draw noise) and what identifies it (model and prior
configs, hand fingerprint, scorer settings). The generator builds one ``ExportableGraph`` and hands
it over, so ``dvqvae_model.runtime`` and ``dvqvae_export`` never import the generator.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

__all__ = ["ExportableGraph", "as_exportable", "config_dict"]


def config_dict(module: Any) -> Optional[dict]:
    """A module's ``cfg`` as plain JSON data (None when it has none)."""
    cfg = getattr(module, "cfg", None)
    if cfg is None:
        return None
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, (tuple, set)) else str(o)))


@dataclass(frozen=True)
class ExportableGraph:
    """What to trace, its inputs and its noise; plus what identifies the function it computes."""

    kind: str  # "dvqvae" (Gumbel noise [K, H, V]) or "cvae" (standard normal [K, latent])
    num_points: int  # cloud size N of the ``points`` input [1, N, 3]
    noise_tail: tuple[int, ...]  # noise shape without the K dimension
    hand_fingerprint: str
    device: torch.device
    build_graph: Callable[[Optional[int]], nn.Module]  # top_k -> graph(points, noise, temperature)
    draw_noise: Callable[[int, int], Tensor]  # (num_grasps, seed) -> noise on ``device``
    model_config: Optional[dict] = None
    prior_config: Optional[dict] = None
    score_weights: Optional[dict] = None
    num_score_points: int = 0

    def graph(self, top_k: Optional[int] = None) -> nn.Module:
        return self.build_graph(top_k)

    def noise_shape(self, num_grasps: int) -> tuple[int, ...]:
        return (int(num_grasps), *self.noise_tail)

    def make_noise(self, num_grasps: int, seed: int) -> Tensor:
        return self.draw_noise(int(num_grasps), int(seed))


def as_exportable(obj: Any) -> ExportableGraph:
    """``obj`` itself, or the ``exportable`` it carries (a ``GraspGenerator`` carries one)."""
    if isinstance(obj, ExportableGraph):
        return obj
    spec = getattr(obj, "exportable", None)
    if isinstance(spec, ExportableGraph):
        return spec
    raise TypeError(f"expected an ExportableGraph (or an object with .exportable), got {type(obj).__name__}")
