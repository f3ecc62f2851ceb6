"""The 6-D rotation: conversions, and a DVQ-VAE that regresses it (parameters, vertices and loss agree)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from dvqvae_model.nets.config import dvqvae_config
from dvqvae_model.nets.dvqvae import DVQVAE, VARIANTS, rigid_place
from dvqvae_model.nets.rotations import matrix_to_axis_angle, rot6d_to_matrix, rotation_dim


def test_matrix_to_axis_angle_inverts_every_rotation_including_half_turns():
    half_turns = Rotation.from_rotvec(np.pi * np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.6, 0.8, 0]]))
    near = Rotation.from_rotvec([[np.pi - 1e-6, 0, 0], [1e-9, 0, 0], [0, 0, 0]])
    mats = np.concatenate([Rotation.random(500, random_state=0).as_matrix(), half_turns.as_matrix(), near.as_matrix()])
    aa = matrix_to_axis_angle(torch.tensor(mats)).numpy()
    np.testing.assert_allclose(Rotation.from_rotvec(aa).as_matrix(), mats, atol=1e-9)
    assert np.linalg.norm(aa, axis=1).max() <= np.pi + 1e-12


def test_rot6d_gives_proper_rotations_with_finite_gradients():
    x = torch.randn(64, 6, dtype=torch.float64, requires_grad=True)
    m = rot6d_to_matrix(x)
    np.testing.assert_allclose((m @ m.transpose(1, 2)).detach().numpy(), np.broadcast_to(np.eye(3), (64, 3, 3)),
                               atol=1e-12)
    np.testing.assert_allclose(torch.det(m).detach().numpy(), 1.0, atol=1e-12)
    matrix_to_axis_angle(m).sum().backward()
    assert torch.isfinite(x.grad).all()
    # the first two columns are the input's Gram-Schmidt basis
    np.testing.assert_allclose(m[:, :, 0].detach().numpy(), (x[:, :3] / x[:, :3].norm(dim=1, keepdim=True)).detach(),
                               atol=1e-12)
    assert rotation_dim("6d") == 6 and rotation_dim("axis_angle") == 3
    with pytest.raises(ValueError, match="rotation must be one of"):
        rotation_dim("quaternion")


@pytest.mark.parametrize("variant", VARIANTS)
def test_6d_model_publishes_params_that_pose_its_vertices(hand, variant):
    torch.manual_seed(0)
    model = DVQVAE(dvqvae_config("compact", num_points=128, rotation="6d", variant=variant), hand)
    params = torch.zeros(3, 61)
    params[:, 10:13] = torch.tensor([[3.0, 0.5, 0.0], [0.0, -2.0, 1.0], [0.1, 0.2, 0.3]])
    out = model(torch.randn(3, 128, 3) * 0.05, params)
    d = out.decoding
    origin = hand(d.params[:, :10], torch.zeros(3, 3), d.params[:, 13:58], torch.zeros(3, 3))
    placed = rigid_place(origin.vertices, origin.joints[:, 0], d.params[:, 10:13], d.params[:, 58:])
    assert torch.allclose(placed, d.vertices, atol=1e-6)
    # a fresh 6-D decoder starts at the identity orientation, and the position term compares matrices
    assert d.rotation is not None and torch.allclose(d.rotation, torch.eye(3).expand(3, 3, 3), atol=0.05)
    gt_rot = torch.as_tensor(Rotation.from_rotvec(params[:, 10:13].numpy()).as_matrix(), dtype=torch.float32)
    expected = ((d.rotation - gt_rot).pow(2).sum((1, 2)) + (d.params[:, 58:] - params[:, 58:]).pow(2).sum(1)).mean()
    assert torch.allclose(out.losses["position"], expected, rtol=1e-5)
    out.losses["total"].backward()


def test_position_loss_does_not_see_the_axis_angle_wrap(hand):
    """Rotations by pi - e about +x and by pi - e about -x are 2e apart but 2 pi apart as axis-angle vectors:
    with the predicted matrix the position term sees the small difference, without it the jump."""
    from dvqvae_model.nets.losses import grasp_losses

    pts = torch.randn(1, 64, 3) * 0.05
    e = 1e-3
    a, b = torch.zeros(1, 61), torch.zeros(1, 61)
    a[0, 10], b[0, 10] = np.pi - e, -(np.pi - e)
    pred = a.clone()
    out = hand.from_params(pred)
    rot = torch.as_tensor(Rotation.from_rotvec(pred[:, 10:13].numpy()).as_matrix(), dtype=torch.float32)

    def position(gt: torch.Tensor, rotation) -> float:
        gt_v = hand.from_params(gt).vertices
        return float(grasp_losses(pts, pred, out.vertices, gt, gt_v, hand.faces, torch.arange(10),
                                  pred_rotation=rotation)["position"])

    assert position(a, rot) < 1e-10 and position(b, rot) < 1e-4  # (2e)^2 * 2 entries
    assert position(b, None) > 30.0  # (2 pi - 2e)^2
