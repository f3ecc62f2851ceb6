"""Optional fast test-time refinement of sampled grasps (GraspTTA-style, bounded).

A few Adam steps on the pose, orientation and translation of each grasp (shape is kept)
minimise

    w_pen * penetration + w_contact * (fingertip contact + near-contact pull)
    + w_limit * joint-limit excess + w_anchor * ||params - params_0||^2

where penetration is eq. 15 of the paper (``losses.penetration_loss``: object points inside
the hand, squared distance to the nearest hand vertex), the fingertip term pulls the three
fingertips closest to the object onto its surface (the same quantity the grasp score uses)
and the near-contact pull draws the contact-prior vertices that are already within
``contact_radius`` onto the surface. The anchor keeps the sampled grasp type. Off by default;
the step count and a wall-time budget bound the cost. Grasps are independent (Adam keeps
per-element moments), so batching grasps of several objects gives the same result as
refining them one object at a time.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from dvqvae_model.hand.hand_model import SLICE_BETAS, SLICE_GLOBAL_ORIENT, SLICE_HAND_POSE, SLICE_TRANSL
from dvqvae_model.nets.losses import nearest_neighbours, vertex_normals
from dvqvae_model.nets.sampling_graph import FINGERTIP_KEYPOINTS


@dataclass
class RefineConfig:
    """Refinement budget and loss weights (losses in metres^2)."""

    steps: int = 15
    max_time_s: float = 0.3
    lr_transl: float = 2e-3  # metres per step (Adam step size)
    lr_orient: float = 1e-2  # radians per step
    lr_pose: float = 2e-2  # radians per step
    w_penetration: float = 3.0
    w_contact: float = 1.0
    w_limit: float = 0.1
    w_anchor: float = 1e-4
    contact_radius: float = 0.02
    num_contact_tips: int = 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def refine_energy(hand: Any, params: Tensor, obj_points: Tensor, init: Tensor, cfg: RefineConfig) -> dict[str, Tensor]:
    """Per-grasp energy terms ``[K]`` and ``total`` for ``params [K,61]``, ``obj_points [K,N,3]``."""
    out = hand.from_params(params)
    verts = out.vertices
    normals = vertex_normals(verts, hand.faces)
    k = params.shape[0]
    per = {}
    d2, idx = nearest_neighbours(obj_points, verts)
    gather = idx.unsqueeze(-1).expand(-1, -1, 3)
    nn_v = torch.gather(verts, 1, gather)
    nn_n = torch.gather(normals, 1, gather)
    inside = ((nn_v - obj_points) * nn_n).sum(-1).detach() > 0
    inside = inside & (d2.detach() < 0.02**2)
    per["penetration"] = (d2 * inside.to(d2.dtype)).sum(-1)

    tips = out.keypoints[:, list(FINGERTIP_KEYPOINTS)]
    tip_d2, _ = nearest_neighbours(tips, obj_points)  # [K, 5]
    n_tips = max(1, min(5, cfg.num_contact_tips))
    closest = -torch.topk(-tip_d2, n_tips, dim=1).values
    cverts = verts[:, hand.contact_ids]
    c_d2, _ = nearest_neighbours(cverts, obj_points)
    near = (c_d2.detach() < cfg.contact_radius**2).to(c_d2.dtype)
    per["contact"] = closest.mean(1) + (c_d2 * near).sum(1) / near.sum(1).clamp(min=1.0)

    limits = hand.meta.joint_limits
    lim = torch.as_tensor(limits, dtype=params.dtype, device=params.device)
    pose = params[:, SLICE_HAND_POSE]
    low = (lim[:, 0] - pose).clamp(min=0.0)
    high = (pose - lim[:, 1]).clamp(min=0.0)
    per["limit"] = (low.pow(2) + high.pow(2)).sum(1)
    per["anchor"] = (params - init).pow(2).sum(1)
    per["total"] = (
        cfg.w_penetration * per["penetration"]
        + cfg.w_contact * per["contact"]
        + cfg.w_limit * per["limit"]
        + cfg.w_anchor * per["anchor"]
    )
    assert per["total"].shape == (k,)
    return per


def refine_grasps(
    hand: Any, params: Tensor, obj_points: Tensor, cfg: RefineConfig | None = None
) -> tuple[Tensor, dict]:
    """Refine ``params [K,61]`` against ``obj_points`` (``[K,N,3]`` or ``[1,N,3]``), same frame.

    Returns ``(refined params [K,61] detached, info)``; ``info`` has ``steps``, ``time_s`` and the
    per-grasp ``energy_before`` / ``energy_after``. Betas are not changed.
    """
    cfg = cfg or RefineConfig()
    start = time.perf_counter()
    init = params.detach().clone()
    pts = obj_points.detach()
    if pts.shape[0] == 1 and init.shape[0] != 1:
        pts = pts.expand(init.shape[0], -1, -1)
    betas = init[:, SLICE_BETAS]
    orient = init[:, SLICE_GLOBAL_ORIENT].clone().requires_grad_(True)
    pose = init[:, SLICE_HAND_POSE].clone().requires_grad_(True)
    transl = init[:, SLICE_TRANSL].clone().requires_grad_(True)
    opt = torch.optim.Adam(
        [
            {"params": [transl], "lr": cfg.lr_transl},
            {"params": [orient], "lr": cfg.lr_orient},
            {"params": [pose], "lr": cfg.lr_pose},
        ]
    )

    def assemble() -> Tensor:
        return torch.cat([betas, orient, pose, transl], dim=1)

    steps = 0
    with torch.enable_grad():
        before = refine_energy(hand, assemble(), pts, init, cfg)["total"].detach()
        best = before.clone()
        best_params = init.clone()
        for _ in range(max(0, int(cfg.steps))):
            if time.perf_counter() - start > cfg.max_time_s:
                break
            opt.zero_grad(set_to_none=True)
            p = assemble()
            energy = refine_energy(hand, p, pts, init, cfg)["total"]
            with torch.no_grad():  # keep the best iterate per grasp (the energy of p, pre-step)
                better = energy < best
                best = torch.where(better, energy, best)
                best_params = torch.where(better.unsqueeze(1), p, best_params)
            energy.sum().backward()
            opt.step()
            steps += 1
        with torch.no_grad():
            p = assemble()
            last = refine_energy(hand, p, pts, init, cfg)["total"]
            better = last < best
            best = torch.where(better, last, best)
            best_params = torch.where(better.unsqueeze(1), p, best_params)
    info = {
        "steps": steps,
        "time_s": time.perf_counter() - start,
        "energy_before": before,
        "energy_after": best,
    }
    return best_params.detach(), info
