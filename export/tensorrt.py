"""TensorRT export (Torch-TensorRT dynamo path) and its CPU-side proof with ``torch.export``.

On a CUDA machine ``export_tensorrt`` compiles the sampling graph with Torch-TensorRT 2.13
(``torch_tensorrt.compile(module, ir="dynamo", inputs=[Input(...), Input(min/opt/max K), Input(...)],
device=..., assume_dynamic_shape_support=True, ...)``, see ``runtime.converters``; fp32, or fp16 by
explicit typing, see ``runtime.precision``), saves it with ``torch_tensorrt.save(...,
output_format="exported_program")``, records how many engines / PyTorch segments the graph became,
and checks the reloaded ``torch_tensorrt.load(path).module()`` against eager, sampled tokens
included (``dvqvae_model.runtime.parity``).

Before that, and on any machine, ``check_exportable`` proves the part that does not need a GPU:
the very module TensorRT receives (same precision) exports with ``torch.export.export`` with a
symbolic grasp dimension ``K`` (``torch.export.Dim``), lowers to core ATen without a single random
or multinomial operator (sampling noise is an input; dropout vanishes in eval mode), and the
exported program matches eager at K values other than the example's. What is left for the GPU is
TensorRT itself.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from dvqvae_model.runtime.artifacts import (
    DEFAULT_MAX_GRASPS,
    EXAMPLE_GRASPS,
    BackendError,
    BackendUnavailable,
    tensorrt_problem,
)
from dvqvae_model.runtime.build import build_artifact
from dvqvae_model.runtime.converters import export_module
from dvqvae_model.runtime.exportable import as_exportable
from dvqvae_model.runtime.parity import eager_outputs, judge, parity, probe_points, verify_runner
from dvqvae_model.runtime.precision import node_precisions

from .artifact import ExportResult

# Substrings of ATen operator names that draw random numbers. TensorRT would freeze such an op's
# build-time value into the engine (rand*) or has no converter for it (multinomial).
RANDOM_OP_MARKERS: tuple[str, ...] = ("rand", "multinomial", "bernoulli", "normal", "uniform", "exponential",
                                      "cauchy", "geometric", "poisson", "dropout")


def random_ops(graph_module: torch.fx.GraphModule) -> list[str]:
    """Names of random operators among the call_function nodes of an FX graph (sorted, unique).

    ``batch_norm``/``layer_norm`` contain "norm" but not "normal", so they do not match.
    """
    found = set()
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        name = str(node.target).lower()
        if any(marker in name for marker in RANDOM_OP_MARKERS):
            found.add(str(node.target))
    return sorted(found)


def _only_eval_dropout(graph_module: torch.fx.GraphModule) -> bool:
    """True when every ``aten.dropout`` node has ``train=False`` (a no-op)."""
    for node in graph_module.graph.nodes:
        if node.op == "call_function" and str(node.target) == "aten.dropout.default":
            train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", True)
            if train is not False:
                return False
    return True


@dataclass
class ExportCheck:
    """Result of ``check_exportable`` (what the TensorRT path would receive)."""

    num_nodes: int
    op_counts: dict[str, int]
    random_ops: list[str]
    dynamic_dims: dict[str, str]  # input name -> symbolic size of its first dimension ("" if static)
    range_constraints: dict[str, str]
    parity: dict[str, dict[str, float]]  # K -> max abs error per output (eager's tokens) and token_flips
    decomposed: bool
    decomposed_parity: dict[str, Any] = field(default_factory=dict)  # K -> errors, or an error message
    exported_program: Any = None
    precision: str = "fp32"
    fp16_plan: Optional[dict[str, list[str]]] = None  # runtime.precision.mixed_fp16's plan (fp16 only)
    token_flips: list[dict[str, Any]] = field(default_factory=list)  # near-tie flips seen
    precisions: dict[str, dict[str, int]] = field(default_factory=dict)  # part -> node output dtypes

    @property
    def max_vertex_error_m(self) -> float:
        return max((p["vertices"] for p in self.parity.values()), default=0.0)

    def summary(self) -> dict[str, Any]:
        return {"num_nodes": self.num_nodes, "distinct_ops": len(self.op_counts), "random_ops": self.random_ops,
                "dynamic_dims": self.dynamic_dims, "range_constraints": self.range_constraints,
                "max_vertex_error_m": self.max_vertex_error_m, "parity": self.parity,
                "decomposed_to_core_aten": self.decomposed, "decomposed_parity": self.decomposed_parity,
                "precision": self.precision, "fp16_plan": self.fp16_plan, "token_flips": self.token_flips,
                "node_dtypes": self.precisions}


def export_program(graph: nn.Module, num_points: int, noise_tail: Sequence[int], *,
                   max_grasps: int = DEFAULT_MAX_GRASPS, example_grasps: int = EXAMPLE_GRASPS,
                   noise: Optional[torch.Tensor] = None) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``graph`` with inputs shaped as for TensorRT: cloud [1, N, 3] (static),
    noise [K, ...] with ``K = Dim("K", min=1, max=max_grasps)``, temperature [1]."""
    k = torch.export.Dim("K", min=1, max=int(max_grasps))
    if noise is None:
        noise = torch.zeros(int(example_grasps), *[int(s) for s in noise_tail])
    args = (probe_points(num_points), noise, torch.ones(1))
    with torch.no_grad():
        return torch.export.export(graph, args, dynamic_shapes=({}, {0: k}, {}), strict=False)


