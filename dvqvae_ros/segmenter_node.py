"""ROS 2 node ``object_segmenter``: a depth camera's scene in, one object's point cloud out on ``points``.

A thin shell over ``dvqvae_model.pipeline.segmentation.Segmenter`` (support plane by RANSAC, DBSCAN clusters on
it, one target by a rule, or a mask), so that an ordinary depth camera drives ``grasp_generator``:

* ``input: depth_image`` subscribes ``depth/image`` (sensor_msgs/Image, 16UC1 millimetres or 32FC1
  metres) and ``depth/camera_info`` (the latest one is used for each image);
  ``input: scene_cloud`` subscribes ``depth/points`` (sensor_msgs/PointCloud2, organized or not);
* ``use_mask: true`` also subscribes ``mask`` (sensor_msgs/Image, mono8 / 8UC1 / 16UC1 / 32SC1, same
  size as the depth image) and takes the object's pixels from it instead of clustering;
* ``target: clicked`` listens to ``clicked_point`` (geometry_msgs/PointStamped, what RViz's Publish Point
  tool sends; remap it to ``/clicked_point``); the point must be in the camera's frame (no tf here);
* publishes the object's points (float32 xyz, the input's header) on ``points`` (reliable) and
  ``/diagnostics`` once a second (plane found, inlier fraction, clusters, chosen size, time).

Frames are segmented in one worker thread, newest first (a waiting frame is replaced, never queued).
When no plane, no object or no target is found the node publishes nothing and logs why (throttled).
Parameters: ``dvqvae_ros.parameters.SegmenterParameters``.
"""
from __future__ import annotations

import sys
import threading
from collections import deque
from typing import Any, Optional, Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PointStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from dvqvae_model.pipeline.segmentation import Segmenter, SegmenterConfig
from dvqvae_ros import messages
from dvqvae_ros.images import depth_from_image, intrinsics_from_camera_info, mask_from_image
from dvqvae_ros.latest_worker import LatestOnlyWorker
from dvqvae_ros.parameters import ParameterError, SegmenterParameters, declare_parameters, read_parameters
from dvqvae_ros.point_cloud import create_cloud_xyz32, read_xyz
from dvqvae_ros.spin import run_node

__all__ = ["ObjectSegmenterNode", "main", "segmenter_config"]

NODE_NAME = "object_segmenter"
WARN_PERIOD_S = 5.0


def segmenter_config(p: SegmenterParameters) -> SegmenterConfig:
    """The library settings of the node's parameters (ValueError on an inconsistent combination)."""
    return SegmenterConfig(
        plane_distance=p.plane_distance, plane_normal=tuple(p.plane_normal),
        max_normal_angle_deg=p.max_normal_angle_deg, min_plane_fraction=p.min_plane_fraction,
        min_height=p.min_height, max_height=p.max_height, max_range=p.max_range, cluster_eps=p.cluster_eps,
        cluster_min_points=p.cluster_min_points, min_object_points=p.min_object_points, stride=p.stride,
        target=p.target, crop_box=tuple(p.crop_box), click_radius=p.click_radius)


def _stamp_s(header: Any) -> float:
    return float(header.stamp.sec) + 1e-9 * float(header.stamp.nanosec)


