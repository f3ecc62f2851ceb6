"""Marching tetrahedra on a regular grid (no scikit-image needed).

Why: we need a watertight, consistently oriented triangle mesh of the zero
level set of the hand's implicit function. The Kuhn (Freudenthal) split of
every cube into six tetrahedra along the main diagonal is a consistent
triangulation of space, so the extracted surface is closed and manifold as
long as no grid value is exactly zero (values are nudged away from zero).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

# the 8 cube corners as (i, j, k) offsets, and the 6 Kuhn tetrahedra (corner ids)
_CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
_TETS = np.array([
    [0, 4, 6, 7], [0, 4, 5, 7], [0, 2, 6, 7], [0, 2, 3, 7], [0, 1, 5, 7], [0, 1, 3, 7],
])


def marching_tetrahedra(
    fn: Callable[[np.ndarray], np.ndarray], lo: np.ndarray, hi: np.ndarray, h: float
) -> tuple[np.ndarray, np.ndarray]:
    """Extract the zero level set of `fn` on [lo, hi] with spacing h.

    Returns (vertices [V,3], faces [F,3]) with outward (+gradient) orientation.
    """
    n = np.ceil((hi - lo) / h).astype(int) + 1
    ax = [lo[i] + h * np.arange(n[i]) for i in range(3)]
    grid = np.stack(np.meshgrid(*ax, indexing="ij"), axis=-1).reshape(-1, 3)
    vals = np.concatenate([fn(grid[s:s + 200000]) for s in range(0, len(grid), 200000)])
    vals = np.where(np.abs(vals) < 1e-12, 1e-12, vals)
    vals = vals.reshape(n)

    # flat index of every cube's origin corner
    ci = np.stack(np.meshgrid(*[np.arange(m - 1) for m in n], indexing="ij"), axis=-1).reshape(-1, 3)
    strides = np.array([n[1] * n[2], n[2], 1])
    corner_off = _CORNERS @ strides
    base = ci @ strides
    flat = vals.reshape(-1)
    # keep cubes with a sign change only
    cv = flat[base[:, None] + corner_off[None, :]]
    mixed = (cv.min(axis=1) < 0) & (cv.max(axis=1) > 0)
    base = base[mixed]

    tri_edges = []  # each triangle as 3 edges (pairs of grid ids)
    for tet in _TETS:
        ids = base[:, None] + corner_off[tet][None, :]  # [C,4]
        inside = flat[ids] < 0
        code = inside @ np.array([1, 2, 4, 8])
        for c in range(1, 15):
            sel = code == c
            if not sel.any():
                continue
            t = ids[sel]
            ins = [i for i in range(4) if (c >> i) & 1]
            outs = [i for i in range(4) if not (c >> i) & 1]
            if len(ins) == 1 or len(outs) == 1:
                lone = ins if len(ins) == 1 else outs
                others = outs if len(ins) == 1 else ins
                e = [(lone[0], o) for o in others]
                tri_edges.append(np.stack([np.stack([t[:, a], t[:, b]], -1) for a, b in e], 1))
            else:
                a0, a1 = ins
                b0, b1 = outs
                quad = [(a0, b0), (a0, b1), (a1, b1), (a1, b0)]
                q = np.stack([np.stack([t[:, a], t[:, b]], -1) for a, b in quad], 1)
                tri_edges.append(q[:, [0, 1, 2]])
                tri_edges.append(q[:, [0, 2, 3]])
    te = np.concatenate(tri_edges, 0)  # [T,3,2]
    te = np.sort(te, axis=2)
    keys = te[..., 0].astype(np.int64) * flat.size + te[..., 1]
    uniq, inv = np.unique(keys.reshape(-1), return_inverse=True)
    i0, i1 = uniq // flat.size, uniq % flat.size
    f0, f1 = flat[i0], flat[i1]
    t = f0 / (f0 - f1)
    p0 = np.stack(np.unravel_index(i0, n), -1) * h + lo
    p1 = np.stack(np.unravel_index(i1, n), -1) * h + lo
    verts = p0 + t[:, None] * (p1 - p0)
    faces = inv.reshape(-1, 3)

    # orient every triangle along the outward gradient (inside value -> outside value)
    g = (p1 - p0) * np.sign(f1 - f0)[:, None]  # per edge vertex: direction of increase
    fn_ = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    gdir = g[faces].sum(axis=1)
    flip = np.einsum("ij,ij->i", fn_, gdir) < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    return verts, faces.astype(np.int64)
