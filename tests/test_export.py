"""Export round trips: TorchScript / ONNX artifacts vs eager, dynamic K, torch.export proof, CLI, TensorRT gate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dvqvae_export.artifact import ExportResult, checkpoint_source, engine_cache_key
from dvqvae_export.cli import main as export_main
from dvqvae_export.onnx_export import check_onnx_file, export_onnx
from dvqvae_export.tensorrt import check_exportable, export_program, random_ops
from dvqvae_export.torchscript import export_torchscript
from dvqvae_model.runtime.artifacts import (
    EXAMPLE_GRASPS,
    SIDECAR_NAME,
    BackendError,
    BackendUnavailable,
    graph_identity,
    tensorrt_problem,
)
from dvqvae_model.runtime.backends import load_artifact
from dvqvae_model.runtime.parity import eager_outputs, parity, probe_points
from dvqvae_model.checkpoint import save_checkpoint
from dvqvae_model.nets.config import cvae_config, dvqvae_config, prior_config
from dvqvae_model.nets.cvae import GraspCVAE
from dvqvae_model.nets.dvqvae import DVQVAE
from dvqvae_model.pipeline.generator import GraspGenerator
from dvqvae_model.nets.prior import GatedPixelCNNPrior

NUM_POINTS = 512
TOL_M = 1e-4


def _dvqvae(hand, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = dvqvae_config("compact", num_points=NUM_POINTS, **overrides)
    model = DVQVAE(cfg, hand).eval()
    with torch.no_grad():  # spread the codes as training would: different tokens -> visibly different hands
        model.hand_codebook.weight.normal_()
    prior = GatedPixelCNNPrior(prior_config("compact", cfg)).eval()
    return model, prior


@pytest.fixture(scope="module")
def gens(hand) -> dict[str, GraspGenerator]:
    model, prior = _dvqvae(hand)
    torch.manual_seed(1)
    cvae = GraspCVAE(cvae_config("compact", num_points=NUM_POINTS), hand).eval()
    # the 6-D rotation's matrix -> axis-angle conversion is part of the graph; the principal frame is not
    model6, prior6 = _dvqvae(hand, rotation="6d", input_frame="principal")
    return {"dvqvae": GraspGenerator(model, prior, hand=hand),
            "dvqvae6d": GraspGenerator(model6, prior6, hand=hand),
            "cvae": GraspGenerator(cvae, hand=hand)}


@pytest.fixture(scope="module")
def exported(gens, tmp_path_factory) -> dict[tuple[str, str], ExportResult]:
    root = tmp_path_factory.mktemp("artifacts")
    out = {}
    for kind, gen in gens.items():
        out[(kind, "torchscript")] = export_torchscript(gen, root / f"{kind}-ts")
        out[(kind, "onnx")] = export_onnx(gen, root / f"{kind}-onnx")
    return out


def _compare(gen: GraspGenerator, backend, k: int, seed: int, temperature: float = 1.0, top_k=None) -> dict:
    points = probe_points(NUM_POINTS, seed=seed)
    noise = gen.make_noise(k, seed)
    ref = eager_outputs(gen, points, noise, temperature, top_k)
    got = backend(points, noise, temperature, top_k)
    assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in ref]
    return parity(ref, got)


@pytest.mark.parametrize("kind", ["dvqvae", "dvqvae6d", "cvae"])
@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_round_trip_parity_and_dynamic_k(gens, exported, kind: str, fmt: str) -> None:
    gen = gens[kind]
    result = exported[(kind, fmt)]
    assert result.file.is_file() and (result.path / SIDECAR_NAME).is_file()
    meta = result.sidecar
    # sidecar: identity of the model, I/O contract, versions, build-time parity
    assert meta["graph"] == graph_identity(gen, None)
    assert [i["name"] for i in meta["io"]["inputs"]] == ["points", "noise", "temperature"]
    # DVQ-VAE artifacts also return the sampled tokens (the parity checks compare them); the CVAE has none
    extra = ["tokens"] if kind != "cvae" else []
    assert [o["name"] for o in meta["io"]["outputs"]] == ["params", "vertices", "keypoints", "scores", *extra]
    assert meta["verification"]["tokens_compared"] == (kind != "cvae")
    assert meta["verification"]["token_flips"] == 0  # fp32 CPU runtimes: no flips
    assert meta["io"]["inputs"][1]["shape"][0] == "K" and meta["io"]["inputs"][0]["shape"] == [1, NUM_POINTS, 3]
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["verification"]["passed"] and meta["verification"]["max_vertex_error_m"] <= TOL_M
    # exported with K = 4; run with K = 1 and 16 (and a batch of 2 objects) from the saved file
    assert EXAMPLE_GRASPS == 4
    backend = load_artifact(result.path, gen)
    assert backend.name == fmt
    for k, seed in ((1, 11), (16, 12)):
        errs = _compare(gen, backend, k, seed)
        assert errs["vertices"] <= TOL_M, errs
        assert errs["keypoints"] <= TOL_M and errs["params"] <= 1e-4, errs
    # the grasps really differ from each other (the comparison is not between constants)
    noise = gen.make_noise(16, 12)
    verts = backend(probe_points(NUM_POINTS, seed=12), noise, 1.0, None)[1]
    assert float(verts.std(dim=0).max()) > 1e-4  # >> the ~1e-8 m export errors


def test_temperature_is_an_input_not_a_constant(gens, exported) -> None:
    gen = gens["dvqvae"]
    backend = load_artifact(exported[("dvqvae", "onnx")].path, gen)
    for temperature in (0.0, 0.5, 2.0):
        errs = _compare(gen, backend, 8, 21, temperature=temperature)
        assert errs["vertices"] <= TOL_M, (temperature, errs)
    points, noise = probe_points(NUM_POINTS, seed=21), gen.make_noise(8, 21)
    greedy = backend(points, noise, 0.0, None)[1]
    hot = backend(points, noise, 2.0, None)[1]
    assert torch.allclose(greedy[0], greedy[-1]), "temperature 0 ignores the noise"
    assert not torch.allclose(greedy, hot), "temperature must change the samples"


def test_onnx_checker_opset_and_top_k(gens, exported, tmp_path: Path) -> None:
    meta = exported[("dvqvae", "onnx")].sidecar
    assert meta["artifact"]["opset"] == 17
    assert meta["onnx"]["onnx_checker"] == "passed (full_check)"
    assert meta["onnx"]["opset_import"]["ai.onnx"] == 17
    assert meta["onnx"]["random_ops"] == []
    assert meta["onnx"]["graph_inputs"]["noise"][0] == "K"
    facts = check_onnx_file(exported[("dvqvae", "onnx")].file)
    assert facts["num_nodes"] > 100 and "ArgMax" in facts["op_types"]
    # top_k is a trace-time constant: its own artifact, checked against eager with the same top_k
    gen = gens["dvqvae"]
    res = export_onnx(gen, tmp_path / "topk", top_k=5)
    assert res.sidecar["graph"]["top_k"] == 5
    backend = load_artifact(res.path, gen)
    assert _compare(gen, backend, 16, 5, top_k=5)["vertices"] <= TOL_M
    with pytest.raises(BackendError, match="top_k"):
        backend(probe_points(NUM_POINTS), gen.make_noise(2, 0), 1.0, None)


def test_onnx_checker_rejects_random_ops(tmp_path: Path) -> None:
    class Noisy(nn.Module):
        def forward(self, points, noise, temperature):
            return points + torch.randn_like(points), noise, temperature, temperature

    path = tmp_path / "noisy.onnx"
    torch.onnx.export(Noisy(), (torch.zeros(1, 8, 3), torch.zeros(4, 6, 8), torch.tensor(1.0)), str(path),
                      dynamo=False, opset_version=17, input_names=["points", "noise", "temperature"],
                      output_names=["params", "vertices", "keypoints", "scores"],
                      dynamic_axes={n: {0: "K"} for n in ("noise", "params", "vertices", "keypoints", "scores")})
    with pytest.raises(BackendError, match="random operators"):
        check_onnx_file(path)


@pytest.fixture(scope="module")
def export_check(gens):
    return check_exportable(gens["dvqvae"], max_grasps=256)


def test_torch_export_dynamic_k_and_no_random_ops(export_check) -> None:
    """The graph TensorRT compiles: torch.export with K = Dim(1..256), core ATen, no random/multinomial op."""
    check = export_check
    assert check.decomposed and check.num_nodes > 500
    assert check.random_ops == []
    names = set(check.op_counts)
    assert not any(("rand" in n or "multinomial" in n or "bernoulli" in n or "dropout" in n) for n in names)
    assert "aten.argmax.default" in names  # Gumbel-max sampling
    assert check.dynamic_dims["noise"] and not check.dynamic_dims["points"]
    assert any(v.startswith("VR[1, 256]") for v in check.range_constraints.values())
    assert set(check.parity) == {"1", "16"} and check.max_vertex_error_m <= TOL_M
    # walking the nodes ourselves: every call is an OpOverload of aten/prims, none random
    for node in check.exported_program.graph.nodes:
        if node.op == "call_function":
            assert "rand" not in str(node.target) and "multinomial" not in str(node.target)


def test_core_aten_program_runs_in_pytorch_for_any_k(export_check) -> None:
    assert isinstance(export_check.decomposed_parity["1"], dict)  # K = 1 runs either way
    assert export_check.decomposed_parity["1"]["vertices"] <= TOL_M
    check = export_check
    assert isinstance(check.decomposed_parity["16"], dict), check.decomposed_parity["16"]
    assert check.decomposed_parity["16"]["vertices"] <= TOL_M


def test_random_op_walker_catches_random_graphs() -> None:
    class Sampler(nn.Module):  # what the graph must not do: multinomial / rand inside
        def forward(self, points, noise, temperature):
            probs = torch.softmax(noise[:, 0] / temperature, dim=-1)
            tok = torch.multinomial(probs, 1)
            return points.sum() + tok.float() + torch.rand_like(temperature)

    ep = export_program(Sampler(), 8, (6, 16), max_grasps=32)
    found = random_ops(ep.run_decompositions().graph_module)
    assert any("multinomial" in f for f in found) and any("rand" in f for f in found)


def test_tensorrt_export_is_gated_with_a_clear_reason(gens, tmp_path: Path) -> None:
    if tensorrt_problem() is None:
        pytest.skip("CUDA and torch_tensorrt are present: the gate is not exercised here")
    from dvqvae_export.tensorrt import export_tensorrt

    with pytest.raises(BackendUnavailable, match="CUDA"):
        export_tensorrt(gens["dvqvae"], tmp_path / "trt", check=False)
    assert not (tmp_path / "trt").exists()
    key = engine_cache_key(gens["dvqvae"], fp16=True)
    assert key != engine_cache_key(gens["dvqvae"], fp16=False)


@pytest.mark.skipif(tensorrt_problem() is not None,
                    reason=f"TensorRT needs a GPU: {tensorrt_problem() or ''}")
@pytest.mark.parametrize("fp16", [False, True])
def test_tensorrt_round_trip(hand, tmp_path: Path, fp16: bool) -> None:  # pragma: no cover - GPU only
    """The CPU twins: test_backends (stand-in compiler) and test_precision_parity (fp16 placement, bound)."""
    from dvqvae_export.tensorrt import export_tensorrt

    model, prior = _dvqvae(hand)
    gen = GraspGenerator(model, prior, hand=hand, device="cuda")
    res = export_tensorrt(gen, tmp_path / "trt", fp16=fp16, max_grasps=64)
    meta = res.sidecar
    assert meta["runtime"]["gpu"] and meta["artifact"]["precision"] == ("fp16-explicit" if fp16 else "fp32")
    segments = meta["tensorrt"]["segments"]
    assert segments["tensorrt_engines"] == 1 and segments["pytorch_segments"] == 0, segments  # no graph break
    ver = meta["verification"]
    assert ver["passed"] and ver["tokens_compared"], ver
    backend = load_artifact(res.path, gen)
    if not fp16:
        assert _compare(gen, backend, 16, 3)["vertices"] <= TOL_M


@pytest.mark.skipif(tensorrt_problem() is not None or torch.cuda.device_count() < 2,
                    reason="needs TensorRT and a second GPU")
def test_tensorrt_on_the_second_gpu(hand, tmp_path: Path) -> None:  # pragma: no cover - multi-GPU only
    from dvqvae_export.tensorrt import export_tensorrt

    model, prior = _dvqvae(hand)
    gen = GraspGenerator(model, prior, hand=hand, device="cuda:1")
    res = export_tensorrt(gen, tmp_path / "trt1", max_grasps=32, device="cuda:1")
    assert res.sidecar["runtime"]["gpu"] == torch.cuda.get_device_name(1)
    backend = load_artifact(res.path, gen, device="cuda:1")
    out = backend(probe_points(NUM_POINTS).to("cuda:1"), gen.make_noise(4, 0), 1.0, None)
    assert out[1].device == torch.device("cuda:1")


@pytest.fixture(scope="module")
def checkpoint(hand, tmp_path_factory) -> Path:
    model, prior = _dvqvae(hand, seed=4)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt"
    return save_checkpoint(path, model, prior, kind="dvqvae", model_config=model.cfg, prior_config=prior.cfg,
                           hand_fingerprint=hand.fingerprint)


def test_cli_exports_a_checkpoint(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "onnx"
    assert export_main(["--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "onnx" and summary["opset"] == 17 and summary["parity"]["passed"]
    assert summary["parity"]["tokens_compared"] and summary["parity"]["token_flips"] == 0
    assert summary["inputs"]["noise"][0] == "K" and summary["num_points"] == NUM_POINTS
    meta = json.loads((out / SIDECAR_NAME).read_text())
    assert meta["source"]["checkpoint_sha256"] == checkpoint_source(checkpoint)["checkpoint_sha256"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temporary directories left behind"
    # the artifact serves the same checkpoint loaded again, through the generator
    gen = GraspGenerator.from_checkpoint(checkpoint)
    onnx_gen = GraspGenerator.from_checkpoint(checkpoint, backend="onnx", backend_options={"artifact": str(out)})
    assert gen.backend_name == "eager" and onnx_gen.backend_name == "onnx"
    assert onnx_gen.backend.describe()["mode"] == "explicit"
    cloud = np.random.default_rng(3).normal(size=(900, 3)) * 0.04 + 0.5
    a, b = gen.generate(cloud, 3, seed=9), onnx_gen.generate(cloud, 3, seed=9)
    assert np.abs(a.vertices - b.vertices).max() <= TOL_M
    # re-export over it: replaced atomically, still one valid artifact
    assert export_main(["--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(out)]) == 0
    capsys.readouterr()
    assert json.loads((out / SIDECAR_NAME).read_text())["artifact"]["format"] == "torchscript"
    assert sorted(p.name for p in out.iterdir()) == ["artifact.json", "graph.ts"]


def test_cli_errors_are_clear(checkpoint: Path, tmp_path: Path, capsys) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("not an artifact")
    assert export_main(["--checkpoint", str(checkpoint), "--format", "torchscript", "--out", str(busy)]) == 2
    assert "not an artifact directory" in capsys.readouterr().err
    assert (busy / "notes.txt").read_text() == "not an artifact"
    assert export_main(["--checkpoint", str(checkpoint), "--format", "onnx", "--fp16", "--out",
                        str(tmp_path / "x")]) == 2
    assert "--fp16" in capsys.readouterr().err
    if tensorrt_problem() is not None:
        assert export_main(["--checkpoint", str(checkpoint), "--format", "tensorrt", "--out",
                            str(tmp_path / "t")]) == 2
        err = capsys.readouterr().err
        assert "CUDA is not available" in err and "torch_tensorrt" in err
    assert export_main(["--checkpoint", str(tmp_path / "missing"), "--format", "onnx", "--out",
                        str(tmp_path / "y")]) == 2
    assert "error" in capsys.readouterr().err


def test_probe_points_are_centred_and_deterministic() -> None:
    a, b = probe_points(300), probe_points(300)
    assert torch.equal(a, b) and a.shape == (1, 300, 3)
    assert float(a.mean(dim=1).abs().max()) < 1e-6
    assert np.isclose(float(a[0, :, 0].abs().max()), 0.04, atol=0.01)
