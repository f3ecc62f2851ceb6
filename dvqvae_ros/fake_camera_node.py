"""ROS 2 node ``fake_depth_camera``: a simulated depth camera looking at objects on a table.

Lets the whole pipeline run without hardware: it ray-casts a mesh (a bundled
sample object by name, or any mesh file), optionally standing on a table top
with ``extra_objects`` more sample objects around it (``dvqvae_model.sim.tabletop``),
at a RealSense-like resolution and field of view, adds depth noise (fresh noise
every frame) and publishes, all with one header stamp, in the camera's optical
frame (z forward, x right, y down; ``frame_id`` parameter):

* ``points``: the aimed-at object's points, segmented with the simulator's
  ground truth (``publish_segmented``), float32 xyz PointCloud2;
* what a real depth camera publishes (``publish_scene``): ``depth/image``
  (16UC1 millimetres or 32FC1 metres), ``depth/camera_info``, ``depth/points``
  (organized scene cloud, NaN = no return), and ``ground_truth/mask`` (mono8,
  255 on the aimed-at object's pixels: the segmenter's reference, or a stand-in
  for an instance-segmentation node's mask).

The scene is static, so the noise-free depth image is rendered once; every
frame only adds noise and back-projects.
Parameters: ``dvqvae_ros.parameters.FakeCameraParameters``.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Sequence

import numpy as np
import trimesh
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from dvqvae_model.sim import depth_camera as dc
from dvqvae_model.sim.tabletop import TabletopCamera, make_tabletop_scene
from dvqvae_ros.images import camera_info_message, depth_image_message, mask_image_message
from dvqvae_ros.parameters import FakeCameraParameters, ParameterError, declare_parameters, read_parameters
from dvqvae_ros.spin import run_node
from dvqvae_ros.point_cloud import create_cloud_xyz32
from dvqvae_model.sim.sample_objects import SAMPLE_OBJECTS, load_object, sample_object

__all__ = ["FakeDepthCamera", "FakeDepthCameraNode", "make_camera", "main"]

NODE_NAME = "fake_depth_camera"
TABLE_SIZE = 0.8  # metres, square table top
TABLE_THICKNESS = 0.03
SEGMENT_MARGIN = 0.003  # metres above the table, plus three noise sigmas


class FakeDepthCamera:
    """A static camera, one object and an optional table: noisy segmented object clouds on demand."""

    def __init__(self, mesh: trimesh.Trimesh, *, distance: float, azimuth_deg: float, elevation_deg: float,
                 intrinsics: dc.CameraIntrinsics, noise: float = 1.0, table: bool = True) -> None:
        centre = np.asarray(mesh.bounds, dtype=np.float64).mean(axis=0)
        reach = float(np.linalg.norm(np.asarray(mesh.vertices) - centre, axis=1).max())
        if distance <= reach:
            raise ValueError(f"distance {distance:g} m puts the camera inside the object (radius {reach:.3g} m)")
        if table and elevation_deg <= 0:
            raise ValueError(f"elevation_deg {elevation_deg:g} looks at the object from below the table; "
                             "use elevation_deg > 0 or table:=false")
        az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
        direction = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        up = (0.0, 0.0, 1.0) if abs(direction[2]) < 0.999 else (1.0, 0.0, 0.0)
        self.cam_to_world = dc.look_at(centre + distance * direction, centre, up)
        self.intrinsics = intrinsics
        self.noise = float(noise)
        self.table_z: float | None = float(mesh.bounds[0, 2]) if table else None
        scene_mesh = mesh
        if table:
            slab = trimesh.creation.box(extents=(TABLE_SIZE, TABLE_SIZE, TABLE_THICKNESS))
            slab.apply_translation([centre[0], centre[1], self.table_z - TABLE_THICKNESS / 2])
            scene_mesh = trimesh.util.concatenate([mesh, slab])
        self.clean_depth = dc.render_depth(dc.make_scene(scene_mesh), intrinsics, self.cam_to_world)

    def capture(self, rng: np.random.Generator) -> np.ndarray:
        """One frame: object points [N, 3] float32 in the camera's optical frame (N may be 0)."""
        depth = self.clean_depth
        if self.noise > 0:
            depth = dc.add_depth_noise(depth, rng, 0.001 * self.noise, 0.0019 * self.noise)
        points = dc.depth_to_points(depth, self.intrinsics)
        if self.table_z is None or len(points) == 0:
            return points
        # Segment: keep what stands clearly above the table plane (noise-aware margin).
        height = dc.transform_points(points, self.cam_to_world)[:, 2] - self.table_z
        sigma = dc.depth_noise_sigma(points[:, 2], 0.001 * self.noise, 0.0019 * self.noise)
        return points[height > SEGMENT_MARGIN + 3.0 * sigma]


