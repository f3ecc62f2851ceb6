"""The principal input frame: the rotation itself, the dataset's samples in it, the generator's round trip."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from dvqvae_model.canonical_frame import principal_frame
from dvqvae_model.nets.config import cvae_config, dvqvae_config, prior_config
from dvqvae_model.nets.cvae import GraspCVAE
from dvqvae_model.nets.dvqvae import DVQVAE
from dvqvae_model.nets.prior import GatedPixelCNNPrior
from dvqvae_model.pipeline.generator import GraspGenerator
from dvqvae_model.pipeline.preprocess import prepare_cloud


def box_cloud(rng: np.random.Generator, n: int = 400) -> np.ndarray:
    """An asymmetric cloud: a skewed box (distinct extents, distinct tails)."""
    p = rng.random((n, 3)) ** np.array([1.0, 2.0, 3.0]) * np.array([0.12, 0.06, 0.03])
    return p - p.mean(0)


def test_principal_frame_is_a_rotation_to_sorted_uncorrelated_axes():
    pts = box_cloud(np.random.default_rng(0)) @ Rotation.random(random_state=2).as_matrix().T
    R = principal_frame(pts)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    q = pts @ R.T
    cov = q.T @ q
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-9 * cov.max()
    assert cov[0, 0] > cov[1, 1] > cov[2, 2]
    assert np.sum(q[:, 0] ** 3) >= 0 and np.sum(q[:, 1] ** 3) >= 0  # signs fixed by the heavier tail


def test_principal_frame_is_the_same_object_frame_in_any_pose():
    pts = box_cloud(np.random.default_rng(1))
    canonical = pts @ principal_frame(pts).T
    for seed in range(5):
        R = Rotation.random(random_state=seed).as_matrix()
        turned = pts @ R.T
        np.testing.assert_allclose(turned @ principal_frame(turned).T, canonical, atol=1e-9)


def test_principal_frame_refuses_too_few_points():
    with pytest.raises(ValueError, match="N >= 3"):
        principal_frame(np.zeros((2, 3)))


def test_prepare_cloud_principal_frame_maps_back():
    rng = np.random.default_rng(3)
    pts = box_cloud(rng) @ Rotation.random(random_state=4).as_matrix().T + np.array([0.4, -0.1, 0.8])
    prep = prepare_cloud(pts, 128, frame="principal", remove_outliers=False, sampling="random")
    assert not np.allclose(prep.rotation, np.eye(3))
    back = prep.to_input_frame(prep.points)
    assert np.abs(back[:, None] - pts[None]).sum(-1).min(1).max() < 1e-6  # every point is an input point
    centred = prepare_cloud(pts, 128, remove_outliers=False, sampling="random")
    np.testing.assert_array_equal(centred.rotation, np.eye(3))
    with pytest.raises(ValueError, match="input_frame"):
        prepare_cloud(pts, 128, frame="upright")


@pytest.mark.parametrize("kind", ["dvqvae", "cvae"])
def test_generator_grasps_move_with_the_object(hand, kind):
    """A principal-frame model gives the same grasps, rigidly moved, for the object in another pose; the
    published parameters pose exactly the published vertices."""
    torch.manual_seed(0)
    if kind == "dvqvae":
        cfg = dvqvae_config("compact", num_points=128, input_frame="principal", position_sees_codes=True)
        model, prior = DVQVAE(cfg, hand).eval(), GatedPixelCNNPrior(prior_config("compact", cfg)).eval()
    else:
        model, prior = GraspCVAE(cvae_config("compact", num_points=128, input_frame="principal"), hand).eval(), None
    gen = GraspGenerator(model, prior, hand=hand, remove_outliers=False, sampling="random")
    pts = box_cloud(np.random.default_rng(5), 200)  # under the working-set cap (2 x 128): same draw in any pose
    R, t = Rotation.random(random_state=6).as_matrix(), np.array([0.3, -0.2, 0.9])
    a, b = gen.generate(pts, 4, seed=3), gen.generate(pts @ R.T + t, 4, seed=3)
    np.testing.assert_allclose(b.vertices, a.vertices @ R.T + t, atol=2e-5)
    np.testing.assert_allclose(b.keypoints, a.keypoints @ R.T + t, atol=2e-5)
    with torch.no_grad():
        posed = hand.from_params(torch.from_numpy(b.params).to(hand.mano.v_template.dtype)).vertices.numpy()
    np.testing.assert_allclose(posed, b.vertices, atol=2e-5)
    np.testing.assert_allclose(b.params[:, 13:58], a.params[:, 13:58], atol=1e-6)  # finger pose unchanged


def test_old_configs_load_as_centred():
    d = dvqvae_config("compact").to_dict()
    d.pop("input_frame")
    from dvqvae_model.nets.dvqvae import DVQVAEConfig

    assert DVQVAEConfig.from_dict(d).input_frame == "centred"
    with pytest.raises(ValueError, match="input_frame"):
        dvqvae_config("compact", input_frame="upright")
