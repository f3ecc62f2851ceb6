"""Inference backends of the sampling graph: eager PyTorch, TorchScript, ONNX Runtime (CPU), TensorRT (CUDA).

Every backend is a callable with the signature of ``GraspGenerator.run_graph``::

    backend(points [B, N, 3], noise [B*K, ...], temperature: float, top_k: int | None)
        -> (params [B*K, 61], vertices [B*K, 778, 3], keypoints [B*K, 21, 3], scores [B*K])

and runs the whole sampling graph (``dvqvae_model.nets.sampling_graph``): object encoders -> object
token -> prior (Gumbel-max from the explicit noise input) -> codebook lookup -> posture decoder
with gating -> hand layer -> position decoder -> hand layer -> scores.

Artifacts. An exported backend runs an *artifact*: a directory with one graph file
(``graph.ts`` / ``graph.onnx`` / ``graph.ep``) and a JSON sidecar ``artifact.json`` that states
what the graph is (model hash, hand fingerprint, configs, cloud size, ``top_k``), how it was made
(format, opset, precision, library versions, file sha256), its inputs/outputs and the parity
measured against eager at build time. Artifacts are exported for one object (``B = 1``) and a
dynamic number of grasps ``K``; batches of objects run object by object.

* Explicit path (``artifact=...``): the sidecar must match the source (model hash, hand
  fingerprint, configs) and this runtime (torch version for TorchScript; torch / Torch-TensorRT /
  TensorRT versions and GPU model for TensorRT). A mismatch is refused with the reasons.
* Cache (no path): artifacts are built on the fly into ``$DVQVAE_CACHE_DIR/artifacts`` (default
  ``~/.cache/dvqvae_ros``) under a key of all of the above; a stale or damaged entry is rebuilt,
  ``force_rebuild=True`` always rebuilds. Builds are verified against eager before they are kept.

This module holds the backends and their selection; the artifact format is defined in
``runtime.artifacts``, the verified builder the cache needs in ``runtime.build`` (converters in
``runtime.converters``, file loaders in ``runtime.runners``). Every function takes an
``ExportableGraph`` (``runtime.exportable``; a ``GraspGenerator`` passes its ``.exportable``). The
``dvqvae-export`` tool (package ``dvqvae_export``) adds the command line, ONNX checking, the
``torch.export`` proof for TensorRT and reports. The library never imports that package.

``select_backend("auto", source)`` takes TensorRT when CUDA and ``torch_tensorrt`` are
present, otherwise times eager / TorchScript / ONNX Runtime on a short interleaved run and keeps
the fastest (the choice is cached on disk with the timings).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from dvqvae_model.runtime import (
    artifacts,  # tensorrt_problem looked up at call time (tests patch it)
)
from dvqvae_model.runtime.artifacts import (
    ARTIFACT_FORMATS,
    AUTO_TIMING_GRASPS,
    BACKEND_CHOICES,
    DEFAULT_MAX_GRASPS,
    ONNX_OPSET,
    PRECISIONS,
    ArtifactMismatch,
    BackendError,
    BackendUnavailable,
    GraphOutputs,
    Runner,
    _canonical,
    _module_version,
    _verify_file,
    artifact_key,
    cache_root,
    graph_identity,
    onnxruntime_problem,
    read_sidecar,
    runtime_versions,
    sidecar_problems,
)
from dvqvae_model.runtime.build import build_artifact, build_options
from dvqvae_model.runtime.exportable import ExportableGraph, as_exportable
from dvqvae_model.runtime.parity import _temperature, check_parity, probe_points
from dvqvae_model.runtime.runners import (
    load_onnx_runner,
    load_tensorrt_runner,
    load_torchscript_runner,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- backends
class InferenceBackend:
    """Base: a callable with the signature of ``GraspGenerator.run_graph``."""

    name = "base"

    def __call__(self, points: Tensor, noise: Tensor, temperature: float, top_k: Optional[int]) -> GraphOutputs:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What to log / report about this backend."""
        return {"backend": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


class EagerBackend(InferenceBackend):
    """The generator's sampling graph in eager PyTorch (any device, any batch)."""

    name = "eager"

    def __init__(self, source: ExportableGraph) -> None:
        source = as_exportable(source)
        self.source = source
        self.selection: dict[str, Any] = {}

    def __call__(self, points: Tensor, noise: Tensor, temperature: float, top_k: Optional[int]) -> GraphOutputs:
        g = self.source
        temp = torch.tensor(float(temperature), dtype=torch.float32, device=g.device)
        graph = g.graph(top_k)  # built outside inference mode: its buffers must stay normal tensors
        with torch.inference_mode():
            return graph(points, noise, temp)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"backend": self.name, "device": str(self.source.device)}
        if self.selection:
            d["selection"] = self.selection
        return d


