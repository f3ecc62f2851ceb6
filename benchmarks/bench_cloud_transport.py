"""Do large PointCloud2 messages arrive? Delivery and latency by cloud size, QoS and Fast DDS transport.

    python benchmarks/bench_cloud_transport.py [--quick] [--clouds 8] [--rate 2]

A depth camera at 1280 x 720 publishes an organized cloud of 921,600 points (x, y, z, rgb: 16 bytes
a point, 14.7 MB) whose non-object pixels are NaN; merged or high-resolution sensors reach 2-5 M
points. Over DDS such a sample is cut into ~64 kB UDP fragments; with best-effort QoS one lost
fragment loses the whole sample, silently. This benchmark publishes ``--clouds`` clouds of each
size at ``--rate`` Hz from one process to a subscriber in another (as camera driver and grasp node
are), for each combination of

* QoS of the publisher / subscriber: best effort (the node's old ``qos: sensor_data`` default) or
  reliable (``qos: reliable``);
* Fast DDS transport: the default (UDP + a small shared-memory segment) or
  ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`` (shared memory and TCP for big samples), set in both
  processes;

and prints clouds received / sent and the p50 latency (published -> received and decoded into numpy
by ``read_xyz``). Every subscriber process also records the subscription's message-lost and
incompatible-QoS events (what the node warns about). Loopback only, a private domain id.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SIZES = {"640x480": (480, 640), "1280x720": (720, 1280), "2M": (1, 2_000_000), "5M": (1, 5_000_000)}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1280x720 only, 4 clouds per case")
    p.add_argument("--sizes", default="640x480,1280x720,2M,5M", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--clouds", type=int, default=8)
    p.add_argument("--rate", type=float, default=2.0)
    p.add_argument("--domain-id", type=int, default=61)
    p.add_argument("--role", choices=("pub", "sub"), help=argparse.SUPPRESS)
    p.add_argument("--qos", choices=("best_effort", "reliable"), help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--topic", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.clouds = "1280x720", 4
    return args


def organized_cloud(height: int, width: int, seed: int = 0) -> Any:
    """x, y, z, rgb FLOAT32 at 0/4/8/12; an object (a quarter of the image) in front of NaN background."""
    from sensor_msgs.msg import PointField
    from std_msgs.msg import Header

    from dvqvae_ros.point_cloud import create_cloud

    rng = np.random.default_rng(seed)
    n = height * width
    pts = np.full((n, 4), np.nan, np.float32)
    obj = rng.random(n) < 0.25
    pts[obj, :3] = rng.normal([0.0, 0.0, 0.5], 0.03, size=(int(obj.sum()), 3))
    pts[:, 3] = 0.0
    fields = [PointField(name=c, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, c in enumerate(
        ("x", "y", "z", "rgb"))]
    shape = (height, width, 4) if height > 1 else (n, 4)
    return create_cloud(Header(frame_id="camera_depth_optical_frame"), fields, pts.reshape(shape))


def _qos(kind: str) -> Any:
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    if kind == "best_effort":
        return qos_profile_sensor_data
    return QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)


def run_pub(args: argparse.Namespace) -> int:
    import rclpy
    from sensor_msgs.msg import PointCloud2

    rclpy.init(domain_id=args.domain_id)
    node = rclpy.create_node("bench_cloud_pub")
    pub = node.create_publisher(PointCloud2, args.topic, _qos(args.qos))
    msg = organized_cloud(*SIZES[args.size])
    deadline = time.monotonic() + 20.0
    while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    for i in range(args.clouds):
        t = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = t // 1_000_000_000, t % 1_000_000_000
        pub.publish(msg)
        time.sleep(1.0 / args.rate)
    time.sleep(1.0)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def run_sub(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.event_handler import SubscriptionEventCallbacks
    from sensor_msgs.msg import PointCloud2

    from dvqvae_ros.point_cloud import read_xyz

    rclpy.init(domain_id=args.domain_id)
    node = rclpy.create_node("bench_cloud_sub")
    latencies: list[float] = []
    events = {"lost": 0, "incompatible": 0}

    def on_cloud(msg: Any) -> None:
        read_xyz(msg)
        sent = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        latencies.append((time.time_ns() - sent) / 1e6)

    def lost(info: Any) -> None:
        events["lost"] = int(info.total_count)

    def incompatible(info: Any) -> None:
        events["incompatible"] = int(info.total_count)

    node.create_subscription(PointCloud2, args.topic, on_cloud, _qos(args.qos),
                             event_callbacks=SubscriptionEventCallbacks(message_lost=lost,
                                                                        incompatible_qos=incompatible))
    end = time.monotonic() + 22.0 + args.clouds / args.rate
    while time.monotonic() < end:
        rclpy.spin_once(node, timeout_sec=0.1)
        if len(latencies) >= args.clouds:
            break
    print(json.dumps({"received": len(latencies), "latencies_ms": latencies, **events}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def run_case(args: argparse.Namespace, size: str, pub_qos: str, sub_qos: str, transport: str) -> dict[str, Any]:
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    env.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
    if transport != "default":
        env["FASTDDS_BUILTIN_TRANSPORTS"] = transport
    topic = f"/bench_cloud_{os.getpid()}_{time.monotonic_ns() % 1_000_000}"
    common = [sys.executable, __file__, "--domain-id", str(args.domain_id), "--size", size, "--topic", topic,
              "--clouds", str(args.clouds), "--rate", str(args.rate)]
    sub = subprocess.Popen(common + ["--role", "sub", "--qos", sub_qos], env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    pub = subprocess.Popen(common + ["--role", "pub", "--qos", pub_qos], env=env)
    try:
        out, _ = sub.communicate(timeout=60 + args.clouds / args.rate)
    except subprocess.TimeoutExpired:
        sub.kill()
        out = ""
    pub.wait(timeout=30)
    try:
        result = json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"received": 0, "latencies_ms": [], "lost": -1, "incompatible": -1}
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.role == "pub":
        return run_pub(args)
    if args.role == "sub":
        return run_sub(args)
    cases = [("best_effort", "best_effort", "default"), ("reliable", "best_effort", "default"),
             ("reliable", "reliable", "default"), ("best_effort", "reliable", "default"),
             ("best_effort", "best_effort", "LARGE_DATA"), ("reliable", "reliable", "LARGE_DATA")]
    print(f"{args.clouds} clouds per case at {args.rate:g} Hz, publisher and subscriber in two processes")
    print(f"  {'cloud':>9} {'MB':>6} {'publisher':>11} {'subscriber':>11} {'transport':>10} "
          f"{'received':>9} {'p50 ms':>8} {'lost ev.':>8} {'incompat.':>9}")
    for size in args.sizes.split(","):
        h, w = SIZES[size]
        mb = h * w * 16 / 1e6
        for pub_qos, sub_qos, transport in cases:
            r = run_case(args, size, pub_qos, sub_qos, transport)
            lat = r["latencies_ms"]
            p50 = f"{np.percentile(lat, 50):8.0f}" if lat else f"{'-':>8}"
            print(f"  {size:>9} {mb:6.1f} {pub_qos:>11} {sub_qos:>11} {transport:>10} "
                  f"{r['received']:>4}/{args.clouds:<4} {p50} {r['lost']:>8} {r['incompatible']:>9}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
