"""Tests for safe checkpoints: round trip, integrity, hand fingerprint, no pickle, atomicity."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dvqvae_model.checkpoint import (
    CONFIG_FILE,
    MODEL_FILE,
    PRIOR_FILE,
    CheckpointError,
    load_checkpoint,
    read_checkpoint_config,
    register_model_kind,
    save_checkpoint,
)
from dvqvae_model.nets.prior import GatedPixelCNNPrior, PriorConfig, gumbel_noise

VOCAB = (4, 8, 8, 8, 8, 8, 8)


class ToyModel(nn.Module):
    """Small stand-in generator: a config-driven MLP with a buffer and a shared parameter."""

    def __init__(self, cfg: dict, hand) -> None:
        super().__init__()
        self.cfg = cfg
        self.hand = hand
        w = cfg["width"]
        self.net = nn.Sequential(nn.Linear(3, w), nn.ReLU(), nn.Linear(w, 61))
        self.norm = nn.BatchNorm1d(w)
        self.token_vocab_sizes = VOCAB

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


register_model_kind("toy_test", lambda cfg, hand: ToyModel(cfg, hand))
register_model_kind("toy_square_test", lambda cfg, hand: nn.Linear(cfg["width"], cfg["width"]))

HAND_A = SimpleNamespace(fingerprint="hand-aaaa")
HAND_B = SimpleNamespace(fingerprint="hand-bbbb")


def make(tmp_path: Path, with_prior: bool = True) -> tuple[Path, ToyModel, GatedPixelCNNPrior]:
    torch.manual_seed(0)
    model = ToyModel({"width": 16}, HAND_A).eval()
    prior = GatedPixelCNNPrior(PriorConfig.compact(vocab_sizes=VOCAB, channels=16, num_layers=2)).eval()
    path = save_checkpoint(
        tmp_path / "ckpt",
        model,
        prior if with_prior else None,
        kind="toy_test",
        model_config={"width": 16},
        prior_config=prior.cfg if with_prior else None,
        hand_fingerprint=HAND_A.fingerprint,
        data_info={"dataset": "unit-test", "num_grasps": 3},
    )
    return path, model, prior


def test_round_trip_identical_outputs(tmp_path: Path) -> None:
    path, model, prior = make(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == sorted([CONFIG_FILE, MODEL_FILE, PRIOR_FILE])
    loaded = load_checkpoint(path, hand=HAND_A)
    x = torch.randn(5, 3)
    assert torch.equal(loaded.model(x), model(x))
    noise = gumbel_noise(6, 6, 8, torch.Generator().manual_seed(0))
    obj = torch.tensor([1])
    a, la = loaded.prior.sample(obj, noise)
    b, lb = prior.sample(obj, noise)
    assert torch.equal(a, b) and torch.equal(la, lb)
    meta = loaded.config
    assert meta["kind"] == "toy_test" and meta["hand_fingerprint"] == "hand-aaaa"
    assert meta["data_info"]["dataset"] == "unit-test"
    assert meta["prior_config"]["vocab_sizes"] == list(VOCAB)
    assert len(meta["files"]["model"]["sha256"]) == 64
    assert meta["code_version"] and meta["created"]
    assert not loaded.model.training and not loaded.prior.training
    # no temp or backup directories left behind; overwrite replaces atomically
    save_checkpoint(path, model, kind="toy_test", model_config={"width": 16}, hand_fingerprint="hand-aaaa")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert load_checkpoint(path, hand=HAND_A).prior is None


def test_files_are_safetensors_and_json_not_pickle(tmp_path: Path) -> None:
    path, _, _ = make(tmp_path)
    for name in (MODEL_FILE, PRIOR_FILE):
        raw = (path / name).read_bytes()
        assert raw[:1] != b"\x80", "looks like a pickle protocol header"
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])  # safetensors: u64 length + JSON header
        assert "__metadata__" in header
    json.loads((path / CONFIG_FILE).read_text())


def test_no_unpickling_on_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, _ = make(tmp_path)
    import pickle

    def forbidden(*a, **k):
        raise AssertionError("pickle used while loading a checkpoint")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    load_checkpoint(path, hand=HAND_A)


def test_wrong_hand_fingerprint(tmp_path: Path) -> None:
    path, _, _ = make(tmp_path)
    with pytest.raises(CheckpointError, match="trained for hand hand-aaaa but hand model hand-bbbb"):
        load_checkpoint(path, hand=HAND_B)


def test_corrupted_weights_detected(tmp_path: Path) -> None:
    path, _, _ = make(tmp_path)
    f = path / MODEL_FILE
    raw = bytearray(f.read_bytes())
    raw[len(raw) - 5] ^= 0xFF  # flip a byte inside the tensor data
    f.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path, hand=HAND_A)


def test_truncated_weights_detected(tmp_path: Path) -> None:
    path, _, _ = make(tmp_path)
    f = path / PRIOR_FILE
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path, hand=HAND_A)


def test_truncated_or_missing_config(tmp_path: Path) -> None:
    path, _, _ = make(tmp_path)
    cfg = path / CONFIG_FILE
    text = cfg.read_text()
    cfg.write_text(text[: len(text) // 2])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path, hand=HAND_A)
    meta = json.loads(text)
    del meta["hand_fingerprint"]
    cfg.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="missing required keys"):
        read_checkpoint_config(path)
    os.remove(cfg)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        load_checkpoint(path, hand=HAND_A)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope", hand=HAND_A)


def test_config_does_not_match_weights(tmp_path: Path) -> None:
    path, model, _ = make(tmp_path)
    meta = json.loads((path / CONFIG_FILE).read_text())
    assert meta["config_sha256"]
    meta["model_config"]["width"] = 32  # weights were written for width 16
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="edited after the checkpoint was saved"):
        load_checkpoint(path, hand=HAND_A)
    # the same edit with the digest removed (an older checkpoint, or a tamperer): the shapes catch it,
    # from the meta device and the weights' header, before anything of the edited size is allocated
    del meta["config_sha256"]
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"does not describe the model weights \(net.0.weight is \(16, 3\)"):
        load_checkpoint(path, hand=HAND_A)
    meta["model_config"]["width"] = 16
    meta["prior_config"]["vocab_sizes"] = [4, 9, 8, 8, 8, 8, 8]
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="prior weights|vocab sizes"):
        load_checkpoint(path, hand=HAND_A)


def test_edited_config_never_allocates_what_it_describes(tmp_path: Path) -> None:
    """Edits asking for 256 MB (width 2^20) or 1 TiB (a 2^19 x 2^19 matrix) are refused in a blink, not attempted."""
    import resource
    import time

    path, _, _ = make(tmp_path)
    meta = json.loads((path / CONFIG_FILE).read_text())
    del meta["config_sha256"]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.monotonic()
    meta["model_config"]["width"] = 1 << 20
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not describe the model weights"):
        load_checkpoint(path, hand=HAND_A)
    meta["kind"], meta["model_config"]["width"] = "toy_square_test", 1 << 19
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="1024.0 GiB"):
        load_checkpoint(path, hand=HAND_A)
    assert time.monotonic() - t0 < 5.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 150_000  # KiB: nothing of that size
    meta["model_config"] = {"width": 1 << 30}
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="out of bounds"):
        load_checkpoint(path, hand=HAND_A)


def test_old_checkpoints_without_config_digest_load(tmp_path: Path) -> None:
    from dvqvae_model.checkpoint import DEFAULT_MODEL_DIR

    path, model, _ = make(tmp_path)
    meta = json.loads((path / CONFIG_FILE).read_text())
    del meta["config_sha256"]
    (path / CONFIG_FILE).write_text(json.dumps(meta))
    assert load_checkpoint(path, hand=HAND_A).kind == "toy_test"
    bundled = json.loads((DEFAULT_MODEL_DIR / CONFIG_FILE).read_text())
    assert bundled["config_sha256"] and bundled["files"]["model"]["sha256"].startswith("21d60f40")  # the bundled weights (2026-12-07: average of the penetration x1.5 epoch and contact scale 0.2)


def test_refuses_to_replace_non_checkpoint_dir(tmp_path: Path) -> None:
    other = tmp_path / "ckpt"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        make(tmp_path)
    assert (other / "precious.txt").read_text() == "keep me"


def test_failed_write_leaves_no_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash after the weights are written leaves neither a checkpoint nor temp files."""
    import dvqvae_model.checkpoint as ck

    path, model, _ = make(tmp_path)
    before = (path / MODEL_FILE).read_bytes()

    def crash(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ck, "sha256_file", crash)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, model, kind="toy_test", model_config={"width": 16}, hand_fingerprint="hand-aaaa")
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(tmp_path / "new", model, kind="toy_test", model_config={"width": 16}, hand_fingerprint="x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # old one intact, no temp dirs
    assert (path / MODEL_FILE).read_bytes() == before


def test_bundled_models_by_name() -> None:
    """`model: default` is the DVQ-VAE, `model: default_cvae` the GraspCVAE baseline trained on the same data
    with the same CPU budget; both load by name everywhere a checkpoint path is taken."""
    from dvqvae_model.checkpoint import BUNDLED_MODELS, DEFAULT_MODEL_DIR, resolve_checkpoint

    assert resolve_checkpoint("default") == DEFAULT_MODEL_DIR
    assert resolve_checkpoint("default_cvae") == BUNDLED_MODELS["default_cvae"]
    dvq, cvae = load_checkpoint("default"), load_checkpoint("default_cvae")
    assert dvq.config["kind"] == "dvqvae" and dvq.prior is not None
    assert cvae.config["kind"] == "cvae" and cvae.prior is None
    # the comparison is like for like: same data, same input frame, same hand
    same = ("dataset_hand_fingerprint", "num_grasps", "num_objects", "augmentation")
    assert {k: dvq.config["data_info"][k] for k in same} == {k: cvae.config["data_info"][k] for k in same}
    assert dvq.model.cfg.input_frame == cvae.model.cfg.input_frame
    with pytest.raises(CheckpointError, match="is not a directory"):
        resolve_checkpoint("default_cvea")
