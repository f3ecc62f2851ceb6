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
    problem = artifacts.tensorrt_problem()
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


