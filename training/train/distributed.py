"""Data-parallel training under ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on GPU).

    torchrun --nproc-per-node 2 -m dvqvae_training.train.train_cli dvqvae --data data/grasps --out out/ddp

``--batch-size`` stays the *global* batch: each of the W processes takes its 1/W slice of every
batch of the single-process run (same permutation, same per-sample augmentation seeds), and DDP
averages the gradients, so W processes take the steps one process would take with the same
batch, up to float summation order. Rank 0 alone writes logs, training states and the final
checkpoint; every rank resumes from the same state (identical weights, Adam moments and RNG).

What DDP does not cover is synchronised here (``DistContext.sync_model`` after every optimiser
step): the codebooks change their weights *inside* the forward pass (k-means initialisation on
the first batch, revival of dead codes from recent encoder outputs) and keep usage statistics
in buffers; each rank would drift on its own data. Rank 0's codebook weights and all buffers are
broadcast after each step, so ranks stay identical (usage statistics: rank 0's slice).
Stop decisions (time budget, signals) are agreed by all ranks (``any_rank``), so none is left
waiting in a collective.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import nn


@dataclass
class DistContext:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def agree_on(self, reason: Optional[str], order: tuple[str, ...]) -> Optional[str]:
        """The last of ``order`` that any rank reports (None when no rank reports one)."""
        code = 0 if reason is None else order.index(reason) + 1
        t = torch.tensor([code], dtype=torch.int32)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return None if int(t.item()) == 0 else order[int(t.item()) - 1]

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to run training forwards through (DDP when distributed, else ``model``)."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        dev = next(model.parameters()).device
        ids = [dev.index] if dev.type == "cuda" else None
        import inspect

        # buffers are synchronised after each step by ``sync_model`` instead (newer torch renames the flag)
        flag = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters \
            else "broadcast_buffers"
        return DistributedDataParallel(model, device_ids=ids, **{flag: False})

    @torch.no_grad()
    def sync_model(self, model: nn.Module) -> None:
        """Broadcast rank 0's codebook weights and buffers (changed outside autograd) to all ranks."""
        if not self.enabled:
            return
        from dvqvae_model.nets.codebook import Codebook

        tensors = []
        for m in model.modules():
            if isinstance(m, Codebook):
                tensors.append(m.weight.data)
        from dvqvae_model.hand.hand_model import HandModel

        hand_prefixes = tuple(n + "." for n, m in model.named_modules() if n and isinstance(m, HandModel))
        tensors += [b for n, b in model.named_buffers() if not n.startswith(hand_prefixes)]
        for t in tensors:
            torch.distributed.broadcast(t, 0)
        for m in model.modules():  # Python-side counters that mirror the buffers
            if isinstance(m, Codebook):
                m.last_revived = int(self._broadcast_int(m.last_revived))

    def _broadcast_int(self, v: int) -> int:
        t = torch.tensor([int(v)], dtype=torch.int64)
        torch.distributed.broadcast(t, 0)
        return int(t.item())

    def shard_sampler(self, sampler: Any) -> Any:
        """This rank's slice of every batch of ``sampler`` (an ``EpochBatchSampler``)."""
        return sampler if not self.enabled else RankSlice(sampler, self.rank, self.world_size)

    def close(self) -> None:
        global _CURRENT
        if self.initialised_here and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        if _CURRENT is self:
            _CURRENT = DistContext()


class RankSlice:
    """Batch sampler wrapper: rank r of W gets ``batch[r*B/W:(r+1)*B/W]`` of each global batch."""

    def __init__(self, sampler: Any, rank: int, world_size: int) -> None:
        if sampler.batch_size % world_size:
            raise ValueError(f"batch size {sampler.batch_size} is not divisible by the {world_size} processes")
        self.sampler, self.rank, self.world_size = sampler, rank, world_size

    def __getattr__(self, name: str) -> Any:  # set_epoch, num_batches, batch_size, ...
        return getattr(self.sampler, name)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.sampler:
            if len(batch) % self.world_size:
                raise ValueError(f"a batch of {len(batch)} cannot be split over {self.world_size} processes")
            k = len(batch) // self.world_size
            yield batch[self.rank * k:(self.rank + 1) * k]

    def __len__(self) -> int:
        return len(self.sampler)


_CURRENT = DistContext()


def current() -> DistContext:
    """The context of this process (set by ``from_environment``; a single process by default)."""
    return _CURRENT


def from_environment(device: str = "cpu") -> DistContext:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1), else a single-process context.

    Backend: nccl for CUDA devices, gloo otherwise. Sets this process's CUDA device from LOCAL_RANK.
    """
    global _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _CURRENT = DistContext()
        return _CURRENT
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
    here = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        here = True
    _CURRENT = DistContext(rank=rank, world_size=world, local_rank=local, initialised_here=here)
    return _CURRENT


def rank_device(device: str, ctx: Optional[DistContext]) -> str:
    """``cuda`` -> ``cuda:<local_rank>`` under torchrun; other devices unchanged."""
    if ctx is not None and ctx.enabled and device == "cuda":
        return f"cuda:{ctx.local_rank}"
    return device
