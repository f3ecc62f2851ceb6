"""ROS 2 node ``grasp_generator``: object point clouds in, ranked human grasps out.

A thin shell over ``dvqvae_model.pipeline.generator.GraspGenerator``:

* subscribes ``points`` (sensor_msgs/PointCloud2, a segmented object cloud);
* generates in ONE worker thread, so the executor never waits for inference. The
  worker has a one-slot mailbox: while it is busy the newest cloud replaces the
  waiting one (the replaced cloud is counted as dropped), and generations start
  at most ``max_rate_hz`` times a second;
* publishes, with the input cloud's header, ``grasps/wrist_poses``,
  ``grasps/keypoints``, ``grasps/mano``, ``grasps/scores`` (each grasp's score and
  its terms), ``grasps/joint_states`` and, last and
  only while someone subscribes, ``grasps/markers`` (see ``dvqvae_ros.messages``
  for the conventions; the meshes are written pre-serialised, ~2 ms for 8 grasps),
  and ``/diagnostics`` once a second, with the time per stage (decode,
  preprocess, model, postprocess, messages, publish) so the node's own overhead
  outside the model is visible in the field;
* ``~/generate`` (std_srvs/Trigger) generates for the latest cloud and answers
  when the grasps are published (the only trigger in ``mode: on_demand``).

Parameters are declared in ``dvqvae_ros.parameters.GraspNodeParameters``. The
sampling ones (num_grasps, candidates, ranking, temperature, top_k, seed, refine,
refine_steps, refine_time_ms, max_rate_hz) can be changed at run time; the others are
read-only. Defaults: ``dvqvae_model.pipeline.defaults`` (shared with ``dvqvae-grasp generate``).

Inference backends (eager, TorchScript, ONNX Runtime, TensorRT; ``auto`` = the
fastest available) come from ``dvqvae_model.runtime.backends`` through ``GraspGenerator``:
a prebuilt artifact (``artifact``, e.g. a TensorRT engine from ``dvqvae-export``; the export
package is not needed to load it) or one built into the artifact cache (``force_rebuild``).
"""
from __future__ import annotations

import math
import pickle
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState, PointCloud2
from std_msgs.msg import Float32MultiArray, Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from dvqvae_model.checkpoint import DEFAULT_MODEL_DIR, CheckpointError, resolve_checkpoint
from dvqvae_model.pipeline.preprocess import CloudError
from dvqvae_ros import messages
from dvqvae_ros.cloud_input import CloudInputMonitor, cloud_qos
from dvqvae_ros.parameters import (
    GraspNodeParameters,
    ParameterError,
    SamplingSettings,
    check_update,
    declare_parameters,
    dynamic_parameter_names,
    read_parameters,
)
from dvqvae_ros.latest_worker import LatestOnlyWorker
from dvqvae_ros.point_cloud import read_xyz
from dvqvae_ros.spin import run_node

__all__ = [
    "DEFAULT_MODEL_DIR",
    "GraspGeneratorNode",
    "StartupError",
    "backend_options",
    "create_generator",
    "generator_options",
    "main",
    "resolve_model_path",
    "warm_up_cloud",
]

NODE_NAME = "grasp_generator"
SERVICE_TIMEOUT_S = 60.0
WARN_THROTTLE_S = 5.0
STATS_WINDOW = 200  # latencies kept for p50 / p95
RATE_WINDOW_S = 10.0
# Per-generation stages (ms), reported as <stage>_p50_ms; all but "model" are the node's overhead.
STAGES = ("decode", "preprocess", "model", "postprocess", "messages", "publish")


class StartupError(RuntimeError):
    """The node cannot start with its parameters; the message says what to change."""


# --------------------------------------------------------------------------- backends
class GeneratorLike(Protocol):
    """What the node needs from a grasp generator (``dvqvae_model.pipeline.generator.GraspGenerator``)."""

    def generate(self, points: np.ndarray, num_grasps: int, **kwargs: Any) -> Any: ...


