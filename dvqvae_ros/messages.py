"""Turn a ``GraspSet`` into standard ROS messages (no custom message package needed).

Everything is expressed in the frame of the input cloud and stamped with its
header, so consumers can transform the results with TF exactly like the cloud.

Conventions (documented for consumers):
- ``grasps/wrist_poses`` (PoseArray): one pose per grasp, best first; position =
  MANO wrist joint, orientation = ``global_orient`` (axis-angle) as a quaternion.
  The hand-local frame is MANO's: fingers along -x, thumb towards +z, palm
  normal about -y (right hand).
- ``grasps/keypoints`` (PoseArray): K x 21 poses, grasp-major; per grasp the
  21-keypoint order is wrist, then thumb, index, middle, ring, pinky, each from
  the knuckle (MCP) to the tip. Orientations are identity.
- ``grasps/mano`` (Float32MultiArray): K x 61 row-major; dim 0 "grasp", dim 1
  labelled ``MANO_LAYOUT_LABEL`` = "param:betas[10],global_orient[3],hand_pose[45],transl[3]".
- ``grasps/scores`` (Float32MultiArray): K x 9 row-major, same order as the poses (best
  first); dim 0 "grasp", dim 1 labelled ``SCORES_LAYOUT_LABEL`` =
  "term:score,prior,penetration,contact,closure,digits,stability,penetration_est,displacement_est":
  the total score (higher is better; by default minus the estimated Q) and what it is made of
  (penetration_est / displacement_est: the learnt estimates of the evaluation's penetration volume
  in cm^3 and simulated displacement in cm) (``dvqvae_model.pipeline.grasp_quality``; NaN for terms not computed, e.g. on
  the raw path where only the graph's score exists). Published right after ``grasps/mano``
  for the same cloud.
- ``grasps/joint_states`` (JointState): the best grasp's 15 finger joints in
  MANO joint order (``FINGER_JOINT_NAMES``); position = flexion angle (rad), the
  joint's axis-angle rotation projected on its flexion axis (see
  ``flexion_axes``), 0 = flat hand, positive = towards the palm.
- ``grasps/markers`` (MarkerArray): DELETEALL, then per grasp a TRIANGLE_LIST
  hand mesh (ns "hand_mesh") and a SPHERE_LIST of its 21 keypoints
  (ns "keypoints"), id = rank, colour from green (best) to red (worst).

Speed: a hand mesh is 3 x 1552 vertices per grasp, and every ``geometry_msgs/Point``
made in Python (and read back by the serialiser) costs microseconds: ~35 ms to
build and ~14 ms to serialise 8 meshes on a 2-core CPU. ``serialized_grasp_markers``
therefore writes the mesh vertices straight into the CDR bytes (rclpy publishers
take serialised messages): the small parts of the message come from the regular
serialiser, the big vertex arrays from numpy (~2 ms for 8 grasps). It checks the
result against the object path once per process (``serialized_markers_supported``)
and callers fall back to ``grasp_markers`` if the middleware's encoding differs.
"""
from __future__ import annotations

import array
import colorsys
import functools
import struct
from collections import deque
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseArray, Quaternion
from sensor_msgs.msg import JointState
from std_msgs.msg import ColorRGBA, Float32MultiArray, Header, MultiArrayDimension, MultiArrayLayout
from visualization_msgs.msg import Marker, MarkerArray

from dvqvae_model.hand.hand_model import FINGER_JOINT_NAMES  # 15 finger joints, MANO order (= hand_pose order)

__all__ = [
    "FINGER_JOINT_NAMES",
    "MANO_LAYOUT_LABEL",
    "DiagnosticsSnapshot",
    "axis_angle_to_quaternion",
    "diagnostics_message",
    "flexion_angles",
    "flexion_axes",
    "grasp_markers",
    "joint_state_message",
    "keypoints_message",
    "mano_message",
    "scores_message",
    "SCORES_LAYOUT_LABEL",
    "SCORE_COLUMNS",
    "SerializationUnsupported",
    "rank_color",
    "serialized_grasp_markers",
    "serialized_markers_supported",
    "wrist_poses_message",
]

PARAM_DIM = 61
GLOBAL_ORIENT = slice(10, 13)
HAND_POSE = slice(13, 58)
MANO_LAYOUT_LABEL = "param:betas[10],global_orient[3],hand_pose[45],transl[3]"
SCORE_COLUMNS = ("score", "prior", "penetration", "contact", "closure", "digits", "stability", "penetration_est",
                 "displacement_est")  # = score + grasp_quality.TERM_NAMES
SCORES_LAYOUT_LABEL = "term:" + ",".join(SCORE_COLUMNS)

