"""Inference backends of ``GraspGenerator``: eager PyTorch, TorchScript, ONNX Runtime (CPU), TensorRT (CUDA).

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

* Explicit path (``artifact=...``): the sidecar must match the generator (model hash, hand
  fingerprint, configs) and this runtime (torch version for TorchScript; torch / Torch-TensorRT /
  TensorRT versions and GPU model for TensorRT). A mismatch is refused with the reasons.
* Cache (no path): artifacts are built on the fly into ``$DVQVAE_CACHE_DIR/artifacts`` (default
  ``~/.cache/dvqvae_ros``) under a key of all of the above; a stale or damaged entry is rebuilt,
  ``force_rebuild=True`` always rebuilds. Builds are verified against eager before they are kept.

This module is the *runtime* side and the minimal builder the cache needs; the ``dvqvae-export``
tool (package ``dvqvae_export``) adds the command line, ONNX checking, the ``torch.export``
proof for TensorRT and reports. The library never imports that package.

``select_backend("auto", generator)`` takes TensorRT when CUDA and ``torch_tensorrt`` are
present, otherwise times eager / TorchScript / ONNX Runtime on a short interleaved run and keeps
the fastest (the choice is cached on disk with the timings).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from dvqvae_model.io import fsync_path

from dvqvae_model.hand.mano_pickle import cache_dir

if TYPE_CHECKING:  # the generator imports this module; no import cycle at run time
    from dvqvae_model.pipeline.generator import GraspGenerator

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
ONNX_OPSET = 17
# Traced / exported with K = 4: an example K of 1 would let size-1 broadcasting specialise the graph.
EXAMPLE_GRASPS = 4
DEFAULT_MAX_GRASPS = 256  # TensorRT optimisation profile upper bound (larger K runs in chunks)
PARITY_TOLERANCE_M = 1e-4  # max |vertex - eager vertex| accepted for an fp32 artifact
FP16_TOLERANCE_M = 1e-2  # fp16 engines: larger deviations are reported (tokens may flip on near-ties)
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


def _config_dict(obj: Any) -> Optional[dict]:
    cfg = getattr(obj, "cfg", None)
    if cfg is None:
        return None
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dataclasses.asdict(cfg)
    return json.loads(json.dumps(d, default=lambda o: list(o) if isinstance(o, (tuple, set)) else str(o)))


def graph_identity(generator: "GraspGenerator", top_k: Optional[int]) -> dict[str, Any]:
    """Everything that determines the sampling graph's function (validated field by field)."""
    graph = generator.graph(top_k)
    weights = getattr(generator, "score_weights", None)
    return {
        "kind": str(generator.kind),
        "model_hash": model_hash(graph),
        "hand_fingerprint": str(generator.hand.fingerprint),
        "num_points": int(generator.num_points),
        "noise_shape": [int(s) for s in generator.noise_shape(1)[1:]],
        "top_k": None if top_k is None else int(top_k),
        "num_score_points": int(getattr(generator, "num_score_points", 0)),
        "score_weights": weights.to_dict() if weights is not None and hasattr(weights, "to_dict") else None,
        "model_config": _config_dict(generator.model),
        "prior_config": _config_dict(generator.prior) if generator.prior is not None else None,
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


def sha256_path(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


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
        digest = sha256_path(path)
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
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not _is_artifact_dir(out):
        raise BackendError(f"refusing to write an artifact into {out}: it exists and is not an artifact directory")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        fill(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; an artifact is meant to be shared like a checkpoint
        for p in tmp.iterdir():
            fsync_path(p)
        fsync_path(tmp)
        if out.exists():
            old = parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, out)
            except OSError:
                if (out / SIDECAR_NAME).is_file():  # lost a race against an identical build
                    shutil.rmtree(tmp, ignore_errors=True)
                    return out
                raise
        fsync_path(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# --------------------------------------------------------------------------- availability
def onnxruntime_problem() -> Optional[str]:
    try:
        import onnxruntime  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"onnxruntime is not importable ({e}); install the 'onnx' extra (pip install onnx onnxruntime)"
    return None


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
        missing.append(f"torch_tensorrt is not importable ({type(e).__name__}: {e}); install torch-tensorrt "
                       f"matching torch {torch.__version__}")
    if not missing:
        return None
    return "the TensorRT backend needs CUDA and torch_tensorrt: " + "; ".join(missing)


# --------------------------------------------------------------------------- probe inputs
def probe_points(num_points: int, seed: int = 0) -> Tensor:
    """A deterministic centred object cloud ``[1, N, 3]`` (points on an ellipsoid, 4 x 3 x 2.5 cm)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(int(num_points), 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    pts = d * np.array([0.04, 0.03, 0.025])
    pts -= pts.mean(axis=0)
    return torch.from_numpy(pts.astype(np.float32)).unsqueeze(0)


def _temperature(value: Union[float, Tensor], shape: tuple[int, ...] = ()) -> Tensor:
    return torch.as_tensor(value, dtype=torch.float32).reshape(shape)


def eager_outputs(generator: "GraspGenerator", points: Tensor, noise: Tensor, temperature: float,
                  top_k: Optional[int]) -> GraphOutputs:
    """The reference: the generator's sampling graph in eager PyTorch."""
    graph = generator.graph(top_k)  # built outside inference mode: its buffers stay normal tensors
    dev = generator.device
    with torch.inference_mode():
        out = graph(points.to(dev), noise.to(dev), _temperature(temperature).to(dev))
    return tuple(o.clone() for o in out)  # type: ignore[return-value]


def parity(reference: Sequence[Tensor], candidate: Sequence[Tensor]) -> dict[str, float]:
    """Max absolute difference per output (``vertices`` in metres)."""
    out = {}
    for name, a, b in zip(OUTPUT_NAMES, reference, candidate):
        a = a.detach().float().cpu()
        b = b.detach().float().cpu()
        if a.shape != b.shape:
            raise BackendError(f"output {name} has shape {tuple(b.shape)}, eager gives {tuple(a.shape)}")
        out[name] = float((a - b).abs().max()) if a.numel() else 0.0
    return out


def verify_runner(generator: "GraspGenerator", runner: Runner, top_k: Optional[int],
                  ks: Sequence[int] = VERIFY_GRASPS, *, temperature_shape: tuple[int, ...] = (),
                  seed: int = 1234) -> dict[str, Any]:
    """Run ``runner`` and eager on the same probe cloud and noise for each K; return max errors."""
    points = probe_points(generator.num_points)
    per_k: dict[str, dict[str, float]] = {}
    worst: dict[str, float] = {n: 0.0 for n in OUTPUT_NAMES}
    for i, k in enumerate(ks):
        noise = generator.make_noise(int(k), seed + i).cpu()
        ref = eager_outputs(generator, points, noise, 1.0, top_k)
        got = runner(points, noise, _temperature(1.0, temperature_shape))
        if got[0].shape[0] != k:
            raise BackendError(f"artifact returned {got[0].shape[0]} grasps for K={k}: K is not dynamic")
        errs = parity(ref, got)
        per_k[str(k)] = errs
        for n in OUTPUT_NAMES:
            worst[n] = max(worst[n], errs[n])
    return {"grasps": [int(k) for k in ks], "max_abs_error": worst, "per_k": per_k,
            "max_vertex_error_m": worst["vertices"]}


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
    problem = tensorrt_problem()
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


# --------------------------------------------------------------------------- runners (file -> callable)
def load_torchscript_runner(path: Path) -> Runner:
    with warnings.catch_warnings():  # torch 2.9+ marks TorchScript deprecated; it still is the CPU path here
        warnings.simplefilter("ignore", DeprecationWarning)
        module = torch.jit.load(str(path), map_location="cpu")
    module.eval()

    def run(points: Tensor, noise: Tensor, temperature: Tensor) -> GraphOutputs:
        with torch.inference_mode():
            return tuple(module(points.cpu(), noise.cpu(), temperature.cpu()))  # type: ignore[return-value]

    return run


def load_onnx_runner(path: Path, threads: Optional[int] = None) -> Runner:
    problem = onnxruntime_problem()
    if problem:
        raise BackendUnavailable(problem)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    # ORT's idle workers spin after each run by default: on a robot's shared CPU that starves the
    # camera driver, DDS and (in the benchmarks) the torch backends timed beside it.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise BackendError(f"ONNX Runtime {ort.__version__} cannot open {path}: {e}") from e
    names = [i.name for i in session.get_inputs()]
    if tuple(names) != INPUT_NAMES:
        raise ArtifactMismatch(f"{path}: inputs {names}, expected {list(INPUT_NAMES)}")

    def run(points: Tensor, noise: Tensor, temperature: Tensor) -> GraphOutputs:
        feeds = {
            "points": points.detach().cpu().numpy().astype(np.float32, copy=False),
            "noise": noise.detach().cpu().numpy().astype(np.float32, copy=False),
            "temperature": temperature.detach().cpu().numpy().astype(np.float32, copy=False).reshape(()),
        }
        outs = session.run(list(OUTPUT_NAMES), feeds)
        return tuple(torch.from_numpy(o) for o in outs)  # type: ignore[return-value]

    return run


def load_tensorrt_runner(path: Path, device: Union[str, torch.device] = "cuda", half_io: bool = False) -> Runner:
    problem = tensorrt_problem()
    if problem:
        raise BackendUnavailable(problem)
    import torch_tensorrt

    module = torch_tensorrt.load(str(path)).module()
    dev = torch.device(device)
    dtype = torch.float16 if half_io else torch.float32

    def run(points: Tensor, noise: Tensor, temperature: Tensor) -> GraphOutputs:
        args = (points.to(dev, dtype), noise.to(dev, dtype), temperature.reshape(1).to(dev, dtype))
        with torch.inference_mode():
            outs = module(*args)
        return tuple(o.float() if o.is_floating_point() else o for o in outs)  # type: ignore[return-value]

    return run


# --------------------------------------------------------------------------- build (generator -> artifact)
def build_artifact(generator: "GraspGenerator", fmt: str, out_dir: Union[str, Path], *,
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
    if fmt not in ARTIFACT_FORMATS:
        raise ValueError(f"unknown artifact format {fmt!r}; expected one of {ARTIFACT_FORMATS}")
    if fp16 and fmt != "tensorrt":
        raise ValueError("fp16 is a TensorRT option; the TorchScript and ONNX Runtime CPU backends run fp32")
    max_grasps = int(max_grasps)
    if max_grasps < max(VERIFY_GRASPS):
        raise ValueError(f"max_grasps must be >= {max(VERIFY_GRASPS)}, got {max_grasps}")
    trt_device = torch.device(device) if device is not None else torch.device("cuda")
    if fmt == "tensorrt":
        problem = tensorrt_problem()
        if problem:
            raise BackendUnavailable(problem)
    identity = graph_identity(generator, top_k)
    runtime = runtime_versions(fmt, trt_device if fmt == "tensorrt" else None)
    build = build_options(fmt, max_grasps, fp16, opset)
    noise_tail = identity["noise_shape"]
    n = identity["num_points"]
    file_name = ARTIFACT_FILES[fmt]
    t0 = time.perf_counter()

    def fill(tmp: Path) -> None:
        target = tmp / file_name
        graph = generator.graph(top_k)
        precision = "fp32"
        if fmt == "tensorrt":
            precision = compile_tensorrt(inference_copy(graph, trt_device), n, noise_tail, target,
                                         max_grasps=max_grasps, fp16=fp16, device=trt_device)
            runner = load_tensorrt_runner(target, trt_device, half_io=precision == "fp16-half")
            temp_shape: tuple[int, ...] = (1,)
        else:
            cpu_graph = inference_copy(graph, "cpu")
            example = (probe_points(n), generator.make_noise(EXAMPLE_GRASPS, 0).cpu(), _temperature(1.0))
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
            report = verify_runner(generator, runner, top_k, temperature_shape=temp_shape)
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
        "artifact": {"format": fmt, "file": file_name, "sha256": sha256_path(target),
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

    def __init__(self, generator: "GraspGenerator") -> None:
        self.generator = generator
        self.selection: dict[str, Any] = {}

    def __call__(self, points: Tensor, noise: Tensor, temperature: float, top_k: Optional[int]) -> GraphOutputs:
        g = self.generator
        temp = torch.tensor(float(temperature), dtype=torch.float32, device=g.device)
        graph = g.graph(top_k)  # built outside inference mode: its buffers must stay normal tensors
        with torch.inference_mode():
            return graph(points, noise, temp)

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {"backend": self.name, "device": str(self.generator.device)}
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

    def __init__(self, generator: "GraspGenerator", loaded: dict[Optional[int], _Loaded], *,
                 provider: Optional[Callable[[Optional[int]], _Loaded]] = None, mode: str = "explicit",
                 max_grasps: Optional[int] = None) -> None:
        self.generator = generator
        self._loaded = dict(loaded)
        self._provider = provider
        self.mode = mode
        self.max_grasps = max_grasps
        self.selection: dict[str, Any] = {}

    @property
    def artifact_path(self) -> Optional[Path]:
        return next(iter(self._loaded.values())).path if self._loaded else None

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
                parts.append(loaded.runner(pts, rows, temp))
        if len(parts) == 1:
            outs = parts[0]
        else:
            outs = tuple(torch.cat([p[i] for p in parts], dim=0) for i in range(4))  # type: ignore[assignment]
        dev = self.generator.device
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


def _open(fmt: str, directory: Path, meta: dict, device: Union[str, torch.device, None]) -> _Loaded:
    path = _verify_file(directory, meta)
    if fmt == "torchscript":
        runner = load_torchscript_runner(path)
    elif fmt == "onnx":
        runner = load_onnx_runner(path)
    else:
        precision = str(meta["artifact"].get("precision", "fp32"))
        runner = load_tensorrt_runner(path, device or "cuda", half_io=precision == "fp16-half")
    return _Loaded(runner=runner, meta=meta, path=directory)


def _device_for(fmt: str, generator: "GraspGenerator",
                device: Union[str, torch.device, None]) -> Optional[torch.device]:
    if fmt != "tensorrt":
        return None
    if device is not None:
        return torch.device(device)
    return generator.device if generator.device.type == "cuda" else torch.device("cuda")


def load_artifact(path: Union[str, Path], generator: "GraspGenerator", *, expected_format: Optional[str] = None,
                  device: Union[str, torch.device, None] = None) -> ArtifactBackend:
    """Open an artifact directory (or its graph file) for ``generator``; refuse it if it does not fit."""
    p = Path(path).expanduser()
    directory = p.parent if p.is_file() else p
    if not directory.is_dir():
        raise BackendError(f"artifact {p} does not exist")
    meta = read_sidecar(directory)
    fmt = meta["artifact"]["format"]
    if expected_format is not None and fmt != expected_format:
        raise ArtifactMismatch(f"{directory} holds a {fmt} artifact, not {expected_format}")
    if fmt == "tensorrt":
        problem = tensorrt_problem()
        if problem:
            raise BackendUnavailable(problem)
    top_k = meta["graph"].get("top_k")
    dev = _device_for(fmt, generator, device)
    problems = sidecar_problems(meta, fmt=fmt, identity=graph_identity(generator, top_k),
                                runtime=runtime_versions(fmt, dev))
    if problems:
        raise ArtifactMismatch(
            f"refusing {fmt} artifact {directory}: " + "; ".join(problems)
            + ". Re-export it for this model and runtime (dvqvae-export --checkpoint CKPT --format "
            + f"{fmt} --out {directory}), or omit the artifact path to build one in the cache")
    loaded = _open(fmt, directory, meta, dev)
    max_grasps = int(meta["artifact"].get("max_grasps", 0)) or None if fmt == "tensorrt" else None
    return _BACKEND_CLASSES[fmt](generator, {top_k: loaded}, mode="explicit", max_grasps=max_grasps)


def cached_artifact(generator: "GraspGenerator", fmt: str, *, top_k: Optional[int] = None,
                    cache_dir: Union[str, Path, None] = None, force_rebuild: bool = False,
                    max_grasps: int = DEFAULT_MAX_GRASPS, fp16: bool = False, opset: int = ONNX_OPSET,
                    device: Union[str, torch.device, None] = None) -> _Loaded:
    """Load the cached artifact of ``fmt`` for this generator / ``top_k``, building it when missing,
    stale or damaged (or when ``force_rebuild``)."""
    dev = _device_for(fmt, generator, device)
    identity = graph_identity(generator, top_k)
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
                return _open(fmt, directory, meta, dev)
            log.warning("cached %s artifact %s is stale (%s): rebuilding", fmt, directory, "; ".join(problems))
        except ArtifactMismatch as e:
            log.warning("cached %s artifact %s is unusable (%s): rebuilding", fmt, directory, e)
    elif force_rebuild:
        log.info("force_rebuild: building %s artifact %s", fmt, directory)
    build_artifact(generator, fmt, directory, top_k=top_k, max_grasps=max_grasps, fp16=fp16, opset=opset,
                   device=dev, source={"built_by": "dvqvae_model.runtime.backends cache"})
    meta = read_sidecar(directory)
    return _open(fmt, directory, meta, dev)


def cached_backend(generator: "GraspGenerator", fmt: str, *, top_k: Optional[int] = None,
                   cache_dir: Union[str, Path, None] = None, force_rebuild: bool = False,
                   max_grasps: int = DEFAULT_MAX_GRASPS, fp16: bool = False, opset: int = ONNX_OPSET,
                   device: Union[str, torch.device, None] = None) -> ArtifactBackend:
    """An artifact backend in cache mode: artifacts for other ``top_k`` values are built on first use."""
    kw = dict(cache_dir=cache_dir, max_grasps=max_grasps, fp16=fp16, opset=opset, device=device)
    first = cached_artifact(generator, fmt, top_k=top_k, force_rebuild=force_rebuild, **kw)

    def provide(k: Optional[int]) -> _Loaded:
        return cached_artifact(generator, fmt, top_k=k, force_rebuild=force_rebuild, **kw)

    return _BACKEND_CLASSES[fmt](generator, {top_k: first}, provider=provide, mode="cache",
                                 max_grasps=int(max_grasps) if fmt == "tensorrt" else None)


# --------------------------------------------------------------------------- selection
def time_backends(generator: "GraspGenerator", backends: Sequence[InferenceBackend], *,
                  num_grasps: int = AUTO_TIMING_GRASPS, rounds: int = 5, warmup: int = 2) -> dict[str, float]:
    """Median latency (ms) of each backend on the probe cloud, measured interleaved (round robin),
    so that load changes on a shared machine hit all candidates alike."""
    points = probe_points(generator.num_points).to(generator.device)
    noise = generator.make_noise(int(num_grasps), 7)
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


def _choice_key(generator: "GraspGenerator", candidates: Sequence[str]) -> str:
    ident = graph_identity(generator, None)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "threads": torch.get_num_threads()}
    versions = {n: runtime_versions(n) for n in candidates if n in ARTIFACT_FORMATS}
    versions["onnxruntime"] = _module_version("onnxruntime") if "onnx" in candidates else None  # type: ignore
    return hashlib.sha256(_canonical({"graph": ident, "machine": machine, "candidates": list(candidates),
                                      "versions": versions, "torch": torch.__version__})).hexdigest()[:20]


def _auto_cpu(generator: "GraspGenerator", *, cache_dir: Union[str, Path, None], force_rebuild: bool,
              top_k: Optional[int]) -> InferenceBackend:
    candidates = ["eager", "torchscript"] + (["onnx"] if onnxruntime_problem() is None else [])
    key = _choice_key(generator, candidates)
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
        backend = select_backend(name, generator, cache_dir=cache_dir, top_k=top_k)
        backend.selection = dict(recorded, mode="auto", cached_choice=True)  # type: ignore[attr-defined]
        _CHOICES[key] = recorded
        log.info("backend auto -> %s (cached choice, timings %s ms)", name, recorded.get("timings_ms"))
        return backend

    built: list[InferenceBackend] = [EagerBackend(generator)]
    failures: dict[str, str] = {}
    for fmt in candidates[1:]:
        try:
            built.append(cached_backend(generator, fmt, top_k=top_k, cache_dir=cache_dir, force_rebuild=force_rebuild))
        except BackendError as e:  # a broken exporter must not take the node down: eager still works
            failures[fmt] = str(e)
            log.warning("backend auto: %s unavailable: %s", fmt, e)
    timings = time_backends(generator, built)
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
    best.selection = dict(record, mode="auto", cached_choice=False)  # type: ignore[attr-defined]
    log.info("backend auto -> %s (timings %s ms at K=%d)", best.name, record["timings_ms"], AUTO_TIMING_GRASPS)
    return best


def select_backend(name: Union[str, InferenceBackend], generator: "GraspGenerator", *,
                   artifact: Union[str, Path, None] = None, cache_dir: Union[str, Path, None] = None,
                   force_rebuild: bool = False, fp16: bool = False, max_grasps: int = DEFAULT_MAX_GRASPS,
                   top_k: Optional[int] = None, device: Union[str, torch.device, None] = None) -> InferenceBackend:
    """Resolve a backend name (or pass an ``InferenceBackend`` through) for ``generator``.

    ``"auto"``: TensorRT when CUDA and torch_tensorrt are present (falls back to CPU timing if the
    engine build fails), else the fastest of eager / TorchScript / ONNX Runtime measured here.
    ``artifact``: an explicit artifact directory (refused if stale); without it exported backends
    use the cache. The result's ``name`` says which backend runs; ``describe()`` says more.
    """
    if isinstance(name, InferenceBackend):
        return name
    if not isinstance(name, str) or name not in BACKEND_CHOICES:
        raise ValueError(f"unknown inference backend {name!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if artifact is not None:
        fmt = read_sidecar(Path(artifact).expanduser() if Path(artifact).expanduser().is_dir()
                           else Path(artifact).expanduser().parent)["artifact"]["format"]
        if name not in ("auto", fmt):
            raise ArtifactMismatch(f"backend {name!r} was requested but {artifact} is a {fmt} artifact")
        backend = load_artifact(artifact, generator, device=device)
        log.info("backend %s from artifact %s", backend.name, artifact)
        return backend
    if name == "eager":
        return EagerBackend(generator)
    if name == "tensorrt":
        problem = tensorrt_problem()
        if problem:
            raise BackendUnavailable(problem)
    if name in ARTIFACT_FORMATS:
        return cached_backend(generator, name, top_k=top_k, cache_dir=cache_dir, force_rebuild=force_rebuild,
                              max_grasps=max_grasps, fp16=fp16, device=device)
    # auto
    if tensorrt_problem() is None:
        try:
            backend = cached_backend(generator, "tensorrt", top_k=top_k, cache_dir=cache_dir,
                                     force_rebuild=force_rebuild, max_grasps=max_grasps, fp16=fp16, device=device)
            backend.selection = {"mode": "auto", "choice": "tensorrt", "reason": "CUDA and torch_tensorrt present"}
            return backend
        except BackendError as e:
            log.warning("backend auto: TensorRT build failed (%s); timing the CPU backends instead", e)
    return _auto_cpu(generator, cache_dir=cache_dir, force_rebuild=force_rebuild, top_k=top_k)
