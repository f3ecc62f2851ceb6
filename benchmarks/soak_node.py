"""A bounded soak of the grasp node: many clouds, good and bad mixed, at a high rate; does it leak or stall?

    python benchmarks/soak_node.py [--clouds 2000] [--rate 10] [--bad-every 5] [--quick]

The ``grasp_generator`` node runs as its own process (as in ``bench_node.py``, whose peer this reuses);
this process publishes ``--clouds`` clouds at ``--rate`` Hz, every ``--bad-every``-th one bad (cycling
through eight kinds: all NaN, too few points, a 2 mm speck, a 3 m wall, an empty frame_id, truncated
data, aliased x/y/z fields, no z field), and subscribes to every output including the meshes. It prints:

* the node's resident memory after the warm-up, every quarter of the run and at the end, and its growth
  (target < 50 MB);
* clouds sent (good / bad), good clouds answered (every stamped output received), dropped by the node
  for a newer cloud (its ``clouds_dropped``), bad clouds it counted (``bad_clouds``) and anything
  unaccounted for;
* end-to-end latency percentiles of the answered clouds (cloud published -> every output received).

The default rate is below the highest sustained rate ``bench_node.py`` measures for 3,000-point clouds
(21-30 Hz on two idle cores) so that the machine's other load, not the node, decides the drops.
"""
from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_node  # noqa: E402

TARGET_RSS_GROWTH_MB = 50.0
BAD_KINDS = ("all_nan", "too_few", "speck", "wall", "empty_frame", "truncated", "aliased", "no_z")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clouds", type=int, default=2000)
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--bad-every", type=int, default=5, help="every n-th cloud is bad (0 = none)")
    p.add_argument("--points", type=int, default=3000)
    p.add_argument("--grasps", type=int, default=8)
    p.add_argument("--backend", default="auto")
    p.add_argument("--model", default="default")
    p.add_argument("--domain-id", type=int, default=92)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--quick", action="store_true", help="200 clouds")
    args = p.parse_args(argv)
    if args.quick:
        args.clouds = 200
    if args.clouds < 1 or args.rate <= 0:
        p.error("--clouds must be >= 1 and --rate > 0")
    # what bench_node's node start-up and peer read
    args.no_markers, args.sizes = False, [args.points]
    return args


