"""The stability term of the ranking score (dvqvae_model.pipeline.stability), checked with the simulator.

The fixture: a 5.5 cm-radius sphere held by the stand-in hand with its fingers bent 40 % of the way
(a wrap touching the sphere with thumb, fingers and palm from around it, without going in), and
the flat hand with the same sphere touching it on one side only. That the wrap holds better is
measured with the independent pybullet check (gravity along each of the six axes), not assumed.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import trimesh

from dvqvae_model.hand.hand_model import SLICE_HAND_POSE, SLICE_TRANSL, load_hand_model
from dvqvae_model.pipeline.grasp_quality import CloudSurface, QualityWeights, combine_terms, quality_terms, vertex_areas
from dvqvae_model.pipeline.stability import FEATURE_NAMES, StabilityModel, sphere_directions

RADIUS = 0.055


@pytest.fixture(scope="module")
def hand():
    return load_hand_model("standin")


def bend_pose(hand, fraction: float) -> np.ndarray:
    """Finger pose with each joint's bend component (its widest limit) at ``fraction`` of its upper limit."""
    lim = np.asarray(hand.meta.joint_limits)
    pose = np.zeros(45, dtype=np.float32)
    for j in range(15):
        k = 3 * j + int(np.argmax(lim[3 * j:3 * j + 3, 1] - lim[3 * j:3 * j + 3, 0]))
        pose[k] = fraction * lim[k, 1]
    return pose


