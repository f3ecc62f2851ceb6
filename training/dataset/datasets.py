"""PyTorch datasets: our grasp format, the authors' ObMan arrays, folders of test meshes.

Every sample is in a *centred* frame: object points minus their mean (the model's
input convention, as ``dvqvae_model.pipeline.preprocess.prepare_cloud`` does at run time) and
hand parameters expressed in that same frame (translation shifted; rotations
composed correctly, see :func:`transform_hand_params`).

Augmentation (``Augmentation``) applies one random rigid motion to object and hand
together (uniform SO(3) rotation about the object frame's origin, plus an optional
translation), optionally replaces the full cloud by a single-view partial cloud (the
simulated depth camera of ``dvqvae_model.sim.depth_camera`` on the object's mesh, or a
visibility cut of the stored points when no mesh is at hand), adds depth noise,
drops points, resamples to N and re-centres on the observed cloud's mean.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from torch.utils.data import Dataset

from dvqvae_model.canonical_frame import check_input_frame, principal_frame
from dvqvae_model.hand.rigid_motion import WristJoint, transform_hand_params  # noqa: F401  (re-exported)
from dvqvae_training.dataset.dataset_format import DatasetReader, sample_surface

PARAM_DIM = 61
S_BETAS, S_ORIENT, S_POSE, S_TRANSL = slice(0, 10), slice(10, 13), slice(13, 58), slice(58, 61)


# =============================================================================== rigid motions of hands


def translate_hand_params(params: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """Parameters of the hand moved by x -> x + offset (only the translation changes)."""
    p = np.array(params, dtype=np.float64, copy=True)
    p[..., S_TRANSL] += np.asarray(offset, dtype=np.float64)
    return p


# =============================================================================== augmentation


@dataclasses.dataclass
class Augmentation:
    """Random view of a sample (all off by default = the stored full cloud, centred)."""

    rotate: bool = False  # uniform random SO(3) rotation of object and hand together
    translate: float = 0.0  # std (m) of a Gaussian translation of both (before re-centring)
    partial_prob: float = 0.0  # probability of a single-view partial cloud
    partial_method: str = "auto"  # "depth_camera" (needs a mesh), "visibility", or "auto"
    camera_distance: float = 0.45  # metres, for the depth camera
    depth_noise: float = 0.0  # extra Gaussian noise std (m) along the viewing ray
    dropout: float = 0.0  # fraction of points removed before resampling
    min_points: int = 64  # partial views with fewer points fall back to the full cloud
    # Partial views only: points within this height (m) of the object's lowest point along a random
    # "down" direction facing away from the camera are dropped, as a segmenter's table-plane removal
    # drops the object's base on a real table.
    table_cut: float = 0.0
    # The model's input convention, applied last (so validation and token caching use it too):
    # "centred" (translation only) or "principal" (also rotated into the observed cloud's principal
    # axes, dvqvae_model.canonical_frame; the hand moves with it, so it needs the hand model).
    input_frame: str = "centred"

    def __post_init__(self) -> None:
        check_input_frame(self.input_frame)
        if self.partial_method not in ("auto", "depth_camera", "visibility"):
            raise ValueError(f"unknown partial_method {self.partial_method!r}")
        if not 0.0 <= self.partial_prob <= 1.0:
            raise ValueError(f"partial_prob is a probability in [0, 1], got {self.partial_prob}")
        if self.depth_noise < 0.0 or self.table_cut < 0.0:
            raise ValueError(f"depth_noise and table_cut are lengths >= 0 (m), got {self.depth_noise}, {self.table_cut}")


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    return Rotation.random(random_state=rng.integers(2**31)).as_matrix()


def random_view_direction(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def visible_points(points: np.ndarray, normals: np.ndarray, camera: np.ndarray) -> np.ndarray:
    """Indices of points a camera at ``camera`` sees: facing it and not hidden
    (open3d hidden-point removal on the cloud)."""
    import open3d as o3d

    facing = np.nonzero(((camera - points) * normals).sum(1) > 0)[0]
    if len(facing) < 4:
        return facing
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points[facing].astype(np.float64)))
    radius = float(np.linalg.norm(camera - points.mean(0))) * 100.0
    try:
        _, idx = pcd.hidden_point_removal(camera.astype(np.float64), radius)
    except RuntimeError:  # degenerate hull (coplanar points): keep the facing ones
        return facing
    return facing[np.asarray(idx, dtype=np.int64)]


def table_cut_keep(points: np.ndarray, view_dir: np.ndarray, cut: float, rng: np.random.Generator) -> np.ndarray:
    """Mask of the points a table-plane removal keeps: the table lies under the object along a
    random "down" direction that points away from the camera (a camera looks down at a table)."""
    down = random_view_direction(rng)
    if down @ view_dir > 0:  # view_dir points from the object to the camera: down must oppose it
        down = -down
    height = points @ -down
    return height > height.min() + cut


def resample(n_total: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices into n_total items: a permutation subset, or all plus draws with replacement."""
    if n_total >= n:
        return rng.permutation(n_total)[:n]
    extra = rng.integers(0, n_total, size=n - n_total)
    return np.concatenate([rng.permutation(n_total), extra])


