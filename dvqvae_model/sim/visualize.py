"""Headless PNG rendering of sampled grasps (matplotlib Agg, no display, no pyplot state).

Used by docs, the CLI tools and tests to look at what the generator produced: the object
points plus a few hand meshes, seen from two directions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def render_grasps_png(
    object_points: Any,
    grasp_set: Any,
    path: Union[str, Path],
    *,
    faces: Optional[Any] = None,
    max_hands: int = 3,
    views: Sequence[tuple[float, float]] = ((25.0, -60.0), (-20.0, 120.0)),
    title: Optional[str] = None,
    size: tuple[float, float] = (10.0, 5.0),
    dpi: int = 110,
    max_object_points: int = 4000,
) -> Path:
    """Render ``object_points [N,3]`` and the best ``max_hands`` hands of ``grasp_set`` to a PNG.

    ``grasp_set`` is a ``GraspSet`` (uses ``vertices``, ``faces``, ``scores``) or an array of
    vertices ``[K,778,3]`` (then pass ``faces``). Hands are drawn in the order given (a
    ``GraspSet`` is sorted best first). Returns the written path.
    """
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    pts = _as_numpy(object_points).reshape(-1, 3)
    if hasattr(grasp_set, "vertices"):
        verts = _as_numpy(grasp_set.vertices)
        faces = grasp_set.faces if faces is None else faces
        scores = _as_numpy(grasp_set.scores) if getattr(grasp_set, "scores", None) is not None else None
    else:
        verts = _as_numpy(grasp_set)
        scores = None
    if verts.ndim == 2:
        verts = verts[None]
    if faces is None:
        raise ValueError("faces are needed to draw hand meshes")
    faces = _as_numpy(faces).astype(np.int64)
    n_hands = min(max_hands, len(verts))
    if len(pts) > max_object_points:
        pts = pts[np.linspace(0, len(pts) - 1, max_object_points).astype(np.int64)]

    every = np.concatenate([pts] + [verts[i] for i in range(n_hands)], axis=0)
    centre = 0.5 * (every.max(0) + every.min(0))
    radius = 0.5 * float((every.max(0) - every.min(0)).max()) + 1e-3

    fig = agg_figure(size, dpi=dpi)
    for vi, (elev, azim) in enumerate(views):
        ax = fig.add_subplot(1, len(views), vi + 1, projection="3d")
        ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=1.0, c="0.35", alpha=0.6, depthshade=False)
        for h in range(n_hands):
            tris = verts[h][faces]
            colour = _COLOURS[h % len(_COLOURS)]
            try:  # shaded faces read as a surface; matplotlib >= 3.7
                mesh = Poly3DCollection(tris, facecolors=colour, edgecolors=colour, linewidths=0.1,
                                        alpha=0.55, shade=True)
            except (TypeError, ValueError):
                mesh = Poly3DCollection(tris, facecolor=colour, edgecolor="none", alpha=0.55)
            ax.add_collection3d(mesh)
        for axis, c in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), centre):
            axis(c - radius, c + radius)
        ax.set_box_aspect((1.0, 1.0, 1.0))
        ax.view_init(elev=elev, azim=azim)
        ax.set_xlabel("x [m]", fontsize=7)
        ax.set_ylabel("y [m]", fontsize=7)
        ax.set_zlabel("z [m]", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_title(f"view {vi + 1} (elev {elev:g}, azim {azim:g})", fontsize=8)
    label = title or f"{n_hands} of {len(verts)} sampled grasps"
    if scores is not None and n_hands:
        label += "  |  scores: " + ", ".join(f"{s:.2f}" for s in scores[:n_hands])
    fig.suptitle(label, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


# --------------------------------------------------------------------------- figures
def agg_figure(figsize: tuple[float, float], dpi: Optional[int] = None) -> Any:
    """A matplotlib Figure on the Agg canvas (no pyplot state, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: Union[str, Path], dpi: Optional[float] = None) -> Path:
    """Write ``fig`` to ``path`` (folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if dpi is None:
        fig.savefig(path)
    else:
        fig.savefig(path, dpi=dpi)
    return path


# --------------------------------------------------------------------------- software rasterizer
def view_rotation(elev_deg: float, azim_deg: float) -> np.ndarray:
    """World -> camera rotation (rows: right, up, towards the viewer) for a view from (elev, azim)."""
    e, a = np.deg2rad(elev_deg), np.deg2rad(azim_deg)
    back = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    up0 = np.array([0.0, 0.0, 1.0]) if abs(back[2]) < 0.95 else np.array([0.0, 1.0, 0.0])
    right = np.cross(up0, back)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(back, right), back])


def rasterize(
    meshes: Sequence[tuple[np.ndarray, np.ndarray, Sequence[float]]],
    rotation: np.ndarray,
    center: np.ndarray,
    half: float,
    size: int = 320,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    density: float = 3.0,
) -> np.ndarray:
    """Orthographic z-buffered image [size,size,3] of triangle meshes (vertices, faces, rgb).

    Why our own: matplotlib's 3-D sorts whole polygons (hands show through objects) and open3d's
    offscreen renderer needs a GPU. Triangles are splatted with ``density`` samples per pixel of
    projected area and resolved per pixel by depth; flat shading by a fixed light.
    """
    light = np.array([0.3, 0.4, 1.0])
    light /= np.linalg.norm(light)
    P, Z, C = [], [], []
    rng = np.random.default_rng(0)
    for v, f, rgb in meshes:
        f = np.asarray(f, np.int64)
        vc = (np.asarray(v, np.float64) - center) @ rotation.T
        px = (vc[:, :2] / half * 0.5 + 0.5) * size
        tri, tz = px[f], vc[f][:, :, 2]
        n = np.cross(vc[f][:, 1] - vc[f][:, 0], vc[f][:, 2] - vc[f][:, 0])
        n /= np.linalg.norm(n, axis=1, keepdims=True) + 1e-12
        shade = 0.35 + 0.65 * np.abs(n @ light)
        e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
        area = 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])
        k = np.ceil(area * density).astype(np.int64) + 3
        ti = np.repeat(np.arange(len(f)), k)
        r = rng.random((len(ti), 2))
        s = np.sqrt(r[:, 0])
        b0, b1, b2 = 1 - s, s * (1 - r[:, 1]), s * r[:, 1]
        P.append(b0[:, None] * tri[ti, 0] + b1[:, None] * tri[ti, 1] + b2[:, None] * tri[ti, 2])
        Z.append(b0 * tz[ti, 0] + b1 * tz[ti, 1] + b2 * tz[ti, 2])
        C.append(np.asarray(rgb, np.float64)[None] * shade[ti, None])
    p, z, c = np.concatenate(P), np.concatenate(Z), np.concatenate(C)
    ij = np.floor(p).astype(np.int64)
    ok = (ij >= 0).all(1) & (ij < size).all(1)
    ij, z, c = ij[ok], z[ok], c[ok]
    lin = (size - 1 - ij[:, 1]) * size + ij[:, 0]
    order = np.lexsort((-z, lin))
    lo = lin[order]
    first = np.ones(len(lo), bool)
    first[1:] = lo[1:] != lo[:-1]
    img = np.ones((size * size, 3)) * np.asarray(background, np.float64)
    img[lo[first]] = c[order][first]
    return img.reshape(size, size, 3).clip(0.0, 1.0)
