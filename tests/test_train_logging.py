"""TensorBoard mirror of the training log: used when the tensorboard package is there, skipped cleanly when not."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dvqvae_training.train.tensorboard_log as tb
from dvqvae_model.hand.hand_model import load_hand_model
from dvqvae_training.train import TrainConfig, train_dvqvae
from test_train import write_toy_dataset


class FakeWriter:
    """Records what a ``SummaryWriter`` would be asked to write."""

    instances: list["FakeWriter"] = []

    def __init__(self, log_dir: str, purge_step=None) -> None:
        self.log_dir, self.purge_step, self.scalars = log_dir, purge_step, []
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        FakeWriter.instances.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), load_hand_model("standin"))


def cfg(root: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data_dir=str(root), out_dir=str(out), num_points=128, batch_size=4, epochs=2, progress=False,
                log_every_steps=1, save_every_steps=0)
    return TrainConfig(**{**base, **kw})


def test_scalars_mirror_the_log_and_resume_purges(data_root, tmp_path, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setattr(tb, "summary_writer_class", lambda: FakeWriter)
    FakeWriter.instances.clear()
    first = train_dvqvae(cfg(data_root, tmp_path, max_steps=4))
    assert first.step == 4
    w = FakeWriter.instances[0]
    assert Path(w.log_dir) == tmp_path / "dvqvae" / "tensorboard" and w.purge_step is None
    loss_steps = [s for tag, _, s in w.scalars if tag == "train/loss"]
    assert loss_steps == [1, 2, 3, 4]
    assert ("epoch/val_vertex_err_mm", 3) in {(t, s) for t, _, s in w.scalars}  # epoch 1 ended at step 3
    final = train_dvqvae(cfg(data_root, tmp_path, resume=True))
    assert final.finished
    w2 = FakeWriter.instances[-1]
    assert w2.purge_step == 5 and [s for tag, _, s in w2.scalars if tag == "train/loss"] == [5, 6]
    assert (tmp_path / "dvqvae" / "log.csv").is_file()  # the CSV stays the record


def test_without_tensorboard_only_the_csv(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(tb, "summary_writer_class", lambda: None)
    res = train_dvqvae(cfg(data_root, tmp_path, epochs=1))
    assert res.finished and (tmp_path / "dvqvae" / "log.csv").is_file()
    assert not (tmp_path / "dvqvae" / "tensorboard").exists()
