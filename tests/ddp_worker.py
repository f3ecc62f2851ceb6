"""Run under ``torchrun`` by test_distributed.py: a straight run and a stopped-then-resumed run, each rank
dumping its final model and optimizer tensors, so the test can compare ranks and runs."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from dvqvae_training.train import distributed
from dvqvae_training.train import TrainConfig, train_dvqvae
from dvqvae_training.train.state import _optimizer_state, module_tensors


def main(data: str, out: str) -> int:
    torch.set_num_threads(1)
    ctx = distributed.from_environment("cpu")
    try:
        base = dict(data_dir=data, num_points=128, batch_size=4, epochs=2, progress=False, log_every_steps=1,
                    save_every_steps=2)
        for name, runs in (("straight", [{}]), ("resumed", [{"max_steps": 4}, {"resume": True}])):
            loops = []
            for extra in runs:
                res = train_dvqvae(TrainConfig(out_dir=f"{out}/{name}", **base, **extra),
                                   on_step=lambda loop, step, stats: loops.append(loop))
            assert res.finished and res.step == 6, (name, res)
            loop = loops[-1]
            tensors = module_tensors(loop.modules["model"])
            tensors.update(_optimizer_state(loop.optimizer)[0])
            save_file(tensors, str(Path(out) / f"{name}-rank{ctx.rank}.safetensors"))
    finally:
        ctx.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
