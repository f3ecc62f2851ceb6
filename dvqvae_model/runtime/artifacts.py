"""What an inference artifact is: its identity (model hash, versions, cache key), its JSON sidecar,
its atomic directory, and which runtimes this machine has.

Shared by the runtime (loading, the on-the-fly cache) and ``dvqvae_export`` (making artifacts).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import platform
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor, nn

from dvqvae_model.hand.mano_pickle import cache_dir
from dvqvae_model.io import atomic_directory, sha256_file
from dvqvae_model.runtime.exportable import ExportableGraph, as_exportable

log = logging.getLogger(__name__)

BACKEND_NAMES: tuple[str, ...] = ("eager", "torchscript", "onnx", "tensorrt")
BACKEND_CHOICES: tuple[str, ...] = ("auto",) + BACKEND_NAMES
ARTIFACT_FORMATS: tuple[str, ...] = ("torchscript", "onnx", "tensorrt")
ARTIFACT_FILES: dict[str, str] = {"torchscript": "graph.ts", "onnx": "graph.onnx", "tensorrt": "graph.ep"}
SIDECAR_NAME = "artifact.json"
SIDECAR_FORMAT = "dvqvae_ros.inference_artifact"
SIDECAR_VERSION = 1
INPUT_NAMES: tuple[str, ...] = ("points", "noise", "temperature")
OUTPUT_NAMES: tuple[str, ...] = ("params", "vertices", "keypoints", "scores")
# DVQ-VAE artifacts also return the sampled hand tokens [K, H] (int64): the parity checks compare them.
TOKENS_OUTPUT = "tokens"
ONNX_OPSET = 17
# Traced / exported with K = 4: an example K of 1 would let size-1 broadcasting specialise the graph.
EXAMPLE_GRASPS = 4
DEFAULT_MAX_GRASPS = 256  # TensorRT optimisation profile upper bound (larger K runs in chunks)
PARITY_TOLERANCE_M = 1e-4  # max |vertex - eager vertex| accepted for an fp32 artifact (grasps with eager's tokens)
# fp16 engines (explicit mixed precision, see runtime.precision): the same graph run with CPU fp16 kernels
# differs from fp32 by at most 0.19 mm over 384 grasps of the bundled model (benchmarks/fp16_parity.py).
FP16_TOLERANCE_M = 1e-3
# A token that differs from eager's is a near-tie flip (reported, accepted) when eager's best and second best
# perturbed scores were closer than this at that step; otherwise the artifact fails its parity check. fp16
# logits differ from fp32 by up to 0.03 (bundled model), fp32 kernels by ~1e-5.
TOKEN_TIE_MARGIN = 1e-3
FP16_TOKEN_TIE_MARGIN = 0.1
PRECISIONS: tuple[str, ...] = ("fp32", "fp16-explicit")  # what an artifact's "precision" may say
VERIFY_GRASPS: tuple[int, ...] = (1, 16)  # both differ from EXAMPLE_GRASPS: proves K is dynamic
AUTO_TIMING_GRASPS = 16

GraphOutputs = tuple[Tensor, Tensor, Tensor, Tensor]
Runner = Callable[[Tensor, Tensor, Tensor], GraphOutputs]


class BackendError(RuntimeError):
    """A backend cannot be built, loaded or run."""


class BackendUnavailable(BackendError):
    """A backend needs something this machine does not have (CUDA, torch_tensorrt, onnxruntime)."""


class ArtifactMismatch(BackendError):
    """An artifact does not belong to this model / hand / runtime (stale), or is damaged."""


# --------------------------------------------------------------------------- identity, versions, keys
def model_hash(graph: nn.Module) -> str:
    """sha256 of every parameter and buffer of ``graph`` (name, dtype, shape, bytes).

    Covers the checkpoint weights, the prior, the hand-layer data and the scorer tables: two
    graphs with equal hashes compute the same function (given equal configs, see ``graph_identity``).
    """
    h = hashlib.sha256()
    tensors: dict[str, Tensor] = dict(graph.named_parameters())
    tensors.update(dict(graph.named_buffers()))
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def graph_identity(source: ExportableGraph, top_k: Optional[int]) -> dict[str, Any]:
    """Everything that determines the sampling graph's function (validated field by field)."""
    source = as_exportable(source)
    return {
        "kind": str(source.kind),
        "model_hash": model_hash(source.graph(top_k)),
        "hand_fingerprint": str(source.hand_fingerprint),
        "num_points": int(source.num_points),
        "noise_shape": [int(s) for s in source.noise_tail],
        "top_k": None if top_k is None else int(top_k),
        "num_score_points": int(source.num_score_points),
        "score_weights": source.score_weights,
        "model_config": source.model_config,
        "prior_config": source.prior_config,
    }