def generator_options(params: GraspNodeParameters) -> dict[str, Any]:
    """Keyword options of ``GraspGenerator`` that come from node parameters."""
    return {
        "num_points": params.points_per_object or None,
        "refine": params.refine,
        "ranking": params.ranking,
        "candidates": params.candidates,
        "gravity": params.gravity,
        "refine_config": refine_config(params.sampling),
        "crop_box": params.crop_box or None,
        "crop_radius": params.crop_radius or None,
        "min_points": params.min_points,
        "min_extent": params.min_extent,
        "max_extent": params.max_extent,
    }


def refine_config(settings: SamplingSettings, base: Any = None) -> Any:
    """The generator's ``RefineConfig`` with the node's step and time budget."""
    from dvqvae_model.pipeline.refine import RefineConfig

    cfg = replace(base) if base is not None else RefineConfig()
    cfg.steps, cfg.max_time_s = settings.refine_steps, settings.refine_time_ms / 1000.0
    return cfg


def resolve_model_path(spec: str) -> Path:
    """``default`` -> the bundled checkpoint directory; anything else -> that directory. Raises StartupError."""
    try:
        return resolve_checkpoint(spec, default_dir=DEFAULT_MODEL_DIR)
    except CheckpointError as exc:
        raise StartupError(f"model:={spec}: {exc}. Point the 'model' parameter at a checkpoint directory, e.g. "
                           "--ros-args -p model:=/path/to/checkpoint") from None


def _check_device(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise StartupError(
                f"device:={device} but CUDA is not available to torch {torch.__version__}; use device:=cpu"
            )


def backend_options(params: GraspNodeParameters) -> dict[str, Any]:
    """``GraspGenerator``'s ``backend_options`` from node parameters: a prebuilt artifact (loaded through
    ``dvqvae_model.runtime``; the export package is not needed) or the cache, and ``force_rebuild``."""
    return {"artifact": params.artifact or None, "force_rebuild": params.force_rebuild}


def top_k_problem(backend: Any, top_k: int) -> Optional[str]:
    """Why ``backend`` cannot sample with ``top_k`` without a new build (None: it can, or it is no artifact
    backend). An explicit artifact holds one ``top_k`` (a constant of its graph)."""
    serves = getattr(backend, "serves_top_k", None)
    if serves is None or serves(top_k if top_k > 0 else None):
        return None
    fixed = getattr(backend, "top_k_values", lambda: [])()
    have = ", ".join("0" if k is None else str(k) for k in fixed)
    return (f"the artifact {getattr(backend, 'artifact_path', '')} was exported for top_k={have}; set top_k:={have} "
            f"or export one with dvqvae-export --top-k {top_k}")


def create_generator(params: GraspNodeParameters) -> tuple[GeneratorLike, str]:
    """The generator for ``params`` on the backend it names (``auto``: the fastest available here)."""
    from dvqvae_model.pipeline.generator import GraspGenerator

    _check_device(params.device)
    model_dir = resolve_model_path(params.model)
    source = f" and artifact {params.artifact!r}" if params.artifact else ""
    try:
        gen = GraspGenerator.from_checkpoint(model_dir, hand=params.hand_model, device=params.device,
                                             backend=params.backend, backend_options=backend_options(params),
                                             **generator_options(params))
    except (OSError, ValueError, RuntimeError, KeyError, MemoryError, pickle.UnpicklingError) as exc:
        # CheckpointError and BackendError are RuntimeErrors; a refused hand pickle an UnpicklingError
        raise StartupError(f"cannot load model {str(model_dir)!r} with backend {params.backend}{source} and "
                           f"hand_model {params.hand_model!r}: {type(exc).__name__}: {exc}") from exc
    problem = top_k_problem(getattr(gen, "backend", None), params.top_k)
    if problem:
        raise StartupError(f"top_k:={params.top_k}: {problem}")
    return gen, str(getattr(gen, "backend_name", params.backend))


# --------------------------------------------------------------------------- jobs and stats
@dataclass
class _Reply:
    """A waiting ~/generate call: filled by the worker, awaited by the service callback."""

    done: threading.Event = field(default_factory=threading.Event)
    success: bool = False
    message: str = ""

    def finish(self, success: bool, message: str) -> None:
        self.success, self.message = success, message
        self.done.set()


@dataclass
class _Job:
    header: Header
    points: np.ndarray  # [N, 3] float32, input frame
    received: float  # time.monotonic() at arrival
    replies: list[_Reply] = field(default_factory=list)
    decode_ms: float = 0.0  # PointCloud2 -> numpy in the subscription callback


@dataclass
class _Stats:
    clouds_received: int = 0
    bad_clouds: int = 0
    generation_errors: int = 0
    generations: int = 0
    last_error: str = ""
    last_error_time: float = -math.inf
    last_success_time: float = -math.inf
    latency_ms: deque = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    inference_ms: deque = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))
    overhead_ms: deque = field(default_factory=lambda: deque(maxlen=STATS_WINDOW))  # all stages but the model
    stage_ms: dict = field(default_factory=lambda: {k: deque(maxlen=STATS_WINDOW) for k in STAGES})
    done_times: deque = field(default_factory=lambda: deque(maxlen=1000))


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


