"""DVQ-VAE training throughput on this CPU: grasps/s of the full training step and where the time goes,
the old defaults (torch's threads, all points in the contact terms) vs each lever vs the optimised
settings (now the defaults of dvqvae-train), side by side in ONE run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_train.py --data data/grasps [--rounds 4 --steps 3]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_train.py --data data/grasps --quick   # seconds, smoke test

Every setting trains its own model (same seed, same batch order) with the real pieces of
``dvqvae-train`` (``open_splits``, ``DVQVAE``, Adam, ``EpochBatchSampler``, the loop's step: loss with
the contact scale, backward, gradient clipping, step). Settings take turns in rounds of ``--steps``
steps (order rotated every round), so the background load of a shared machine hits them alike;
the ratios are what to read, not the absolute rates. Split of a step (ms per step): data (waiting
for the batch), encoders (hand part PointNets, object PointNets, codebooks), decoders (posture,
gating, position; hand-layer calls excluded), hand layer (every MANO pass: GT, gating, decoding),
losses, other forward (bookkeeping), backward, optimizer (zero_grad, clipping, Adam).

Then ``--loss-grasps N``: the old defaults and the optimised settings train side by side from the
same initial weights on the same batches, and the full paper-weighted validation loss and vertex
error (all object points, eval mode) are printed after every N/4 grasps seen: same loss per grasp
seen, or not. ``--ddp``: grasps/s of 2 single-thread processes (DistributedDataParallel, gloo)
vs 1 process with 2 threads vs 1 process with 1 thread, alternating in rounds.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

PHASES = ("data", "encoders", "decoders", "hand_layer", "losses", "other_fwd", "backward", "optimizer")


@dataclass
class Setting:
    """One column of the comparison (the training knobs that differ)."""

    name: str
    threads: int = 0  # 0 = torch's default (all cores: what dvqvae-train used before --num-threads 1)
    batch_size: int = 32
    lr: float = 3e-4
    loss_points: int = 0  # 0 = all points (the default before loss_points=256)
    workers: int = 0


@dataclass
class Trainer:
    setting: Setting
    model: Any
    optimizer: Any
    loader: Any
    sampler: Any
    params: list
    cfg: Any
    it: Any = None
    epoch: int = 0
    times: dict[str, list[float]] = field(default_factory=dict)  # phase -> seconds per round
    grasps: list[int] = field(default_factory=list)  # grasps per round
    walls: list[float] = field(default_factory=list)  # seconds per round
    seen: int = 0


class Timers:
    """Accumulates seconds per phase; the model's methods are wrapped to report into it."""

    def __init__(self) -> None:
        self.acc: dict[str, float] = {}

    def add(self, name: str, dt: float) -> None:
        self.acc[name] = self.acc.get(name, 0.0) + dt


TIMERS = Timers()


