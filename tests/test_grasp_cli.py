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
    assert data["scores"].shape == (k,)
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
    _check_outputs(out2, 2)


def test_generate_reports_bad_input(tmp_path: Path, checkpoint: Path, capsys) -> None:
    np.save(tmp_path / "tiny.npy", np.zeros((10, 3), np.float32))
    rc = grasp_cli.main(["generate", "--object", str(tmp_path / "tiny.npy"), "--out", str(tmp_path / "o"),
                         "--model", str(checkpoint)])
    assert rc == 2 and "64" in capsys.readouterr().err
    rc = grasp_cli.main(["generate", "--object", str(tmp_path / "missing.obj"), "--out", str(tmp_path / "o"),
                         "--model", str(checkpoint)])
    assert rc == 2 and "missing.obj" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="not a directory"):
        grasp_cli.main(["generate", "--object", "mug", "--out", str(tmp_path / "o"), "--model", str(tmp_path / "nope")])


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
    # The demo's hands are rebuilt from the published MANO parameters; they sit at the camera's object (z > 0).
    assert np.isfinite(data["vertices"]).all()
    assert (out / "logs" / "grasp_generator.log").exists()
