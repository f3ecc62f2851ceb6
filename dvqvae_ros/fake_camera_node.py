"""ROS 2 node ``fake_depth_camera``: a simulated depth camera looking at one object.

Lets the whole pipeline run without hardware: it ray-casts a mesh (a bundled
sample object by name, or any mesh file) with ``dvqvae_model.sim.depth_camera`` at a
RealSense-like resolution and field of view, optionally standing on a table top,
adds depth noise (fresh noise every frame), segments the object from the table
and publishes the object's points as a float32 xyz PointCloud2 on ``points`` in
the camera's optical frame (z forward, x right, y down; ``frame_id`` parameter).

The scene is static, so the noise-free depth image is rendered once; every
frame only adds noise, back-projects and segments (a few ms at 640 x 480).
Parameters: ``dvqvae_ros.parameters.FakeCameraParameters``.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Sequence

import numpy as np
import rclpy
import trimesh
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from dvqvae_model.sim import depth_camera as dc
from dvqvae_ros.parameters import FakeCameraParameters, ParameterError, declare_parameters, read_parameters
from dvqvae_ros.spin import spin_until_shutdown
from dvqvae_ros.point_cloud import create_cloud_xyz32
from dvqvae_model.sim.sample_objects import load_object

__all__ = ["FakeDepthCamera", "FakeDepthCameraNode", "main"]

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


class FakeDepthCameraNode(Node):
    """Publishes ``points`` (PointCloud2) at ``rate_hz`` from a ``FakeDepthCamera``."""

    def __init__(self, *, node_name: str = NODE_NAME, **node_kwargs: Any) -> None:
        super().__init__(node_name, **node_kwargs)
        try:
            declare_parameters(self, FakeCameraParameters)
            self.params = read_parameters(self, FakeCameraParameters)
            p = self.params
            try:
                mesh = load_object(p.object)
                intrinsics = dc.CameraIntrinsics.from_fov(p.width, p.height, p.fov_deg)
                self.camera = FakeDepthCamera(mesh, distance=p.distance, azimuth_deg=p.azimuth_deg,
                                              elevation_deg=p.elevation_deg, intrinsics=intrinsics,
                                              noise=p.noise, table=p.table)
            except ValueError as exc:
                raise ParameterError(f"invalid parameters for node '{self.get_name()}': {exc}") from exc
        except BaseException:
            super().destroy_node()
            raise
        self._rng = np.random.default_rng(p.seed)
        self.frames = 0
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self._pub = self.create_publisher(PointCloud2, "points", qos)
        self._timer = self.create_timer(1.0 / p.rate_hz, self._tick)
        hfov, vfov = intrinsics.fov_deg
        self.get_logger().info(
            f"rendering {p.object!r} at {p.distance:g} m (azimuth {p.azimuth_deg:g}, elevation {p.elevation_deg:g} "
            f"deg), {p.width}x{p.height} px, {hfov:.1f}x{vfov:.1f} deg FOV, publishing {self._pub.topic_name} "
            f"in {p.frame_id!r} at {p.rate_hz:g} Hz")

    def _tick(self) -> None:
        points = self.camera.capture(self._rng)
        if len(points) == 0:
            self.get_logger().warning("the object is out of view: nothing to publish", throttle_duration_sec=5.0)
            return
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=self.params.frame_id)
        self._pub.publish(create_cloud_xyz32(header, points))
        self.frames += 1


def main(args: Sequence[str] | None = None) -> int:
    """Console entry point: ``fake_depth_camera --ros-args -p object:=mug``."""
    rclpy.init(args=list(args) if args is not None else sys.argv)
    try:
        node = FakeDepthCameraNode()
    except ParameterError as exc:
        rclpy.logging.get_logger(NODE_NAME).fatal(str(exc))
        rclpy.try_shutdown()
        return 2
    return spin_until_shutdown(node, SingleThreadedExecutor())


if __name__ == "__main__":
    sys.exit(main())
