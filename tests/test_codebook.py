"""Codebook: nearest lookup, straight-through gradients, paper loss, usage stats, k-means init, code revival."""
from __future__ import annotations

import pytest
import torch

from dvqvae_model.nets.codebook import Codebook, kmeans

torch.set_num_threads(1)


def test_shapes_dtypes_and_nearest_matches_brute_force() -> None:
    torch.manual_seed(0)
    cb = Codebook(32, 8, num_books=3)
    z = torch.randn(5, 3, 8)
    out = cb(z)
    assert out.quantized.shape == (5, 3, 8) and out.quantized.dtype == torch.float32
    assert out.indices.shape == (5, 3) and out.indices.dtype == torch.long
    assert out.loss.dim() == 0 and out.perplexity.shape == (3,) and out.used_codes.shape == (3,)
    brute = torch.cdist(z.transpose(0, 1), cb.weight.detach()).argmin(-1).transpose(0, 1)  # [B, G]
    assert torch.equal(out.indices, brute)
    # slot g reads book g
    for g in range(3):
        assert torch.allclose(out.codes[:, g], cb.weight[g, out.indices[:, g]])
    assert torch.allclose(cb.lookup(out.indices), out.codes)


def test_shared_book_serves_all_slots() -> None:
    cb = Codebook(16, 4, num_books=1)
    z = torch.randn(7, 6, 4)
    out = cb(z)
    assert out.indices.shape == (7, 6)
    assert torch.allclose(out.codes, cb.weight[0][out.indices])
    with pytest.raises(ValueError):
        Codebook(16, 4, num_books=3)(torch.randn(2, 6, 4))


def test_straight_through_and_loss_gradients() -> None:
    torch.manual_seed(1)
    cb = Codebook(8, 4, beta=0.25, num_books=2)
    z = torch.randn(3, 2, 4, requires_grad=True)
    out = cb(z)
    # forward value is the code, backward is the identity to z
    assert torch.allclose(out.quantized, out.codes)
    upstream = torch.randn_like(out.quantized)
    (out.quantized * upstream).sum().backward()
    assert torch.allclose(z.grad, upstream)
    assert cb.weight.grad is None or cb.weight.grad.abs().sum() == 0  # no gradient to codes through ST
    # paper eq. 1: ||sg(e) - z||^2 + beta ||sg(z) - e||^2 (mean over D, sum over slots, mean over batch)
    z.grad = None
    out = cb(z)
    expected = (1 + 0.25) * (out.codes.detach() - z.detach()).pow(2).mean(-1).sum(-1).mean()
    assert torch.allclose(out.loss, expected)
    out.loss.backward()
    # encoder gets 2 (e - z)/D per slot / B * (-1); codebook gets beta * 2 (e - z)/D / B
    assert torch.allclose(z.grad, -2.0 * (out.codes.detach() - z.detach()) / 4 / 3, atol=1e-6)
    used = cb.weight.grad.abs().sum(-1) > 0
    assert used.sum() >= 1
    book_grad = 0.25 * 2.0 * (out.codes.detach() - z.detach()) / 4 / 3
    assert torch.allclose(cb.weight.grad.sum(), book_grad.sum(), atol=1e-6)


def test_perplexity_and_usage_tracking() -> None:
    cb = Codebook(4, 2, num_books=1, ema_decay=0.0)
    with torch.no_grad():
        cb.weight[0] = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z = cb.weight.detach()[0].clone().unsqueeze(1)  # each code once
    cb.train()
    out = cb(z)
    assert torch.allclose(out.perplexity, torch.tensor([4.0]))
    assert out.batch_used_codes.tolist() == [4]
    z2 = torch.zeros(4, 1, 2)  # all on code 0
    out2 = cb(z2)
    assert torch.allclose(out2.perplexity, torch.tensor([1.0]))
    assert out2.batch_used_codes.tolist() == [1]
    # with ema_decay 0 the usage is the last batch's share: only code 0 alive
    assert int(cb.used_codes()[0]) == 1