def make_view(
    points: np.ndarray,
    normals: np.ndarray,
    params: np.ndarray | None,
    wrist: np.ndarray | None,
    aug: Augmentation,
    rng: np.random.Generator,
    num_points: int,
    mesh_fn: Callable[[], Any] | None = None,
) -> dict[str, np.ndarray]:
    """Apply ``aug`` to one object cloud (+ optional hand) and centre the result.

    Returns points [N,3], normals [N,3], params [61] (if given), center [3] (the frame
    offset that was subtracted, in the rotated frame), rotation [3,3], partial flag.
    """
    pts = np.asarray(points, dtype=np.float64)
    nrm = np.asarray(normals, dtype=np.float64)
    R = random_rotation(rng) if aug.rotate else np.eye(3)
    t = rng.normal(scale=aug.translate, size=3) if aug.translate > 0 else np.zeros(3)
    partial = False
    if aug.partial_prob > 0 and rng.random() < aug.partial_prob:
        method = aug.partial_method
        if method == "auto":
            method = "depth_camera" if mesh_fn is not None else "visibility"
        if method == "depth_camera":
            if mesh_fn is None:
                raise ValueError("partial_method='depth_camera' needs the object's mesh")
            from dvqvae_model.sim.depth_camera import capture_object_cloud, transform_points

            mesh = mesh_fn()
            reach = float(np.linalg.norm(np.asarray(mesh.vertices) - mesh.bounds.mean(0), axis=1).max())
            cam_pts, cam_to_world = capture_object_cloud(
                mesh, rng, distance=max(aug.camera_distance, 1.5 * reach), noise=aug.depth_noise > 0,
                sigma_base=aug.depth_noise, sigma_quadratic=0.0,
            )  # fmt: skip
            view = transform_points(cam_pts, cam_to_world)
            if len(view) >= aug.min_points:
                _, nn = cKDTree(pts).query(view)
                view_dir = cam_to_world[:3, 3] - view.mean(0)
                pts, nrm, partial = view, nrm[nn], True
        else:
            view_dir = random_view_direction(rng)
            cam = pts.mean(0) + aug.camera_distance * view_dir
            idx = visible_points(pts, nrm, cam)
            if len(idx) >= aug.min_points:
                pts, nrm, partial = pts[idx], nrm[idx], True
                if aug.depth_noise > 0:
                    ray = pts - cam
                    ray /= np.linalg.norm(ray, axis=1, keepdims=True)
                    pts = pts + ray * rng.normal(scale=aug.depth_noise, size=(len(pts), 1))
        if partial and aug.table_cut > 0:
            keep = table_cut_keep(pts, view_dir / np.linalg.norm(view_dir), aug.table_cut, rng)
            if keep.sum() >= aug.min_points:
                pts, nrm = pts[keep], nrm[keep]
    elif aug.depth_noise > 0:
        pts = pts + rng.normal(scale=aug.depth_noise, size=pts.shape)
    if aug.dropout > 0 and len(pts) > aug.min_points:
        keep = rng.random(len(pts)) >= aug.dropout
        if keep.sum() >= aug.min_points:
            pts, nrm = pts[keep], nrm[keep]
    sel = resample(len(pts), num_points, rng)
    pts, nrm = pts[sel] @ R.T + t, nrm[sel] @ R.T
    center = pts.mean(0)
    moved = aug.rotate
    if aug.input_frame == "principal":  # x -> C (R x + t - center): rotate the centred view into its own axes
        C = principal_frame(pts - center)
        pts, nrm, center, t, R = pts @ C.T, nrm @ C.T, center @ C.T, t @ C.T, C @ R
        moved = True
    out: dict[str, np.ndarray] = {
        "points": (pts - center).astype(np.float32),
        "normals": nrm.astype(np.float32),
        "center": center.astype(np.float32),
        "rotation": R.astype(np.float32),
        "partial": np.array(partial),
    }
    if params is not None:
        hand = transform_hand_params(params, R, t - center, wrist) if moved else translate_hand_params(params, t - center)
        out["params"] = hand.astype(np.float32)
    return out


def _to_torch(d: dict[str, Any]) -> dict[str, Any]:
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in d.items()}


# =============================================================================== our format


