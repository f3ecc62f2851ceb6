"""Probe inputs and the parity check of a runner against the eager sampling graph."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from dvqvae_model.runtime.artifacts import (
    FP16_TOLERANCE_M,
    OUTPUT_NAMES,
    PARITY_TOLERANCE_M,
    VERIFY_GRASPS,
    ArtifactMismatch,
    BackendError,
    GraphOutputs,
    Runner,
)
from dvqvae_model.runtime.exportable import ExportableGraph, as_exportable


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


def eager_outputs(source: ExportableGraph, points: Tensor, noise: Tensor, temperature: float,
                  top_k: Optional[int]) -> GraphOutputs:
    """The reference: the generator's sampling graph in eager PyTorch."""
    source = as_exportable(source)
    graph = source.graph(top_k)  # built outside inference mode: its buffers stay normal tensors
    dev = source.device
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


def verify_runner(source: ExportableGraph, runner: Runner, top_k: Optional[int],
                  ks: Sequence[int] = VERIFY_GRASPS, *, temperature_shape: tuple[int, ...] = (),
                  seed: int = 1234) -> dict[str, Any]:
    """Run ``runner`` and eager on the same probe cloud and noise for each K; return max errors."""
    source = as_exportable(source)
    points = probe_points(source.num_points)
    per_k: dict[str, dict[str, float]] = {}
    worst: dict[str, float] = {n: 0.0 for n in OUTPUT_NAMES}
    for i, k in enumerate(ks):
        noise = source.make_noise(int(k), seed + i).cpu()
        ref = eager_outputs(source, points, noise, 1.0, top_k)
        got = runner(points, noise, _temperature(1.0, temperature_shape))
        if got[0].shape[0] != k:
            raise BackendError(f"artifact returned {got[0].shape[0]} grasps for K={k}: K is not dynamic")
        errs = parity(ref, got)
        per_k[str(k)] = errs
        for n in OUTPUT_NAMES:
            worst[n] = max(worst[n], errs[n])
    return {"grasps": [int(k) for k in ks], "max_abs_error": worst, "per_k": per_k,
            "max_vertex_error_m": worst["vertices"]}


def check_parity(source: ExportableGraph, runner: Runner, meta: dict, directory: Path) -> float:
    """One quick run (K = 2) of a loaded artifact and the eager graph on the same probe cloud and noise.

    Hashes catch accidents, not tampering: a file swapped together with a re-synced sidecar hash
    passes them. This check does not: the artifact must compute this model. One small eager and
    one artifact call, once per artifact and process. Returns the max vertex error (m); raises
    ``ArtifactMismatch`` beyond the tolerance of the artifact's precision.
    """
    precision = str(meta["artifact"].get("precision", "fp32"))
    tol = FP16_TOLERANCE_M if precision.startswith("fp16") else PARITY_TOLERANCE_M
    temp_shape = tuple(int(d) for d in next((i["shape"] for i in meta.get("io", {}).get("inputs", [])
                                             if i.get("name") == "temperature"), []))
    try:
        report = verify_runner(source, runner, meta["graph"].get("top_k"), ks=(2,),
                               temperature_shape=temp_shape, seed=97)
    except BackendError as exc:
        raise ArtifactMismatch(f"{directory}: parity check failed: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a swapped file may fail in any way when run
        raise ArtifactMismatch(f"{directory}: parity check failed: the artifact does not run on the probe "
                               f"cloud ({type(exc).__name__}: {str(exc)[:200]})") from exc
    err = float(report["max_vertex_error_m"])
    if not err <= tol:  # also NaN
        raise ArtifactMismatch(
            f"{directory}: parity check failed: its hands differ from the model's by {1e3 * err:.3g} mm "
            f"(> {1e3 * tol:g} mm): the artifact does not compute this checkpoint (replaced with its hashes "
            "re-synced?); re-export it")
    return err
