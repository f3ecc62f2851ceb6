"""Vectorised sensor_msgs/PointCloud2 <-> numpy conversion.

`sensor_msgs_py` is not published on PyPI, so the pip install path cannot rely on it; this
module reimplements its semantics (and is tested against it where it is importable):

* `read_points` returns a structured array whose fields are the message's fields; a field with
  `count > 1` becomes `name_0 .. name_{count-1}`; an unnamed field becomes `unnamed_field_<i>`.
* The array is a zero-copy view on `msg.data` when the layout allows (host byte order and no
  row padding); big-endian data is converted to host order, `row_step` padding is skipped.
* `skip_nans` only acts when `is_dense` is False, exactly like `sensor_msgs_py` (a cloud that
  claims to be dense but holds NaNs passes through; `read_xyz` leaves finite filtering to
  `dvqvae_model.pipeline.preprocess`).
* `reshape_organized_cloud` gives shape [height, width] for organized clouds (height > 1).

Unlike `sensor_msgs_py`, malformed messages raise `ValueError`s that name the problem instead of
failing on asserts or numpy buffer errors, and `create_cloud` also accepts structured and
organized ([H, W, C]) arrays and sets `is_dense` from the data.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from numpy.lib import recfunctions
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

__all__ = [
    "DATATYPES",
    "dtype_from_fields",
    "read_points",
    "read_xyz",
    "create_cloud",
    "create_cloud_xyz32",
    "xyz32_fields",
]

#: PointField datatype constant -> numpy scalar type (host byte order).
DATATYPES: dict[int, np.dtype] = {
    PointField.INT8: np.dtype(np.int8),
    PointField.UINT8: np.dtype(np.uint8),
    PointField.INT16: np.dtype(np.int16),
    PointField.UINT16: np.dtype(np.uint16),
    PointField.INT32: np.dtype(np.int32),
    PointField.UINT32: np.dtype(np.uint32),
    PointField.FLOAT32: np.dtype(np.float32),
    PointField.FLOAT64: np.dtype(np.float64),
}
_DATATYPE_NAMES = {
    PointField.INT8: "INT8", PointField.UINT8: "UINT8", PointField.INT16: "INT16",
    PointField.UINT16: "UINT16", PointField.INT32: "INT32", PointField.UINT32: "UINT32",
    PointField.FLOAT32: "FLOAT32", PointField.FLOAT64: "FLOAT64",
}
_NUMPY_TO_DATATYPE = {dt: code for code, dt in DATATYPES.items()}
_HOST_BIG_ENDIAN = sys.byteorder != "little"


def _field_names(fields: Sequence[Any]) -> list[str]:
    """Names of the numpy fields a message's PointFields expand to (count > 1 -> name_i)."""
    names: list[str] = []
    for i, field in enumerate(fields):
        name = field.name if field.name else f"unnamed_field_{i}"
        count = int(field.count)
        names.extend([name] if count == 1 else [f"{name}_{j}" for j in range(count)])
    return names


def dtype_from_fields(
    fields: Sequence[Any], point_step: int | None = None, big_endian: bool = _HOST_BIG_ENDIAN
) -> np.dtype:
    """Build the structured dtype of one point from PointFields.

    Raises ValueError for unknown datatypes, count < 1, negative offsets, duplicate names and
    fields that extend past `point_step` (when given).
    """
    names: list[str] = []
    formats: list[str] = []
    offsets: list[int] = []
    order = ">" if big_endian else "<"
    for i, field in enumerate(fields):
        label = field.name or f"#{i}"
        if field.datatype not in DATATYPES:
            raise ValueError(
                f"PointField '{label}' has unsupported datatype {field.datatype} "
                f"(supported: {sorted(DATATYPES)} = INT8..FLOAT64)"
            )
        if int(field.count) < 1:
            raise ValueError(f"PointField '{label}' has count {field.count}; it must be >= 1")
        if int(field.offset) < 0:
            raise ValueError(f"PointField '{label}' has negative offset {field.offset}")
        base = DATATYPES[field.datatype].newbyteorder(order)
        end = int(field.offset) + base.itemsize * int(field.count)
        if point_step is not None and end > point_step:
            raise ValueError(
                f"PointField '{label}' ({_DATATYPE_NAMES[field.datatype]} x{field.count} at "
                f"offset {field.offset}) ends at byte {end}, past point_step {point_step}"
            )
        for j in range(int(field.count)):
            offsets.append(int(field.offset) + j * base.itemsize)
            formats.append(base.str)
    names = _field_names(fields)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"PointCloud2 has duplicate field names: {duplicates}")
    spec: dict[str, Any] = {"names": names, "formats": formats, "offsets": offsets}
    if point_step is not None:
        spec["itemsize"] = int(point_step)
    return np.dtype(spec)