class GraspDataset(Dataset):
    """Grasps of one split of a :class:`DatasetReader` dataset.

    Item: points [N,3], normals [N,3], params [61] (float32 tensors, centred frame),
    center [3], rotation [3,3], partial (bool), grasp_type (int), metrics [M],
    object_id (str). ``hand`` (a HandModel) is required when ``augment.rotate``.
    ``mesh_cache`` objects' meshes are rebuilt from their recipe / path for the
    depth-camera partial views and kept in an LRU cache of that size.
    """

    def __init__(
        self,
        root: str | os.PathLike | DatasetReader,
        split: str = "train",
        *,
        num_points: int | None = None,
        augment: Augmentation | None = None,
        hand: Any = None,
        seed: int = 0,
        metric_filter: Callable[[np.ndarray], bool] | None = None,
        mesh_cache: int = 8,
    ):
        # all shards stay in memory (random access over grasps would thrash a small LRU);
        # pass your own DatasetReader to bound memory instead
        self.reader = root if isinstance(root, DatasetReader) else DatasetReader(root, cache_shards=1 << 30)
        self.split = split
        self.num_points = int(num_points or self.reader.num_points)
        self.augment = augment or Augmentation()
        if (self.augment.rotate or self.augment.input_frame != "centred") and hand is None:
            raise ValueError("rotation augmentation and the principal input frame need the hand model (for the wrist joint)")
        if hand is not None and hand.fingerprint != self.reader.hand_fingerprint:
            raise ValueError(
                f"hand model fingerprint {hand.fingerprint} differs from the dataset's {self.reader.hand_fingerprint}"
            )
        self.wrist = WristJoint(hand) if hand is not None else None
        self.seed = int(seed)
        self.epoch = 0
        index = self.reader.grasp_index(split)
        if metric_filter is not None:
            keep = [metric_filter(self.reader.grasp(int(s), int(r))["metrics"]) for s, r in index]
            index = index[np.asarray(keep, dtype=bool)] if len(index) else index
        self.index = index
        self._meshes: OrderedDict[str, Any] = OrderedDict()
        self._mesh_cache = mesh_cache

    def set_epoch(self, epoch: int) -> None:
        """Different augmentations per epoch, reproducible for a given (seed, epoch, index)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.index)

    def _mesh(self, object_id: str, source: str) -> Any:
        if object_id in self._meshes:
            self._meshes.move_to_end(object_id)
            return self._meshes[object_id]
        mesh = mesh_from_source(source)
        self._meshes[object_id] = mesh
        while len(self._meshes) > self._mesh_cache:
            self._meshes.popitem(last=False)
        return mesh

    def __getitem__(self, i: int) -> dict[str, Any]:
        shard, row = (int(v) for v in self.index[i])
        g = self.reader.grasp(shard, row)
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        wrist = self.wrist(g["params"][S_BETAS]) if self.wrist is not None else None
        mesh_fn = (lambda: self._mesh(g["object_id"], g["source"])) if _has_mesh(g["source"]) else None
        view = make_view(g["points"], g["normals"], g["params"], wrist, self.augment, rng, self.num_points, mesh_fn)
        view.update({"grasp_type": int(g["grasp_type"]), "metrics": g["metrics"].astype(np.float32), "object_id": g["object_id"]})
        return _to_torch(view)


def _has_mesh(source: str) -> bool:
    try:
        d = json.loads(source)
    except json.JSONDecodeError:
        return False
    return isinstance(d, dict) and ("recipe" in d or "mesh" in d)


def mesh_from_source(source: str) -> Any:
    """Rebuild an object's mesh from its ``object_source`` JSON ({"recipe": ...} or {"mesh": path, ...})."""
    from dvqvae_training.synthesis.objects import ObjectRecipe, load_mesh, load_random_urdf, make_object

    d = json.loads(source)
    if "recipe" in d:
        return make_object(ObjectRecipe.from_dict(d["recipe"]))
    if "random_urdf" in d:  # as synthesized: through its URDF (scale, origin), not the bare mesh file
        return load_random_urdf(int(d["random_urdf"]))
    if "mesh" in d:
        kw = {k: d[k] for k in ("units", "scale") if k in d}
        return load_mesh(d["mesh"], **kw)
    raise ValueError(f"object source has neither a recipe nor a mesh: {source[:80]}")


# =============================================================================== the authors' ObMan arrays


