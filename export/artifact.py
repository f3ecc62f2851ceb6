"""Artifact bookkeeping for ``dvqvae-export``: sidecar, hashes, cache keys, export results.

The sidecar format, the hashes and the cache keys are defined in ``dvqvae_model.runtime.artifacts``
because the runtime must check them and the model library never imports this package; they are
re-exported here so that export code has one place to import them from. What this module adds
is export-side: where an artifact came from (checkpoint digests) and a printable result.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from dvqvae_model.io import sha256_file
from dvqvae_model.runtime.artifacts import (
    DEFAULT_MAX_GRASPS,
    ONNX_OPSET,
    artifact_key,
    graph_identity,
    read_sidecar,
    runtime_versions,
)
from dvqvae_model.runtime.build import build_options


def checkpoint_source(path: Union[str, Path]) -> dict[str, Any]:
    """Where an artifact came from: checkpoint path, sha256 of its config.json (which pins the sha256
    of every weight file, so it identifies the checkpoint) and the weight digests themselves."""
    p = Path(path).expanduser().resolve()
    cfg = p / "config.json" if p.is_dir() else p
    out: dict[str, Any] = {"checkpoint": str(p if p.is_dir() else p.parent)}
    if cfg.is_file():
        out["checkpoint_sha256"] = sha256_file(cfg)
        try:
            files = json.loads(cfg.read_text(encoding="utf-8")).get("files", {})
            out["weights_sha256"] = {role: e.get("sha256") for role, e in files.items() if isinstance(e, dict)}
        except (OSError, json.JSONDecodeError):
            pass
    return out


def engine_cache_key(generator: Any, *, fp16: bool = False, max_grasps: int = DEFAULT_MAX_GRASPS,
                     top_k: Optional[int] = None, device: Any = None) -> str:
    """The TensorRT engine cache key: (model hash + configs, hand, torch / Torch-TensorRT / TensorRT
    versions, GPU model, precision, K range). Same key -> the cached engine is reused."""
    build = build_options("tensorrt", max_grasps, fp16, ONNX_OPSET)
    return artifact_key(graph_identity(generator, top_k), "tensorrt", build, runtime_versions("tensorrt", device))


@dataclass
class ExportResult:
    """One exported artifact and what was checked on it."""

    path: Path
    format: str
    sidecar: dict[str, Any]
    checks: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Union[str, Path], checks: Optional[dict[str, Any]] = None) -> "ExportResult":
        meta = read_sidecar(path)
        return cls(path=Path(path), format=meta["artifact"]["format"], sidecar=meta, checks=dict(checks or {}))

    @property
    def file(self) -> Path:
        return self.path / self.sidecar["artifact"]["file"]

    @property
    def max_vertex_error_m(self) -> Optional[float]:
        return (self.sidecar.get("verification") or {}).get("max_vertex_error_m")

    def summary(self) -> dict[str, Any]:
        """Short JSON-ready description (printed by the CLI)."""
        art = self.sidecar["artifact"]
        graph = self.sidecar["graph"]
        ver = self.sidecar.get("verification") or {}
        out: dict[str, Any] = {
            "artifact": str(self.path),
            "file": art["file"],
            "format": art["format"],
            "precision": art.get("precision"),
            "bytes": art.get("bytes"),
            "kind": graph["kind"],
            "num_points": graph["num_points"],
            "top_k": graph["top_k"],
            "model_hash": graph["model_hash"][:16],
            "hand_fingerprint": graph["hand_fingerprint"],
            "inputs": {i["name"]: i["shape"] for i in self.sidecar["io"]["inputs"]},
            "outputs": {o["name"]: o["shape"] for o in self.sidecar["io"]["outputs"]},
            "parity": {"grasps": ver.get("grasps"), "max_vertex_error_m": ver.get("max_vertex_error_m"),
                       "tolerance_m": ver.get("tolerance_m"), "passed": ver.get("passed"),
                       "tokens_compared": ver.get("tokens_compared"), "token_flips": ver.get("token_flips")},
            "build_seconds": self.sidecar.get("build_seconds"),
        }
        if "opset" in art:
            out["opset"] = art["opset"]
        if "tensorrt" in self.sidecar:  # engines / graph breaks, and the fp16 plan
            trt = self.sidecar["tensorrt"]
            out["tensorrt"] = {"segments": trt.get("segments"), "precision_plan": trt.get("precision_plan")}
        if self.checks:
            out["checks"] = self.checks
        return out
