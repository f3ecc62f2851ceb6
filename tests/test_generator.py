"""Tests for GraspGenerator, the exportable SamplingGraph, its score, refinement and rendering."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dvqvae_model.checkpoint import save_checkpoint
from dvqvae_model.nets.config import cvae_config, dvqvae_config, prior_config
from dvqvae_model.nets.cvae import GraspCVAE
from dvqvae_model.nets.dvqvae import DVQVAE
from dvqvae_model.pipeline.generator import GraspGenerator, GraspSet
from dvqvae_model.pipeline.grasp_quality import CloudSurface
from dvqvae_model.hand.hand_model import SLICE_TRANSL
from dvqvae_model.pipeline.preprocess import CloudError
from dvqvae_model.nets.prior import GatedPixelCNNPrior
from dvqvae_model.pipeline.refine import RefineConfig, refine_energy, refine_grasps
from dvqvae_model.nets.sampling_graph import GraspScorer
from dvqvae_model.sim.visualize import render_grasps_png

NUM_POINTS = 256


@pytest.fixture(scope="module")
def dvq(hand):
    torch.manual_seed(0)
    cfg = dvqvae_config("compact", num_points=NUM_POINTS)
    model = DVQVAE(cfg, hand).eval()
    with torch.no_grad():  # spread the codes as training would; at init they are ~1e-2 apart
        model.hand_codebook.weight.normal_()
    prior = GatedPixelCNNPrior(prior_config("compact", cfg)).eval()
    return model, prior, cfg


@pytest.fixture(scope="module")
def gen(dvq, hand):
    model, prior, _ = dvq
    return GraspGenerator(model, prior, hand=hand, num_points=NUM_POINTS)


def sphere(n: int, centre=(0.0, 0.0, 0.0), radius: float = 0.04, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 3))
    return radius * x / np.linalg.norm(x, axis=1, keepdims=True) + np.asarray(centre)


def test_generate_shapes_and_sorting(gen: GraspGenerator, hand) -> None:
    gs = gen.generate(sphere(1000), 12, seed=3)
    assert isinstance(gs, GraspSet) and len(gs) == 12
    assert gs.params.shape == (12, 61) and gs.params.dtype == np.float32
    assert gs.vertices.shape == (12, 778, 3) and gs.keypoints.shape == (12, 21, 3)
    assert gs.joints.shape == (12, 16, 3) and gs.scores.shape == (12,)
    assert gs.faces.shape == tuple(hand.faces.shape)
    assert np.all(np.isfinite(gs.params)) and np.all(np.isfinite(gs.scores))
    assert np.all(np.diff(gs.scores) <= 0), "grasps must be sorted best first"
    assert {"preprocess_ms", "inference_ms", "refine_ms", "total_ms"} <= set(gs.timing)
    # returned geometry is the hand layer applied to the returned params (input frame)
    out = hand.from_params(torch.from_numpy(gs.params))
    np.testing.assert_allclose(out.vertices.numpy(), gs.vertices, atol=1e-5)
    np.testing.assert_allclose(out.joints.numpy(), gs.joints, atol=1e-5)
    np.testing.assert_allclose(out.keypoints.numpy(), gs.keypoints, atol=1e-5)
    assert len(gs.top(3)) == 3 and gs.top(3).scores[0] == gs.scores[0]


def test_seeds(gen: GraspGenerator) -> None:
    cloud = sphere(800)
    a = gen.generate(cloud, 16, seed=11)
    b = gen.generate(cloud, 16, seed=11)
    c = gen.generate(cloud, 16, seed=12)
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert np.abs(a.params - c.params).max() > 1e-4
    assert gen.generate(cloud, 2).seed != gen.generate(cloud, 2).seed  # seed=None draws fresh seeds


def test_temperature_zero_and_top1_are_greedy(gen: GraspGenerator) -> None:
    cloud = sphere(800)
    g1 = gen.generate(cloud, 6, temperature=0.0, seed=1)
    np.testing.assert_allclose(g1.params, g1.params[:1].repeat(6, 0), atol=1e-6)
    # the seed also drives resampling of the cloud, so compare noise alone on the graph
    points = torch.from_numpy(sphere(NUM_POINTS)).float().unsqueeze(0)
    graph = gen.graph()
    with torch.no_grad():
        a = graph(points, gen.make_noise(6, 1), torch.tensor(0.0))[0]
        b = graph(points, gen.make_noise(6, 2), torch.tensor(0.0))[0]
        c = graph(points, gen.make_noise(6, 2), torch.tensor(1.0))[0]
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 1e-4
    t1 = gen.generate(cloud, 6, temperature=3.0, top_k=1, seed=1)
    np.testing.assert_allclose(t1.params, g1.params, atol=1e-6)
    hot = gen.generate(cloud, 6, temperature=3.0, seed=1)
    assert np.abs(hot.params - hot.params[:1]).max() > 1e-4


def test_translated_and_arbitrary_frames(gen: GraspGenerator) -> None:
    cloud = sphere(1500)
    offset = np.array([2.5, -1.75, 0.8])
    base = gen.generate(cloud, 8, seed=4)
    moved = gen.generate(cloud + offset, 8, seed=4)
    # only translation differs: the centred model input is identical
    np.testing.assert_allclose(moved.params[:, :58], base.params[:, :58], atol=1e-5)
    np.testing.assert_allclose(moved.params[:, SLICE_TRANSL], base.params[:, SLICE_TRANSL] + offset, atol=1e-4)
    np.testing.assert_allclose(moved.vertices, base.vertices + offset, atol=1e-4)
    np.testing.assert_allclose(moved.centre, base.centre + offset, atol=1e-6)
    # an arbitrary rigid frame (rotated + far away): hands come back next to the cloud
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    far = cloud @ q.T + np.array([-4.0, 7.0, 1.2])
    gs = gen.generate(far, 8, seed=4)
    dist = np.linalg.norm(gs.vertices.mean(axis=1) - far.mean(axis=0), axis=1)
    assert np.all(dist < 0.25), dist


def test_bad_clouds_rejected(gen: GraspGenerator) -> None:
    with pytest.raises(CloudError, match="at least 64 points"):
        gen.generate(sphere(63), 4, seed=0)
    with pytest.raises(CloudError, match=r"\[N, 3\]"):
        gen.generate(np.zeros((100, 2)), 4, seed=0)
    nan_cloud = sphere(200)
    nan_cloud[:150] = np.nan  # 50 finite points left
    with pytest.raises(CloudError):
        gen.generate(nan_cloud, 4, seed=0)
    with pytest.raises(ValueError):
        gen.generate(sphere(200), 0, seed=0)
    raw = GraspGenerator(gen.model, gen.prior, hand=gen.hand, num_points=NUM_POINTS, remove_outliers=False)
    assert len(raw.generate(sphere(64), 2, seed=0)) == 2  # exactly 64 is accepted


def test_generate_batch_equals_generate(gen: GraspGenerator) -> None:
    clouds = [sphere(700, c, seed=i) for i, c in enumerate([(0, 0, 0), (1, 2, 3), (-0.5, 0.1, 0.2)])]
    batch = gen.generate_batch(clouds, 8, seeds=[5, 6, 7], temperature=0.8, top_k=20)
    for cloud, seed, got in zip(clouds, [5, 6, 7], batch):
        ref = gen.generate(cloud, 8, seed=seed, temperature=0.8, top_k=20)
        assert got.seed == seed
        np.testing.assert_allclose(got.params, ref.params, atol=1e-4)
        np.testing.assert_allclose(got.scores, ref.scores, atol=1e-3)
    ints = gen.generate_batch(clouds[:2], 4, seeds=5)
    assert [g.seed for g in ints] == [5, 6]


def test_checkpoint_round_trip_through_generator(dvq, hand, gen: GraspGenerator, tmp_path: Path) -> None:
    model, prior, cfg = dvq
    path = save_checkpoint(tmp_path / "ckpt", model, prior, kind="dvqvae", model_config=cfg,
                           prior_config=prior.cfg, hand_fingerprint=hand.fingerprint,
                           data_info={"dataset": "none (untrained test model)"})
    loaded = GraspGenerator.from_checkpoint(path, hand=hand, num_points=NUM_POINTS)
    cloud = sphere(900)
    a = loaded.generate(cloud, 10, seed=9)
    b = gen.generate(cloud, 10, seed=9)
    np.testing.assert_array_equal(a.params, b.params)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_cvae_generator(hand) -> None:
    torch.manual_seed(0)
    model = GraspCVAE(cvae_config("compact", num_points=NUM_POINTS), hand).eval()
    gen = GraspGenerator(model, hand=hand, num_points=NUM_POINTS)
    assert gen.kind == "cvae" and gen.noise_shape(5) == (5, 64)
    cloud = sphere(500, (0.3, 0.3, 0.3))
    a = gen.generate(cloud, 5, seed=1)
    assert a.params.shape == (5, 61) and np.all(np.diff(a.scores) <= 0)
    np.testing.assert_array_equal(a.params, gen.generate(cloud, 5, seed=1).params)
    greedy = gen.generate(cloud, 5, temperature=0.0, seed=1)
    np.testing.assert_allclose(greedy.params, greedy.params[:1].repeat(5, 0), atol=1e-6)


def test_scorer_penetration_and_contact(hand) -> None:
    scorer = GraspScorer(hand.faces, hand.num_vertices)
    rest = hand.rest(1)
    mcp = rest.joints[0, [1, 4, 7, 10]].mean(0)
    rng = torch.Generator().manual_seed(0)
    blob = mcp + 0.004 * torch.randn(1, 300, 3, generator=rng)  # inside the palm
    far = blob + torch.tensor([0.0, 0.0, 0.5])
    pen_in, con_in = scorer.geometry_terms(blob, rest.vertices, rest.keypoints)
    pen_far, con_far = scorer.geometry_terms(far, rest.vertices, rest.keypoints)
    assert pen_in.item() > 0.3 and pen_far.item() == 0.0
    assert con_far.item() > 35.0 and con_in.item() < con_far.item()
    lp = torch.zeros(1)
    assert scorer(blob, rest.vertices, rest.keypoints, lp) < 0
    # normals point out of the hand for most vertices (the inside test relies on it)
    n = scorer.vertex_normals(rest.vertices)
    outward = ((rest.vertices - rest.vertices.mean(1, keepdim=True)) * n).sum(-1) > 0
    assert outward.float().mean() > 0.75


def test_refinement_lowers_energy(gen: GraspGenerator, hand) -> None:
    gs = gen.generate(sphere(800), 6, seed=2)
    pts = torch.from_numpy(sphere(800) + gs.centre).float().unsqueeze(0)
    params = torch.from_numpy(gs.params)
    cfg = RefineConfig(steps=8, max_time_s=10.0)
    refined, info = refine_grasps(hand, params, pts, cfg)
    assert refined.shape == params.shape and info["steps"] == 8
    assert torch.all(info["energy_after"] <= info["energy_before"] + 1e-9)
    assert (info["energy_after"] < info["energy_before"]).any()
    torch.testing.assert_close(refined[:, :10], params[:, :10])  # shape kept
    with torch.no_grad():
        e = refine_energy(hand, refined, CloudSurface(pts), params, cfg)["total"]
    torch.testing.assert_close(e, info["energy_after"], rtol=1e-4, atol=1e-6)
    refining = GraspGenerator(gen.model, gen.prior, hand=hand, num_points=NUM_POINTS, refine=True, refine_steps=3)
    rs = refining.generate(sphere(800), 6, seed=2)
    assert np.all(np.diff(rs.scores) <= 0) and rs.timing["refine_ms"] > 0


def test_sampling_graph_exports(gen: GraspGenerator) -> None:
    graph = gen.graph(top_k=8)
    points = torch.from_numpy(sphere(NUM_POINTS)).float().unsqueeze(0)
    points = points - points.mean(1, keepdim=True)
    noise = gen.make_noise(4, seed=0)
    temp = torch.tensor(0.9)
    ep = torch.export.export(graph, (points, noise, temp))
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any(r in t for t in targets for r in ("rand", "multinomial", "bernoulli", "normal"))
    with torch.no_grad():
        ref = graph(points, noise, temp)
        got = ep.module()(points, noise, temp)
    assert [tuple(x.shape) for x in got] == [(4, 61), (4, 778, 3), (4, 21, 3), (4,)]
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_render_png(gen: GraspGenerator, tmp_path: Path) -> None:
    cloud = sphere(600, (0.1, 0.2, 0.3))
    gs = gen.generate(cloud, 4, seed=0)
    out = render_grasps_png(cloud, gs, tmp_path / "g.png", max_hands=2, size=(4, 2), dpi=60)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_bundled_default_model_generates_near_the_object(hand) -> None:
    """`model: default` with the node's settings (what `make demo` and the node publish) loads, matches the
    stand-in hand and grasps."""
    from dvqvae_model.checkpoint import resolve_checkpoint
    from dvqvae_model.pipeline.defaults import DEFAULTS

    path = resolve_checkpoint("default")
    gen = GraspGenerator.from_checkpoint(path, hand=hand, **DEFAULTS.generator_options())
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(2000, 3))
    cloud = 0.04 * cloud / np.linalg.norm(cloud, axis=1, keepdims=True) + np.array([0.2, -0.1, 0.6])
    gs = gen.generate(cloud, 4, seed=0)
    assert gs.vertices.shape == (4, 778, 3) and np.isfinite(gs.vertices).all()
    assert np.all(np.diff(gs.scores) <= 0)
    # Hands come back in the cloud's frame, at the object: each one touches the 4 cm ball with opposing
    # parts (at least two of the five digits and the palm) and wraps around it (mostly outside), not
    # sitting at its centre nor floating away.
    centre = np.array([0.2, -0.1, 0.6])
    part_ids = hand.part_ids.cpu().numpy() if hasattr(hand.part_ids, "cpu") else np.asarray(hand.part_ids)
    assert np.linalg.norm(gs.vertices.reshape(-1, 3).mean(0) - centre) < 0.15
    for v in gs.vertices:
        from_centre = np.linalg.norm(v - centre, axis=1)
        touching = np.abs(from_centre - 0.04) < 0.005
        assert touching.any(), "the hand must touch the object"
        assert len(np.unique(part_ids[touching])) >= 2, "a grasp holds the object between two hand parts"
        assert np.linalg.norm(v.mean(0) - centre) > 0.02, "a hand centred in the object is not a grasp"
        assert (from_centre < 0.035).mean() < 0.35, "the hand is mostly outside the object"