def _module_version(name: str) -> Optional[str]:
    try:
        mod = importlib.import_module(name)
    except Exception:  # noqa: BLE001 - absent or broken optional dependency
        return None
    return str(getattr(mod, "__version__", "unknown"))


def library_versions() -> dict[str, Optional[str]]:
    """Versions recorded in every sidecar (informational; see ``runtime_versions`` for the checked ones)."""
    try:
        from importlib.metadata import version

        pkg = version("dvqvae_ros")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        pkg = None
    return {
        "python": platform.python_version(),
        "dvqvae_ros": pkg,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "smplx": _module_version("smplx"),
        "onnx": _module_version("onnx") if "onnx" in sys.modules else None,
        "onnxruntime": _module_version("onnxruntime") if "onnxruntime" in sys.modules else None,
        "torch_tensorrt": _module_version("torch_tensorrt") if "torch_tensorrt" in sys.modules else None,
        "tensorrt": _module_version("tensorrt") if "tensorrt" in sys.modules else None,
    }


def gpu_name(device: Union[str, torch.device, None] = None) -> Optional[str]:
    """Name of the CUDA device (engines are tied to the GPU model), None without CUDA."""
    if not torch.cuda.is_available():
        return None
    dev = torch.device(device) if device is not None else torch.device("cuda")
    if dev.type != "cuda":
        dev = torch.device("cuda")
    return torch.cuda.get_device_name(dev)


def runtime_versions(fmt: str, device: Union[str, torch.device, None] = None) -> dict[str, Any]:
    """Versions an artifact of ``fmt`` is tied to; a difference makes it stale.

    TorchScript archives follow the torch version; TensorRT engines the torch, Torch-TensorRT and
    TensorRT versions and the GPU model. ONNX files are portable (the opset is checked by
    ONNX Runtime when it opens the file), so no runtime version is pinned for them.
    """
    if fmt == "torchscript":
        return {"torch": torch.__version__}
    if fmt == "onnx":
        return {}
    if fmt == "tensorrt":
        return {
            "torch": torch.__version__,
            "torch_tensorrt": _module_version("torch_tensorrt"),
            "tensorrt": _module_version("tensorrt"),
            "cuda": torch.version.cuda,
            "gpu": gpu_name(device),
        }
    raise ValueError(f"unknown artifact format {fmt!r}; expected one of {ARTIFACT_FORMATS}")


def _canonical(d: Any) -> bytes:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def artifact_key(identity: dict, fmt: str, build: dict, runtime: dict) -> str:
    """Cache key of an artifact: graph identity + format + build options + pinned runtime versions."""
    payload = {"graph": identity, "format": fmt, "build": build, "runtime": runtime}
    return hashlib.sha256(_canonical(payload)).hexdigest()


def cache_root(override: Union[str, Path, None] = None) -> Path:
    """``override``, else ``$DVQVAE_CACHE_DIR``, else ``~/.cache/dvqvae_ros``."""
    return Path(override).expanduser() if override is not None else cache_dir()


# --------------------------------------------------------------------------- sidecar
_SIDECAR_KEYS = ("format", "format_version", "artifact", "graph", "runtime", "io", "versions", "created")


