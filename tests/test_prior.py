"""Tests for the gated PixelCNN prior: causality, learning, Gumbel-max sampling, export."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dvqvae_model.nets.prior import (
    NEG_LOGIT,
    GatedPixelCNNPrior,
    PriorConfig,
    count_parameters,
    gumbel_noise,
)

VOCAB = (5, 12, 7, 12, 9, 12, 10)  # object first; hand vocabularies differ to exercise padding


def small_prior(seed: int = 0, **kw) -> GatedPixelCNNPrior:
    torch.manual_seed(seed)
    cfg = PriorConfig.compact(vocab_sizes=VOCAB, channels=32, num_layers=3, **kw)
    return GatedPixelCNNPrior(cfg).eval()


def random_tokens(b: int, gen: torch.Generator) -> torch.Tensor:
    return torch.stack([torch.randint(0, v, (b,), generator=gen) for v in VOCAB], dim=1)


def test_config_roundtrip_and_sizes() -> None:
    cfg = PriorConfig.paper()
    assert PriorConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        PriorConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    compact = count_parameters(GatedPixelCNNPrior(PriorConfig.compact()))
    paper = count_parameters(GatedPixelCNNPrior(PriorConfig.paper()))
    assert compact < 1_000_000 < paper


def test_shapes_and_padding_mask() -> None:
    prior = small_prior()
    tokens = random_tokens(4, torch.Generator().manual_seed(0))
    logits = prior.logits(tokens)
    assert logits.shape == (4, 6, 12)
    for j, v in enumerate(VOCAB[1:]):
        assert torch.all(logits[:, j, v:] == NEG_LOGIT)
        assert torch.all(logits[:, j, :v] > NEG_LOGIT / 2)
    assert prior.nll(tokens).shape == ()
    assert prior.nll(tokens, reduction="none").shape == (4, 6)
    assert prior.log_prob(tokens).shape == (4,)


def test_causality() -> None:
    """Changing token i changes no logits of hand positions that come at or before i."""
    prior = small_prior()
    gen = torch.Generator().manual_seed(1)
    base = random_tokens(3, gen)
    ref = prior.logits(base)
    for i in range(len(VOCAB)):
        changed = base.clone()
        changed[:, i] = (changed[:, i] + 1) % VOCAB[i]
        out = prior.logits(changed)
        # logits index j predicts sequence position j+1 and may only see positions <= j
        upto = i  # positions j+1 <= i  <=>  j < i
        assert torch.equal(out[:, :upto], ref[:, :upto]), f"token {i} leaked backwards"
        if i < len(VOCAB) - 1:
            assert not torch.allclose(out[:, i:], ref[:, i:]), f"token {i} has no effect forward"


def test_learns_deterministic_mapping() -> None:
    """nll falls on a fixed token set and argmax sampling reproduces object -> hand tokens."""
    torch.manual_seed(0)
    prior = small_prior(dropout=0.0)
    gen = torch.Generator().manual_seed(3)
    data = random_tokens(len(range(VOCAB[0])), gen)
    data[:, 0] = torch.arange(VOCAB[0])  # one fixed hand sequence per object token
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    prior.train()
    first = prior.nll(data).item()
    for _ in range(150):
        opt.zero_grad()
        loss = prior.nll(data)
        loss.backward()
        opt.step()
    prior.eval()
    final = prior.nll(data).item()
    assert final < 0.1 * first and final < 0.05
    noise = gumbel_noise(VOCAB[0], 6, prior.max_vocab, torch.Generator().manual_seed(0))
    tokens, _ = prior.sample(data[:, 0], noise, temperature=0.0)
    assert torch.equal(tokens, data[:, 1:])


def test_sampling_determinism_temperature_topk() -> None:
    prior = small_prior()
    k = 64
    obj = torch.tensor([2])
    n1 = gumbel_noise(k, 6, prior.max_vocab, torch.Generator().manual_seed(7))
    n2 = gumbel_noise(k, 6, prior.max_vocab, torch.Generator().manual_seed(7))
    n3 = gumbel_noise(k, 6, prior.max_vocab, torch.Generator().manual_seed(8))
    assert torch.equal(n1, n2)
    t1, lp1 = prior.sample(obj, n1)
    t2, lp2 = prior.sample(obj, n2)
    t3, _ = prior.sample(obj, n3)
    assert torch.equal(t1, t2) and torch.equal(lp1, lp2)
    assert not torch.equal(t1, t3)
    assert t1.shape == (k, 6) and t1.dtype == torch.long
    # never a padded entry, even at a high temperature
    hot, _ = prior.sample(obj, n1, temperature=50.0)
    assert torch.all(hot < torch.tensor(VOCAB[1:]))
    # log_prob agrees with the teacher-forced pass
    full = torch.cat([obj.expand(k, 1), t1], dim=1)
    assert torch.allclose(prior.log_prob(full), lp1, atol=1e-4)
    # temperature 0 is the greedy argmax, whatever the noise
    g1, _ = prior.sample(obj, n1, temperature=0.0)
    g3, _ = prior.sample(obj, n3, temperature=torch.tensor(0.0))
    assert torch.equal(g1, g3) and torch.all(g1 == g1[0])
    greedy_full = torch.cat([obj.expand(k, 1), g1], dim=1)
    assert torch.equal(prior.logits(greedy_full).argmax(-1), g1)
    # top-k: every sampled token is among the k best of its step; top-1 equals greedy
    for top_k in (1, 3):
        tk, _ = prior.sample(obj, n1, temperature=5.0, top_k=top_k)
        logits = prior.logits(torch.cat([obj.expand(k, 1), tk], dim=1))
        best = logits.topk(top_k, dim=-1).indices
        assert torch.all((best == tk.unsqueeze(-1)).any(-1))
        if top_k == 1:
            assert torch.equal(tk, g1)


class _SampleWrapper(nn.Module):
    def __init__(self, prior: GatedPixelCNNPrior, top_k: int | None) -> None:
        super().__init__()
        self.prior = prior
        self.top_k = top_k

    def forward(self, obj: torch.Tensor, noise: torch.Tensor, temperature: torch.Tensor):
        return self.prior.sample(obj, noise, temperature, self.top_k)


def test_torch_export_of_sampler() -> None:
    prior = small_prior()
    wrapper = _SampleWrapper(prior, top_k=4).eval()
    noise = gumbel_noise(8, 6, prior.max_vocab, torch.Generator().manual_seed(0))
    args = (torch.tensor([1]), noise, torch.tensor(0.7))
    k_dim = torch.export.Dim("K", min=2, max=1024)
    ep = torch.export.export(wrapper, args, dynamic_shapes=({}, {0: k_dim}, {}))
    names = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert not any(r in s for s in names for r in ("rand", "multinomial", "bernoulli"))
    out = ep.module()(*args)
    ref = wrapper(*args)
    assert torch.equal(out[0], ref[0]) and torch.allclose(out[1], ref[1])
    noise32 = gumbel_noise(32, 6, prior.max_vocab, torch.Generator().manual_seed(1))
    out32 = ep.module()(args[0], noise32, args[2])
    assert torch.equal(out32[0], wrapper(args[0], noise32, args[2])[0])
