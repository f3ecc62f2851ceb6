"""Build one artifact directory from an ``ExportableGraph``: convert, load back, verify against eager,
write the sidecar, rename into place atomically.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from dvqvae_model.io import sha256_file
from dvqvae_model.runtime import (
    artifacts,  # tensorrt_problem looked up at call time (tests patch it)
)
from dvqvae_model.runtime.artifacts import (
    ARTIFACT_FILES,
    ARTIFACT_FORMATS,
    DEFAULT_MAX_GRASPS,
    EXAMPLE_GRASPS,
    FP16_TOLERANCE_M,
    ONNX_OPSET,
    PARITY_TOLERANCE_M,
    SIDECAR_FORMAT,
    SIDECAR_NAME,
    SIDECAR_VERSION,
    VERIFY_GRASPS,
    BackendError,
    BackendUnavailable,
    artifact_key,
    graph_identity,
    library_versions,
    runtime_versions,
    write_artifact_dir,
)
from dvqvae_model.runtime.converters import (
    compile_tensorrt,
    export_onnx_file,
    inference_copy,
    trace_torchscript,
)
from dvqvae_model.runtime.exportable import ExportableGraph, as_exportable
from dvqvae_model.runtime.parity import _temperature, probe_points, verify_runner
from dvqvae_model.runtime.runners import (
    load_onnx_runner,
    load_tensorrt_runner,
    load_torchscript_runner,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- build (ExportableGraph -> artifact)
def build_artifact(graph_source: ExportableGraph, fmt: str, out_dir: Union[str, Path], *,
                   top_k: Optional[int] = None, max_grasps: int = DEFAULT_MAX_GRASPS, fp16: bool = False,
                   opset: int = ONNX_OPSET, verify: bool = True, source: Optional[dict] = None,
                   finalize: Optional[Callable[[Path, dict], dict]] = None,
                   device: Union[str, torch.device, None] = None) -> Path:
    """Export the generator's sampling graph (for ``top_k``) as an artifact directory, atomically.

    The artifact is loaded back from the temporary directory and compared with eager for
    K = 1 and 16 before it is renamed into place (fp32: vertices within 1e-4 m or the build
    fails). ``finalize(tmp_dir, sidecar)`` may check the file and return extra sidecar fields
    (used by ``dvqvae-export`` for ``onnx.checker`` and its report).
    """
    graph_source = as_exportable(graph_source)
    if fmt not in ARTIFACT_FORMATS:
        raise ValueError(f"unknown artifact format {fmt!r}; expected one of {ARTIFACT_FORMATS}")
    if fp16 and fmt != "tensorrt":
        raise ValueError("fp16 is a TensorRT option; the TorchScript and ONNX Runtime CPU backends run fp32")
    max_grasps = int(max_grasps)
    if max_grasps < max(VERIFY_GRASPS):
        raise ValueError(f"max_grasps must be >= {max(VERIFY_GRASPS)}, got {max_grasps}")
    trt_device = torch.device(device) if device is not None else torch.device("cuda")
    if fmt == "tensorrt":
        problem = artifacts.tensorrt_problem()
        if problem:
            raise BackendUnavailable(problem)
    identity = graph_identity(graph_source, top_k)
    runtime = runtime_versions(fmt, trt_device if fmt == "tensorrt" else None)
    build = build_options(fmt, max_grasps, fp16, opset)
    noise_tail = identity["noise_shape"]
    n = identity["num_points"]
    file_name = ARTIFACT_FILES[fmt]
    t0 = time.perf_counter()

    def fill(tmp: Path) -> None:
        target = tmp / file_name
        graph = graph_source.graph(top_k)
        precision = "fp32"
        if fmt == "tensorrt":
            precision = compile_tensorrt(inference_copy(graph, trt_device), n, noise_tail, target,
                                         max_grasps=max_grasps, fp16=fp16, device=trt_device)
            runner = load_tensorrt_runner(target, trt_device, half_io=precision == "fp16-half")
            temp_shape: tuple[int, ...] = (1,)
        else:
            cpu_graph = inference_copy(graph, "cpu")
            example = (probe_points(n), graph_source.make_noise(EXAMPLE_GRASPS, 0).cpu(), _temperature(1.0))
            if fmt == "torchscript":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    torch.jit.save(trace_torchscript(cpu_graph, example), str(target))
                runner = load_torchscript_runner(target)
            else:
                export_onnx_file(cpu_graph, example, target, opset)
                runner = load_onnx_runner(target)
            temp_shape = ()
        meta = _sidecar(fmt, file_name, target, identity, runtime, build, precision, n, noise_tail,
                        max_grasps, temp_shape, source)
        if verify:
            report = verify_runner(graph_source, runner, top_k, temperature_shape=temp_shape)
            tol = FP16_TOLERANCE_M if precision.startswith("fp16") else PARITY_TOLERANCE_M
            report["tolerance_m"] = tol
            report["passed"] = report["max_vertex_error_m"] <= tol
            meta["verification"] = report
            if not report["passed"]:
                msg = (f"{fmt} artifact disagrees with eager: max vertex error {report['max_vertex_error_m']:.3g} m "
                       f"> {tol:g} m")
                if precision == "fp32":
                    raise BackendError(msg)
                log.warning("%s (fp16 engine kept; use fp32 if this matters)", msg)
        if finalize is not None:
            meta.update(finalize(tmp, meta))
        meta["build_seconds"] = round(time.perf_counter() - t0, 3)
        with open(tmp / SIDECAR_NAME, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")

    out = write_artifact_dir(out_dir, fill)
    log.info("built %s artifact %s in %.1f s", fmt, out, time.perf_counter() - t0)
    return out


def build_options(fmt: str, max_grasps: int, fp16: bool, opset: int) -> dict[str, Any]:
    """The build settings that change an artifact of ``fmt`` (part of its cache key)."""
    if fmt == "onnx":
        return {"opset": int(opset)}
    if fmt == "tensorrt":
        return {"max_grasps": int(max_grasps), "fp16": bool(fp16)}
    return {}


def _sidecar(fmt: str, file_name: str, target: Path, identity: dict, runtime: dict, build: dict, precision: str,
             num_points: int, noise_tail: Sequence[int], max_grasps: int, temp_shape: tuple[int, ...],
             source: Optional[dict]) -> dict[str, Any]:
    k_dim: Any = "K"
    io = {
        "inputs": [
            {"name": "points", "shape": [1, num_points, 3], "dtype": "float32",
             "doc": "object cloud, centred (the generator subtracts the centre)"},
            {"name": "noise", "shape": [k_dim, *noise_tail], "dtype": "float32",
             "doc": "Gumbel noise [K,H,V] (DVQ-VAE) or standard normal [K,latent] (CVAE)"},
            {"name": "temperature", "shape": list(temp_shape), "dtype": "float32", "doc": "sampling temperature"},
        ],
        "outputs": [
            {"name": "params", "shape": [k_dim, 61], "dtype": "float32"},
            {"name": "vertices", "shape": [k_dim, 778, 3], "dtype": "float32"},
            {"name": "keypoints", "shape": [k_dim, 21, 3], "dtype": "float32"},
            {"name": "scores", "shape": [k_dim], "dtype": "float32"},
        ],
        "dynamic": {"K": {"min": 1, "max": int(max_grasps) if fmt == "tensorrt" else None}},
    }
    meta: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "artifact": {"format": fmt, "file": file_name, "sha256": sha256_file(target),
                     "bytes": target.stat().st_size, "precision": precision, **build},
        "graph": identity,
        "runtime": runtime,
        "io": io,
        "versions": library_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cache_key": artifact_key(identity, fmt, build, runtime),
        "source": source or {},
    }
    if fmt == "onnx":
        meta["artifact"]["exporter"] = "torch.onnx (TorchScript-based, dynamo=False)"
    if fmt == "torchscript":
        meta["artifact"]["method"] = "torch.jit.trace + torch.jit.freeze"
    return meta