@dataclasses.dataclass
class _Loaded:
    runner: Runner
    meta: dict
    path: Path


class ArtifactBackend(InferenceBackend):
    """Runs exported artifacts, one per ``top_k`` (``top_k`` is a trace-time constant of the graph).

    Explicit mode holds one artifact; cache mode builds/loads further ones on first use.
    """

    format = "none"

    def __init__(self, source: ExportableGraph, loaded: dict[Optional[int], _Loaded], *,
                 provider: Optional[Callable[[Optional[int]], _Loaded]] = None, mode: str = "explicit",
                 max_grasps: Optional[int] = None) -> None:
        source = as_exportable(source)
        self.source = source
        self._loaded = dict(loaded)
        self._provider = provider
        self.mode = mode
        self.max_grasps = max_grasps
        self.selection: dict[str, Any] = {}

    @property
    def artifact_path(self) -> Optional[Path]:
        return next(iter(self._loaded.values())).path if self._loaded else None

    def top_k_values(self) -> list[Optional[int]]:
        """The ``top_k`` values whose artifacts are loaded (None = no truncation)."""
        return list(self._loaded)

    def has_top_k(self, top_k: Optional[int]) -> bool:
        """True when the artifact for ``top_k`` is loaded (no build or load needed)."""
        return (None if top_k is None else int(top_k)) in self._loaded

    def serves_top_k(self, top_k: Optional[int]) -> bool:
        """True when this backend can sample with ``top_k``: any value in cache mode (built on first
        use), only the exported one for an explicit artifact."""
        return self._provider is not None or self.has_top_k(top_k)

    def artifact(self, top_k: Optional[int]) -> _Loaded:
        key = None if top_k is None else int(top_k)
        if key not in self._loaded:
            if self._provider is None:
                have = ", ".join(repr(k) for k in self._loaded) or "none"
                raise BackendError(
                    f"the {self.name} artifact {self.artifact_path} was exported for top_k={have}, "
                    f"not top_k={key!r}; export one with --top-k {key} or use the artifact cache (no path)")
            self._loaded[key] = self._provider(key)
        return self._loaded[key]

    def _temperature_tensor(self, temperature: float) -> Tensor:
        return _temperature(float(temperature))

    def __call__(self, points: Tensor, noise: Tensor, temperature: float, top_k: Optional[int]) -> GraphOutputs:
        loaded = self.artifact(top_k)
        graph_meta = loaded.meta["graph"]
        num_objects = int(points.shape[0])
        if points.dim() != 3 or int(points.shape[1]) != int(graph_meta["num_points"]):
            raise BackendError(f"{self.name} artifact takes clouds of {graph_meta['num_points']} points, "
                               f"got points of shape {tuple(points.shape)}")
        if list(noise.shape[1:]) != list(graph_meta["noise_shape"]):
            raise BackendError(f"{self.name} artifact takes noise [K, {graph_meta['noise_shape']}], "
                               f"got {tuple(noise.shape)}")
        if num_objects < 1 or noise.shape[0] % num_objects:
            raise BackendError(f"noise rows ({noise.shape[0]}) are not a multiple of the objects ({num_objects})")
        per_object = noise.shape[0] // num_objects
        temp = self._temperature_tensor(temperature)
        chunk = self.max_grasps or per_object
        parts: list[GraphOutputs] = []
        for b in range(num_objects):  # artifacts are exported for one object
            pts = points[b:b + 1]
            for s in range(0, per_object, chunk):  # grasps are independent: chunking is exact
                rows = noise[b * per_object + s: b * per_object + min(per_object, s + chunk)]
                parts.append(tuple(loaded.runner(pts, rows, temp))[:4])  # tokens are for the parity checks
        if len(parts) == 1:
            outs = parts[0]
        else:
            outs = tuple(torch.cat([p[i] for p in parts], dim=0) for i in range(4))  # type: ignore[assignment]
        dev = self.source.device
        return tuple(o.to(dev) for o in outs)  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"backend": self.name, "mode": self.mode,
                             "artifacts": {str(k): str(v.path) for k, v in self._loaded.items()}}
        if self._loaded:
            meta = next(iter(self._loaded.values())).meta
            d["precision"] = meta["artifact"].get("precision")
            ver = meta.get("verification") or {}
            if "max_vertex_error_m" in ver:
                d["max_vertex_error_m"] = ver["max_vertex_error_m"]
        if self.selection:
            d["selection"] = self.selection
        return d


