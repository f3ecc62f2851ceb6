"""`dvqvae-train average` / `validate`: the weight average of two runs of one lineage, validated like a
training run; checkpoints that do not line up are refused. Tiny runs on the toy dataset."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dvqvae_model.checkpoint import load_checkpoint, read_checkpoint_config
from dvqvae_training.train import TrainConfig, train_cvae, train_dvqvae
from dvqvae_training.train.average import average_state
from dvqvae_training.train.train_cli import main as train_main
from test_train import write_toy_dataset

NUM_POINTS = 128


@pytest.fixture(scope="module")
def runs(tmp_path_factory, hand, one_thread) -> dict[str, Path]:
    """A tiny DVQ-VAE run, one fine-tuning epoch from it (another loss weight), a CVAE and a DVQ-VAE of
    another rotation representation."""
    tmp = tmp_path_factory.mktemp("avg")
    data = write_toy_dataset(tmp / "data", hand)

    def cfg(out: str, **kw) -> TrainConfig:
        return TrainConfig(data_dir=str(data), out_dir=str(tmp / out), num_points=NUM_POINTS, batch_size=4,
                           epochs=1, progress=False, save_every_steps=0, **kw)

    a = train_dvqvae(cfg("a"), hand=hand)
    b = train_dvqvae(cfg("b", lr=1e-3, init_from=str(a.checkpoint), loss_weights={"lambda_p": 2e4}), hand=hand)
    c = train_cvae(cfg("c"), hand=hand)
    d = train_dvqvae(cfg("d", rotation="axis_angle"), hand=hand)  # another architecture (its decoder's output)
    return {"data": data, "a": a.checkpoint, "b": b.checkpoint, "cvae": c.checkpoint, "other": d.checkpoint,
            "tmp": tmp}


def _json_line(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_average_state_mixes_floats_and_keeps_counters():
    a = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor([3])}
    b = {"w": torch.tensor([4.0, 6.0]), "n": torch.tensor([7])}
    assert torch.allclose(average_state([a, b])["w"], torch.tensor([2.0, 4.0]))
    out = average_state([a, b], [3.0, 1.0])  # normalised: 0.75 / 0.25
    assert torch.allclose(out["w"], torch.tensor([1.0, 3.0])) and int(out["n"]) == 3
    with pytest.raises(ValueError, match="shape"):
        average_state([a, {"w": torch.zeros(3), "n": torch.tensor([1])}])
    with pytest.raises(ValueError, match="other tensors"):
        average_state([a, {"w": torch.zeros(2)}])
    for bad in ([1.0], [-1.0, 2.0], [0.0, 0.0], [float("nan"), 1.0]):
        with pytest.raises(ValueError):
            average_state([a, b], bad)
    with pytest.raises(ValueError, match="at least two"):
        average_state([a])


def test_validate_reproduces_what_the_run_recorded(runs, capsys):
    assert train_main(["validate", "--data", str(runs["data"]), "--model", str(runs["a"])]) == 0
    measured = _json_line(capsys.readouterr().out)["val"]
    recorded = read_checkpoint_config(runs["a"])["data_info"]["val_metrics"]
    assert measured["vertex_err_mm"] > 0
    for key in ("vertex_err_mm", "loss", "contact_ratio"):
        assert measured[key] == pytest.approx(recorded[key], rel=1e-3, abs=1e-4), key
    assert train_main(["validate", "--data", str(runs["data"])]) == 2
    assert "--model" in capsys.readouterr().err
    assert train_main(["validate", "--model", str(runs["a"])]) == 2  # no data: nothing to validate on
    assert "needs --data" in capsys.readouterr().err
    missing = str(runs["tmp"] / "no_such_data")  # a clear error, no traceback, for this and the training stages
    for stage in (["validate", "--model", str(runs["a"])], ["dvqvae", "--out", str(runs["tmp"] / "x")]):
        assert train_main([*stage, "--data", missing]) == 2
        assert "cannot read manifest" in capsys.readouterr().err


def test_average_writes_the_mean_validated(runs, hand, capsys):
    out = runs["tmp"] / "avg"
    assert train_main(["average", "--inputs", str(runs["a"]), str(runs["b"]), "--mix", "1", "3",
                       "--data", str(runs["data"]), "--out", str(out)]) == 0
    report = _json_line(capsys.readouterr().out)
    ckpt = out / "dvqvae" / "checkpoint"
    assert Path(report["checkpoint"]) == ckpt
    wa, wb, w = (load_file(str(p / "model.safetensors")) for p in (runs["a"], runs["b"], ckpt))
    floats = [k for k in w if w[k].is_floating_point()]
    assert floats and any(not torch.equal(wa[k], wb[k]) for k in floats)
    for k in floats:
        assert torch.allclose(w[k], 0.25 * wa[k] + 0.75 * wb[k], atol=1e-6), k
    info = read_checkpoint_config(ckpt)["data_info"]
    assert info["mix"] == [0.25, 0.75] and len(info["averaged_from"]) == 2
    # the recorded metrics are the averaged model's own: validating it again gives them back
    assert train_main(["validate", "--data", str(runs["data"]), "--model", str(ckpt)]) == 0
    again = _json_line(capsys.readouterr().out)["val"]
    assert info["val_metrics"]["vertex_err_mm"] == pytest.approx(again["vertex_err_mm"], rel=1e-4)
    assert load_checkpoint(ckpt, hand=hand).kind == "dvqvae"  # a loadable checkpoint (the prior comes next)


def test_average_without_data_records_no_metrics(runs, capsys):
    out = runs["tmp"] / "avg_nodata"
    assert train_main(["average", "--inputs", str(runs["a"]), str(runs["b"]), "--out", str(out)]) == 0
    assert "not validated" in capsys.readouterr().err
    assert read_checkpoint_config(out / "dvqvae" / "checkpoint")["data_info"]["val_metrics"] == {}


@pytest.mark.parametrize("inputs, message", [
    (("a", "cvae"), "holds a 'cvae' model"),
    (("a", "other"), "model config differs"),
    (("a",), "at least two"),
    (("a", "missing"), "does not exist"),
])
def test_average_refuses_checkpoints_that_do_not_line_up(runs, capsys, inputs, message):
    paths = [str(runs[i]) if i in runs else str(runs["tmp"] / i) for i in inputs]
    out = runs["tmp"] / f"refused_{len(inputs)}_{inputs[-1]}"
    assert train_main(["average", "--inputs", *paths, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
