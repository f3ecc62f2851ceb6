"""PointCloud2 <-> numpy conversion: every layout built byte by byte with struct.pack."""

from __future__ import annotations

import array
import importlib.util
import math
import struct

import numpy as np
import pytest
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from dvqvae_ros.point_cloud import (
    create_cloud,
    create_cloud_xyz32,
    dtype_from_fields,
    read_points,
    read_xyz,
)

F32, F64 = PointField.FLOAT32, PointField.FLOAT64


def field(name: str, offset: int, datatype: int, count: int = 1) -> PointField:
    return PointField(name=name, offset=offset, datatype=datatype, count=count)


def make_msg(fields, data: bytes, width: int, height: int = 1, point_step: int = 12,
             row_step: int | None = None, big: bool = False, dense: bool = False) -> PointCloud2:
    """A PointCloud2 assembled by hand (no helper of the module under test)."""
    msg = PointCloud2()
    msg.header = Header(frame_id="cam")
    msg.height, msg.width = height, width
    msg.fields = list(fields)
    msg.is_bigendian = big
    msg.point_step = point_step
    msg.row_step = width * point_step if row_step is None else row_step
    msg.data = array.array("B", data)
    msg.is_dense = dense
    return msg


XYZ = [field("x", 0, F32), field("y", 4, F32), field("z", 8, F32)]
PTS = [(0.1, -0.2, 0.3), (1.5, 2.25, -3.0), (-0.004, 0.5, 0.75), (7.0, 8.0, 9.0)]


def xyz32_bytes(points, order: str = "<") -> bytes:
    return b"".join(struct.pack(order + "fff", *p) for p in points)


def test_plain_xyz32_and_zero_copy():
    msg = make_msg(XYZ, xyz32_bytes(PTS), width=4)
    pts = read_points(msg)
    assert pts.dtype.names == ("x", "y", "z") and pts.shape == (4,)
    np.testing.assert_array_equal(read_xyz(msg), np.array(PTS, dtype=np.float32))
    # a view on msg.data, not a copy
    assert np.shares_memory(pts, np.frombuffer(msg.data, dtype=np.uint8))


def test_bytes_data_and_serialisation_round_trip():
    from rclpy.serialization import deserialize_message, serialize_message

    msg = make_msg(XYZ, xyz32_bytes(PTS), width=4)
    back = deserialize_message(serialize_message(msg), PointCloud2)
    assert isinstance(back.data, array.array)
    np.testing.assert_array_equal(read_xyz(back), np.array(PTS, dtype=np.float32))


def test_big_endian():
    msg = make_msg(XYZ, xyz32_bytes(PTS, ">"), width=4, big=True)
    xyz = read_xyz(msg)
    np.testing.assert_array_equal(xyz, np.array(PTS, dtype=np.float32))
    pts = read_points(msg)
    assert all(pts.dtype.fields[n][0].isnative for n in pts.dtype.names)
    # reading big-endian bytes as little-endian must not accidentally agree
    wrong = make_msg(XYZ, xyz32_bytes(PTS, ">"), width=4, big=False)
    assert not np.allclose(read_xyz(wrong), xyz)


def test_float64_coordinates():
    fields = [field("x", 0, F64), field("y", 8, F64), field("z", 16, F64)]
    pts = [(0.123456789012, 1e-9, -5.5), (3.0, 2.0, 1.0)]
    msg = make_msg(fields, b"".join(struct.pack("<ddd", *p) for p in pts), width=2, point_step=24)
    raw = read_points(msg)
    assert raw["x"].dtype == np.float64 and raw["x"][0] == 0.123456789012
    np.testing.assert_allclose(read_xyz(msg), np.array(pts, dtype=np.float32))
    assert read_xyz(msg).dtype == np.float32


