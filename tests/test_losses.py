"""Loss terms of eq. 6-18 on simple geometry: a sphere mesh stands in for the hand."""
from __future__ import annotations

import math

import pytest
import torch
import trimesh

from dvqvae_model.nets.losses import (LossWeights, consistency_loss, contact_loss, grasp_losses, kl_divergence,
                                 nearest_neighbours, penetration_loss, soft_contact_map, vertex_normals,
                                 weighted_total)

torch.set_num_threads(1)


def sphere(radius: float = 0.03,
           centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[torch.Tensor, torch.Tensor]:
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    v = torch.tensor(mesh.vertices, dtype=torch.float32) + torch.tensor(centre)
    return v.unsqueeze(0), torch.tensor(mesh.faces, dtype=torch.long)


def cloud(n: int, radius: float, centre: tuple[float, float, float], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, 3, generator=g)
    return (radius * p / p.norm(dim=1, keepdim=True) + torch.tensor(centre)).unsqueeze(0)


def test_nearest_neighbours_matches_brute_force_and_has_gradient() -> None:
    torch.manual_seed(0)
    src = torch.randn(2, 300, 3, requires_grad=True)
    dst = torch.randn(2, 50, 3, requires_grad=True)
    d2, idx = nearest_neighbours(src, dst)
    full = torch.cdist(src, dst).pow(2)
    assert d2.shape == (2, 300) and idx.dtype == torch.long
    assert torch.allclose(d2, full.min(-1).values, atol=1e-5)
    d2.sum().backward()
    assert src.grad.abs().sum() > 0 and dst.grad.abs().sum() > 0


def test_vertex_normals_point_outward_on_sphere() -> None:
    v, f = sphere(0.05)
    n = vertex_normals(v, f)
    radial = v / v.norm(dim=-1, keepdim=True)
    assert n.shape == v.shape
    assert ((n * radial).sum(-1) > 0.99).all()


def test_soft_contact_map_values() -> None:
    d = torch.tensor([0.0, 0.01, 0.02, 0.1])
    c = soft_contact_map(d)
    assert c[0] == pytest.approx(1.0)
    assert c[1] == pytest.approx(1 - 2 * (1 / (1 + math.exp(-2)) - 0.5), abs=1e-6)
    assert (c[:-1] > c[1:]).all() and c[-1] < 1e-6


def test_penetration_zero_when_far_positive_when_inside() -> None:
    hand, faces = sphere(0.04)
    normals = vertex_normals(hand, faces)
    far = cloud(500, 0.03, (0.5, 0.0, 0.0))
    assert penetration_loss(far, hand, normals).item() == 0.0
    touching_outside = cloud(500, 0.041, (0.0, 0.0, 0.0))  # just outside the surface
    assert penetration_loss(touching_outside, hand, normals).item() == 0.0
    inside = torch.cat([far, torch.tensor([[[0.0, 0.0, 0.0], [0.01, 0.0, 0.0]]])], dim=1)
    pen = penetration_loss(inside, hand, normals)
    # the two inner points are ~4 cm / ~3 cm from the surface vertices
    assert pen.item() == pytest.approx(0.04 ** 2 + 0.03 ** 2, rel=0.1)
    # deeper means more penetration; gradient pushes hand vertices
    hand_g = hand.clone().requires_grad_(True)
    penetration_loss(inside, hand_g, normals).backward()
    assert hand_g.grad.abs().sum() > 0


def test_contact_loss_decreases_as_hand_approaches() -> None:
    obj = cloud(800, 0.03, (0.0, 0.0, 0.0))
    gt_hand, _ = sphere(0.02, (0.05, 0.0, 0.0))  # touches the object near +x
    gt_d2, _ = nearest_neighbours(obj, gt_hand)
    assert (gt_d2 < 0.01 ** 2).any()
    values = []
    for offset in (0.10, 0.05, 0.02, 0.0):
        pred, _ = sphere(0.02, (0.05 + offset, 0.0, 0.0))
        values.append(contact_loss(obj, pred, gt_d2, 0.01).item())
    assert all(a > b for a, b in zip(values, values[1:])), values
    # no GT contact -> zero
    far_gt, _ = sphere(0.02, (1.0, 0.0, 0.0))
    far_d2, _ = nearest_neighbours(obj, far_gt)
    pred, _ = sphere(0.02, (0.2, 0.0, 0.0))
    assert contact_loss(obj, pred, far_d2, 0.01).item() == 0.0


def test_consistency_zero_when_maps_agree_and_differentiable() -> None:
    obj = cloud(800, 0.03, (0.0, 0.0, 0.0))
    gt_hand, _ = sphere(0.02, (0.05, 0.0, 0.0))
    gt_d2, _ = nearest_neighbours(obj, gt_hand)
    assert consistency_loss(gt_d2, gt_d2).item() == pytest.approx(0.0, abs=1e-6)
    pred = sphere(0.02, (0.09, 0.0, 0.0))[0].requires_grad_(True)
    pred_d2, _ = nearest_neighbours(obj, pred)
    far = consistency_loss(pred_d2, gt_d2)
    assert 0.5 < far.item() <= 1.0
    far.backward()
    assert pred.grad.abs().sum() > 0
    # moving the hand back towards the GT reduces the loss
    near_d2, _ = nearest_neighbours(obj, sphere(0.02, (0.06, 0.0, 0.0))[0])
    assert consistency_loss(near_d2, gt_d2).item() < far.item()


def test_grasp_losses_dict_and_total() -> None:
    torch.manual_seed(0)
    hand, faces = sphere(0.02, (0.05, 0.0, 0.0))
    obj = cloud(400, 0.03, (0.0, 0.0, 0.0))
    gt_params = torch.zeros(1, 61)
    pred_params = torch.randn(1, 61, requires_grad=True)
    pred_vertices = (hand + 0.01).requires_grad_(True)
    w = LossWeights()
    out = grasp_losses(obj, pred_params, pred_vertices, gt_params, hand, faces, torch.arange(0, hand.shape[1], 3),
                       w, extra={"embedding": torch.tensor(0.5)})
    expected = {"posture", "position", "vertex", "contact", "consistency", "penetration", "embedding", "total"}
    assert set(out) == expected
    for k, v in out.items():
        assert v.dim() == 0 and torch.isfinite(v), k
    posture = pred_params[0, list(range(10)) + list(range(13, 58))].pow(2).sum().item()
    position = pred_params[0, [10, 11, 12, 58, 59, 60]].pow(2).sum().item()
    assert out["posture"].item() == pytest.approx(posture, rel=1e-5)
    assert out["position"].item() == pytest.approx(position, rel=1e-5)
    assert out["vertex"].item() == pytest.approx(hand.shape[1] * 3 * 1e-4, rel=1e-4)
    manual = sum(w.term_weights()[k] * v for k, v in out.items() if k != "total")
    assert torch.allclose(out["total"], manual)
    out["total"].backward()
    assert pred_params.grad.abs().sum() > 0 and pred_vertices.grad.abs().sum() > 0
    with pytest.raises(KeyError):
        weighted_total({"mystery": torch.tensor(1.0)}, w)


def test_kl_and_weights_roundtrip() -> None:
    mu = torch.zeros(3, 64)
    assert kl_divergence(mu, torch.zeros(3, 64)).item() == pytest.approx(0.0)
    assert kl_divergence(mu + 1.0, torch.zeros(3, 64)).item() == pytest.approx(32.0)
    w = LossWeights(lambda_c=7.0)
    assert LossWeights.from_dict(w.to_dict()) == w
    assert LossWeights().lambda_m > 0  # paper's -50 on a maximised ratio == +50 on 1 - ratio
    with pytest.raises(ValueError):
        LossWeights.from_dict({"lambda_x": 1.0})


def test_loss_points_subset_estimates_the_full_terms() -> None:
    """``loss_points`` uses the first points only: on a cloud that is two copies of one set, the first copy
    gives exactly the full mean-type terms and (scaled by N/n) the full penetration sum."""
    torch.manual_seed(1)
    hand, faces = sphere(0.03, (0.0, 0.0, 0.0))
    half = cloud(200, 0.025, (0.01, 0.0, 0.0))  # partly inside the hand sphere: penetration > 0
    obj = torch.cat([half, half], dim=1)
    params = torch.zeros(1, 61)
    contact_ids = torch.arange(0, hand.shape[1], 3)
    gt = hand + torch.tensor([0.004, 0.0, 0.0])
    full = grasp_losses(obj, params, hand, params, gt, faces, contact_ids)
    sub = grasp_losses(obj, params, hand, params, gt, faces, contact_ids, loss_points=200)
    assert full["penetration"].item() > 0 and full["contact"].item() > 0
    for k in ("contact", "consistency", "penetration", "vertex", "total"):
        assert sub[k].item() == pytest.approx(full[k].item(), rel=1e-5), k
    assert grasp_losses(obj, params, hand, params, gt, faces, contact_ids, loss_points=400)["total"].item() == \
        pytest.approx(full["total"].item(), rel=1e-6)
