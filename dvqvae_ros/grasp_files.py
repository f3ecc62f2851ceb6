"""The ROS-free parts of ``dvqvae-grasp``: object inputs, grasp files (npz, PLY, HTML, PNG), quality numbers."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["load_object_cloud", "write_grasp_files", "quick_quality", "resolve_model", "format_quality"]

CLOUD_SUFFIXES = (".npy", ".xyz", ".txt", ".pcd")


# ---------------------------------------------------------------------------------------- inputs
def load_object_cloud(spec: str, num_points: int, *, partial_view: bool, seed: int) -> tuple[np.ndarray, Any]:
    """(points [N,3] float32, mesh or None) for a sample-object name, a mesh file or a point-cloud file."""
    import trimesh

    path = Path(spec).expanduser()
    if path.suffix.lower() in CLOUD_SUFFIXES or (path.suffix.lower() == ".ply" and _ply_is_cloud(path)):
        if partial_view:
            raise ValueError("--partial-view needs a mesh; the object given is already a point cloud")
        return _read_cloud(path), None
    from dvqvae_model.sim.sample_objects import load_object

    mesh = load_object(spec)
    rng = np.random.default_rng(seed)
    if partial_view:
        from dvqvae_model.sim import depth_camera as dc

        points_cam, cam_to_world = dc.capture_object_cloud(mesh, rng)
        points = dc.transform_points(points_cam, cam_to_world)  # back into the object's frame
    else:
        points, _ = trimesh.sample.sample_surface(mesh, max(num_points, 3000), seed=int(seed))
    return np.asarray(points, dtype=np.float32), mesh


def _ply_is_cloud(path: Path) -> bool:
    import trimesh

    return isinstance(trimesh.load(str(path)), trimesh.PointCloud)


def _read_cloud(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (EOFError, ValueError, OSError) as exc:  # empty, truncated, pickled or not a .npy at all
            raise ValueError(f"{path}: not a readable .npy point array ({type(exc).__name__}: {exc})") from None
    elif suffix in (".xyz", ".txt"):
        arr = np.loadtxt(path, ndmin=2)[:, :3]
    else:  # .ply / .pcd
        import open3d as o3d

        arr = np.asarray(o3d.io.read_point_cloud(str(path)).points) if suffix == ".pcd" else None
        if arr is None:
            import trimesh

            arr = np.asarray(trimesh.load(str(path)).vertices)
    if getattr(arr, "dtype", np.dtype(np.float32)).kind not in "biuf":
        raise ValueError(f"{path}: expected numbers, got dtype {arr.dtype}")
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise ValueError(f"{path}: expected an [N,3] point array, got shape {arr.shape}")
    return arr[:, :3]


# --------------------------------------------------------------------------------------- outputs
def write_grasp_files(out: Path, *, vertices: np.ndarray, mano: np.ndarray, keypoints: np.ndarray,
                      scores: np.ndarray, hand: Any, object_points: np.ndarray, title: str,
                      terms: Optional[dict[str, np.ndarray]] = None) -> dict[str, Path]:
    """grasps.npz, grasp_XX.ply, object_points.ply, viewer.html and grasps.png in ``out``, all or none.

    ``terms``: what each score is made of (name -> [K]); stored as ``score_terms`` [K, T] with
    ``score_term_names`` and shown in the viewer.

    The set is written into a staging folder and moved into ``out`` only once every file is complete
    (``dvqvae_model.io.staged_directory``): a full disk or an interrupted run leaves no half-written file.
    """
    from dvqvae_model.io import staged_directory

    with staged_directory(out, stale=("grasp_*.ply",)) as stage:
        paths = _write_grasp_files(stage, vertices=vertices, mano=mano, keypoints=keypoints, scores=scores,
                                   hand=hand, object_points=object_points, title=title, terms=terms)
    return {key: out / p.name for key, p in paths.items()}


def _write_grasp_files(out: Path, *, vertices: np.ndarray, mano: np.ndarray, keypoints: np.ndarray,
                       scores: np.ndarray, hand: Any, object_points: np.ndarray, title: str,
                       terms: Optional[dict[str, np.ndarray]] = None) -> dict[str, Path]:
    import trimesh

    from dvqvae_model.pipeline.grasp_quality import TERM_NAMES

    from dvqvae_model.sim.visualize import render_grasps_png

    faces = hand.faces.detach().cpu().numpy().astype(np.int64)
    sealed = hand.sealed_faces.detach().cpu().numpy().astype(np.int64)
    paths = {"npz": out / "grasps.npz"}
    table = np.full((len(scores), len(TERM_NAMES)), np.nan, dtype=np.float32)
    for j, name in enumerate(TERM_NAMES):
        if terms and name in terms:
            table[:, j] = np.asarray(terms[name], dtype=np.float32).reshape(-1)
    _atomic_savez(paths["npz"], vertices=vertices.astype(np.float32), faces=faces, sealed_faces=sealed,
                  mano=mano.astype(np.float32), keypoints=keypoints.astype(np.float32),
                  scores=scores.astype(np.float32), score_terms=table, score_term_names=np.array(TERM_NAMES))
    for i, v in enumerate(vertices):
        trimesh.Trimesh(v, faces, process=False).export(out / f"grasp_{i:02d}.ply")
    trimesh.PointCloud(object_points).export(out / "object_points.ply")
    labels = [f"score {s:.2f}" + "".join(f", {n} {table[i, j]:.2f}" for j, n in enumerate(TERM_NAMES)
                                         if np.isfinite(table[i, j])) for i, s in enumerate(scores)]
    paths["html"] = _write_viewer(out / "viewer.html", object_points, vertices, faces, labels, title)
    paths["png"] = render_grasps_png(object_points, vertices[: min(3, len(vertices))], out / "grasps.png",
                                     faces=faces, max_hands=3, title=title)
    return paths


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    import io

    from dvqvae_model.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _write_viewer(path: Path, points: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                  labels: Sequence[str], title: str) -> Path:
    """An interactive, self-contained (offline) plotly page: object points and every hand."""
    import plotly.graph_objects as go

    step = max(1, len(points) // 6000)
    data: list[Any] = [go.Scatter3d(x=points[::step, 0], y=points[::step, 1], z=points[::step, 2], mode="markers",
                                    marker=dict(size=1.5, color="#555555"), name="object")]
    for i, v in enumerate(vertices):
        data.append(go.Mesh3d(x=v[:, 0], y=v[:, 1], z=v[:, 2], i=faces[:, 0], j=faces[:, 1], k=faces[:, 2],
                              color="#e0a080", opacity=1.0 if i == 0 else 0.5, flatshading=False,
                              name=f"grasp {i} ({labels[i]})", showlegend=True,
                              visible=True if i < 3 else "legendonly"))
    fig = go.Figure(data=data)
    fig.update_layout(title=title, scene=dict(aspectmode="data"), margin=dict(l=0, r=0, t=40, b=0))
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def quick_quality(vertices: np.ndarray, hand: Any, mesh: Any, *, simulate: bool = True) -> dict[str, float]:
    """Contact ratio, penetration volume and simulated displacement of hands against an object mesh."""
    from dvqvae_training.evaluate.metrics import evaluate_grasps

    ev = evaluate_grasps(vertices, hand.sealed_faces.cpu().numpy(), hand.faces.cpu().numpy(), mesh,
                         simulate=simulate, pitch=0.002)
    return ev.summary()


def resolve_model(spec: str) -> Path:
    from dvqvae_model.checkpoint import (
        DEFAULT_MODEL_DIR,
        CheckpointError,
        resolve_checkpoint,
    )

    try:  # the checkpoint resolver, not the node's: this path must not import ROS
        return resolve_checkpoint(spec, default_dir=DEFAULT_MODEL_DIR)
    except CheckpointError as exc:  # a bad argument: one "error:" line and exit code 2 from the CLI
        raise ValueError(f"--model {spec}: {exc}") from None


def format_quality(q: dict[str, float]) -> str:
    parts = [f"contact {100 * q['contact_ratio']:.0f} %", f"penetration {q['penetration_cm3']:.2f} cm^3"]
    if "displacement_cm" in q:
        parts += [f"sim. displacement {q['displacement_cm']:.2f} cm", f"Q {q['quality_index']:.2f}"]
    return "quality: " + ", ".join(parts) + f" (penetration pitch {q['pitch_mm']:.0f} mm)"
