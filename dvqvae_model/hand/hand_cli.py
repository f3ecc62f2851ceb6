"""``dvqvae-hand``: inspect and preview the hand model.

  dvqvae-hand info [--hand SPEC] [--json]      counts, watertightness, volume, fingerprint, parts
  dvqvae-hand preview --out DIR [--hand SPEC]  PNG renders of named poses + a montage preview.png
  dvqvae-hand regen-meta                       recompute assets/standin_right_meta.npz if stale

SPEC is "standin" (default, the bundled open stand-in) or the path of a MANO_RIGHT.pkl.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["main", "hand_info", "render_poses", "PREVIEW_POSES", "PREVIEW_VIEWS"]

PREVIEW_POSES: tuple[str, ...] = ("rest", "fist", "pinch", "grasp")
# (name, elevation, azimuth) in a plotting frame where the palm faces the viewer for "palm".
PREVIEW_VIEWS: tuple[tuple[str, float, float], ...] = (("palm", 20.0, -60.0), ("side", 10.0, 25.0))
PART_COLOURS = np.array(
    [
        [0.89, 0.40, 0.33],  # thumb
        [0.95, 0.69, 0.30],  # index
        [0.55, 0.76, 0.38],  # middle
        [0.33, 0.66, 0.80],  # ring
        [0.60, 0.48, 0.80],  # pinky
        [0.85, 0.78, 0.70],  # palm
    ]
)


def hand_info(spec: str = "standin") -> dict:
    """Facts about a hand model (all numbers measured on the loaded model, rest pose, mean shape)."""
    import trimesh

    from .hand_model import load_hand_model

    hand = load_hand_model(spec)
    with torch.no_grad():
        out = hand.rest()
    v = out.vertices[0].double().numpy()
    kp = out.keypoints[0].double().numpy()
    sealed = trimesh.Trimesh(v, hand.meta.sealed_faces, process=False)
    meta = hand.meta
    return {
        "hand": hand.name,
        "fingerprint": hand.fingerprint,
        "num_vertices": int(v.shape[0]),
        "num_faces": hand.num_faces,
        "num_joints": int(out.joints.shape[1]),
        "num_keypoints": int(kp.shape[0]),
        "num_boundary_loops": len(meta.boundary_loops),
        "boundary_loop_lengths": [int(len(x)) for x in meta.boundary_loops],
        "num_cap_faces": int(len(meta.cap_faces)),
        "num_sealed_faces": int(len(meta.sealed_faces)),
        "sealed_watertight": bool(sealed.is_watertight),
        "sealed_winding_consistent": bool(sealed.is_winding_consistent),
        "sealed_volume_cm3": round(float(sealed.volume) * 1e6, 2),
        "hand_length_m": round(float(np.linalg.norm(kp[12] - kp[0])), 4),
        "part_sizes": meta.part_sizes,
        "fingertip_ids": [int(i) for i in meta.fingertip_ids],
        "num_contact_vertices": int(len(meta.contact_ids)),
    }


def _shade(v: np.ndarray, faces: np.ndarray, part_ids: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Per-face RGB: part colour (majority vertex part) times a two-sided Lambert term."""
    n = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    fp = part_ids[faces]
    maj = np.where(fp[:, 1] == fp[:, 2], fp[:, 1], fp[:, 0])
    lam = 0.35 + 0.65 * np.abs(n @ light)
    return np.clip(PART_COLOURS[maj] * lam[:, None], 0, 1)


def _to_plot_frame(v: np.ndarray) -> np.ndarray:
    """MANO frame (fingers -x, palm normal -y, thumb +z) -> plotting frame with fingers pointing up."""
    return np.stack([v[:, 2], v[:, 1], -v[:, 0]], axis=1)