def read_sidecar(directory: Union[str, Path]) -> dict[str, Any]:
    """Read and schema-check ``artifact.json`` of an artifact directory (or of a graph file's folder)."""
    d = Path(directory)
    if d.is_file():
        d = d.parent
    path = d / SIDECAR_NAME
    if not path.is_file():
        raise ArtifactMismatch(f"{path} is missing: {d} is not a complete inference artifact "
                               "(export it with dvqvae-export, or omit the artifact path to use the cache)")
    try:
        with open(path, "r", encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactMismatch(f"{path} is not valid JSON (truncated or corrupted): {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise ArtifactMismatch(f"{path} is not a {SIDECAR_FORMAT} sidecar")
    missing = [k for k in _SIDECAR_KEYS if k not in meta]
    if missing:
        raise ArtifactMismatch(f"{path}: missing keys {missing}")
    if int(meta["format_version"]) > SIDECAR_VERSION:
        raise ArtifactMismatch(f"{path}: format_version {meta['format_version']} is newer than supported "
                               f"({SIDECAR_VERSION}); upgrade dvqvae_ros or re-export")
    art = meta["artifact"]
    if not isinstance(art, dict) or art.get("format") not in ARTIFACT_FORMATS or not isinstance(art.get("file"), str):
        raise ArtifactMismatch(f"{path}: 'artifact' needs a known 'format' and a 'file'")
    name = art["file"]
    if "/" in name or "\\" in name or name.startswith("."):
        raise ArtifactMismatch(f"{path}: artifact file name {name!r} is not a plain file name")
    return meta


def _short(v: Any) -> str:
    s = json.dumps(v, sort_keys=True) if not isinstance(v, str) else v
    return s if len(s) <= 24 else s[:16] + "..."


def sidecar_problems(meta: dict, *, fmt: Optional[str], identity: dict, runtime: dict) -> list[str]:
    """Human-readable reasons why the artifact described by ``meta`` does not fit (empty: it fits)."""
    problems: list[str] = []
    got_fmt = meta["artifact"].get("format")
    if fmt is not None and got_fmt != fmt:
        problems.append(f"format is {got_fmt!r}, expected {fmt!r}")
    graph = meta.get("graph") or {}
    for key, want in identity.items():
        have = graph.get(key, "<missing>")
        if have != want:
            if key in ("model_hash", "hand_fingerprint"):
                label = {"model_hash": "model (checkpoint) hash", "hand_fingerprint": "hand fingerprint"}[key]
                problems.append(f"{label} differs: artifact {_short(have)}, model {_short(want)}")
            elif isinstance(want, dict) or isinstance(have, dict):
                problems.append(f"{key} differs from the model's")
            else:
                problems.append(f"{key} differs: artifact {_short(have)}, model {_short(want)}")
    have_rt = meta.get("runtime") or {}
    for key, want in runtime.items():
        have = have_rt.get(key, "<missing>")
        if have != want:
            if key == "gpu":
                problems.append(f"GPU differs: engine built on {have}, this machine has {want}")
            else:
                problems.append(f"{key} version differs: artifact built with {have}, running {want}")
    return problems


def _verify_file(directory: Path, meta: dict) -> Path:
    art = meta["artifact"]
    path = directory / art["file"]
    if not path.is_file():
        raise ArtifactMismatch(f"{path} is missing (the sidecar names it)")
    if "bytes" in art and path.stat().st_size != int(art["bytes"]):
        raise ArtifactMismatch(f"{path} has {path.stat().st_size} bytes, the sidecar says {art['bytes']} "
                               "(truncated or replaced)")
    if "sha256" in art:
        digest = sha256_file(path)
        if digest != art["sha256"]:
            raise ArtifactMismatch(f"{path} is damaged or replaced: sha256 {digest[:16]}... does not match "
                                   f"the sidecar ({str(art['sha256'])[:16]}...)")
    return path


def _is_artifact_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    return not names or SIDECAR_NAME in names or bool(names & set(ARTIFACT_FILES.values()))


def write_artifact_dir(out_dir: Union[str, Path], fill: Callable[[Path], None]) -> Path:
    """Create ``out_dir`` atomically: ``fill(tmp)`` writes into a sibling temp dir that is renamed.

    A crash leaves either the old artifact or the new one, never a half. An existing directory is
    replaced only if it is an artifact directory (or empty). When another process renamed its own
    copy into place first (concurrent cache build), that copy is kept.
    """
    out = Path(out_dir)
    if out.exists() and not _is_artifact_dir(out):
        raise BackendError(f"refusing to write an artifact into {out}: it exists and is not an artifact directory")
    return atomic_directory(out, fill, keep_existing=lambda d: (d / SIDECAR_NAME).is_file())


# --------------------------------------------------------------------------- availability
def onnxruntime_problem() -> Optional[str]:
    try:
        import onnxruntime  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"onnxruntime is not importable ({e}); install the 'onnx' extra (pip install onnx onnxruntime)"
    return None


def on_device(device: Union[str, torch.device]) -> Any:
    """``torch.cuda.device(device)`` for a CUDA device, else a no-op context. Torch-TensorRT makes tensors
    and deserialises engines on the *current* CUDA device where it takes no device argument (the
    tracer's example inputs, ``save``'s re-export, ``load``), so ``cuda:1`` needs it current."""
    dev = torch.device(device)
    return torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext()


def tensorrt_requirement(torch_version: Optional[str] = None) -> str:
    """The Torch-TensorRT requirement that pairs with a torch release: same major.minor
    (torch 2.13.x <-> torch-tensorrt 2.13.*; a newer Torch-TensorRT needs a newer torch)."""
    major, minor = (torch_version or torch.__version__).split("+")[0].split(".")[:2]
    return f"torch-tensorrt=={major}.{minor}.*"


def tensorrt_problem() -> Optional[str]:
    """None when TensorRT can run here, else what is missing (names every missing piece)."""
    missing = []
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        missing.append(f"CUDA is not available (torch.cuda.is_available() is False; torch {torch.__version__} is "
                       f"{build}, or no GPU/driver is visible)")
    try:
        importlib.import_module("torch_tensorrt")
    except Exception as e:  # noqa: BLE001 - ImportError or a broken install (missing libnvinfer, ...)
        missing.append(f"torch_tensorrt is not importable ({type(e).__name__}: {e}); install "
                       f"{tensorrt_requirement()} (pip install 'dvqvae_ros[tensorrt]'; see the README's TensorRT "
                       f"section), the release that pairs with torch {torch.__version__}")
    if not missing:
        return None
    return "the TensorRT backend needs CUDA and torch_tensorrt: " + "; ".join(missing)


