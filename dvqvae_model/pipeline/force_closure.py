"""Force closure of a set of contacts: the smallest net wrench over convex combinations of them.

Why here: grasp synthesis (``dvqvae_training.synthesizer``) and the generator's ranking and
refinement (``dvqvae_model.pipeline.grasp_quality``, ``dvqvae_model.pipeline.refine``) ask the same question of a
grasp ("do its contacts oppose each other?"), so they share one implementation; the library owns
it and training imports it.

For contact wrenches ``W [B, R, 6]`` (unit normal, torque / object scale) and the contacts that
take part (``active [B, R]``), ``simplex_min_norm`` finds the weights ``lam`` on the simplex that
minimise ``|sum_r lam_r W_r|^2``: zero when the origin lies in the convex hull of the wrenches
(the contacts can balance each other), about 1 when all normals point the same way.

``cone_min_residual`` asks the one-load question instead: can the contacts push back against a given
wrench (the object's weight, ``stability``'s gravity features)? It finds ``lam >= 0`` (any
magnitude) minimising ``|sum_r lam_r W_r + b|``: zero when the contacts can carry the load ``b``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["cone_min_residual", "project_simplex", "simplex_min_norm"]


def project_simplex(v: Tensor, active: Tensor) -> Tensor:
    """Euclidean projection of each row of v [B,R] onto the simplex over its active entries."""
    # inactive entries far below any active one (a moderate constant: cumulative sums must not overflow)
    big = 1e4 + 2.0 * float(v.abs().max()) if v.numel() else 1e4
    x = v.masked_fill(~active, -big)
    u, _ = torch.sort(x, dim=1, descending=True)
    css = u.cumsum(1) - 1.0
    k = torch.arange(1, v.shape[1] + 1, dtype=v.dtype)
    cond = (u - css / k) > 0
    rho = cond.to(v.dtype).cumsum(1).argmax(1, keepdim=True)  # last index where cond holds
    theta = css.gather(1, rho) / (rho + 1).to(v.dtype)
    out = (x - theta).clamp_min(0.0) * active
    return torch.where(active.any(1, keepdim=True), out, torch.zeros_like(out))


def simplex_min_norm(W: Tensor, active: Tensor, iters: int = 40) -> Tensor:
    """argmin over the simplex (on active rows) of |sum_r lam_r W_r|^2, batched [B,R,6] -> [B,R].

    Accelerated projected gradient (FISTA, step 1 / trace(G) <= 1 / L); hands without an active
    row get all-zero weights.
    """
    G = W @ W.transpose(1, 2)  # [B,R,R]
    act = active.to(W.dtype)
    L = (torch.diagonal(G, dim1=1, dim2=2) * act).sum(1, keepdim=True).clamp_min(1e-9)
    lam = project_simplex(act, active)
    y, t = lam, 1.0
    for _ in range(iters):
        grad = (G @ y[..., None])[..., 0]
        new = project_simplex(y - grad / L, active)
        t_new = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        y = new + ((t - 1.0) / t_new) * (new - lam)
        lam, t = new, t_new
    return lam


def cone_min_residual(W: Tensor, b: Tensor, active: Tensor) -> Tensor:
    """min over lam >= 0 (on active rows) of |sum_r lam_r W_r + b|, batched: W [B,R,6], b [B,6] -> [B].

    Exact (scipy's active-set NNLS per hand, ~20 us for 24 rows: projected gradient needed thousands
    of steps on ill-conditioned hands); not differentiable. Hands without an active row keep |b|.
    """
    from scipy.optimize import nnls

    w = torch.where(active.unsqueeze(-1), W, torch.zeros_like(W)).detach().double().cpu().numpy()  # NaN rows out
    rhs = (-b).detach().double().cpu().numpy()
    out = [nnls(w[i].T, rhs[i])[1] if active[i].any() else float(np.linalg.norm(rhs[i])) for i in range(len(w))]
    return torch.tensor(out, dtype=W.dtype, device=W.device)