class TorchScriptBackend(ArtifactBackend):
    """Traced + frozen TorchScript on CPU."""

    name = "torchscript"
    format = "torchscript"


class OnnxRuntimeBackend(ArtifactBackend):
    """ONNX Runtime with the CPU execution provider."""

    name = "onnx"
    format = "onnx"


class TensorRTBackend(ArtifactBackend):
    """Torch-TensorRT engine (dynamo path, ExportedProgram on disk) on a CUDA device."""

    name = "tensorrt"
    format = "tensorrt"

    def _temperature_tensor(self, temperature: float) -> Tensor:
        return _temperature(float(temperature), (1,))


_BACKEND_CLASSES: dict[str, type[ArtifactBackend]] = {
    "torchscript": TorchScriptBackend, "onnx": OnnxRuntimeBackend, "tensorrt": TensorRTBackend,
}


def _open(fmt: str, directory: Path, meta: dict, device: Union[str, torch.device, None],
          source: Optional[ExportableGraph] = None) -> _Loaded:
    """Load the artifact's runner; with ``source``, first check it against eager (``parity.check_parity``)."""
    path = _verify_file(directory, meta)
    if fmt == "torchscript":
        runner = load_torchscript_runner(path)
    elif fmt == "onnx":
        runner = load_onnx_runner(path)
    else:
        precision = str(meta["artifact"].get("precision", "fp32"))
        if precision not in PRECISIONS:
            raise ArtifactMismatch(f"{directory}: precision {precision!r} comes from an older build (fp16 by "
                                   "autocast or half inputs); re-export it (fp16 is now explicit mixed precision)")
        runner = load_tensorrt_runner(path, device or "cuda")
    if source is not None:
        check_parity(source, runner, meta, directory)
    return _Loaded(runner=runner, meta=meta, path=directory)


def _device_for(fmt: str, source: ExportableGraph,
                device: Union[str, torch.device, None]) -> Optional[torch.device]:
    if fmt != "tensorrt":
        return None
    if device is not None:
        return torch.device(device)
    return source.device if source.device.type == "cuda" else torch.device("cuda")