class ObjectSegmenterNode(Node):
    """Depth image / scene cloud in, segmented object cloud out (see the module docstring)."""

    def __init__(self, *, node_name: str = NODE_NAME, **node_kwargs: Any) -> None:
        super().__init__(node_name, **node_kwargs)
        try:
            declare_parameters(self, SegmenterParameters)
            self.params = read_parameters(self, SegmenterParameters)
            try:
                self.segmenter = Segmenter(segmenter_config(self.params))
            except ValueError as exc:
                raise ParameterError(f"invalid parameters for node '{self.get_name()}': {exc}") from exc
        except BaseException:
            super().destroy_node()
            raise
        p = self.params
        self._lock = threading.Lock()
        self._info: Optional[CameraInfo] = None
        self._masks: deque[Image] = deque(maxlen=8)  # recent masks, matched to frames by stamp
        self._waiting: Optional[tuple[str, Any]] = None  # a frame whose mask has not arrived yet
        self._click: Optional[PointStamped] = None
        self.frames = 0
        self.published = 0
        self.failures: dict[str, int] = {}
        self.last_result: Any = None
        self.last_warning = ""
        self._times: deque[float] = deque(maxlen=100)

        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        in_qos = qos_profile_sensor_data if p.qos == "sensor_data" else reliable
        self._pub = self.create_publisher(PointCloud2, "points", reliable)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        if p.input == "depth_image":
            self.create_subscription(Image, "depth/image", self._on_depth, in_qos)
            self.create_subscription(CameraInfo, "depth/camera_info", self._on_info, in_qos)
            source = "depth/image + depth/camera_info"
        else:
            self.create_subscription(PointCloud2, "depth/points", self._on_cloud, in_qos)
            source = "depth/points"
        if p.use_mask:
            self.create_subscription(Image, "mask", self._on_mask, in_qos)
        if p.target == "clicked":
            self.create_subscription(PointStamped, "clicked_point", self._on_click, 10)
        self._worker: LatestOnlyWorker[tuple[Any, ...]] = LatestOnlyWorker(
            self._process, lambda: 0.0, name="segmenter-worker")
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics)
        resolve = self.resolve_topic_name
        self.get_logger().info(
            f"segmenting {', '.join(resolve(t) for t in source.split(' + '))} "
            f"({'mask ' + resolve('mask') if p.use_mask else 'target ' + p.target}) -> {self._pub.topic_name}")

    # ------------------------------------------------------------------ inputs
    def _on_info(self, msg: CameraInfo) -> None:
        with self._lock:
            self._info = msg

    def _on_mask(self, msg: Image) -> None:
        with self._lock:
            self._masks.append(msg)
            job, self._waiting = self._waiting, None
        if job is not None:
            self._submit(job)

    def _on_click(self, msg: PointStamped) -> None:
        with self._lock:
            self._click = msg
        self.get_logger().info(f"clicked point ({msg.point.x:.3f}, {msg.point.y:.3f}, {msg.point.z:.3f}) "
                               f"in {msg.header.frame_id!r}")

    def _on_depth(self, msg: Image) -> None:
        self._submit(("depth", msg))

    def _on_cloud(self, msg: PointCloud2) -> None:
        self._submit(("cloud", msg))

    def _matching_mask(self, header: Any) -> Optional[Image]:
        """The recent mask stamped nearest to ``header`` within mask_max_age (callers hold the lock)."""
        best = min(self._masks, key=lambda m: abs(_stamp_s(m.header) - _stamp_s(header)), default=None)
        if best is None or abs(_stamp_s(best.header) - _stamp_s(header)) > self.params.mask_max_age:
            return None
        return best

    def _submit(self, job: tuple[str, Any]) -> None:
        """Hand a frame to the worker; with use_mask, only with its mask (else it waits for the mask)."""
        if self.params.use_mask:
            with self._lock:
                mask = self._matching_mask(job[1].header)
                if mask is None:
                    replaced, self._waiting = self._waiting, job
                else:
                    replaced = None
            if replaced is not None:
                self._warn("no_mask", f"no mask within mask_max_age {self.params.mask_max_age:g} s of a depth frame "
                           f"on {self.resolve_topic_name('mask')}: frame skipped")
            if mask is None:
                return
            job = (job[0], job[1], mask)
        self._worker.submit(job)

    # ------------------------------------------------------------------ work
    def _warn(self, status: str, text: str) -> None:
        with self._lock:
            self.failures[status] = self.failures.get(status, 0) + 1
            self.last_warning = text
        self.get_logger().warning(text, throttle_duration_sec=WARN_PERIOD_S)

    def _mask_for(self, mask_msg: Image, shape: tuple[int, ...]) -> Optional[np.ndarray]:
        try:
            mask = mask_from_image(mask_msg, self.params.mask_label)
        except ValueError as exc:
            self._warn("bad_mask", f"mask: {exc}")
            return None
        if mask.shape != shape[:2]:
            self._warn("bad_mask", f"mask is {mask.shape[1]} x {mask.shape[0]} but the depth frame is "
                       f"{shape[1]} x {shape[0]}")
            return None
        return mask

    def _clicked_for(self, frame_id: str) -> tuple[bool, Optional[np.ndarray]]:
        """(usable, clicked point or None); not usable = a click in another frame (warned: frame skipped)."""
        with self._lock:
            click = self._click
        if click is None or self.params.target != "clicked":
            return True, None
        if click.header.frame_id and click.header.frame_id != frame_id:
            self._warn("click_frame", f"the clicked point is in {click.header.frame_id!r}, the camera frame is "
                       f"{frame_id!r} (no tf in this node): set RViz's fixed frame to {frame_id!r} and click again")
            return False, None
        return True, np.array([click.point.x, click.point.y, click.point.z], dtype=np.float32)

    def _process(self, job: tuple[Any, ...]) -> None:
        kind, msg = job[0], job[1]
        mask_msg = job[2] if len(job) > 2 else None
        with self._lock:
            self.frames += 1
            info = self._info
        usable, clicked = self._clicked_for(msg.header.frame_id)
        if not usable:
            return
        try:
            if kind == "depth":
                if info is None:
                    self._warn("no_camera_info", "waiting for camera info on "
                               f"{self.resolve_topic_name('depth/camera_info')}: depth frame skipped")
                    return
                intrinsics = intrinsics_from_camera_info(info)
                if (intrinsics.width, intrinsics.height) != (msg.width, msg.height):
                    raise ValueError(f"depth image is {msg.width} x {msg.height} but camera info says "
                                     f"{intrinsics.width} x {intrinsics.height}")
                depth = depth_from_image(msg)
                mask = self._mask_for(mask_msg, depth.shape) if mask_msg is not None else None
                if self.params.use_mask and mask is None:
                    return
                result = self.segmenter.segment_depth(depth, intrinsics, mask=mask, clicked=clicked)
            else:
                xyz = read_xyz(msg)
                if msg.height > 1:
                    xyz = xyz.reshape(msg.height, msg.width, 3)
                mask = None
                if self.params.use_mask:
                    if msg.height <= 1:
                        raise ValueError("use_mask needs an organized cloud (height > 1) to match mask pixels")
                    mask = self._mask_for(mask_msg, xyz.shape)
                    if mask is None:
                        return
                result = self.segmenter.segment_points(xyz, mask=mask, clicked=clicked)
        except ValueError as exc:
            self._warn("bad_input", f"bad input frame: {exc}")
            return
        with self._lock:
            self.last_result = result
            self._times.append(result.timing_ms.get("total_ms", float("nan")))
        if not result.ok:
            self._warn(result.status, f"no object cloud published: {result.warning}")
            return
        self._pub.publish(create_cloud_xyz32(msg.header, result.points))
        with self._lock:
            self.published += 1

    # ------------------------------------------------------------------ diagnostics
    def diagnostics_snapshot(self) -> messages.DiagnosticsSnapshot:
        with self._lock:
            r, times = self.last_result, list(self._times)
            values: dict[str, Any] = {"input": self.params.input, "target": "mask" if self.params.use_mask
                                      else self.params.target, "frames": self.frames, "published": self.published}
            for status, n in sorted(self.failures.items()):
                values[f"skipped_{status}"] = n
            warning = self.last_warning
        if r is not None:
            values.update(last_status=r.status, plane_found=r.plane is not None,
                          plane_inlier_fraction=r.plane_inlier_fraction, clusters=r.clusters,
                          chosen_points=len(r.points), valid_points=r.valid_points, stride=r.stride,
                          time_last_ms=r.timing_ms.get("total_ms", float("nan")))
        if times:
            values["time_p50_ms"] = float(np.percentile(times, 50))
            values["time_p95_ms"] = float(np.percentile(times, 95))
        if r is None:
            level, text = DiagnosticStatus.WARN, warning or "waiting for depth frames"
        elif r.ok:
            level, text = DiagnosticStatus.OK, f"object with {len(r.points)} points"
        else:
            level, text = DiagnosticStatus.WARN, r.warning or warning
        return messages.DiagnosticsSnapshot(name=f"{self.get_name()}: segmentation", hardware_id=self.get_name(),
                                            level=level[0] if isinstance(level, bytes) else int(level), message=text, values=values)

    def _publish_diagnostics(self) -> None:
        self._pub_diag.publish(messages.diagnostics_message(self.get_clock().now().to_msg(),
                                                            self.diagnostics_snapshot()))

    def wait_idle(self, timeout: float) -> bool:
        return self._worker.wait_idle(timeout)

    def destroy_node(self) -> None:
        self._worker.stop()
        super().destroy_node()


def main(args: Sequence[str] | None = None) -> int:
    """Console entry point: ``object_segmenter --ros-args -p input:=depth_image -r depth/image:=/camera/...``."""
    return run_node(ObjectSegmenterNode, NODE_NAME, SingleThreadedExecutor, args, startup_errors=(ParameterError,))


if __name__ == "__main__":
    sys.exit(main())
