"""``dvqvae-grasp``: grasps for one object without ROS, and the end-to-end ROS demo.

  dvqvae-grasp generate --object MESH|CLOUD|NAME --num-grasps K --out DIR [--partial-view] [--seed S]
  dvqvae-grasp demo [--object mug] [--num-grasps 8] [--out demo_out]

``generate`` runs ``GraspGenerator`` in-process and writes ``DIR/grasps.npz`` (``vertices``
[K,778,3] float32 metres in the object's frame, ``faces``, ``sealed_faces``, ``mano`` [K,61],
``keypoints`` [K,21,3], ``scores``), one PLY per grasp, the object cloud, an HTML viewer and a PNG.

``demo`` starts ``fake_depth_camera`` and ``grasp_generator`` as two processes talking over DDS,
listens to every output topic from a third, and writes the same files for the last cloud plus a
table of latency and quick quality numbers.
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
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["main", "load_object_cloud", "write_grasp_files", "quick_quality"]

CLOUD_SUFFIXES = (".npy", ".xyz", ".txt", ".pcd")
STAMPED_TOPICS = ("grasps/wrist_poses", "grasps/keypoints", "grasps/joint_states", "grasps/markers")
LIGHT_TOPICS = STAMPED_TOPICS[:3]


# ---------------------------------------------------------------------------------------- inputs
def load_object_cloud(spec: str, num_points: int, *, partial_view: bool, seed: int) -> tuple[np.ndarray, Any]:
    """(points [N,3] float32, mesh or None) for a sample-object name, a mesh file or a point-cloud file."""
    import trimesh

    path = Path(spec).expanduser()
    if path.suffix.lower() in CLOUD_SUFFIXES or (path.suffix.lower() == ".ply" and _ply_is_cloud(path)):
        if partial_view:
            raise ValueError("--partial-view needs a mesh; the object given is already a point cloud")
        return _read_cloud(path), None
    from dvqvae_model.sim.sample_objects import load_object

    mesh = load_object(spec)
    rng = np.random.default_rng(seed)
    if partial_view:
        from dvqvae_model.sim import depth_camera as dc

        points_cam, cam_to_world = dc.capture_object_cloud(mesh, rng)
        points = dc.transform_points(points_cam, cam_to_world)  # back into the object's frame
    else:
        points, _ = trimesh.sample.sample_surface(mesh, max(num_points, 3000), seed=int(seed))
    return np.asarray(points, dtype=np.float32), mesh


def _ply_is_cloud(path: Path) -> bool:
    import trimesh

    return isinstance(trimesh.load(str(path)), trimesh.PointCloud)


def _read_cloud(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
    elif suffix in (".xyz", ".txt"):
        arr = np.loadtxt(path, ndmin=2)[:, :3]
    else:  # .ply / .pcd
        import open3d as o3d

        arr = np.asarray(o3d.io.read_point_cloud(str(path)).points) if suffix == ".pcd" else None
        if arr is None:
            import trimesh

            arr = np.asarray(trimesh.load(str(path)).vertices)
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise ValueError(f"{path}: expected an [N,3] point array, got shape {arr.shape}")
    return arr[:, :3]


# --------------------------------------------------------------------------------------- outputs
def write_grasp_files(out: Path, *, vertices: np.ndarray, mano: np.ndarray, keypoints: np.ndarray,
                      scores: np.ndarray, hand: Any, object_points: np.ndarray, title: str) -> dict[str, Path]:
    """grasps.npz, grasp_XX.ply, object_points.ply, viewer.html and grasps.png in ``out``."""
    import trimesh

    from dvqvae_model.sim.visualize import render_grasps_png

    out.mkdir(parents=True, exist_ok=True)
    faces = hand.faces.detach().cpu().numpy().astype(np.int64)
    sealed = hand.sealed_faces.detach().cpu().numpy().astype(np.int64)
    paths = {"npz": out / "grasps.npz"}
    _atomic_savez(paths["npz"], vertices=vertices.astype(np.float32), faces=faces, sealed_faces=sealed,
                  mano=mano.astype(np.float32), keypoints=keypoints.astype(np.float32),
                  scores=scores.astype(np.float32))
    for i, v in enumerate(vertices):
        trimesh.Trimesh(v, faces, process=False).export(out / f"grasp_{i:02d}.ply")
    trimesh.PointCloud(object_points).export(out / "object_points.ply")
    paths["html"] = _write_viewer(out / "viewer.html", object_points, vertices, faces, scores, title)
    paths["png"] = render_grasps_png(object_points, vertices[: min(3, len(vertices))], out / "grasps.png",
                                     faces=faces, max_hands=3, title=title)
    return paths


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    import io

    from dvqvae_model.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _write_viewer(path: Path, points: np.ndarray, vertices: np.ndarray, faces: np.ndarray,
                  scores: np.ndarray, title: str) -> Path:
    """An interactive, self-contained (offline) plotly page: object points and every hand."""
    import plotly.graph_objects as go

    step = max(1, len(points) // 6000)
    data: list[Any] = [go.Scatter3d(x=points[::step, 0], y=points[::step, 1], z=points[::step, 2], mode="markers",
                                    marker=dict(size=1.5, color="#555555"), name="object")]
    for i, v in enumerate(vertices):
        data.append(go.Mesh3d(x=v[:, 0], y=v[:, 1], z=v[:, 2], i=faces[:, 0], j=faces[:, 1], k=faces[:, 2],
                              color="#e0a080", opacity=1.0 if i == 0 else 0.5, flatshading=False,
                              name=f"grasp {i} (score {scores[i]:.2f})", showlegend=True,
                              visible=True if i < 3 else "legendonly"))
    fig = go.Figure(data=data)
    fig.update_layout(title=title, scene=dict(aspectmode="data"), margin=dict(l=0, r=0, t=40, b=0))
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def quick_quality(vertices: np.ndarray, hand: Any, mesh: Any, *, simulate: bool = True) -> dict[str, float]:
    """Contact ratio, penetration volume and simulated displacement of hands against an object mesh."""
    from dvqvae_training.evaluate.metrics import evaluate_grasps

    ev = evaluate_grasps(vertices, hand.sealed_faces.cpu().numpy(), hand.faces.cpu().numpy(), mesh,
                         simulate=simulate, pitch=0.002)
    return ev.summary()


# -------------------------------------------------------------------------------------- generate
def cmd_generate(args: argparse.Namespace) -> int:
    from dvqvae_model.pipeline.generator import GraspGenerator
    from dvqvae_model.pipeline.preprocess import CloudError

    model_dir = _resolve_model(args.model)
    gen = GraspGenerator.from_checkpoint(model_dir, hand=args.hand)
    points, mesh = load_object_cloud(args.object, gen.num_points, partial_view=args.partial_view, seed=args.seed)
    try:
        gs = gen.generate(points, args.num_grasps, temperature=args.temperature, seed=args.seed)
    except CloudError as exc:
        print(f"error: bad object cloud: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    paths = write_grasp_files(out, vertices=gs.vertices, mano=gs.params, keypoints=gs.keypoints, scores=gs.scores,
                              hand=gen.hand, object_points=points, title=f"{Path(args.object).name}: {len(gs)} grasps")
    print(f"{len(gs)} grasps for {args.object} in {gs.timing.get('total_ms', float('nan')):.1f} ms -> {out}/")
    if mesh is not None and mesh.is_watertight and not args.no_quality:
        q = quick_quality(gs.vertices, gen.hand, mesh)
        print(_format_quality(q))
    for key, p in paths.items():
        print(f"  {key:5s} {p}")
    return 0


def _resolve_model(spec: str) -> Path:
    from dvqvae_ros.grasp_node import StartupError, resolve_model_path

    try:
        return resolve_model_path(spec)
    except StartupError as exc:
        raise SystemExit(f"error: {exc}") from None


def _format_quality(q: dict[str, float]) -> str:
    parts = [f"contact {100 * q['contact_ratio']:.0f} %", f"penetration {q['penetration_cm3']:.2f} cm^3"]
    if "displacement_cm" in q:
        parts += [f"sim. displacement {q['displacement_cm']:.2f} cm", f"Q {q['quality_index']:.2f}"]
    return "quality: " + ", ".join(parts) + f" (penetration pitch {q['pitch_mm']:.0f} mm)"


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
        self.rounds: dict[int, _Round] = {}
        self.mano: list[np.ndarray] = []
        self.diagnostics: dict[str, str] = {}
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(PointCloud2, "points", self._on_cloud, reliable)
        types = {"grasps/markers": MarkerArray, "grasps/wrist_poses": PoseArray, "grasps/keypoints": PoseArray,
                 "grasps/mano": Float32MultiArray, "grasps/joint_states": JointState}
        for topic, msg_type in types.items():
            # The hand meshes (~1 MB) are taken raw: turning them into Python objects here would hold up
            # every other callback (RViz, in C++, does not pay that); only their stamp is read.
            node.create_subscription(msg_type, topic, lambda m, t=topic: self._on_output(t, m), reliable,
                                     raw=topic == "grasps/markers")
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, reliable)

    @staticmethod
    def _stamp(header: Any) -> int:
        return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)

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


def cmd_demo(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from dvqvae_model.hand.hand_model import load_hand_model
    from dvqvae_ros.fake_camera_node import FakeDepthCamera
    from dvqvae_model.sim.sample_objects import load_object

    t_start = time.monotonic()
    model_dir = _resolve_model(args.model)
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
                   "-p", f"seed:={args.seed}"]
    node_args = ["-p", f"model:={model_dir}", "-p", f"hand_model:={args.hand}", "-p", f"num_grasps:={args.num_grasps}",
                 "-p", f"seed:={args.seed}", "-p", "max_rate_hz:=0.0", "-p", "qos:=reliable"]
    print(f"demo: fake_depth_camera ({args.object}, {args.rate:g} Hz) -> grasp_generator ({model_dir.name}, "
          f"{args.num_grasps} grasps) over DDS, ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']}")
    procs = [_spawn("dvqvae_ros.grasp_node", node_args, out / "logs" / "grasp_generator.log", env),
             _spawn("dvqvae_ros.fake_camera_node", camera_args, out / "logs" / "fake_depth_camera.log", env)]
    rclpy.init(args=[])
    node = rclpy.create_node("dvqvae_demo_listener")
    listener = _Listener(node)
    executor = MultiThreadedExecutor(num_threads=2)
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
    scores = np.arange(len(vertices), 0, -1, dtype=np.float32)  # rank only: the topics carry order, not scores
    paths = write_grasp_files(out, vertices=vertices, mano=mano, keypoints=ho.keypoints.numpy(), scores=scores,
                              hand=hand, object_points=cloud,
                              title=f"demo: {args.object}, {len(vertices)} grasps from the ROS topics")
    # Quality against the true object, posed in the camera frame exactly as the fake camera saw it.
    from dvqvae_model.sim import depth_camera as dc

    mesh = load_object(args.object)
    cam = FakeDepthCamera(mesh, distance=args.distance, azimuth_deg=30.0, elevation_deg=35.0,
                          intrinsics=dc.CameraIntrinsics(), noise=0.0, table=False)
    mesh_cam = mesh.copy()
    mesh_cam.apply_transform(np.linalg.inv(cam.cam_to_world))
    quality = quick_quality(vertices, hand, mesh_cam) if mesh_cam.is_watertight else {}

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


# ------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dvqvae-grasp", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="grasps for one object (mesh, cloud or sample name), no ROS")
    g.add_argument("--object", required=True, help="mesh file, point-cloud file (.npy/.xyz/.pcd/.ply) or mug|box|bottle|ball")
    g.add_argument("--num-grasps", type=int, default=8)
    g.add_argument("--out", required=True)
    g.add_argument("--partial-view", action="store_true", help="use one simulated depth view of the mesh")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--model", default="default", help="checkpoint directory or 'default'")
    g.add_argument("--hand", default="standin", help="'standin' or path to MANO_RIGHT.pkl")
    g.add_argument("--no-quality", action="store_true", help="skip the contact/penetration/simulation numbers")
    g.set_defaults(func=cmd_generate)
    d = sub.add_parser("demo", help="fake depth camera -> grasp node over DDS -> files, picture, latency, quality")
    d.add_argument("--object", default="mug")
    d.add_argument("--num-grasps", type=int, default=8)
    d.add_argument("--out", default="demo_out")
    d.add_argument("--model", default="default")
    d.add_argument("--hand", default="standin")
    d.add_argument("--rounds", type=int, default=6, help="complete grasp sets to collect")
    d.add_argument("--rate", type=float, default=2.0, help="camera rate (Hz)")
    d.add_argument("--distance", type=float, default=0.5)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--timeout", type=float, default=45.0)
    d.add_argument("--domain-id", type=int, default=42)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "num_grasps", 1) < 1:
        raise SystemExit("error: --num-grasps must be >= 1")
    try:
        return int(args.func(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