MANO_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
KEYPOINT_SPHERE_DIAMETER = 0.008  # metres


def _np(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """Accept numpy arrays or (CPU) torch tensors."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _header(header: Header) -> Header:
    return Header(stamp=Time(sec=header.stamp.sec, nanosec=header.stamp.nanosec), frame_id=header.frame_id)


# Point objects without Point.__init__ (keyword parsing + three property setters per point,
# ~1 us each): allocate bare instances and fill their slots column by column with the slot
# descriptors' C-level __set__. Same objects, same values (Python floats), ~3x faster.
_POINT_SLOTS = tuple(getattr(Point, name, None) for name in ("_x", "_y", "_z"))
_POINT_CHECK_FIELDS = getattr(Point, "_check_fields", None)  # rosidl >= Jazzy: per-object validation flag
_FAST_POINTS = all(hasattr(d, "__set__") for d in _POINT_SLOTS)


def _points(xyz: np.ndarray) -> list[Point]:
    """[..., 3] coordinates -> list of geometry_msgs/Point (float64 values)."""
    arr = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if not _FAST_POINTS:
        return [Point(x=x, y=y, z=z) for x, y, z in arr.tolist()]
    n = len(arr)
    objs = list(map(Point.__new__, repeat(Point, n)))
    for slot, column in zip(_POINT_SLOTS, arr.T.tolist()):
        deque(map(slot.__set__, objs, column), maxlen=0)
    if _POINT_CHECK_FIELDS is not None:
        flag = Point()._check_fields  # what the constructor would set (ROS_PYTHON_CHECK_FIELDS)
        deque(map(_POINT_CHECK_FIELDS.__set__, objs, repeat(flag, n)), maxlen=0)
    return objs


# --------------------------------------------------------------------------- rotations
def axis_angle_to_quaternion(rotvec: np.ndarray) -> np.ndarray:
    """Axis-angle [..., 3] -> unit quaternion [..., 4] as (x, y, z, w), stable near zero."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    half = 0.5 * angle
    # sin(a/2)/a with its Taylor series near 0 (avoids 0/0).
    small = angle < 1e-6
    scale = np.where(small, 0.5 - angle**2 / 48.0, np.sin(half) / np.where(small, 1.0, angle))
    return np.concatenate([rotvec * scale, np.cos(half)], axis=-1)


# --------------------------------------------------------------------------- joint angles
def flexion_axes(rest_joints: np.ndarray) -> np.ndarray:
    """Per finger joint, the unit axis about which a positive rotation curls the finger to the palm.

    From the rest-pose (flat hand) MANO joints [16, 3]: axis_j = normalise(d_j x n),
    with d_j the direction of the bone entering joint j and n the palm normal
    (palm side), n = normalise((index_mcp - wrist) x (pinky_mcp - wrist)) for a
    right hand. Rotating d_j about d_j x n moves it towards n. MANO's pose
    rotations are expressed in the parent's rest frame, which is the world frame
    of the flat template, so these axes apply to ``hand_pose`` directly.
    """
    j = _np(rest_joints).reshape(16, 3)
    normal = np.cross(j[1] - j[0], j[7] - j[0])
    normal /= np.linalg.norm(normal)
    axes = np.empty((15, 3))
    for k in range(1, 16):
        bone = j[k] - j[MANO_PARENTS[k]]
        axis = np.cross(bone, normal)
        norm = np.linalg.norm(axis)
        axes[k - 1] = axis / norm if norm > 1e-9 else np.array([0.0, 0.0, 1.0])
    return axes


def flexion_angles(hand_pose: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Signed flexion (rad) per finger joint: each joint's axis-angle projected on its flexion axis.

    hand_pose [..., 45] (15 joints x 3, MANO order) -> [..., 15].
    """
    pose = _np(hand_pose).reshape(*np.shape(hand_pose)[:-1], 15, 3)
    return np.einsum("...jc,jc->...j", pose, _np(axes).reshape(15, 3))


# --------------------------------------------------------------------------- messages
def wrist_poses_message(header: Header, params: Any, joints: Any) -> PoseArray:
    """PoseArray of the K wrists (MANO joint 0) oriented by ``global_orient``, in rank order."""
    params = _np(params).reshape(-1, PARAM_DIM)
    wrists = _np(joints).reshape(len(params), -1, 3)[:, 0]
    quats = axis_angle_to_quaternion(params[:, GLOBAL_ORIENT])
    msg = PoseArray(header=_header(header))
    msg.poses = [
        Pose(position=Point(x=p[0], y=p[1], z=p[2]), orientation=Quaternion(x=q[0], y=q[1], z=q[2], w=q[3]))
        for p, q in zip(wrists.tolist(), quats.tolist())
    ]
    return msg


def keypoints_message(header: Header, keypoints: Any) -> PoseArray:
    """PoseArray of K x 21 keypoints (grasp-major, identity orientation)."""
    kp = _np(keypoints).reshape(-1, 3)
    msg = PoseArray(header=_header(header))
    msg.poses = [Pose(position=p) for p in _points(kp)]
    return msg


def mano_message(params: Any) -> Float32MultiArray:
    """Float32MultiArray K x 61 with a labelled layout (see ``MANO_LAYOUT_LABEL``)."""
    p = _np(params, np.float32).reshape(-1, PARAM_DIM)
    k = len(p)
    layout = MultiArrayLayout(
        dim=[
            MultiArrayDimension(label="grasp", size=k, stride=k * PARAM_DIM),
            MultiArrayDimension(label=MANO_LAYOUT_LABEL, size=PARAM_DIM, stride=PARAM_DIM),
        ],
        data_offset=0,
    )
    return Float32MultiArray(layout=layout, data=array.array("f", np.ascontiguousarray(p).tobytes()))


def scores_message(scores: Any, terms: Optional[Mapping[str, Any]] = None) -> Float32MultiArray:
    """Float32MultiArray K x 7: each grasp's score and its terms (see ``SCORES_LAYOUT_LABEL``)."""
    s = _np(scores, np.float32).reshape(-1)
    k, width = len(s), len(SCORE_COLUMNS)
    table = np.full((k, width), np.nan, dtype=np.float32)
    table[:, 0] = s
    for j, name in enumerate(SCORE_COLUMNS[1:], start=1):
        if terms and name in terms:
            table[:, j] = _np(terms[name], np.float32).reshape(-1)
    layout = MultiArrayLayout(
        dim=[
            MultiArrayDimension(label="grasp", size=k, stride=k * width),
            MultiArrayDimension(label=SCORES_LAYOUT_LABEL, size=width, stride=width),
        ],
        data_offset=0,
    )
    return Float32MultiArray(layout=layout, data=array.array("f", table.tobytes()))


def joint_state_message(header: Header, hand_pose: Any, axes: np.ndarray,
                        names: Sequence[str] = FINGER_JOINT_NAMES) -> JointState:
    """JointState of one grasp's 15 finger joints: position = flexion angle (rad)."""
    angles = flexion_angles(_np(hand_pose).reshape(45), axes)
    return JointState(header=_header(header), name=list(names), position=angles.tolist())


def rank_color(rank: int, count: int) -> ColorRGBA:
    """Green for the best grasp, through yellow, to red for the worst; later ranks a little more transparent."""
    t = rank / max(count - 1, 1)
    r, g, b = colorsys.hsv_to_rgb((1.0 - t) / 3.0, 0.85, 0.95)
    return ColorRGBA(r=r, g=g, b=b, a=0.9 - 0.45 * t)


def _marker_array(header: Header, count: int, mesh_points: Any, kps: Optional[np.ndarray]) -> MarkerArray:
    """The marker layout shared by both paths; ``mesh_points(rank)`` gives each mesh's point list."""
    hdr = _header(header)
    out = MarkerArray()
    out.markers.append(Marker(header=hdr, action=Marker.DELETEALL))
    for rank in range(count):
        color = rank_color(rank, count)
        mesh = Marker(header=hdr, ns="hand_mesh", id=rank, type=Marker.TRIANGLE_LIST, action=Marker.ADD,
                      color=color)
        mesh.pose.orientation.w = 1.0
        mesh.scale.x = mesh.scale.y = mesh.scale.z = 1.0
        mesh.points = mesh_points(rank)
        out.markers.append(mesh)
        if kps is not None:
            spheres = Marker(header=hdr, ns="keypoints", id=rank, type=Marker.SPHERE_LIST, action=Marker.ADD,
                             color=ColorRGBA(r=color.r * 0.6, g=color.g * 0.6, b=color.b * 0.6, a=1.0))
            spheres.pose.orientation.w = 1.0
            spheres.scale.x = spheres.scale.y = spheres.scale.z = KEYPOINT_SPHERE_DIAMETER
            spheres.points = _points(kps[rank])
            out.markers.append(spheres)
    return out


def _marker_inputs(vertices: Any, faces: Any, keypoints: Any | None) -> tuple[np.ndarray, np.ndarray, Any]:
    v = _np(vertices)
    verts = v.reshape(-1, v.shape[-2], 3)
    tri = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    kps = None if keypoints is None else _np(keypoints).reshape(len(verts), -1, 3)
    return verts, tri, kps


def grasp_markers(header: Header, vertices: Any, faces: Any, keypoints: Any | None = None) -> MarkerArray:
    """DELETEALL, then per grasp a TRIANGLE_LIST hand mesh and a SPHERE_LIST of its keypoints."""
    verts, tri, kps = _marker_inputs(vertices, faces, keypoints)
    return _marker_array(header, len(verts), lambda rank: _points(verts[rank][tri]), kps)


class SerializationUnsupported(RuntimeError):
    """The middleware's encoding is not plain CDR: use the object path (``grasp_markers``)."""


# Placeholder point of mesh `rank` in the template message: unlikely bit patterns, found once each.
_SENTINEL_XY = (-1.2345678901234567e-300, 9.876543210987654e-299)
_CDR_LITTLE, _CDR_BIG = b"\x00\x01", b"\x00\x00"  # XCDR1 encapsulation identifiers


def serialized_grasp_markers(header: Header, vertices: Any, faces: Any, keypoints: Any | None = None) -> bytes:
    """The CDR bytes of ``grasp_markers(...)``, with the mesh vertices written by numpy.

    The message is serialised with one placeholder point per mesh; each placeholder (and its
    sequence length) is then replaced by the mesh's 3F points. Every replacement changes the
    length by a multiple of 8 bytes, so the alignment of everything after it is unchanged.
    Raises SerializationUnsupported for encodings other than XCDR1 (publish ``grasp_markers``).
    """
    from rclpy.serialization import serialize_message

    verts, tri, kps = _marker_inputs(vertices, faces, keypoints)
    if len(tri) == 0:  # an empty sequence has no alignment padding: the splice would misplace it
        raise SerializationUnsupported("no faces")
    template = _marker_array(header, len(verts),
                             lambda rank: [Point(x=_SENTINEL_XY[0], y=_SENTINEL_XY[1], z=float(rank))], kps)
    blob = serialize_message(template)
    ident = blob[:2]
    if ident not in (_CDR_LITTLE, _CDR_BIG):
        raise SerializationUnsupported(f"encapsulation {ident.hex()} is not XCDR1")
    order = "<" if ident == _CDR_LITTLE else ">"
    one = struct.pack(order + "I", 1)
    count = struct.pack(order + "I", 3 * len(tri))
    parts: list[bytes] = []
    pos = 0
    for rank in range(len(verts)):
        at = blob.find(struct.pack(order + "ddd", *_SENTINEL_XY, float(rank)), pos)
        # the sequence length sits right before the data, or before 4 bytes of alignment padding
        length_at = at - 4 if blob[at - 4:at] == one else at - 8
        if at < 0 or blob[length_at:length_at + 4] != one:
            raise SerializationUnsupported("placeholder point not found where CDR puts it")
        data = np.ascontiguousarray(verts[rank][tri], dtype=np.dtype(order + "f8")).tobytes()
        parts += [blob[pos:length_at], count, blob[length_at + 4:at], data]
        pos = at + 24
    parts.append(blob[pos:])
    return b"".join(parts)


@functools.lru_cache(maxsize=None)
def serialized_markers_supported() -> bool:
    """Once per process: does ``serialized_grasp_markers`` deserialise to exactly ``grasp_markers``?"""
    from rclpy.serialization import deserialize_message, serialize_message

    verts = np.linspace(-0.1, 0.2, 2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    faces = np.array([[0, 1, 2], [2, 3, 4], [4, 0, 1]])
    kps = verts[:, :3] + np.float32(0.5)
    hdr = Header(stamp=Time(sec=7, nanosec=11), frame_id="odd_length_frame")
    try:
        raw = serialized_grasp_markers(hdr, verts, faces, kps)
        reference = serialize_message(grasp_markers(hdr, verts, faces, kps))  # round trip: float32 colours
        return deserialize_message(raw, MarkerArray) == deserialize_message(reference, MarkerArray)
    except Exception:  # noqa: BLE001 - any failure means: use the object path
        return False


@dataclass
class DiagnosticsSnapshot:
    """What the node reports once a second on /diagnostics."""

    name: str
    hardware_id: str
    level: int  # DiagnosticStatus.OK / WARN / ERROR
    message: str
    values: Mapping[str, Any] = field(default_factory=dict)


def diagnostics_message(stamp: Time, snapshot: DiagnosticsSnapshot) -> DiagnosticArray:
    """One DiagnosticStatus carrying the snapshot's key/values as strings."""
    status = DiagnosticStatus(
        level=bytes([snapshot.level]),
        name=snapshot.name,
        message=snapshot.message,
        hardware_id=snapshot.hardware_id,
        values=[KeyValue(key=str(k), value=_fmt(v)) for k, v in snapshot.values.items()],
    )
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