def check_exportable(generator: Any, *, top_k: Optional[int] = None, max_grasps: int = DEFAULT_MAX_GRASPS,
                     check_grasps: Sequence[int] = (1, 16), decompose: bool = True,
                     run_decomposed: bool = True, fp16: bool = False) -> ExportCheck:
    """Prove on CPU that the generator's sampling graph is TensorRT-ready (see module docstring).

    The graph checked is the module ``compile_tensorrt`` receives (``converters.export_module``:
    batch norms folded, the token output, and with ``fp16`` the explicit mixed precision, whose
    node dtypes ``precisions`` records). Raises ``BackendError`` on random operators, a static K, or
    a parity failure of the exported program (``parity.judge``: vertices beyond 1e-4 m, fp16 1e-3 m,
    on the grasps with eager's tokens, or a token flip that is not a near-tie). With
    ``run_decomposed`` the core-ATen program is also run; its result is recorded
    (``decomposed_parity``), not enforced: TensorRT converts that graph, it does not execute it
    with PyTorch's stride rules.
    """
    generator = as_exportable(generator)
    graph, plan = export_module(generator.graph(top_k), "cpu", fp16=fp16)
    tail = list(generator.noise_shape(1)[1:])
    example = generator.make_noise(EXAMPLE_GRASPS, 0).cpu()
    ep = export_program(graph, generator.num_points, tail, max_grasps=max_grasps, noise=example)
    lowered = ep.run_decompositions() if decompose else ep
    gm = lowered.graph_module
    raw = set(random_ops(ep.graph_module))
    if _only_eval_dropout(ep.graph_module):  # F.dropout(training=False): an identity, gone in core ATen
        raw.discard("aten.dropout.default")
    found = sorted(raw | (set(random_ops(gm)) if decompose else set()))
    if found:
        raise BackendError(f"the sampling graph contains random operators {found}: TensorRT would freeze or reject "
                           "them; sampling noise must come in as an input")
    placeholders = {n.name: n for n in lowered.graph.nodes if n.op == "placeholder"}
    dyn: dict[str, str] = {}
    for name in ("points", "noise", "temperature"):
        node = placeholders.get(name)
        val = node.meta.get("val") if node is not None else None
        first = val.shape[0] if val is not None and val.dim() > 0 else None
        dyn[name] = str(first) if isinstance(first, torch.SymInt) else ""
    if not dyn["noise"]:
        raise BackendError("torch.export specialised the grasp dimension K: the graph is not dynamic in K")
    ops = Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
    module = ep.module()

    def run_program(points: torch.Tensor, noise: torch.Tensor, temperature: torch.Tensor) -> tuple:
        with torch.no_grad():
            return tuple(module(points, noise, temperature))

    precision = "fp16-explicit" if fp16 else "fp32"
    report = verify_runner(generator, run_program, top_k, ks=check_grasps, temperature_shape=(1,), seed=100,
                           precision=precision)
    decomposed_errors: dict[str, Any] = {}
    if decompose and run_decomposed:
        low_module = lowered.module()
        points = probe_points(generator.num_points)
        for i, kk in enumerate(check_grasps):
            noise = generator.make_noise(int(kk), 100 + i).cpu()
            ref = eager_outputs(generator, points, noise, 1.0, top_k)
            try:
                with torch.no_grad():
                    decomposed_errors[str(kk)] = parity(ref, low_module(points, noise, torch.ones(1)))
            except RuntimeError as e:  # recorded: see docstring
                decomposed_errors[str(kk)] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    check = ExportCheck(num_nodes=len(gm.graph.nodes), op_counts=dict(sorted(ops.items())), random_ops=found,
                        dynamic_dims=dyn,
                        range_constraints={str(k): str(v) for k, v in lowered.range_constraints.items()},
                        parity=report["per_k"], decomposed=decompose, decomposed_parity=decomposed_errors,
                        exported_program=lowered, precision=precision, fp16_plan=plan,
                        token_flips=report["flips"], precisions=_dtype_summary(lowered))
    ok, why = judge(report)
    if not ok:
        raise BackendError(f"the exported program ({precision}) disagrees with eager: {why}")
    return check


def _dtype_summary(program: Any) -> dict[str, dict[str, int]]:
    """Node output dtypes of the program per top-level part (``precision.node_precisions``, folded
    to the first three path components, e.g. ``sampler.model.hand``)."""
    out: dict[str, Counter] = {}
    for path, counts in node_precisions(program).items():
        key = ".".join(path.split(".")[:3]) or "(sampling arithmetic, codebooks)"
        out.setdefault(key, Counter()).update(counts)
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def export_tensorrt(generator: Any, out_dir: Union[str, Path], *, fp16: bool = False,
                    max_grasps: int = DEFAULT_MAX_GRASPS, top_k: Optional[int] = None,
                    source: Optional[dict[str, Any]] = None, device: Union[str, torch.device, None] = None,
                    check: bool = True) -> ExportResult:
    """Build a TensorRT artifact (``graph.ep`` + ``artifact.json``). Needs CUDA and torch_tensorrt:
    without them raises ``BackendUnavailable`` naming what is missing (after the CPU proof, if ``check``)."""
    checks: dict[str, Any] = {}
    if check:
        checks["torch_export"] = check_exportable(generator, top_k=top_k, max_grasps=max_grasps,
                                                  run_decomposed=False, fp16=fp16).summary()
    problem = tensorrt_problem()
    if problem:
        raise BackendUnavailable(problem)
    path = build_artifact(generator, "tensorrt", out_dir, top_k=top_k, max_grasps=max_grasps, fp16=fp16,
                          source=source, device=device,
                          finalize=lambda tmp, meta: {"torch_export_check": checks.get("torch_export", {})})
    return ExportResult.read(path, checks=checks)
