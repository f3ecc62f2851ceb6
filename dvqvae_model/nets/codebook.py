"""Vector quantisation with a learned codebook (paper eq. 1-5), with usage tracking and dead-code revival.

One ``Codebook`` module may hold several independent books of the same shape (``num_books``): DVQ-VAE's
six hand-part codebooks are then one ``[6, K, D]`` tensor and all parts are quantised in one batched
distance computation. With ``num_books == 1`` every slot of the input shares the single book (the
"single codebook" ablation and the object codebook).

Loss, exactly the paper's formula (note: its beta sits on the *codebook* term, the reverse of the
original VQ-VAE paper's commitment weighting; we follow the DVQ-VAE paper)::

    L = || sg(e) - z ||^2 + beta * || sg(z) - e ||^2

with ``||.||^2`` taken as the mean over code dimensions (so the magnitude does not grow with D), summed
over slots (the paper's sum over parts) and averaged over the batch.

Codebook collapse is the usual failure of VQ training on small data, so the module also tracks usage
(EMA of the share of assignments per code, batch perplexity, count of live codes) and, in training
mode, re-initialises codes whose EMA share fell below ``dead_code_threshold / K`` from recent encoder
outputs. Optional k-means initialisation places codes on the data: on the first training batch, or,
with ``init_rows``, once that many encoder outputs per book have been seen (a batch of 32 grasps gives 32
rows per book, too few for 128 codes: k-means then leaves most codes on duplicates, the encoder collapses
onto 2-4 of them and the usage EMA needs ~350 steps to revive the rest; ``dvqvae-eval --curves`` shows it).
Until then the codes keep their small random start.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class QuantizerOutput:
    """Result of quantising ``z[B, G, D]``."""

    quantized: Tensor  # [B, G, D] straight-through: forward = code, backward = identity to z
    codes: Tensor  # [B, G, D] the selected codes themselves (no gradient path to z)
    indices: Tensor  # [B, G] long
    loss: Tensor  # scalar, paper eq. 1/2 (unweighted by lambda_e)
    perplexity: Tensor  # [num_books] batch perplexity of assignments
    used_codes: Tensor  # [num_books] long, "alive" codes: EMA usage share above the dead threshold
    batch_used_codes: Tensor  # [num_books] long, distinct codes assigned in this batch


class Codebook(nn.Module):
    """Nearest-code lookup with straight-through gradients, paper loss, usage stats and code revival."""

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, dead_code_threshold: float = 0.03,
                 kmeans_init: bool = False, num_books: int = 1, ema_decay: float = 0.99,
                 buffer_size: int = 1024, kmeans_iters: int = 10, init_rows: int = 0) -> None:
        super().__init__()
        if num_codes < 1 or dim < 1 or num_books < 1:
            raise ValueError("num_codes, dim and num_books must be positive")
        if init_rows < 0:
            raise ValueError(f"init_rows must be >= 0 (0 = the first batch), got {init_rows}")
        self.init_rows = int(init_rows)
        buffer_size = max(int(buffer_size), self.init_rows)
        self.num_codes = int(num_codes)
        self.dim = int(dim)
        self.beta = float(beta)
        self.num_books = int(num_books)
        self.dead_code_threshold = float(dead_code_threshold)
        self.kmeans_init = bool(kmeans_init)
        self.ema_decay = float(ema_decay)
        self.kmeans_iters = int(kmeans_iters)
        self.weight = nn.Parameter(
            torch.empty(num_books, num_codes, dim).uniform_(-1.0 / num_codes, 1.0 / num_codes))
        # Usage share per code (sums to 1 per book); starts uniform so nothing is "dead" at step 0.
        self.register_buffer("ema_usage", torch.full((num_books, num_codes), 1.0 / num_codes))
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        # Recent encoder outputs per book, the source of revived codes (not saved in checkpoints).
        self.buffer_size = int(buffer_size)
        self.register_buffer("_recent", torch.zeros(num_books, buffer_size, dim), persistent=False)
        self.register_buffer("_recent_count", torch.zeros((), dtype=torch.long), persistent=False)
        self.last_revived = 0

    # ----------------------------------------------------------------------------------- lookup
    def _book_index(self, slots: int, device: torch.device) -> Tensor:
        if self.num_books == 1:
            return torch.zeros(slots, dtype=torch.long, device=device)
        if slots != self.num_books:
            raise ValueError(f"input has {slots} slots but the codebook has {self.num_books} books")
        return torch.arange(slots, device=device)

    def _books_for(self, slots: int) -> Tensor:
        """Codebook weights per slot: [G, K, D] (a view/expand, no copy for shared books)."""
        if self.num_books == 1:
            return self.weight.expand(slots, -1, -1)
        if slots != self.num_books:
            raise ValueError(f"input has {slots} slots but the codebook has {self.num_books} books")
        return self.weight

    def nearest(self, z: Tensor) -> Tensor:
        """Index of the nearest code (Euclidean) for each slot of ``z[B, G, D]`` -> ``[B, G]``."""
        books = self._books_for(z.shape[1]).detach()  # [G, K, D]
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2; ||z||^2 does not change the argmin.
        dots = torch.einsum("bgd,gkd->bgk", z.detach(), books)
        dist = books.pow(2).sum(-1).unsqueeze(0) - 2.0 * dots
        return dist.argmin(dim=-1)

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes for ``indices[B, G]`` -> ``[B, G, D]``; slot g reads book g (or the shared book)."""
        slots = indices.shape[1]
        if self.num_books == 1:
            return F.embedding(indices, self.weight[0])
        if slots != self.num_books:
            raise ValueError(f"indices have {slots} slots but the codebook has {self.num_books} books")
        offset = torch.arange(slots, device=indices.device) * self.num_codes
        return F.embedding(indices + offset, self.weight.reshape(-1, self.dim))

    # ---------------------------------------------------------------------------------- forward
    def forward(self, z: Tensor) -> QuantizerOutput:
        if z.dim() != 3 or z.shape[-1] != self.dim:
            raise ValueError(f"expected z [B, G, {self.dim}], got {tuple(z.shape)}")
        if self.training:
            self._maybe_initialise(z)
            self._revive_dead_codes()
        indices = self.nearest(z)
        codes = self.lookup(indices)
        # Paper eq. 1/2: ||sg(e) - z||^2 + beta ||sg(z) - e||^2 (mean over D, sum over slots, mean over B).
        commit = (codes.detach() - z).pow(2).mean(-1).sum(-1).mean()
        book = (z.detach() - codes).pow(2).mean(-1).sum(-1).mean()
        loss = commit + self.beta * book
        quantized = z + (codes - z).detach()
        with torch.no_grad():
            counts = self._counts(indices)
        if self.training:
            self._update_usage(counts, z)
        return QuantizerOutput(quantized=quantized, codes=codes, indices=indices, loss=loss,
                               perplexity=_perplexity(counts), used_codes=self.used_codes(),
                               batch_used_codes=(counts > 0).sum(-1))

    # ------------------------------------------------------------------------------- statistics
    def _counts(self, indices: Tensor) -> Tensor:
        """Assignment counts per book and code, [num_books, K]."""
        book = self._book_index(indices.shape[1], indices.device).expand_as(indices)
        flat = (book * self.num_codes + indices).reshape(-1)
        counts = torch.zeros(self.num_books * self.num_codes, device=indices.device, dtype=torch.float32)
        counts.index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
        return counts.reshape(self.num_books, self.num_codes)

    def used_codes(self) -> Tensor:
        """Codes whose EMA usage share is above the dead threshold, per book ("alive"; a revived code
        gets a uniform share as grace, and all codes start with it)."""
        return (self.ema_usage >= self.dead_code_threshold / self.num_codes).sum(-1)

    @torch.no_grad()
    def _update_usage(self, counts: Tensor, z: Tensor) -> None:
        share = counts / counts.sum(-1, keepdim=True).clamp_min(1.0)
        self.ema_usage.mul_(self.ema_decay).add_(share, alpha=1.0 - self.ema_decay)
        self._push_recent(z.detach())

    @torch.no_grad()
    def _push_recent(self, z: Tensor) -> None:
        """Append encoder outputs to each book's ring buffer ([B*G/num_books] rows per book)."""
        b, g, d = z.shape
        rows = z.transpose(0, 1).reshape(self.num_books, -1, d) if self.num_books > 1 else z.reshape(1, -1, d)
        n = rows.shape[1]
        if n >= self.buffer_size:
            self._recent.copy_(rows[:, -self.buffer_size:])
        else:
            start = int(self._recent_count) % self.buffer_size
            pos = (torch.arange(n, device=z.device) + start) % self.buffer_size
            self._recent[:, pos] = rows
        self._recent_count.add_(n)

    @torch.no_grad()
    def _revive_dead_codes(self) -> None:
        """Replace dead codes by random recent encoder outputs (plus tiny jitter) and reset their usage."""
        self.last_revived = 0
        filled = min(int(self._recent_count), self.buffer_size)
        if filled == 0 or self.dead_code_threshold <= 0:
            return
        dead = self.ema_usage < self.dead_code_threshold / self.num_codes  # [books, K]
        if not bool(dead.any()):
            return
        for book in range(self.num_books):
            ids = dead[book].nonzero(as_tuple=True)[0]
            if ids.numel() == 0:
                continue
            pick = torch.randint(0, filled, (ids.numel(),), device=ids.device)
            sample = self._recent[book, pick]
            scale = sample.std().clamp_min(1e-6) * 1e-2
            self.weight.data[book, ids] = sample + scale * torch.randn_like(sample)
            self.ema_usage[book, ids] = 1.0 / self.num_codes
            self.last_revived += int(ids.numel())

    @torch.no_grad()
    def _maybe_initialise(self, z: Tensor) -> None:
        """k-means (Lloyd) per book on the first training batch, or on the recent outputs plus this batch
        once they hold ``init_rows`` rows."""
        if bool(self.initialized):
            return
        b, g, d = z.shape
        data = z.detach().transpose(0, 1).reshape(self.num_books, -1, d) if self.num_books > 1 \
            else z.detach().reshape(1, -1, d)
        if self.init_rows > 0:
            seen = min(int(self._recent_count), self.buffer_size)
            if seen + data.shape[1] < self.init_rows:
                return  # keep collecting (the forward pushes this batch into the buffer)
            data = torch.cat([self._recent[:, :seen], data], dim=1)
        for book in range(self.num_books):
            self.weight.data[book] = kmeans(data[book], self.num_codes, self.kmeans_iters)
        self.initialized.fill_(True)