def load_artifact(path: Union[str, Path], source: ExportableGraph, *, expected_format: Optional[str] = None,
                  device: Union[str, torch.device, None] = None) -> ArtifactBackend:
    """Open an artifact directory (or its graph file) for ``source``; refuse it if it does not fit."""
    source = as_exportable(source)
    p = Path(path).expanduser()
    directory = p.parent if p.is_file() else p
    if not directory.is_dir():
        raise BackendError(f"artifact {p} does not exist")
    meta = read_sidecar(directory)
    fmt = meta["artifact"]["format"]
    if expected_format is not None and fmt != expected_format:
        raise ArtifactMismatch(f"{directory} holds a {fmt} artifact, not {expected_format}")
    if fmt == "tensorrt":
        problem = artifacts.tensorrt_problem()
        if problem:
            raise BackendUnavailable(problem)
    top_k = meta["graph"].get("top_k")
    dev = _device_for(fmt, source, device)
    problems = sidecar_problems(meta, fmt=fmt, identity=graph_identity(source, top_k),
                                runtime=runtime_versions(fmt, dev))
    if problems:
        raise ArtifactMismatch(
            f"refusing {fmt} artifact {directory}: " + "; ".join(problems)
            + ". Re-export it for this model and runtime (dvqvae-export --checkpoint CKPT --format "
            + f"{fmt} --out {directory}), or omit the artifact path to build one in the cache")
    loaded = _open(fmt, directory, meta, dev, source)
    max_grasps = int(meta["artifact"].get("max_grasps", 0)) or None if fmt == "tensorrt" else None
    return _BACKEND_CLASSES[fmt](source, {top_k: loaded}, mode="explicit", max_grasps=max_grasps)


def cached_artifact(source: ExportableGraph, fmt: str, *, top_k: Optional[int] = None,
                    cache_dir: Union[str, Path, None] = None, force_rebuild: bool = False,
                    max_grasps: int = DEFAULT_MAX_GRASPS, fp16: bool = False, opset: int = ONNX_OPSET,
                    device: Union[str, torch.device, None] = None) -> _Loaded:
    """Load the cached artifact of ``fmt`` for this source / ``top_k``, building it when missing,
    stale or damaged (or when ``force_rebuild``)."""
    source = as_exportable(source)
    dev = _device_for(fmt, source, device)
    identity = graph_identity(source, top_k)
    runtime = runtime_versions(fmt, dev)
    build = build_options(fmt, max_grasps, fp16, opset)
    key = artifact_key(identity, fmt, build, runtime)
    directory = cache_root(cache_dir) / "artifacts" / f"{fmt}-{key[:20]}"
    if directory.exists() and not force_rebuild:
        try:
            meta = read_sidecar(directory)
            problems = sidecar_problems(meta, fmt=fmt, identity=identity, runtime=runtime)
            if meta.get("artifact", {}).get("precision", "fp32").startswith("fp16") != bool(fp16):
                problems.append("precision differs")
            if not problems:
                return _open(fmt, directory, meta, dev, source)
            log.warning("cached %s artifact %s is stale (%s): rebuilding", fmt, directory, "; ".join(problems))
        except ArtifactMismatch as e:
            log.warning("cached %s artifact %s is unusable (%s): rebuilding", fmt, directory, e)
    elif force_rebuild:
        log.info("force_rebuild: building %s artifact %s", fmt, directory)
    build_artifact(source, fmt, directory, top_k=top_k, max_grasps=max_grasps, fp16=fp16, opset=opset,
                   device=dev, source={"built_by": "dvqvae_model.runtime.backends cache"})
    meta = read_sidecar(directory)
    return _open(fmt, directory, meta, dev)


def cached_backend(source: ExportableGraph, fmt: str, *, top_k: Optional[int] = None,
                   cache_dir: Union[str, Path, None] = None, force_rebuild: bool = False,
                   max_grasps: int = DEFAULT_MAX_GRASPS, fp16: bool = False, opset: int = ONNX_OPSET,
                   device: Union[str, torch.device, None] = None) -> ArtifactBackend:
    """An artifact backend in cache mode: artifacts for other ``top_k`` values are built on first use."""
    source = as_exportable(source)
    kw = dict(cache_dir=cache_dir, max_grasps=max_grasps, fp16=fp16, opset=opset, device=device)
    first = cached_artifact(source, fmt, top_k=top_k, force_rebuild=force_rebuild, **kw)

    def provide(k: Optional[int]) -> _Loaded:
        return cached_artifact(source, fmt, top_k=k, force_rebuild=force_rebuild, **kw)

    return _BACKEND_CLASSES[fmt](source, {top_k: first}, provider=provide, mode="cache",
                                 max_grasps=int(max_grasps) if fmt == "tensorrt" else None)


