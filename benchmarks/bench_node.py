"""End-to-end latency of the ROS 2 node per inference backend: PointCloud2 in -> grasps/wrist_poses out.

    python benchmarks/bench_node.py [--quick] [--clouds 20] [--grasps 16] [--backends eager,torchscript,onnx]

One ``grasp_generator`` node per backend runs in this process (each in its own namespace, all on
one executor), fed by a peer node over DDS (localhost). Clouds are sent round robin, one at a time:
each waits for its result, so the numbers are per-cloud latencies without queueing. Latency =
publish of a 20k-point segmented cloud -> receipt of the wrist poses carrying its header stamp
(decode, preprocessing, inference, messages, DDS both ways). The node's own inference p50 comes
from its diagnostics. Compact DVQ-VAE with untrained weights (timing only), markers off (no
subscriber: the node skips the meshes).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

import rclpy  # noqa: E402
from geometry_msgs.msg import PoseArray  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from bench_inference import build_generator, raw_cloud  # noqa: E402
from dvqvae_model.hand_model import load_hand_model  # noqa: E402
from dvqvae_ros.grasp_node import GraspGeneratorNode  # noqa: E402
from dvqvae_ros.point_cloud import create_cloud_xyz32  # noqa: E402


class _Spinner:
    def __init__(self, ctx: Context, nodes: list[Node]) -> None:
        self.ctx, self.nodes = ctx, nodes
        self.executor = MultiThreadedExecutor(num_threads=4, context=ctx)
        for n in nodes:
            self.executor.add_node(n)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while not self.stop.is_set() and self.ctx.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5.0)
        time.sleep(0.1)
        self.executor.shutdown(timeout_sec=2.0)
        for n in self.nodes:
            n.destroy_node()


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    backends = args.backends.split(",")
    cache_dir = args.cache_dir
    hand = load_hand_model("standin")
    ctx = Context()
    rclpy.init(context=ctx, domain_id=args.domain_id)
    nodes: dict[str, GraspGeneratorNode] = {}
    received: dict[str, dict[tuple[int, int], float]] = {b: {} for b in backends}
    peer = Node(f"bench_peer_{uuid.uuid4().hex[:6]}", context=ctx)
    pubs = {}
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    try:
        for b in backends:
            overrides = [Parameter("model", value="unused"), Parameter("num_grasps", value=int(args.grasps)),
                         Parameter("max_rate_hz", value=0.0), Parameter("qos", value="reliable"),
                         Parameter("points_per_object", value=int(args.num_points))]
            t = time.perf_counter()
            nodes[b] = GraspGeneratorNode(
                context=ctx, namespace=f"/bench_{b}", parameter_overrides=overrides,
                generator_factory=lambda p, b=b: build_generator("dvqvae", args.num_points, b, cache_dir, hand=hand))
            print(f"# node with backend {b}: up in {time.perf_counter() - t:.1f} s "
                  f"({nodes[b].generator.backend.describe().get('backend')})")

            def on_wrists(msg: PoseArray, b: str = b) -> None:
                received[b][(msg.header.stamp.sec, msg.header.stamp.nanosec)] = time.perf_counter()

            peer.create_subscription(PoseArray, f"/bench_{b}/grasps/wrist_poses", on_wrists, reliable)
            pubs[b] = peer.create_publisher(PointCloud2, f"/bench_{b}/points", reliable)
        spinner = _Spinner(ctx, [peer, *nodes.values()])
        deadline = time.time() + 10
        while time.time() < deadline and not all(p.get_subscription_count() >= 1 for p in pubs.values()):
            time.sleep(0.05)
        cloud = raw_cloud(20000).astype(np.float32)
        latency: dict[str, list[float]] = {b: [] for b in backends}
        for i in range(args.clouds + args.warmup):
            for b in backends:
                hdr = Header(frame_id="camera_depth_optical_frame")
                hdr.stamp.sec, hdr.stamp.nanosec = 1000 + i, backends.index(b)
                msg = create_cloud_xyz32(hdr, cloud)
                key = (hdr.stamp.sec, hdr.stamp.nanosec)
                t0 = time.perf_counter()
                pubs[b].publish(msg)
                end = time.time() + 30
                while key not in received[b] and time.time() < end:
                    time.sleep(0.0005)
                if key not in received[b]:
                    raise RuntimeError(f"no grasps from the {b} node within 30 s")
                if i >= args.warmup:
                    latency[b].append((received[b][key] - t0) * 1e3)
        snaps = {b: dict(nodes[b].diagnostics_snapshot().values) for b in backends}
        spinner.close()
        print()
        print(f"{'backend':<12} {'p50 ms':>8} {'p95 ms':>8} {'node inference p50':>19}  (K={args.grasps}, "
              f"{args.clouds} clouds of 20k points, N={args.num_points})")
        out = {}
        for b in backends:
            snap = snaps[b]
            p50, p95 = np.percentile(latency[b], 50), np.percentile(latency[b], 95)
            print(f"{b:<12} {p50:8.1f} {p95:8.1f} {float(snap['inference_p50_ms']):17.1f} ms")
            out[b] = {"latency_p50_ms": float(p50), "latency_p95_ms": float(p95),
                      "inference_p50_ms": float(snap["inference_p50_ms"]), "generations": snap["generations"]}
        return out
    finally:
        rclpy.try_shutdown(context=ctx)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--clouds", type=int, default=0, help="timed clouds per backend (default 20, quick 5)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--grasps", type=int, default=16)
    p.add_argument("--num-points", type=int, default=3000)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--backends", default="eager,torchscript,onnx")
    p.add_argument("--cache-dir", default="")
    p.add_argument("--domain-id", type=int, default=91)
    args = p.parse_args(argv)
    if args.clouds <= 0:
        args.clouds = 5 if args.quick else 20
    own_cache = not args.cache_dir
    if own_cache:
        args.cache_dir = tempfile.mkdtemp(prefix="dvqvae-bench-node-")
    try:
        run(args)
    finally:
        if own_cache:
            import shutil

            shutil.rmtree(args.cache_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
