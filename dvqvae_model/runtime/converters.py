"""Converters: sampling graph -> TorchScript / ONNX / TensorRT file.

They live in the library because the node builds artifacts into its cache on first use
(``backend: auto``); ``dvqvae_export`` adds the command line, checks and reports on top.
"""
from __future__ import annotations

import dataclasses
import importlib
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from dvqvae_model.runtime import (
    artifacts,  # tensorrt_problem looked up at call time (tests patch it)
)
from dvqvae_model.runtime.artifacts import (
    AUTO_TIMING_GRASPS,
    DEFAULT_MAX_GRASPS,
    INPUT_NAMES,
    ONNX_OPSET,
    OUTPUT_NAMES,
    BackendUnavailable,
)


# --------------------------------------------------------------------------- converters (graph -> file)
def fold_batch_norms(module: nn.Module) -> int:
    """Fold every eval-mode batch norm that directly follows a linear layer into that layer, in place.

    ``y = BN(x W + b)`` becomes ``x W' + b'`` with ``W' = W s``, ``b' = (b - mean) s + beta`` and
    ``s = gamma / sqrt(var + eps)``: the same function up to float rounding, one pass less over every
    activation. Exported graphs get this (as TensorRT would do by itself); the eager model is left as
    trained. Handles ``pointnet.GroupedLinear`` + ``GroupedBatchNorm`` (channel ``g * C + c``) and
    ``nn.Linear`` + ``nn.BatchNorm1d``. Returns the number of folded pairs.
    """
    from dvqvae_model.nets.pointnet import GroupedBatchNorm, GroupedLinear

    folded = 0
    for seq in [m for m in module.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules.keys())
        for first, second in zip(names, names[1:]):
            lin, bn = seq._modules[first], seq._modules[second]
            if isinstance(lin, GroupedLinear) and isinstance(bn, GroupedBatchNorm) and not bn.training:
                g, c = lin.groups, lin.weight.shape[2]
                if bn.groups != g or bn.channels != c:
                    continue
                scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).reshape(g, 1, c)
                shift = (bn.bias - bn.running_mean * scale.reshape(-1)).reshape(g, 1, c)
                with torch.no_grad():
                    lin.weight.mul_(scale)
                    lin.bias.copy_(lin.bias * scale + shift)
            elif isinstance(lin, nn.Linear) and isinstance(bn, nn.BatchNorm1d) and not bn.training \
                    and bn.track_running_stats and lin.bias is not None:
                gamma = bn.weight if bn.affine else torch.ones_like(bn.running_mean)
                beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
                scale = gamma / torch.sqrt(bn.running_var + bn.eps)
                with torch.no_grad():
                    lin.weight.mul_(scale.unsqueeze(1))
                    lin.bias.copy_((lin.bias - bn.running_mean) * scale + beta)
            else:
                continue
            seq._modules[second] = nn.Identity()
            folded += 1
    return folded


def inference_copy(graph: nn.Module, device: Union[str, torch.device, None] = None) -> nn.Module:
    """A detached eval copy of ``graph`` for export, with batch norms folded (``fold_batch_norms``)."""
    import copy

    g = copy.deepcopy(graph).eval()
    if device is not None:
        g = g.to(device)
    for p in g.parameters():
        p.requires_grad_(False)
    fold_batch_norms(g)
    return g


def trace_torchscript(graph: nn.Module, example: tuple[Tensor, Tensor, Tensor]) -> torch.jit.ScriptModule:
    """``torch.jit.trace`` + ``freeze``. Tracing (not scripting): smplx and the dataclass outputs do not
    script, and the graph has no data-dependent control flow for a trace to miss (the build verifies
    K = 1 and 16 against eager after tracing with K = 4)."""
    with warnings.catch_warnings():
        # TracerWarnings are about shape checks and constant tables evaluated once: all static here.
        warnings.simplefilter("ignore")
        with torch.no_grad():
            traced = torch.jit.trace(graph.eval(), example, check_trace=False)
        return torch.jit.freeze(traced.eval())