# --------------------------------------------------------------------------- selection
def time_backends(source: ExportableGraph, backends: Sequence[InferenceBackend], *,
                  num_grasps: int = AUTO_TIMING_GRASPS, rounds: int = 5, warmup: int = 2) -> dict[str, float]:
    """Median latency (ms) of each backend on the probe cloud, measured interleaved (round robin),
    so that load changes on a shared machine hit all candidates alike."""
    source = as_exportable(source)
    points = probe_points(source.num_points).to(source.device)
    noise = source.make_noise(int(num_grasps), 7)
    times: dict[str, list[float]] = {b.name: [] for b in backends}
    for _ in range(warmup):
        for b in backends:
            b(points, noise, 1.0, None)
    for _ in range(rounds):
        for b in backends:
            t = time.perf_counter()
            b(points, noise, 1.0, None)
            times[b.name].append((time.perf_counter() - t) * 1e3)
    return {name: float(np.median(v)) for name, v in times.items()}


_CHOICES: dict[str, dict[str, Any]] = {}  # in-process cache of auto choices


def _choice_key(source: ExportableGraph, candidates: Sequence[str]) -> str:
    ident = graph_identity(source, None)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "threads": torch.get_num_threads()}
    versions = {n: runtime_versions(n) for n in candidates if n in ARTIFACT_FORMATS}
    versions["onnxruntime"] = _module_version("onnxruntime") if "onnx" in candidates else None  # type: ignore
    return hashlib.sha256(_canonical({"graph": ident, "machine": machine, "candidates": list(candidates),
                                      "versions": versions, "torch": torch.__version__})).hexdigest()[:20]


