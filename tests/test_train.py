"""Training loops: loss goes down, kill-and-resume equals an uninterrupted run, time budget, prior splits,
the final checkpoint generates. Everything on a tiny procedural dataset written here."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from dvqvae_model.nets.losses import LossWeights
from scipy.spatial.transform import Rotation

from dvqvae_model.pipeline.generator import GraspGenerator
from dvqvae_model.hand.hand_poses import named_pose
from dvqvae_training.dataset.dataset_format import DatasetReader, DatasetWriter, sample_surface
from dvqvae_training.synthesis.objects import make_object, recipe_from_seed
from dvqvae_training.train import (
    EXIT_RESUMABLE,
    EpochBatchSampler,
    PriorTrainConfig,
    TrainConfig,
    contact_scale_at,
    load_training_state,
    lr_at,
    read_training_state,
    train_cvae,
    train_dvqvae,
    train_prior,
)
from dvqvae_training.train.train_cli import main as train_main

NUM_POINTS = 128


# =============================================================================== toy data (also used by test_evaluate)


def toy_grasps(hand, points: np.ndarray, normals: np.ndarray, count: int, rng: np.random.Generator,
               betas_std: float = 0.0) -> np.ndarray:
    """``count`` hands in a grasp-like pose, palm facing the object 1.5 cm off a random surface point
    (the mean hand, or random shapes with ``betas_std``)."""
    meta = hand.meta
    with torch.no_grad():
        rest = hand.rest()
    v = rest.vertices[0].double().numpy()
    j0 = rest.joints[0, 0].double().numpy()
    palm = v[np.asarray(meta.part_ids) == 5].mean(0)
    pose = named_pose(meta, "grasp")
    out = np.zeros((count, 61))
    for k in range(count):
        i = rng.integers(len(points))
        p, n = points[i].astype(np.float64), normals[i].astype(np.float64)
        n /= np.linalg.norm(n)
        align, _ = Rotation.align_vectors([n], [[0.0, 1.0, 0.0]])  # palm normal is -y in the hand frame
        R = (Rotation.from_rotvec(n * rng.uniform(-np.pi, np.pi)) * align).as_matrix()
        out[k, 10:13] = Rotation.from_matrix(R).as_rotvec()
        out[k, 13:58] = pose + rng.normal(scale=0.05, size=45)
        out[k, 58:61] = p + 0.015 * n - j0 - R @ (palm - j0)
        if betas_std:  # the palm offset above is the mean hand's: close enough for a toy
            out[k, :10] = rng.normal(scale=betas_std, size=10)
    return out.astype(np.float32)


DEFAULT_OBJECTS = {"train": (("box", 0), ("cylinder", 1), ("sphere", 2)), "val": (("box", 3),),
                   "test": (("cylinder", 4), ("box", 5))}


def write_toy_dataset(root: Path, hand, *, num_points: int = 256, grasps: int = 4, objects=None, seed: int = 0,
                      betas_std: float = 0.0) -> Path:
    """A dataset with explicit per-object splits (default: 3 train, 1 val, 2 test objects)."""
    rng = np.random.default_rng(seed)
    with DatasetWriter(root, generator_version="toy", hand_fingerprint=hand.fingerprint, num_points=num_points) as w:
        for split, items in (objects or DEFAULT_OBJECTS).items():
            for family, s in items:
                recipe = recipe_from_seed(family, s)
                mesh = make_object(recipe)
                pts, nrm = sample_surface(mesh, num_points, seed=s)
                w.add_object(recipe.object_id, pts, nrm, {"recipe": recipe.to_dict()},
                             toy_grasps(hand, pts, nrm, grasps, rng, betas_std), split=split)
    return Path(root)


# =============================================================================== fixtures


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, hand) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), hand)


def cfg(root: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data_dir=str(root), out_dir=str(out), num_points=NUM_POINTS, batch_size=4, epochs=3, progress=False,
                log_every_steps=1, save_every_steps=0)
    base.update(kw)
    return TrainConfig(**base)


def step_records(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == "step"]


# =============================================================================== tests


def test_lr_schedule_is_the_papers_scaled_to_epochs():
    c = TrainConfig(epochs=200)
    lrs = {e: lr_at(c, e) for e in (0, 59, 60, 119, 120, 160, 180, 199)}
    assert lrs == {0: 1e-4, 59: 1e-4, 60: 5e-5, 119: 5e-5, 120: 2.5e-5, 160: 1.25e-5, 180: 6.25e-6, 199: 6.25e-6}
    assert lr_at(PriorTrainConfig(), 99) == 3e-4


def test_contact_warmup_schedule():
    c = TrainConfig(contact_scale=0.5, contact_warmup=0.25)
    # 100 steps in all: 25 warm-up steps, linear from 0, then constant at the scale
    assert [contact_scale_at(c, s, 100) for s in (0, 5, 10, 25, 26, 99)] == [0.0, 0.1, 0.2, 0.5, 0.5, 0.5]
    assert contact_scale_at(TrainConfig(contact_warmup=0.0), 0, 100) == 1.0  # no warm-up: the paper's weights
    assert contact_scale_at(TrainConfig(contact_scale=2.0, contact_warmup=1.0), 50, 100) == 1.0
    for bad in ({"contact_scale": -1.0}, {"contact_scale": float("nan")}, {"contact_warmup": 1.5}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


CONTACT_WEIGHTS = {"consistency": "lambda_m", "contact": "lambda_c", "penetration": "lambda_p"}


@pytest.mark.parametrize("scale,warmup", [(0.0, 0.0), (0.1, 0.5)])
def test_contact_scale_reaches_the_training_loss(data_root, hand, tmp_path, scale, warmup):
    """The optimised loss is the paper total minus (1 - effective scale) x the weighted contact terms."""
    records: list[dict] = []
    c = cfg(data_root, tmp_path, epochs=2, contact_scale=scale, contact_warmup=warmup)  # 6 steps in all
    res = train_dvqvae(c, hand=hand, on_step=lambda loop, step, stats: records.append(dict(stats)))
    assert res.finished and len(records) == 6
    w = json.loads((res.checkpoint / "config.json").read_text())["model_config"]["loss_weights"]
    ramp = round(warmup * 6)
    for step, r in enumerate(records):
        expected = scale * (min(1.0, step / ramp) if ramp else 1.0)
        assert r["contact_scale"] == pytest.approx(expected)
        contact_part = sum(w[lam] * r[term] for term, lam in CONTACT_WEIGHTS.items())
        assert contact_part > 0  # the terms exist and are non-zero, so the check below can fail
        assert r["loss"] == pytest.approx(r["paper_loss"] - (1.0 - expected) * contact_part, rel=1e-4, abs=1e-4)
    assert [json.loads(x)["contact_scale"] for x in res.log_path.read_text().splitlines()
            if '"kind": "step"' in x] == pytest.approx([r["contact_scale"] for r in records])
    # a different contact schedule is a different experiment: resuming with it is refused
    with pytest.raises(ValueError, match="contact_scale"):
        train_dvqvae(cfg(data_root, tmp_path, epochs=3, contact_scale=scale + 1.0, contact_warmup=warmup,
                         resume=True), hand=hand)


def test_cli_passes_the_contact_options(tmp_path):
    from dvqvae_training.train.train_cli import build_parser, configs

    main_cfg, prior_cfg = configs(build_parser().parse_args(
        ["dvqvae", "--data", str(tmp_path), "--contact-scale", "0.02", "--contact-warmup", "0.4"]))
    assert (main_cfg.contact_scale, main_cfg.contact_warmup) == (0.02, 0.4)
    default, _ = configs(build_parser().parse_args(["dvqvae", "--data", str(tmp_path)]))
    assert (default.contact_scale, default.contact_warmup) == (1.0, 0.3)
    assert (default.loss_points, default.num_threads) == (256, 1)  # the measured fast settings (bench_train.py)
    assert train_main(["dvqvae", "--data", str(tmp_path), "--contact-warmup", "2"]) == 2


def test_batch_sampler_is_seeded_per_epoch_and_skips_on_resume():
    s = EpochBatchSampler(10, 3, seed=1)
    s.set_epoch(0)
    a = list(s)
    assert len(a) == 3 and all(len(b) == 3 for b in a) and len({i for b in a for i in b}) == 9
    s.set_epoch(0, skip=1)
    assert list(s) == a[1:] and len(s) == 2
    s.set_epoch(1)
    assert list(s) != a
    assert list(EpochBatchSampler(2, 4, 0)) != []  # smaller than one batch: one batch of everything


def test_a_few_steps_decrease_the_loss(data_root, hand, tmp_path):
    losses: list[float] = []
    # one batch of all 12 training grasps, no augmentation: every step sees the same data
    # and a fixed objective (no contact warm-up, which makes the optimised loss rise as the terms ramp in)
    c = cfg(data_root, tmp_path, epochs=12, batch_size=12, lr=2e-3, lr_milestones=(), rotate=False, contact_warmup=0.0)
    res = train_dvqvae(c, hand=hand, on_step=lambda loop, step, stats: losses.append(stats["loss"]))
    assert res.finished and res.step == 12 and len(losses) == 12
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]) and max(losses[-3:]) < min(losses[:3]), losses
    assert res.metrics["vertex_err_mm"] > 0 and 0.0 <= res.metrics["contact_ratio"] <= 1.0


@pytest.mark.parametrize("loss_points", [0, 48])  # 48 of the 128 points: the subset is part of the replay
def test_kill_and_resume_equals_uninterrupted_run(data_root, hand, tmp_path, loss_points):
    # 12 training grasps, batch 4: 3 steps per epoch, so the resumed part crosses an epoch end (validation).
    cfg = lambda *a, **kw: globals()["cfg"](*a, loss_points=loss_points, **kw)  # noqa: E731
    straight = train_dvqvae(cfg(data_root, tmp_path / "a", max_steps=4), hand=hand)
    assert straight.stop_reason == "max_steps" and straight.step == 4 and not straight.finished

    def crash(loop, step, stats):
        if step == 3:
            raise RuntimeError("simulated kill")

    with pytest.raises(RuntimeError, match="simulated kill"):
        train_dvqvae(cfg(data_root, tmp_path / "b", save_every_steps=2), hand=hand, on_step=crash)
    assert read_training_state(tmp_path / "b" / "dvqvae" / "state")["step"] == 2  # what survived the kill
    torch.manual_seed(12345)  # the resumed run must restore every RNG itself
    np.random.seed(7)
    resumed = train_dvqvae(cfg(data_root, tmp_path / "b", save_every_steps=2, resume=True, max_steps=4), hand=hand)
    assert resumed.step == 4 and resumed.epoch == 1

    ta, ma = load_training_state(tmp_path / "a" / "dvqvae" / "state")
    tb, mb = load_training_state(tmp_path / "b" / "dvqvae" / "state")
    assert set(ta) == set(tb)
    assert any(k.startswith("optim.") for k in ta) and any(k.endswith("hand_codebook._recent") for k in ta)
    for k in ta:
        torch.testing.assert_close(tb[k], ta[k], rtol=0, atol=1e-6, msg=lambda m: f"{k}: {m}")
    assert (ma["epoch"], ma["batch_in_epoch"]) == (mb["epoch"], mb["batch_in_epoch"]) == (1, 1)
    # the log of the resumed run is the uninterrupted one: no duplicated or missing steps
    la, lb = step_records(straight.log_path), step_records(resumed.log_path)
    assert [r["step"] for r in lb] == [1, 2, 3, 4]
    np.testing.assert_allclose([r["loss"] for r in lb], [r["loss"] for r in la], rtol=1e-6)
    # the contact warm-up (default 0.3 of 3 epochs x 3 steps = 3 steps) continues from the step counter
    np.testing.assert_allclose([r["contact_scale"] for r in lb], [0.0, 1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose([r["contact_scale"] for r in la], [r["contact_scale"] for r in lb])


def test_time_budget_stops_cleanly_and_resumes(data_root, hand, tmp_path):
    c = cfg(data_root, tmp_path, epochs=2, max_minutes=1e-9)
    first = train_dvqvae(c, hand=hand)
    assert first.stop_reason == "time_budget" and first.step == 0 and first.checkpoint is None

    def budget_runs_out(loop, step, stats):
        if step == 2:
            loop.deadline = 0.0  # as if the wall clock passed the budget now

    second = train_dvqvae(cfg(data_root, tmp_path, epochs=2, resume=True), hand=hand, on_step=budget_runs_out)
    assert second.stop_reason == "time_budget" and second.step == 2 and not second.finished
    assert read_training_state(second.state_dir)["batch_in_epoch"] == 2
    files = sorted(p.name for p in second.state_dir.iterdir())
    assert len(files) == 2 and files[1] == "state.json" and files[0].endswith(".safetensors")

    final = train_dvqvae(cfg(data_root, tmp_path, epochs=2, resume=True), hand=hand)
    assert final.finished and final.step == 6 and (final.checkpoint / "config.json").is_file()
    assert [r["step"] for r in step_records(final.log_path)] == [1, 2, 3, 4, 5, 6]
    epochs = [json.loads(x) for x in final.log_path.read_text().splitlines() if '"kind": "epoch"' in x]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert (tmp_path / "dvqvae" / "log.csv").read_text().count("\n") == 3  # header + 2 epochs


def test_sigterm_saves_a_resumable_state(data_root, hand, tmp_path):
    before = signal.getsignal(signal.SIGTERM)

    def terminate(loop, step, stats):
        if step == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. `kill <pid>` or a job scheduler's preemption

    res = train_dvqvae(cfg(data_root, tmp_path, epochs=1), hand=hand, on_step=terminate)
    assert res.stop_reason == "signal" and res.step == 1 and read_training_state(res.state_dir)["step"] == 1
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    assert train_dvqvae(cfg(data_root, tmp_path, epochs=1, resume=True), hand=hand).finished


def test_state_is_checked_and_never_silently_overwritten(data_root, hand, tmp_path):
    train_dvqvae(cfg(data_root, tmp_path, max_steps=1), hand=hand)
    with pytest.raises(FileExistsError):
        train_dvqvae(cfg(data_root, tmp_path, max_steps=1), hand=hand)
    with pytest.raises(ValueError, match="different settings"):
        train_dvqvae(cfg(data_root, tmp_path, batch_size=2, resume=True), hand=hand)
    state = tmp_path / "dvqvae" / "state"
    tensors = state / read_training_state(state)["tensors_file"]
    raw = bytearray(tensors.read_bytes())
    raw[-5] ^= 0xFF
    tensors.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupted"):
        load_training_state(state)


def test_cvae_resumes_whatever_the_dvqvae_only_settings_hold(data_root, hand, tmp_path):
    """A GraspCVAE run records the DVQ-VAE-only fields; a change of their defaults must not block its resume."""
    train_cvae(cfg(data_root, tmp_path, max_steps=1, rotation="axis_angle", use_gating=False), hand=hand)
    assert train_cvae(cfg(data_root, tmp_path, epochs=1, rotation="6d", resume=True), hand=hand).finished
    with pytest.raises(ValueError, match="different settings"):  # what the CVAE does read is still checked
        train_cvae(cfg(data_root, tmp_path, epochs=1, lr=1e-3, resume=True), hand=hand)
    train_dvqvae(cfg(data_root, tmp_path, max_steps=1, rotation="axis_angle"), hand=hand)
    with pytest.raises(ValueError, match="rotation"):  # the DVQ-VAE reads it
        train_dvqvae(cfg(data_root, tmp_path, epochs=1, rotation="6d", resume=True), hand=hand)


def test_hand_frame_reaches_the_model_and_its_run_resumes_only_with_it(data_root, hand, tmp_path):
    from dvqvae_training.train.train_cli import build_parser, configs

    main_cfg, _ = configs(build_parser().parse_args(["dvqvae", "--data", str(data_root), "--hand-frame", "object"]))
    assert main_cfg.hand_frame == "object"
    shape_cfg, _ = configs(build_parser().parse_args(["dvqvae", "--data", str(data_root), "--hand-shape", "given"]))
    assert shape_cfg.hand_shape == "given"
    res = train_dvqvae(cfg(data_root, tmp_path, max_steps=1, hand_frame="object"), hand=hand)
    assert read_training_state(res.state_dir)["model_config"]["hand_frame"] == "object"
    with pytest.raises(ValueError, match="hand_frame"):
        train_dvqvae(cfg(data_root, tmp_path, epochs=1, resume=True), hand=hand)


def test_all_cli_writes_a_checkpoint_that_generates(data_root, hand, tmp_path):
    out = tmp_path / "run"
    args = ["all", "--data", str(data_root), "--out", str(out), "--epochs", "1", "--batch-size", "4",
            "--prior-epochs", "2", "--prior-batch-size", "8", "--token-views", "2", "--num-points", str(NUM_POINTS),
            "--no-progress"]
    assert train_main(args + ["--max-steps", "1"]) == EXIT_RESUMABLE
    assert train_main(args) == 2  # a state exists: refuses to start over without --resume
    assert train_main(args + ["--resume"]) == 0
    gen = GraspGenerator.from_checkpoint(out / "checkpoint", hand=hand)
    pts = DatasetReader(data_root).object(DatasetReader(data_root).object_ids("test")[0])["points"]
    gs = gen.generate(pts, 5, seed=0)
    assert gs.params.shape == (5, 61) and np.isfinite(gs.vertices).all()
    meta = json.loads((out / "checkpoint" / "config.json").read_text())
    assert meta["hand_fingerprint"] == hand.fingerprint and meta["prior_config"] is not None
    info = meta["data_info"]
    assert info["dataset"] == str(data_root.resolve()) and info["num_objects"]["train"] == 3
    assert info["prior"]["tokens"] == {"train": 2 * 12, "val": 4}

    # prior: validation tokens come from the val split's objects only
    state = read_training_state(out / "prior" / "state")
    reader = DatasetReader(data_root)
    assert state["train_objects"] == sorted(reader.object_ids("train"))
    assert state["val_objects"] == sorted(reader.object_ids("val"))
    assert train_main(args + ["--resume"]) == 0  # finished: nothing left to do


def test_prior_holdout_is_disjoint_without_a_val_split(data_root, hand, tmp_path):
    out = tmp_path / "run"
    model = train_dvqvae(cfg(data_root, out, epochs=1), hand=hand).checkpoint
    root = write_toy_dataset(tmp_path / "noval", hand, grasps=3,
                             objects={"train": (("box", 10), ("sphere", 11), ("capsule", 12), ("cylinder", 13))})
    pc = PriorTrainConfig(data_dir=str(root), out_dir=str(out), epochs=1, batch_size=8, token_views=1,
                          num_points=NUM_POINTS, val_fraction=0.25, progress=False)
    res = train_prior(pc, model_checkpoint=model, hand=hand)
    train_ids, val_ids = set(res.info["train_objects"]), set(res.info["val_objects"])
    assert len(val_ids) == 1 and len(train_ids) == 3 and not train_ids & val_ids
    assert train_ids | val_ids == set(DatasetReader(root).object_ids("train"))
    assert res.info["tokens"] == {"train": 9, "val": 3}
    assert res.finished and np.isfinite(res.metrics["nll"])


def test_codebook_size_reaches_the_model_its_prior_and_the_generator(data_root, hand, tmp_path):
    from dvqvae_model.pipeline.generator import GraspGenerator
    from dvqvae_training.train.train_cli import build_parser, configs

    main_cfg, _ = configs(build_parser().parse_args(["dvqvae", "--data", str(data_root), "--codebook-size", "16"]))
    assert main_cfg.codebook_size == 16
    out = tmp_path / "run"
    model = train_dvqvae(cfg(data_root, out, epochs=1, codebook_size=16), hand=hand).checkpoint
    pc = PriorTrainConfig(data_dir=str(data_root), out_dir=str(out), epochs=1, batch_size=8, token_views=1,
                          num_points=NUM_POINTS, progress=False)
    res = train_prior(pc, model_checkpoint=model, hand=hand)
    gen = GraspGenerator.from_checkpoint(res.checkpoint, hand=hand)
    assert gen.model.hand_codebook.num_codes == 16 and gen.prior.max_vocab == 16  # the prior picks among 16
    points, _ = sample_surface(make_object(recipe_from_seed("box", 0)), 512, seed=0)
    assert gen.generate(points, num_grasps=3, seed=0).params.shape == (3, 61)
    with pytest.raises(ValueError, match="16 entries"):
        train_dvqvae(cfg(data_root, tmp_path / "b", max_steps=1, codebook_size=32, init_from=str(model)), hand=hand)
    with pytest.raises(ValueError, match="codebook_size"):
        cfg(data_root, tmp_path / "c", codebook_size=1)


def test_curves_plot_a_finished_run(data_root, tmp_path, capsys):
    """dvqvae-eval --curves: one PNG with the run's curves; the summary reads the stages' last validation."""
    from PIL import Image

    from dvqvae_training.evaluate.eval_cli import main as eval_main

    out = tmp_path / "run"
    assert train_main(["all", "--data", str(data_root), "--out", str(out), "--epochs", "2", "--batch-size", "4",
                       "--prior-epochs", "2", "--prior-batch-size", "8", "--token-views", "1",
                       "--num-points", str(NUM_POINTS), "--log-every", "1", "--no-progress"]) == 0
    png = tmp_path / "curves.png"
    assert eval_main(["--curves", str(out), "--out", str(png)]) == 0
    text = capsys.readouterr().out
    assert "dvqvae: 2 epochs" in text and "prior: 2 epochs" in text and "val_vertex_err_mm" in text
    assert "codebook entries used (train tokens): object" in text and "palm" in text
    with Image.open(png) as im:
        assert im.size[0] > 800 and np.unique(np.asarray(im.convert("L"))).size > 10  # a real picture, not blank
    from dvqvae_training.evaluate.curves import read_log

    with open(out / "dvqvae" / "log.jsonl", "a") as fh:
        fh.write('{"kind": "step", "step": 9')  # a torn line from a killed run is skipped
    steps, epochs, started = read_log(out / "dvqvae" / "log.jsonl")
    assert len(epochs) == 2 and started["stage"] == "dvqvae" and steps[-1]["step"] == epochs[-1]["step"]
    assert eval_main(["--curves", str(tmp_path / "nothing"), "--out", str(png)]) == 2
    assert "no stage logs" in capsys.readouterr().err


def test_resume_follows_the_datas_content_not_its_path(hand, tmp_path):
    """A copy of the data elsewhere resumes the run; different data at the same path is refused."""
    import shutil

    first = write_toy_dataset(tmp_path / "data", hand)
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    run = tmp_path / "run"
    train_dvqvae(cfg(first, run, max_steps=1), hand=hand)
    assert train_dvqvae(cfg(copy, run, epochs=1, resume=True), hand=hand).finished

    other = tmp_path / "other"
    write_toy_dataset(other, hand)
    train_dvqvae(cfg(other, tmp_path / "run2", max_steps=1), hand=hand)
    shutil.rmtree(other)
    write_toy_dataset(other, hand, seed=1)  # the same path, other grasps
    with pytest.raises(ValueError, match="fingerprint"):
        train_dvqvae(cfg(other, tmp_path / "run2", epochs=1, resume=True), hand=hand)


def test_init_from_starts_a_new_run_from_a_checkpoints_weights(data_root, hand, tmp_path):
    """Fine-tuning (other settings) or going on from committed weights when the run directory is lost."""
    from safetensors.torch import load_file

    first = train_dvqvae(cfg(data_root, tmp_path / "a", epochs=1), hand=hand)
    tuned = train_dvqvae(cfg(data_root, tmp_path / "b", epochs=1, lr=1e-12, contact_scale=0.5,
                             init_from=str(first.checkpoint)), hand=hand)
    fresh = train_dvqvae(cfg(data_root, tmp_path / "fresh", epochs=1, lr=1e-12), hand=hand)
    weights = {name: load_file(str(r.checkpoint / "model.safetensors")) for name, r in
               (("first", first), ("tuned", tuned), ("fresh", fresh))}
    decoders = [k for k in weights["first"] if "decoder" in k]  # (codebooks may revive dead codes at any rate)
    assert decoders
    # with a vanishing rate the tuned model is the checkpoint's, a fresh one is not
    assert all(torch.allclose(weights["tuned"][k], weights["first"][k], atol=1e-6) for k in decoders)
    assert not all(torch.allclose(weights["fresh"][k], weights["first"][k], atol=1e-6) for k in decoders)
    with pytest.raises(ValueError, match="rotation"):
        train_dvqvae(cfg(data_root, tmp_path / "c", max_steps=1, rotation="axis_angle",
                         init_from=str(first.checkpoint)), hand=hand)
    with pytest.raises(ValueError, match="holds a 'dvqvae' model"):
        train_cvae(cfg(data_root, tmp_path / "d", max_steps=1, init_from=str(first.checkpoint)), hand=hand)
    # the hand's shape may switch to "given" (same weights): recorded, and the run resumes only with it
    shaped = train_dvqvae(cfg(data_root, tmp_path / "e", max_steps=1, hand_shape="given",
                              init_from=str(first.checkpoint)), hand=hand)
    assert read_training_state(shaped.state_dir)["model_config"]["hand_shape"] == "given"
    with pytest.raises(ValueError, match="hand_shape"):
        train_dvqvae(cfg(data_root, tmp_path / "e", epochs=1, resume=True, init_from=str(first.checkpoint)),
                     hand=hand)


def test_loss_weight_overrides_reach_the_model_and_are_checked(data_root, hand, tmp_path):
    from dvqvae_training.train.train_cli import build_parser, configs

    main_cfg, _ = configs(build_parser().parse_args(
        ["dvqvae", "--data", str(data_root), "--loss-weight", "lambda_p=1e5", "--loss-weight", "lambda_h=2"]))
    assert main_cfg.loss_weights == {"lambda_p": 1e5, "lambda_h": 2.0}
    res = train_dvqvae(cfg(data_root, tmp_path, max_steps=1, loss_weights={"lambda_p": 1e5}), hand=hand)
    saved = read_training_state(res.state_dir)["model_config"]["loss_weights"]
    assert saved["lambda_p"] == 1e5 and saved["lambda_v"] == LossWeights().lambda_v
    assert train_dvqvae(cfg(data_root, tmp_path, epochs=1, loss_weights={"lambda_p": 1e5}, resume=True),
                        hand=hand).finished
    for bad in ("lambda_q=1", "lambda_p", "lambda_p=x"):
        assert train_main(["dvqvae", "--data", str(data_root), "--out", str(tmp_path / "x"), "--loss-weight", bad]) == 2


def test_prior_stage_refuses_the_dvqvae_options(data_root, tmp_path, capsys):
    """`dvqvae-train prior --epochs 5` used to train the default 100 prior epochs without a word."""
    out = str(tmp_path / "p")
    assert train_main(["prior", "--data", str(data_root), "--out", out, "--epochs", "5"]) == 2
    assert "--prior-epochs" in capsys.readouterr().err
    assert train_main(["prior", "--data", str(data_root), "--out", out, "--contact-scale", "0.1"]) == 2
    assert "--contact-scale" in capsys.readouterr().err
    from dvqvae_training.train.train_cli import build_parser, configs

    _, prior_cfg = configs(build_parser().parse_args(["prior", "--data", str(data_root), "--prior-epochs", "5"]))
    assert prior_cfg.epochs == 5
    main_cfg, prior_cfg = configs(build_parser().parse_args(["all", "--data", str(data_root), "--epochs", "3",
                                                             "--prior-epochs", "5"]))
    assert (main_cfg.epochs, prior_cfg.epochs) == (3, 5)
