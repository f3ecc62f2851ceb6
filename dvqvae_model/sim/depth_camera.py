"""A simulated depth camera: ray-cast depth images of a mesh, sensor noise, back-projection.

Used to make training inputs look like what the node will receive (partial, single-view,
noisy object clouds) and to drive a fake camera for end-to-end tests without hardware.

Conventions
-----------
* Camera frame = ROS *optical* frame (REP 103 `*_optical_frame`): z forward (viewing
  direction), x right, y down in the image. Poses are 4x4 camera-to-world transforms.
* Pinhole model, pixel centres at integer coordinates (OpenCV / ROS CameraInfo):
  u = fx * x / z + cx, v = fy * y / z + cy, with u in [0, width), v in [0, height).
* Depth images hold the z coordinate (not the ray length) in metres; `inf` = no return.

Default intrinsics: an Intel RealSense D435 depth stream at 640 x 480 (fx = fy = 385 px,
principal point at the image centre): about 79.5 x 63.9 degrees field of view.

Noise model (`add_depth_noise`): zero-mean Gaussian noise along the viewing ray with a standard
deviation that grows quadratically with depth, sigma(z) = sigma_base + sigma_quadratic * z**2
(metres). Structured-light and active-stereo sensors behave like this (disparity error is about
constant, depth error ~ z^2 / (f * baseline)); the defaults give ~1.4 mm at 0.45 m and ~2.9 mm at
1 m, in the range reported for the Kinect (Nguyen et al. 2012: 1.2 mm + 1.9 mm * (z - 0.4)^2)
and RealSense D400 (< 2 % of z). Optional pixel dropout removes a random fraction of returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import open3d as o3d
import open3d.core as o3c
import trimesh

__all__ = [
    "CameraIntrinsics",
    "look_at",
    "make_scene",
    "render_depth",
    "depth_to_points",
    "add_depth_noise",
    "depth_noise_sigma",
    "transform_points",
    "capture_object_cloud",
]


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics in pixels (defaults: RealSense D435 depth, 640 x 480)."""

    width: int = 640
    height: int = 480
    fx: float = 385.0
    fy: float = 385.0
    cx: float = 319.5
    cy: float = 239.5

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise ValueError(f"image size must be positive, got {self.width} x {self.height}")
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")

    @classmethod
    def from_fov(cls, width: int, height: int, hfov_deg: float) -> "CameraIntrinsics":
        """Square pixels, centred principal point, given horizontal field of view."""
        f = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
        return cls(width, height, f, f, (width - 1) / 2.0, (height - 1) / 2.0)

    @property
    def matrix(self) -> np.ndarray:
        """3x3 camera matrix K."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def fov_deg(self) -> tuple[float, float]:
        """(horizontal, vertical) field of view in degrees."""
        return (
            math.degrees(2 * math.atan(self.width / 2.0 / self.fx)),
            math.degrees(2 * math.atan(self.height / 2.0 / self.fy)),
        )


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world 4x4 of an optical-frame camera at `eye` looking at `target`.

    z points at the target, x = z cross up (image right), y = z cross x (image down, so `up`
    appears at the top of the image).
    """
    eye = np.asarray(eye, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    up = np.asarray(up, dtype=np.float64)
    forward = target - eye
    norm = np.linalg.norm(forward)
    if norm < 1e-12:
        raise ValueError("look_at: eye and target coincide")
    z = forward / norm
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9 * max(np.linalg.norm(up), 1e-12):
        raise ValueError("look_at: the up vector is parallel to the viewing direction")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, eye
    return pose


def make_scene(mesh: trimesh.Trimesh) -> o3d.t.geometry.RaycastingScene:
    """A ray-casting scene holding only `mesh` (build once, render many views)."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3c.Tensor(np.ascontiguousarray(mesh.vertices, dtype=np.float32)),
        o3c.Tensor(np.ascontiguousarray(mesh.faces, dtype=np.uint32)),
    )
    return scene


def _pixel_rays(intrinsics: CameraIntrinsics) -> np.ndarray:
    """Camera-frame ray directions [H, W, 3] with z = 1, so the hit distance equals depth."""
    u = (np.arange(intrinsics.width, dtype=np.float64) - intrinsics.cx) / intrinsics.fx
    v = (np.arange(intrinsics.height, dtype=np.float64) - intrinsics.cy) / intrinsics.fy
    dirs = np.empty((intrinsics.height, intrinsics.width, 3))
    dirs[..., 0] = u[None, :]
    dirs[..., 1] = v[:, None]
    dirs[..., 2] = 1.0
    return dirs


def render_depth(
    mesh: trimesh.Trimesh | o3d.t.geometry.RaycastingScene,
    intrinsics: CameraIntrinsics,
    cam_to_world: np.ndarray,
) -> np.ndarray:
    """Noise-free depth image [H, W] float32 in metres (z along the optical axis), inf = miss."""
    scene = mesh if isinstance(mesh, o3d.t.geometry.RaycastingScene) else make_scene(mesh)
    pose = np.asarray(cam_to_world, dtype=np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"cam_to_world must be 4x4, got {pose.shape}")
    dirs = _pixel_rays(intrinsics) @ pose[:3, :3].T  # world directions, still z_cam = 1
    rays = np.empty((intrinsics.height, intrinsics.width, 6), dtype=np.float32)
    rays[..., :3] = pose[:3, 3]
    rays[..., 3:] = dirs
    hit = scene.cast_rays(o3c.Tensor(rays))["t_hit"].numpy()
    return np.where(np.isfinite(hit) & (hit > 0), hit, np.inf).astype(np.float32)


def depth_to_points(
    depth: np.ndarray, intrinsics: CameraIntrinsics, organized: bool = False
) -> np.ndarray:
    """Back-project a depth image to camera-frame points.

    organized=False: [N, 3] float32 of the valid (finite, > 0) pixels in row-major order.
    organized=True: [H, W, 3] float32, NaN at invalid pixels (a depth camera's organized cloud).
    """
    depth = np.asarray(depth)
    if depth.shape != (intrinsics.height, intrinsics.width):
        raise ValueError(
            f"depth shape {depth.shape} does not match intrinsics "
            f"{intrinsics.height} x {intrinsics.width}"
        )
    z = depth.astype(np.float64)
    valid = np.isfinite(z) & (z > 0)
    points = _pixel_rays(intrinsics) * np.where(valid, z, np.nan)[..., None]
    if organized:
        return points.astype(np.float32)
    return points[valid].astype(np.float32)


def depth_noise_sigma(
    depth: np.ndarray, sigma_base: float = 0.001, sigma_quadratic: float = 0.0019
) -> np.ndarray:
    """Axial noise std in metres at each depth: sigma_base + sigma_quadratic * z^2."""
    z = np.asarray(depth, dtype=np.float64)
    return sigma_base + sigma_quadratic * z * z


def add_depth_noise(
    depth: np.ndarray,
    rng: np.random.Generator,
    sigma_base: float = 0.001,
    sigma_quadratic: float = 0.0019,
    dropout: float = 0.0,
) -> np.ndarray:
    """Depth with Gaussian noise of std `depth_noise_sigma(z)` on every valid pixel, and a
    `dropout` fraction of valid pixels set to inf (lost returns). Invalid pixels stay inf."""
    if not 0.0 <= dropout <= 1.0:
        raise ValueError(f"dropout must be in [0, 1], got {dropout}")
    depth = np.asarray(depth, dtype=np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    z = depth[valid].astype(np.float64)
    noisy = z + rng.standard_normal(z.shape) * depth_noise_sigma(z, sigma_base, sigma_quadratic)
    if dropout > 0.0:
        noisy[rng.random(z.shape) < dropout] = np.inf
    noisy[noisy <= 0] = np.inf  # a return cannot be behind the camera
    out = np.full(depth.shape, np.inf, dtype=np.float32)
    out[valid] = noisy
    return out


def transform_points(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid transform to points [..., 3]."""
    pose = np.asarray(pose, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) @ pose[:3, :3].T + pose[:3, 3]


def capture_object_cloud(
    mesh: trimesh.Trimesh,
    rng: np.random.Generator,
    *,
    distance: float = 0.45,
    azimuth: float | None = None,
    elevation: float | None = None,
    intrinsics: CameraIntrinsics | None = None,
    noise: bool = True,
    sigma_base: float = 0.001,
    sigma_quadratic: float = 0.0019,
    dropout: float = 0.0,
    target: np.ndarray | None = None,
    scene: o3d.t.geometry.RaycastingScene | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Single-view object cloud as a depth camera sees it: (points_cam [N, 3] float32,
    cam_to_world 4x4).

    The camera sits `distance` metres from `target` (default: the mesh's bounding-box centre)
    at `azimuth` / `elevation` (radians, about world z / above the xy-plane) and looks at it
    with world z up. A None angle is drawn from `rng`, uniform over the sphere of directions.
    The scene holds only the object, so every return is an object point (segmentation is
    perfect). `noise` applies `add_depth_noise` with the sigma_* parameters, `dropout` loses that
    fraction of returns. Returns no points (shape [0, 3]) if the object is out of view.
    """
    intrinsics = intrinsics or CameraIntrinsics()
    if azimuth is None:
        azimuth = float(rng.uniform(0.0, 2.0 * math.pi))
    if elevation is None:
        elevation = float(math.asin(rng.uniform(-1.0, 1.0)))
    if target is None:
        centre = np.asarray(mesh.bounds, dtype=np.float64).mean(axis=0)
    else:
        centre = np.asarray(target, dtype=np.float64).reshape(3)
    reach = float(np.linalg.norm(np.asarray(mesh.vertices) - centre, axis=1).max())
    if distance <= reach:
        raise ValueError(
            f"distance {distance:g} m puts the camera inside the object's bounding sphere "
            f"({reach:.3g} m)"
        )
    direction = np.array([
        math.cos(elevation) * math.cos(azimuth),
        math.cos(elevation) * math.sin(azimuth),
        math.sin(elevation),
    ])
    up = (0.0, 0.0, 1.0) if abs(direction[2]) < 0.999 else (1.0, 0.0, 0.0)
    cam_to_world = look_at(centre + distance * direction, centre, up)
    depth = render_depth(scene if scene is not None else mesh, intrinsics, cam_to_world)
    if noise or dropout > 0.0:
        scale = 1.0 if noise else 0.0
        depth = add_depth_noise(
            depth, rng, sigma_base * scale, sigma_quadratic * scale, dropout=dropout
        )
    return depth_to_points(depth, intrinsics), cam_to_world
