"""Autoregressive prior over DVQ-VAE token sequences: a gated PixelCNN collapsed to 1-D.

The sequence is ``[object, thumb, index, middle, ring, pinky, palm]`` (length ``1 + H``),
each position with its own vocabulary. The object token is both the class condition
(as in the conditional gated PixelCNN of van den Oord et al. 2016) and the start of the
sequence; the prior models ``p(hand tokens | object token)``.

Why 1-D: with seven tokens the 2-D PixelCNN's vertical stack (rows above) is empty and
the horizontal stack (pixels to the left) is a causal 1-D convolution, so the model keeps
the gated block (``tanh(W_f x + V_f h) * sigmoid(W_g x + V_g h)``), the mask-A first layer
(no access to the current token), mask-B later layers, residual and skip connections, and
drops the 2-D machinery. It is sized for seven tokens, not for images.

Sampling is tensor-only so that the same code exports (torch.export, TorchScript, ONNX,
TensorRT): noise comes in as an argument (Gumbel-max), the ``H`` steps are a fixed Python
loop that unrolls, and there is no random op or data-dependent branch inside.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dvqvae_model.io import config_from_dict, config_to_dict

# Finite stand-in for -inf: keeps Gumbel-max, log_softmax and ONNX/TensorRT happy
# (no inf arithmetic) while being far below any real logit.
NEG_LOGIT = -1.0e9


@dataclass
class PriorConfig:
    """Serialisable prior hyper-parameters.

    ``vocab_sizes`` has length ``1 + H``: the object codebook size first, then one entry per
    hand token. ``paper`` keeps the released model's capacity class (wide, deep) but shaped
    for seven tokens; ``compact`` is the on-robot size (well under 1 M parameters).
    """

    vocab_sizes: tuple[int, ...] = (128, 128, 128, 128, 128, 128, 128)
    channels: int = 64
    num_layers: int = 4
    kernel_size: int = 3
    dropout: float = 0.1
    preset: str = "compact"

    def __post_init__(self) -> None:
        self.vocab_sizes = tuple(int(v) for v in self.vocab_sizes)
        if len(self.vocab_sizes) < 2:
            raise ValueError("vocab_sizes needs the object vocabulary plus at least one hand token")
        if min(self.vocab_sizes) < 1:
            raise ValueError(f"vocab sizes must be positive, got {self.vocab_sizes}")
        if self.channels < 1 or self.num_layers < 1 or self.kernel_size < 1:
            raise ValueError("channels, num_layers and kernel_size must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def num_hand_tokens(self) -> int:
        return len(self.vocab_sizes) - 1

    @property
    def max_vocab(self) -> int:
        """Width of the noise / logits tensors (largest hand vocabulary)."""
        return max(self.vocab_sizes[1:])

    @classmethod
    def paper(cls, vocab_sizes: Sequence[int] = (128,) * 7, **overrides: Any) -> "PriorConfig":
        """Large preset: 256 channels, 8 gated layers (the release used 512 x 15 on a 3x3 grid)."""
        kw: dict[str, Any] = dict(channels=256, num_layers=8, kernel_size=3, dropout=0.1, preset="paper")
        kw.update(overrides)
        return cls(vocab_sizes=tuple(vocab_sizes), **kw)

    @classmethod
    def compact(cls, vocab_sizes: Sequence[int] = (128,) * 7, **overrides: Any) -> "PriorConfig":
        """Small preset for CPU inference: 64 channels, 4 gated layers."""
        kw: dict[str, Any] = dict(channels=64, num_layers=4, kernel_size=3, dropout=0.1, preset="compact")
        kw.update(overrides)
        return cls(vocab_sizes=tuple(vocab_sizes), **kw)

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PriorConfig":
        return config_from_dict(cls, d)


def gumbel_noise(
    num_samples: int,
    num_tokens: int,
    vocab: int,
    generator: Optional[torch.Generator] = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: Union[str, torch.device] = "cpu",
) -> Tensor:
    """Standard Gumbel noise ``[K, H, V]`` from a (seeded) generator, made outside the graph."""
    u = torch.rand((num_samples, num_tokens, vocab), generator=generator, dtype=torch.float64)
    tiny = torch.finfo(torch.float64).tiny
    g = -torch.log(-torch.log(u.clamp(min=tiny, max=1.0 - 1e-12)))
    return g.to(dtype=dtype, device=device)


class _GatedCausalBlock(nn.Module):
    """Gated PixelCNN horizontal-stack block in 1-D.

    Mask type "A" (first layer) sees positions ``i-k .. i-1``; type "B" sees ``i-k+1 .. i``.
    The residual connection is omitted for type A, otherwise the current token would leak.
    ``forward`` runs a whole sequence (training); ``step`` computes one position from a
    window of cached columns (sampling), with identical arithmetic.
    """

    def __init__(self, channels: int, kernel_size: int, mask_type: str, dropout: float) -> None:
        super().__init__()
        if mask_type not in ("A", "B"):
            raise ValueError(mask_type)
        self.channels = channels
        self.mask_type = mask_type
        self.kernel_size = kernel_size
        self.left_pad = kernel_size if mask_type == "A" else kernel_size - 1
        self.conv = nn.Conv1d(channels, 2 * channels, kernel_size)
        self.cond = nn.Linear(channels, 2 * channels, bias=False)
        self.drop = nn.Dropout(dropout)
        self.out_skip = nn.Conv1d(channels, 2 * channels, 1)  # residual branch and skip branch
        self.residual = mask_type == "B"

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """x [B,C,L], h [B,C] class condition -> (new x [B,C,L], skip [B,C,L])."""
        length = x.shape[-1]
        y = self.conv(F.pad(x, (self.left_pad, 0)))[..., :length]
        y = y + self.cond(h).unsqueeze(-1)
        a, b = y.chunk(2, dim=1)
        g = self.drop(torch.tanh(a) * torch.sigmoid(b))
        out, skip = self.out_skip(g).chunk(2, dim=1)
        if self.residual:
            out = out + x
        return out, skip

    def step(self, window: list[Tensor], cond: Tensor) -> tuple[Tensor, Tensor]:
        """One position: ``window`` = k input columns [B,C] (oldest first), cond = self.cond(h).

        For type B the last column is the current position's input (used for the residual).
        """
        w = self.conv.weight.permute(0, 2, 1).reshape(2 * self.channels, -1)  # [2C, k*C]
        y = F.linear(torch.cat(window, dim=1), w, self.conv.bias) + cond
        a, b = y.chunk(2, dim=1)
        g = self.drop(torch.tanh(a) * torch.sigmoid(b))
        out, skip = F.linear(g, self.out_skip.weight.squeeze(-1), self.out_skip.bias).chunk(2, dim=1)
        if self.residual:
            out = out + window[-1]
        return out, skip


class GatedPixelCNNPrior(nn.Module):
    """Class-conditional gated PixelCNN over ``[object, hand_1 .. hand_H]`` token sequences."""

    def __init__(self, cfg: PriorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        vocab = cfg.vocab_sizes
        self.seq_len = len(vocab)
        self.num_hand_tokens = len(vocab) - 1
        self.max_vocab = cfg.max_vocab
        c = cfg.channels

        offsets = [0]
        for v in vocab[:-1]:
            offsets.append(offsets[-1] + v)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        self.register_buffer(
            "vocab_limits", torch.tensor([v - 1 for v in vocab], dtype=torch.long), persistent=False
        )
        valid = torch.zeros(self.num_hand_tokens, self.max_vocab, dtype=torch.bool)
        for i, v in enumerate(vocab[1:]):
            valid[i, :v] = True
        self.register_buffer("valid", valid, persistent=False)

        self.token_emb = nn.Embedding(sum(vocab), c)
        self.pos_emb = nn.Parameter(torch.randn(self.seq_len, c) * 0.02)
        self.class_emb = nn.Embedding(vocab[0], c)
        self.blocks = nn.ModuleList(
            _GatedCausalBlock(c, cfg.kernel_size, "A" if i == 0 else "B", cfg.dropout)
            for i in range(cfg.num_layers)
        )
        self.head = nn.Conv1d(c, c, 1)
        # One output layer per hand position (vocabularies may differ); padded columns masked.
        self.out_weight = nn.Parameter(torch.randn(self.num_hand_tokens, c, self.max_vocab) / math.sqrt(c))
        self.out_bias = nn.Parameter(torch.zeros(self.num_hand_tokens, self.max_vocab))

    # ------------------------------------------------------------------ training / scoring
    def logits(self, tokens: Tensor) -> Tensor:
        """Next-token logits ``[B, H, Vmax]`` for hand positions 1..H given ``tokens [B, 1+H]``.

        The logits for hand position ``j`` depend only on ``tokens[:, :j+1]`` (object and the
        preceding hand tokens). Padded vocabulary entries are set to ``NEG_LOGIT``.
        """
        if tokens.dim() != 2 or tokens.shape[1] != self.seq_len:
            raise ValueError(f"tokens must be [B, {self.seq_len}], got {tuple(tokens.shape)}")
        tokens = tokens.long()
        # Clamp keeps not-yet-sampled placeholders (and bad input) inside each table; the causal
        # masks make placeholders irrelevant to the logits that are read.
        tok = torch.minimum(tokens.clamp(min=0), self.vocab_limits) + self.offsets
        x = self.token_emb(tok) + self.pos_emb  # [B, L, C]
        h = self.class_emb(tok[:, 0])  # object token is the class condition (offset 0)
        x = x.transpose(1, 2)  # [B, C, L]
        skips = torch.zeros_like(x)
        for block in self.blocks:
            x, s = block(x, h)
            skips = skips + s
        y = F.relu(self.head(F.relu(skips)))  # [B, C, L]
        # Output at sequence position j (mask A) has not seen token j: it predicts token j.
        y = y[:, :, 1:].transpose(1, 2)  # [B, H, C]
        out = torch.einsum("bhc,hcv->bhv", y, self.out_weight) + self.out_bias
        if out.dtype in (torch.float16, torch.bfloat16):  # a half-precision network: NEG_LOGIT needs fp32
            out = out.float()
        return torch.where(self.valid, out, torch.full_like(out, NEG_LOGIT))

    def nll(self, tokens: Tensor, reduction: str = "mean") -> Tensor:
        """Cross-entropy of the hand tokens given the object token (mean over B and H by default)."""
        logits = self.logits(tokens)
        target = tokens[:, 1:].long()
        ce = F.cross_entropy(logits.reshape(-1, self.max_vocab), target.reshape(-1), reduction="none")
        ce = ce.view(target.shape)
        if reduction == "mean":
            return ce.mean()
        if reduction == "none":
            return ce
        if reduction == "sum":
            return ce.sum()
        raise ValueError(reduction)

    def log_prob(self, tokens: Tensor) -> Tensor:
        """Log-probability ``[B]`` of the hand tokens given the object token (temperature 1)."""
        return -self.nll(tokens, reduction="none").sum(dim=1)

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        object_tokens: Tensor,
        noise: Tensor,
        temperature: Union[float, Tensor] = 1.0,
        top_k: Optional[int] = None,
        return_margins: bool = False,
    ) -> tuple[Tensor, ...]:
        """Gumbel-max ancestral sampling of the ``H`` hand tokens.

        ``object_tokens`` is ``[K]`` (or ``[1]``, broadcast to ``K``); ``noise`` is Gumbel noise
        ``[K, H, Vmax]`` made by the caller (see :func:`gumbel_noise`). Each step picks
        ``argmax(logits + T * g)``, which equals ``argmax(logits / T + g)`` for ``T > 0`` and is
        the plain argmax for ``T = 0``. ``top_k`` (a Python int, fixed at trace time) keeps only the
        ``k`` largest logits per step. Returns ``(tokens [K, H], log_prob [K])`` where
        ``log_prob`` is the untempered, untruncated model log-probability of the chosen tokens
        (a temperature-independent quality signal for ranking).

        Precision: the network (embeddings, gated blocks, head, output layer) runs in the dtype of
        this module's parameters, the sampling arithmetic (masking, ``argmax``, ``log_softmax``) in
        the noise's dtype. A half-precision prior (fp16 TensorRT engines) thus casts its logits
        to float32 at its boundary and ``NEG_LOGIT`` never overflows to ``-inf``.

        ``return_margins`` (eager diagnostics, not exported) also returns ``margins [K, H]``: the
        gap between the best and the second best perturbed score at each step. A small gap is a
        near-tie, where other kernels' rounding may legitimately pick the other token.
        """
        k_samples = noise.shape[0]
        obj = object_tokens.long().reshape(-1).expand(k_samples)  # [K]
        temp = torch.as_tensor(temperature, dtype=noise.dtype, device=noise.device).clamp(min=0.0)
        obj = obj.clamp(min=0, max=self.cfg.vocab_sizes[0] - 1)
        conds = [blk.cond(self.class_emb(obj)) for blk in self.blocks]  # [K, 2C] per layer
        c = self.cfg.channels
        zero = torch.zeros(k_samples, c, dtype=self.out_weight.dtype, device=noise.device)
        # cols[l][p]: input column of layer l at position p (cols[0] = token embeddings).
        cols: list[list[Tensor]] = [[] for _ in range(len(self.blocks) + 1)]
        cols[0].append(self.token_emb(obj) + self.pos_emb[0])
        chosen: list[Tensor] = []
        margins: list[Tensor] = []
        log_prob = torch.zeros(k_samples, dtype=noise.dtype, device=noise.device)
        w_head = self.head.weight.squeeze(-1)
        # Positions 0..H, each computed once (incremental; same arithmetic as ``logits``).
        # Output at position p (p >= 1) predicts hand token p-1 from tokens 0..p-1.
        for p in range(self.seq_len):
            skips = zero
            for li, blk in enumerate(self.blocks):
                k = blk.kernel_size
                if blk.mask_type == "A":
                    idx = range(p - k, p)
                else:
                    idx = range(p - k + 1, p + 1)
                window = [cols[li][i] if i >= 0 else zero for i in idx]
                out, s = blk.step(window, conds[li])
                cols[li + 1].append(out)
                skips = skips + s
            if p == 0:
                continue
            step = p - 1
            y = F.relu(F.linear(F.relu(skips), w_head, self.head.bias))  # [K, C]
            logits = y @ self.out_weight[step] + self.out_bias[step]
            if logits.dtype != noise.dtype:  # half-precision network: sample in the noise's precision
                logits = logits.to(noise.dtype)
            logits = torch.where(self.valid[step], logits, torch.full_like(logits, NEG_LOGIT))
            masked = logits
            if top_k is not None and 0 < top_k < self.max_vocab:
                kth = torch.topk(logits, top_k, dim=-1).values[:, top_k - 1 : top_k]
                masked = torch.where(logits >= kth, logits, torch.full_like(logits, NEG_LOGIT))
            perturbed = masked + temp * noise[:, step]
            tok = torch.argmax(perturbed, dim=-1)  # [K]
            if return_margins:
                top2 = torch.topk(perturbed, 2, dim=-1).values
                margins.append(top2[:, 0] - top2[:, 1])
            log_prob = log_prob + torch.log_softmax(logits, dim=-1).gather(1, tok.unsqueeze(1)).squeeze(1)
            chosen.append(tok)
            if p < self.seq_len - 1:
                tok_in = torch.minimum(tok, self.vocab_limits[p]) + self.offsets[p]
                cols[0].append(self.token_emb(tok_in) + self.pos_emb[p])
        if return_margins:
            return torch.stack(chosen, dim=1), log_prob, torch.stack(margins, dim=1)
        return torch.stack(chosen, dim=1), log_prob


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