def test_extra_fields_before_xyz_with_padding_bytes():
    # rgb (UINT32) + intensity (FLOAT32) first, xyz after, 4 unused bytes at the end
    fields = [field("rgb", 0, PointField.UINT32), field("intensity", 4, F32),
              field("x", 8, F32), field("y", 12, F32), field("z", 16, F32)]
    rows = [(0xFF8000 + i, 0.5 * i, *p) for i, p in enumerate(PTS)]
    data = b"".join(struct.pack("<Iffff", *r) + b"\xde\xad\xbe\xef" for r in rows)
    msg = make_msg(fields, data, width=4, point_step=24)
    pts = read_points(msg)
    assert pts.dtype.names == ("rgb", "intensity", "x", "y", "z")
    np.testing.assert_array_equal(pts["rgb"], [0xFF8000 + i for i in range(4)])
    np.testing.assert_array_equal(pts["intensity"], [0.0, 0.5, 1.0, 1.5])
    np.testing.assert_array_equal(read_xyz(msg), np.array(PTS, dtype=np.float32))
    sub = read_points(msg, field_names=["z", "rgb"])
    assert sub.dtype.names == ("z", "rgb")
    np.testing.assert_array_equal(sub["z"], np.array([p[2] for p in PTS], dtype=np.float32))


def test_every_datatype_and_count_gt_1():
    fields = [
        field("i8", 0, PointField.INT8), field("u8", 1, PointField.UINT8),
        field("i16", 2, PointField.INT16), field("u16", 4, PointField.UINT16),
        field("i32", 8, PointField.INT32), field("u32", 12, PointField.UINT32),
        field("x", 16, F32), field("y", 20, F32), field("z", 24, F32),
        field("d", 32, F64), field("normal", 40, F32, count=3), field("", 52, PointField.UINT8),
    ]
    vals = [(-5, 250, -30000, 65000, -2_000_000_000, 4_000_000_000, 1.0, 2.0, 3.0, math.pi,
             0.0, 0.6, 0.8, 7),
            (127, 0, 1, 2, 3, 4, -1.0, -2.0, -3.0, -math.e, 1.0, 0.0, 0.0, 255)]
    fmt = "<bBhHxxiIfffxxxxdfffBxxx"
    assert struct.calcsize(fmt) == 56
    for order in "<>":
        data = b"".join(struct.pack(order + fmt[1:], *v) for v in vals)
        pts = read_points(make_msg(fields, data, width=2, point_step=56, big=order == ">"))
        assert pts.dtype.names == ("i8", "u8", "i16", "u16", "i32", "u32", "x", "y", "z", "d",
                                   "normal_0", "normal_1", "normal_2", "unnamed_field_11")
        for name, column in zip(pts.dtype.names, zip(*vals)):
            np.testing.assert_allclose(pts[name].astype(np.float64),
                                       np.array(column, dtype=pts[name].dtype).astype(np.float64))
        assert pts["u32"].dtype == np.uint32 and pts["u32"][0] == 4_000_000_000
        assert pts["d"].dtype == np.float64 and pts["d"][0] == math.pi


def test_organized_cloud_with_row_padding():
    height, width, step, pad = 3, 4, 16, 8
    row_step = width * step + pad
    grid = np.arange(height * width * 3, dtype=np.float32).reshape(height, width, 3) / 7.0
    data = b""
    for r in range(height):
        for c in range(width):
            data += struct.pack("<fff", *grid[r, c]) + b"\x00" * 4  # point padding
        data += b"\xff" * pad  # row padding (garbage, must be skipped)
    fields = XYZ
    msg = make_msg(fields, data, width=width, height=height, point_step=step, row_step=row_step)
    np.testing.assert_array_equal(read_xyz(msg), grid.reshape(-1, 3))
    org = read_points(msg, reshape_organized_cloud=True)
    assert org.shape == (height, width)
    np.testing.assert_array_equal(org["y"], grid[..., 1])
    # the last row's padding may be omitted
    short = make_msg(fields, data[:-pad], width=width, height=height, point_step=step,
                     row_step=row_step)
    np.testing.assert_array_equal(read_xyz(short), grid.reshape(-1, 3))


