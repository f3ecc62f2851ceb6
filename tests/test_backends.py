"""Inference backends: selection, artifact cache (stale -> rebuilt), explicit artifacts (stale -> refused),
TensorRT gating and orchestration, GraspGenerator integration."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import types
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from dvqvae_model.runtime import artifacts as A
from dvqvae_model.runtime import backends as B
from dvqvae_model.runtime.artifacts import SIDECAR_NAME, ArtifactMismatch, BackendError, BackendUnavailable
from dvqvae_model.runtime.backends import EagerBackend, cached_backend, load_artifact, select_backend
from dvqvae_model.runtime.build import build_artifact
from dvqvae_model.runtime.parity import eager_outputs, parity, probe_points
from dvqvae_model.nets.config import dvqvae_config, prior_config
from dvqvae_model.nets.dvqvae import DVQVAE
from dvqvae_model.pipeline.generator import GraspGenerator
from dvqvae_model.nets.prior import GatedPixelCNNPrior

NUM_POINTS = 512
TOL_M = 1e-4


def _models(hand, seed: int):
    torch.manual_seed(seed)
    cfg = dvqvae_config("compact", num_points=NUM_POINTS)
    model = DVQVAE(cfg, hand).eval()
    with torch.no_grad():
        model.hand_codebook.weight.normal_()
    return model, GatedPixelCNNPrior(prior_config("compact", cfg)).eval()


@pytest.fixture(scope="module")
def gen(hand) -> GraspGenerator:
    model, prior = _models(hand, 0)
    return GraspGenerator(model, prior, hand=hand)


@pytest.fixture(scope="module")
def other_gen(hand) -> GraspGenerator:
    model, prior = _models(hand, 1)  # same architecture, other weights
    return GraspGenerator(model, prior, hand=hand)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One artifact cache for the module: builds cost seconds, so tests share what they can."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def ts_artifact(gen, tmp_path_factory) -> Path:
    return build_artifact(gen, "torchscript", tmp_path_factory.mktemp("explicit") / "ts")


def _matches_eager(gen, backend, k: int = 5, seed: int = 3, objects: int = 1, top_k=None) -> float:
    points = torch.cat([probe_points(NUM_POINTS, seed=seed + b) for b in range(objects)])
    noise = torch.cat([gen.make_noise(k, seed + b) for b in range(objects)])
    ref = eager_outputs(gen, points, noise, 1.0, top_k)
    return parity(ref, backend(points, noise, 1.0, top_k))["vertices"]


def _edit_sidecar(directory: Path, edit) -> None:
    path = directory / SIDECAR_NAME
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


# --------------------------------------------------------------------------- selection
def test_unknown_backend_name_is_a_clear_error(gen) -> None:
    with pytest.raises(ValueError, match="unknown inference backend 'cuda-magic'.*auto, eager, torchscript, onnx, "
                                         "tensorrt"):
        select_backend("cuda-magic", gen)


def test_tensorrt_without_cuda_names_the_missing_pieces(gen, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # import fails as on a machine without it
    with pytest.raises(BackendUnavailable) as err:
        select_backend("tensorrt", gen, cache_dir=tmp_path)
    msg = str(err.value)
    assert "CUDA is not available" in msg and "torch.cuda.is_available() is False" in msg
    assert "torch_tensorrt is not importable" in msg
    assert not (tmp_path / "artifacts").exists()
    # auto never dies for lack of TensorRT: it picks a CPU backend
    assert A.tensorrt_problem() is not None


def test_auto_picks_a_cpu_backend_measures_and_caches_the_choice(gen, cache: Path, monkeypatch) -> None:
    monkeypatch.setattr(B, "_CHOICES", {})
    backend = select_backend("auto", gen, cache_dir=cache)
    assert backend.name in ("eager", "torchscript", "onnx")
    sel = backend.selection
    assert sel["mode"] == "auto" and sel["choice"] == backend.name and not sel["cached_choice"]
    assert set(sel["timings_ms"]) == {"eager", "torchscript", "onnx"}
    assert sel["timings_ms"][backend.name] == min(sel["timings_ms"].values())
    assert backend.describe()["backend"] == backend.name
    assert _matches_eager(gen, backend) <= TOL_M
    # the choice is cached: in process ...
    again = select_backend("auto", gen, cache_dir=cache)
    assert again.name == backend.name and again.selection["cached_choice"]
    # ... and on disk, for the next process
    monkeypatch.setattr(B, "_CHOICES", {})
    files = list((cache / "choices").glob("auto-*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["choice"] == backend.name
    assert select_backend("auto", gen, cache_dir=cache).selection["cached_choice"]


def test_eager_backend_is_the_reference(gen) -> None:
    backend = select_backend("eager", gen)
    assert isinstance(backend, EagerBackend) and backend.name == "eager"
    assert _matches_eager(gen, backend) == 0.0
    assert select_backend(backend, gen) is backend  # objects pass through


# --------------------------------------------------------------------------- cache mode
def test_cache_builds_reuses_and_follows_env(gen, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DVQVAE_CACHE_DIR", str(tmp_path))
    backend = select_backend("torchscript", gen)  # no artifact path: cache under $DVQVAE_CACHE_DIR
    assert backend.name == "torchscript" and backend.mode == "cache"
    path = backend.artifact_path
    assert path is not None and path.parent == tmp_path / "artifacts"
    assert _matches_eager(gen, backend, k=16) <= TOL_M
    marker = path / "graph.ts"
    stamp = marker.stat().st_mtime_ns
    again = select_backend("torchscript", gen)
    assert again.artifact_path == path and marker.stat().st_mtime_ns == stamp, "cache hit must not rebuild"
    # force_rebuild replaces the entry
    (path / "stray.txt").write_text("x")
    rebuilt = select_backend("torchscript", gen, force_rebuild=True)
    assert rebuilt.artifact_path == path and not (path / "stray.txt").exists()
    # another model gets another entry
    assert len(list((tmp_path / "artifacts").iterdir())) == 1


def test_stale_cache_entry_is_rebuilt(gen, cache: Path, caplog) -> None:
    backend = cached_backend(gen, "torchscript", cache_dir=cache)
    path = backend.artifact_path
    assert path is not None
    _edit_sidecar(path, lambda m: m["graph"].update(model_hash="0" * 64))
    with caplog.at_level(logging.WARNING, logger="dvqvae_model.runtime.backends"):
        fresh = cached_backend(gen, "torchscript", cache_dir=cache)
    assert "stale" in caplog.text and "model (checkpoint) hash differs" in caplog.text
    assert json.loads((path / SIDECAR_NAME).read_text())["graph"]["model_hash"] != "0" * 64
    assert _matches_eager(gen, fresh) <= TOL_M
    # a damaged graph file is rebuilt too
    data = bytearray((path / "graph.ts").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / "graph.ts").write_bytes(bytes(data))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dvqvae_model.runtime.backends"):
        healed = cached_backend(gen, "torchscript", cache_dir=cache)
    assert "damaged" in caplog.text
    assert _matches_eager(gen, healed) <= TOL_M


def test_cache_mode_batches_objects_and_builds_other_top_k_on_demand(gen, cache: Path) -> None:
    backend = cached_backend(gen, "torchscript", cache_dir=cache)
    assert _matches_eager(gen, backend, k=4, objects=2) <= TOL_M  # B = 2 runs object by object
    assert _matches_eager(gen, backend, k=6, top_k=3) <= TOL_M  # a top_k=3 artifact is built now
    assert set(backend.describe()["artifacts"]) == {"None", "3"}
    with pytest.raises(BackendError, match="noise"):
        backend(probe_points(NUM_POINTS), torch.zeros(2, 6, 7), 1.0, None)
    with pytest.raises(BackendError, match="512 points"):
        backend(probe_points(100), gen.make_noise(2, 0), 1.0, None)


# --------------------------------------------------------------------------- explicit artifacts
def test_explicit_artifact_loads_and_matches(gen, ts_artifact: Path) -> None:
    backend = select_backend("torchscript", gen, artifact=ts_artifact)
    assert backend.name == "torchscript" and backend.mode == "explicit"
    assert _matches_eager(gen, backend, k=16) <= TOL_M
    assert select_backend("auto", gen, artifact=ts_artifact / "graph.ts").name == "torchscript"
    with pytest.raises(ArtifactMismatch, match="is a torchscript artifact"):
        select_backend("onnx", gen, artifact=ts_artifact)


def test_explicit_artifact_of_another_model_is_refused(other_gen, ts_artifact: Path) -> None:
    with pytest.raises(ArtifactMismatch, match=r"refusing torchscript artifact .*model \(checkpoint\) hash differs"):
        load_artifact(ts_artifact, other_gen)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["graph"].update(model_hash="f" * 64), r"model \(checkpoint\) hash differs"),
    (lambda m: m["graph"].update(hand_fingerprint="mano-0000"), "hand fingerprint differs"),
    (lambda m: m["runtime"].update(torch="1.13.0"), "torch version differs: artifact built with 1.13.0"),
    (lambda m: m["graph"].update(num_points=3000), "num_points differs"),
    (lambda m: m["artifact"].update(sha256="0" * 64), "damaged or replaced"),
])
def test_stale_explicit_artifact_is_refused(gen, ts_artifact: Path, tmp_path: Path, edit, message) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(ts_artifact, copy)
    _edit_sidecar(copy, edit)
    with pytest.raises(ArtifactMismatch, match=message):
        select_backend("torchscript", gen, artifact=copy)


def test_swapped_artifact_with_resynced_hashes_fails_parity(gen, other_gen, ts_artifact: Path, tmp_path: Path,
                                                            caplog) -> None:
    """The graph file replaced by another model's, its sha256 and size re-synced in the sidecar: the hashes
    pass, the parity check run on first load does not (explicit path: refused; cache: rebuilt)."""
    import shutil

    from dvqvae_model.io import sha256_file as sha256_path

    other = build_artifact(other_gen, "torchscript", tmp_path / "other")
    copy = tmp_path / "swapped"
    shutil.copytree(ts_artifact, copy)
    shutil.copyfile(other / "graph.ts", copy / "graph.ts")
    _edit_sidecar(copy, lambda m: m["artifact"].update(sha256=sha256_path(copy / "graph.ts"),
                                                        bytes=(copy / "graph.ts").stat().st_size))
    with pytest.raises(ArtifactMismatch, match=r"parity check failed: its hands differ from the model's by"):
        load_artifact(copy, gen)
    assert load_artifact(ts_artifact, gen).name == "torchscript"  # the genuine one passes

    cache = tmp_path / "cache"
    first = cached_backend(gen, "torchscript", cache_dir=cache)
    entry = first.artifact_path
    shutil.copyfile(other / "graph.ts", entry / "graph.ts")
    _edit_sidecar(entry, lambda m: m["artifact"].update(sha256=sha256_path(entry / "graph.ts"),
                                                         bytes=(entry / "graph.ts").stat().st_size))
    with caplog.at_level("WARNING"):
        again = cached_backend(gen, "torchscript", cache_dir=cache)
    assert "parity check failed" in caplog.text and "rebuilding" in caplog.text
    assert _matches_eager(gen, again) <= TOL_M


def test_missing_or_broken_sidecar_is_refused(gen, ts_artifact: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "nosidecar"
    shutil.copytree(ts_artifact, copy)
    (copy / SIDECAR_NAME).unlink()
    with pytest.raises(ArtifactMismatch, match="not a complete inference artifact"):
        load_artifact(copy, gen)
    (copy / SIDECAR_NAME).write_text("{ truncated")
    with pytest.raises(ArtifactMismatch, match="not valid JSON"):
        load_artifact(copy, gen)
    with pytest.raises(BackendError, match="does not exist"):
        load_artifact(tmp_path / "nowhere", gen)


def test_explicit_artifact_serves_only_its_top_k(gen, ts_artifact: Path) -> None:
    backend = load_artifact(ts_artifact, gen)
    with pytest.raises(BackendError, match="top_k=None, not top_k=4"):
        backend(probe_points(NUM_POINTS), gen.make_noise(2, 0), 1.0, 4)


# --------------------------------------------------------------------------- TensorRT orchestration
class _Partitioned(torch.nn.Module):
    """What Torch-TensorRT's compile returns, in miniature: engines as ``_run_on_acc_N`` children,
    PyTorch fallback segments as ``_run_on_gpu_N``."""

    def __init__(self, module: torch.nn.Module, torch_segments: int = 0) -> None:
        super().__init__()
        self._run_on_acc_0 = module
        for i in range(torch_segments):
            setattr(self, f"_run_on_gpu_{i + 1}", torch.nn.Identity())

    def forward(self, *args):
        return self._run_on_acc_0(*args)


class _FakeTorchTensorRT(types.ModuleType):
    """Stands in for torch_tensorrt to run our TensorRT orchestration on CPU: compile returns the module
    (in the precision our code gave it: an fp16 graph really runs in half on the CPU), save/load keep it
    in memory behind a token written to the engine file. ``fail`` makes compile / save / load raise."""

    class Input:
        def __init__(self, shape=None, min_shape=None, opt_shape=None, max_shape=None, dtype=None) -> None:
            self.shape, self.min_shape, self.opt_shape, self.max_shape, self.dtype = (
                shape, min_shape, opt_shape, max_shape, dtype)

    def __init__(self) -> None:
        super().__init__("torch_tensorrt")
        self.__version__ = "2.13.0-fake"
        self.compiled: list[dict] = []
        self.saved: dict[bytes, torch.nn.Module] = {}
        self.fail: dict[str, BaseException] = {}
        self.torch_segments = 0
        self.events: list[str] = []  # "compile" / "save" / "load", to check they ran on the device

    def compile(self, module, ir, inputs, **kwargs):
        self.events.append("compile")
        self.compiled.append({"ir": ir, "inputs": inputs, "kwargs": kwargs, "module": module})
        if "compile" in self.fail:
            raise self.fail["compile"]
        return _Partitioned(module, self.torch_segments)

    def save(self, module, path, output_format, arg_inputs, retrace):
        self.events.append("save")
        assert output_format == "exported_program" and retrace
        if "save" in self.fail:
            raise self.fail["save"]
        token = uuid.uuid4().hex.encode()
        self.saved[token] = module
        Path(path).write_bytes(token)

    def load(self, path):
        self.events.append("load")
        if "load" in self.fail:
            raise self.fail["load"]
        module = self.saved[Path(path).read_bytes()]
        return types.SimpleNamespace(module=lambda: module)


@pytest.fixture()
def fake_trt(monkeypatch) -> _FakeTorchTensorRT:
    fake = _FakeTorchTensorRT()
    monkeypatch.setitem(sys.modules, "torch_tensorrt", fake)
    monkeypatch.setattr(A, "tensorrt_problem", lambda: None)
    return fake


def test_tensorrt_orchestration_with_a_stand_in_compiler(gen, fake_trt, tmp_path: Path) -> None:
    backend = select_backend("tensorrt", gen, cache_dir=tmp_path, device="cpu", max_grasps=16)
    assert backend.name == "tensorrt" and len(fake_trt.compiled) == 1
    call = fake_trt.compiled[0]
    kw = call["kwargs"]
    assert call["ir"] == "dynamo" and kw["min_block_size"] == 1 and kw["disable_tf32"]
    # the 2.13 API: the device is passed; gathers keep their converter with a dynamic K; no removed or
    # failing precision switches (fp32 here: no fp32 accumulation switch either)
    assert kw["device"] == torch.device("cpu") and kw["assume_dynamic_shape_support"] is True
    assert not {"enabled_precisions", "use_explicit_typing", "enable_autocast", "use_fp32_acc"} & set(kw)
    points_in, noise_in, temp_in = call["inputs"]
    assert points_in.shape == (1, NUM_POINTS, 3) and temp_in.shape == (1,)
    assert {i.dtype for i in call["inputs"]} == {torch.float32}
    assert (noise_in.min_shape[0], noise_in.opt_shape[0], noise_in.max_shape[0]) == (1, 16, 16)
    assert not any(p.dtype == torch.float16 for p in call["module"].parameters())  # fp32 graph
    meta = json.loads((backend.artifact_path / SIDECAR_NAME).read_text())
    assert meta["runtime"]["torch_tensorrt"] == "2.13.0-fake" and "gpu" in meta["runtime"]
    assert meta["io"]["dynamic"]["K"] == {"min": 1, "max": 16}
    assert meta["verification"]["passed"] and meta["verification"]["tokens_compared"]
    assert meta["artifact"]["precision"] == "fp32"
    trt = meta["tensorrt"]
    assert trt["segments"]["tensorrt_engines"] == 1 and trt["segments"]["pytorch_segments"] == 0
    assert trt["compile_settings"]["assume_dynamic_shape_support"] and trt["compile_settings"]["device"] == "cpu"
    assert trt["precision_plan"] is None
    # K above the engine profile runs in chunks of max_grasps, exactly
    assert _matches_eager(gen, backend, k=20) <= TOL_M
    # cache hit: no second compile; force_rebuild compiles again
    select_backend("tensorrt", gen, cache_dir=tmp_path, device="cpu", max_grasps=16)
    assert len(fake_trt.compiled) == 1
    select_backend("tensorrt", gen, cache_dir=tmp_path, device="cpu", max_grasps=16, force_rebuild=True)
    assert len(fake_trt.compiled) == 2
    # auto takes TensorRT when it is available
    auto = select_backend("auto", gen, cache_dir=tmp_path, device="cpu", max_grasps=16)
    assert auto.name == "tensorrt" and auto.selection["choice"] == "tensorrt"
    # an engine from another GPU is refused when given explicitly
    path = backend.artifact_path
    _edit_sidecar(path, lambda m: m["runtime"].update(gpu="NVIDIA Jetson Orin"))
    with pytest.raises(ArtifactMismatch, match="GPU differs: engine built on NVIDIA Jetson Orin"):
        load_artifact(path, gen, device="cpu")


def test_tensorrt_fp16_is_explicit_mixed_precision(gen, fake_trt, tmp_path: Path) -> None:
    """fp16: the networks are half behind casts, the hand layer and scorer fp32, inputs fp32; no autocast.
    The stand-in compiler returns that module, so the verification really runs it in half on the CPU."""
    backend = select_backend("tensorrt", gen, cache_dir=tmp_path, device="cpu", max_grasps=16, fp16=True)
    call = fake_trt.compiled[-1]
    kw = call["kwargs"]
    assert kw["use_fp32_acc"] is True and kw["disable_tf32"] is True
    assert not {"enabled_precisions", "use_explicit_typing", "enable_autocast"} & set(kw)
    assert {i.dtype for i in call["inputs"]} == {torch.float32}  # casts are inside the graph
    sampler = call["module"].sampler
    assert sampler.prior.out_weight.dtype == torch.float16
    assert {p.dtype for p in sampler.model.type_encoder.inner.parameters()} == {torch.float16}
    assert {p.dtype for p in sampler.model.posture_decoder.inner.parameters()} == {torch.float16}
    assert {b.dtype for b in sampler.model.hand.buffers() if b.is_floating_point()} == {torch.float32}
    assert {b.dtype for b in sampler.scorer.buffers() if b.is_floating_point()} <= {torch.float32}
    assert sampler.model.object_codebook.weight.dtype == torch.float32
    assert gen.model.type_encoder.mlp[0].weight.dtype == torch.float32, "the generator's own model is untouched"
    meta = json.loads((backend.artifact_path / SIDECAR_NAME).read_text())
    assert meta["artifact"]["precision"] == "fp16-explicit" and meta["artifact"]["fp16"]
    plan = meta["tensorrt"]["precision_plan"]
    assert {"prior", "model.type_encoder", "model.posture_decoder", "model.gating.gate"} <= set(plan["fp16"])
    assert {"model.hand", "scorer"} <= set(plan["fp32"])
    ver = meta["verification"]
    assert ver["passed"] and ver["tolerance_m"] == A.FP16_TOLERANCE_M and ver["tie_margin"] == A.FP16_TOKEN_TIE_MARGIN
    assert 0.0 < ver["max_vertex_error_m"] <= A.FP16_TOLERANCE_M  # non-zero: it did run in half
    assert _matches_eager(gen, backend, k=5) <= A.FP16_TOLERANCE_M
    # a cached fp16 engine is not an fp32 one
    select_backend("tensorrt", gen, cache_dir=tmp_path, device="cpu", max_grasps=16)
    assert len(fake_trt.compiled) == 2


@pytest.mark.parametrize("stage, error, message", [
    ("compile", RuntimeError("[TRT] [E] 2: [builder] out of memory"), "could not compile the sampling graph"),
    ("save", AttributeError("'SymInt' object has no attribute 'to'"), "could not save the compiled graph"),
    ("load", ValueError("not a valid ExportedProgram"), "cannot load"),
])
def test_tensorrt_failures_are_backend_errors_and_auto_falls_back(gen, fake_trt, cache: Path, tmp_path: Path,
                                                                  monkeypatch, caplog, stage, error,
                                                                  message) -> None:
    fake_trt.fail[stage] = error
    with pytest.raises(BackendError, match=message) as err:
        select_backend("tensorrt", gen, cache_dir=tmp_path, device="cpu", max_grasps=16)
    assert str(error) in str(err.value) and err.value.__cause__ is error
    assert not list((tmp_path / "artifacts").glob("tensorrt-*")), "a failed build leaves no cache entry"
    monkeypatch.setattr(B, "_CHOICES", {})
    with caplog.at_level(logging.WARNING, logger="dvqvae_model.runtime.backends"):
        auto = select_backend("auto", gen, cache_dir=cache, device="cpu", max_grasps=16)
    assert auto.name in ("eager", "torchscript", "onnx")
    reason = auto.selection["fallback_reason"]
    assert reason.startswith("TensorRT failed (BackendError") and str(error) in reason
    assert "timing the CPU backends instead" in caplog.text and str(error) in caplog.text
    assert _matches_eager(gen, auto) <= TOL_M


def test_tensorrt_compiles_saves_and_loads_on_the_requested_device(gen, fake_trt, tmp_path: Path,
                                                                  monkeypatch) -> None:
    """device:=cuda:1: compile gets the device and compile / save / load run with it current."""
    from dvqvae_model.runtime import converters, runners

    def recording(device):
        fake_trt.events.append(f"on:{torch.device(device)}")
        return contextlib.nullcontext()

    monkeypatch.setattr(converters, "on_device", recording)
    monkeypatch.setattr(runners, "on_device", recording)
    select_backend("tensorrt", gen, cache_dir=tmp_path, device="cpu", max_grasps=16)
    events = fake_trt.events
    for stage in ("compile", "save", "load"):
        i = events.index(stage)
        assert [e for e in events[:i] if e.startswith("on:")][-1] == "on:cpu", events
    assert fake_trt.compiled[0]["kwargs"]["device"] == torch.device("cpu")
    # on a CUDA machine: the device object that makes cuda:1 current, and the one compile receives
    ctx = A.on_device("cuda:1")
    assert isinstance(ctx, torch.cuda.device) and ctx.idx == 1
    assert isinstance(A.on_device("cpu"), contextlib.nullcontext)
    from dvqvae_model.runtime.converters import tensorrt_compile_settings

    assert tensorrt_compile_settings(torch.device("cuda:1"), False)["device"] == torch.device("cuda:1")
    on_gpu1 = dataclasses.replace(gen.exportable, device=torch.device("cuda:1"))  # GraspGenerator(device=cuda:1)
    assert B._device_for("tensorrt", on_gpu1, None) == torch.device("cuda:1")
    assert B._device_for("tensorrt", gen.exportable, "cuda:1") == torch.device("cuda:1")


def test_tensorrt_graph_breaks_are_reported(gen, fake_trt, tmp_path: Path, caplog) -> None:
    fake_trt.torch_segments = 2  # as if two ops had fallen back to PyTorch
    with caplog.at_level(logging.WARNING, logger="dvqvae_model.runtime.build"):
        backend = select_backend("tensorrt", gen, cache_dir=tmp_path, device="cpu", max_grasps=16)
    segments = json.loads((backend.artifact_path / SIDECAR_NAME).read_text())["tensorrt"]["segments"]
    assert segments["tensorrt_engines"] == 1 and segments["pytorch_segments"] == 2
    assert "1 engine(s) with 2 PyTorch segment(s)" in caplog.text


def test_tensorrt_engines_of_the_old_fp16_modes_are_refused(gen, fake_trt, tmp_path: Path) -> None:
    """fp16 by autocast / half inputs is gone: such an engine is refused when given, rebuilt in the cache."""
    backend = select_backend("tensorrt", gen, cache_dir=tmp_path, device="cpu", max_grasps=16, fp16=True)
    path = backend.artifact_path
    _edit_sidecar(path, lambda m: m["artifact"].update(precision="fp16-half"))
    with pytest.raises(ArtifactMismatch, match="precision 'fp16-half' comes from an older build"):
        load_artifact(path, gen, device="cpu")
    select_backend("tensorrt", gen, cache_dir=tmp_path, device="cpu", max_grasps=16, fp16=True)
    assert len(fake_trt.compiled) == 2


# --------------------------------------------------------------------------- generator integration
def test_generator_runs_through_the_selected_backend(hand, gen, cache: Path) -> None:
    model, prior = gen.model, gen.prior
    onnx_gen = GraspGenerator(model, prior, hand=hand, backend="onnx", backend_options={"cache_dir": cache})
    assert onnx_gen.backend_name == "onnx" and onnx_gen.backend.name == "onnx"
    assert gen.backend_name == "eager"
    cloud = np.random.default_rng(0).normal(size=(2000, 3)) * 0.03 + np.array([0.4, -0.1, 0.8])
    ref = gen.generate(cloud, 16, seed=5)
    got = onnx_gen.generate(cloud, 16, seed=5)
    assert np.abs(ref.vertices - got.vertices).max() <= TOL_M
    assert np.allclose(ref.scores, got.scores, atol=1e-4)
    batch = onnx_gen.generate_batch([cloud, cloud[::-1] + 0.1], 3, seeds=[1, 2])
    ref_batch = gen.generate_batch([cloud, cloud[::-1] + 0.1], 3, seeds=[1, 2])
    for a, b in zip(batch, ref_batch):
        assert np.abs(a.vertices - b.vertices).max() <= TOL_M
    with pytest.raises(ValueError, match="unknown inference backend"):
        GraspGenerator(model, prior, hand=hand, backend="fast")