@pytest.fixture(scope="module")
def wrap(hand):
    """(sphere mesh, its cloud [3000, 3], params [2, 61]: 0 = wrap, 1 = flat hand touching one side)."""
    params = np.zeros((2, 61), dtype=np.float32)
    params[0, SLICE_HAND_POSE] = bend_pose(hand, 0.4)
    with torch.no_grad():
        v = hand.from_params(torch.from_numpy(params)).vertices.numpy()
    # the sphere centre (near the pads) that lets the curled hand touch the most parts without entering it
    pads = v[0, hand.meta.contact_ids].astype(np.float64)
    grid = np.stack(np.meshgrid(*[np.linspace(-0.04, 0.04, 17)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centres = pads.mean(0) + grid
    d = np.linalg.norm(v[0][None].astype(np.float64) - centres[:, None], axis=2)  # [G, V]
    parts = hand.part_ids.numpy()
    touching = np.stack([((d[:, parts == p] - RADIUS) < 0.004).any(1) for p in range(6)], 1).sum(1)
    ok = d.min(1) >= RADIUS  # never inside
    centre = centres[np.flatnonzero(ok)[np.argmax(touching[ok])]]
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=RADIUS)
    sphere.apply_translation(centre)
    # the flat hand: the sphere moved along with the wrap's translation, touching the flat hand's palm side
    flat_d = np.linalg.norm(v[1].astype(np.float64) - centre, axis=1)
    params[1, SLICE_TRANSL] = 0.0
    shift = flat_d.min() - RADIUS  # > 0: the flat hand is clear of the sphere; bring it into contact
    direction = (centre - v[1][np.argmin(flat_d)]) / np.linalg.norm(centre - v[1][np.argmin(flat_d)])
    params[1, SLICE_TRANSL] = direction * (shift - 0.001)
    cloud = np.asarray(trimesh.sample.sample_surface(sphere, 3000, seed=0)[0], dtype=np.float32)
    return sphere, cloud, torch.from_numpy(params)


def terms_of(hand, params: torch.Tensor, cloud: np.ndarray, weights: QualityWeights | None = None,
             gravity=None):
    with torch.no_grad():
        out = hand.from_params(params)
        g = torch.tensor(gravity, dtype=torch.float32)[None] if gravity is not None else None
        terms = quality_terms(CloudSurface(torch.from_numpy(cloud)[None]), out.vertices, hand.part_ids,
                              vertex_areas(hand.rest().vertices[0], hand.faces), None, weights, gravity=g)
        score = combine_terms(torch.zeros(len(params)), terms, weights)
    return score.numpy(), {k: v.numpy() for k, v in terms.items() if v.dim() == 1}


def test_fixture_is_what_it_says(hand, wrap) -> None:
    sphere, cloud, params = wrap
    from dvqvae_training.evaluate.metrics import ObjectGeometry, penetration_volumes_cm3
    from dvqvae_training.synthesis.physics import GraspSimulator

    with torch.no_grad():
        v = hand.from_params(params).vertices.numpy()
    pen = penetration_volumes_cm3(v, hand.sealed_faces.numpy(), ObjectGeometry(sphere), 0.001)
    assert (pen < 0.5).all(), pen  # neither goes through the sphere
    _, t = terms_of(hand, params, cloud)
    assert t["digits"][0] <= 1 and t["digits"][1] >= 4, t["digits"]  # the wrap touches with 5 parts, the flat hand with 1-2
    with GraspSimulator(sphere) as sim:
        disp = sim.displacements(v, hand.faces.numpy(), directions="axes") * 100.0  # [2, 6] cm
    # the wrap holds better over the six gravity directions (the one-sided hand is the unstable one)
    assert disp[0].mean() + 1.0 < disp[1].mean(), disp


def test_enclosing_grasp_outranks_one_sided(hand, wrap) -> None:
    _, cloud, params = wrap
    score, t = terms_of(hand, params, cloud)
    assert score[0] > score[1], (score, t)
    # the stability term itself says so (fails if the fall model's signs are flipped) ...
    assert t["stability"][0] < t["stability"][1] - 0.1, t["stability"]
    for name in ("cone_eps", "balance", "span", "coverage"):
        assert t[f"f_{name}"][0] > t[f"f_{name}"][1], (name, t[f"f_{name}"])
    # ... and so does the learnt displacement estimate the default score stands on (the simulator's
    # displacements over six gravity directions: test_fixture_is_what_it_says)
    assert t["displacement_est"][0] < t["displacement_est"][1], t["displacement_est"]
    # without it, the fall probability widens the margin of the weighted score (its weight is positive)
    w = QualityWeights(displacement_model="")
    score1, _ = terms_of(hand, params, cloud, w)
    score0, _ = terms_of(hand, params, cloud, dataclasses.replace(w, stability=0.0))
    assert score1[0] > score1[1] and (score1[0] - score1[1]) > (score0[0] - score0[1]) + 1.0


def test_stability_is_finite_on_partial_and_degenerate_clouds(hand, wrap) -> None:
    _, cloud, params = wrap
    centre = cloud.mean(0)
    partial = cloud[(cloud - centre) @ np.array([0.0, 1.0, 0.0]) > 0.0]  # one hemisphere, as a depth view sees it
    far = params.clone()
    far[:, SLICE_TRANSL] += torch.tensor([0.0, 0.0, 0.5])  # no contact at all
    few = cloud[:: len(cloud) // 12][:12]  # a dozen points
    line = np.stack([np.linspace(0.0, 0.05, 40), np.zeros(40), np.zeros(40)], 1).astype(np.float32)  # flat normals
    cases = {"partial": (params, partial), "no contact": (far, cloud), "few points": (params, few),
             "line": (params, line)}
    for name, (p, c) in cases.items():
        _, t = terms_of(hand, p, c, gravity=(0.0, 1.0, 0.0))
        for key in ["stability"] + [f"f_{n}" for n in FEATURE_NAMES]:
            assert np.all(np.isfinite(t[key])), (name, key, t[key])
        _, t = terms_of(hand, p, c)  # gravity unknown: its features are NaN, the term is not
        assert np.isnan(t["f_g_resist"]).all() and np.all(np.isfinite(t["stability"])), (name, t["stability"])
        assert np.all((t["stability"] >= 0.0) & (t["stability"] <= 1.0)), (name, t["stability"])
    _, t_far = terms_of(hand, far, cloud)
    _, t_wrap = terms_of(hand, params, cloud)
    assert (t_far["f_coverage"] == 0).all() and (t_far["f_area"] == 0).all()
    assert (t_far["stability"] > t_wrap["stability"][0]).all()  # no contact: the most likely to fall
    assert (t_far["displacement_est"] > t_wrap["displacement_est"][0]).all()
    _, t_part = terms_of(hand, params, partial)
    assert t_part["stability"][0] < t_part["stability"][1]  # the partial view still prefers the wrap


def test_stability_model_checks_its_numbers() -> None:
    with pytest.raises(ValueError, match="unknown features"):
        StabilityModel(features=("grip",), mean=(0.0,), std=(1.0,), coef=(1.0,))
    with pytest.raises(ValueError, match="lengths differ"):
        dataclasses.replace(StabilityModel(), coef=(1.0,))
    d = sphere_directions(48)
    assert torch.allclose(d.norm(dim=1), torch.ones(48), atol=1e-5)
    assert d.mean(0).norm() < 0.05  # spread over the sphere, not one side


def test_gravity_features_know_which_way_the_object_falls(hand, wrap) -> None:
    """The flat hand touching the sphere on one side carries it when gravity pulls the sphere into the
    palm and not when gravity pulls it away (the simulator agrees); g_resist and the fall term say so,
    and over the six axis directions g_resist ranks the flat hand's holds as the simulator does."""
    from dvqvae_training.synthesis.physics import GraspSimulator

    sphere, cloud, params = wrap
    with torch.no_grad():
        v = hand.from_params(params).vertices.numpy()
    nearest = v[1][np.argmin(np.linalg.norm(v[1] - sphere.centroid, axis=1))]
    into_palm = (nearest - sphere.centroid) / np.linalg.norm(nearest - sphere.centroid)  # sphere -> hand
    with GraspSimulator(sphere) as sim:
        held = sim.displacement(v[1], hand.faces.numpy(), gravity=9.8 * into_palm) * 100.0
        falls = sim.displacement(v[1], hand.faces.numpy(), gravity=-9.8 * into_palm) * 100.0
    assert held < 1.0 < 3.0 < falls, (held, falls)  # the fixture is what it says
    _, t_in = terms_of(hand, params, cloud, gravity=tuple(into_palm))
    _, t_out = terms_of(hand, params, cloud, gravity=tuple(-into_palm))
    assert t_in["f_g_resist"][1] < 0.3 < 0.9 < t_out["f_g_resist"][1], (t_in["f_g_resist"], t_out["f_g_resist"])
    assert t_in["f_g_support"][1] > 0.5 > t_out["f_g_support"][1]
    # over the six axis directions of gravity, g_resist orders the flat hand's holds as the simulator does
    from scipy.stats import spearmanr

    axes = np.concatenate([np.eye(3), -np.eye(3)])
    with GraspSimulator(sphere) as sim:
        disp = np.array([[sim.displacement(v[h], hand.faces.numpy(), gravity=9.8 * g) for g in axes] for h in (0, 1)])
    resist = np.array([terms_of(hand, params, cloud, gravity=tuple(g))[1]["f_g_resist"] for g in axes]).T
    assert spearmanr(resist[1], disp[1])[0] > 0.7, (resist[1], disp[1])
    assert np.all(resist[0] <= resist[1] + 1e-6), resist  # the wrap carries it wherever the flat hand does
    # the bundled fall model (trees) follows: the hand that carries the object is less likely to drop it
    assert t_in["stability"][1] < t_out["stability"][1] - 0.05, (t_in["stability"], t_out["stability"])
    # and so does the displacement estimate
    assert t_in["displacement_est"][1] < t_out["displacement_est"][1], (t_in["displacement_est"], t_out["displacement_est"])


def test_cone_min_residual_solves_small_cases() -> None:
    """A load inside the cone of the contact wrenches leaves no residual; one outside leaves its
    distance to the cone; inactive rows (NaN allowed) take no part."""
    from dvqvae_model.pipeline.force_closure import cone_min_residual

    e = torch.eye(6)
    W = torch.stack([torch.stack([e[0], e[1], e[2]]), torch.stack([e[0], e[1], torch.full((6,), float("nan"))])])
    active = torch.tensor([[True, True, True], [True, True, False]])
    b = torch.tensor([[-1.0, -2.0, -0.5, 0, 0, 0], [-1.0, 0.0, -0.5, 0, 0, 0]])
    r = cone_min_residual(W, b, active)
    np.testing.assert_allclose(r.numpy(), [0.0, 0.5], atol=1e-6)  # the second cannot push along z
    assert cone_min_residual(W, -b, active)[0] > 2.2  # pulling the other way: nothing resists
    none = torch.zeros(2, 3, dtype=torch.bool)  # no contact: the whole load is left
    np.testing.assert_allclose(cone_min_residual(W, b, none).numpy(), b.norm(dim=1).numpy(), atol=1e-6)
