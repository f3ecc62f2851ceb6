"""``dvqvae-grasp demo``: fake depth camera -> object segmenter -> grasp node over DDS -> files, picture,
segmentation IoU, latency, quality.

The camera sees ``--object`` plus ``--extra-objects`` on a table and publishes a depth image;
``object_segmenter`` cuts the object out (``--input`` picks its input; ``segmented_cloud`` skips it and
uses the camera's ground-truth segmentation); the IoU against the simulator's ground-truth mask is
reported beside the grasp numbers. The only ``dvqvae-grasp`` path that imports ROS.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from dvqvae_ros.grasp_files import quick_quality, resolve_model, write_grasp_files

__all__ = ["cmd_demo"]

STAMPED_TOPICS = ("grasps/wrist_poses", "grasps/keypoints", "grasps/joint_states", "grasps/markers")
LIGHT_TOPICS = STAMPED_TOPICS[:3]


# ------------------------------------------------------------------------------------------ demo
@dataclass
class _Round:
    stamp_ns: int
    received_ns: dict[str, int] = field(default_factory=dict)
    keypoints: Optional[np.ndarray] = None


class _Listener:
    """Subscribes to the camera and every node output; pairs them by header stamp."""

    def __init__(self, node: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseArray
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import JointState, PointCloud2
        from std_msgs.msg import Float32MultiArray
        from visualization_msgs.msg import MarkerArray

        self.node = node
        self.lock = threading.Lock()
        self.clouds: dict[int, np.ndarray] = {}
        self.truth: dict[int, np.ndarray] = {}
        self.segmenter_diagnostics: dict[str, str] = {}
        self.rounds: dict[int, _Round] = {}
        self.mano: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []  # grasps/scores tables [K, 6], arrival order (published after mano)
        self.diagnostics: dict[str, str] = {}
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(PointCloud2, "points", self._on_cloud, reliable)
        from sensor_msgs.msg import Image

        node.create_subscription(Image, "ground_truth/mask", self._on_truth, reliable)
        # Light topics first: rclpy's executor serves ready subscriptions in creation order, one
        # callback per spin, so the meshes created first would be handled before the poses.
        types = {"grasps/wrist_poses": PoseArray, "grasps/keypoints": PoseArray, "grasps/mano": Float32MultiArray,
                 "grasps/scores": Float32MultiArray, "grasps/joint_states": JointState,
                 "grasps/markers": MarkerArray}
        for topic, msg_type in types.items():
            # The hand meshes (~1 MB) are taken raw: turning them into Python objects here would hold up
            # every other callback (RViz, in C++, does not pay that); only their stamp is read.
            node.create_subscription(msg_type, topic, lambda m, t=topic: self._on_output(t, m), reliable,
                                     raw=topic == "grasps/markers")
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, reliable)

    @staticmethod
    def _stamp(header: Any) -> int:
        return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)

    def _on_truth(self, msg: Any) -> None:
        mask = np.frombuffer(bytes(msg.data), dtype=np.uint8).reshape(msg.height, msg.step)[:, :msg.width] > 0
        with self.lock:
            self.truth[self._stamp(msg.header)] = mask

    def _on_cloud(self, msg: Any) -> None:
        from dvqvae_ros.point_cloud import read_xyz

        with self.lock:
            self.clouds[self._stamp(msg.header)] = np.array(read_xyz(msg), dtype=np.float32)

    def _stamp_of(self, topic: str, msg: Any) -> Optional[int]:
        if topic == "grasps/markers":
            # Serialised MarkerArray (CDR, little endian): 4-byte encapsulation, uint32 marker count,
            # then the first marker's header stamp (int32 sec, uint32 nanosec).
            raw = bytes(msg[:16])
            if len(raw) < 16 or raw[1] != 1 or int.from_bytes(raw[4:8], "little") == 0:
                return None
            return int.from_bytes(raw[8:12], "little", signed=True) * 1_000_000_000 + int.from_bytes(raw[12:16], "little")
        return self._stamp(msg.header)

    def _on_output(self, topic: str, msg: Any) -> None:
        now = time.time_ns()
        with self.lock:
            if topic == "grasps/mano":
                # Float32MultiArray has no header: kept in arrival order, matched to a round later.
                self.mano.append(np.asarray(msg.data, dtype=np.float32).reshape(-1, 61))
                return
            if topic == "grasps/scores":
                width = msg.layout.dim[1].size if len(msg.layout.dim) > 1 else 1
                self.scores.append(np.asarray(msg.data, dtype=np.float32).reshape(-1, width))
                return
            stamp = self._stamp_of(topic, msg)
            if stamp is None:
                return
            r = self.rounds.setdefault(stamp, _Round(stamp))
            r.received_ns[topic] = now
            if topic == "grasps/keypoints":
                r.keypoints = np.array([[p.position.x, p.position.y, p.position.z] for p in msg.poses],
                                       dtype=np.float32).reshape(-1, 21, 3)

    def _on_diagnostics(self, msg: Any) -> None:
        with self.lock:
            for status in msg.status:
                if "grasp" in status.name:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}
                elif "segment" in status.name:
                    self.segmenter_diagnostics = {kv.key: kv.value for kv in status.values}

    def complete(self) -> list[_Round]:
        """Rounds with every stamped output and their camera cloud, oldest first."""
        with self.lock:
            return sorted((r for r in self.rounds.values()
                           if all(t in r.received_ns for t in STAMPED_TOPICS) and r.stamp_ns in self.clouds),
                          key=lambda r: r.stamp_ns)


def _spawn(module: str, ros_args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    fh = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *ros_args], stdout=fh,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def segmentation_ious(clouds: dict[int, np.ndarray], truth: dict[int, np.ndarray], intrinsics: Any) -> np.ndarray:
    """IoU of each cloud's pixels (projected with ``intrinsics``: exact, the noise is along each ray) with the
    ground-truth mask of the same stamp."""
    from dvqvae_model.sim.tabletop import pixel_iou

    out = []
    for stamp, points in sorted(clouds.items()):
        mask = truth.get(stamp)
        if mask is None or len(points) == 0:
            continue
        u = np.rint(intrinsics.fx * points[:, 0] / points[:, 2] + intrinsics.cx).astype(int)
        v = np.rint(intrinsics.fy * points[:, 1] / points[:, 2] + intrinsics.cy).astype(int)
        ok = (u >= 0) & (u < mask.shape[1]) & (v >= 0) & (v < mask.shape[0])
        pred = np.zeros_like(mask)
        pred[v[ok], u[ok]] = True
        out.append(pixel_iou(pred, mask))
    return np.asarray(out, dtype=np.float64)


def _scores_for(listener: _Listener, mano: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The grasps/scores table published with ``mano`` (the same position from the newest end of
    each topic's arrival order) -> (scores [K], terms); an error if it did not arrive."""
    from dvqvae_ros.messages import SCORE_COLUMNS

    i = next(i for i, m in enumerate(listener.mano) if m is mano)
    j = len(listener.scores) - (len(listener.mano) - i)
    if j < 0 or listener.scores[j].shape != (len(mano), len(SCORE_COLUMNS)):
        raise SystemExit("error: the grasps/scores message of the last grasp set did not arrive")
    table = listener.scores[j]
    return table[:, 0].copy(), {name: table[:, c].copy() for c, name in enumerate(SCORE_COLUMNS) if c > 0}