def _auto_cpu(source: ExportableGraph, *, cache_dir: Union[str, Path, None], force_rebuild: bool,
              top_k: Optional[int], fallback_reason: Optional[str] = None) -> InferenceBackend:
    """The fastest CPU backend (measured, or the recorded choice); ``fallback_reason``: why TensorRT,
    which ``auto`` prefers when CUDA and torch_tensorrt are present, failed (``selection``)."""
    extra = {"fallback_reason": fallback_reason} if fallback_reason else {}
    candidates = ["eager", "torchscript"] + (["onnx"] if onnxruntime_problem() is None else [])
    key = _choice_key(source, candidates)
    choice_file = cache_root(cache_dir) / "choices" / f"auto-{key}.json"
    recorded: Optional[dict] = None if force_rebuild else _CHOICES.get(key)
    if recorded is None and not force_rebuild and choice_file.is_file():
        try:
            recorded = json.loads(choice_file.read_text())
            if recorded.get("choice") not in candidates:
                recorded = None
        except (OSError, json.JSONDecodeError):
            recorded = None
    if recorded is not None:
        name = recorded["choice"]
        backend = select_backend(name, source, cache_dir=cache_dir, top_k=top_k)
        backend.selection = dict(recorded, mode="auto", cached_choice=True, **extra)  # type: ignore[attr-defined]
        _CHOICES[key] = recorded
        log.info("backend auto -> %s (cached choice, timings %s ms)", name, recorded.get("timings_ms"))
        return backend

    built: list[InferenceBackend] = [EagerBackend(source)]
    failures: dict[str, str] = {}
    for fmt in candidates[1:]:
        try:
            built.append(cached_backend(source, fmt, top_k=top_k, cache_dir=cache_dir, force_rebuild=force_rebuild))
        except BackendError as e:  # a broken exporter must not take the node down: eager still works
            failures[fmt] = str(e)
            log.warning("backend auto: %s unavailable: %s", fmt, e)
    timings = time_backends(source, built)
    best = min(built, key=lambda b: timings[b.name])
    record = {"choice": best.name, "timings_ms": {k: round(v, 3) for k, v in timings.items()},
              "num_grasps": AUTO_TIMING_GRASPS, "failures": failures,
              "measured": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    _CHOICES[key] = record
    try:
        choice_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = choice_file.with_suffix(f".tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, choice_file)
    except OSError as e:  # a read-only cache only costs a re-measurement next time
        log.warning("could not record the backend choice in %s: %s", choice_file, e)
    best.selection = dict(record, mode="auto", cached_choice=False, **extra)  # type: ignore[attr-defined]
    log.info("backend auto -> %s (timings %s ms at K=%d)", best.name, record["timings_ms"], AUTO_TIMING_GRASPS)
    return best


def select_backend(name: Union[str, InferenceBackend], source: ExportableGraph, *,
                   artifact: Union[str, Path, None] = None, cache_dir: Union[str, Path, None] = None,
                   force_rebuild: bool = False, fp16: bool = False, max_grasps: int = DEFAULT_MAX_GRASPS,
                   top_k: Optional[int] = None, device: Union[str, torch.device, None] = None) -> InferenceBackend:
    """Resolve a backend name (or pass an ``InferenceBackend`` through) for ``source``.

    ``"auto"``: TensorRT when CUDA and torch_tensorrt are present, else the fastest of eager /
    TorchScript / ONNX Runtime measured here. When compiling, saving, loading or verifying the
    engine fails, the reason is logged and kept in ``selection["fallback_reason"]`` and the CPU
    backends are timed instead: a broken TensorRT install must not stop the node.
    ``artifact``: an explicit artifact directory (refused if stale); without it exported backends
    use the cache. The result's ``name`` says which backend runs; ``describe()`` says more.
    """
    source = as_exportable(source)
    if isinstance(name, InferenceBackend):
        return name
    if not isinstance(name, str) or name not in BACKEND_CHOICES:
        raise ValueError(f"unknown inference backend {name!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if artifact is not None:
        fmt = read_sidecar(Path(artifact).expanduser() if Path(artifact).expanduser().is_dir()
                           else Path(artifact).expanduser().parent)["artifact"]["format"]
        if name not in ("auto", fmt):
            raise ArtifactMismatch(f"backend {name!r} was requested but {artifact} is a {fmt} artifact")
        backend = load_artifact(artifact, source, device=device)
        log.info("backend %s from artifact %s", backend.name, artifact)
        return backend
    if name == "eager":
        return EagerBackend(source)
    if name == "tensorrt":
        problem = artifacts.tensorrt_problem()
        if problem:
            raise BackendUnavailable(problem)
    if name in ARTIFACT_FORMATS:
        return cached_backend(source, name, top_k=top_k, cache_dir=cache_dir, force_rebuild=force_rebuild,
                              max_grasps=max_grasps, fp16=fp16, device=device)
    # auto
    reason = None
    if artifacts.tensorrt_problem() is None:
        try:
            backend = cached_backend(source, "tensorrt", top_k=top_k, cache_dir=cache_dir,
                                     force_rebuild=force_rebuild, max_grasps=max_grasps, fp16=fp16, device=device)
            backend.selection = {"mode": "auto", "choice": "tensorrt", "reason": "CUDA and torch_tensorrt present"}
            return backend
        except Exception as e:  # noqa: BLE001 - whatever breaks the engine build, the CPU backends still work
            reason = f"TensorRT failed ({type(e).__name__}: {e})"
            log.warning("backend auto: %s; timing the CPU backends instead", reason, exc_info=not isinstance(
                e, BackendError))
    return _auto_cpu(source, cache_dir=cache_dir, force_rebuild=force_rebuild, top_k=top_k, fallback_reason=reason)