def _buffer(data: Any) -> np.ndarray:
    """Zero-copy uint8 view on msg.data (array.array('B'), bytes, memoryview or ndarray)."""
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:  # a plain list of ints
        return np.asarray(data, dtype=np.uint8)


def _to_host_order(points: np.ndarray) -> np.ndarray:
    """Convert a structured array to host byte order (copies only if a field is non-native)."""
    if all(points.dtype.fields[n][0].isnative for n in points.dtype.names):
        return points
    native = np.dtype({
        "names": list(points.dtype.names),
        "formats": [points.dtype.fields[n][0].newbyteorder("=") for n in points.dtype.names],
        "offsets": [points.dtype.fields[n][1] for n in points.dtype.names],
        "itemsize": points.dtype.itemsize,
    })
    return points.astype(native)


def read_points(
    msg: PointCloud2,
    field_names: Iterable[str] | None = None,
    skip_nans: bool = False,
    reshape_organized_cloud: bool = False,
) -> np.ndarray:
    """Structured array of the points in a PointCloud2 (sensor_msgs_py.read_points semantics).

    Returns shape [width * height] (or [height, width] with `reshape_organized_cloud` for an
    organized cloud), values in host byte order. `skip_nans` drops points with a NaN in any
    selected field, only when `msg.is_dense` is False.
    """
    width, height = int(msg.width), int(msg.height)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    if not msg.fields:
        raise ValueError("PointCloud2 has no fields")
    n = width * height
    if n and point_step <= 0:
        raise ValueError(f"PointCloud2 point_step is {point_step} for {n} points")
    step = point_step if (n or point_step > 0) else None  # an empty cloud may leave it 0
    dtype = dtype_from_fields(msg.fields, step, big_endian=bool(msg.is_bigendian))
    raw = _buffer(msg.data)
    if n == 0:
        points = np.zeros(0, dtype=dtype)
    else:
        packed = width * point_step
        if row_step < packed:
            raise ValueError(
                f"PointCloud2 row_step {row_step} is smaller than width * point_step "
                f"= {width} * {point_step} = {packed}"
            )
        expected = row_step * height
        shortest = row_step * (height - 1) + packed  # last row's padding may be absent
        if raw.size not in (expected, shortest):
            raise ValueError(
                f"PointCloud2 data has {raw.size} bytes; expected row_step * height = "
                f"{row_step} * {height} = {expected} (width {width}, point_step {point_step})"
            )
        if row_step == packed:
            points = raw[: n * point_step].view(dtype)
        else:  # padded rows: a strided [height, width] view that skips the padding
            rows = np.lib.stride_tricks.as_strided(
                raw, shape=(height, packed), strides=(row_step, 1), writeable=False
            )
            points = rows.view(dtype).reshape(n)  # copies: padding cannot be strided away in 1-D
    if field_names is not None:
        wanted = list(field_names)
        missing = [f for f in wanted if f not in points.dtype.names]
        if missing:
            raise ValueError(
                f"PointCloud2 has no field(s) {missing}; available: {list(points.dtype.names)}"
            )
        points = points[wanted]
    points = _to_host_order(points)
    if skip_nans and not msg.is_dense and points.size:
        keep = np.ones(points.shape[0], dtype=bool)
        for name in points.dtype.names:
            values = points[name]
            if values.dtype.kind == "f":
                keep &= ~np.isnan(values)
        if not keep.all():
            if reshape_organized_cloud and height > 1:
                raise ValueError(
                    "cannot keep an organized cloud's [height, width] shape after skip_nans "
                    "removed points; use one option or the other"
                )
            points = points[keep]
    if reshape_organized_cloud and height > 1:
        points = points.reshape(height, width)
    return points


def read_xyz(msg: PointCloud2) -> np.ndarray:
    """x, y, z of every point as float32 [N, 3] (organized clouds flattened row by row).

    NaN/inf points are kept: finite filtering belongs to `dvqvae_model.pipeline.preprocess`.
    """
    names = {f.name for f in msg.fields}
    missing = [c for c in ("x", "y", "z") if c not in names]
    if missing:
        raise ValueError(
            f"PointCloud2 lacks coordinate field(s) {missing}; fields are {sorted(names)}"
        )
    spans = {f.name: (int(f.offset), int(f.offset) + DATATYPES[f.datatype].itemsize * max(int(f.count), 1))
             for f in msg.fields if f.name in ("x", "y", "z") and f.datatype in DATATYPES}
    for a, b in (("x", "y"), ("x", "z"), ("y", "z")):
        if a in spans and b in spans and spans[a][0] < spans[b][1] and spans[b][0] < spans[a][1]:
            raise ValueError(
                f"PointCloud2 fields {a} (bytes {spans[a][0]}..{spans[a][1] - 1}) and {b} (bytes "
                f"{spans[b][0]}..{spans[b][1] - 1}) overlap: the coordinates would alias each other")
    points = read_points(msg, field_names=("x", "y", "z"))
    return recfunctions.structured_to_unstructured(points, dtype=np.float32).reshape(-1, 3)


