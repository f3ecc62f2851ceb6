"""Runners: an artifact file -> a callable ``(points, noise, temperature) -> outputs``."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor

from dvqvae_model.runtime import (
    artifacts,  # tensorrt_problem looked up at call time (tests patch it)
)
from dvqvae_model.runtime.artifacts import (
    INPUT_NAMES,
    OUTPUT_NAMES,
    ArtifactMismatch,
    BackendError,
    BackendUnavailable,
    GraphOutputs,
    Runner,
    on_device,
    onnxruntime_problem,
)


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
    outputs = [o.name for o in session.get_outputs()]
    if tuple(outputs[:len(OUTPUT_NAMES)]) != OUTPUT_NAMES:
        raise ArtifactMismatch(f"{path}: outputs {outputs}, expected {list(OUTPUT_NAMES)} first")

    def run(points: Tensor, noise: Tensor, temperature: Tensor) -> GraphOutputs:
        feeds = {
            "points": points.detach().cpu().numpy().astype(np.float32, copy=False),
            "noise": noise.detach().cpu().numpy().astype(np.float32, copy=False),
            "temperature": temperature.detach().cpu().numpy().astype(np.float32, copy=False).reshape(()),
        }
        outs = session.run(outputs, feeds)  # the four outputs, and the tokens of a DVQ-VAE graph
        return tuple(torch.from_numpy(o) for o in outs)  # type: ignore[return-value]

    return run


def load_tensorrt_runner(path: Path, device: Union[str, torch.device] = "cuda") -> Runner:
    """A Torch-TensorRT ExportedProgram on ``device``. Inputs and outputs are float32 in every precision
    (an fp16 engine casts inside the graph, see ``runtime.precision``). Loading failures are raised
    as ``BackendError`` (``auto`` falls back on them)."""
    problem = artifacts.tensorrt_problem()
    if problem:
        raise BackendUnavailable(problem)
    import torch_tensorrt

    dev = torch.device(device)
    try:
        with on_device(dev):
            module = torch_tensorrt.load(str(path)).module()
    except Exception as e:  # noqa: BLE001 - torch.export.load / TensorRT deserialisation errors of any type
        lines = str(e).strip().splitlines()
        raise BackendError(f"Torch-TensorRT {getattr(torch_tensorrt, '__version__', '?')} cannot load {path} on "
                           f"{dev}: {type(e).__name__}: {lines[0][:300] if lines else ''}") from e

    def run(points: Tensor, noise: Tensor, temperature: Tensor) -> GraphOutputs:
        args = (points.to(dev, torch.float32), noise.to(dev, torch.float32),
                temperature.reshape(1).to(dev, torch.float32))
        with on_device(dev), torch.inference_mode():
            outs = module(*args)
        return tuple(o.float() if o.is_floating_point() else o for o in outs)  # type: ignore[return-value]

    return run
