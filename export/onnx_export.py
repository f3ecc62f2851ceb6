"""ONNX export of the sampling graph, checked with ``onnx.checker`` and verified in ONNX Runtime.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)`` at opset 17 (default;
``--opset`` changes it). The dynamo exporter needs ``onnxscript``, which is not a dependency here;
the TorchScript-based one gives a correct graph with a dynamic grasp axis ``K`` (inputs ``noise``
and all four outputs have ``K`` as their first dimension). The build runs the file in ONNX Runtime
(CPUExecutionProvider) at K = 1 and 16 against eager before keeping it.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Optional, Union

from dvqvae_model.runtime.artifacts import ONNX_OPSET, BackendError
from dvqvae_model.runtime.build import build_artifact

from .artifact import ExportResult

# ONNX operators that draw random numbers: none may appear (noise is an input of the graph).
RANDOM_ONNX_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                             "Multinomial", "Bernoulli", "Dropout"})


def check_onnx_file(path: Union[str, Path]) -> dict[str, Any]:
    """``onnx.checker`` (full check with shape inference) plus facts the sidecar records.

    Raises ``BackendError`` when the model is invalid, samples randomly, or lost its dynamic K axis.
    """
    import onnx

    model = onnx.load(str(path))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise BackendError(f"onnx.checker rejected {path}: {e}") from e
    ops = Counter(node.op_type for node in model.graph.node)
    random_ops = sorted(set(ops) & RANDOM_ONNX_OPS)
    if random_ops:
        raise BackendError(f"{path} contains random operators {random_ops}: sampling noise must be an input")

    def dims(value: Any) -> list[Any]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = {v.name: dims(v) for v in model.graph.input}
    outputs = {v.name: dims(v) for v in model.graph.output}
    if inputs.get("noise", [None])[0] != "K" or any(shape[:1] != ["K"] for shape in outputs.values()):
        raise BackendError(f"{path}: the grasp axis K is not dynamic (inputs {inputs}, outputs {outputs})")
    return {
        "onnx_checker": "passed (full_check)",
        "onnx_version": onnx.__version__,
        "ir_version": int(model.ir_version),
        "opset_import": {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import},
        "num_nodes": len(model.graph.node),
        "op_types": dict(sorted(ops.items())),
        "random_ops": random_ops,
        "graph_inputs": inputs,
        "graph_outputs": outputs,
    }


def export_onnx(generator: Any, out_dir: Union[str, Path], *, opset: int = ONNX_OPSET, top_k: Optional[int] = None,
                source: Optional[dict[str, Any]] = None) -> ExportResult:
    """Write an ONNX artifact (``graph.onnx`` + ``artifact.json``) for ``generator`` into ``out_dir``."""
    checks: dict[str, Any] = {}

    def finalize(tmp: Path, meta: dict[str, Any]) -> dict[str, Any]:
        checks.update(check_onnx_file(tmp / meta["artifact"]["file"]))
        return {"onnx": checks}

    path = build_artifact(generator, "onnx", out_dir, top_k=top_k, opset=opset, source=source, finalize=finalize)
    return ExportResult.read(path, checks={"onnx_checker": checks.get("onnx_checker"),
                                           "opset_import": checks.get("opset_import"),
                                           "num_nodes": checks.get("num_nodes")})