def test_nan_handling_follows_is_dense():
    pts = [(0.0, 0.0, 1.0), (math.nan, 0.0, 1.0), (0.0, 0.0, 2.0), (0.0, math.nan, math.nan)]
    data = xyz32_bytes(pts)
    not_dense = make_msg(XYZ, data, width=4, dense=False)
    kept = read_points(not_dense, skip_nans=True)
    np.testing.assert_array_equal(kept["z"], [1.0, 2.0])
    assert read_points(not_dense).shape == (4,)  # skip_nans off: NaNs pass
    dense = make_msg(XYZ, data, width=4, dense=True)  # claims dense: nothing skipped
    assert read_points(dense, skip_nans=True).shape == (4,)
    assert np.isnan(read_xyz(dense)).any()  # read_xyz leaves filtering to preprocess
    organized = make_msg(XYZ, data, width=2, height=2)
    assert read_points(organized, reshape_organized_cloud=True).shape == (2, 2)
    with pytest.raises(ValueError, match="organized"):
        read_points(organized, skip_nans=True, reshape_organized_cloud=True)


@pytest.mark.parametrize(
    "kwargs, data, match",
    [
        ({"width": 4}, xyz32_bytes(PTS)[:-1], "data has 47 bytes.*expected row_step"),
        ({"width": 4}, xyz32_bytes(PTS) + b"\0" * 12, "data has 60 bytes"),
        ({"width": 4, "row_step": 40}, xyz32_bytes(PTS), "row_step 40 is smaller"),
        ({"width": 4, "point_step": 0}, xyz32_bytes(PTS), "point_step is 0"),
        ({"width": 4, "point_step": 8, "row_step": 48}, xyz32_bytes(PTS),
         "'z'.*past point_step 8"),
    ],
)
def test_malformed_messages(kwargs, data, match):
    with pytest.raises(ValueError, match=match):
        read_points(make_msg(XYZ, data, **kwargs))


def test_malformed_fields():
    data = xyz32_bytes(PTS)
    with pytest.raises(ValueError, match="lacks coordinate field.*'z'"):
        read_xyz(make_msg(XYZ[:2], data, width=4))
    with pytest.raises(ValueError, match="unsupported datatype 9"):
        read_points(make_msg([field("x", 0, 9), *XYZ[1:]], data, width=4))
    with pytest.raises(ValueError, match="count 0"):
        read_points(make_msg([field("x", 0, F32, 0), *XYZ[1:]], data, width=4))
    with pytest.raises(ValueError, match="duplicate field names.*'x'"):
        read_points(make_msg([XYZ[0], field("x", 4, F32), XYZ[2]], data, width=4))
    with pytest.raises(ValueError, match=r"no field\(s\) \['w'\]"):
        read_points(make_msg(XYZ, data, width=4), field_names=["x", "w"])
    with pytest.raises(ValueError, match="no fields"):
        read_points(make_msg([], data, width=4))


def test_empty_cloud():
    msg = make_msg(XYZ, b"", width=0)
    assert read_points(msg).shape == (0,)
    assert read_xyz(msg).shape == (0, 3)
    back = create_cloud_xyz32(Header(), np.zeros((0, 3)))
    assert back.width == 0 and read_xyz(back).shape == (0, 3)


def test_create_cloud_xyz32_matches_hand_layout():
    xyz = np.array(PTS, dtype=np.float32)
    msg = create_cloud_xyz32(Header(frame_id="f"), xyz)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 4, 12, 48)
    assert [(f.name, f.offset, f.datatype, f.count) for f in msg.fields] == [
        ("x", 0, F32, 1), ("y", 4, F32, 1), ("z", 8, F32, 1)]
    assert bytes(msg.data) == xyz32_bytes(PTS)
    assert msg.is_dense and msg.header.frame_id == "f"
    xyz[1, 0] = np.nan
    assert not create_cloud_xyz32(Header(), xyz).is_dense


