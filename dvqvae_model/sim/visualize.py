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
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
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

    fig = Figure(figsize=size, dpi=dpi)
    FigureCanvasAgg(fig)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
