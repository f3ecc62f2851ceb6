#!/usr/bin/env python3
"""Generate our own open stand-in right hand in MANO's exact parameterisation.

Why: MANO's licence forbids shipping it, yet the whole pipeline (hand layer,
part encoders, grasp synthesis, export) needs a hand with MANO's layout. This
script builds one from scratch, deterministically:

1. Skeleton (`standin_hand.skeleton`): 16 joints in MANO's order, kinematic
   tree and frame (fingers along -x, thumb towards +z, palm normal -y, wrist
   joint at (0.0957, 0.0064, 0.0062) m) with adult bone lengths.
2. Implicit surface (`standin_hand.implicit`): smooth union of flattened
   tapered capsules per phalanx (with finger pads), a rounded palm slab with a
   domed back, thenar and hypothenar bulges and a closed wrist stump.
3. Mesh (`standin_hand.marching`, `standin_hand.remesh`): marching tetrahedra
   on a 3.5 mm grid, then isotropic remeshing (split / collapse / flip /
   tangential relaxation, every vertex projected back onto the implicit
   surface) with a mild sizing field (fingers ~10 % finer than the palm), and an
   exact count fix-up to 778 vertices = 1552 faces (closed, genus 0). The vertex
   nearest each fingertip is snapped onto the very tip of the finger.
4. Rig (`standin_hand.rigging`): smooth LBS weights (part membership from the
   primitives, smoothstep blending across joints, graph diffusion), a joint
   regressor from rings of vertices around each joint (exact on the template),
   10 orthogonalised shape directions (size, palm width, finger length,
   thickness, palm length, index/middle/ring/pinky/thumb length), pose
   correctives (posedirs: a bulge around each bent joint, linear in MANO's
   pose feature, calibrated so a 90-degree flexion keeps the volume that plain
   LBS loses at the crease), identity hand PCA and zero hand mean.
5. Output: a protocol-2 pickle of plain numpy arrays in MANO's key layout, so
   `smplx.MANO(model_path=..., use_pca=False, flat_hand_mean=True)` loads it.

Positive pose rotations about each finger's bend axis (about +z for the four
fingers) flex the finger towards the palm.

Usage: python tools/make_standin_hand.py --out dvqvae_model/assets/standin_right.pkl
"""
from __future__ import annotations

import argparse
import os
import pickle
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from standin_hand.implicit import HandShape  # noqa: E402
from standin_hand.marching import marching_tetrahedra  # noqa: E402
from standin_hand.remesh import Mesh, Remesher  # noqa: E402
from standin_hand.rigging import (  # noqa: E402
    joint_regressor, pose_correctives, shape_directions, skinning_weights)
from standin_hand.skeleton import FINGER_JOINTS, PARENTS, Skeleton, build_skeleton  # noqa: E402

N_VERTS = 778
N_FACES = 1552
GRID_LO = np.array([-0.100, -0.050, -0.070])
GRID_HI = np.array([0.140, 0.040, 0.120])


def size_field(hs: HandShape, finger: float = 0.90, palm: float = 1.15):
    """Relative target edge length: a little finer on fingers than on the palm."""
    def fn(p: np.ndarray) -> np.ndarray:
        d = hs.part_sdfs(p)
        fing = np.minimum.reduce([d[k] for k in FINGER_JOINTS])
        t = 1.0 / (1.0 + np.exp(-np.clip((fing - d["palm"]) / 0.002, -50, 50)))
        return finger + (palm - finger) * t
    return fn


def surface_point_along(hs: HandShape, start: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Where the ray start + s d (s >= 0, start inside) leaves the surface (bisection)."""
    lo, hi = 0.0, 0.03
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if hs.sdf((start + mid * d)[None])[0] < 0:
            lo = mid
        else:
            hi = mid
    return start + 0.5 * (lo + hi) * d


def snap_fingertips(hs: HandShape, V: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Move the vertex nearest each fingertip onto the tip (extremal point)."""
    V = V.copy()
    tips: dict[str, int] = {}
    for name in FINGER_JOINTS:
        pts = hs.skel.chain_points(name)
        d = pts[3] - pts[2]
        d /= np.linalg.norm(d)
        p = surface_point_along(hs, pts[2], d)
        i = int(np.argmin(np.linalg.norm(V - p, axis=1)))
        V[i] = p
        tips[name] = i
    return V, tips


def build_mesh(hs: HandShape, grid: float = 0.0035, verbose: bool = False
               ) -> tuple[np.ndarray, np.ndarray]:
    """Closed genus-0 mesh with exactly N_VERTS vertices on the implicit surface."""
    t0 = time.time()
    v, f = marching_tetrahedra(hs.sdf, GRID_LO, GRID_HI, grid)
    mesh = Mesh(v, f)
    rm = Remesher(mesh, size_field(hs), lambda p: hs.project(p, 3))
    scale = 0.0075
    for it in range(12):
        rm.run(scale, 1)
        n = mesh.n_verts
        if verbose:
            print(f"  remesh iter {it}: {n} vertices, scale {scale * 1e3:.2f} mm, {time.time() - t0:.1f}s")
        if it >= 4:
            scale *= np.sqrt(n / N_VERTS) ** 0.7
    rm.fix_count(N_VERTS, scale)
    for _ in range(2):
        rm.flip_valence()
        rm.relax()
    V, F = mesh.arrays()
    if len(V) != N_VERTS or len(F) != N_FACES:
        raise RuntimeError(f"remeshing gave {len(V)} vertices / {len(F)} faces")
    V, _ = snap_fingertips(hs, V)
    return V, F


def kintree_table() -> np.ndarray:
    """MANO's (2,16) table: parents (root = 2**32-1 as in MANO) and joint ids."""
    par = PARENTS.copy()
    par[0] = 4294967295
    return np.stack([par, np.arange(16)]).astype(np.int64)


def build_standin(verbose: bool = False) -> dict[str, np.ndarray]:
    """Build the whole asset as a dict of plain numpy arrays (MANO key layout)."""
    skel: Skeleton = build_skeleton()
    hs = HandShape(skel)
    V, F = build_mesh(hs, verbose=verbose)
    return rig(hs, V, F)


def rig(hs: HandShape, V: np.ndarray, F: np.ndarray) -> dict[str, np.ndarray]:
    """Skinning, regressor and shape directions for a given template mesh."""
    W = skinning_weights(hs, V, F)
    R = joint_regressor(hs.skel, V)
    S, _ = shape_directions(hs.skel, V, W)
    P = pose_correctives(hs.skel, V, F, W, R, PARENTS)
    return {
        "v_template": V.astype(np.float64),
        "f": F.astype(np.int64),
        "J_regressor": R.astype(np.float64),
        "kintree_table": kintree_table(),
        "weights": W.astype(np.float64),
        "posedirs": P.astype(np.float32),
        "shapedirs": S.astype(np.float64),
        "hands_components": np.eye(45, dtype=np.float64),
        "hands_mean": np.zeros(45, dtype=np.float64),
    }


def asset_bytes(data: dict[str, np.ndarray]) -> bytes:
    """Protocol-2 pickle of plain numpy arrays (keys sorted for byte stability)."""
    return pickle.dumps({k: np.ascontiguousarray(data[k]) for k in sorted(data)}, protocol=2)


def save_asset(data: dict[str, np.ndarray], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(asset_bytes(data))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="dvqvae_model/assets/standin_right.pkl")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    t0 = time.time()
    data = build_standin(verbose=not args.quiet)
    save_asset(data, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB) in {time.time() - t0:.1f}s")


if __name__ == "__main__":
    main()
