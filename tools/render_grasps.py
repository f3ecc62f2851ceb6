#!/usr/bin/env python3
"""Render sampled grasps to a PNG (object points + the best hands, two views).

Two modes:

* ``--checkpoint CKPT --cloud FILE`` : load a trained checkpoint (safetensors + JSON) and an
  object cloud (``.npy`` [N,3], ``.ply``/``.pcd``/``.xyz`` via open3d, or whitespace text), sample
  ``--num-grasps`` grasps and render the best ``--show``.
* ``--demo`` : prove the path end to end without a data set: build a sphere, make a few dozen
  hand-placed grasps around it (palm towards the centre, fingers flexed), overfit a compact
  DVQ-VAE and its prior on them for a few hundred steps (about a minute on one CPU core), save
  a checkpoint, reload it through ``GraspGenerator.from_checkpoint`` and render its samples.

Usage::

    python tools/render_grasps.py --demo --out docs/images/sampled_grasps.png
    python tools/render_grasps.py --checkpoint runs/x/ckpt --cloud mug.npy --out grasps.png
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from dvqvae_model.pipeline.generator import GraspGenerator  # noqa: E402
from dvqvae_model.hand.hand_model import SLICE_GLOBAL_ORIENT, SLICE_HAND_POSE, SLICE_TRANSL, load_hand_model  # noqa: E402
from dvqvae_model.sim.visualize import render_grasps_png  # noqa: E402


def load_cloud(path: str) -> np.ndarray:
    p = Path(path)
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False).reshape(-1, 3)
    if p.suffix in (".ply", ".pcd"):
        import open3d as o3d

        return np.asarray(o3d.io.read_point_cloud(str(p)).points)
    return np.loadtxt(p)[:, :3]


def sphere_points(n: int, radius: float, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(size=(n, 3))
    return radius * x / np.linalg.norm(x, axis=1, keepdims=True)


def demo_grasps(hand, num: int, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Hand-placed power grasps around a sphere at the origin: palm faces the centre."""
    from scipy.spatial.transform import Rotation

    meta = hand.meta
    rest = hand.rest(1)
    verts = rest.vertices[0].numpy().astype(np.float64)
    root = rest.joints[0, 0].numpy().astype(np.float64)
    palm_c = verts[np.asarray(meta.part_ids) == 5].mean(0)
    palm_n = np.asarray(meta.palm_normal, dtype=np.float64)
    amap, asign = np.asarray(meta.joint_axis_map), np.asarray(meta.joint_axis_sign)
    out = np.zeros((num, 61), np.float32)
    for i in range(num):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        align, _ = Rotation.align_vectors([-d], [palm_n])  # palm normal -> towards the centre
        roll = Rotation.from_rotvec(d * rng.uniform(-np.pi, np.pi))
        rot = roll * align
        pose = np.zeros(45)
        for k in range(15):  # bend every joint; MANO joints 13-15 are the thumb
            thumb = k >= 12
            base = (0.35, 0.3, 0.25) if thumb else (0.7, 0.8, 0.5)
            ang = base[k % 3] + rng.uniform(-0.15, 0.15)
            pose[3 * k + amap[k, 2]] = asign[k, 2] * ang
        target = d * (radius + 0.012)
        transl = target - root - rot.apply(palm_c - root)
        out[i, SLICE_GLOBAL_ORIENT] = rot.as_rotvec()
        out[i, SLICE_HAND_POSE] = pose
        out[i, SLICE_TRANSL] = transl
    return out


def run_demo(args: argparse.Namespace) -> None:
    from dvqvae_model.checkpoint import save_checkpoint
    from dvqvae_model.nets.config import dvqvae_config, prior_config
    from dvqvae_model.nets.dvqvae import DVQVAE
    from dvqvae_model.nets.prior import GatedPixelCNNPrior

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    hand = load_hand_model(args.hand)
    radius, n_pts = 0.04, 512
    obj = sphere_points(n_pts, radius, rng).astype(np.float32)
    grasps = demo_grasps(hand, args.demo_grasps, radius, rng)
    cfg = dvqvae_config("compact", num_points=n_pts, codebook_size=16, object_codebook_size=4)
    model = DVQVAE(cfg, hand)
    pts = torch.from_numpy(obj).expand(len(grasps), -1, -1).contiguous()
    target = torch.from_numpy(grasps)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    t0 = time.time()
    model.train()
    for step in range(args.demo_steps):
        idx = torch.from_numpy(rng.choice(len(grasps), size=min(16, len(grasps)), replace=False))
        out = model(pts[idx], target[idx])
        loss = out.losses["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.demo_steps - 1:
            print(f"dvqvae step {step}: total {loss.item():.4f} ({time.time() - t0:.0f}s)", flush=True)
    model.eval()
    with torch.no_grad():
        tokens = model(pts, target, compute_losses=False).tokens
    prior = GatedPixelCNNPrior(prior_config("compact", cfg))
    popt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    prior.train()
    for step in range(300):
        loss = prior.nll(tokens)
        popt.zero_grad()
        loss.backward()
        popt.step()
    prior.eval()
    print(f"prior nll {prior.nll(tokens).item():.3f}; distinct hand-token rows {len(set(map(tuple, tokens.tolist())))}")
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(Path(tmp) / "ckpt", model, prior, kind="dvqvae", model_config=cfg,
                               prior_config=prior.cfg, hand_fingerprint=hand.fingerprint,
                               data_info={"dataset": "render_grasps demo: hand-placed grasps on a 4 cm sphere",
                                          "num_grasps": len(grasps), "steps": args.demo_steps})
        gen = GraspGenerator.from_checkpoint(ckpt, hand=hand)
    offset = np.array([0.6, -0.25, 0.9])  # any frame: the generator returns hands in it
    cloud = sphere_points(3000, radius, rng) + offset
    gs = gen.generate(cloud, args.num_grasps, temperature=args.temperature, seed=args.seed)
    print("timing", {k: round(v, 1) for k, v in gs.timing.items()}, "scores", np.round(gs.scores[: args.show], 2))
    render_grasps_png(cloud, gs, args.out, max_hands=args.show,
                      title=f"demo: DVQ-VAE overfitted on {len(grasps)} grasps of a sphere, best {args.show} of "
                            f"{len(gs)} samples")
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="checkpoint directory")
    ap.add_argument("--cloud", help="object cloud (.npy, .ply, .pcd, text)")
    ap.add_argument("--demo", action="store_true", help="overfit a compact model on synthetic grasps first")
    ap.add_argument("--hand", default="standin")
    ap.add_argument("--out", default="docs/images/sampled_grasps.png")
    ap.add_argument("--num-grasps", type=int, default=16)
    ap.add_argument("--show", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demo-grasps", type=int, default=32)
    ap.add_argument("--demo-steps", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.demo:
        run_demo(args)
        return 0
    if not args.checkpoint or not args.cloud:
        ap.error("give --checkpoint and --cloud, or --demo")
    gen = GraspGenerator.from_checkpoint(args.checkpoint, hand=args.hand)
    cloud = load_cloud(args.cloud)
    gs = gen.generate(cloud, args.num_grasps, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    render_grasps_png(cloud, gs, args.out, max_hands=args.show)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
