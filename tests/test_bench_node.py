"""benchmarks/bench_node.py: argument defaults, the sustained-rate rule, marker stamps, one short run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from std_msgs.msg import Header

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_node  # noqa: E402

from dvqvae_ros import messages  # noqa: E402
from ros_helpers import domain  # noqa: E402


def test_quick_and_full_defaults() -> None:
    quick = bench_node.parse_args(["--quick"])
    assert quick.sizes == [3000] and quick.clouds == 16 and quick.ramp_clouds == 12
    full = bench_node.parse_args([])
    assert full.sizes == [3000, 20000] and full.clouds == 40 and full.backend == "eager"
    assert bench_node.parse_args(["--cloud-points", "500,1000", "--clouds", "3"]).sizes == [500, 1000]
    with pytest.raises(SystemExit):
        bench_node.parse_args(["--rate", "0"])


def test_latency_growth_rule() -> None:
    assert not bench_node.latency_grows([30.0] * 12)
    assert not bench_node.latency_grows([30, 32, 29, 31, 30, 33, 30, 31, 34])  # jitter is not growth
    assert bench_node.latency_grows([30, 31, 30, 60, 90, 120, 150, 180, 210])  # a queue builds up
    step = bench_node._Step(10.0, latencies_ms=[30.0] * 9)
    assert step.sustained
    step.missing = 1
    assert not step.sustained


def test_marker_stamp_from_serialized_markers() -> None:
    verts = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
    raw = messages.serialized_grasp_markers(Header(frame_id="cam", stamp=Time(sec=123, nanosec=456)), verts,
                                            np.array([[0, 1, 2], [2, 3, 4]]), verts[:, :3])
    assert bench_node.marker_stamp(raw) == (123, 456)


def test_object_cloud_is_a_visible_half() -> None:
    cloud = bench_node.object_cloud(3000)
    assert cloud.shape == (3000, 3) and cloud.dtype == np.float32
    assert cloud[:, 2].max() < 0.7 + 0.005  # only the camera-facing side (z towards the camera)


def test_short_run(tmp_path) -> None:
    """One node process, six clouds at 5 Hz while two busy processes load the two cores: however slow the
    node gets, every cloud is answered or counted as dropped by the node (newest wins), none vanishes;
    stage split and memory are filled in. No wall-clock assertion: the accounting holds at any speed."""
    args = bench_node.parse_args(["--quick", "--clouds", "6", "--rate", "5", "--domain-id", str(domain(93))])
    model = bench_node.untrained_checkpoint(tmp_path)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        result = bench_node.run_size(args, model, 1000, ramp=False)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    fixed = result["fixed"]
    assert len(fixed.latencies_ms) >= 1 and len(fixed.latencies_ms) + fixed.missing == 6
    assert int(result["clouds_dropped"]) == fixed.missing + result["warm_up_missing"], result
    assert len(fixed.light_ms) == len(fixed.latencies_ms)
    assert result["stages"]["model"] > 0 and result["overhead_p50_ms"] > 0
    assert 50 < result["memory_mb"]["VmHWM"] < 4096