def export_onnx_file(graph: nn.Module, example: tuple[Tensor, Tensor, Tensor], path: Union[str, Path],
                     opset: int = ONNX_OPSET) -> None:
    """ONNX via the TorchScript-based exporter (``dynamo=False``) with a dynamic grasp axis ``K``.

    Why not ``dynamo=True``: it needs ``onnxscript``, which is not a dependency here; the
    TorchScript-based exporter gives a correct graph with dynamic K (verified against eager).
    """
    dyn = {"noise": {0: "K"}}
    dyn.update({name: {0: "K"} for name in OUTPUT_NAMES})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(graph.eval(), example, str(path), dynamo=False, opset_version=int(opset),
                              input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                              dynamic_axes=dyn, do_constant_folding=True)


def tensorrt_inputs(torch_tensorrt: Any, num_points: int, noise_tail: Sequence[int], max_grasps: int,
                    dtype: torch.dtype = torch.float32) -> list[Any]:
    """``torch_tensorrt.Input`` specs: static cloud, dynamic K in [1, max_grasps], temperature [1]."""
    tail = tuple(int(s) for s in noise_tail)
    opt = max(1, min(AUTO_TIMING_GRASPS, int(max_grasps)))
    return [
        torch_tensorrt.Input(shape=(1, int(num_points), 3), dtype=dtype),
        torch_tensorrt.Input(min_shape=(1, *tail), opt_shape=(opt, *tail), max_shape=(int(max_grasps), *tail),
                             dtype=dtype),
        torch_tensorrt.Input(shape=(1,), dtype=dtype),
    ]


def _autocast_settings(torch_tensorrt: Any) -> Optional[dict[str, Any]]:
    """Compile kwargs for rule-based fp16 autocast, or None if this Torch-TensorRT lacks it."""
    try:
        settings = importlib.import_module("torch_tensorrt.dynamo._settings").CompilationSettings
        names = {f.name for f in dataclasses.fields(settings)}
    except Exception:  # noqa: BLE001
        return None
    if "enable_autocast" not in names:
        return None
    kw: dict[str, Any] = {"use_explicit_typing": True, "enable_autocast": True}
    for field_name in ("autocast_low_precision_type", "low_precision_type"):
        if field_name in names:
            kw[field_name] = torch.float16
            break
    return kw


def compile_tensorrt(graph: nn.Module, num_points: int, noise_tail: Sequence[int], path: Union[str, Path], *,
                     max_grasps: int = DEFAULT_MAX_GRASPS, fp16: bool = False,
                     device: Union[str, torch.device] = "cuda") -> str:
    """Torch-TensorRT dynamo compile of ``graph`` and ``torch_tensorrt.save`` as an ExportedProgram.

    fp16: rule-based autocast (``use_explicit_typing`` + ``enable_autocast``; inputs and outputs stay
    float32, reductions and data-sensitive layers stay fp32) when this Torch-TensorRT has it, else the
    module and inputs are cast to half. Returns the precision mode used ("fp32", "fp16-autocast",
    "fp16-half").
    """
    problem = artifacts.tensorrt_problem()
    if problem:
        raise BackendUnavailable(problem)
    import torch_tensorrt

    dev = torch.device(device)
    module = graph.to(dev).eval()
    # fp32 engines: no TF32 either, so that the engine matches eager within 1e-4 m.
    kwargs: dict[str, Any] = {"min_block_size": 1, "disable_tf32": not fp16}
    mode = "fp32"
    dtype = torch.float32
    if fp16:
        auto = _autocast_settings(torch_tensorrt)
        if auto is not None:
            kwargs.update(auto)
            mode = "fp16-autocast"
        else:
            module = module.half()
            dtype = torch.float16
            mode = "fp16-half"
    inputs = tensorrt_inputs(torch_tensorrt, num_points, noise_tail, max_grasps, dtype)
    with torch.no_grad():
        trt_module = torch_tensorrt.compile(module, ir="dynamo", inputs=inputs, **kwargs)
        torch_tensorrt.save(trt_module, str(path), output_format="exported_program", arg_inputs=inputs, retrace=True)
    return mode


