"""GraspCVAE baseline: shapes, sampling from explicit noise, gradients, losses, sizes, a short fit."""
from __future__ import annotations

import json

import pytest
import torch

from dvqvae_model.nets.config import cvae_config
from dvqvae_model.nets.cvae import CVAEConfig, GraspCVAE, GraspCVAEConfig
from dvqvae_model.hand.hand_model import HandModel
from dvqvae_model.nets.losses import LossWeights
from dvqvae_model.nets.pointnet import parameter_count

torch.set_num_threads(1)


def batch(n: int, n_points: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sphere clouds of 3-5 cm and random hands 6-10 cm from their centre."""
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(n, n_points, 3, generator=g)
    radius = 0.03 + 0.02 * torch.rand(n, 1, 1, generator=g)
    obj = radius * p / p.norm(dim=-1, keepdim=True)
    params = torch.zeros(n, 61)
    params[:, :10] = 0.3 * torch.randn(n, 10, generator=g)
    params[:, 10:13] = 0.5 * torch.randn(n, 3, generator=g)
    params[:, 13:58] = 0.2 * torch.rand(n, 45, generator=g)
    params[:, 58:] = 0.08 * torch.randn(n, 3, generator=g)
    return obj, params


def test_config_roundtrip_and_alias() -> None:
    for name in ("paper", "compact"):
        cfg = cvae_config(name)
        assert CVAEConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert GraspCVAEConfig is CVAEConfig
    with pytest.raises(ValueError):
        CVAEConfig.from_dict({"latent": 3})


def test_forward_shapes_losses_and_gradients(hand: HandModel) -> None:
    torch.manual_seed(0)
    model = GraspCVAE(cvae_config("compact"), hand).train()
    obj, prm = batch(4)
    out = model(obj, prm)
    d = out.decoding
    assert d.params.shape == (4, 61) and d.vertices.shape == (4, 778, 3)
    assert d.joints.shape == (4, 16, 3) and d.keypoints.shape == (4, 21, 3)
    assert out.mu.shape == (4, 64) and out.logvar.shape == (4, 64)
    assert set(out.losses) == {"posture", "position", "vertex", "contact", "consistency", "penetration", "kl",
                               "total"}
    assert all(torch.isfinite(v) for v in out.losses.values())
    out.losses["total"].backward()
    for name in ("object_encoder", "hand_encoder", "encoder", "decoder"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in getattr(model, name).parameters()), name
    with torch.no_grad():
        assert torch.allclose(d.vertices, hand.from_params(d.params).vertices, atol=1e-6)


def test_reparameterisation_uses_given_noise(hand: HandModel) -> None:
    model = GraspCVAE(cvae_config("compact"), hand).eval()
    obj, prm = batch(2)
    zero = torch.zeros(2, 64)
    with torch.no_grad():
        a = model(obj, prm, noise=zero)
        b = model(obj, prm, noise=zero)
        c = model(obj, prm, noise=torch.ones(2, 64))
        # noise 0 decodes the posterior mean
        direct = model.decode(a.mu, model.encode_object(obj))
    assert torch.equal(a.decoding.params, b.decoding.params)
    assert not torch.allclose(a.decoding.params, c.decoding.params)
    assert torch.allclose(direct.params, a.decoding.params, atol=1e-6)


def test_sample_k_grasps_from_explicit_noise(hand: HandModel) -> None:
    model = GraspCVAE(cvae_config("compact"), hand).eval()
    obj, _ = batch(1)
    noise = torch.randn(6, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = model.sample(obj, noise)
        b = model.sample(obj, noise)
        per_object = model.sample(obj.expand(6, -1, -1), noise)
    assert a.params.shape == (6, 61) and a.vertices.shape == (6, 778, 3)
    assert torch.equal(a.params, b.params)  # deterministic given the noise
    assert torch.allclose(a.params, per_object.params, atol=1e-6)
    assert (a.params[0] - a.params[1]).abs().sum() > 0  # different noise, different grasps


def test_parameter_counts(hand: HandModel) -> None:
    paper = parameter_count(GraspCVAE(cvae_config("paper"), hand))
    compact = parameter_count(GraspCVAE(cvae_config("compact"), hand))
    assert 3_000_000 < paper < 8_000_000, paper
    assert compact < paper and compact < 1_000_000, compact


def test_short_training_reduces_reconstruction_error(hand: HandModel) -> None:
    torch.manual_seed(0)
    weights = LossWeights(lambda_h=1.0, lambda_m=0.0, lambda_c=0.0, lambda_p=0.0, lambda_kl=0.01)
    model = GraspCVAE(cvae_config("compact", loss_weights=weights), hand)
    obj, prm = batch(4, seed=3)
    with torch.no_grad():
        gt = hand.from_params(prm).vertices
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    errors = []
    for step in range(120):
        out = model(obj, prm)
        opt.zero_grad()
        out.losses["total"].backward()
        opt.step()
        if step in (0, 119):
            errors.append(((out.decoding.vertices - gt).norm(dim=-1).mean() * 1000).item())
    assert errors[1] < 0.5 * errors[0], errors