def warm_up_cloud(params: GraspNodeParameters, seed: int = 0) -> np.ndarray:
    """A ball-shaped object cloud that survives the node's own crops and point count (warm-up input).

    Radius 4 cm, shrunk to fit inside ``crop_box`` / ``crop_radius``; centred in the crop box,
    else 0.5 m in front of an optical-frame camera.
    """
    radius, centre = 0.04, np.array([0.0, 0.0, 0.5])
    if params.crop_box:
        lo, hi = np.array(params.crop_box[:3]), np.array(params.crop_box[3:])
        centre, radius = (lo + hi) / 2, min(radius, 0.4 * float((hi - lo).min()))
    if params.crop_radius > 0:
        radius = min(radius, 0.5 * params.crop_radius)
    n = max(2048, 2 * params.min_points)
    directions = np.random.default_rng(seed).normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return (centre + radius * directions).astype(np.float32)


# --------------------------------------------------------------------------- node
class GraspGeneratorNode(Node):
    """See the module docstring. ``generator_factory`` replaces the backend lookup (tests, embedding)."""

    def __init__(self, *, generator_factory: Callable[[GraspNodeParameters], GeneratorLike] | None = None,
                 node_name: str = NODE_NAME, **node_kwargs: Any) -> None:
        super().__init__(node_name, **node_kwargs)
        self._worker: Optional[LatestOnlyWorker[_Job]] = None
        self._stats = _Stats()
        self._stats_lock = threading.Lock()
        self._latest: Optional[_Job] = None
        self._latest_lock = threading.Lock()
        self._closing = False  # set by prepare_shutdown: failures after it are the shutdown's, not errors
        self._calls = 0  # ~/generate calls not yet answered (the shutdown waits for their answers)
        try:
            declare_parameters(self, GraspNodeParameters)
            self.params = read_parameters(self, GraspNodeParameters)  # raises ParameterError
            self._sampling: SamplingSettings = self.params.sampling
            if generator_factory is not None:
                self.generator, self.backend = generator_factory(self.params), "custom"
            else:
                self.generator, self.backend = create_generator(self.params)
            self._log_backend()
            self._flexion_axes = self._rest_flexion_axes()
            # meshes as CDR bytes written by numpy, if this middleware's encoding allows (checked once)
            self._serialized_markers = messages.serialized_markers_supported()
            self._warm_up()
        except BaseException:
            self.destroy_node()  # no half-built node left in the context
            raise

        reliable = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self._pub_markers = self.create_publisher(MarkerArray, "grasps/markers", reliable)
        self._pub_wrists = self.create_publisher(PoseArray, "grasps/wrist_poses", reliable)
        self._pub_keypoints = self.create_publisher(PoseArray, "grasps/keypoints", reliable)
        self._pub_mano = self.create_publisher(Float32MultiArray, "grasps/mano", reliable)
        self._pub_scores = self.create_publisher(Float32MultiArray, "grasps/scores", reliable)
        self._pub_joints = self.create_publisher(JointState, "grasps/joint_states", reliable)
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        self._worker = LatestOnlyWorker(self._process, self._min_interval, on_drop=self._on_drop,
                                        on_reject=_answer_shutting_down)
        self._input = CloudInputMonitor(self.params.qos, lambda: self._sub.topic_name,
                                        lambda text: self.get_logger().warning(text))
        self._sub = self.create_subscription(PointCloud2, "points", self._on_cloud, cloud_qos(self.params.qos),
                                             event_callbacks=self._input.callbacks())
        # The service waits for its generation: its own group lets clouds and diagnostics
        # keep flowing on a multi-threaded executor meanwhile.
        self._srv = self.create_service(Trigger, "~/generate", self._on_generate,
                                        callback_group=MutuallyExclusiveCallbackGroup())
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics,
                                             callback_group=MutuallyExclusiveCallbackGroup())
        self.add_on_set_parameters_callback(self._validate_update)
        self.add_post_set_parameters_callback(self._apply_update)
        self._started = time.monotonic()
        self.get_logger().info(
            f"ready: backend={self.backend}, model={self.params.model}, device={self.params.device}, "
            f"mode={self.params.mode}, listening on {self._sub.topic_name}")

    # ------------------------------------------------------------------ start-up helpers
    def _log_backend(self) -> None:
        """Say which backend runs, from which artifact, and why ``auto`` fell back (if it did)."""
        backend = getattr(self.generator, "backend", None)
        describe = getattr(backend, "describe", None)
        info = describe() if callable(describe) else {}
        selection = info.get("selection") or {}
        if selection.get("fallback_reason"):
            self.get_logger().warning(f"backend auto: {selection['fallback_reason']}; running {self.backend} "
                                      "instead")
        if info.get("mode") == "explicit":
            self.get_logger().info(f"backend {self.backend}: artifact {self.params.artifact} "
                                   f"({info.get('precision')}, top_k={self._sampling.top_k})")

    def _rest_flexion_axes(self) -> np.ndarray:
        """Flexion axes from the generator's hand at rest (fallback: +z, MANO's finger flexion axis)."""
        hand = getattr(self.generator, "hand", None)
        try:
            rest = hand.rest().joints[0]  # type: ignore[union-attr]
            return messages.flexion_axes(_np(rest))
        except Exception:  # noqa: BLE001 - any hand-like object without rest(): fall back
            self.get_logger().warning("generator exposes no hand model: joint_states use nominal +z flexion axes")
            return np.tile(np.array([0.0, 0.0, 1.0]), (15, 1))

    def _warm_up(self) -> None:
        """One generation on a synthetic cloud so the first real cloud does not pay for lazy set-up."""
        t0 = time.perf_counter()
        try:
            self._generate(warm_up_cloud(self.params), self._sampling)
        except CloudError as exc:  # our synthetic input was refused, the model itself is fine
            self.get_logger().warning(f"warm-up skipped: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - a model that cannot run must not start
            raise StartupError(f"warm-up generation failed: {type(exc).__name__}: {exc}") from exc
        self.get_logger().info(f"warm-up generation took {1e3 * (time.perf_counter() - t0):.0f} ms")

    # ------------------------------------------------------------------ inference
    def _generate(self, points: np.ndarray, settings: SamplingSettings) -> Any:
        """Only the worker thread (and the warm-up before it starts) calls the generator."""
        if hasattr(self.generator, "refine"):
            self.generator.refine = settings.refine and settings.ranking  # ranking off = the raw path
        if hasattr(self.generator, "ranking"):
            self.generator.ranking = settings.ranking
            self.generator.candidates = settings.candidates
            self.generator.gravity = settings.gravity
            self.generator.refine_config = refine_config(settings, getattr(self.generator, "refine_config", None))
        return self.generator.generate(points, settings.num_grasps, temperature=settings.temperature,
                                       top_k=settings.top_k_or_none, seed=settings.seed_or_none)

    def _min_interval(self) -> float:
        rate = self._sampling.max_rate_hz
        return 0.0 if rate <= 0 else 1.0 / rate

    def _process(self, job: _Job) -> None:
        """Worker thread: generate for one cloud, publish, record stats, answer waiting service calls."""
        settings = self._sampling
        t0 = time.monotonic()
        try:
            grasps = self._generate(job.points, settings)
            t1 = time.monotonic()
            build_ms, publish_ms = self._publish(job.header, grasps)
        except CloudError as exc:  # a bad cloud, not a broken node
            self._record_error(f"bad cloud: {exc}", bad_cloud=True)
            for reply in job.replies:
                reply.finish(False, f"bad cloud: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - keep serving; report it
            if self._closing:  # e.g. an RCLError from a publisher the shutdown destroyed: not a fault
                for reply in job.replies:
                    reply.finish(False, "the node is shutting down")
                return
            self._record_error(f"generation failed: {type(exc).__name__}: {exc}", bad_cloud=False)
            for reply in job.replies:
                reply.finish(False, f"generation failed: {type(exc).__name__}: {exc}")
            return
        done = time.monotonic()
        stages = _stage_times(getattr(grasps, "timing", None), 1e3 * (t1 - t0))
        stages.update(decode=job.decode_ms, messages=build_ms, publish=publish_ms)
        with self._stats_lock:
            self._stats.generations += 1
            self._stats.inference_ms.append(1e3 * (t1 - t0))
            for name, ms in stages.items():
                self._stats.stage_ms[name].append(ms)
            self._stats.overhead_ms.append(sum(ms for name, ms in stages.items() if name != "model"))
            self._stats.latency_ms.append(1e3 * (done - job.received))
            self._stats.done_times.append(done)
            self._stats.last_success_time = done
        for reply in job.replies:
            reply.finish(True, f"published {len(_np(grasps.scores))} grasps in {1e3 * (done - t0):.0f} ms "
                               f"(frame {job.header.frame_id!r})")

    def _publish(self, header: Header, grasps: Any) -> tuple[float, float]:
        """Light messages first, the meshes last and only when someone listens; -> (build ms, publish ms).

        Every message is built before the first is sent, so the split between building (Python
        objects / bytes) and publishing (serialisation + middleware) is measurable.
        """
        t0 = time.perf_counter()
        params = _np(grasps.params)
        light = (
            (self._pub_wrists, messages.wrist_poses_message(header, params, grasps.joints)),
            (self._pub_keypoints, messages.keypoints_message(header, grasps.keypoints)),
            (self._pub_mano, messages.mano_message(params)),
            (self._pub_scores, messages.scores_message(grasps.scores, getattr(grasps, "terms", None))),
            (self._pub_joints, messages.joint_state_message(header, params[0, messages.HAND_POSE],
                                                            self._flexion_axes)),
        )
        t1 = time.perf_counter()
        for publisher, msg in light:
            publisher.publish(msg)
        t2 = time.perf_counter()
        build, send = t1 - t0, t2 - t1
        if self._pub_markers.get_subscription_count() > 0:
            markers = self._markers(header, grasps)
            t3 = time.perf_counter()
            self._pub_markers.publish(markers)
            build, send = build + t3 - t2, send + time.perf_counter() - t3
        return 1e3 * build, 1e3 * send

    def _markers(self, header: Header, grasps: Any) -> Any:
        """grasps/markers as CDR bytes (numpy-written meshes) or, where unsupported, as a MarkerArray."""
        if self._serialized_markers:
            try:
                return messages.serialized_grasp_markers(header, grasps.vertices, grasps.faces, grasps.keypoints)
            except messages.SerializationUnsupported:
                pass  # e.g. a mesh without faces: the object path handles every case
        return messages.grasp_markers(header, grasps.vertices, grasps.faces, grasps.keypoints)

    def _record_error(self, text: str, bad_cloud: bool) -> None:
        with self._stats_lock:
            if bad_cloud:
                self._stats.bad_clouds += 1
            else:
                self._stats.generation_errors += 1
            self._stats.last_error = text
            self._stats.last_error_time = time.monotonic()
        if bad_cloud:  # rclpy throttles per call site, and a call site must keep one severity
            self.get_logger().warning(text, throttle_duration_sec=WARN_THROTTLE_S)
        else:
            self.get_logger().error(text, throttle_duration_sec=WARN_THROTTLE_S)

    def _on_drop(self, old: _Job, new: _Job) -> None:
        new.replies.extend(old.replies)  # a waiting service call gets the newer cloud's result

    # ------------------------------------------------------------------ callbacks
    def _on_cloud(self, msg: PointCloud2, info: dict) -> None:  # info: rclpy MessageInfo (sequence numbers)
        received = time.monotonic()
        self._input.cloud_arrived(info)
        with self._stats_lock:
            self._stats.clouds_received += 1
        if not msg.header.frame_id.strip():
            self._record_error("bad cloud: empty header.frame_id: the grasps would be in no frame "
                               "(set it to the camera's optical frame)", bad_cloud=True)
            return
        try:
            points = read_xyz(msg)
        except (ValueError, TypeError) as exc:
            self._record_error(f"bad cloud: malformed PointCloud2: {exc}", bad_cloud=True)
            return
        finite = int(np.isfinite(points).all(axis=1).sum())
        if finite < self.params.min_points:
            self._record_error(
                f"bad cloud: {finite} finite points of {len(points)} < min_points {self.params.min_points}",
                bad_cloud=True)
            return
        decode_ms = 1e3 * (time.monotonic() - received)  # read_xyz + the finite-point check
        job = _Job(header=msg.header, points=points, received=received, decode_ms=decode_ms)
        with self._latest_lock:
            self._latest = job
        if self.params.mode == "continuous":
            self._worker.submit(job)

    def _on_generate(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self._latest_lock:
            latest = self._latest
        if latest is None:
            response.success = False
            response.message = f"no valid point cloud received yet on {self._sub.topic_name}"
            return response
        reply = _Reply()
        job = _Job(header=latest.header, points=latest.points, received=time.monotonic(), replies=[reply])
        with self._stats_lock:
            self._calls += 1
        try:
            self._worker.submit(job, urgent=True)  # after stop(): answered at once (on_reject)
            answered = reply.done.wait(SERVICE_TIMEOUT_S)
        finally:
            with self._stats_lock:
                self._calls -= 1
        if not answered:
            response.success = False
            response.message = f"generation did not finish within {SERVICE_TIMEOUT_S:.0f} s"
            return response
        response.success, response.message = reply.success, reply.message
        return response

    def _validate_update(self, params: list[Parameter]) -> SetParametersResult:
        dynamic = dynamic_parameter_names(GraspNodeParameters)
        for p in params:
            if p.name not in dynamic:
                continue  # read-only ones are refused by rclpy itself; unknown ones are not ours
            try:
                value = check_update(GraspNodeParameters, p.name, p.value)
            except ParameterError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            if p.name == "top_k":
                backend = getattr(self.generator, "backend", None)
                problem = top_k_problem(backend, value)
                if problem:
                    return SetParametersResult(successful=False, reason=f"top_k: {problem}")
                if getattr(backend, "name", "") == "tensorrt" and getattr(backend, "mode", "") == "cache" \
                        and not backend.has_top_k(value if value > 0 else None):
                    self.get_logger().warning(
                        f"top_k:={value}: the TensorRT engine for it is built now, on the worker thread (minutes "
                        "on first use; cached afterwards); prebuild it with dvqvae-export --top-k and artifact:=")
        return SetParametersResult(successful=True)

    def _apply_update(self, params: list[Parameter]) -> None:
        dynamic = dynamic_parameter_names(GraspNodeParameters)
        changes = {p.name: check_update(GraspNodeParameters, p.name, p.value) for p in params if p.name in dynamic}
        if changes:
            self._sampling = replace(self._sampling, **changes)  # one atomic swap; the worker reads a snapshot
            self.params = replace(self.params, **changes)
            self.get_logger().info("updated " + ", ".join(f"{k}={v}" for k, v in changes.items()))

    # ------------------------------------------------------------------ diagnostics
    def diagnostics_snapshot(self) -> messages.DiagnosticsSnapshot:
        now = time.monotonic()
        with self._stats_lock:
            s = self._stats
            recent = [t for t in s.done_times if t > now - RATE_WINDOW_S]
            window = min(RATE_WINDOW_S, max(now - self._started, 1e-3))
            failing = s.last_error_time > s.last_success_time
            values = {
                "backend": self.backend,
                "model": self.params.model,
                "device": self.params.device,
                "mode": self.params.mode,
                "num_grasps": self._sampling.num_grasps,
                "latency_p50_ms": _percentile(s.latency_ms, 50),
                "latency_p95_ms": _percentile(s.latency_ms, 95),
                "inference_p50_ms": _percentile(s.inference_ms, 50),
                "inference_p95_ms": _percentile(s.inference_ms, 95),
                **{f"{name}_p50_ms": _percentile(s.stage_ms[name], 50) for name in STAGES},
                "overhead_p50_ms": _percentile(s.overhead_ms, 50),
                "overhead_p95_ms": _percentile(s.overhead_ms, 95),
                "rate_hz": len(recent) / window,
                "clouds_received": s.clouds_received,
                "clouds_dropped": self._worker.dropped,
                "clouds_lost_in_transport": self._input.lost,
                "clouds_skipped": self._input.skipped,
                "incompatible_publishers": self._input.incompatible,
                "bad_clouds": s.bad_clouds,
                "generation_errors": s.generation_errors,
                "generations": s.generations,
                "last_error": s.last_error or "none",
            }
            if failing:
                level, message = DiagnosticStatus.WARN, s.last_error
            elif s.generations == 0:
                level, message = DiagnosticStatus.OK, f"waiting for clouds on {self._sub.topic_name}"
            else:
                level, message = DiagnosticStatus.OK, f"{s.generations} generations"
        return messages.DiagnosticsSnapshot(
            name=f"{self.get_name()}: grasp generation", hardware_id=self.params.device,
            level=level[0] if isinstance(level, bytes) else int(level), message=message, values=values)

    def _publish_diagnostics(self) -> None:
        self._input.check(self._sub.get_publisher_count())
        self._pub_diag.publish(messages.diagnostics_message(self.get_clock().now().to_msg(),
                                                            self.diagnostics_snapshot()))

    # ------------------------------------------------------------------ lifecycle
    def wait_idle(self, timeout: float) -> bool:
        """True once no generation is running or waiting (tests)."""
        return self._worker is None or self._worker.wait_idle(timeout)

    @property
    def calls_in_flight(self) -> int:
        """~/generate calls whose answer has not been returned to the executor yet."""
        with self._stats_lock:
            return self._calls

    def prepare_shutdown(self) -> None:
        """Stop generating (the running job may finish) and answer every waiting ~/generate call."""
        self._closing = True
        if self._worker is not None:
            self._worker.stop()  # the waiting job's calls are answered first (on_reject)

    def destroy_node(self) -> None:
        self.prepare_shutdown()
        super().destroy_node()


def _answer_shutting_down(job: Optional[_Job]) -> None:
    for reply in job.replies if job is not None else ():
        reply.finish(False, "the node is shutting down")


def _stage_times(timing: Optional[dict], generate_ms: float) -> dict[str, float]:
    """Split one ``generate`` call (ms) with the generator's own timing: preprocess / model / postprocess.

    ``model`` is the sampling graph plus ranking and refinement; a generator without ``timing``
    (a stand-in) counts as all model.
    """
    if not timing or "inference_ms" not in timing:
        return {"preprocess": 0.0, "model": generate_ms, "postprocess": 0.0}
    pre = float(timing.get("preprocess_ms", 0.0))
    model = float(timing["inference_ms"]) + float(timing.get("rank_ms", 0.0)) + float(timing.get("refine_ms", 0.0))
    return {"preprocess": pre, "model": model, "postprocess": max(0.0, generate_ms - pre - model)}


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def main(args: Sequence[str] | None = None) -> int:
    """Console entry point: ``grasp_generator --ros-args -p model:=/path/to/ckpt``."""
    return run_node(GraspGeneratorNode, NODE_NAME, lambda: MultiThreadedExecutor(num_threads=3), args,
                    startup_errors=(ParameterError, StartupError))


if __name__ == "__main__":
    sys.exit(main())
