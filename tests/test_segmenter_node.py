"""object_segmenter over real rclpy: depth image / scene cloud / mask in, the object's cloud out on ``points``."""
from __future__ import annotations

import uuid

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header

from ros_helpers import Spinner, domain, ros_context, wait_for
from dvqvae_model.sim import depth_camera as dc
from dvqvae_model.pipeline.segmentation import Segmenter
from dvqvae_model.sim.tabletop import make_tabletop_scene, noisy_frame, pixel_iou, target_label
from dvqvae_ros.fake_camera_node import FakeDepthCameraNode
from dvqvae_ros.images import camera_info_message, depth_from_image, depth_image_message
from dvqvae_ros.parameters import ParameterError
from dvqvae_ros.point_cloud import read_xyz
from dvqvae_model.sim.sample_objects import sample_object
from dvqvae_ros.segmenter_node import ObjectSegmenterNode

DOMAIN_ID = domain(70)  # unique per test module
K = dc.CameraIntrinsics()
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def ctx():
    yield from ros_context(DOMAIN_ID)


def _pixels(points: np.ndarray, intr: dc.CameraIntrinsics) -> np.ndarray:
    """The pixel mask of camera-frame points (exact: the noise is along each pixel's ray)."""
    u = np.rint(intr.fx * points[:, 0] / points[:, 2] + intr.cx).astype(int)
    v = np.rint(intr.fy * points[:, 1] / points[:, 2] + intr.cy).astype(int)
    mask = np.zeros((intr.height, intr.width), dtype=bool)
    mask[v, u] = True
    return mask


class _Peer:
    def __init__(self, ctx, ns: str) -> None:
        self.node = Node("peer", context=ctx, namespace=ns)
        self.clouds: list[PointCloud2] = []
        self.truth: list[Image] = []
        self.diag: list[DiagnosticArray] = []
        self.node.create_subscription(PointCloud2, "points", self.clouds.append, RELIABLE)
        self.node.create_subscription(Image, "ground_truth/mask", self.truth.append, RELIABLE)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diag.append, RELIABLE)
        self.pub_depth = self.node.create_publisher(Image, "depth/image", RELIABLE)
        self.pub_info = self.node.create_publisher(CameraInfo, "depth/camera_info", RELIABLE)

    def status(self, name: str) -> dict[str, str]:
        for arr in reversed(self.diag):
            for s in arr.status:
                if s.name.startswith(name):
                    return {"message": s.message, **{kv.key: kv.value for kv in s.values}}
        return {}


def test_depth_image_in_object_cloud_out(ctx) -> None:
    ns = f"/s{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(3)
    scene = make_tabletop_scene([sample_object(n) for n in ("mug", "box", "ball")], rng, intrinsics=K)
    depth, labels = noisy_frame(scene, rng)
    seg = ObjectSegmenterNode(context=ctx, namespace=ns, parameter_overrides=[Parameter("qos", value="reliable")])
    peer = _Peer(ctx, ns)
    spin = Spinner(ctx, seg, peer.node)
    header = Header(frame_id="cam_optical")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    image = depth_image_message(header, depth, "16UC1")
    try:
        assert wait_for(lambda: peer.pub_depth.get_subscription_count() > 0 and peer.pub_info.get_subscription_count() > 0)
        bad = depth_image_message(header, depth, "16UC1")
        bad.encoding = "rgb8"
        peer.pub_depth.publish(image)  # before any camera info: skipped with a warning
        assert wait_for(lambda: seg.frames >= 1 and seg.wait_idle(1.0))
        assert seg.failures.get("no_camera_info") == 1 and not peer.clouds
        peer.pub_info.publish(camera_info_message(header, K))
        assert wait_for(lambda: seg._info is not None)
        peer.pub_depth.publish(bad)
        assert wait_for(lambda: seg.failures.get("bad_input") == 1)
        assert "unsupported depth encoding 'rgb8'" in seg.last_warning and not peer.clouds
        peer.pub_depth.publish(image)  # the node survived: the next good frame is segmented
        assert wait_for(lambda: len(peer.clouds) == 1)
        assert wait_for(lambda: "published" in peer.status("object_segmenter") and
                        peer.status("object_segmenter").get("published") == "1", 3.0)
    finally:
        spin.close()
    msg = peer.clouds[0]
    assert msg.header.frame_id == "cam_optical" and (msg.header.stamp.sec, msg.header.stamp.nanosec) == (12, 345)
    points = read_xyz(msg)
    expected = Segmenter(seg.segmenter.config).segment_depth(depth_from_image(image), K)
    np.testing.assert_array_equal(points, expected.points)
    assert pixel_iou(_pixels(points, K), labels == target_label(depth, labels, K)) >= 0.9
    diag = peer.status("object_segmenter")
    assert diag["plane_found"] == "True" and int(diag["clusters"]) >= 3 and int(diag["chosen_points"]) == len(points)
    assert float(diag["time_p50_ms"]) > 0 and diag["skipped_bad_input"] == "1"


