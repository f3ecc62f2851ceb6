"""GraspSet -> ROS message conversion: shapes, layouts, conventions (no middleware needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus
from scipy.spatial.transform import Rotation
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from dvqvae_model.hand.hand_model import FINGER_JOINT_NAMES as HAND_FINGER_JOINT_NAMES
from dvqvae_model.hand.hand_model import KEYPOINT_NAMES
from dvqvae_ros import messages as m


@pytest.fixture(scope="module")
def grasps(hand):
    """Four posed stand-in hands (random but plausible parameters), as the generator returns them."""
    g = torch.Generator().manual_seed(3)
    params = torch.zeros(4, 61)
    params[:, 10:13] = torch.randn(4, 3, generator=g)
    params[:, 13:58] = 0.3 * torch.rand(4, 45, generator=g)
    params[:, 58:61] = 0.1 * torch.randn(4, 3, generator=g) + torch.tensor([0.0, 0.0, 0.5])
    with torch.no_grad():
        out = hand.from_params(params)
    return {
        "params": params.numpy(),
        "vertices": out.vertices.numpy(),
        "keypoints": out.keypoints.numpy(),
        "joints": out.joints.numpy(),
        "faces": hand.faces.numpy(),
    }


HEADER = Header(frame_id="camera_depth_optical_frame", stamp=Time(sec=1234, nanosec=5678))


def assert_header(h: Header) -> None:
    assert h.frame_id == HEADER.frame_id
    assert (h.stamp.sec, h.stamp.nanosec) == (1234, 5678)
    assert h is not HEADER  # copied: later edits of the input do not leak into published messages


def test_axis_angle_to_quaternion_matches_scipy() -> None:
    rv = np.random.default_rng(0).normal(size=(50, 3)) * 2.0
    q = m.axis_angle_to_quaternion(rv)
    ref = Rotation.from_rotvec(rv).as_quat()  # x, y, z, w
    assert np.allclose(np.abs(np.einsum("ij,ij->i", q, ref)), 1.0, atol=1e-12)  # same rotation (q ~ -q)
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0)
    assert np.allclose(m.axis_angle_to_quaternion(np.zeros(3)), [0, 0, 0, 1])
    tiny = m.axis_angle_to_quaternion(np.array([1e-9, 0, 0]))
    assert np.all(np.isfinite(tiny)) and np.isclose(tiny[0], 5e-10)


def test_wrist_poses(grasps) -> None:
    msg = m.wrist_poses_message(HEADER, grasps["params"], grasps["joints"])
    assert_header(msg.header)
    assert len(msg.poses) == 4
    for k, pose in enumerate(msg.poses):
        pos = [pose.position.x, pose.position.y, pose.position.z]
        assert np.allclose(pos, grasps["joints"][k, 0], atol=1e-6)
        q = [pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w]
        expected = Rotation.from_rotvec(grasps["params"][k, 10:13]).as_matrix()
        assert np.allclose(Rotation.from_quat(q).as_matrix(), expected, atol=1e-6)


def test_wrist_orientation_is_the_hand_frame(hand) -> None:
    """Rotating the hand by global_orient rotates its wrist->middle-knuckle direction by the published quaternion."""
    params = torch.zeros(1, 61)
    params[0, 10:13] = torch.tensor([0.3, -1.1, 0.7])
    with torch.no_grad():
        rest, posed = hand.rest(), hand.from_params(params)
    pose = m.wrist_poses_message(HEADER, params.numpy(), posed.joints.numpy()).poses[0]
    q = [pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w]
    d_rest = (rest.joints[0, 4] - rest.joints[0, 0]).numpy()
    d_posed = (posed.joints[0, 4] - posed.joints[0, 0]).numpy()
    assert np.allclose(Rotation.from_quat(q).apply(d_rest), d_posed, atol=1e-5)


def test_keypoints_message_order(grasps) -> None:
    msg = m.keypoints_message(HEADER, grasps["keypoints"])
    assert_header(msg.header)
    assert len(msg.poses) == 4 * 21
    got = np.array([[p.position.x, p.position.y, p.position.z] for p in msg.poses]).reshape(4, 21, 3)
    assert np.allclose(got, grasps["keypoints"], atol=1e-6)
    assert all(p.orientation.w == 1.0 and p.orientation.x == 0.0 for p in msg.poses)
    assert KEYPOINT_NAMES[0] == "wrist" and KEYPOINT_NAMES[4] == "thumb_tip" and KEYPOINT_NAMES[20] == "pinky_tip"


def test_mano_message_layout(grasps) -> None:
    msg = m.mano_message(grasps["params"])
    dims = msg.layout.dim
    assert [d.label for d in dims] == ["grasp", m.MANO_LAYOUT_LABEL]
    assert dims[1].label.startswith("param:") and "hand_pose[45]" in dims[1].label
    assert [d.size for d in dims] == [4, 61] and [d.stride for d in dims] == [4 * 61, 61]
    assert msg.layout.data_offset == 0
    back = np.asarray(msg.data, dtype=np.float32).reshape(dims[0].size, dims[1].size)
    assert np.array_equal(back, grasps["params"].astype(np.float32))
    # the label spells the layout: the sizes sum to the row length
    sizes = [int(part.split("[")[1].rstrip("]")) for part in dims[1].label.split(":", 1)[1].split(",")]
    assert sum(sizes) == 61


def test_flexion_axes_curl_fingers_towards_the_palm(hand) -> None:
    with torch.no_grad():
        rest = hand.rest()
    joints = rest.joints[0].numpy()
    axes = m.flexion_axes(joints)
    assert axes.shape == (15, 3) and np.allclose(np.linalg.norm(axes, axis=1), 1.0)
    palm = np.cross(joints[1] - joints[0], joints[7] - joints[0])
    palm /= np.linalg.norm(palm)
    for j in range(15):
        params = torch.zeros(1, 61)
        params[0, 13 + 3 * j: 16 + 3 * j] = torch.as_tensor(0.5 * axes[j], dtype=torch.float32)
        with torch.no_grad():
            moved = (hand.from_params(params).keypoints - rest.keypoints)[0].numpy()
        displaced = np.linalg.norm(moved, axis=1) > 1e-4
        name = m.FINGER_JOINT_NAMES[j]
        assert displaced.any(), name
        assert (moved[displaced] @ palm > 0).all(), f"{name} does not flex towards the palm"
        angles = m.flexion_angles(params[0, 13:58].numpy(), axes)
        assert np.isclose(angles[j], 0.5, atol=1e-6) and np.allclose(np.delete(angles, j), 0.0, atol=1e-6)


def test_joint_state(hand, grasps) -> None:
    axes = m.flexion_axes(hand.rest().joints[0].detach().numpy())
    msg = m.joint_state_message(HEADER, grasps["params"][0, 13:58], axes)
    assert_header(msg.header)
    assert tuple(msg.name) == tuple(m.FINGER_JOINT_NAMES) == tuple(HAND_FINGER_JOINT_NAMES)
    assert len(msg.position) == 15 and np.all(np.isfinite(msg.position))
    assert np.allclose(msg.position, m.flexion_angles(grasps["params"][0, 13:58], axes))
    assert len(msg.velocity) == 0 and len(msg.effort) == 0


def test_grasp_markers(grasps) -> None:
    faces = grasps["faces"]
    msg = m.grasp_markers(HEADER, grasps["vertices"], faces, grasps["keypoints"])
    first, rest = msg.markers[0], msg.markers[1:]
    assert first.action == Marker.DELETEALL
    meshes = [mk for mk in rest if mk.ns == "hand_mesh"]
    spheres = [mk for mk in rest if mk.ns == "keypoints"]
    assert len(meshes) == 4 and len(spheres) == 4
    assert [mk.id for mk in meshes] == [0, 1, 2, 3]
    for k, mk in enumerate(meshes):
        assert mk.type == Marker.TRIANGLE_LIST == 11 and mk.action == Marker.ADD
        assert_header(mk.header)
        assert len(mk.points) == 3 * len(faces)
        got = np.array([[p.x, p.y, p.z] for p in mk.points])
        assert np.allclose(got, grasps["vertices"][k][faces].reshape(-1, 3), atol=1e-6)
        assert mk.pose.orientation.w == 1.0 and mk.scale.x == 1.0 and mk.color.a > 0
    for k, mk in enumerate(spheres):
        assert mk.type == Marker.SPHERE_LIST and len(mk.points) == 21 and mk.scale.x > 0
    best, worst = meshes[0].color, meshes[-1].color
    assert best.g > best.r and worst.r > worst.g  # green best, red worst
    assert best.a > worst.a


def test_rank_color_single_grasp_is_green() -> None:
    c = m.rank_color(0, 1)
    assert c.g > c.r and 0 < c.a <= 1


def test_diagnostics_message() -> None:
    snap = m.DiagnosticsSnapshot(name="grasp_generator: grasp generation", hardware_id="cpu",
                                 level=1, message="bad cloud", values={"latency_p50_ms": 12.3456, "bad_clouds": 2})
    msg = m.diagnostics_message(Time(sec=9), snap)
    assert msg.header.stamp.sec == 9
    (status,) = msg.status
    assert status.level == DiagnosticStatus.WARN
    assert status.name == snap.name and status.hardware_id == "cpu" and status.message == "bad cloud"
    assert {kv.key: kv.value for kv in status.values} == {"latency_p50_ms": "12.35", "bad_clouds": "2"}


# --------------------------------------------------------------------------- fast paths == straightforward code
def reference_markers(header: Header, vertices: np.ndarray, faces: np.ndarray, keypoints: np.ndarray):
    """The plain implementation the fast paths must reproduce: one Point(x=, y=, z=) per mesh corner."""
    from geometry_msgs.msg import Point
    from std_msgs.msg import ColorRGBA
    from visualization_msgs.msg import MarkerArray

    out = MarkerArray(markers=[Marker(header=header, action=Marker.DELETEALL)])
    count = len(vertices)
    for rank in range(count):
        color = m.rank_color(rank, count)
        mesh = Marker(header=header, ns="hand_mesh", id=rank, type=Marker.TRIANGLE_LIST, action=Marker.ADD,
                      color=color)
        mesh.pose.orientation.w = 1.0
        mesh.scale.x = mesh.scale.y = mesh.scale.z = 1.0
        for face in faces:
            for v in face:
                x, y, z = (float(c) for c in vertices[rank][v])
                mesh.points.append(Point(x=x, y=y, z=z))
        spheres = Marker(header=header, ns="keypoints", id=rank, type=Marker.SPHERE_LIST, action=Marker.ADD,
                         color=ColorRGBA(r=color.r * 0.6, g=color.g * 0.6, b=color.b * 0.6, a=1.0))
        spheres.pose.orientation.w = 1.0
        spheres.scale.x = spheres.scale.y = spheres.scale.z = m.KEYPOINT_SPHERE_DIAMETER
        spheres.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in keypoints[rank]]
        out.markers.append(mesh)
        out.markers.append(spheres)
    return out


def test_grasp_markers_equal_the_straightforward_implementation(grasps) -> None:
    ref = reference_markers(HEADER, grasps["vertices"], grasps["faces"], grasps["keypoints"])
    fast = m.grasp_markers(HEADER, torch.from_numpy(grasps["vertices"]), grasps["faces"], grasps["keypoints"])
    assert fast == ref  # field by field, every triangle corner and colour
    point = fast.markers[1].points[7]
    assert type(point.x) is float and point._check_fields == type(point)()._check_fields


def test_serialized_markers_decode_to_the_same_message(grasps) -> None:
    from rclpy.serialization import deserialize_message, serialize_message
    from visualization_msgs.msg import MarkerArray

    assert m.serialized_markers_supported()  # plain CDR with the bundled rmw
    raw = m.serialized_grasp_markers(HEADER, grasps["vertices"], grasps["faces"], grasps["keypoints"])
    assert isinstance(raw, bytes)
    ref = reference_markers(HEADER, grasps["vertices"], grasps["faces"], grasps["keypoints"])
    decoded = deserialize_message(raw, MarkerArray)
    assert decoded == deserialize_message(serialize_message(ref), MarkerArray)  # colours go through float32
    got = np.array([[p.x, p.y, p.z] for p in decoded.markers[3].points])
    assert np.array_equal(got, grasps["vertices"][1][grasps["faces"]].reshape(-1, 3).astype(np.float64))
    # one grasp, odd-length frame id (different alignment before the first sequence)
    hdr = Header(frame_id="abc", stamp=Time(sec=1, nanosec=2))
    one = m.serialized_grasp_markers(hdr, grasps["vertices"][:1], grasps["faces"], grasps["keypoints"][:1])
    ref1 = reference_markers(hdr, grasps["vertices"][:1], grasps["faces"], grasps["keypoints"][:1])
    assert deserialize_message(one, MarkerArray) == deserialize_message(serialize_message(ref1), MarkerArray)


def test_serialized_markers_refuse_an_empty_mesh(grasps) -> None:
    with pytest.raises(m.SerializationUnsupported):
        m.serialized_grasp_markers(HEADER, grasps["vertices"], np.zeros((0, 3), dtype=np.int64), grasps["keypoints"])


def test_scores_message_layout() -> None:
    scores = np.array([2.0, 1.0, -3.0], dtype=np.float32)
    terms = {"prior": np.array([-1.0, -2.0, -3.0]), "penetration": np.array([0.5, 1.0, 4.0]),
             "contact": np.zeros(3), "closure": np.array([0.1, 0.2, 1.0]), "digits": np.array([1.0, 2.0, 6.0]),
             "stability": np.array([0.2, 0.5, 0.9]), "penetration_est": np.array([0.3, 0.8, 5.0]),
             "displacement_est": np.array([0.4, 1.5, 9.0])}
    msg = m.scores_message(scores, terms)
    assert [d.label for d in msg.layout.dim] == ["grasp", m.SCORES_LAYOUT_LABEL]
    assert m.SCORES_LAYOUT_LABEL == ("term:score,prior,penetration,contact,closure,digits,stability,penetration_est,"
                                     "displacement_est")
    assert [d.size for d in msg.layout.dim] == [3, 9] and [d.stride for d in msg.layout.dim] == [27, 9]
    table = np.asarray(msg.data, dtype=np.float32).reshape(3, 9)
    np.testing.assert_array_equal(table[:, 0], scores)
    np.testing.assert_array_equal(table[:, 2], terms["penetration"])
    np.testing.assert_array_equal(table[:, 5], terms["digits"])
    np.testing.assert_allclose(table[:, 6], terms["stability"])
    np.testing.assert_allclose(table[:, 7], terms["penetration_est"])
    np.testing.assert_allclose(table[:, 8], terms["displacement_est"])
    raw = np.asarray(m.scores_message(scores).data, dtype=np.float32).reshape(3, 9)  # the raw path: score only
    assert np.isnan(raw[:, 1:]).all() and np.array_equal(raw[:, 0], scores)