def test_create_cloud_round_trips_mixed_organized_padded():
    fields = [field("rgb", 0, PointField.UINT32), field("x", 4, F64), field("y", 12, F64),
              field("z", 20, F64), field("normal", 28, F32, count=3)]
    dtype = dtype_from_fields(fields)
    rng = np.random.default_rng(3)
    pts = np.zeros((2, 5), dtype=dtype)
    for name in dtype.names:
        pts[name] = rng.uniform(0, 1000, size=(2, 5)).astype(dtype[name])
    msg = create_cloud(Header(), fields, pts, point_step=48, row_step=48 * 5 + 16)
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (2, 5, 48, 256)
    assert len(msg.data) == 512
    back = read_points(msg, reshape_organized_cloud=True)
    for name in dtype.names:
        np.testing.assert_array_equal(back[name], pts[name])
    # unstructured [H, W, C] input gives the same message
    columns = np.stack([pts[n].astype(np.float64) for n in dtype.names], axis=-1)
    again = create_cloud(Header(), fields, columns, point_step=48, row_step=256)
    assert bytes(again.data) == bytes(msg.data)
    # list-of-tuples input (sensor_msgs_py style)
    listed = create_cloud(Header(), XYZ, PTS)
    np.testing.assert_array_equal(read_xyz(listed), np.array(PTS, dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \[N, 3\]"):
        create_cloud(Header(), XYZ, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="lack field"):
        create_cloud(Header(), fields, np.zeros(3, dtype=[("x", "f4")]))


@pytest.mark.skipif(importlib.util.find_spec("sensor_msgs_py") is None,
                    reason="sensor_msgs_py not installed (not on PyPI); runs on ROS installs")
def test_parity_with_sensor_msgs_py():
    from sensor_msgs_py import point_cloud2 as ref

    cases = [
        make_msg(XYZ, xyz32_bytes(PTS), width=4),
        make_msg(XYZ, xyz32_bytes(PTS, ">"), width=4, big=True),
        make_msg(XYZ, xyz32_bytes(PTS), width=2, height=2),
        make_msg([field("x", 0, F64), field("y", 8, F64), field("z", 16, F64)],
                 b"".join(struct.pack("<ddd", *p) for p in PTS), width=4, point_step=24),
        make_msg(XYZ, xyz32_bytes([(0, 0, 1), (math.nan, 0, 1)]), width=2),
    ]
    for msg in cases:
        for skip in (False, True):
            mine = read_points(msg, skip_nans=skip, reshape_organized_cloud=True)
            theirs = ref.read_points(msg, skip_nans=skip, reshape_organized_cloud=True)
            assert mine.shape == theirs.shape
            for name in ("x", "y", "z"):
                np.testing.assert_array_equal(mine[name], theirs[name])
        theirs_msg = ref.create_cloud_xyz32(Header(), np.array(PTS, dtype=np.float32))
        assert bytes(create_cloud_xyz32(Header(), PTS).data) == bytes(theirs_msg.data)


def test_depth_camera_cloud_through_ros_message_into_preprocess():
    """Organized camera cloud -> serialized PointCloud2 -> read_xyz -> prepare_cloud -> mesh."""
    pytest.importorskip("open3d")
    import trimesh
    from rclpy.serialization import deserialize_message, serialize_message

    from dvqvae_model.sim.depth_camera import (
        CameraIntrinsics, depth_to_points, look_at, make_scene, render_depth, transform_points)
    from dvqvae_model.pipeline.preprocess import prepare_cloud

    intr = CameraIntrinsics(width=160, height=120, fx=96.25, fy=96.25, cx=79.5, cy=59.5)
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=0.08)
    pose = look_at([0.3, 0.1, 0.2], [0, 0, 0])
    organized = depth_to_points(render_depth(mesh, intr, pose), intr, organized=True)
    msg = create_cloud_xyz32(Header(frame_id="camera_optical"), organized)
    assert (msg.height, msg.width, msg.is_dense) == (120, 160, False)
    back = deserialize_message(serialize_message(msg), PointCloud2)
    xyz = read_xyz(back)
    assert xyz.shape == (120 * 160, 3) and np.isnan(xyz).any()
    prepared = prepare_cloud(xyz, 500)
    assert prepared.num_input == 120 * 160
    assert prepared.num_valid == int(np.isfinite(organized[..., 2]).sum())
    world = transform_points(prepared.to_input_frame(prepared.points), pose)
    import open3d.core as o3c

    dist = make_scene(mesh).compute_distance(o3c.Tensor(world.astype(np.float32))).numpy()
    assert dist.max() < 1e-4
