"""fp16 by explicit typing: which parts of the sampling graph run in half precision, and the casts
at their boundaries.

Why explicit: Torch-TensorRT 2.13 builds strongly typed networks (every layer keeps the dtype the
graph gives it; ``enabled_precisions`` and ``use_explicit_typing`` are gone and ignored if passed).
Its rule-based autocast (``enable_autocast``) marks every node low precision when it has no
calibration data and calls ``.to(fp16)`` on each node's ``meta["val"]``: on this graph that fails on
the SymInt sizes of the dynamic grasp dimension K and on ``chunk``/``split``/``min``/``topk``
outputs, and it would cast int64 index tensors. So the graph states its precision itself:

* half: the networks, i.e. the PointNet encoders, the posture / position decoders, the gating MLPs
  and the prior's network (``HALF_NETWORKS``). Each runs on half weights behind a ``HalfBoundary``
  that casts its floating inputs to fp16 and its outputs back to fp32. The prior casts its own
  logits back to fp32 (``GatedPixelCNNPrior.sample``), so Gumbel-max, ``log_softmax`` and the
  ``-1e9`` masks stay fp32.
* fp32: everything else, notably the hand layer (skinning, ``1e-12`` epsilons of the bone angles)
  and the scorer (squared distances as ``|v|^2 - 2 p.v + |p|^2``, which cancel catastrophically in
  fp16), the codebook nearest-neighbour search, and every index tensor (int64).

``mixed_fp16`` applies this to a copy of the graph (never to the generator's own modules);
``node_precisions`` reads back what a ``torch.export`` program of it computes in, node by node,
which is how the placement is tested on a CPU.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Optional

import torch
from torch import Tensor, nn

__all__ = ["HALF_NETWORKS", "HalfBoundary", "mixed_fp16", "node_precisions"]

# Sub-module paths (relative to SamplingGraph / CVAESamplingGraph) that run in fp16 with explicit casts
# at their boundaries. Absent paths (a variant without a pose encoder, the CVAE's other names) are skipped.
HALF_NETWORKS: tuple[str, ...] = (
    "model.type_encoder", "model.pose_encoder", "model.position_pointnet",  # DVQ-VAE PointNets
    "model.posture_decoder", "model.position_decoder",  # DVQ-VAE decoder MLPs
    "model.gating.gate", "model.gating.transform",  # skeletal gating MLPs
    "model.object_encoder", "model.decoder",  # GraspCVAE
)
HALF_PRIOR = "prior"  # casts its own logits back (GatedPixelCNNPrior.sample)
# Parts that stay fp32 (reported in the plan): the hand layer, the scorer, the codebooks.
FP32_PARTS: tuple[str, ...] = ("model.hand", "scorer", "model.object_codebook", "model.hand_codebook")


def _cast(value: Any, dtype: torch.dtype, only: Optional[torch.dtype] = None) -> Any:
    if isinstance(value, Tensor) and value.is_floating_point() and (only is None or value.dtype == only):
        return value.to(dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype, only) for v in value)
    return value


class HalfBoundary(nn.Module):
    """Runs ``inner`` (converted to fp16) on fp16 copies of its floating inputs; returns fp32."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner.half()

    def forward(self, *args: Any) -> Any:
        return _cast(self.inner(*_cast(args, torch.float16)), torch.float32, only=torch.float16)


def _parent(root: nn.Module, path: str) -> tuple[Optional[nn.Module], str]:
    *parents, leaf = path.split(".")
    mod: Optional[nn.Module] = root
    for name in parents:
        mod = getattr(mod, name, None)
        if not isinstance(mod, nn.Module):
            return None, leaf
    return mod, leaf


def _get(root: nn.Module, path: str) -> Optional[nn.Module]:
    parent, leaf = _parent(root, path)
    mod = getattr(parent, leaf, None) if parent is not None else None
    return mod if isinstance(mod, nn.Module) else None


def mixed_fp16(graph: nn.Module, networks: Iterable[str] = HALF_NETWORKS) -> dict[str, list[str]]:
    """Convert ``graph`` (a copy: modified in place) to explicit mixed precision; -> the plan
    ``{"fp16": [paths], "fp32": [top-level parts kept fp32]}`` (recorded in the artifact sidecar)."""
    half: list[str] = []
    for path in networks:
        inner = _get(graph, path)
        if inner is not None and not isinstance(inner, HalfBoundary):
            parent, leaf = _parent(graph, path)
            setattr(parent, leaf, HalfBoundary(inner))
            half.append(path)
    prior = getattr(graph, HALF_PRIOR, None)
    if isinstance(prior, nn.Module):
        prior.half()
        half.append(HALF_PRIOR)
    if not half:
        raise ValueError(f"{type(graph).__name__} has none of the networks {list(networks)}: nothing to run in fp16")
    return {"fp16": half, "fp32": [name for name in FP32_PARTS if _get(graph, name) is not None]}


def _module_path(node: torch.fx.Node) -> str:
    """Innermost module path of an exported node (from ``nn_module_stack``), "" at top level."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path).replace("L['self'].", "").replace("L__self__.", "")


def node_precisions(program: Any) -> dict[str, Counter]:
    """``{module path: Counter(dtype name)}`` of every call_function node's tensor outputs in an
    exported program (or FX graph module). SymInt outputs count as ``"symint"``."""
    gm = getattr(program, "graph_module", program)
    out: dict[str, Counter] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        vals = node.meta.get("val")
        vals = vals if isinstance(vals, (tuple, list)) else [vals]
        counter = out.setdefault(_module_path(node), Counter())
        for v in vals:
            if isinstance(v, Tensor):
                counter[str(v.dtype).replace("torch.", "")] += 1
            elif isinstance(v, torch.SymInt):
                counter["symint"] += 1
    return out
