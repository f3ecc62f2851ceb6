"""Probe inputs and the parity check of a runner against the eager sampling graph."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from dvqvae_model.runtime.artifacts import (
    FP16_TOKEN_TIE_MARGIN,
    FP16_TOLERANCE_M,
    OUTPUT_NAMES,
    PARITY_TOLERANCE_M,
    TOKEN_TIE_MARGIN,
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


def eager_token_margins(source: ExportableGraph, points: Tensor, noise: Tensor, temperature: float,
                        top_k: Optional[int]) -> Optional[tuple[Tensor, Tensor]]:
    """Eager's sampled tokens and their near-tie margins (``SamplingGraph.token_margins``), or None
    for a graph without tokens (GraspCVAE)."""
    source = as_exportable(source)
    graph = source.graph(top_k)
    if not hasattr(graph, "token_margins"):
        return None
    dev = source.device
    with torch.inference_mode():
        tokens, margins = graph.token_margins(points.to(dev), noise.to(dev), _temperature(temperature).to(dev))
    return tokens.cpu(), margins.float().cpu()


def parity(reference: Sequence[Tensor], candidate: Sequence[Tensor],
           rows: Optional[Tensor] = None) -> dict[str, float]:
    """Max absolute difference per output (``vertices`` in metres), over ``rows`` (a grasp mask) if given."""
    out = {}
    for name, a, b in zip(OUTPUT_NAMES, reference, candidate):
        a = a.detach().float().cpu()
        b = b.detach().float().cpu()
        if a.shape != b.shape:
            raise BackendError(f"output {name} has shape {tuple(b.shape)}, eager gives {tuple(a.shape)}")
        if rows is not None:
            a, b = a[rows], b[rows]
        out[name] = float((a - b).abs().max()) if a.numel() else 0.0
    return out


def tolerances(precision: str) -> tuple[float, float]:
    """(vertex tolerance in m, near-tie token margin) for an artifact of ``precision``."""
    if str(precision).startswith("fp16"):
        return FP16_TOLERANCE_M, FP16_TOKEN_TIE_MARGIN
    return PARITY_TOLERANCE_M, TOKEN_TIE_MARGIN


def verify_runner(source: ExportableGraph, runner: Runner, top_k: Optional[int],
                  ks: Sequence[int] = VERIFY_GRASPS, *, temperature_shape: tuple[int, ...] = (),
                  seed: int = 1234, precision: str = "fp32") -> dict[str, Any]:
    """Run ``runner`` and eager on the same probe cloud and noise for each K; compare.

    When both sides give sampled tokens (DVQ-VAE artifacts return them as a fifth output), grasps
    whose tokens differ are *token flips*, not geometry errors: their hands differ by a whole code
    (centimetres). A flip is a near-tie when eager's best two perturbed scores were within the tie
    margin at the first differing step. ``max_vertex_error_m`` (the geometry error) is measured on
    the grasps with eager's tokens; ``judge`` turns the report into pass / fail.
    """
    source = as_exportable(source)
    tol, tie = tolerances(precision)
    points = probe_points(source.num_points)
    per_k: dict[str, dict[str, Any]] = {}
    worst: dict[str, float] = {n: 0.0 for n in OUTPUT_NAMES}
    worst_all = 0.0
    flips: list[dict[str, Any]] = []
    compared = True
    same_total = 0
    for i, k in enumerate(ks):
        noise = source.make_noise(int(k), seed + i).cpu()
        ref = eager_outputs(source, points, noise, 1.0, top_k)
        got = runner(points, noise, _temperature(1.0, temperature_shape))
        if got[0].shape[0] != k:
            raise BackendError(f"artifact returned {got[0].shape[0]} grasps for K={k}: K is not dynamic")
        eager_tok = eager_token_margins(source, points, noise, 1.0, top_k) if len(got) > len(OUTPUT_NAMES) else None
        same = torch.ones(int(k), dtype=torch.bool)
        if eager_tok is None:
            compared = False
        else:
            tokens, margins = eager_tok
            got_tokens = got[len(OUTPUT_NAMES)].detach().cpu().long().reshape(tokens.shape)
            differs = got_tokens != tokens
            same = ~differs.any(dim=1)
            for g in (~same).nonzero().flatten().tolist():
                step = int(differs[g].nonzero()[0, 0])
                flips.append({"k": int(k), "grasp": int(g), "step": step, "margin": float(margins[g, step])})
        errs = parity(ref, got, same)
        worst_all = max(worst_all, parity(ref, got)["vertices"])
        same_total += int(same.sum())
        per_k[str(k)] = {**errs, "token_flips": int((~same).sum())}
        for n in OUTPUT_NAMES:
            worst[n] = max(worst[n], errs[n])
    grasps = int(sum(int(k) for k in ks))
    return {"grasps": [int(k) for k in ks], "max_abs_error": worst, "per_k": per_k,
            "max_vertex_error_m": worst["vertices"], "max_vertex_error_all_grasps_m": worst_all,
            "tokens_compared": compared, "token_flips": len(flips), "flips": flips,
            "grasps_with_eager_tokens": same_total, "grasps_total": grasps,
            "tolerance_m": tol, "tie_margin": tie}


def judge(report: dict[str, Any]) -> tuple[bool, str]:
    """(passed, why not) for a ``verify_runner`` report: the geometry within tolerance on the grasps
    with eager's tokens, every token flip a near-tie, and at least half of the grasps comparable."""
    tol, tie = float(report["tolerance_m"]), float(report["tie_margin"])
    err = float(report["max_vertex_error_m"])
    if not err <= tol:  # also NaN
        return False, f"max vertex error {err:.3g} m > {tol:g} m on the grasps with eager's tokens"
    wide = [f for f in report["flips"] if not f["margin"] <= tie]
    if wide:
        f = wide[0]
        return False, (f"{len(wide)} sampled token(s) differ from eager where eager's choice was not a near-tie "
                       f"(K={f['k']} grasp {f['grasp']} step {f['step']}: margin {f['margin']:.3g} > {tie:g})")
    if 2 * int(report["grasps_with_eager_tokens"]) < int(report["grasps_total"]):
        return False, (f"only {report['grasps_with_eager_tokens']} of {report['grasps_total']} grasps sampled "
                       "eager's tokens: too few to check the geometry")
    return True, ""