def _perplexity(counts: Tensor) -> Tensor:
    """exp(entropy) of the assignment distribution per book (1 = one code, K = uniform)."""
    probs = counts / counts.sum(-1, keepdim=True).clamp_min(1.0)
    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1)
    return entropy.exp()


@torch.no_grad()
def kmeans(x: Tensor, k: int, iters: int = 10) -> Tensor:
    """k-means on ``x[N, D]`` (k-means++ seeding, then Lloyd) -> centres ``[k, D]``.

    With fewer distinct points than centres the surplus centres are data points plus small noise, so
    every code starts near the data. Empty clusters keep their previous centre.
    """
    n, d = x.shape
    noise = x.std().clamp_min(1e-6) * 1e-2
    centres = x.new_empty(k, d)
    centres[0] = x[torch.randint(0, n, (1,), device=x.device)]
    d2 = (x - centres[0]).pow(2).sum(-1)
    for i in range(1, k):
        total = d2.sum()
        if float(total) <= 0.0:  # every point already is a centre: duplicate with jitter
            pick = torch.randint(0, n, (1,), device=x.device)
        else:
            pick = torch.multinomial(d2 / total, 1)
        centres[i] = x[pick[0]]
        d2 = torch.minimum(d2, (x - centres[i]).pow(2).sum(-1))
    centres += noise * torch.randn_like(centres)
    for _ in range(iters):
        assign = torch.cdist(x, centres).argmin(dim=1)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        ones = torch.ones_like(assign, dtype=x.dtype)
        counts = torch.zeros(k, device=x.device, dtype=x.dtype).index_add_(0, assign, ones)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled].unsqueeze(1)
    return centres
