"""Bounded test-time refinement of sampled grasps that keeps the hold (GraspTTA-style).

A few Adam steps on the pose, orientation and translation of each grasp (shape is kept)
minimise, against the object *cloud* (``grasp_quality.CloudSurface``: points + estimated normals,
so partial depth views work),

    w_pen * penetration + w_contact * contact + w_closure * closure
    + w_limit * joint-limit excess + w_anchor * ||params - params_0||^2

* penetration: the hand's surface integral of depth inside the cloud's surface (cm^3-like, the
  ranking term) plus the object points inside the hand (eq. 15: behind the nearest hand vertex's
  normal, squared distance, in cm^2);
* contact: the three closest hand parts onto the surface (cm) and the contact-prior vertices
  already within ``contact_radius`` pulled onto it (cm^2) -- the hand closes on the object;
* closure: the force-closure residual of the touching parts (``force_closure``): their cloud
  normals must oppose each other. Without it, pushing the hand out of the object makes grasps
  less stable (measured: displacement 2.7 -> 4.8 cm with the earlier energy);
* joint limits and a small anchor keep the sampled grasp type.

The step count and a wall-time budget bound the cost. The budget is checked before each step
from the second on, using the time the last step took, so a call stays within it; lazy set-up
of the first call is the caller's to warm (``GraspGenerator`` does so off the clock). Grasps are
independent (Adam keeps per-element moments) and batched: hands ``b*K .. b*K+K-1`` belong to
object ``b`` of the surface. Each grasp's best iterate is returned: the lowest energy among
those no deeper than the sampled grasp by either penetration measure and still touching the
surface, so refinement never trades penetration for contact or closure, nor lets go.

Speed (measured, ``benchmarks/bench_refine.py``): a step costs ~17 ms for 8 hands on this CPU,
about a third in two nearest-point searches, a fifth in the closure solver, a seventh in the
backward pass. ``grid`` (the
cloud's signed distance sampled once on a grid, ``grasp_quality.GridSurface``, built by a k-d tree
in ~10-15 ms), fewer closure iterations and a strided object-in-hand search make a step ~1.5x
cheaper alone, but the node's call only ~1.1x (the grid build and the exact check below) and its
grasps worse (penetration 0.38 -> 1.00 cm^3 after 20 steps), so they are off by default. With
``grid`` the chosen iterate is checked once on the exact surface (no deeper, touching, lower
energy), else the sample is kept.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from dvqvae_model.hand.hand_model import SLICE_BETAS, SLICE_GLOBAL_ORIENT, SLICE_HAND_POSE, SLICE_TRANSL
from dvqvae_model.nets.losses import vertex_normals
from dvqvae_model.pipeline.defaults import DEFAULTS
from dvqvae_model.pipeline.grasp_quality import CloudSurface, GridSurface, QualityWeights, quality_terms, vertex_areas


TOUCH_M = 0.003  # an iterate must keep a part this close to the surface (or as close as the sample was)


@dataclass
class RefineConfig:
    """Refinement budget and energy weights."""

    steps: int = DEFAULTS.refine_steps
    max_time_s: float = DEFAULTS.refine_time_ms / 1000.0
    top: int = DEFAULTS.refine_top  # grasps refined per object, best first (0 = all); used by GraspGenerator
    lr_transl: float = 1e-3  # metres per step (Adam step size)
    lr_orient: float = 1e-2  # radians per step
    lr_pose: float = 2e-2  # radians per step
    w_penetration: float = 1.0
    w_object_in_hand: float = 1.0
    w_contact: float = 0.2
    w_closure: float = 1.0
    w_limit: float = 10.0
    w_anchor: float = 1.0
    contact_radius: float = 0.02
    # speed knobs, off by default (benchmarks/bench_refine.py: the node's path is only ~1.1x faster with
    # them and its grasps are worse, see the module docstring): the cloud's signed distance sampled
    # once on a grid of this many points a side (0 = a nearest-point search at every step), the
    # closure solver's iterations, object points inside the hand tested against every hand_stride-th vertex
    grid: int = 0
    closure_iters: int = 40
    hand_stride: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def refine_energy(hand: Any, params: Tensor, surface: CloudSurface | GridSurface, init: Tensor, cfg: RefineConfig,
                  areas: Optional[Tensor] = None) -> dict[str, Tensor]:
    """Per-grasp energy terms ``[K]`` and ``total`` for ``params [K,61]`` against ``surface``."""
    out = hand.from_params(params)
    verts = out.vertices
    k, b = params.shape[0], surface.num_objects
    if areas is None:
        areas = vertex_areas(hand.rest().vertices[0], hand.faces)
    terms = quality_terms(surface, verts, hand.part_ids, areas, None, QualityWeights(), features=False,
                          closure_iters=cfg.closure_iters)
    per: dict[str, Tensor] = {"penetration": terms["penetration"], "closure": terms["closure"],
                              "closest_part": terms["part_distance"].min(dim=1).values}
    # object points inside the hand (eq. 15): behind the outward normal of their nearest hand vertex
    pts = surface.points[:, ::2].repeat_interleave(k // b, dim=0)  # [K, M/2, 3]: half the points suffice here
    stride = max(1, int(cfg.hand_stride))
    with torch.no_grad():  # nearest hand vertex among every stride-th one (the search is the cost)
        vd = verts.detach()[:, ::stride]
        d2 = torch.baddbmm((vd * vd).sum(-1).unsqueeze(1), pts, vd.transpose(1, 2), alpha=-2.0)
        nn_d2, idx = d2.min(dim=2)
        nn_d2 = nn_d2 + (pts * pts).sum(-1)
    normals = vertex_normals(verts, hand.faces)
    g = (idx * stride).unsqueeze(-1).expand(-1, -1, 3)
    nn_v = torch.gather(verts, 1, g)
    nn_n = torch.gather(normals, 1, g)
    inside = (((nn_v - pts) * nn_n).sum(-1).detach() > 0) & (nn_d2 < surface.gate**2)
    per["object_in_hand"] = (((nn_v - pts) ** 2).sum(-1) * inside.to(verts.dtype)).sum(1) * 1e4  # cm^2
    # contact: closest parts onto the surface, near contact-prior vertices pulled in
    sd_c, _, _ = surface.signed_distance(verts[:, hand.contact_ids].reshape(b, -1, 3))
    sd_c = sd_c.reshape(k, -1)
    near = (sd_c.detach() < cfg.contact_radius).to(verts.dtype)
    pull = ((sd_c.clamp(min=0.0) * 100.0) ** 2 * near).sum(1) / near.sum(1).clamp(min=1.0)
    per["contact"] = terms["contact"] + pull
    limits = torch.as_tensor(hand.meta.joint_limits, dtype=params.dtype, device=params.device)
    pose = params[:, SLICE_HAND_POSE]
    low = (limits[:, 0] - pose).clamp(min=0.0)
    high = (pose - limits[:, 1]).clamp(min=0.0)
    per["limit"] = (low.pow(2) + high.pow(2)).sum(1)
    per["anchor"] = (params - init).pow(2).sum(1)
    per["total"] = (
        cfg.w_penetration * per["penetration"]
        + cfg.w_object_in_hand * per["object_in_hand"]
        + cfg.w_contact * per["contact"]
        + cfg.w_closure * per["closure"]
        + cfg.w_limit * per["limit"]
        + cfg.w_anchor * per["anchor"]
    )
    return per


def _admissible_limits(terms: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """What an iterate may not exceed: the sampled grasp's two penetration measures and its
    closest part's distance to the surface (or the touching distance, if it was farther)."""
    return (terms["penetration"].detach().clone(), terms["object_in_hand"].detach().clone(),
            terms["closest_part"].detach().clamp(min=TOUCH_M))