def check_parity(source: ExportableGraph, runner: Runner, meta: dict, directory: Path) -> float:
    """One quick run (K = 2) of a loaded artifact and the eager graph on the same probe cloud and noise.

    Hashes catch accidents, not tampering: a file swapped together with a re-synced sidecar hash
    passes them. This check does not: the artifact must compute this model. One small eager and
    one artifact call, once per artifact and process. Returns the max vertex error (m); raises
    ``ArtifactMismatch`` beyond the tolerance of the artifact's precision (``judge``).
    """
    precision = str(meta["artifact"].get("precision", "fp32"))
    temp_shape = tuple(int(d) for d in next((i["shape"] for i in meta.get("io", {}).get("inputs", [])
                                             if i.get("name") == "temperature"), []))
    try:
        report = verify_runner(source, runner, meta["graph"].get("top_k"), ks=(2,),
                               temperature_shape=temp_shape, seed=97, precision=precision)
    except BackendError as exc:
        raise ArtifactMismatch(f"{directory}: parity check failed: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a swapped file may fail in any way when run
        raise ArtifactMismatch(f"{directory}: parity check failed: the artifact does not run on the probe "
                               f"cloud ({type(exc).__name__}: {str(exc)[:200]})") from exc
    ok, why = judge(report)
    if not ok:
        err = float(report["max_vertex_error_all_grasps_m"])
        raise ArtifactMismatch(
            f"{directory}: parity check failed: its hands differ from the model's by {1e3 * err:.3g} mm "
            f"({why}): the artifact does not compute this checkpoint (replaced with its hashes "
            "re-synced?); re-export it")
    return float(report["max_vertex_error_m"])