def xyz32_fields() -> list[PointField]:
    """FLOAT32 x, y, z at offsets 0/4/8 (point_step 12), as in create_cloud_xyz32."""
    return [
        PointField(name=c, offset=4 * i, datatype=PointField.FLOAT32, count=1)
        for i, c in enumerate("xyz")
    ]


def _structured_points(
    fields: Sequence[PointField], points: Any, point_step: int | None
) -> np.ndarray:
    """Coerce points (structured / [..., C] numeric / iterable of tuples) to the fields' dtype."""
    dtype = dtype_from_fields(fields, point_step)
    if isinstance(points, np.ndarray) and points.dtype.names is not None:
        missing = [n for n in dtype.names if n not in points.dtype.names]
        if missing:
            raise ValueError(f"points lack field(s) {missing} named in `fields`")
        if points.ndim > 2:
            raise ValueError(f"structured points must be [N] or [H, W], got {points.shape}")
        out = np.zeros(points.shape, dtype=dtype)
        for name in dtype.names:
            out[name] = points[name]
        return out
    arr = np.asarray(points if isinstance(points, (np.ndarray, Sequence)) else list(points))
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"points must be numeric, got dtype {arr.dtype}")
    if arr.size == 0:
        return np.zeros(0, dtype=dtype)
    ncols = len(dtype.names)
    if arr.ndim not in (2, 3) or arr.shape[-1] != ncols:
        raise ValueError(
            f"points must have shape [N, {ncols}] or [H, W, {ncols}] for fields "
            f"{list(dtype.names)}, got {arr.shape}"
        )
    out = np.zeros(arr.shape[:-1], dtype=dtype)  # zeroed, so padding bytes are deterministic
    for i, name in enumerate(dtype.names):
        out[name] = arr[..., i]
    return out


def create_cloud(
    header: Header,
    fields: Sequence[PointField],
    points: Any,
    *,
    point_step: int | None = None,
    row_step: int | None = None,
) -> PointCloud2:
    """Build a PointCloud2 in host byte order.

    `points`: a structured array with the fields' names, a numeric array [N, C] or [H, W, C]
    (C = number of expanded fields, in `fields` order), or an iterable of per-point tuples.
    A 2-D structured array or a 3-D numeric array gives an organized cloud (height = H).
    `point_step` defaults to the end of the last field; `row_step` (>= width * point_step) adds
    zero padding at the end of every row. `is_dense` is True iff no float value is NaN/inf.
    """
    fields = list(fields)
    if not fields:
        raise ValueError("create_cloud needs at least one PointField")
    structured = _structured_points(fields, points, point_step)
    if structured.ndim == 2:
        height, width = structured.shape
    else:
        height, width = 1, structured.shape[0]
    step = structured.dtype.itemsize
    packed = width * step
    row = packed if row_step is None else int(row_step)
    if row < packed:
        raise ValueError(f"row_step {row} is smaller than width * point_step = {packed}")
    flat = np.ascontiguousarray(structured.reshape(height * width))
    body = flat.view(np.uint8).reshape(height, packed)
    if row != packed:
        padded = np.zeros((height, row), dtype=np.uint8)
        padded[:, :packed] = body
        body = padded
    data = array.array("B")
    if body.size:  # (memoryview cannot cast an empty 2-D buffer)
        data.frombytes(memoryview(np.ascontiguousarray(body)).cast("B"))
    finite = True
    for name in structured.dtype.names:
        values = structured[name]
        if values.dtype.kind == "f" and values.size and not np.isfinite(values).all():
            finite = False
            break
    msg = PointCloud2()
    msg.header = header
    msg.height = height
    msg.width = width
    msg.fields = fields
    msg.is_bigendian = _HOST_BIG_ENDIAN
    msg.point_step = step
    msg.row_step = row
    msg.data = data
    msg.is_dense = finite
    return msg


def create_cloud_xyz32(header: Header, xyz: Any) -> PointCloud2:
    """PointCloud2 with FLOAT32 x, y, z (point_step 12) from [N, 3] or organized [H, W, 3]."""
    arr = np.asarray(xyz, dtype=np.float32)
    if arr.size == 0:
        arr = arr.reshape(0, 3)
    if arr.ndim not in (2, 3) or arr.shape[-1] != 3:
        raise ValueError(f"xyz must have shape [N, 3] or [H, W, 3], got {arr.shape}")
    return create_cloud(header, xyz32_fields(), arr)
