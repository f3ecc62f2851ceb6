"""dvqvae-data: object recipes, resumable synthesis (interrupt and hard kill lose and duplicate
nothing), stats and the PNG gallery."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dvqvae_model.sim import visualize
from dvqvae_training.dataset import data_cli
from dvqvae_training.dataset.dataset_format import DatasetReader

ROOT = Path(__file__).resolve().parents[1]
# two small procedural objects and a tiny synthesis budget (seconds per object)
SYNTH_ARGS = [
    "--count", "2", "--families", "sphere,capsule", "--object-seed", "3", "--workers", "1",
    "--hands", "24", "--steps", "60", "--max-grasps", "3", "--config", '{"cull_at": 0.0}',
    "--objects-per-shard", "1", "--no-progress",
]  # fmt: skip


def _run_main(args: list[str]) -> int:
    term = signal.getsignal(signal.SIGTERM)
    try:
        return data_cli.main(args)
    finally:
        signal.signal(signal.SIGTERM, term)


def _content(root: Path) -> dict[str, tuple]:
    r = DatasetReader(root, verify="full")
    ids = r.object_ids()
    assert len(ids) == len(set(ids))
    out = {}
    for oid in ids:
        o = r.object(oid)
        out[oid] = (o["params"].copy(), o["grasp_type"].copy(), o["points"].copy(), o["split"])
    return out


def _same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k][0], b[k][0])
        np.testing.assert_array_equal(a[k][1], b[k][1])
        np.testing.assert_array_equal(a[k][2], b[k][2])
        assert a[k][3] == b[k][3]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("vhacd"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("ref") / "ds"
    assert _run_main(["synth", str(out), *SYNTH_ARGS, "--cache-dir", cache]) == 0
    return out


def test_objects_list_and_write(tmp_path, capsys):
    assert data_cli.main(["objects", "list", "--count", "3", "--families", "box,torus"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [d["family"] for d in lines] == ["box", "torus", "box"]
    assert data_cli.main(["objects", "write", "--count", "2", "--families", "cylinder", "--out", str(tmp_path)]) == 0
    recs = (tmp_path / "recipes.jsonl").read_text().splitlines()
    assert len(recs) == 2
    from dvqvae_training.synthesis.objects import ObjectRecipe

    for line in recs:
        assert (tmp_path / f"{ObjectRecipe.from_json(line).object_id}.ply").is_file()


def test_reference_run(reference):
    r = DatasetReader(reference, verify="full")
    assert r.num_objects() == 2
    assert r.num_grasps() >= 2
    src = json.loads(r.object(r.object_ids()[0])["source"])
    assert "recipe" in src and src["synth"]["candidates"] == 24
    assert sum(src["synth"]["rejected"].values()) + src["synth"]["accepted"] == 24


def test_interrupt_then_resume_loses_and_duplicates_nothing(tmp_path, monkeypatch, reference, cache):
    out = tmp_path / "ds"
    real = data_cli.run_job
    calls = []

    def interrupted(job, seed, num_points):
        calls.append(job.object_id)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second object is being synthesised
        return real(job, seed, num_points)

    monkeypatch.setattr(data_cli, "run_job", interrupted)
    assert _run_main(["synth", str(out), *SYNTH_ARGS, "--cache-dir", cache]) == 130
    assert DatasetReader(out).num_objects() == 1  # the finished object was committed
    monkeypatch.setattr(data_cli, "run_job", real)
    assert _run_main(["synth", str(out), *SYNTH_ARGS, "--cache-dir", cache]) == 0
    _same(_content(out), _content(reference))


def test_hard_kill_then_resume(tmp_path, reference, cache):
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "dvqvae_training.dataset.data_cli", "synth", str(out), *SYNTH_ARGS, "--cache-dir", cache]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.json"
    deadline = time.time() + 120
    killed = False
    try:
        while time.time() < deadline and proc.poll() is None:
            if manifest.is_file():
                try:
                    if len(json.loads(manifest.read_text())["objects"]) >= 1:
                        proc.kill()  # SIGKILL: no cleanup at all
                        killed = True
                        break
                except (json.JSONDecodeError, KeyError):
                    pass
            time.sleep(0.02)
    finally:
        if proc.poll() is None and not killed:
            proc.kill()
        proc.wait()
    assert killed, "the run finished before it could be killed"
    assert DatasetReader(out).num_objects() == 1
    assert _run_main(["synth", str(out), *SYNTH_ARGS, "--cache-dir", cache]) == 0
    _same(_content(out), _content(reference))
    # a third run has nothing left to do and changes nothing
    assert _run_main(["synth", str(out), *SYNTH_ARGS, "--cache-dir", cache]) == 0
    _same(_content(out), _content(reference))


def test_stats(reference, capsys):
    assert data_cli.main(["stats", str(reference)]) == 0
    text = capsys.readouterr().out
    assert "objects 2" in text and "train" in text and "rejected by reason" in text
    assert "metric displacement_cm" in text and "grasp types:" in text and "largest extent:" in text
    assert data_cli.main(["stats", str(reference), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    r = DatasetReader(reference)
    assert st["grasps"] == r.num_grasps() and st["objects"] == 2
    assert sum(st["types"].values()) == r.num_grasps()
    assert st["candidates"] == 48
    assert sum(v["objects"] for v in st["sizes"].values()) == 2
    assert sum(v["grasps"] for v in st["sizes"].values()) == r.num_grasps()


def test_show_writes_pngs(reference, tmp_path, capsys):
    out = tmp_path / "gallery"
    sheet = tmp_path / "sheet.png"
    args = ["show", str(reference), "--out", str(out), "--objects", "2", "--grasps", "2", "--sheet", str(sheet)]
    assert data_cli.main(args) == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2
    import matplotlib.image as mpimg

    for png in (pngs[0], sheet):
        img = mpimg.imread(png)
        assert img.shape[0] > 200 and img.shape[1] > 200
        rgb = img[..., :3]
        skin = (rgb[..., 0] > 0.8) & (rgb[..., 1] > 0.5) & (rgb[..., 2] < 0.75) & (rgb[..., 0] - rgb[..., 2] > 0.15)
        blue = (rgb[..., 2] > rgb[..., 0] + 0.2)
        assert skin.mean() > 0.01 and blue.mean() > 0.01  # both the hand and the object are drawn


def test_rasterize_depth_order():
    # a near red square in front of a far blue one: red wins where they overlap
    sq = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], np.float64) * 0.5
    f = np.array([[0, 1, 2], [0, 2, 3]])
    near, far = sq + [0, 0, 0.1], sq + [0.3, 0, -0.1]
    R = visualize.view_rotation(90.0, -90.0)  # looking down -z: larger z is closer
    img = visualize.rasterize([(far, f, (0, 0, 1)), (near, f, (1, 0, 0))], R, np.zeros(3), 1.0, size=64)
    c = img[32, 40]
    assert c[0] > c[2]


def test_synth_labels_each_grasp_and_stats_shows_the_confusion(reference, capsys):
    from dvqvae_training.synthesis.grasp_labels import GRASP_LABELS

    r = DatasetReader(reference)
    assert r.grasp_labels == list(GRASP_LABELS)
    for oid in r.object_ids():
        o = r.object(oid)
        assert len(o["grasp_label"]) == len(o["params"]) and (o["grasp_label"] >= 0).all()
    assert data_cli.main(["stats", str(reference)]) == 0
    text = capsys.readouterr().out
    assert "final-grasp labels (columns) by pre-shape (rows)" in text and "agree for" in text


def test_large_objects_redoes_objects_made_by_another_version(tmp_path, reference, cache):
    """--large-objects redoes the selection's large or grasp-less objects with its own settings,
    keeps both versions on record, and a second run redoes nothing."""
    import shutil

    out = tmp_path / "ds"
    shutil.copytree(reference, out)
    before = _content(out)
    args = ["synth", str(out), *SYNTH_ARGS[:-5], "--config", '{"cull_at": 0.0, "large_extent": 0.0}',
            "--objects-per-shard", "1", "--no-progress", "--cache-dir", cache, "--large-objects"]  # fmt: skip
    assert _run_main(args) == 0
    r = DatasetReader(out, verify="full")
    assert len(r.manifest["generator_versions"]) == 2
    assert sorted(r.object_ids()) == sorted(before)
    for oid in r.object_ids():
        assert json.loads(r.object(oid)["source"])["synth"]["generator_version"] == r.manifest["generator_versions"][1]
    redone = _content(out)
    assert _run_main(args) == 0  # nothing left to redo: same content
    _same(redone, _content(out))