def cmd_demo(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from dvqvae_model.hand.hand_model import load_hand_model
    from dvqvae_model.sim.sample_objects import load_object
    from dvqvae_model.sim import depth_camera as dc
    from dvqvae_ros.fake_camera_node import make_camera

    t_start = time.monotonic()
    model_dir = resolve_model(args.model)
    out = Path(args.out)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env.setdefault("ROS_DOMAIN_ID", str(args.domain_id))
    # Hand-mesh markers are ~1 MB: over Fast DDS's default UDP a lost fragment stalls the reliable
    # topics for a heartbeat period; LARGE_DATA moves big samples to shared memory / TCP.
    env.setdefault("FASTDDS_BUILTIN_TRANSPORTS", "LARGE_DATA")
    os.environ.update({k: env[k] for k in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_DOMAIN_ID",
                                           "FASTDDS_BUILTIN_TRANSPORTS")})
    camera_args = ["-p", f"object:={args.object}", "-p", f"rate_hz:={args.rate}", "-p", f"distance:={args.distance}",
                   "-p", f"seed:={args.seed}", "-p", f"extra_objects:={args.extra_objects}"]
    segmented = args.input == "segmented_cloud"
    if not segmented:
        camera_args += ["-p", "publish_segmented:=false"]
    segmenter_args = ["-p", f"input:={args.input}", "-p", "qos:=reliable"]
    node_args = ["-p", f"model:={model_dir}", "-p", f"hand_model:={args.hand}", "-p", f"num_grasps:={args.num_grasps}",
                 "-p", f"seed:={args.seed}", "-p", "max_rate_hz:=0.0", "-p", "qos:=reliable"]
    print(f"demo: fake_depth_camera ({args.object} + {args.extra_objects} more on a table, {args.rate:g} Hz) -> "
          f"{'' if segmented else f'object_segmenter ({args.input}) -> '}grasp_generator ({model_dir.name}, "
          f"{args.num_grasps} grasps) over DDS, ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}")
    procs = [_spawn("dvqvae_ros.grasp_node", node_args, out / "logs" / "grasp_generator.log", env),
             _spawn("dvqvae_ros.fake_camera_node", camera_args, out / "logs" / "fake_depth_camera.log", env)]
    if not segmented:
        procs.append(_spawn("dvqvae_ros.segmenter_node", segmenter_args, out / "logs" / "object_segmenter.log", env))
    rclpy.init(args=[])
    node = rclpy.create_node("dvqvae_demo_listener")
    listener = _Listener(node)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline and len(listener.complete()) < args.rounds:
            executor.spin_once(timeout_sec=0.1)
            for p in procs:
                if p.poll() is not None:
                    raise SystemExit(f"error: a demo process exited early (code {p.returncode}); see {out}/logs/")
        # A little longer for the 1 Hz diagnostics.
        t_diag = time.monotonic() + 1.5
        while time.monotonic() < t_diag:
            executor.spin_once(timeout_sec=0.1)
    finally:
        for p in procs:
            _stop(p)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    rounds = listener.complete()
    if not rounds:
        print(f"error: no grasps arrived within {args.timeout:g} s; see {out}/logs/", file=sys.stderr)
        return 1

    # Rebuild the hands from the last published MANO parameters (what a subscriber would do) and
    # find the cloud they belong to: the round whose published keypoints they reproduce.
    hand = load_hand_model(args.hand)
    import torch

    if not listener.mano:
        print("error: no grasps/mano message arrived", file=sys.stderr)
        return 1
    candidates = [r for r in rounds if r.keypoints is not None]
    best: Optional[tuple[float, np.ndarray, _Round, Any]] = None
    for mano in listener.mano[-len(candidates) - 2:]:  # the newest arrays; each belongs to one round
        with torch.no_grad():
            ho = hand.from_params(torch.from_numpy(mano))
        for r in candidates:
            if r.keypoints.shape == ho.keypoints.shape:
                err = float(np.abs(ho.keypoints.numpy() - r.keypoints).max())
                if best is None or err < best[0] or (err == best[0] and r.stamp_ns > best[2].stamp_ns):
                    best = (err, mano, r, ho)
    if best is None:
        print("error: no keypoints matching a MANO message arrived", file=sys.stderr)
        return 1
    kp_err, mano, last, ho = best
    vertices = ho.vertices.numpy()
    cloud = listener.clouds[last.stamp_ns]
    scores, terms = _scores_for(listener, mano)
    paths = write_grasp_files(out, vertices=vertices, mano=mano, keypoints=ho.keypoints.numpy(), scores=scores,
                              hand=hand, object_points=cloud, terms=terms,
                              title=f"demo: {args.object}, {len(vertices)} grasps from the ROS topics")
    # Quality against the true object, posed in the camera frame exactly as the fake camera saw it.
    intrinsics = dc.CameraIntrinsics.from_fov(640, 480, 79.5)  # the fake camera's defaults
    cam = make_camera(load_object(args.object), distance=args.distance, azimuth_deg=30.0, elevation_deg=35.0,
                      intrinsics=intrinsics, extra_objects=args.extra_objects, seed=args.seed)
    mesh_cam = cam.scene.object_mesh_cam(cam.target)
    quality = quick_quality(vertices, hand, mesh_cam) if mesh_cam.is_watertight else {}
    ious = segmentation_ious(listener.clouds, listener.truth, intrinsics)

    light = np.array([(max(r.received_ns[t] for t in LIGHT_TOPICS) - r.stamp_ns) / 1e6 for r in rounds])
    full = np.array([(r.received_ns["grasps/markers"] - r.stamp_ns) / 1e6 for r in rounds])
    d = listener.diagnostics
    rows = [
        ("clouds -> grasp sets", f"{len(rounds)} complete rounds (every output topic), {len(listener.mano)} MANO arrays"),
        ("end-to-end latency", f"p50 {np.percentile(light, 50):.0f} ms, p95 {np.percentile(light, 95):.0f} ms"
                               " (cloud stamp -> wrist poses, keypoints, joint states received)"),
        ("  with hand-mesh markers", f"p50 {np.percentile(full, 50):.0f} ms, p95 {np.percentile(full, 95):.0f} ms"
                                     " (~1 MB MarkerArray)"),
        ("node latency (diagnostics)", f"p50 {d.get('latency_p50_ms', '?')} ms, p95 {d.get('latency_p95_ms', '?')} ms"),
        ("model inference (diagnostics)", f"p50 {d.get('inference_p50_ms', '?')} ms, backend {d.get('backend', '?')}"),
        ("grasps per cloud", f"{len(vertices)} (published MANO reproduces published keypoints to {kp_err * 1000:.3f} mm)"),
        ("object cloud", f"{len(cloud)} points in the camera frame"),
    ]
    if ious.size:
        rows.insert(0, ("segmentation IoU", f"mean {ious.mean():.3f}, min {ious.min():.3f} over {ious.size} clouds "
                                            "(object points vs the simulator's ground-truth pixels)"))
    sd = listener.segmenter_diagnostics
    if sd:
        rows.insert(1, ("segmenter (diagnostics)", f"p50 {sd.get('time_p50_ms', '?')} ms per frame, "
                                                   f"{sd.get('clusters', '?')} clusters, plane found "
                                                   f"{sd.get('plane_found', '?')}, {sd.get('published', '?')} of "
                                                   f"{sd.get('frames', '?')} frames published"))
    if quality:
        rows += [("contact ratio", f"{100 * quality['contact_ratio']:.0f} %"),
                 ("penetration volume", f"{quality['penetration_cm3']:.2f} cm^3 (mean, 2 mm grid)"),
                 ("simulation displacement", f"{quality.get('displacement_cm', float('nan')):.2f} cm (mean)"),
                 ("quality index Q", f"{quality.get('quality_index', float('nan')):.2f} (lower is better)")]
    rows.append(("wall time", f"{time.monotonic() - t_start:.1f} s"))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"  {k:<{width}}  {v}" for k, v in rows))
    print(f"files in {out}/: grasps.npz, grasp_XX.ply, object_points.ply, viewer.html, grasps.png, logs/")
    for key in ("png", "html"):
        print(f"  {key:5s} {paths[key]}")
    return 0