def test_eval_mode_does_not_touch_state() -> None:
    cb = Codebook(8, 3, kmeans_init=True)
    cb.eval()
    before = (cb.weight.detach().clone(), cb.ema_usage.clone())
    cb(torch.randn(5, 1, 3) + 10.0)
    assert torch.equal(before[0], cb.weight) and torch.equal(before[1], cb.ema_usage)
    assert not bool(cb.initialized)


def test_kmeans_init_places_codes_on_data() -> None:
    torch.manual_seed(2)
    centres = torch.randn(4, 5) * 10
    data = (centres.repeat_interleave(50, 0) + 0.01 * torch.randn(200, 5)).unsqueeze(1)
    cb = Codebook(4, 5, kmeans_init=True)
    cb.train()
    out = cb(data)
    assert bool(cb.initialized)
    assert out.loss.item() < 1e-2  # every point sits on a code
    assert len(set(out.indices.flatten().tolist())) == 4
    # the helper alone: fewer points than centres still returns k finite centres
    c = kmeans(torch.randn(3, 2), 8)
    assert c.shape == (8, 2) and torch.isfinite(c).all()


def test_dead_code_revival_brings_unused_codes_back() -> None:
    torch.manual_seed(3)
    k = 16
    cb = Codebook(k, 2, dead_code_threshold=0.5, ema_decay=0.8, kmeans_init=False)
    with torch.no_grad():  # all codes far away from the data and in a clump: one code wins everything
        cb.weight[0] = 100.0 + 0.01 * torch.randn(k, 2)
    cb.train()
    opt = torch.optim.SGD(cb.parameters(), lr=0.5)
    data = lambda: torch.rand(64, 1, 2)  # noqa: E731 - spread over the unit square
    first = cb(data())
    assert len(set(first.indices.flatten().tolist())) <= 2
    revived = 0
    for _ in range(30):
        out = cb(data())
        revived += cb.last_revived
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert revived > 0
    final = cb(data())
    distinct = len(set(final.indices.flatten().tolist()))
    assert distinct >= k // 2, distinct
    assert int(cb.used_codes()[0]) >= k // 2
    # revived codes live on the data (unit square), not at 100
    assert (cb.weight.detach()[0].abs() < 5).sum() >= k // 2


def test_kmeans_init_can_wait_for_enough_rows() -> None:
    """init_rows: small batches are collected first, so k-means sees enough rows to place every code."""
    torch.manual_seed(3)
    centres = torch.randn(16, 4) * 10
    cb = Codebook(16, 4, kmeans_init=True, init_rows=160, num_books=2)
    cb.train()
    for step in range(5):  # 5 batches of 32 rows per book = 160
        idx = torch.randint(0, 16, (32, 2))
        z = centres[idx] + 0.01 * torch.randn(32, 2, 4)
        out = cb(z)
        assert bool(cb.initialized) == (step == 4)
    # every centre got a code: a fresh batch covering all centres sits on the codes
    z = centres.unsqueeze(1).expand(16, 2, 4).contiguous()
    out = cb(z)
    assert out.loss.item() < 1e-2 and out.batch_used_codes.tolist() == [16, 16]
    # k-means on a first batch of 8 rows (fewer than the codes) cannot place a code on every centre
    torch.manual_seed(3)
    first = Codebook(16, 4, kmeans_init=True, num_books=2)
    first.train()
    first(centres[torch.randint(0, 16, (8, 2))] + 0.01 * torch.randn(8, 2, 4))
    assert first(z).loss.item() > out.loss.item()
    with pytest.raises(ValueError, match="init_rows"):
        Codebook(4, 2, init_rows=-1)


def test_dvqvae_passes_the_init_rows_to_its_codebooks(hand) -> None:
    from dvqvae_model.nets.config import dvqvae_config
    from dvqvae_model.nets.dvqvae import DVQVAE

    model = DVQVAE(dvqvae_config("compact", num_points=64, kmeans_init_rows=2048), hand)
    assert model.hand_codebook.init_rows == model.object_codebook.init_rows == 2048
    assert model.hand_codebook.buffer_size == 2048  # the buffer holds what the initialisation waits for
