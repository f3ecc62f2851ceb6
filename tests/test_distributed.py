"""Data-parallel training under torchrun: 2 CPU processes (gloo) stay identical, resume exactly, and the
CLI writes one checkpoint from rank 0. Each launch takes a few seconds (two interpreters start)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dvqvae_model.hand.hand_model import load_hand_model
from dvqvae_training.train.distributed import RankSlice
from dvqvae_training.train import EpochBatchSampler, read_training_state
from test_train import write_toy_dataset

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m torch.distributed.run`` with 2 CPU processes of this interpreter (the venv's code)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), load_hand_model("standin"))


def test_rank_slices_partition_each_global_batch():
    s = EpochBatchSampler(12, 4, seed=3)
    parts = [RankSlice(s, r, 2) for r in range(2)]
    s.set_epoch(1)
    whole = list(s)
    assert [a + b for a, b in zip(*(list(p) for p in parts))] == whole
    assert parts[0].num_batches() == 3 and len(parts[1]) == 3
    with pytest.raises(ValueError, match="divisible"):
        RankSlice(EpochBatchSampler(12, 3, 0), 0, 2)


def test_two_processes_agree_and_resume_exactly(data_root, tmp_path):
    proc = torchrun(str(HERE / "ddp_worker.py"), str(data_root), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    runs = {(name, r): load_file(str(tmp_path / f"{name}-rank{r}.safetensors"))
            for name in ("straight", "resumed") for r in (0, 1)}
    ref = runs[("straight", 0)]
    assert any(k.startswith("optim.") for k in ref) and any(k.endswith("hand_codebook.weight") for k in ref)
    for key, tensors in runs.items():
        assert set(tensors) == set(ref), key
        for k in ref:  # ranks identical; the resumed run equals the straight one
            torch.testing.assert_close(tensors[k], ref[k], rtol=0, atol=0, msg=lambda m: f"{key} {k}: {m}")
    # only rank 0 writes: one log with each step once, one state
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "dvqvae" / "log.jsonl").read_text().splitlines()
             if '"kind": "step"' in x]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert read_training_state(tmp_path / "resumed" / "dvqvae" / "state")["step"] == 6


def test_torchrun_cli(data_root, tmp_path):
    out = tmp_path / "run"
    args = ["-m", "dvqvae_training.train.train_cli", "dvqvae", "--data", str(data_root), "--out", str(out), "--epochs", "1",
            "--batch-size", "4", "--num-points", "128", "--no-progress"]
    proc = torchrun(*args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 1 and lines[0]["finished"]  # rank 0 reports
    meta = json.loads((out / "dvqvae" / "checkpoint" / "config.json").read_text())
    assert meta["extra"]["world_size"] == 2
    bad = torchrun("-m", "dvqvae_training.train.train_cli", "prior", "--data", str(data_root), "--out", str(out))
    assert bad.returncode != 0 and "does not run under torchrun" in bad.stderr  # torchrun exits 1 when ranks fail