def make_camera(mesh: trimesh.Trimesh, *, distance: float, azimuth_deg: float, elevation_deg: float,
                intrinsics: dc.CameraIntrinsics, table: bool = True, extra_objects: int = 0,
                seed: int = 0) -> TabletopCamera:
    """The node's scene: ``mesh`` unrotated at the table centre (the camera aims at its centre, as
    ``FakeDepthCamera``), plus ``extra_objects`` random sample objects >= 3 cm away from it."""
    centre = np.asarray(mesh.bounds, dtype=np.float64).mean(axis=0)
    reach = float(np.linalg.norm(np.asarray(mesh.vertices) - centre, axis=1).max())
    if distance <= reach:
        raise ValueError(f"distance {distance:g} m puts the camera inside the object (radius {reach:.3g} m)")
    if table and elevation_deg <= 0:
        raise ValueError(f"elevation_deg {elevation_deg:g} looks at the object from below the table; "
                         "use elevation_deg > 0 or table:=false")
    rng = np.random.default_rng(seed)
    names = sorted(SAMPLE_OBJECTS)
    extras = [sample_object(names[int(i)]) for i in rng.integers(0, len(names), extra_objects)]
    scene = make_tabletop_scene([mesh, *extras], rng, intrinsics=intrinsics, distance=distance,
                                elevation_deg=elevation_deg, azimuth_deg=azimuth_deg, roll_deg=0.0,
                                table_size=TABLE_SIZE, table=table, first_fixed=True)
    return TabletopCamera(scene)


class FakeDepthCameraNode(Node):
    """Publishes ``points`` and the scene topics at ``rate_hz`` from a ``TabletopCamera``."""

    def __init__(self, *, node_name: str = NODE_NAME, **node_kwargs: Any) -> None:
        super().__init__(node_name, **node_kwargs)
        try:
            declare_parameters(self, FakeCameraParameters)
            self.params = read_parameters(self, FakeCameraParameters)
            p = self.params
            try:
                mesh = load_object(p.object)
                intrinsics = dc.CameraIntrinsics.from_fov(p.width, p.height, p.fov_deg)
                self.camera = make_camera(mesh, distance=p.distance, azimuth_deg=p.azimuth_deg,
                                          elevation_deg=p.elevation_deg, intrinsics=intrinsics, table=p.table,
                                          extra_objects=p.extra_objects, seed=p.seed)
            except ValueError as exc:
                raise ParameterError(f"invalid parameters for node '{self.get_name()}': {exc}") from exc
        except BaseException:
            super().destroy_node()
            raise
        self._rng = np.random.default_rng(p.seed)
        self.frames = 0
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self._pub = self.create_publisher(PointCloud2, "points", qos) if p.publish_segmented else None
        if p.publish_scene:
            self._pub_depth = self.create_publisher(Image, "depth/image", qos)
            self._pub_info = self.create_publisher(CameraInfo, "depth/camera_info", qos)
            self._pub_scene = self.create_publisher(PointCloud2, "depth/points", qos)
            self._pub_truth = self.create_publisher(Image, "ground_truth/mask", qos)
        self._timer = self.create_timer(1.0 / p.rate_hz, self._tick)
        hfov, vfov = intrinsics.fov_deg
        self.get_logger().info(
            f"rendering {p.object!r} at {p.distance:g} m (azimuth {p.azimuth_deg:g}, elevation {p.elevation_deg:g} "
            f"deg) with {p.extra_objects} more object(s), {p.width}x{p.height} px, {hfov:.1f}x{vfov:.1f} deg FOV, "
            f"publishing {'points, ' if p.publish_segmented else ''}"
            f"{'depth/image, depth/camera_info, depth/points, ground_truth/mask ' if p.publish_scene else ''}"
            f"in {p.frame_id!r} at {p.rate_hz:g} Hz")

    def _tick(self) -> None:
        p = self.params
        depth, target = self.camera.capture(self._rng, noise=p.noise)
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=p.frame_id)
        if p.publish_scene:
            self._pub_depth.publish(depth_image_message(header, depth, p.depth_encoding))
            self._pub_info.publish(camera_info_message(header, self.camera.intrinsics))
            self._pub_scene.publish(create_cloud_xyz32(header, dc.depth_to_points(depth, self.camera.intrinsics,
                                                                                     organized=True)))
            self._pub_truth.publish(mask_image_message(header, target))
        if self._pub is not None:
            points = dc.depth_to_points(np.where(target, depth, np.inf), self.camera.intrinsics)
            if len(points) == 0:
                self.get_logger().warning("the object is out of view: no points to publish",
                                          throttle_duration_sec=5.0)
            else:
                self._pub.publish(create_cloud_xyz32(header, points))
        self.frames += 1


def main(args: Sequence[str] | None = None) -> int:
    """Console entry point: ``fake_depth_camera --ros-args -p object:=mug``."""
    return run_node(FakeDepthCameraNode, NODE_NAME, SingleThreadedExecutor, args, startup_errors=(ParameterError,))


if __name__ == "__main__":
    sys.exit(main())
