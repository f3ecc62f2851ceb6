"""`dvqvae-grasp generate` and `dvqvae-grasp demo`: the files and numbers a user gets."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dvqvae_model.checkpoint import save_checkpoint
from dvqvae_model.nets.config import preset
from dvqvae_model.nets.dvqvae import DVQVAE
from dvqvae_model.hand.hand_model import load_hand_model
from dvqvae_model.nets.prior import GatedPixelCNNPrior
from dvqvae_ros import grasp_cli
from ros_helpers import domain


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    hand = load_hand_model("standin")
    m, p, _ = preset("compact")
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "dvqvae", DVQVAE(m, hand), GatedPixelCNNPrior(p),
                           kind="dvqvae", model_config=m, prior_config=p, hand_fingerprint=hand.fingerprint,
                           data_info={"note": "untrained, plumbing test"})


def _check_outputs(out: Path, k: int) -> dict[str, np.ndarray]:
    with np.load(out / "grasps.npz", allow_pickle=False) as z:
        data = {key: z[key] for key in z.files}
    assert data["vertices"].shape == (k, 778, 3) and data["vertices"].dtype == np.float32
    assert data["mano"].shape == (k, 61)
    assert data["keypoints"].shape == (k, 21, 3)
    assert data["scores"].shape == (k,) and np.all(np.diff(data["scores"]) <= 0)
    assert data["score_terms"].shape == (k, 8)
    assert list(data["score_term_names"]) == ["prior", "penetration", "contact", "closure", "digits", "stability",
                                              "penetration_est", "displacement_est"]
    assert data["faces"].shape[1] == 3 and data["sealed_faces"].shape[1] == 3
    assert sorted(p.name for p in out.glob("grasp_*.ply")) == [f"grasp_{i:02d}.ply" for i in range(k)]
    assert (out / "object_points.ply").stat().st_size > 0
    assert (out / "grasps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "viewer.html").read_text()
    assert "Plotly.newPlot" in html and "<script src=" not in html  # plotly.js inlined: works offline
    return data


def test_generate_from_mesh_in_object_frame(tmp_path: Path, checkpoint: Path, capsys) -> None:
    import trimesh

    mesh = trimesh.creation.box(extents=(0.06, 0.08, 0.12))
    mesh.apply_translation([0.3, -0.2, 0.1])  # an object far from the origin: grasps must follow it
    path = tmp_path / "box.stl"
    mesh.export(path)
    out = tmp_path / "out"
    rc = grasp_cli.main(["generate", "--object", str(path), "--num-grasps", "3", "--out", str(out),
                         "--model", str(checkpoint), "--seed", "1", "--no-quality"])
    assert rc == 0
    data = _check_outputs(out, 3)
    # load_object centres meshes: the cloud (and so the hands) live around the object's own centre.
    centre = data["vertices"].reshape(-1, 3).mean(0)
    assert np.linalg.norm(centre) < 0.3
    printed = capsys.readouterr().out
    assert "3 grasps" in printed and " nan ms" not in printed


def test_generate_from_cloud_file_and_partial_view(tmp_path: Path, checkpoint: Path) -> None:
    rng = np.random.default_rng(0)
    cloud = rng.normal(size=(500, 3)).astype(np.float32)
    cloud = 0.04 * cloud / np.linalg.norm(cloud, axis=1, keepdims=True) + np.array([1.0, 2.0, 0.5], np.float32)
    np.save(tmp_path / "ball.npy", cloud)
    out = tmp_path / "cloud_out"
    assert grasp_cli.main(["generate", "--object", str(tmp_path / "ball.npy"), "--num-grasps", "2", "--out",
                           str(out), "--model", str(checkpoint)]) == 0
    data = _check_outputs(out, 2)
    # The input frame is kept: hands are generated around the cloud, 2 m away from the origin.
    assert np.linalg.norm(data["vertices"].reshape(-1, 3).mean(0) - cloud.mean(0)) < 0.25
    out2 = tmp_path / "partial"
    assert grasp_cli.main(["generate", "--object", "mug", "--partial-view", "--num-grasps", "2", "--out", str(out2),
                           "--model", str(checkpoint), "--no-quality"]) == 0
    data = _check_outputs(out2, 2)
    import trimesh

    from dvqvae_model.sim.sample_objects import load_object

    # One depth view, back in the object's frame: on the mug's surface, but only the side the camera saw.
    seen = np.asarray(trimesh.load(out2 / "object_points.ply").vertices)
    mesh = load_object("mug")
    surface, _ = trimesh.sample.sample_surface(mesh, 4000, seed=0)
    _, dist_to_mesh, _ = trimesh.proximity.closest_point(mesh, seen[::10])
    assert np.median(dist_to_mesh) < 0.005, "the partial view must lie on the object in its own frame"
    from scipy.spatial import cKDTree

    covered = (cKDTree(seen).query(surface)[0] < 0.005).mean()
    assert 0.05 < covered < 0.8, f"a single view covers part of the surface, not all of it ({covered:.2f})"
    assert np.linalg.norm(data["vertices"].reshape(-1, 3).mean(0) - seen.mean(0)) < 0.25


def test_generate_reports_bad_input(tmp_path: Path, checkpoint: Path, capsys) -> None:
    np.save(tmp_path / "tiny.npy", np.zeros((10, 3), np.float32))
    rc = grasp_cli.main(["generate", "--object", str(tmp_path / "tiny.npy"), "--out", str(tmp_path / "o"),
                         "--model", str(checkpoint)])
    assert rc == 2 and "64" in capsys.readouterr().err
    rc = grasp_cli.main(["generate", "--object", str(tmp_path / "missing.obj"), "--out", str(tmp_path / "o"),
                         "--model", str(checkpoint)])
    assert rc == 2 and "missing.obj" in capsys.readouterr().err
    rc = grasp_cli.main(["generate", "--object", "mug", "--out", str(tmp_path / "o"), "--model", str(tmp_path / "nope")])
    assert rc == 2 and "not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse: usage error, exit 2, names the flag
        grasp_cli.main(["generate", "--object", "mug", "--out", str(tmp_path / "o"), "--gravity", "0", "nan", "1"])
    assert exit_info.value.code == 2 and "--gravity" in capsys.readouterr().err


def test_generate_runs_without_importing_ros(tmp_path: Path, checkpoint: Path) -> None:
    """`generate` is documented as "without ROS": a whole run loads no ROS module."""
    out = tmp_path / "out"
    code = ("import sys\n"
            "from dvqvae_ros import grasp_cli\n"
            f"rc = grasp_cli.main(['generate', '--object', 'mug', '--num-grasps', '2', '--out', {str(out)!r},\n"
            f"                     '--model', {str(checkpoint)!r}, '--no-quality'])\n"
            "ros = sorted(m for m in sys.modules if m.split('.')[0] == 'rclpy' or m.split('.')[0].endswith('_msgs'))\n"
            "print('ROS:', ros)\n"
            "sys.exit(rc)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ROS: []" in res.stdout, res.stdout
    _check_outputs(out, 2)


def test_demo_runs_camera_and_node_over_dds(tmp_path: Path, checkpoint: Path) -> None:
    """The whole product: two processes over DDS, a third listening; files, table and quality numbers."""
    out = tmp_path / "demo"
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(domain(87)))
    res = subprocess.run([sys.executable, "-m", "dvqvae_ros.grasp_cli", "demo", "--model", str(checkpoint),
                          "--out", str(out), "--rounds", "2", "--num-grasps", "4", "--timeout", "60"],
                         env=env, capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    for needle in ("end-to-end latency", "p50", "contact ratio", "penetration volume", "simulation displacement"):
        assert needle in res.stdout
    import re

    # camera (mug + 2 more objects on a table) -> object_segmenter -> grasp node: the right object, well cut
    assert "object_segmenter (depth_image)" in res.stdout
    iou = float(re.search(r"segmentation IoU\s+mean ([0-9.]+)", res.stdout).group(1))
    assert iou >= 0.9, res.stdout
    err_mm = float(re.search(r"reproduces published keypoints to ([0-9.]+) mm", res.stdout).group(1))
    assert err_mm < 0.01  # the MANO array and the keypoints describe the same hands
    data = _check_outputs(out, 4)
    # real scores from grasps/scores (the node's defaults rank): not ranks, and every term present
    assert np.isfinite(data["score_terms"]).all() and not np.array_equal(data["scores"], [4.0, 3.0, 2.0, 1.0])
    # The demo's hands are rebuilt from the published MANO parameters; they sit at the camera's object
    # (the fake camera's cloud, ~0.5 m in front of it), not at the camera's origin.
    import trimesh

    cloud = np.asarray(trimesh.load(out / "object_points.ply").vertices)
    assert np.isfinite(data["vertices"]).all() and 0.3 < np.median(cloud[:, 2]) < 0.7
    hand_centres = data["vertices"].mean(axis=1)
    assert np.all(np.linalg.norm(hand_centres - cloud.mean(0), axis=1) < 0.3), hand_centres
    assert (out / "logs" / "grasp_generator.log").exists()


# ------------------------------------------------------------------ failures: one line, non-zero, nothing half-written
def _run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvqvae_ros.grasp_cli", *args], capture_output=True, text=True,
                          timeout=180, **kwargs)


def _one_line_error(res: subprocess.CompletedProcess, needle: str) -> None:
    assert res.returncode != 0, res.stdout
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("[")]  # rclpy log lines
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], res.stderr


def test_generate_failures_are_one_line_errors(tmp_path: Path, checkpoint: Path) -> None:
    evil_hand = tmp_path / "MANO_RIGHT.pkl"
    marker = tmp_path / "pwned"
    evil_hand.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "ball.npy", 0.04 * np.random.default_rng(0).normal(size=(600, 3)).astype(np.float32))
    edited = tmp_path / "edited"
    import shutil

    shutil.copytree(checkpoint, edited)
    (edited / "model.safetensors").write_bytes((edited / "model.safetensors").read_bytes()[:-10] + b"0" * 10)
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    base = ["generate", "--model", str(checkpoint), "--no-quality"]
    cases = [
        (["--object", "mug", "--out", str(tmp_path / "o1"), "--hand", str(evil_hand)], 2, "refusing to load global"),
        (["--object", str(tmp_path / "empty.npy"), "--out", str(tmp_path / "o2")], 2, "empty.npy"),
        (["--object", "mug", "--out", str(a_file)], 2, "is not a folder"),
        (["--object", "mug", "--out", "/sys/dvqvae_out"], 2, "cannot write"),
        (["--object", "mug", "--out", str(tmp_path / "o3"), "--model", str(edited)], 2, "corrupted"),
    ]
    for extra, code, needle in cases:
        res = _run_cli(base + extra)
        _one_line_error(res, needle)
        assert res.returncode == code, (extra, res.stderr)
    assert not marker.exists(), "the malicious pickle must never run"
    assert a_file.read_text() == "not a folder"
    from dvqvae_ros.parameters import MAX_GRASPS

    assert grasp_cli.MAX_GRASPS == MAX_GRASPS == 256, "the command and the node share one bound"
    for bound in ("0", "257", "100000"):
        res = _run_cli(base + ["--object", "mug", "--out", str(tmp_path / "o4"), "--num-grasps", bound])
        assert res.returncode == 2 and "Traceback" not in res.stderr and "[1, 256]" in res.stderr, res.stderr
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5)), "a failed run must leave no output folder"


@pytest.mark.parametrize("fault", [MemoryError(), RuntimeError(
    "[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: not enough memory: you tried to allocate "
    "5368709120 bytes.\nmore detail")])
def test_allocation_failure_is_one_line(tmp_path: Path, checkpoint: Path, capsys, monkeypatch, fault) -> None:
    """An allocation failure inside generation (injected: a real one kills the test process first) is one line."""
    from dvqvae_model.pipeline.generator import GraspGenerator

    def fail(*args, **kwargs):
        raise fault

    monkeypatch.setattr(GraspGenerator, "generate", fail)
    rc = grasp_cli.main(["generate", "--object", "mug", "--out", str(tmp_path / "o"), "--model", str(checkpoint)])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: out of memory") and not (tmp_path / "o").exists()


def _limit_file_size(limit: int):
    import resource
    import signal

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG, like a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_leaves_nothing_half_written(tmp_path: Path, checkpoint: Path) -> None:
    """viewer.html (~4 MB, plotly inlined) cannot be written past a 1 MB file limit: no file of the set appears."""
    out = tmp_path / "full"
    res = _run_cli(["generate", "--object", "mug", "--out", str(out), "--model", str(checkpoint), "--no-quality",
                    "--num-grasps", "2"], preexec_fn=_limit_file_size(1 << 20))
    _one_line_error(res, "no partial output")
    assert res.returncode == 1
    assert not out.exists() and not list(tmp_path.glob(".full.tmp-*")), list(tmp_path.iterdir())
    # an existing folder with an earlier result keeps that result whole
    out.mkdir()
    (out / "grasps.npz").write_bytes(b"earlier result")
    res = _run_cli(["generate", "--object", "mug", "--out", str(out), "--model", str(checkpoint), "--no-quality",
                    "--num-grasps", "2"], preexec_fn=_limit_file_size(1 << 20))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["grasps.npz"] and (out / "grasps.npz").read_bytes() == b"earlier result"


def test_existing_output_folder_is_replaced_whole(tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "again"
    base = ["generate", "--object", "mug", "--out", str(out), "--model", str(checkpoint), "--no-quality"]
    assert grasp_cli.main(base + ["--num-grasps", "4"]) == 0
    (out / "notes.txt").write_text("mine")
    assert grasp_cli.main(base + ["--num-grasps", "2"]) == 0
    _check_outputs(out, 2)  # grasp_02/03.ply of the first run are gone: the set is the new one
    assert (out / "notes.txt").read_text() == "mine" and not list(out.glob(".*"))


def test_generate_uses_the_node_defaults_and_writes_real_scores(tmp_path: Path, checkpoint: Path) -> None:
    """One source of defaults: the CLI ranks (and refines) like the node; the npz carries the real scores."""
    from dvqvae_model.pipeline.defaults import DEFAULTS
    from dvqvae_model.pipeline.generator import GraspGenerator

    args = grasp_cli.build_parser().parse_args(["generate", "--object", "mug", "--out", str(tmp_path)])
    opts = grasp_cli.generation_options(args)
    node_opts = DEFAULTS.generator_options()
    assert args.num_grasps == DEFAULTS.num_grasps
    same = ("candidates", "ranking", "refine", "gravity")
    assert {k: opts[k] for k in same} == {k: node_opts[k] for k in same}
    assert (opts["refine_config"].steps, opts["refine_config"].max_time_s) == (
        node_opts["refine_steps"], node_opts["refine_time_ms"] / 1000.0)
    raw = grasp_cli.generation_options(grasp_cli.build_parser().parse_args(
        ["generate", "--object", "mug", "--out", str(tmp_path), "--raw"]))
    assert raw["ranking"] is False and raw["refine"] is False

    cloud = np.random.default_rng(0).normal(size=(600, 3)).astype(np.float32)
    cloud = 0.04 * cloud / np.linalg.norm(cloud, axis=1, keepdims=True)
    np.save(tmp_path / "ball.npy", cloud)
    out = tmp_path / "o"
    assert grasp_cli.main(["generate", "--object", str(tmp_path / "ball.npy"), "--num-grasps", "3", "--candidates", "6",
                           "--no-refine", "--seed", "4", "--out", str(out), "--model", str(checkpoint)]) == 0
    data = _check_outputs(out, 3)
    gen = GraspGenerator.from_checkpoint(checkpoint, ranking=True, refine=False, gravity=DEFAULTS.gravity)
    expect = gen.generate(cloud, 3, seed=4, candidates=6)
    np.testing.assert_allclose(data["scores"], expect.scores, atol=1e-5)
    np.testing.assert_allclose(data["score_terms"][:, 1], expect.terms["penetration"], atol=1e-5)


def test_verify_drops_grasps_that_let_the_object_fall(tmp_path: Path, checkpoint: Path, capsys) -> None:
    """--verify keeps exactly the grasps that pass the synthesizer's physics acceptance."""
    from dvqvae_model.pipeline.generator import GraspGenerator
    from dvqvae_model.sim.sample_objects import load_object

    mesh = load_object("box")
    gen = GraspGenerator.from_checkpoint(checkpoint, ranking=True, refine=False)
    points = np.asarray(mesh.sample(2000), dtype=np.float32)
    gs = gen.generate(points, 3, seed=0, candidates=3)
    kept, disp = grasp_cli.verify_grasps(gs, gen.hand, mesh)
    holds = (disp[:, 0] < 2.0) & (disp[:, 1] < 2.0)
    assert len(kept) == int(holds.sum()) and disp.shape == (3, 2)
    np.testing.assert_array_equal(kept.params, gs.params[holds])
    # an untrained model's hands sit inside the object's centre: nothing there holds an object "grasp"
    # -- whatever the outcome, the CLI reports it and never writes grasps that failed
    out = tmp_path / "v"
    rc = grasp_cli.main(["generate", "--object", "box", "--num-grasps", "2", "--candidates", "2", "--no-refine",
                         "--verify", "--no-quality", "--out", str(out), "--model", str(checkpoint)])
    printed = capsys.readouterr()
    assert "--verify:" in printed.out
    if rc == 0:
        with np.load(out / "grasps.npz") as z:
            assert 1 <= len(z["mano"]) <= 2
    else:
        assert rc == 3 and "no grasp passed --verify" in printed.err and not (out / "grasps.npz").exists()


def test_verify_needs_a_mesh_and_pybullet(tmp_path: Path, checkpoint: Path, monkeypatch, capsys) -> None:
    np.save(tmp_path / "c.npy", np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32) * 0.03)
    rc = grasp_cli.main(["generate", "--object", str(tmp_path / "c.npy"), "--verify", "--out", str(tmp_path / "o"),
                         "--model", str(checkpoint)])
    assert rc == 2 and "--verify needs a watertight object mesh" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "pybullet", None)  # as if pybullet were not installed
    from dvqvae_model.sim.sample_objects import load_object

    with pytest.raises(grasp_cli.CliError, match="--verify needs pybullet"):
        grasp_cli.verify_grasps(None, None, load_object("box"))