def _wrap(obj: Any, attr: str, name: str) -> None:
    fn = getattr(obj, attr)

    def timed(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            TIMERS.add(name, time.perf_counter() - t)

    setattr(obj, attr, timed)


def _instrument(model: Any) -> None:
    if not getattr(model.hand, "_bench", False):  # one hand model may serve several trainers
        _wrap(model.hand, "forward", "hand_layer")
        _gt_hand_timer(model)
        model.hand._bench = True
    for attr in ("encode_hand", "encode_object"):
        _wrap(model, attr, "encoders")
    _wrap(model.hand_codebook, "forward", "encoders")
    _wrap(model.object_codebook, "forward", "encoders")
    _wrap(model, "decode", "decode_incl_hand")


def _patch_losses() -> None:
    import dvqvae_model.nets.dvqvae as dvq

    if getattr(dvq.grasp_losses, "_bench", False):
        return
    fn = dvq.grasp_losses

    def timed(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            TIMERS.add("losses", time.perf_counter() - t)

    timed._bench = True  # type: ignore[attr-defined]
    dvq.grasp_losses = timed


def make_trainer(data_dir: str, s: Setting, hand: Any, seed: int, contact_scale: float,
                 num_points: int = 0) -> Trainer:
    from torch.utils.data import DataLoader

    from dvqvae_model.nets.config import dvqvae_config
    from dvqvae_model.nets.dvqvae import DVQVAE
    from dvqvae_training.train import EpochBatchSampler, TrainConfig
    from dvqvae_training.train.loop import _adam, open_splits, seed_everything

    cfg = TrainConfig(data_dir=data_dir, batch_size=s.batch_size, lr=s.lr, loss_points=s.loss_points,
                      num_workers=s.workers, position_sees_codes=True, contact_scale=contact_scale,
                      contact_warmup=0.0, seed=seed, progress=False, num_points=num_points)
    seed_everything(seed)
    mcfg = dvqvae_config(cfg.preset, position_sees_codes=True, **({"num_points": num_points} if num_points else {}))
    model = DVQVAE(mcfg, hand)
    data = open_splits(cfg, hand, mcfg.num_points)
    model.train()
    _instrument(model)
    opt = _adam(model.parameters(), cfg)
    sampler = EpochBatchSampler(len(data.train), cfg.batch_size, seed)
    loader = DataLoader(data.train, batch_sampler=sampler, num_workers=s.workers,
                        persistent_workers=s.workers > 0)
    t = Trainer(s, model, opt, loader, sampler, [p for p in model.parameters() if p.requires_grad], cfg)
    t.val = data.val  # type: ignore[attr-defined]
    return t


def _next_batch(t: Trainer) -> dict:
    while True:
        if t.it is None:
            t.sampler.set_epoch(t.epoch)
            t.loader.dataset.set_epoch(t.epoch)
            t.it = iter(t.loader)
        try:
            return next(t.it)
        except StopIteration:
            t.it = None
            t.epoch += 1


def train_step(t: Trainer) -> dict[str, float]:
    """One step of the training loop (``_Loop._train_step`` with the DVQ-VAE forward); ms per phase."""
    from dvqvae_training.train.config import scaled_total

    TIMERS.acc = {}
    t0 = time.perf_counter()
    batch = _next_batch(t)
    t1 = time.perf_counter()
    out = t.model(batch["points"], batch["params"], loss_points=t.cfg.loss_points)
    loss = scaled_total(out.losses, t.model.cfg.loss_weights, t.cfg.contact_scale)
    t2 = time.perf_counter()
    t.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    t3 = time.perf_counter()
    torch.nn.utils.clip_grad_norm_(t.params, t.cfg.grad_clip)
    t.optimizer.step()
    t4 = time.perf_counter()
    a = dict(TIMERS.acc)
    dec = a.get("decode_incl_hand", 0.0)
    phases = {"data": t1 - t0, "encoders": a.get("encoders", 0.0), "hand_layer": a.get("hand_layer", 0.0),
              "losses": a.get("losses", 0.0), "backward": t3 - t2, "optimizer": t4 - t3}
    # hand-layer time inside decode: all hand passes minus the GT pass made before decode
    phases["decoders"] = max(0.0, dec - max(0.0, a.get("hand_layer", 0.0) - a.get("gt_hand", 0.0)))
    fwd = t2 - t1
    t.last_fwd = fwd  # type: ignore[attr-defined]
    phases["other_fwd"] = max(0.0, fwd - phases["encoders"] - phases["decoders"] - phases["hand_layer"]
                              - phases["losses"])
    t.seen += int(batch["points"].shape[0])
    return phases


def _gt_hand_timer(model: Any) -> None:
    """Time the GT hand pass (``hand.from_params``) separately so decode's own hand passes can be split off."""
    fn = model.hand.from_params

    def timed(*a: Any, **k: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            TIMERS.add("gt_hand", time.perf_counter() - t)

    model.hand.from_params = timed


def _set_threads(n: int, default: int) -> None:
    torch.set_num_threads(n if n > 0 else default)


def throughput(trainers: list[Trainer], rounds: int, steps: int, default_threads: int, warmup: int) -> None:
    for t in trainers:  # warm-up: first steps pay allocations and k-means initialisation
        _set_threads(t.setting.threads, default_threads)
        for _ in range(warmup):
            train_step(t)
    for r in range(rounds):
        order = trainers[r % len(trainers):] + trainers[:r % len(trainers)]
        for t in order:
            _set_threads(t.setting.threads, default_threads)
            acc = dict.fromkeys(PHASES, 0.0)
            n0 = t.seen
            w0 = time.perf_counter()
            for _ in range(steps):
                for k, v in train_step(t).items():
                    acc[k] += v
            t.walls.append(time.perf_counter() - w0)
            t.grasps.append(t.seen - n0)
            for k, v in acc.items():
                t.times.setdefault(k, []).append(v / steps)


def print_throughput(trainers: list[Trainer]) -> None:
    base = trainers[0]
    rate = {t.setting.name: float(np.median([g / w for g, w in zip(t.grasps, t.walls)])) for t in trainers}
    print(f"\n{'setting':<28}{'grasps/s':>9}{'x old':>9}  " + "".join(f"{p:>11}" for p in PHASES) + "   (ms/step)")
    for t in trainers:
        s = t.setting
        ms = "".join(f"{1000 * float(np.median(t.times[p])):>11.0f}" for p in PHASES)
        print(f"{s.name:<28}{rate[s.name]:>9.1f}{rate[s.name] / rate[base.setting.name]:>9.2f}  {ms}")
    print("settings: " + "; ".join(f"{t.setting.name}: threads={t.setting.threads or 'default'} batch={t.setting.batch_size} "
                                   f"lr={t.setting.lr:g} loss_points={t.setting.loss_points or 'all'} "
                                   f"workers={t.setting.workers}" for t in trainers))


@torch.no_grad()
def validation_loss(t: Trainer, batches: list[dict]) -> tuple[float, float]:
    """Paper-weighted total loss and vertex error (mm) with all points, eval mode."""
    t.model.eval()
    loss, err, n = 0.0, 0.0, 0
    for b in batches:
        out = t.model(b["points"], b["params"])
        gt = t.model.hand.from_params(b["params"]).vertices
        k = b["points"].shape[0]
        loss += float(out.losses["total"]) * k
        err += float((out.decoding.vertices - gt).norm(dim=-1).mean()) * 1000.0 * k
        n += k
    t.model.train()
    return loss / n, err / n


def loss_per_grasp(trainers: list[Trainer], grasps: int, val_grasps: int, default_threads: int) -> None:
    from torch.utils.data import DataLoader, Subset

    val = trainers[0].val  # type: ignore[attr-defined]
    if val is None:
        print("no validation split: loss-per-grasp comparison skipped")
        return
    sub = Subset(val, list(range(min(val_grasps, len(val)))))
    batches = list(DataLoader(sub, batch_size=32))
    checkpoints = [int(round(grasps * q / 4)) for q in range(5)]
    rows: dict[int, dict[str, tuple[float, float]]] = {}
    for t in trainers:
        t.seen = 0
        rows.setdefault(0, {})[t.setting.name] = validation_loss(t, batches)
    nxt = {t.setting.name: 1 for t in trainers}
    walls = {t.setting.name: 0.0 for t in trainers}
    while any(nxt[t.setting.name] < len(checkpoints) for t in trainers):
        for t in trainers:  # one step each, in turn
            name = t.setting.name
            if nxt[name] >= len(checkpoints):
                continue
            _set_threads(t.setting.threads, default_threads)
            w = time.perf_counter()
            train_step(t)
            walls[name] += time.perf_counter() - w
            if t.seen >= checkpoints[nxt[name]]:
                rows.setdefault(checkpoints[nxt[name]], {})[name] = validation_loss(t, batches)
                nxt[name] += 1
    names = [t.setting.name for t in trainers]
    print(f"\nvalidation loss (paper weights, all points) / vertex error mm after N training grasps "
          f"({len(sub)} val grasps; same init, same batch order):")
    print(f"{'grasps':>8}  " + "".join(f"{n:>30}" for n in names))
    for g in sorted(rows):
        cells = "".join(f"{rows[g][n][0]:>20.2f} / {rows[g][n][1]:>6.1f}" if n in rows[g] else f"{'-':>30}"
                        for n in names)
        print(f"{g:>8}  {cells}")
    print("training wall time for these grasps: " + ", ".join(f"{n} {walls[n]:.0f} s" for n in names))


# ----------------------------------------------------------------------------- 2 processes vs 1


def _ddp_worker(rank: int, world: int, data_dir: str, steps: int, rounds: int, port: int, q: Any) -> None:
    import torch.distributed as dist

    from dvqvae_model.hand.hand_model import load_hand_model
    from dvqvae_training.train.distributed import DistContext

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = DistContext(rank=rank, world_size=world, local_rank=rank, initialised_here=True)
    hand = load_hand_model("standin")
    t = make_trainer(data_dir, Setting("ddp", threads=1), hand, 0, 0.02)
    t.sampler = ctx.shard_sampler(t.sampler)
    from torch.utils.data import DataLoader

    t.loader = DataLoader(t.loader.dataset, batch_sampler=t.sampler)
    ddp = ctx.wrap(t.model)
    raw = t.model
    t.model = ddp
    t.model.cfg = raw.cfg  # type: ignore[attr-defined]
    for _ in range(2):
        train_step(t)
        ctx.sync_model(raw)
    for _ in range(rounds):
        dist.barrier()
        if rank == 0:
            q.put(("go", time.perf_counter()))
        n0 = t.seen
        for _ in range(steps):
            train_step(t)
            ctx.sync_model(raw)
        dist.barrier()
        if rank == 0:
            q.put(("done", time.perf_counter(), (t.seen - n0) * world))
    dist.destroy_process_group()


def ddp_comparison(data_dir: str, hand: Any, steps: int, rounds: int) -> None:
    import socket

    import torch.multiprocessing as mp

    singles = [make_trainer(data_dir, Setting(f"1 proc x {n} thread", threads=n), hand, 0, 0.02) for n in (2, 1)]
    for t in singles:
        _set_threads(t.setting.threads, 2)
        for _ in range(2):
            train_step(t)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, data_dir, steps, rounds, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    ddp_rates, single_rates = [], {t.setting.name: [] for t in singles}
    for _ in range(rounds):
        _, t_go = q.get(timeout=1800)
        _, t_done, n = q.get(timeout=1800)
        ddp_rates.append(n / (t_done - t_go))
        for t in singles:  # the DDP pair waits at its barrier meanwhile
            _set_threads(t.setting.threads, 2)
            n0, w0 = t.seen, time.perf_counter()
            for _ in range(steps):
                train_step(t)
            single_rates[t.setting.name].append((t.seen - n0) / (time.perf_counter() - w0))
    for p in procs:
        p.join(timeout=600)
    base = float(np.median(single_rates["1 proc x 2 thread"]))
    print("\nsame global batch (32), alternating rounds:")
    for name, r in [("2 procs x 1 thread (DDP, gloo)", ddp_rates)] + list(single_rates.items()):
        print(f"  {name:<32}{float(np.median(r)):>8.1f} grasps/s   x{float(np.median(r)) / base:.2f} vs 1 proc x 2 threads")


# ----------------------------------------------------------------------------- main


def _toy_data(root: Path) -> str:
    """A tiny dataset for --quick without --data (procedural objects, the toy grasps of the tests)."""
    from dvqvae_model.hand.hand_model import load_hand_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_train import write_toy_dataset

    return str(write_toy_dataset(root, load_hand_model("standin"), grasps=8))


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="", help="dataset directory (default with --quick: a toy set made here)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test in seconds: tiny model input, one step per setting, all single-threaded "
                         "(its ratios mean nothing)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="steps per setting per round")
    ap.add_argument("--loss-grasps", type=int, default=960, help="grasps for the loss-per-grasp comparison (0 = skip)")
    ap.add_argument("--val-grasps", type=int, default=128)
    ap.add_argument("--ddp", action="store_true", help="also 2 single-thread processes vs 1 two-thread process")
    ap.add_argument("--loss-points", type=int, default=256, help="the optimised setting's loss_points")
    ap.add_argument("--contact-scale", type=float, default=0.02, help="contact-term factor (the default model's)")
    args = ap.parse_args(argv)
    default_threads = torch.get_num_threads()
    tmp = None
    if not args.data:
        if not args.quick:
            ap.error("--data is required (except with --quick)")
        tmp = tempfile.TemporaryDirectory()
        args.data = _toy_data(Path(tmp.name) / "toy")
    num_points = 0  # the preset's (1024)
    if args.quick:
        args.rounds, args.steps, args.loss_grasps, args.val_grasps = 1, 1, min(args.loss_grasps, 16), 8
        num_points, args.loss_points = 128, 64
        # a smoke test of every code path: all settings single-threaded, or the 2-thread ones take
        # seconds per step on a loaded 2-core machine (which is what the full run measures)
        default_threads = 1
    from dvqvae_model.hand.hand_model import load_hand_model

    hand = load_hand_model("standin")
    _patch_losses()
    bs = 4 if args.quick else 32
    settings = [
        Setting("old defaults", batch_size=bs),
        Setting("1 thread", threads=1, batch_size=bs),
        Setting(f"loss_points={args.loss_points}", loss_points=args.loss_points, batch_size=bs),
        Setting("1 data worker", workers=1, batch_size=bs),
        Setting("batch x2, lr x2", batch_size=2 * bs, lr=6e-4),
        Setting("optimised (new defaults)", threads=1, loss_points=args.loss_points, batch_size=bs),
    ]
    print(f"torch {torch.__version__}, {os.cpu_count()} cpus, torch default threads {default_threads}, "
          f"interop {torch.get_num_interop_threads()}, load average {os.getloadavg()[0]:.1f}; data {args.data}")
    trainers = [make_trainer(args.data, s, hand, 0, args.contact_scale, num_points) for s in settings]
    throughput(trainers, args.rounds, args.steps, default_threads, warmup=1 if args.quick else 2)
    print_throughput(trainers)
    if args.loss_grasps > 0:
        pair = [make_trainer(args.data, s, hand, 1, args.contact_scale, num_points) for s in (settings[0], settings[-1])]
        loss_per_grasp(pair, args.loss_grasps, args.val_grasps, default_threads)
    if args.ddp:
        ddp_comparison(args.data, hand, 1 if args.quick else args.steps, 1 if args.quick else args.rounds)
    torch.set_num_threads(default_threads)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