def bad_cloud(kind: str, seed: int) -> Any:
    from sensor_msgs.msg import PointField
    from std_msgs.msg import Header

    from dvqvae_ros.point_cloud import create_cloud, create_cloud_xyz32

    rng = np.random.default_rng(seed)
    hdr = Header(frame_id="camera_depth_optical_frame")
    good = bench_node.object_cloud(1000, seed=seed)
    if kind == "all_nan":
        return create_cloud_xyz32(hdr, np.full((500, 3), np.nan, np.float32))
    if kind == "too_few":
        return create_cloud_xyz32(hdr, good[:20])
    if kind == "speck":
        return create_cloud_xyz32(hdr, (0.5 + 0.002 * rng.random((500, 3))).astype(np.float32))
    if kind == "wall":
        wall = np.column_stack([rng.uniform(-1.5, 1.5, 2000), rng.uniform(-1, 1, 2000), np.full(2000, 2.0)])
        return create_cloud_xyz32(hdr, wall.astype(np.float32))
    if kind == "empty_frame":
        return create_cloud_xyz32(Header(frame_id=""), good)
    if kind == "truncated":
        msg = create_cloud_xyz32(hdr, good)
        msg.data = msg.data[:-7]
        return msg
    if kind == "aliased":
        fields = [PointField(name=c, offset=o, datatype=PointField.FLOAT32, count=1)
                  for c, o in (("x", 0), ("y", 2), ("z", 4))]
        msg = create_cloud(hdr, fields, np.zeros((0, 3), np.float32))
        msg.width, msg.point_step, msg.row_step = 500, 8, 4000
        msg.data = good.tobytes()[:4000]
        return msg
    fields = [PointField(name=c, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, c in enumerate("xy")]
    return create_cloud(hdr, fields, good[:, :2])


def main(argv: Optional[Sequence[str]] = None) -> int:
    import tempfile

    import rclpy
    from rclpy.context import Context

    args = parse_args(argv)
    good_msgs = bench_node._clouds(args.points, 8)
    bad_msgs = [bad_cloud(kind, i) for i, kind in enumerate(BAD_KINDS)]
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dvqvae-soak-") as tmp:
        from dvqvae_model.checkpoint import DEFAULT_MODEL_DIR

        model = (Path(args.model) if args.model != "default" else
                 DEFAULT_MODEL_DIR if DEFAULT_MODEL_DIR.is_dir() else bench_node.untrained_checkpoint(Path(tmp)))
        ns = f"/soak_{uuid.uuid4().hex[:6]}"
        proc = bench_node._start_node(args, model, ns)
        ctx = Context()
        rclpy.init(context=ctx, domain_id=args.domain_id)
        peer: Optional[bench_node._Peer] = None
        try:
            peer = bench_node._Peer(ctx, ns, markers=True)
            peer.wait_ready(args.timeout, proc)
            warm = bench_node._send(peer, good_msgs[:3], 2.0, 1, settle_s=10.0)
            if not warm.latencies_ms:
                raise RuntimeError("no grasps for the warm-up clouds")
            time.sleep(1.0)
            base = bench_node.proc_memory_mb(proc.pid)["VmRSS"]
            base_diag = peer.diagnostics_after(time.perf_counter())
            rss = [(0, base)]
            sent_good: list[tuple[tuple[int, int], float]] = []
            n_bad = 0
            period = 1.0 / args.rate
            start = time.perf_counter()
            for i in range(args.clouds):
                due = start + i * period
                while (left := due - time.perf_counter()) > 0:
                    time.sleep(min(left, 0.002))
                if args.bad_every and i % args.bad_every == args.bad_every - 1:
                    peer.pub.publish(bad_msgs[n_bad % len(bad_msgs)])
                    n_bad += 1
                else:
                    msg = good_msgs[i % len(good_msgs)]
                    msg.header.stamp.sec, msg.header.stamp.nanosec = 5, i
                    t0 = time.perf_counter()
                    peer.pub.publish(msg)
                    sent_good.append(((5, i), t0))
                if (i + 1) % max(1, args.clouds // 4) == 0:
                    rss.append((i + 1, bench_node.proc_memory_mb(proc.pid)["VmRSS"]))
            deadline = time.perf_counter() + 10.0
            while time.perf_counter() < deadline and any(peer.complete(s) is None for s, _ in sent_good[-2:]):
                time.sleep(0.01)
            time.sleep(1.5)
            diag = peer.diagnostics_after(time.perf_counter())
            end_rss = bench_node.proc_memory_mb(proc.pid)
            elapsed = time.perf_counter() - start
        finally:
            if peer is not None:
                peer.close()
            rclpy.try_shutdown(context=ctx)
            proc.terminate()
            proc.wait(timeout=20)
    lat = [1e3 * (peer.complete(s) - t0) for s, t0 in sent_good if peer.complete(s) is not None]

    def count(d: dict, key: str) -> int:
        try:
            return int(d.get(key, 0))
        except ValueError:
            return 0

    dropped = count(diag, "clouds_dropped") - count(base_diag, "clouds_dropped")
    bad_seen = count(diag, "bad_clouds") - count(base_diag, "bad_clouds")
    received = count(diag, "clouds_received") - count(base_diag, "clouds_received")
    skipped = count(diag, "clouds_skipped") - count(base_diag, "clouds_skipped")
    # the node counts clouds that never reached it (sequence gaps) without knowing good from bad:
    # the bad ones among them are the bad clouds it did not see
    skipped_good = skipped - (n_bad - bad_seen)
    unaccounted = len(sent_good) - len(lat) - dropped - skipped_good
    growth = end_rss["VmRSS"] - base
    print(f"soak: {args.clouds} clouds ({len(sent_good)} good, {n_bad} bad) of {args.points} points at "
          f"{args.rate:g} Hz in {elapsed:.0f} s, K={args.grasps}, backend {diag.get('backend', '?')}")
    print(f"  node received {received}, counted {skipped} as never reaching it (clouds_skipped); good: answered "
          f"{len(lat)}, dropped for a newer cloud {dropped}, unaccounted {unaccounted}; bad counted {bad_seen} of "
          f"{n_bad}; generation errors "
          f"{count(diag, 'generation_errors') - count(base_diag, 'generation_errors')}")
    if lat:
        p = np.percentile(lat, [50, 95, 99])
        print(f"  end-to-end latency (every output): p50 {p[0]:.1f} ms, p95 {p[1]:.1f} ms, p99 {p[2]:.1f} ms, "
              f"max {max(lat):.1f} ms")
    print("  node RSS (MB): " + ", ".join(f"{n} clouds {m:.0f}" for n, m in rss) + f"; end {end_rss['VmRSS']:.0f} "
          f"(peak {end_rss['VmHWM']:.0f})")
    ok = growth < TARGET_RSS_GROWTH_MB
    print(f"  [{'PASS' if ok else 'MISS'}] RSS growth < {TARGET_RSS_GROWTH_MB:.0f} MB: {growth:+.1f} MB")
    ok_bad = unaccounted == 0 and received + skipped == args.clouds and skipped_good >= 0
    print(f"  [{'PASS' if ok_bad else 'MISS'}] every cloud accounted for: received or counted as skipped; "
          "every good one received answered or counted as dropped")
    import os

    print(f"# load average {os.getloadavg()[0]:.2f}; soak took {time.perf_counter() - t_start:.0f} s")
    return 0 if ok and ok_bad else 1


if __name__ == "__main__":
    sys.exit(main())