class ObManArrays(Dataset):
    """The authors' preprocessed ObMan arrays: ``obj_pc_{mode}.npy`` [S,4,3000] and
    ``hand_param_{mode}.npy`` [S,61].

    Channels of obj_pc: x, y, z (metres, ObMan camera frame, not centred) and the
    object's scale factor repeated per point (their preprocessing appends
    ``meta['obj_scale']``). Hand params share the camera frame. Items are centred
    like ours (points minus their mean, hand translation shifted) and carry
    ``scale``; the MANO parameter convention is the authors' (axis-angle, flat mean).
    Normals are not stored by the authors: ``normals`` is zero unless
    ``estimate_normals`` (open3d PCA normals, oriented away from the centroid).
    Arrays are memory-mapped (no pickle).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        mode: str = "train",
        *,
        num_points: int = 3000,
        augment: Augmentation | None = None,
        hand: Any = None,
        seed: int = 0,
        estimate_normals: bool = False,
    ):
        folder = Path(folder)
        self.obj_pc = np.load(folder / f"obj_pc_{mode}.npy", mmap_mode="r", allow_pickle=False)
        self.hand_param = np.load(folder / f"hand_param_{mode}.npy", mmap_mode="r", allow_pickle=False)
        if self.obj_pc.ndim != 3 or self.obj_pc.shape[1] != 4:
            raise ValueError(f"obj_pc_{mode}.npy must be [S,4,N], got {self.obj_pc.shape}")
        if self.hand_param.shape != (len(self.obj_pc), PARAM_DIM):
            raise ValueError(f"hand_param_{mode}.npy must be [{len(self.obj_pc)},61], got {self.hand_param.shape}")
        self.num_points = int(num_points)
        self.augment = augment or Augmentation()
        if (self.augment.rotate or self.augment.input_frame != "centred") and hand is None:
            raise ValueError("rotation augmentation and the principal input frame need the hand model (for the wrist joint)")
        self.wrist = WristJoint(hand) if hand is not None else None
        self.seed = int(seed)
        self.epoch = 0
        self.estimate_normals = estimate_normals

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.obj_pc)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pc = np.asarray(self.obj_pc[i], dtype=np.float64)
        pts, scale = pc[:3].T, float(pc[3, 0])
        params = np.asarray(self.hand_param[i], dtype=np.float64)
        nrm = _estimate_normals(pts) if self.estimate_normals else np.zeros_like(pts)
        rng = np.random.default_rng([self.seed, self.epoch, int(i)])
        wrist = self.wrist(params[S_BETAS]) if self.wrist is not None else None
        view = make_view(pts, nrm, params, wrist, self.augment, rng, self.num_points)
        view["scale"] = np.float32(scale)
        return _to_torch(view)


def _estimate_normals(points: np.ndarray) -> np.ndarray:
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(16))
    n = np.asarray(pcd.normals)
    flip = ((points - points.mean(0)) * n).sum(1) < 0
    n[flip] *= -1
    return n


# =============================================================================== folders of test meshes


class MeshFolderDataset(Dataset):
    """Object meshes of a test set (HO-3D / FPHA / GRAB style folders, URDFs too).

    Every mesh file under ``folder`` (recursive; see ``objects.find_mesh_files``) is
    loaded with ``objects.load_mesh`` (unit guessing unless ``units`` is given), its
    surface sampled (``num_points``, seeded per file) and centred. Meshes that cannot be
    used are listed in ``rejected`` [(path, reason)] instead of failing the whole set.
    Item: points [N,3], normals [N,3], center [3] (in the mesh's loaded frame),
    name (path relative to the folder), index.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        num_points: int = 3000,
        units: str = "auto",
        scale: float | None = None,
        allow_convex_hull: bool = False,
        seed: int = 0,
        keep_meshes: bool = True,
    ):
        from dvqvae_training.synthesis.objects import MeshRejected, find_mesh_files, load_mesh

        self.folder = Path(folder)
        self.num_points = int(num_points)
        self.items: list[dict[str, Any]] = []
        self.meshes: list[Any] = []
        self.rejected: list[tuple[str, str]] = []
        for k, path in enumerate(find_mesh_files(self.folder)):
            try:
                mesh = load_mesh(path, units=units, scale=scale, allow_convex_hull=allow_convex_hull)
            except MeshRejected as e:
                self.rejected.append((path, e.reason))
                continue
            pts, nrm = sample_surface(mesh, self.num_points, seed=seed + k)
            center = pts.mean(0)
            self.items.append(
                {"points": pts - center, "normals": nrm, "center": center.astype(np.float32),
                 "name": os.path.relpath(path, self.folder)}
            )  # fmt: skip
            if keep_meshes:
                self.meshes.append(mesh)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        it = self.items[i]
        return {
            "points": torch.from_numpy(np.ascontiguousarray(it["points"], dtype=np.float32)),
            "normals": torch.from_numpy(np.ascontiguousarray(it["normals"], dtype=np.float32)),
            "center": torch.from_numpy(it["center"]),
            "name": it["name"],
            "index": i,
        }

    def mesh(self, i: int) -> Any:
        """The loaded (watertight, metres, bbox-centred) mesh of item i; shift it by
        ``-item['center']`` to put it in the item's centred frame."""
        return self.meshes[i]
