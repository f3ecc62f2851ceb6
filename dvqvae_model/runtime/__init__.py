"""Loading and running the sampling graph: eager, TorchScript, ONNX Runtime, TensorRT artifacts.

``ExportableGraph`` (exportable) describes what runs; ``artifacts`` defines the artifact format
(sidecar, identity, cache key); ``converters`` / ``build`` make artifacts for the on-the-fly cache;
``runners`` open artifact files; ``backends`` wraps them as ``InferenceBackend`` objects and picks
one (``select_backend``). The ``dvqvae-export`` command (package ``dvqvae_export``) builds on this.
"""
from dvqvae_model.runtime.artifacts import (
    ARTIFACT_FORMATS,
    BACKEND_CHOICES,
    BACKEND_NAMES,
    ArtifactMismatch,
    BackendError,
    BackendUnavailable,
    graph_identity,
    read_sidecar,
)
from dvqvae_model.runtime.backends import (
    ArtifactBackend,
    EagerBackend,
    InferenceBackend,
    load_artifact,
    select_backend,
)
from dvqvae_model.runtime.exportable import ExportableGraph, as_exportable, config_dict

__all__ = [
    "ARTIFACT_FORMATS", "BACKEND_CHOICES", "BACKEND_NAMES", "ArtifactBackend", "ArtifactMismatch", "BackendError",
    "BackendUnavailable", "EagerBackend", "ExportableGraph", "InferenceBackend", "as_exportable", "config_dict",
    "graph_identity", "load_artifact", "read_sidecar", "select_backend",
]