@pytest.mark.parametrize("mode", ["scene_cloud", "mask"])
def test_fake_camera_scene_to_segmented_points(ctx, mode: str) -> None:
    """fake_depth_camera publishes a scene with three objects; the segmenter finds the aimed-at one."""
    ns = f"/f{uuid.uuid4().hex[:8]}"
    cam = FakeDepthCameraNode(context=ctx, namespace=ns, parameter_overrides=[
        Parameter("object", value="bottle"), Parameter("extra_objects", value=2), Parameter("rate_hz", value=4.0),
        Parameter("publish_segmented", value=False)])
    overrides = [Parameter("qos", value="reliable")]
    if mode == "scene_cloud":
        overrides.append(Parameter("input", value="scene_cloud"))
    else:
        overrides.append(Parameter("use_mask", value=True))
    seg = ObjectSegmenterNode(context=ctx, namespace=ns, parameter_overrides=overrides,
                              cli_args=["--ros-args", "-r", "mask:=ground_truth/mask"])
    peer = _Peer(ctx, ns)
    spin = Spinner(ctx, cam, seg, peer.node)
    try:
        assert wait_for(lambda: len(peer.clouds) >= 2, 20.0)
        assert wait_for(lambda: len(peer.truth) >= 4, 5.0)
    finally:
        spin.close()
    truth = {(m.header.stamp.sec, m.header.stamp.nanosec): m for m in peer.truth}
    msg = peer.clouds[-1]
    gt = truth[(msg.header.stamp.sec, msg.header.stamp.nanosec)]
    gt_mask = np.frombuffer(bytes(gt.data), dtype=np.uint8).reshape(gt.height, gt.width) > 0
    iou = pixel_iou(_pixels(read_xyz(msg), K), gt_mask)
    assert iou >= (0.97 if mode == "mask" else 0.9), iou  # the mask path drops the plane_distance band
    assert cam.camera.scene.labels.max() == 3  # three objects were on the table


def test_bad_parameters_are_reported(ctx) -> None:
    for overrides, needle in ((dict(target="crop_box"), "crop_box"), (dict(input="rgb"), "input"),
                              (dict(plane_normal=[0.0, 0.0, 0.0]), "plane_normal")):
        with pytest.raises(ParameterError, match=needle):
            ObjectSegmenterNode(context=ctx, namespace=f"/e{uuid.uuid4().hex[:6]}",
                                parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])


def test_clicked_point_selects_the_object(ctx) -> None:
    """target: clicked waits for RViz's Publish Point, checks its frame, then cuts out the clicked object."""
    from geometry_msgs.msg import PointStamped

    ns = f"/k{uuid.uuid4().hex[:8]}"
    rng = np.random.default_rng(4)
    scene = make_tabletop_scene([sample_object(n) for n in ("bottle", "ball")], rng, intrinsics=K, distance=0.6)
    depth, labels = noisy_frame(scene, rng)
    seg = ObjectSegmenterNode(context=ctx, namespace=ns, parameter_overrides=[
        Parameter("qos", value="reliable"), Parameter("target", value="clicked")])
    peer = _Peer(ctx, ns)
    pub_click = peer.node.create_publisher(PointStamped, "clicked_point", 10)
    spin = Spinner(ctx, seg, peer.node)
    header = Header(frame_id="cam_optical")
    ball = depth_to_cloud_points(depth, labels == 2)
    try:
        assert wait_for(lambda: peer.pub_depth.get_subscription_count() > 0 and pub_click.get_subscription_count() > 0)
        peer.pub_info.publish(camera_info_message(header, K))
        assert wait_for(lambda: seg._info is not None)
        peer.pub_depth.publish(depth_image_message(header, depth))
        assert wait_for(lambda: seg.failures.get("no_target") == 1)
        assert "waiting for a clicked point" in seg.last_warning
        click = PointStamped(header=Header(frame_id="map"))
        click.point.x, click.point.y, click.point.z = (float(v) for v in ball.mean(axis=0))
        pub_click.publish(click)
        assert wait_for(lambda: seg._click is not None)
        peer.pub_depth.publish(depth_image_message(header, depth))
        assert wait_for(lambda: seg.failures.get("click_frame") == 1)
        assert "'map'" in seg.last_warning and not peer.clouds
        click.header.frame_id = "cam_optical"
        pub_click.publish(click)
        assert wait_for(lambda: seg._click is not None and seg._click.header.frame_id == "cam_optical")
        peer.pub_depth.publish(depth_image_message(header, depth))
        assert wait_for(lambda: len(peer.clouds) == 1)
    finally:
        spin.close()
    assert pixel_iou(_pixels(read_xyz(peer.clouds[0]), K), labels == 2) >= 0.9


def depth_to_cloud_points(depth: np.ndarray, mask: np.ndarray) -> np.ndarray:
    from dvqvae_model.pipeline.segmentation import depth_to_cloud

    return depth_to_cloud(depth, K)[mask]