def _draw(ax, v: np.ndarray, faces: np.ndarray, part_ids: np.ndarray, elev: float, azim: float, title: str) -> None:
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    p = _to_plot_frame(v)
    e, a = np.deg2rad(elev), np.deg2rad(azim)
    view_dir = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])  # towards camera
    light = view_dir + np.array([0.3, 0.2, 0.5])
    light /= np.linalg.norm(light)
    colours = _shade(p, faces, part_ids, light)
    coll = Poly3DCollection(p[faces], facecolors=colours, edgecolors="none", linewidths=0.0)
    ax.add_collection3d(coll)
    c = 0.5 * (p.max(0) + p.min(0))
    r = 0.5 * float((p.max(0) - p.min(0)).max())
    ax.set_xlim(c[0] - r, c[0] + r)
    ax.set_ylim(c[1] - r, c[1] + r)
    ax.set_zlim(c[2] - r, c[2] + r)
    ax.set_proj_type("ortho")
    ax.set_box_aspect((1, 1, 1), zoom=1.45)
    ax.view_init(elev=elev, azim=azim)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)


def render_poses(spec: str, out_dir: Path, poses: Sequence[str] = PREVIEW_POSES, size_px: int = 480) -> list[Path]:
    """Render each pose from each view to ``out_dir/<pose>_<view>.png`` plus ``preview.png``."""

    from dvqvae_model.sim.visualize import agg_figure, save_figure

    from .hand_model import load_hand_model
    from .hand_poses import named_pose_params

    hand = load_hand_model(spec)
    params = torch.cat([named_pose_params(hand.meta, p) for p in poses])
    with torch.no_grad():
        verts = hand.from_params(params).vertices.double().numpy()
    faces = hand.meta.sealed_faces
    part_ids = hand.meta.part_ids
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    dpi = 100
    for i, pose in enumerate(poses):
        for vname, elev, azim in PREVIEW_VIEWS:
            fig = agg_figure((size_px / dpi, size_px / dpi), dpi=dpi)
            ax = fig.add_subplot(111, projection="3d")
            _draw(ax, verts[i], faces, part_ids, elev, azim, f"{pose} ({vname})")
            fig.subplots_adjust(0, 0, 1, 0.95)
            written.append(save_figure(fig, out_dir / f"{pose}_{vname}.png"))
    fig = agg_figure((3.0 * len(poses), 6.0), dpi=dpi)
    for i, pose in enumerate(poses):
        for r, (vname, elev, azim) in enumerate(PREVIEW_VIEWS):
            ax = fig.add_subplot(len(PREVIEW_VIEWS), len(poses), r * len(poses) + i + 1, projection="3d")
            _draw(ax, verts[i], faces, part_ids, elev, azim, f"{pose} ({vname})")
    fig.suptitle(f"hand '{hand.name}' ({hand.fingerprint}); parts: thumb, index, middle, ring, pinky, palm", fontsize=10)
    fig.subplots_adjust(0, 0, 1, 0.9, wspace=0.0, hspace=0.1)
    written.append(save_figure(fig, out_dir / "preview.png"))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dvqvae-hand", description="Inspect and preview the hand model.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_info = sub.add_parser("info", help="counts, watertightness, volume, fingerprint, part sizes")
    p_info.add_argument("--hand", default="standin", help="'standin' or path to MANO_RIGHT.pkl")
    p_info.add_argument("--json", action="store_true", help="print JSON")
    p_prev = sub.add_parser("preview", help="render named poses to PNGs")
    p_prev.add_argument("--out", required=True, type=Path, help="output directory")
    p_prev.add_argument("--hand", default="standin", help="'standin' or path to MANO_RIGHT.pkl")
    p_prev.add_argument("--poses", default=",".join(PREVIEW_POSES), help="comma-separated pose names")
    sub.add_parser("regen-meta", help="recompute the stand-in's stored metadata if its fingerprint changed")
    args = parser.parse_args(argv)
    from .mano_pickle import UnsafePickleError

    try:
        if args.cmd == "info":
            info = hand_info(args.hand)
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                for k, val in info.items():
                    print(f"{k:28s} {val}")
        elif args.cmd == "preview":
            poses = [p.strip() for p in args.poses.split(",") if p.strip()]
            for path in render_poses(args.hand, args.out, poses):
                print(path)
        elif args.cmd == "regen-meta":
            from .hand_model import STANDIN_META, regenerate_standin_metadata

            meta = regenerate_standin_metadata()
            print(f"{STANDIN_META} fingerprint {meta.fingerprint}")
    except (FileNotFoundError, ValueError, KeyError, UnsafePickleError) as exc:
        print(f"dvqvae-hand: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
