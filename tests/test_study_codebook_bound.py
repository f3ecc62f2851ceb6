"""benchmarks/study_codebook_bound.py: the decoder sees the continuous hand latents, only inside the
study, and a run of it trains and validates like dvqvae-train."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from dvqvae_model.nets.codebook import Codebook
from test_dvqvae import small_model, synthetic_grasps
from test_train import NUM_POINTS, write_toy_dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_decoder_sees_the_continuous_latents_only_inside(hand) -> None:
    from study_codebook_bound import codebooks_bypassed

    model = small_model(hand).eval()
    with torch.no_grad():  # entries far from the encoder's outputs, so that quantising shows
        model.hand_codebook.weight.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(0))
    obj, prm = synthetic_grasps(hand, 3, 128, seed=4)
    forward = Codebook.forward
    with torch.no_grad():
        with codebooks_bypassed():
            out = model(obj, prm)
        continuous = model.decode(out.z_hand, out.z_t, out.z_p).vertices
        quantised = model(obj, prm).decoding.vertices
    assert Codebook.forward is forward
    assert torch.allclose(out.decoding.vertices, continuous, atol=1e-6)
    assert float(out.losses["embedding"]) == 0.0
    assert not torch.allclose(quantised, continuous, atol=1e-4)


def test_a_study_run_trains_and_validates(hand, tmp_path) -> None:
    import study_codebook_bound

    root = write_toy_dataset(tmp_path / "data", hand)
    out = tmp_path / "run"
    assert study_codebook_bound.main(["dvqvae", "--data", str(root), "--out", str(out), "--epochs", "1",
                                      "--batch-size", "4", "--num-points", str(NUM_POINTS), "--no-progress"]) == 0
    epochs = [r for r in map(json.loads, (out / "dvqvae" / "log.jsonl").read_text().splitlines())
              if r["kind"] == "epoch"]
    assert len(epochs) == 1 and epochs[0]["val_vertex_err_mm"] > 0 and epochs[0]["train_embedding"] == 0.0
