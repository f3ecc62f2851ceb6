"""Evaluation protocol on two tiny objects: all Table-1 metrics, sane ranges, consistent with metrics.py."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from dvqvae_training.evaluate.eval_cli import main as eval_main
from dvqvae_training.evaluate.evaluate import EvalConfig, ModelSpec, evaluate, markdown_table, objects_from_dataset, write_report
from dvqvae_training.evaluate.metrics import ObjectGeometry, penetration_volumes_cm3
from dvqvae_training.train import PriorTrainConfig, TrainConfig, train_all, train_cvae
from test_train import write_toy_dataset  # the toy dataset maker lives with the training tests

NUM_POINTS = 128


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, hand) -> tuple[Path, Path, Path]:
    """(dataset, DVQ-VAE + prior checkpoint, GraspCVAE checkpoint) after one short epoch each."""
    tmp = tmp_path_factory.mktemp("eval")
    root = write_toy_dataset(tmp / "data", hand, grasps=3, betas_std=0.5,
                             objects={"train": (("box", 0), ("sphere", 2)), "val": (("box", 3),),
                                      "test": (("cylinder", 4), ("box", 5))})
    common = dict(data_dir=str(root), out_dir=str(tmp / "run"), num_points=NUM_POINTS, epochs=1, progress=False)
    train_all(TrainConfig(batch_size=3, **common), PriorTrainConfig(batch_size=6, token_views=1, **common), hand=hand)
    cvae = train_cvae(TrainConfig(batch_size=3, **common), hand=hand).checkpoint
    return root, tmp / "run" / "checkpoint", cvae


def test_model_spec_parsing():
    assert ModelSpec.parse("DVQ=out/ck") == ModelSpec("DVQ", "out/ck", False)
    assert ModelSpec.parse("DVQ+r=out/ck,refine") == ModelSpec("DVQ+r", "out/ck", True)
    assert ModelSpec.parse("out/ck") == ModelSpec("ck", "out/ck", False)
    assert ModelSpec.parse("data") == ModelSpec("data", None, False)
    assert ModelSpec.parse("out/ck,node") == ModelSpec("ck+node", "out/ck", False, True)


def test_node_spec_generates_with_the_node_defaults():
    """`,node` rows measure what the node publishes: its over-sampling and ranking, not raw samples."""
    from dvqvae_model.pipeline.defaults import DEFAULTS

    opts = ModelSpec.parse("n=out/ck,node").generator_options()
    assert opts == DEFAULTS.generator_options() and opts["ranking"] and opts["candidates"] > DEFAULTS.num_grasps
    assert ModelSpec.parse("r=out/ck").generator_options() == {"refine": False}
    with pytest.raises(ValueError):
        ModelSpec.parse("x=")


def test_protocol_on_two_objects(trained, hand, tmp_path):
    root, dvq, cvae = trained
    objects = objects_from_dataset(root, "test")
    assert len(objects) == 2 and all(o.mesh.is_watertight for o in objects)
    cfg = EvalConfig(num_grasps=4, pitch_mm=5.0, simulate=True, vhacd_cache=str(tmp_path / "vhacd"), progress=False)
    specs = [ModelSpec("DVQ-VAE", str(dvq)), ModelSpec("GraspCVAE", str(cvae)), ModelSpec.parse("data"),
             ModelSpec.parse(f"node={dvq},node")]
    report = evaluate(specs, objects, cfg, hand=hand)
    assert [m["node_defaults"] for m in report["models"]] == [False, False, False, True]

    for m in report["models"]:
        s = m["summary"]
        assert s["num_objects"] == 2 and s["num_grasps"] == (8 if m["label"] != "data" else 6)
        assert 0.0 <= s["contact_ratio_pct"] <= 100.0
        assert 0.0 <= s["penetration_cm3"] < 2000.0  # at most a hand's volume
        assert 0.0 <= s["displacement_cm"] < 1000.0 and math.isfinite(s["displacement_cm"])
        assert 0.0 <= s["entropy"] <= math.log(20) + 1e-9 and s["cluster_size"] >= 0.0
        assert 0.0 <= s["entropy_keypoints"] <= math.log(20) + 1e-9
        assert s["quality_index"] == pytest.approx(0.301 * s["penetration_cm3"] + 0.699 * s["displacement_cm"])
        assert s["pitch_mm"] == 5.0 and len(m["objects"]) == 2
        if m["label"] == "data":
            assert "time_per_batch_s" not in s
        else:
            assert 0.0 < s["time_per_batch_s"] < 30.0

    # the dataset row equals the metric computed directly on the stored grasps
    obj = objects[0]
    with torch.no_grad():
        verts = hand.from_params(torch.from_numpy(obj.gt_params[:4])).vertices.numpy()
    direct = penetration_volumes_cm3(verts, hand.sealed_faces.numpy(), ObjectGeometry(obj.mesh), 0.005).mean()
    data_row = next(m for m in report["models"] if m["label"] == "data")
    assert data_row["objects"][0]["penetration_cm3"] == pytest.approx(direct)
    assert data_row["summary"]["contact_ratio_pct"] == 100.0  # toy hands sit 1.5 cm off the surface, fingers closed

    table = markdown_table(report)
    assert all(label in table for label in ("DVQ-VAE", "GraspCVAE", "data")) and "pitch 5.0 mm" in table
    jpath, mpath = write_report(report, tmp_path / "out")
    assert json.loads(jpath.read_text())["models"][0]["label"] == "DVQ-VAE" and mpath.read_text().count("|") > 30


def test_eval_cli_on_a_mesh_folder(trained, tmp_path, capsys):
    root, dvq, _ = trained
    folder = tmp_path / "meshes"
    folder.mkdir()
    for o in objects_from_dataset(root, "test"):
        o.mesh.export(folder / f"{o.name}.stl")
    code = eval_main(["--meshes", str(folder), "--units", "m", "--model", f"DVQ={dvq}", "--num-grasps", "3",
                      "--pitch-mm", "5", "--no-sim", "--num-points", "500", "--out", str(tmp_path / "out"),
                      "--no-progress"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(report["objects"]) == 2 and "displacement_cm" not in report["models"][0]["summary"]
    assert "| DVQ |" in capsys.readouterr().out
    assert eval_main(["--meshes", str(folder), "--model", "data", "--out", str(tmp_path / "o2")]) == 2
    assert np.isfinite(report["models"][0]["summary"]["penetration_cm3"])


def test_breakdown_splits_the_error(trained, hand, tmp_path, capsys):
    from dvqvae_training.evaluate.breakdown import BreakdownConfig, breakdown

    root, dvq, _ = trained
    rep = breakdown(dvq, root, "test", BreakdownConfig(grasps_per_object=2, max_objects=2, pitch_mm=5.0), hand=hand)
    m = rep["modes"]
    assert rep["num_grasps"] == 4 and set(m) == {"data", "reconstruction", "continuous", "posture_only",
                                                 "position_only", "shape_only", "sampled"}
    assert m["data"]["vertex_err_mm"] == 0.0 and m["reconstruction"]["vertex_err_mm"] > 1.0
    assert m["posture_only"]["orient_err_deg"] == 0.0 and m["posture_only"]["transl_err_mm"] == 0.0
    assert m["position_only"]["posture_rmse"] == 0.0
    assert m["position_only"]["transl_err_mm"] == pytest.approx(m["reconstruction"]["transl_err_mm"])
    assert m["shape_only"]["transl_err_mm"] == 0.0 and m["shape_only"]["orient_err_deg"] == 0.0
    sh = rep["shape"]  # the share of the data's betas variance the reconstruction recovers
    assert sh["data_betas_variance"] > 0 and sh["reconstruction_explained"] == pytest.approx(
        1 - sh["reconstruction_betas_sq_err"] / sh["data_betas_variance"])
    assert "orient_err_deg" not in m["sampled"] and m["sampled"]["vertex_err_mm"] > 0
    for mode in m.values():
        assert 0.0 <= mode["penetration_cm3"] < 2000.0 and 0.0 <= mode["contact_pct"] <= 100.0
    books = rep["codebooks"]
    assert [b["codebook"] for b in books] == ["object", "thumb", "index", "middle", "ring", "pinky", "palm"]
    for b in books:
        assert 1 <= b["encoded_used"] <= 4 and 1.0 <= b["encoded_perplexity"] <= 4.0 + 1e-9
    assert math.isfinite(rep["prior"]["nll"]) and rep["prior"]["uniform_nll"] == pytest.approx(math.log(128))

    out = tmp_path / "bd"
    assert eval_main(["--breakdown", "--data", str(root), "--model", str(dvq), "--num-grasps", "2",
                      "--max-objects", "1", "--pitch-mm", "5", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "breakdown.json").read_text())["num_grasps"] == 2
    printed = capsys.readouterr().out
    assert "| reconstruction |" in printed and "Hand shape (betas)" in printed
    assert eval_main(["--breakdown", "--meshes", str(tmp_path), "--model", str(dvq)]) == 2  # needs --data


def test_partial_view_inputs_are_one_side_of_the_mesh(trained, tmp_path, capsys):
    """--partial-view (Table 3): each object is seen as one depth view, the same for every model; the metrics
    still use the mesh."""
    from dvqvae_training.evaluate.evaluate import with_partial_views

    root, dvq, _ = trained
    objects = objects_from_dataset(root, "test")
    views = with_partial_views(objects, seed=0)
    again = with_partial_views(objects, seed=0)
    for o, v, w in zip(objects, views, again):
        np.testing.assert_array_equal(v.points, w.points)  # seeded: every model gets the same view
        assert v.mesh is o.mesh and 200 <= len(v.points)
        # on the surface, and one-sided: the view's points cover much less of the object than its full cloud
        assert np.abs(o.mesh.nearest.signed_distance(v.points[:200])).max() < 0.01
        full_dirs = o.points - o.points.mean(0)
        seen = v.points - o.points.mean(0)
        assert np.linalg.norm(seen.mean(0)) > 0.2 * np.linalg.norm(full_dirs, axis=1).mean()
    code = eval_main(["--data", str(root), "--model", f"DVQ={dvq}", "--model", "data", "--num-grasps", "2",
                      "--pitch-mm", "5", "--no-sim", "--partial-view", "--out", str(tmp_path / "p"), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "one simulated depth view of each object" in out
    assert json.loads((tmp_path / "p" / "results.json").read_text())["config"]["partial_view"] is True


def test_ablation_trains_each_row_once_and_tables_them(trained, tmp_path, capsys):
    """Table 4 driver: each row trains its own model with its one change, a rerun skips finished rows, and
    every finished row is a line of the table."""
    from dvqvae_training.evaluate.ablation import main as ablation_main

    root = trained[0]
    args = ["--data", str(root), "--out", str(tmp_path / "abl"), "--rows", "full,no_gating,single_codebook",
            "--epochs", "1", "--prior-epochs", "1", "--num-grasps", "2", "--pitch-mm", "5", "--no-sim",
            "--num-points", str(NUM_POINTS), "--batch-size", "3", "--max-objects", "1", "--token-views", "1"]
    assert ablation_main(args) == 0
    out = capsys.readouterr().out
    for row in ("full", "no_gating", "single_codebook"):
        assert f"| {row} |" in out
    report = json.loads((tmp_path / "abl" / "results.json").read_text())
    assert report["ablation"]["rows"]["no_gating"] == {"use_gating": False} and report["ablation"]["token_views"] == 1
    cfg = json.loads((tmp_path / "abl" / "no_gating" / "checkpoint" / "config.json").read_text())
    assert cfg["model_config"]["use_gating"] is False and cfg["model_config"]["position_sees_codes"] is True
    single = json.loads((tmp_path / "abl" / "single_codebook" / "checkpoint" / "config.json").read_text())
    assert single["model_config"]["variant"] == "single_codebook"
    mtime = (tmp_path / "abl" / "full" / "checkpoint" / "config.json").stat().st_mtime_ns
    assert ablation_main(args) == 0  # finished rows are not trained again
    assert (tmp_path / "abl" / "full" / "checkpoint" / "config.json").stat().st_mtime_ns == mtime
    assert ablation_main(args[:4] + ["--rows", "no_such_row"]) == 2
    # --eval-only tables the finished rows and trains nothing
    capsys.readouterr()
    assert ablation_main(args[:4] + args[6:] + ["--rows", "full,no_dual_stage", "--eval-only"]) == 0
    out = capsys.readouterr().out
    assert "| full |" in out and "no_dual_stage: not finished" in out and not (tmp_path / "abl" / "no_dual_stage").exists()


def test_ablation_stops_at_a_signal_instead_of_going_on_to_the_next_row(trained, tmp_path, monkeypatch):
    """A stopped driver (SIGTERM: the training loop saves and returns) must not start the next row."""
    import dvqvae_training.evaluate.ablation as ablation
    from dvqvae_training.train import TrainResult

    calls = []

    def stopped(cfg, prior_cfg, hand=None):
        calls.append(cfg.out_dir)
        return [TrainResult("dvqvae", False, "signal", 0, 1, None, Path(cfg.out_dir), Path(cfg.out_dir))]

    monkeypatch.setattr(ablation, "train_all", stopped)
    cfg = EvalConfig(num_grasps=1, simulate=False, progress=False)
    assert ablation.run(["full", "no_gating"], str(trained[0]), tmp_path, epochs=1, prior_epochs=1, eval_cfg=cfg) is None
    assert len(calls) == 1
