"""fake_depth_camera: sample objects, rendering + noise + segmentation, the node, and camera -> grasps."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from geometry_msgs.msg import PoseArray
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import PointCloud2, PointField

from ros_helpers import domain, ros_context, Spinner, wait_for
from dvqvae_model.sim import depth_camera as dc
from dvqvae_model.checkpoint import save_checkpoint
from dvqvae_model.nets.config import preset
from dvqvae_model.nets.dvqvae import DVQVAE
from dvqvae_model.hand.hand_model import load_hand_model
from dvqvae_model.nets.prior import GatedPixelCNNPrior
from dvqvae_ros.fake_camera_node import FakeDepthCamera, FakeDepthCameraNode
from dvqvae_ros.grasp_node import GraspGeneratorNode
from dvqvae_ros.parameters import ParameterError
from dvqvae_ros.point_cloud import read_xyz
from dvqvae_model.sim.sample_objects import SAMPLE_OBJECTS, load_object, sample_object

DOMAIN_ID = domain(78)  # unique per test module
REPO = Path(__file__).resolve().parent.parent
INTRINSICS = dc.CameraIntrinsics.from_fov(640, 480, 79.5)


@pytest.fixture(scope="module")
def ctx():
    yield from ros_context(DOMAIN_ID)


# --------------------------------------------------------------------------- sample objects
@pytest.mark.parametrize("name", sorted(SAMPLE_OBJECTS))
def test_sample_objects(name: str) -> None:
    mesh = sample_object(name)
    assert mesh.is_watertight and mesh.volume > 0
    extents = mesh.extents
    assert 0.03 <= extents.min() and extents.max() <= 0.25, extents  # graspable, metre units
    assert np.allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-9)  # centred for the camera
    assert np.array_equal(mesh.vertices, sample_object(name).vertices)  # deterministic


def test_load_object_by_path_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "thing.ply"
    trimesh.creation.box(extents=(0.1, 0.05, 0.02)).apply_translation([1.0, 2.0, 3.0]).export(path)
    mesh = load_object(str(path))
    assert np.allclose(mesh.extents, [0.1, 0.05, 0.02]) and np.allclose(mesh.bounds.mean(axis=0), 0.0)
    with pytest.raises(ValueError, match="mug, box, bottle, ball"):
        load_object("unicorn")
    (tmp_path / "empty.obj").write_text("# nothing\n")
    with pytest.raises(ValueError):
        load_object(str(tmp_path / "empty.obj"))


# --------------------------------------------------------------------------- camera library
def test_clean_render_lies_on_the_object() -> None:
    mesh = sample_object("mug")
    cam = FakeDepthCamera(mesh, distance=0.5, azimuth_deg=30, elevation_deg=35, intrinsics=INTRINSICS,
                          noise=0.0, table=False)
    pts = cam.capture(np.random.default_rng(0))
    assert pts.dtype == np.float32 and pts.shape[1] == 3 and len(pts) > 2000
    assert np.all(pts[:, 2] > 0.3) and np.all(pts[:, 2] < 0.7)  # optical frame: z forward, ~0.5 m away
    world = dc.transform_points(pts, cam.cam_to_world)
    dist = np.abs(trimesh.proximity.signed_distance(mesh, world[::10]))
    assert dist.max() < 1e-3
    eye = cam.cam_to_world[:3, 3]
    assert np.isclose(np.linalg.norm(eye), 0.5) and np.isclose(np.degrees(np.arcsin(eye[2] / 0.5)), 35)


def test_table_is_segmented_away() -> None:
    mesh = sample_object("box")
    kwargs = dict(distance=0.6, azimuth_deg=-40, elevation_deg=45, intrinsics=INTRINSICS)
    with_table = FakeDepthCamera(mesh, **kwargs, noise=1.0, table=True)
    no_table = FakeDepthCamera(mesh, **kwargs, noise=0.0, table=False)
    # the table fills much of the image, but none of it survives segmentation
    assert np.isfinite(with_table.clean_depth).sum() > 3 * np.isfinite(no_table.clean_depth).sum()
    pts = with_table.capture(np.random.default_rng(1))
    height = dc.transform_points(pts, with_table.cam_to_world)[:, 2] - with_table.table_z
    assert height.min() > 0.003
    assert 0.85 * len(no_table.capture(np.random.default_rng(1))) < len(pts)  # most of the object is kept


def test_noise_is_seeded_and_realistic() -> None:
    mesh = sample_object("ball")
    kwargs = dict(distance=0.5, azimuth_deg=10, elevation_deg=20, intrinsics=INTRINSICS, table=False)
    noisy = FakeDepthCamera(mesh, **kwargs, noise=1.0)
    clean = FakeDepthCamera(mesh, **kwargs, noise=0.0).capture(np.random.default_rng(0))
    a = noisy.capture(np.random.default_rng(5))
    b = noisy.capture(np.random.default_rng(5))
    c = noisy.capture(np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == clean.shape  # no dropout without a table: the same pixels, in the same order
    err = a[:, 2] - clean[:, 2]
    expected = dc.depth_noise_sigma(clean[:, 2]).mean()  # ~1.4 mm at 0.46 m
    assert 0.8 * expected < err.std() < 1.2 * expected and abs(err.mean()) < 0.2 * expected
    # noise is along the viewing ray: x/z and y/z (the pixel) are unchanged
    assert np.allclose(a[:, :2] / a[:, 2:], clean[:, :2] / clean[:, 2:], atol=1e-5)


def test_camera_pose_errors() -> None:
    mesh = sample_object("bottle")
    with pytest.raises(ValueError, match="inside the object"):
        FakeDepthCamera(mesh, distance=0.05, azimuth_deg=0, elevation_deg=30, intrinsics=INTRINSICS)
    with pytest.raises(ValueError, match="below the table"):
        FakeDepthCamera(mesh, distance=0.5, azimuth_deg=0, elevation_deg=-10, intrinsics=INTRINSICS)
    FakeDepthCamera(mesh, distance=0.5, azimuth_deg=0, elevation_deg=-10, intrinsics=INTRINSICS, table=False)


# --------------------------------------------------------------------------- node
def test_node_publishes_clouds(ctx) -> None:
    ns = f"/c{uuid.uuid4().hex[:8]}"
    cam = FakeDepthCameraNode(context=ctx, namespace=ns, parameter_overrides=[
        Parameter("object", value="box"), Parameter("rate_hz", value=20.0), Parameter("frame_id", value="cam_x"),
        Parameter("width", value=320), Parameter("height", value=240), Parameter("fov_deg", value=70)])
    peer = Node("peer", context=ctx, namespace=ns)
    clouds: list[PointCloud2] = []
    peer.create_subscription(PointCloud2, "points", clouds.append, 10)
    spin = Spinner(ctx, cam, peer)
    try:
        assert wait_for(lambda: len(clouds) >= 3)
    finally:
        spin.close()
    msg = clouds[0]
    assert msg.header.frame_id == "cam_x" and msg.height == 1 and msg.width > 500 and msg.is_dense
    assert [(f.name, f.offset, f.datatype) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32), ("y", 4, PointField.FLOAT32), ("z", 8, PointField.FLOAT32)]
    assert msg.point_step == 12
    xyz = read_xyz(msg)
    assert np.all(xyz[:, 2] > 0.3) and np.ptp(xyz, axis=0).max() < 0.2
    stamps = [c.header.stamp.sec + 1e-9 * c.header.stamp.nanosec for c in clouds]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    assert not np.array_equal(read_xyz(clouds[0]), read_xyz(clouds[1]))  # fresh noise every frame


def test_node_rejects_bad_parameters(ctx) -> None:
    for overrides, needle in ((dict(object="unicorn"), "object"), (dict(distance=0.04), "distance"),
                              (dict(rate_hz=0.0, noise=-1.0), "noise")):
        with pytest.raises(ParameterError, match=needle):
            FakeDepthCameraNode(context=ctx, namespace=f"/e{uuid.uuid4().hex[:6]}",
                                parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])


def test_fake_camera_drives_grasp_generator(ctx, tmp_path: Path) -> None:
    """End to end in one process: simulated camera -> grasp_generator (untrained compact model) -> poses."""
    torch.manual_seed(0)
    hand = load_hand_model("standin")
    model_cfg, prior_cfg, _ = preset("compact")
    ckpt = save_checkpoint(tmp_path / "ckpt", DVQVAE(model_cfg, hand).eval(), GatedPixelCNNPrior(prior_cfg).eval(),
                           kind="dvqvae", model_config=model_cfg, prior_config=prior_cfg,
                           hand_fingerprint=hand.fingerprint)
    ns = f"/e2e{uuid.uuid4().hex[:6]}"
    cam = FakeDepthCameraNode(context=ctx, namespace=ns, parameter_overrides=[
        Parameter("object", value="mug"), Parameter("rate_hz", value=5.0)])
    gen = GraspGeneratorNode(context=ctx, namespace=ns, parameter_overrides=[
        Parameter("model", value=str(ckpt)), Parameter("num_grasps", value=4)])
    peer = Node("peer", context=ctx, namespace=ns)
    poses: list[PoseArray] = []
    peer.create_subscription(PoseArray, "grasps/wrist_poses", poses.append, 10)
    spin = Spinner(ctx, cam, gen, peer)
    try:
        assert wait_for(lambda: len(poses) >= 1, 15.0)
    finally:
        spin.close()
    assert poses[0].header.frame_id == "camera_depth_optical_frame" and len(poses[0].poses) == 4


def test_fake_camera_main_cross_process(ctx) -> None:
    ns = f"/xc{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN_ID), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "dvqvae_ros.fake_camera_node", "--ros-args", "-r", f"__ns:={ns}",
           "-p", "object:=bottle", "-p", "rate_hz:=10.0"]
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peer = Node("xc_peer", context=ctx, namespace=ns)
    clouds: list[PointCloud2] = []
    peer.create_subscription(PointCloud2, "points", clouds.append, 10)
    spin = Spinner(ctx, peer)
    try:
        assert wait_for(lambda: len(clouds) >= 2 or proc.poll() is not None, 30.0)
        assert len(clouds) >= 2, proc.communicate(timeout=5)[0] if proc.poll() is not None else "no clouds"
        assert clouds[0].header.frame_id == "camera_depth_optical_frame"
        proc.send_signal(2)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        spin.close()