def _no_deeper(terms: dict[str, Tensor], limits: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Per grasp: no deeper by either penetration measure and still touching (see ``_admissible_limits``)."""
    return ((terms["penetration"].detach() <= limits[0] + 1e-6) & (terms["object_in_hand"].detach() <= limits[1] + 1e-6)
            & (terms["closest_part"].detach() <= limits[2]))


def clamp_to_limits(hand: Any, pose: Tensor) -> Tensor:
    """The finger pose clamped into the hand's joint limits."""
    limits = torch.as_tensor(hand.meta.joint_limits, dtype=pose.dtype, device=pose.device)
    return torch.maximum(torch.minimum(pose, limits[:, 1]), limits[:, 0])


def refine_grasps(hand: Any, params: Tensor, surface: Any, cfg: RefineConfig | None = None,
                  areas: Optional[Tensor] = None) -> tuple[Tensor, dict]:
    """Refine ``params [K,61]`` against ``surface`` (a ``CloudSurface``, or object points
    ``[B,N,3]`` / ``[N,3]`` in the same frame). K must be a multiple of the number of objects.

    Returns ``(refined params [K,61] detached, info)``; ``info`` has ``steps``, ``time_s``, the
    longest step ``max_step_s`` and the per-grasp ``energy_before`` / ``energy_after`` (on the
    exact cloud surface). With ``cfg.grid`` the steps query a ``GridSurface`` and the chosen
    iterate is checked once on the exact surface (else the sample is returned); the budget keeps
    time for that check. At least
    one step is taken (when ``steps`` > 0) whatever the budget. Betas are not changed; finger poses end
    inside the joint limits (projected after each step).
    """
    cfg = cfg or RefineConfig()
    if not isinstance(surface, (CloudSurface, GridSurface)):
        surface = CloudSurface(torch.as_tensor(surface, dtype=params.dtype))
    if params.shape[0] % surface.num_objects:
        raise ValueError(f"{params.shape[0]} grasps for {surface.num_objects} objects: need the same count per object")
    start = time.perf_counter()
    init = params.detach().clone()
    init[:, SLICE_HAND_POSE] = clamp_to_limits(hand, init[:, SLICE_HAND_POSE])
    exact, check_s, exact0 = surface, 0.0, None
    if cfg.grid > 0 and isinstance(surface, CloudSurface):  # built on the clock: it is part of the cost
        surface = surface.grid(cfg.grid)
        # the sample measured on the exact surface: what the chosen iterate is checked against at the end
        t0 = time.perf_counter()
        with torch.no_grad():
            exact0 = refine_energy(hand, init, exact, init, cfg, areas)
        check_s = time.perf_counter() - t0
    betas = init[:, SLICE_BETAS]
    orient = init[:, SLICE_GLOBAL_ORIENT].clone().requires_grad_(True)
    pose = init[:, SLICE_HAND_POSE].clone().requires_grad_(True)
    transl = init[:, SLICE_TRANSL].clone().requires_grad_(True)
    opt = torch.optim.Adam([
        {"params": [transl], "lr": cfg.lr_transl},
        {"params": [orient], "lr": cfg.lr_orient},
        {"params": [pose], "lr": cfg.lr_pose},
    ])

    def assemble() -> Tensor:
        return torch.cat([betas, orient, pose, transl], dim=1)

    steps = 0
    last_step = max_step = 0.0
    out_of_time = False
    with torch.enable_grad():
        best = None
        best_params = init.clone()
        before = None
        for _ in range(max(0, int(cfg.steps))):
            now = time.perf_counter()
            if steps > 0 and now - start + last_step + check_s > cfg.max_time_s:
                out_of_time = True
                break
            opt.zero_grad(set_to_none=True)
            p = assemble()
            terms = refine_energy(hand, p, surface, init, cfg, areas)
            energy = terms["total"]
            with torch.no_grad():  # keep the best admissible iterate per grasp (the energy of p, pre-step)
                if best is None:
                    before, best = energy.detach().clone(), energy.detach().clone()
                    best_params = p.detach().clone()
                    pen0 = _admissible_limits(terms)
                better = (energy < best) & _no_deeper(terms, pen0)
                best = torch.where(better, energy, best)
                best_params = torch.where(better.unsqueeze(1), p, best_params)
            energy.sum().backward()
            opt.step()
            with torch.no_grad():
                pose.copy_(clamp_to_limits(hand, pose))
            steps += 1
            last_step = time.perf_counter() - now
            max_step = max(max_step, last_step)
        if not out_of_time or best is None:  # the last step's result, if the budget allows looking at it
            with torch.no_grad():
                p = assemble()
                terms = refine_energy(hand, p, surface, init, cfg, areas)
                last = terms["total"]
                if best is None:
                    before, best = last.clone(), last.clone()
                    best_params = p.clone()
                    pen0 = _admissible_limits(terms)
                better = (last < best) & _no_deeper(terms, pen0)
                best = torch.where(better, last, best)
                best_params = torch.where(better.unsqueeze(1), p, best_params)
    if exact0 is not None:  # the grid steered; the exact surface decides (no deeper, touching, lower energy)
        with torch.no_grad():
            final = refine_energy(hand, best_params, exact, init, cfg, areas)
        ok = (final["total"] <= exact0["total"]) & _no_deeper(final, _admissible_limits(exact0))
        best_params = torch.where(ok.unsqueeze(1), best_params, init)
        before, best = exact0["total"], torch.where(ok, final["total"], exact0["total"])
    info = {"steps": steps, "time_s": time.perf_counter() - start, "max_step_s": max_step,
            "energy_before": before, "energy_after": best}
    return best_params.detach(), info
