"""Object segmentation for a tabletop depth view: support plane out, clusters on it, one target kept.

A real depth camera sees the whole scene; the grasp generator wants one object's points. This
module turns a depth image (or a scene point cloud) into the chosen object's points:

1. **Support plane** (RANSAC, open3d ``segment_plane``) on a strided sample of the valid pixels,
   refined by least squares on its inliers and oriented towards the camera. With an expected
   ``plane_normal`` (camera frame), planes tilted more than ``max_normal_angle_deg`` from it are
   skipped and the next one is searched (up to ``max_planes``). A plane needs at least
   ``min_plane_fraction`` of the sampled points.
2. **Objects** are the points between ``min_height`` (or 3 sigma of the table's measured depth noise, if
   larger) and ``max_height`` above the plane, clustered with
   DBSCAN (open3d ``cluster_dbscan``, ``cluster_eps``) on the same strided sample; a cluster whose
   centroid does not lie over the plane's inliers (a wall, the floor past the table edge) is dropped.
3. **Target rule** (``target``): ``nearest_axis`` (default: the cluster whose centroid makes the
   smallest angle with the optical axis, i.e. the object the camera is pointed at; needs an optical
   frame, z forward), ``largest`` (most points), ``crop_box`` (most points inside ``crop_box``) or
   ``clicked`` (the cluster nearest the clicked point, within ``click_radius``).
4. Every full-resolution pixel above the plane takes the label of the nearest of its strided
   neighbours (within ``cluster_eps``); the bottom rim of the target (within ``min_height`` of the
   plane, lost in step 2) is recovered where it lies over the target's own footprint.

With a ``mask`` (e.g. from an instance-segmentation network) the masked valid pixels are the object,
minus pixels within ``plane_distance`` of the plane (mask bleed onto the table): no clustering.
Failures never raise: the result carries a status and a warning, and no points (no cloud is better
than a wrong one).

Depth images: 16UC1 / mono16 in millimetres (0 = no return) and 32FC1 in metres (0, NaN, inf = no
return), decoded from raw buffers by ``decode_depth`` (no ROS types here).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import numpy as np

__all__ = [
    "DEPTH_ENCODINGS",
    "MASK_ENCODINGS",
    "TARGET_RULES",
    "SegmenterConfig",
    "SegmentationResult",
    "Segmenter",
    "decode_depth",
    "decode_mask",
    "depth_to_cloud",
]

DEPTH_ENCODINGS = {"16UC1": (np.uint16, 0.001), "mono16": (np.uint16, 0.001), "32FC1": (np.float32, 1.0)}
MASK_ENCODINGS = {"mono8": np.uint8, "8UC1": np.uint8, "16UC1": np.uint16, "mono16": np.uint16,
                  "32SC1": np.int32}
TARGET_RULES = ("nearest_axis", "largest", "crop_box", "clicked")
PLANE_SAMPLE = 5000  # points given to RANSAC

# statuses
OK = "ok"
NO_DEPTH = "no_valid_depth"
NO_PLANE = "no_plane"
NO_OBJECT = "no_object"
NO_TARGET = "no_target"


class CameraIntrinsics(Protocol):
    """A pinhole camera (pixel centres at integer coordinates, as in CameraInfo's K), e.g.
    ``dvqvae_model.sim.depth_camera.CameraIntrinsics``; anything with these attributes will do."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float


# ----------------------------------------------------------------------------------- decoding
def _decode(data: Any, encoding: str, width: int, height: int, step: int, big_endian: bool,
            dtype: Any, what: str) -> np.ndarray:
    if width <= 0 or height <= 0:
        raise ValueError(f"{what} image is empty ({width} x {height})")
    dt = np.dtype(dtype).newbyteorder(">" if big_endian else "<")
    row = width * dt.itemsize
    if step < row:
        raise ValueError(f"{what} image step {step} is smaller than width * {dt.itemsize} = {row} bytes ({encoding})")
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size < step * (height - 1) + row:
        raise ValueError(f"{what} image data has {raw.size} bytes; {width} x {height} {encoding} with step {step} "
                         f"needs {step * height}")
    rows = np.lib.stride_tricks.as_strided(raw, shape=(height, row), strides=(step, 1), writeable=False)
    return np.ascontiguousarray(rows).view(dt).reshape(height, width).astype(dt.newbyteorder("="), copy=False)


def decode_depth(data: Any, encoding: str, width: int, height: int, step: int,
                 big_endian: bool = False) -> np.ndarray:
    """Depth in metres [H, W] float32 with NaN where there is no return, from a raw image buffer.

    Raises ValueError naming the problem for an unsupported encoding or a short buffer.
    """
    if encoding not in DEPTH_ENCODINGS:
        raise ValueError(f"unsupported depth encoding {encoding!r}; expected one of {', '.join(DEPTH_ENCODINGS)} "
                         "(16UC1/mono16 = millimetres, 32FC1 = metres)")
    dtype, scale = DEPTH_ENCODINGS[encoding]
    raw = _decode(data, encoding, width, height, step, big_endian, dtype, "depth")
    depth = raw.astype(np.float32)
    if scale != 1.0:
        depth *= np.float32(scale)
    depth[~(np.isfinite(depth) & (depth > 0))] = np.nan
    return depth


def decode_mask(data: Any, encoding: str, width: int, height: int, step: int, big_endian: bool = False,
                label: int = 0) -> np.ndarray:
    """Boolean [H, W] object mask: pixels equal to ``label``, or every non-zero pixel when ``label`` is 0."""
    if encoding not in MASK_ENCODINGS:
        raise ValueError(f"unsupported mask encoding {encoding!r}; expected one of {', '.join(MASK_ENCODINGS)}")
    raw = _decode(data, encoding, width, height, step, big_endian, MASK_ENCODINGS[encoding], "mask")
    return raw != 0 if label == 0 else raw == label


def _rays(intrinsics: CameraIntrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Per-column x/z and per-row y/z of the pixel rays (pixel centres at integer coordinates)."""
    ru = ((np.arange(intrinsics.width, dtype=np.float64) - intrinsics.cx) / intrinsics.fx).astype(np.float32)
    rv = ((np.arange(intrinsics.height, dtype=np.float64) - intrinsics.cy) / intrinsics.fy).astype(np.float32)
    return ru, rv


def depth_to_cloud(depth: np.ndarray, intrinsics: CameraIntrinsics) -> np.ndarray:
    """Organized camera-frame cloud [H, W, 3] float32 (NaN where there is no return)."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.shape != (intrinsics.height, intrinsics.width):
        raise ValueError(f"depth image is {depth.shape[1]} x {depth.shape[0]} but the camera info says "
                         f"{intrinsics.width} x {intrinsics.height}")
    z = np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(np.nan))
    ru, rv = _rays(intrinsics)
    out = np.empty(depth.shape + (3,), dtype=np.float32)
    np.multiply(z, ru[None, :], out=out[..., 0])
    np.multiply(z, rv[:, None], out=out[..., 1])
    out[..., 2] = z
    return out


# ----------------------------------------------------------------------------------- config / result
@dataclass(frozen=True)
class SegmenterConfig:
    """Segmentation settings (metres, camera frame). See the module docstring for the steps."""

    plane_distance: float = 0.006  # RANSAC inlier distance
    plane_normal: tuple[float, ...] = ()  # expected support-plane normal (camera frame); () = any plane
    max_normal_angle_deg: float = 30.0
    min_plane_fraction: float = 0.1  # of the sampled valid points
    max_planes: int = 3
    ransac_iterations: int = 150
    min_height: float = 0.008  # object points start this far above the plane
    max_height: float = 0.5
    max_range: float = 4.0  # ignore returns farther than this (m)
    cluster_eps: float = 0.02
    cluster_min_points: int = 5  # DBSCAN core-point neighbours, on the strided sample
    min_object_points: int = 100  # at full resolution
    stride: int = 0  # sampling stride in pixels for plane and clustering; 0 = from cluster_eps and depth
    max_sample_points: int = 30000  # unorganized clouds: points sampled for plane and clustering
    target: str = "nearest_axis"
    crop_box: tuple[float, ...] = ()  # [x_min, y_min, z_min, x_max, y_max, z_max]
    click_radius: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target not in TARGET_RULES:
            raise ValueError(f"target must be one of {', '.join(TARGET_RULES)}, got {self.target!r}")
        if self.target == "crop_box" and len(self.crop_box) != 6:
            raise ValueError("target 'crop_box' needs crop_box = [x_min, y_min, z_min, x_max, y_max, z_max]")
        if self.plane_normal and (len(self.plane_normal) != 3 or not np.linalg.norm(self.plane_normal) > 0):
            raise ValueError(f"plane_normal must be empty or a non-zero 3-vector, got {list(self.plane_normal)}")


@dataclass
class SegmentationResult:
    """The target's points (empty unless ``status == 'ok'``) and what the node reports."""

    status: str
    points: np.ndarray  # [N, 3] float32, camera / cloud frame
    mask: Optional[np.ndarray] = None  # [H, W] (organized input) or [N_in] bool: the target's pixels/points
    warning: str = ""
    plane: Optional[np.ndarray] = None  # (a, b, c, d): a x + b y + c z + d = 0, unit normal towards the camera
    plane_inlier_fraction: float = 0.0
    clusters: int = 0
    valid_points: int = 0
    stride: int = 1
    timing_ms: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == OK


# ----------------------------------------------------------------------------------- segmenter
class Segmenter:
    """Segments one target object out of depth images or scene clouds (see the module docstring)."""

    def __init__(self, config: SegmenterConfig | None = None) -> None:
        self.config = config or SegmenterConfig()
        self._rays_cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    # ---- public entry points
    def segment_depth(self, depth: np.ndarray, intrinsics: CameraIntrinsics, *, mask: np.ndarray | None = None,
                      clicked: np.ndarray | None = None) -> SegmentationResult:
        """Segment a depth image [H, W] in metres (NaN / inf / <= 0 = no return)."""
        t0 = time.perf_counter()
        depth = np.asarray(depth)
        if depth.shape != (intrinsics.height, intrinsics.width):
            return self._fail(NO_DEPTH, f"depth image is {depth.shape[1] if depth.ndim > 1 else '?'} x "
                              f"{depth.shape[0] if depth.ndim else '?'} but the camera info says "
                              f"{intrinsics.width} x {intrinsics.height}", t0)
        key = (intrinsics.width, intrinsics.height, intrinsics.fx, intrinsics.fy, intrinsics.cx, intrinsics.cy)
        if key not in self._rays_cache:
            self._rays_cache = {key: _rays(intrinsics)}
        ru, rv = self._rays_cache[key]
        z = depth.astype(np.float32, copy=False)
        z = np.where((z > 0) & (z <= self.config.max_range), z, np.float32(np.nan))  # NaN/inf compare False
        return self._segment_grid(z, ru, rv, mask, clicked, t0)

    def segment_points(self, points: np.ndarray, *, mask: np.ndarray | None = None,
                       clicked: np.ndarray | None = None) -> SegmentationResult:
        """Segment a scene cloud: [H, W, 3] organized (uses the image grid) or [N, 3]."""
        t0 = time.perf_counter()
        pts = np.asarray(points, dtype=np.float32)
        if pts.ndim == 3 and pts.shape[-1] == 3 and min(pts.shape[:2]) > 1:
            return self._segment_organized_points(pts, mask, clicked, t0)
        if pts.ndim != 2 or pts.shape[-1] != 3:
            return self._fail(NO_DEPTH, f"expected [N, 3] or [H, W, 3] points, got shape {pts.shape}", t0)
        return self._segment_unorganized(pts, mask, clicked, t0)

    # ---- grid (depth image / organized cloud)
    def _segment_grid(self, z: np.ndarray, ru: np.ndarray, rv: np.ndarray, mask: np.ndarray | None,
                      clicked: np.ndarray | None, t0: float) -> SegmentationResult:
        h, w = z.shape
        xyz = _GridPoints(z=z, ru=ru, rv=rv)
        return self._grid_core(xyz, h, w, mask, clicked, t0)

    def _segment_organized_points(self, pts: np.ndarray, mask: np.ndarray | None, clicked: np.ndarray | None,
                                  t0: float) -> SegmentationResult:
        h, w = pts.shape[:2]
        x, y, z = pts[..., 0], pts[..., 1], pts[..., 2]  # any frame: a range test, not a depth test
        bad = ~(x * x + y * y + z * z <= np.float32(self.config.max_range ** 2))  # NaN fails too
        if bad.any():
            pts = pts.copy()
            pts[bad] = np.nan
        return self._grid_core(_GridPoints(xyz=pts), h, w, mask, clicked, t0)

    def _grid_core(self, grid: "_GridPoints", h: int, w: int, mask: np.ndarray | None,
                   clicked: np.ndarray | None, t0: float) -> SegmentationResult:
        cfg = self.config
        timing: dict[str, float] = {}
        valid = grid.valid()
        n_valid = int(np.count_nonzero(valid))
        if mask is not None and np.shape(mask) != (h, w):
            return self._fail(NO_TARGET, f"mask is {np.shape(mask)[::-1]} but the depth image is {w} x {h}", t0,
                              valid_points=n_valid)
        if n_valid < cfg.min_object_points:
            return self._fail(NO_DEPTH, f"only {n_valid} valid depth pixels (all zero, NaN or beyond "
                              f"max_range {cfg.max_range:g} m)", t0, valid_points=n_valid)
        s = cfg.stride or self._auto_stride(grid.median_depth(valid), grid.focal())
        sample = grid.points(np.s_[::s, ::s])  # [h', w', 3]
        sample_valid = np.isfinite(sample[..., 2])
        flat = sample[sample_valid]
        timing["sample_ms"] = _ms(t0)

        t = time.perf_counter()
        plane, fraction, warn = self._fit_plane(flat)
        timing["plane_ms"] = _ms(t)
        base = dict(valid_points=n_valid, stride=s, plane=plane, plane_inlier_fraction=fraction)
        if mask is not None:
            return self._masked(grid, valid, np.asarray(mask, bool), plane, base, timing, t0)
        if plane is None:
            return self._fail(NO_PLANE, warn, t0, timing=timing, **base)

        t = time.perf_counter()
        height = grid.plane_distance(plane, np.s_[:, :])  # [h, w], NaN where invalid
        floor = self._floor(flat, plane)
        above = (height > floor) & (height < cfg.max_height)
        s_above = above[::s, ::s]
        cand = sample[s_above]
        timing["height_ms"] = _ms(t)
        if len(cand) < cfg.cluster_min_points:
            return self._fail(NO_OBJECT, f"nothing stands on the support plane ({int(np.count_nonzero(above))} "
                              f"pixels more than {floor:.3g} m above it)", t0, timing=timing, **base)
        t = time.perf_counter()
        labels = _dbscan(cand, cfg.cluster_eps, cfg.cluster_min_points)
        clusters = self._clusters(cand, labels, plane, flat, s)
        timing["cluster_ms"] = _ms(t)
        base["clusters"] = len(clusters)
        if not clusters:
            return self._fail(NO_OBJECT, "no object cluster on the support plane", t0, timing=timing, **base)
        chosen, why = self._choose(clusters, clicked)
        if chosen is None:
            return self._fail(NO_TARGET, why, t0, timing=timing, **base)

        t = time.perf_counter()
        label_grid = np.full(s_above.shape, -1, dtype=np.int32)
        label_grid[s_above] = labels
        members = self._merge_inside(chosen, clusters, plane, floor)
        vv, uu = self._upsample(grid, above, label_grid, sample, members, s, h, w)
        vv, uu = self._recover_rim(grid, vv, uu, height, plane, floor)
        order = np.argsort(vv * w + uu)  # row-major, as the pixels of the mask
        vv, uu = vv[order], uu[order]
        obj = np.zeros((h, w), dtype=bool)
        obj[vv, uu] = True
        timing["upsample_ms"] = _ms(t)
        return self._finish(grid, obj, base, timing, t0, index=(vv, uu))

    def _masked(self, grid: "_GridPoints", valid: np.ndarray, mask: np.ndarray, plane: np.ndarray | None,
                base: dict, timing: dict, t0: float) -> SegmentationResult:
        obj = mask & valid
        if plane is not None:
            obj &= grid.plane_distance(plane, np.s_[:, :]) > self.config.plane_distance
        base["clusters"] = 1
        return self._finish(grid, obj, base, timing, t0, what="masked")

    def _finish(self, grid: "_GridPoints", obj: np.ndarray, base: dict, timing: dict, t0: float,
                what: str = "chosen", index: tuple[np.ndarray, np.ndarray] | None = None) -> SegmentationResult:
        n = int(np.count_nonzero(obj)) if index is None else len(index[0])
        if n < self.config.min_object_points:
            return self._fail(NO_TARGET, f"the {what} object has {n} points (< min_object_points "
                              f"{self.config.min_object_points})", t0, timing=timing, **base)
        pts = grid.points_at(obj) if index is None else grid.points_at_idx(*index)
        timing["total_ms"] = _ms(t0)
        return SegmentationResult(OK, pts, mask=obj, timing_ms=timing, **base)

    # ---- unorganized clouds
    def _segment_unorganized(self, pts: np.ndarray, mask: np.ndarray | None, clicked: np.ndarray | None,
                             t0: float) -> SegmentationResult:
        cfg = self.config
        timing: dict[str, float] = {}
        valid = np.isfinite(pts).all(axis=1) & (np.linalg.norm(pts, axis=1) <= cfg.max_range)
        n_valid = int(np.count_nonzero(valid))
        if mask is not None and np.shape(mask) != (len(pts),):
            return self._fail(NO_TARGET, f"mask has {np.size(mask)} entries for {len(pts)} points", t0,
                              valid_points=n_valid)
        if n_valid < cfg.min_object_points:
            return self._fail(NO_DEPTH, f"only {n_valid} valid points", t0, valid_points=n_valid)
        idx = np.flatnonzero(valid)
        rng = np.random.default_rng(cfg.seed)
        if len(idx) > cfg.max_sample_points:
            idx = np.sort(rng.choice(idx, cfg.max_sample_points, replace=False))
        flat = pts[idx]
        plane, fraction, warn = self._fit_plane(flat)
        timing["plane_ms"] = _ms(t0)
        base = dict(valid_points=n_valid, plane=plane, plane_inlier_fraction=fraction)
        if mask is not None:
            obj = np.asarray(mask, bool) & valid
            if plane is not None:
                obj &= _signed(pts, plane) > cfg.plane_distance
            base["clusters"] = 1
            return self._finish_flat(pts, obj, base, timing, t0, "masked")
        if plane is None:
            return self._fail(NO_PLANE, warn, t0, timing=timing, **base)
        height = np.full(len(pts), np.nan, dtype=np.float32)
        height[valid] = _signed(pts[valid], plane)
        floor = self._floor(flat, plane)
        above = (height > floor) & (height < cfg.max_height)
        cand = pts[idx][above[idx]]
        if len(cand) < cfg.cluster_min_points:
            return self._fail(NO_OBJECT, "nothing stands on the support plane", t0, timing=timing, **base)
        labels = _dbscan(cand, cfg.cluster_eps, cfg.cluster_min_points)
        clusters = self._clusters(cand, labels, plane, flat, 1)
        base["clusters"] = len(clusters)
        if not clusters:
            return self._fail(NO_OBJECT, "no object cluster on the support plane", t0, timing=timing, **base)
        chosen, why = self._choose(clusters, clicked)
        if chosen is None:
            return self._fail(NO_TARGET, why, t0, timing=timing, **base)
        from scipy.spatial import cKDTree

        inside = np.isin(labels, self._merge_inside(chosen, clusters, plane, floor))
        members = cand[inside]
        others = cand[~inside & (labels >= 0)]
        above_idx = np.flatnonzero(above)
        d_in, _ = cKDTree(members).query(pts[above_idx], distance_upper_bound=cfg.cluster_eps, workers=-1)
        keep = np.isfinite(d_in)
        if len(others):
            d_out, _ = cKDTree(others).query(pts[above_idx], distance_upper_bound=cfg.cluster_eps, workers=-1)
            keep &= d_in <= d_out
        obj = np.zeros(len(pts), dtype=bool)
        obj[above_idx[keep]] = True
        obj |= self._recover_rim_flat(pts, obj, height, plane, floor)
        return self._finish_flat(pts, obj, base, timing, t0)

    def _recover_rim_flat(self, pts: np.ndarray, obj: np.ndarray, height: np.ndarray, plane: np.ndarray,
                          floor: float) -> np.ndarray:
        """``_recover_rim`` for unorganized clouds: band points whose foot lies inside the target's footprint."""
        from scipy.spatial import ConvexHull, QhullError

        rim = np.zeros(len(pts), dtype=bool)
        if np.count_nonzero(obj) < 3:
            return rim
        basis = np.stack(_plane_basis(plane[:3]), axis=1)
        foot = pts[obj] @ basis
        try:
            eq = ConvexHull(foot).equations.astype(np.float32)
        except (QhullError, ValueError):
            return rim
        idx = np.flatnonzero((height > 0.0) & (height <= floor))
        if len(idx) == 0:
            return rim
        bf = pts[idx] @ basis
        lo, hi = foot.min(axis=0), foot.max(axis=0)
        near = np.all((bf >= lo) & (bf <= hi), axis=1)
        idx, bf = idx[near], bf[near]
        rim[idx[np.all(bf @ eq[:, :2].T + eq[:, 2] <= 0.0, axis=1)]] = True
        return rim

    def _finish_flat(self, pts: np.ndarray, obj: np.ndarray, base: dict, timing: dict, t0: float,
                     what: str = "chosen") -> SegmentationResult:
        n = int(np.count_nonzero(obj))
        if n < self.config.min_object_points:
            return self._fail(NO_TARGET, f"the {what} object has {n} points (< min_object_points "
                              f"{self.config.min_object_points})", t0, timing=timing, **base)
        timing["total_ms"] = _ms(t0)
        return SegmentationResult(OK, pts[obj].astype(np.float32), mask=obj, timing_ms=timing, **base)

    # ---- steps
    def _auto_stride(self, median_depth: float, focal: float) -> int:
        """Sample spacing about a third of ``cluster_eps`` at the median depth (so DBSCAN keeps objects whole)."""
        if not math.isfinite(median_depth) or median_depth <= 0:
            return 4
        return int(np.clip(math.floor(self.config.cluster_eps / 3.0 * focal / median_depth), 1, 8))

    def _fit_plane(self, pts: np.ndarray) -> tuple[Optional[np.ndarray], float, str]:
        """(plane or None, inlier fraction, warning). The plane's unit normal points towards the origin (camera)."""
        import open3d as o3d
        import open3d.core as o3c

        cfg = self.config
        n_total = len(pts)
        if n_total < 3:
            return None, 0.0, f"no support plane: only {n_total} valid points"
        expected = None
        if cfg.plane_normal:
            expected = np.asarray(cfg.plane_normal, dtype=np.float64)
            expected /= np.linalg.norm(expected)
        remaining = pts
        rejected: list[str] = []
        best_fraction = 0.0
        o3d.utility.random.seed(cfg.seed)
        if n_total > PLANE_SAMPLE:  # RANSAC needs far fewer points than clustering; the fraction uses all
            remaining = pts[:: int(math.ceil(n_total / PLANE_SAMPLE))]
        n_sample = len(remaining)
        for _ in range(cfg.max_planes):
            if len(remaining) < max(3, cfg.min_plane_fraction * n_sample):
                break
            cloud = o3d.t.geometry.PointCloud(o3c.Tensor(np.ascontiguousarray(remaining, dtype=np.float32)))
            _, inliers = cloud.segment_plane(cfg.plane_distance, 3, cfg.ransac_iterations)
            inliers = inliers.numpy()
            fraction = len(inliers) / n_sample
            best_fraction = max(best_fraction, fraction)
            if fraction < cfg.min_plane_fraction:
                rejected.append(f"largest plane holds {100 * fraction:.0f} % of the points "
                                f"(< min_plane_fraction {100 * cfg.min_plane_fraction:.0f} %)")
                break
            plane = _refine_plane(remaining[inliers], cfg.plane_distance)
            if expected is not None:
                angle = math.degrees(math.acos(min(1.0, abs(float(plane[:3] @ expected)))))
                if angle > cfg.max_normal_angle_deg:
                    rejected.append(f"a plane with {100 * fraction:.0f} % of the points is tilted {angle:.0f} deg "
                                    f"from plane_normal (> {cfg.max_normal_angle_deg:g})")
                    remaining = np.delete(remaining, inliers, axis=0)
                    continue
            inlier_fraction = float(np.count_nonzero(np.abs(_signed(pts, plane)) <= cfg.plane_distance)) / n_total
            return plane, inlier_fraction, ""
        return None, best_fraction, "no support plane found: " + ("; ".join(rejected) or "too few points")

    def _clusters(self, cand: np.ndarray, labels: np.ndarray, plane: np.ndarray, plane_sample: np.ndarray,
                  stride: int) -> list["_Cluster"]:
        """Clusters with a centroid over the plane's inliers (not past the table edge)."""
        cfg = self.config
        if labels.size == 0 or labels.max() < 0:
            return []
        inl = plane_sample[np.abs(_signed(plane_sample, plane)) <= cfg.plane_distance]
        e1, e2 = _plane_basis(plane[:3])
        if len(inl) >= 3:
            uv = np.stack([inl @ e1, inl @ e2], axis=1)
            lo = np.percentile(uv, 0.5, axis=0) - cfg.cluster_eps
            hi = np.percentile(uv, 99.5, axis=0) + cfg.cluster_eps
        else:
            lo, hi = np.full(2, -np.inf), np.full(2, np.inf)
        out = []
        counts = np.bincount(labels[labels >= 0])
        for k in np.flatnonzero(counts):
            members = cand[labels == k]
            c = members.mean(axis=0)
            cuv = np.array([c @ e1, c @ e2])
            if np.any(cuv < lo) or np.any(cuv > hi):
                continue
            out.append(_Cluster(int(k), members, c))
        return out

    def _choose(self, clusters: list["_Cluster"], clicked: np.ndarray | None) -> tuple[Optional["_Cluster"], str]:
        cfg = self.config
        if cfg.target == "nearest_axis":
            return min(clusters, key=lambda c: math.atan2(math.hypot(c.centroid[0], c.centroid[1]),
                                                          c.centroid[2])), ""
        if cfg.target == "largest":
            return max(clusters, key=lambda c: len(c.points)), ""
        if cfg.target == "crop_box":
            box = np.asarray(cfg.crop_box, dtype=np.float32)
            inside = [int(np.count_nonzero(np.all((c.points >= box[:3]) & (c.points <= box[3:]), axis=1)))
                      for c in clusters]
            if max(inside) == 0:
                return None, f"no object cluster inside crop_box {cfg.crop_box}"
            return clusters[int(np.argmax(inside))], ""
        if clicked is None:
            return None, "target 'clicked': waiting for a clicked point (RViz Publish Point) in the camera frame"
        p = np.asarray(clicked, dtype=np.float32).reshape(3)
        dist = [float(np.linalg.norm(c.points - p, axis=1).min()) for c in clusters]
        best = int(np.argmin(dist))
        if dist[best] > cfg.click_radius:
            return None, (f"no object within click_radius {cfg.click_radius:g} m of the clicked point "
                          f"(nearest {dist[best]:.3f} m)")
        return clusters[best], ""

    def _floor(self, sample: np.ndarray, plane: np.ndarray) -> float:
        """Height above the plane where objects start: ``min_height``, or 3 sigma of the table's own depth noise
        if that is larger (a noisier or farther camera); sigma from the median absolute residual on the plane."""
        d = np.abs(_signed(sample, plane))
        d = d[d <= 2.0 * self.config.plane_distance]
        sigma = 1.4826 * float(np.median(d)) if len(d) else 0.0
        return max(self.config.min_height, 3.0 * sigma)

    def _merge_inside(self, chosen: "_Cluster", clusters: list["_Cluster"], plane: np.ndarray,
                      floor: float) -> np.ndarray:
        """Labels of the target: the chosen cluster and the clusters that are parts of it (a mug's inside seen
        through the opening, a handle cut off by the rim): clusters standing mostly inside its footprint
        (objects cannot stand inside each other), and clusters that float (lowest point more than
        3 ``min_height`` above the plane: nothing holds them up) within 1.25 ``cluster_eps`` of it."""
        from scipy.spatial import ConvexHull, QhullError, cKDTree

        cfg = self.config
        labels = [chosen.label]
        others = []
        tree = None
        for c in clusters:
            if c.label == chosen.label:
                continue
            if float((c.points @ plane[:3].astype(np.float32)).min() + plane[3]) > 3.0 * floor:
                if tree is None:
                    tree = cKDTree(chosen.points)
                if np.isfinite(tree.query(c.points, distance_upper_bound=1.25 * cfg.cluster_eps)[0]).any():
                    labels.append(c.label)
                    continue
            others.append(c)
        if others and len(chosen.points) >= 3:
            basis = np.stack(_plane_basis(plane[:3]), axis=1)
            try:
                eq = ConvexHull(chosen.points @ basis).equations.astype(np.float32)
            except (QhullError, ValueError):
                eq = None
            if eq is not None:
                for c in others:
                    inside = np.all((c.points @ basis) @ eq[:, :2].T + eq[:, 2] <= 0.0, axis=1)
                    if inside.mean() >= 0.5:
                        labels.append(c.label)
        return np.asarray(labels, dtype=np.int32)

    def _upsample(self, grid: "_GridPoints", above: np.ndarray, label_grid: np.ndarray, sample: np.ndarray,
                  targets: np.ndarray, s: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Full-resolution pixels of the target: above the plane and nearest (<= eps) to a target sample among
        the four strided neighbours, and not nearer to another cluster's sample."""
        is_target = np.isin(label_grid, targets)
        rows, cols = np.nonzero(is_target)
        r0, r1 = max(0, rows.min() * s - s), min(h, rows.max() * s + 2 * s)
        c0, c1 = max(0, cols.min() * s - s), min(w, cols.max() * s + 2 * s)
        sub_above = above[r0:r1, c0:c1]
        vv, uu = np.nonzero(sub_above)
        vv, uu = vv + r0, uu + c0
        p = grid.points_at_idx(vv, uu)
        hl, wl = label_grid.shape
        best_t = np.full(len(vv), np.inf, dtype=np.float32)
        best_o = np.full(len(vv), np.inf, dtype=np.float32)
        for dr in (0, 1):
            for dc in (0, 1):
                i = np.minimum(vv // s + dr, hl - 1)
                j = np.minimum(uu // s + dc, wl - 1)
                lab = label_grid[i, j]
                hit = is_target[i, j]
                d = np.linalg.norm(sample[i, j] - p, axis=1)
                d = np.where(np.isfinite(d), d, np.inf).astype(np.float32)
                best_t = np.where(hit, np.minimum(best_t, d), best_t)
                best_o = np.where((lab >= 0) & ~hit, np.minimum(best_o, d), best_o)
        keep = (best_t <= self.config.cluster_eps) & (best_t <= best_o)
        return vv[keep], uu[keep]

    def _recover_rim(self, grid: "_GridPoints", v: np.ndarray, u: np.ndarray, height: np.ndarray,
                     plane: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """Add what of the target lies within ``min_height`` of the plane (its bottom rim, a mug's inner floor):
        pixels in the target's image box, above the plane, whose foot lies inside the target's footprint
        (convex hull of its points projected on the plane). The table around it lies outside."""
        from scipy.spatial import ConvexHull, QhullError

        if len(v) < 3:
            return v, u
        h, w = height.shape
        r0, r1, c0, c1 = max(0, v.min() - 2), min(h, v.max() + 3), max(0, u.min() - 2), min(w, u.max() + 3)
        sub_h = height[r0:r1, c0:c1]
        band = (sub_h > 0.0) & (sub_h <= floor)  # disjoint from the object (> floor)
        if not band.any():
            return v, u
        e1, e2 = _plane_basis(plane[:3])
        basis = np.stack([e1, e2], axis=1)
        foot = grid.points_at_idx(v, u) @ basis
        try:
            hull = ConvexHull(foot)
        except (QhullError, ValueError):
            return v, u
        bv, bu = np.nonzero(band)
        bv, bu = bv + r0, bu + c0
        bf = grid.points_at_idx(bv, bu) @ basis
        inside = np.all(bf @ hull.equations[:, :2].T.astype(np.float32) + hull.equations[:, 2].astype(np.float32)
                        <= 0.0, axis=1)
        return np.concatenate([v, bv[inside]]), np.concatenate([u, bu[inside]])

    def _fail(self, status: str, warning: str, t0: float, timing: dict | None = None, **kw: Any) -> SegmentationResult:
        timing = dict(timing or {})
        timing["total_ms"] = _ms(t0)
        return SegmentationResult(status, np.zeros((0, 3), dtype=np.float32), warning=warning, timing_ms=timing, **kw)


# ----------------------------------------------------------------------------------- helpers
@dataclass
class _Cluster:
    label: int
    points: np.ndarray
    centroid: np.ndarray


class _GridPoints:
    """An image grid of points: from a depth image (z + ray factors, back-projected lazily) or organized xyz."""

    def __init__(self, *, z: np.ndarray | None = None, ru: np.ndarray | None = None, rv: np.ndarray | None = None,
                 xyz: np.ndarray | None = None) -> None:
        self.z, self.ru, self.rv, self.xyz = z, ru, rv, xyz

    def valid(self) -> np.ndarray:
        return np.isfinite(self.z if self.xyz is None else self.xyz[..., 2])

    def median_depth(self, valid: np.ndarray) -> float:
        z = self.z[::4, ::4] if self.xyz is None else np.linalg.norm(self.xyz[::4, ::4], axis=-1)
        return float(np.median(z[valid[::4, ::4]])) if valid[::4, ::4].any() else float("nan")

    def focal(self) -> float:
        if self.xyz is None:
            return float(1.0 / abs(self.ru[1] - self.ru[0])) if len(self.ru) > 1 else 500.0
        # organized cloud: angular pixel pitch from neighbouring valid points
        a, b = self.xyz[::8, :-1], self.xyz[::8, 1:]  # every 8th row is plenty
        ok = np.isfinite(a[..., 2]) & np.isfinite(b[..., 2])
        if not ok.any():
            return 500.0
        step = np.linalg.norm(a[ok] - b[ok], axis=1) / np.linalg.norm(a[ok], axis=1)
        # oblique surfaces and noise only lengthen a step: a low percentile is the pixel pitch 1 / f
        return float(1.0 / max(np.percentile(step, 5), 1e-6))

    def points(self, sl: Any) -> np.ndarray:
        if self.xyz is not None:
            return self.xyz[sl]
        z = self.z[sl]
        ru = self.ru[sl[1]]
        rv = self.rv[sl[0]]
        out = np.empty(z.shape + (3,), dtype=np.float32)
        np.multiply(z, ru[None, :], out=out[..., 0])
        np.multiply(z, rv[:, None], out=out[..., 1])
        out[..., 2] = z
        return out

    def points_at(self, mask: np.ndarray) -> np.ndarray:
        v, u = np.nonzero(mask)
        return self.points_at_idx(v, u)

    def points_at_idx(self, v: np.ndarray, u: np.ndarray) -> np.ndarray:
        if self.xyz is not None:
            return self.xyz[v, u].astype(np.float32)
        z = self.z[v, u]
        return np.stack([z * self.ru[u], z * self.rv[v], z], axis=1).astype(np.float32)

    def plane_distance(self, plane: np.ndarray, sl: Any) -> np.ndarray:
        n = plane.astype(np.float32)
        if self.xyz is not None:
            return self.xyz[sl] @ n[:3] + n[3]
        z = self.z[sl]
        factor = n[0] * self.ru[sl[1]][None, :] + n[1] * self.rv[sl[0]][:, None] + n[2]
        return z * factor + n[3]


def _signed(pts: np.ndarray, plane: np.ndarray) -> np.ndarray:
    return pts @ plane[:3].astype(np.float32) + np.float32(plane[3])


def _refine_plane(inliers: np.ndarray, distance: float) -> np.ndarray:
    """Least-squares plane through RANSAC inliers, unit normal oriented towards the origin (the camera)."""
    pts = inliers.astype(np.float64)
    centre = pts.mean(axis=0)
    _, _, vt = np.linalg.svd(pts - centre, full_matrices=False)
    n = vt[2]
    d = -float(n @ centre)
    if d < 0:  # the origin must be on the positive side: d = distance of the origin above the plane
        n, d = -n, -d
    return np.array([n[0], n[1], n[2], d])


def _plane_basis(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(n, dtype=np.float64)
    a = np.array([1.0, 0.0, 0.0]) if abs(n[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(n, a)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(n, e1)
    return e1.astype(np.float32), e2.astype(np.float32)


def _dbscan(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    import open3d as o3d
    import open3d.core as o3c

    if len(points) == 0:
        return np.zeros(0, dtype=np.int32)
    cloud = o3d.t.geometry.PointCloud(o3c.Tensor(np.ascontiguousarray(points, dtype=np.float32)))
    return cloud.cluster_dbscan(eps, min_points, False).numpy().astype(np.int32)


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0
