"""Every ROS parameter of the package's nodes, declared in one place.

Each node's parameters are one frozen dataclass. A field's metadata carries its
description, whether it may change at run time (``dynamic``), and a checker
that turns a raw ROS value into a clean Python value or raises ``ValueError``
with a message a user can act on. The same table drives declaration (with
descriptors, so ``ros2 param describe`` explains each one), start-up validation
(all problems reported at once) and validation of run-time updates.

Parameters are declared with ``dynamic_typing`` so that ``-p temperature:=1``
(an integer) is accepted for a float parameter and a wrong type gets our clear
message instead of rclpy's "Wrong parameter type, expected '3' got '2'".
Parameters that are not ``dynamic`` are declared read-only.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

from dvqvae_model.pipeline.defaults import DEFAULTS

__all__ = [
    "BACKEND_CHOICES",
    "FakeCameraParameters",
    "GraspNodeParameters",
    "ParameterError",
    "SegmenterParameters",
    "SamplingSettings",
    "check_parameters",
    "check_update",
    "declare_parameters",
    "dynamic_parameter_names",
    "read_parameters",
]

BACKEND_CHOICES = ("auto", "eager", "torchscript", "onnx", "tensorrt")
QOS_CHOICES = ("sensor_data", "reliable")
MODE_CHOICES = ("continuous", "on_demand")
SEGMENTER_INPUTS = ("depth_image", "scene_cloud")
TARGET_CHOICES = ("nearest_axis", "largest", "crop_box", "clicked")  # dvqvae_model.pipeline.segmentation.TARGET_RULES
DEPTH_ENCODING_CHOICES = ("16UC1", "32FC1")
MAX_GRASPS = 256
MAX_CANDIDATES = 1024

Checker = Callable[[Any], Any]
P = TypeVar("P")


class ParameterError(ValueError):
    """Raised when one or more parameter values are invalid; the message lists each one."""


# --------------------------------------------------------------------------- checkers
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(lo: int, hi: int | None = None, note: str = "") -> Checker:
    span = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"

    def check(value: Any) -> int:
        ok = _is_number(value) and float(value).is_integer()
        if ok:
            value = int(value)
            ok = value >= lo and (hi is None or value <= hi)
        if not ok:
            raise ValueError(f"must be an integer {span}{note}, got {value!r}")
        return value

    return check


def _real(lo: float, hi: float | None = None, *, lo_open: bool = False, note: str = "") -> Checker:
    left = ">" if lo_open else ">="
    span = f"{left} {lo}" + (f" and <= {hi}" if hi is not None else "")

    def check(value: Any) -> float:
        ok = _is_number(value) and math.isfinite(float(value))
        if ok:
            value = float(value)
            ok = (value > lo if lo_open else value >= lo) and (hi is None or value <= hi)
        if not ok:
            raise ValueError(f"must be a number {span}{note}, got {value!r}")
        return value

    return check


def _finite() -> Checker:
    def check(value: Any) -> float:
        if not (_is_number(value) and math.isfinite(float(value))):
            raise ValueError(f"must be a finite number, got {value!r}")
        return float(value)

    return check


def _choice(options: Sequence[str]) -> Checker:
    def check(value: Any) -> str:
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}; got {value!r}")
        return value

    return check


def _text(what: str) -> Checker:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"must be a non-empty string ({what}), got {value!r}")
        return value.strip()

    return check


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _artifact(value: Any) -> str:
    """Empty (use the artifact cache) or an existing artifact directory / graph file."""
    if value is None:  # an empty YAML value arrives as None
        return ""
    if not isinstance(value, str):
        raise ValueError(f"must be a path (or empty for the artifact cache), got {value!r}")
    path = value.strip()
    if path and not Path(path).expanduser().exists():
        raise ValueError(f"no such artifact directory or file: {path!r} (write one with dvqvae-export, or leave "
                         "artifact empty to build one in the cache)")
    return path


_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def _device(value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise ValueError(f"must be 'cpu', 'cuda' or 'cuda:N', got {value!r}")
    return value


def _crop_box(value: Any) -> tuple[float, ...]:
    """Empty (no crop) or [x_min, y_min, z_min, x_max, y_max, z_max] in the cloud frame."""
    if isinstance(value, (bytes, str)) or not (value is None or hasattr(value, "__len__")):
        raise ValueError(f"must be empty or 6 numbers [x_min, y_min, z_min, x_max, y_max, z_max], got {value!r}")
    if value is None or len(value) == 0:  # an empty YAML list arrives as None
        return ()
    vals = list(value)
    if len(vals) != 6 or not all(_is_number(v) and math.isfinite(float(v)) for v in vals):
        raise ValueError(f"must be empty or 6 finite numbers [x_min, y_min, z_min, x_max, y_max, z_max], got {vals!r}")
    box = tuple(float(v) for v in vals)
    if not all(box[i] < box[i + 3] for i in range(3)):
        raise ValueError(f"needs x_min < x_max, y_min < y_max, z_min < z_max, got {list(box)!r}")
    return box


def _gravity(value: Any) -> tuple[float, float, float]:
    if isinstance(value, (bytes, str)) or value is None or not hasattr(value, "__len__"):
        raise ValueError(f"must be 3 numbers [x, y, z] (the direction gravity pulls in; [0, 0, 0] = unknown), got {value!r}")
    vals = list(value)
    if len(vals) != 3 or not all(_is_number(v) and math.isfinite(float(v)) for v in vals):
        raise ValueError(f"must be 3 finite numbers [x, y, z] (the direction gravity pulls in; [0, 0, 0] = unknown), "
                         f"got {vals!r}")
    return tuple(float(v) for v in vals)  # type: ignore[return-value]


def _param(default: Any, description: str, check: Checker, *, dynamic: bool = False) -> Any:
    meta = {"description": description, "check": check, "dynamic": dynamic}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: tuple(default), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- nodes
@dataclass(frozen=True)
class GraspNodeParameters:
    """Parameters of the ``grasp_generator`` node (dynamic ones may change while running)."""

    model: str = _param(
        "default",
        "'default' (the bundled DVQ-VAE in dvqvae_model/assets/default_model/), 'default_cvae' (the bundled "
        "GraspCVAE baseline) or a checkpoint directory",
        _text("'default', 'default_cvae' or a checkpoint directory"))
    hand_model: str = _param(
        "standin", "'standin' (bundled open hand) or a path to MANO_RIGHT.pkl",
        _text("'standin' or a path to MANO_RIGHT.pkl"))
    backend: str = _param(
        "auto", "inference backend: " + " | ".join(BACKEND_CHOICES) + " (auto picks the best available)",
        _choice(BACKEND_CHOICES))
    device: str = _param("cpu", "torch device: cpu | cuda | cuda:N", _device)
    artifact: str = _param(
        "", "prebuilt inference artifact written by dvqvae-export (its directory or graph file): loaded and "
        "checked against the model at start-up, no build; empty = build or reuse one in the artifact cache. "
        "Needs a backend that runs it (auto takes the artifact's format); fixes top_k to the exported one",
        _artifact)
    force_rebuild: bool = _param(
        False, "rebuild the cached artifact (and re-measure backend auto) at start-up although a valid one "
        "exists; not with an explicit artifact", _boolean)
    num_grasps: int = _param(DEFAULTS.num_grasps, f"grasps published per cloud, 1..{MAX_GRASPS}",
                             _integer(1, MAX_GRASPS), dynamic=True)
    candidates: int = _param(
        DEFAULTS.candidates, "grasps sampled per cloud and ranked; the best num_grasps are kept "
        f"(values below num_grasps mean num_grasps), 0..{MAX_CANDIDATES}", _integer(0, MAX_CANDIDATES), dynamic=True)
    ranking: bool = _param(
        DEFAULTS.ranking, "rank candidates by penetration, contact, force closure and prior (false: the raw path, "
        "num_grasps sampled and published as the model ranks them, no refinement)", _boolean, dynamic=True)
    gravity: tuple = _param(
        DEFAULTS.gravity, "the direction gravity pulls in, in the cloud's frame (any length): the ranking prefers "
        "grasps whose contacts carry the object's weight. [0, 1, 0] = down in a camera optical frame (y down); "
        "a z-up robot frame needs [0, 0, -1]; [0, 0, 0] = unknown", _gravity, dynamic=True)
    temperature: float = _param(1.0, "prior sampling temperature (0 = most likely tokens), 0..10",
                                _real(0.0, 10.0), dynamic=True)
    top_k: int = _param(0, "sample hand tokens among the k most likely codes (0 = all)",
                        _integer(0, 65536, " (0 = off)"), dynamic=True)
    seed: int = _param(-1, "sampling seed; -1 draws a fresh seed for every cloud",
                       _integer(-1, 2**31 - 1, " (-1 = random)"), dynamic=True)
    points_per_object: int = _param(
        0, "points sampled from each cloud for the encoders (0 = the model's own count)",
        lambda v: _zero_or_range(v, 64, 100_000))
    crop_box: tuple = _param(
        (), "keep points inside [x_min, y_min, z_min, x_max, y_max, z_max] (cloud frame, metres); empty = off",
        _crop_box)
    crop_radius: float = _param(0.0, "keep points within this distance (m) of the cloud's median; 0 = off",
                                _real(0.0, 100.0))
    min_points: int = _param(64, "clouds with fewer valid points are rejected (>= 64)", _integer(64, 100_000))
    min_extent: float = _param(
        0.01, "clouds whose bounding box's largest side (after crops and outlier removal) is shorter are "
        "rejected (m; a speck, not a graspable object)", _real(0.001, 1.0))
    max_extent: float = _param(
        1.0, "clouds whose bounding box's largest side is longer are rejected (m; a wall or a whole scene: "
        "segment or crop it)", _real(0.01, 10.0))
    max_rate_hz: float = _param(2.0, "at most this many generations per second (0 = unlimited)",
                                _real(0.0, 1000.0), dynamic=True)
    refine: bool = _param(DEFAULTS.refine, "refine the ranked grasps against the object cloud (penetration, contact, "
                          "force closure), bounded by refine_steps and refine_time_ms", _boolean, dynamic=True)
    refine_steps: int = _param(DEFAULTS.refine_steps, "most refinement steps per cloud, 1..1000", _integer(1, 1000),
                               dynamic=True)
    refine_time_ms: float = _param(DEFAULTS.refine_time_ms, "wall-time budget of the refinement per cloud (ms)",
                                   _real(1.0, 60_000.0), dynamic=True)
    qos: str = _param("reliable", "QoS of the cloud subscription: reliable (every cloud arrives whole, any size; "
                      "needs a reliable publisher) | sensor_data (best effort: matches any publisher, but clouds "
                      "over ~1 MB, e.g. 1280x720, are lost)", _choice(QOS_CHOICES))
    mode: str = _param("continuous", "continuous: every cloud (newest wins); on_demand: only on ~/generate",
                       _choice(MODE_CHOICES))

    @staticmethod
    def cross_check(values: Mapping[str, Any]) -> list[str]:
        """Problems between parameters (each one valid on its own)."""
        problems = []
        lo, hi = values.get("min_extent"), values.get("max_extent")
        if lo is not None and hi is not None and lo >= hi:
            problems.append(f"  - min_extent / max_extent: min_extent ({lo:g} m) must be < max_extent ({hi:g} m)")
        artifact, backend = values.get("artifact"), values.get("backend")
        if artifact and backend == "eager":
            problems.append("  - artifact / backend: backend eager runs the PyTorch model, not an artifact; use "
                            "backend auto (or the artifact's format: torchscript, onnx, tensorrt)")
        if artifact and values.get("force_rebuild"):
            problems.append("  - artifact / force_rebuild: force_rebuild rebuilds the artifact cache, which an "
                            "explicit artifact bypasses; re-export the artifact instead, or clear artifact")
        if values.get("force_rebuild") and backend == "eager" and not artifact:
            problems.append("  - force_rebuild / backend: backend eager builds nothing to rebuild")
        return problems

    @property
    def sampling(self) -> "SamplingSettings":
        return SamplingSettings(num_grasps=self.num_grasps, temperature=self.temperature, top_k=self.top_k,
                                seed=self.seed, refine=self.refine, max_rate_hz=self.max_rate_hz,
                                candidates=self.candidates, ranking=self.ranking, refine_steps=self.refine_steps,
                                refine_time_ms=self.refine_time_ms, gravity=self.gravity)


def _zero_or_range(value: Any, lo: int, hi: int) -> int:
    if _is_number(value) and float(value).is_integer() and (int(value) == 0 or lo <= int(value) <= hi):
        return int(value)
    raise ValueError(f"must be 0 (model default) or an integer in [{lo}, {hi}], got {value!r}")


@dataclass(frozen=True)
class SamplingSettings:
    """The run-time adjustable part of ``GraspNodeParameters``, swapped atomically on updates."""

    num_grasps: int
    temperature: float
    top_k: int
    seed: int
    refine: bool
    max_rate_hz: float
    candidates: int = DEFAULTS.candidates
    ranking: bool = DEFAULTS.ranking
    refine_steps: int = DEFAULTS.refine_steps
    refine_time_ms: float = DEFAULTS.refine_time_ms
    gravity: tuple = DEFAULTS.gravity

    @property
    def top_k_or_none(self) -> int | None:
        return self.top_k if self.top_k > 0 else None

    @property
    def seed_or_none(self) -> int | None:
        return self.seed if self.seed >= 0 else None


@dataclass(frozen=True)
class FakeCameraParameters:
    """Parameters of the ``fake_depth_camera`` node (all read-only after start-up)."""

    object: str = _param("mug", "bundled sample object name (mug, box, bottle, ball) or a mesh file path",
                         _text("sample object name or mesh path"))
    distance: float = _param(0.5, "camera distance from the object centre (m)", _real(0.05, 10.0))
    azimuth_deg: float = _param(30.0, "camera azimuth about the world z axis (degrees)", _finite())
    elevation_deg: float = _param(35.0, "camera elevation above the xy plane (degrees, -89..89)",
                                  _real(-89.0, 89.0))
    noise: float = _param(
        1.0, "depth noise scale: 1 = RealSense-like sigma(z) = 1 mm + 1.9 mm * (z / 1 m)^2, 0 = noise-free",
        _real(0.0, 20.0))
    table: bool = _param(True, "render a table top under the object and segment it away", _boolean)
    width: int = _param(640, "image width (pixels)", _integer(16, 4096))
    height: int = _param(480, "image height (pixels)", _integer(16, 4096))
    fov_deg: float = _param(79.5, "horizontal field of view (degrees; 79.5 = RealSense D435 depth)",
                            _real(1.0, 170.0, lo_open=True))
    frame_id: str = _param("camera_depth_optical_frame", "frame of the published cloud",
                           _text("frame id"))
    rate_hz: float = _param(2.0, "publishing rate (Hz)", _real(0.0, 100.0, lo_open=True))
    seed: int = _param(0, "noise seed (deterministic stream of clouds)", _integer(0, 2**31 - 1))
    extra_objects: int = _param(0, "more sample objects placed on the table around the main one (random, seeded)",
                                _integer(0, 3))
    publish_segmented: bool = _param(True, "publish the object's points (segmented by the simulator) on points",
                                     _boolean)
    publish_scene: bool = _param(
        True, "publish what a real camera does: depth/image, depth/camera_info, depth/points (organized scene "
        "cloud) and the target's ground-truth mask on ground_truth/mask", _boolean)
    depth_encoding: str = _param("16UC1", "depth/image encoding: 16UC1 (millimetres) | 32FC1 (metres)",
                                 _choice(DEPTH_ENCODING_CHOICES))


def _vector3_or_empty(value: Any) -> tuple[float, ...]:
    """Empty (any plane) or a non-zero [x, y, z]."""
    if value is None or (hasattr(value, "__len__") and not isinstance(value, (str, bytes)) and len(value) == 0):
        return ()
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 3 or not all(
            _is_number(v) and math.isfinite(float(v)) for v in value):
        raise ValueError(f"must be empty or 3 finite numbers [x, y, z], got {value!r}")
    vec = tuple(float(v) for v in value)
    if not any(vec):
        raise ValueError("must not be the zero vector")
    return vec


@dataclass(frozen=True)
class SegmenterParameters:
    """Parameters of the ``object_segmenter`` node (read-only after start-up); lengths in metres, camera frame."""

    input: str = _param("depth_image", "depth_image (depth/image + depth/camera_info) | scene_cloud (depth/points)",
                        _choice(SEGMENTER_INPUTS))
    target: str = _param("nearest_axis", "which cluster is the object: " + " | ".join(TARGET_CHOICES),
                         _choice(TARGET_CHOICES))
    crop_box: tuple = _param((), "target crop_box: [x_min, y_min, z_min, x_max, y_max, z_max] (cloud frame, m)",
                             _crop_box)
    click_radius: float = _param(0.05, "target clicked: the cluster must come this close to the clicked point (m)",
                                 _real(0.0, 10.0, lo_open=True))
    use_mask: bool = _param(False, "take the object's pixels from the mask topic (sensor_msgs/Image) instead of "
                            "clustering", _boolean)
    mask_label: int = _param(0, "mask pixels equal to this value are the object (0 = every non-zero pixel)",
                             _integer(0, 2**31 - 1))
    mask_max_age: float = _param(0.2, "a mask is used for a depth frame stamped at most this many seconds apart",
                                 _real(0.0, 60.0))
    plane_distance: float = _param(0.006, "RANSAC inlier distance of the support plane (m)", _real(0.0005, 0.1))
    plane_normal: tuple = _param((), "expected support-plane normal [x, y, z] in the camera frame; empty = any plane",
                                 _vector3_or_empty)
    max_normal_angle_deg: float = _param(30.0, "largest angle between the plane found and plane_normal (deg)",
                                         _real(0.0, 90.0))
    min_plane_fraction: float = _param(0.1, "a support plane holds at least this fraction of the valid points",
                                       _real(0.0, 1.0, lo_open=True))
    min_height: float = _param(0.008, "object points start this far above the plane (m)", _real(0.0, 1.0))
    max_height: float = _param(0.5, "and end this far above it (m)", _real(0.0, 10.0, lo_open=True))
    max_range: float = _param(4.0, "ignore returns farther than this (m)", _real(0.0, 100.0, lo_open=True))
    cluster_eps: float = _param(0.02, "DBSCAN neighbourhood radius (m); objects closer than this merge",
                                _real(0.001, 1.0))
    cluster_min_points: int = _param(5, "DBSCAN core-point neighbours (on the strided sample)", _integer(1, 1000))
    min_object_points: int = _param(100, "an object needs this many points (full resolution)",
                                    _integer(1, 10_000_000))
    stride: int = _param(0, "pixel stride of the plane / clustering sample (0 = from cluster_eps and the depth)",
                         _integer(0, 64))
    qos: str = _param("sensor_data", "QoS of the input subscriptions: sensor_data (best effort) | reliable",
                      _choice(QOS_CHOICES))


# --------------------------------------------------------------------------- functions
def _fields(cls: type) -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(cls)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def dynamic_parameter_names(cls: type) -> frozenset[str]:
    """Names of the parameters that may change while the node runs."""
    return frozenset(f.name for f in _fields(cls) if f.metadata["dynamic"])


def check_parameters(cls: type[P], values: Mapping[str, Any], node_name: str = "node") -> P:
    """Validate raw values (missing ones take defaults) into ``cls``; raise ``ParameterError`` listing all problems."""
    known = {f.name for f in _fields(cls)}
    errors = [f"  - {name}: unknown parameter" for name in values if name not in known]
    clean: dict[str, Any] = {}
    for f in _fields(cls):
        raw = values.get(f.name, _default(f))
        try:
            clean[f.name] = f.metadata["check"](raw)
        except ValueError as exc:
            errors.append(f"  - {f.name}: {exc}")
    if not errors and hasattr(cls, "cross_check"):
        errors.extend(cls.cross_check(clean))
    if errors:
        raise ParameterError(f"invalid parameters for {node_name}:\n" + "\n".join(errors))
    return cls(**clean)


def check_update(cls: type, name: str, value: Any) -> Any:
    """Validate one run-time update; raise ``ParameterError`` if invalid or not changeable at run time."""
    fields_by_name = {f.name: f for f in _fields(cls)}
    if name not in fields_by_name:
        raise ParameterError(f"{name}: unknown parameter")
    f = fields_by_name[name]
    if not f.metadata["dynamic"]:
        raise ParameterError(f"{name}: read-only after start-up (restart the node to change it)")
    try:
        return f.metadata["check"](value)
    except ValueError as exc:
        raise ParameterError(f"{name}: {exc}") from None


def _ros_default(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def declare_parameters(node: Any, cls: type) -> None:
    """Declare every field of ``cls`` on ``node`` (read-only unless dynamic), with its description."""
    from rcl_interfaces.msg import ParameterDescriptor  # ROS import kept local: the checkers stay ROS-free

    for f in _fields(cls):
        descriptor = ParameterDescriptor(
            name=f.name,
            description=f.metadata["description"],
            read_only=not f.metadata["dynamic"],
            dynamic_typing=True,
        )
        node.declare_parameter(f.name, _ros_default(_default(f)), descriptor)


def read_parameters(node: Any, cls: type[P]) -> P:
    """Read the declared parameters of ``cls`` from ``node`` and validate them all at once."""
    values = {f.name: node.get_parameter(f.name).value for f in _fields(cls)}
    return check_parameters(cls, values, node_name=f"node '{node.get_name()}'")
