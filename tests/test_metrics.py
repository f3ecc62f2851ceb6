"""Table-1 metrics on cases with known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from dvqvae_training.evaluate.metrics import (
    DEFAULT_PITCH,
    ObjectGeometry,
    canonical_keypoints,
    cluster_entropy,
    contact_flags,
    contact_ratio,
    diversity,
    evaluate_grasps,
    kmeans_diversity,
    penetration_volume,
    quality_index,
)


def lens_volume(r1: float, r2: float, d: float) -> float:
    """Intersection volume of two balls with centre distance d (spherical caps)."""
    return np.pi * (r1 + r2 - d) ** 2 * (d * d + 2 * d * (r1 + r2) - 3 * (r1 - r2) ** 2) / (12 * d)


@pytest.fixture(scope="module")
def big_ball() -> ObjectGeometry:
    return ObjectGeometry(trimesh.creation.icosphere(subdivisions=5, radius=0.03))


@pytest.mark.parametrize("pitch,tol", [(DEFAULT_PITCH, 0.03), (0.0025, 0.10), (0.005, 0.15)])
def test_two_spheres_intersection_volume(big_ball, pitch, tol):
    r2, d = 0.025, 0.035
    direction = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    small = trimesh.creation.icosphere(subdivisions=5, radius=r2)
    small.apply_translation(direction * d + 1.3e-4)  # off the lattice's symmetry
    true = lens_volume(0.03, r2, float(np.linalg.norm(small.vertices.mean(0))))
    got = penetration_volume(small.vertices, small.faces, big_ball, pitch=pitch)
    assert got == pytest.approx(true, rel=tol)
    assert 5e-6 < true < 2e-5  # a 5-20 cm^3 case (about the paper's magnitudes)


def test_penetration_is_solid_not_surface(big_ball):
    inner = trimesh.creation.icosphere(subdivisions=4, radius=0.01)  # wholly inside the object
    vol = penetration_volume(inner.vertices, inner.faces, big_ball)
    assert vol == pytest.approx(4 / 3 * np.pi * 0.01**3, rel=0.03)
    far = inner.copy()
    far.apply_translation([0.2, 0.0, 0.0])
    assert penetration_volume(far.vertices, far.faces, big_ball) == 0.0


def _hand_above_box(hand, gap: float) -> tuple[np.ndarray, trimesh.Trimesh]:
    """Rest hand shifted so its lowest point (min y) is ``gap`` above a box's top face (y = 0.02)."""
    box = trimesh.creation.box(extents=[0.3, 0.04, 0.3])
    v = hand.rest().vertices[0].detach().numpy().astype(np.float64)
    v = v - [0.0, v[:, 1].min() - 0.02 - gap, 0.0]
    return v, box


@pytest.mark.parametrize("gap,expected", [(0.003, True), (0.0045, True), (0.008, False), (0.5, False), (-0.002, True)])
def test_contact_threshold_5mm(hand, gap, expected):
    v, box = _hand_above_box(hand, gap)
    assert bool(contact_flags(v, box)[0]) is expected


def test_contact_ratio_counts_grasps(hand):
    v, box = _hand_above_box(hand, 0.002)
    batch = np.stack([v, v + [0, 0.1, 0], v, v + [0.5, 0, 0]])
    assert contact_ratio(torch.from_numpy(batch), box) == pytest.approx(0.5)


def test_entropy_of_known_clusterings():
    assert cluster_entropy(np.array([0, 0, 1, 1])) == pytest.approx(np.log(2))
    assert cluster_entropy(np.arange(20).repeat(3)) == pytest.approx(np.log(20))
    assert cluster_entropy(np.zeros(10, dtype=int)) == pytest.approx(0.0)
    p = np.array([0.5, 0.25, 0.25])
    assert cluster_entropy(np.array([0, 0, 1, 2])) == pytest.approx(-(p * np.log(p)).sum())


def test_kmeans_diversity_on_separated_blobs():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10.0, size=(20, 5)) + np.arange(20)[:, None] * 30.0
    x = np.concatenate([c + rng.normal(scale=0.1, size=(10, 5)) for c in centres])
    res = kmeans_diversity(x, k=20, seed=0)
    assert res.entropy == pytest.approx(np.log(20), abs=1e-9)
    assert res.counts.tolist() == [10] * 20
    true_size = np.mean([np.linalg.norm(x[i * 10:(i + 1) * 10] - x[i * 10:(i + 1) * 10].mean(0), axis=1).mean() for i in range(20)])
    assert res.cluster_size == pytest.approx(true_size, rel=1e-6)
    # all samples the same: one cluster, zero entropy, zero size
    same = kmeans_diversity(np.ones((30, 61)), k=20)
    assert same.entropy == 0.0 and same.cluster_size == 0.0


def test_canonical_keypoints_remove_global_pose(hand):
    g = torch.Generator().manual_seed(0)
    params = torch.zeros(3, 61)
    params[:, 13:58] = torch.randn(3, 45, generator=g) * 0.2
    kp = hand.from_params(params).keypoints.detach().numpy()
    R = Rotation.random(random_state=3).as_matrix()
    moved = kp @ R.T + np.array([0.3, -0.1, 0.2])
    a, b = canonical_keypoints(kp), canonical_keypoints(moved)
    assert a.shape == (3, 63)
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a[:, :3], 0.0, atol=1e-9)  # wrist at the origin
    assert np.linalg.norm(a[0, 27:30]) == pytest.approx(np.linalg.norm(kp[0, 9] - kp[0, 0]) * 100, rel=1e-6)  # cm


def test_diversity_on_params_and_keypoints(hand):
    g = torch.Generator().manual_seed(1)
    params = torch.zeros(60, 61)
    params[:, 13:58] = torch.randn(60, 45, generator=g) * 0.3
    kp = hand.from_params(params).keypoints.detach()
    out = diversity(params, kp, k=20)
    assert 0.0 < out["entropy"] <= np.log(20) + 1e-9 and out["cluster_size"] > 0
    assert 0.0 < out["entropy_kp"] <= np.log(20) + 1e-9 and out["cluster_size_kp"] > 0


def test_quality_index_matches_paper():
    assert quality_index(5.36, 2.75) == pytest.approx(3.54, abs=0.01)  # DVQ-VAE, Table 1
    assert quality_index(7.23, 2.78) == pytest.approx(4.12, abs=0.01)  # GraspCVAE


def test_evaluate_grasps_summary(hand, tmp_path, monkeypatch):
    monkeypatch.setenv("DVQVAE_CACHE_DIR", str(tmp_path))
    v, box = _hand_above_box(hand, 0.3)  # far above: no contact, no penetration, free fall
    ev = evaluate_grasps(v, hand.sealed_faces, hand.faces, box)
    s = ev.summary()
    assert s["contact_ratio"] == 0.0 and s["penetration_cm3"] == 0.0
    assert s["displacement_cm"] == pytest.approx(10.7, abs=0.3)
    assert s["quality_index"] == pytest.approx(0.699 * s["displacement_cm"])
    assert s["pitch_mm"] == pytest.approx(DEFAULT_PITCH * 1000)
