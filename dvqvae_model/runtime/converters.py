"""Converters: sampling graph -> TorchScript / ONNX / TensorRT file.

They live in the library because the node builds artifacts into its cache on first use
(``backend: auto``); ``dvqvae_export`` adds the command line, checks and reports on top.
"""
from __future__ import annotations

import operator
import warnings
from collections import Counter
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
    TOKENS_OUTPUT,
    BackendError,
    BackendUnavailable,
    on_device,
)
from dvqvae_model.runtime.precision import mixed_fp16


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
    names = output_names(graph)
    dyn = {"noise": {0: "K"}}
    dyn.update({name: {0: "K"} for name in names})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            torch.onnx.export(graph.eval(), example, str(path), dynamo=False, opset_version=int(opset),
                              input_names=list(INPUT_NAMES), output_names=names,
                              dynamic_axes=dyn, do_constant_folding=True)


def output_names(graph: nn.Module) -> list[str]:
    """Names of ``graph``'s outputs: the four of every graph, plus ``tokens`` for a ``TokenOutputs``."""
    from dvqvae_model.nets.sampling_graph import TokenOutputs

    return list(OUTPUT_NAMES) + ([TOKENS_OUTPUT] if isinstance(graph, TokenOutputs) else [])


def with_token_output(graph: nn.Module) -> nn.Module:
    """``graph`` with the sampled tokens as a fifth output when it samples tokens (DVQ-VAE), else itself.

    The tokens let a parity check tell a token flipped on a near-tie apart from a geometry error."""
    from dvqvae_model.nets.sampling_graph import TokenOutputs

    return TokenOutputs(graph) if hasattr(graph, "sample_all") else graph


def export_module(graph: nn.Module, device: Union[str, torch.device, None], *,
                  fp16: bool = False) -> tuple[nn.Module, Optional[dict[str, list[str]]]]:
    """The module every exporter receives: an inference copy of ``graph`` (batch norms folded), in
    explicit mixed precision when ``fp16`` (``precision.mixed_fp16``), with the token output.
    -> (module, fp16 plan or None)."""
    copy = inference_copy(graph, device)
    plan = mixed_fp16(copy) if fp16 else None
    return with_token_output(copy).eval(), plan


def tensorrt_inputs(torch_tensorrt: Any, num_points: int, noise_tail: Sequence[int], max_grasps: int) -> list[Any]:
    """``torch_tensorrt.Input`` specs (float32 in every precision: fp16 casts are inside the graph):
    static cloud, dynamic K in [1, max_grasps], temperature [1]."""
    tail = tuple(int(s) for s in noise_tail)
    opt = max(1, min(AUTO_TIMING_GRASPS, int(max_grasps)))
    f32 = torch.float32
    return [
        torch_tensorrt.Input(shape=(1, int(num_points), 3), dtype=f32),
        torch_tensorrt.Input(min_shape=(1, *tail), opt_shape=(opt, *tail), max_shape=(int(max_grasps), *tail),
                             dtype=f32),
        torch_tensorrt.Input(shape=(1,), dtype=f32),
    ]


def tensorrt_compile_settings(device: torch.device, fp16: bool) -> dict[str, Any]:
    """Keyword arguments of ``torch_tensorrt.compile`` (Torch-TensorRT 2.13, dynamo path).

    * ``device``: the tracer makes its example inputs on it and the engines are built for it
      (without it both go to the current CUDA device, so ``cuda:1`` failed).
    * ``assume_dynamic_shape_support``: the 2.13 ``aten.gather`` converter is registered static-shape
      only, so the K-dependent gathers (scorer, prior log-probabilities) fell back to PyTorch and split
      the graph into several engines. Its implementation (an ELEMENT-mode gather layer) is
      shape-agnostic; every other op of this graph has a converter declared dynamic.
    * ``disable_tf32``: fp32 layers are true fp32 (TF32 keeps 10 mantissa bits): the fp32 engine
      matches eager within 1e-4 m, and in fp16 engines the hand layer and scorer stay exact.
    * ``use_fp32_acc`` (fp16): fp16 GEMMs accumulate in fp32.
    * No ``enabled_precisions`` / ``use_explicit_typing`` (removed in 2.13, silently ignored) and no
      ``enable_autocast`` (fails on this graph, see ``precision``): fp16 is in the graph itself.
    """
    kwargs: dict[str, Any] = {"device": device, "min_block_size": 1, "disable_tf32": True,
                              "assume_dynamic_shape_support": True}
    if fp16:
        kwargs["use_fp32_acc"] = True
    return kwargs


def tensorrt_segments(compiled: nn.Module) -> dict[str, Any]:
    """How Torch-TensorRT partitioned the graph: ``_run_on_acc_*`` children are TensorRT engines,
    ``_run_on_gpu_*`` children and top-level calls run in PyTorch (a graph break each)."""
    children = [name for name, _ in compiled.named_children()]
    engines = sorted(n for n in children if n.startswith("_run_on_acc"))
    torch_parts = sorted(n for n in children if n.startswith("_run_on_gpu"))
    ops: Counter = Counter()
    graphs = [getattr(compiled, "graph", None)] + [getattr(getattr(compiled, n), "graph", None) for n in torch_parts]
    for graph in graphs:
        if isinstance(graph, torch.fx.Graph):
            ops.update(str(n.target) for n in graph.nodes
                       if n.op == "call_function" and n.target is not operator.getitem)
    return {"tensorrt_engines": len(engines), "pytorch_segments": len(torch_parts),
            "pytorch_ops": dict(sorted(ops.items())), "engine_names": engines}


def _describe(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def compile_tensorrt(module: nn.Module, num_points: int, noise_tail: Sequence[int], path: Union[str, Path], *,
                     max_grasps: int = DEFAULT_MAX_GRASPS, fp16: bool = False,
                     device: Union[str, torch.device] = "cuda") -> dict[str, Any]:
    """Torch-TensorRT dynamo compile of ``module`` (from ``export_module``, already in its precision)
    and ``torch_tensorrt.save`` as an ExportedProgram, both on ``device``.

    Returns what the sidecar records: ``{"compile_settings", "segments"}``. Raises ``BackendError``
    (never a raw Torch-TensorRT / export error) when compiling or saving fails, so that ``auto`` can
    fall back to the CPU backends.
    """
    problem = artifacts.tensorrt_problem()
    if problem:
        raise BackendUnavailable(problem)
    import torch_tensorrt

    version = getattr(torch_tensorrt, "__version__", "unknown")
    dev = torch.device(device)
    module = module.to(dev).eval()
    kwargs = tensorrt_compile_settings(dev, fp16)
    inputs = tensorrt_inputs(torch_tensorrt, num_points, noise_tail, max_grasps)
    with on_device(dev), torch.no_grad():
        try:
            compiled = torch_tensorrt.compile(module, ir="dynamo", inputs=inputs, **kwargs)
        except Exception as e:  # noqa: BLE001 - any failure inside Torch-TensorRT / torch.export / TensorRT
            raise BackendError(f"Torch-TensorRT {version} could not compile the sampling graph on {dev}: "
                               f"{_describe(e)}") from e
        segments = tensorrt_segments(compiled)
        try:
            torch_tensorrt.save(compiled, str(path), output_format="exported_program", arg_inputs=inputs,
                                retrace=True)
        except Exception as e:  # noqa: BLE001
            raise BackendError(f"Torch-TensorRT {version} could not save the compiled graph to {path}: "
                               f"{_describe(e)}") from e
    settings = {k: (str(v) if isinstance(v, torch.device) else v) for k, v in kwargs.items()}
    return {"compile_settings": settings, "segments": segments}
