"""Inference latency and memory: DVQ-VAE vs GraspCVAE x eager / TorchScript / ONNX Runtime, side by side.

    python benchmarks/bench_inference.py [--quick] [--threads 2] [--grasps 1,16,64] [--profile] [--json out.json]

What is timed: one call of the sampling graph (``GraspGenerator.run_graph``: encoders -> prior ->
decoders -> hand layers -> scores) on a centred cloud of 3,000 points for K grasps, i.e. the part
the backends accelerate; a separate line times ``generate()`` end to end (preprocessing of a raw
20k-point cloud included) for K = 16. All (model, backend, K) cells are measured in the same process
and *interleaved* (every round visits every cell in a shuffled order), so load from other processes
on a shared machine hits all cells alike and the ratios stay meaningful when absolute numbers do not.

Models are the compact presets with untrained (seeded random) weights: fine for timing, since the
work per call does not depend on the weights' values. Peak memory is the RSS growth (peak minus the
RSS before loading the backend) in a fresh child process per (model, backend) running K = max.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from dvqvae_model.runtime.parity import probe_points
from dvqvae_model.nets.config import cvae_config, dvqvae_config, prior_config  # noqa: E402
from dvqvae_model.nets.cvae import GraspCVAE  # noqa: E402
from dvqvae_model.nets.dvqvae import DVQVAE  # noqa: E402
from dvqvae_model.pipeline.generator import GraspGenerator  # noqa: E402
from dvqvae_model.hand.hand_model import load_hand_model  # noqa: E402
from dvqvae_model.nets.prior import GatedPixelCNNPrior  # noqa: E402

MODELS = ("dvqvae", "cvae")
BACKENDS = ("eager", "torchscript", "onnx")
TARGET_DVQVAE_K16_MS = 40.0
TARGET_MODEL_RATIO = 3.0
TARGET_EXPORT_SPEEDUP = 1.5


def build_generator(kind: str, num_points: int, backend: str = "eager", cache_dir: Optional[str] = None,
                    hand: Any = None) -> GraspGenerator:
    """Compact preset, untrained seeded weights (codebook spread as after training)."""
    hand = hand or load_hand_model("standin")
    opts = {"cache_dir": cache_dir} if backend != "eager" else None
    torch.manual_seed(0)
    if kind == "dvqvae":
        cfg = dvqvae_config("compact", num_points=num_points)
        model = DVQVAE(cfg, hand).eval()
        with torch.no_grad():
            model.hand_codebook.weight.normal_()
        prior = GatedPixelCNNPrior(prior_config("compact", cfg)).eval()
        return GraspGenerator(model, prior, hand=hand, backend=backend, backend_options=opts)
    model = GraspCVAE(cvae_config("compact", num_points=num_points), hand).eval()
    return GraspGenerator(model, hand=hand, backend=backend, backend_options=opts)


def raw_cloud(n: int = 20000, seed: int = 0) -> np.ndarray:
    """A raw object cloud in a camera-like frame (offset, not centred, more points than the model takes)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d * np.array([0.05, 0.035, 0.03]) + np.array([0.1, -0.05, 0.7]) + rng.normal(scale=1e-3, size=(n, 3))


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - psutil missing: fall back to /proc
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _memory_child(kind: str, backend: str, num_points: int, grasps: int, cache_dir: str, threads: int,
                  queue: Any) -> None:
    import gc
    import threading

    torch.set_num_threads(threads)
    hand = load_hand_model("standin")
    base_gen = build_generator(kind, num_points, "eager", hand=hand)
    points = probe_points(num_points)
    noise = base_gen.make_noise(grasps, 0)
    gc.collect()
    before = _rss_bytes()
    polled = [before]
    stop = threading.Event()
    exact = _reset_peak_rss()
    if not exact:  # no resettable peak counter: poll RSS while the backend loads and runs
        def poll() -> None:
            while not stop.is_set():
                polled.append(_rss_bytes())
                time.sleep(0.002)

        threading.Thread(target=poll, daemon=True).start()
    gen = base_gen if backend == "eager" else build_generator(kind, num_points, backend, cache_dir, hand=hand)
    for _ in range(3):
        gen.run_graph(points, noise, 1.0, None)
    stop.set()
    peak = _peak_rss_bytes() if exact else max(polled)
    queue.put({"kind": kind, "backend": backend, "rss_before_mb": before / 2**20,
               "method": "VmHWM" if exact else "poll",
               "peak_delta_mb": max(0, peak - before) / 2**20, "peak_rss_mb": peak / 2**20})


def measure_memory(num_points: int, grasps: int, cache_dir: str, threads: int) -> list[dict]:
    """Peak RSS growth per (model, backend), each in a fresh process (so peaks do not mask each other)."""
    ctx = mp.get_context("spawn")
    out = []
    for kind in MODELS:
        for backend in BACKENDS:
            q = ctx.Queue()
            p = ctx.Process(target=_memory_child, args=(kind, backend, num_points, grasps, cache_dir, threads, q))
            p.start()
            try:
                out.append(q.get(timeout=600))
            finally:
                p.join(timeout=60)
    return out


def profile_eager(gen: GraspGenerator, grasps: int = 16, rows: int = 12) -> str:
    """Stage breakdown (perf_counter) and torch.profiler top ops of one eager DVQ-VAE call."""
    graph = gen.graph(None)
    m, prior = gen.model, gen.prior
    points = probe_points(gen.num_points)
    noise = gen.make_noise(grasps, 0)
    temp = torch.tensor(1.0)

    def best_of(fn, n=7) -> float:
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts)) * 1e3

    lines = []
    with torch.inference_mode():
        for _ in range(2):
            graph(points, noise, temp)
        z_t, z_p = m.encode_object(points)
        obj = m.object_tokens(z_t).expand(grasps)
        tokens, lp = prior.sample(obj, noise, temp)
        codes = m.hand_codes_from_tokens(tokens)
        zt, zp = z_t.expand(grasps, -1), z_p.expand(grasps, -1)
        dec = m.decode(codes, zt, zp)
        stages = {
            "total graph": best_of(lambda: graph(points, noise, temp)),
            "object encoders (2 PointNets, N pts)": best_of(lambda: m.encode_object(points)),
            "prior (6 Gumbel-max steps)": best_of(lambda: prior.sample(obj, noise, temp)),
            "decode (posture+gating+2 hand layers+position PointNet)": best_of(lambda: m.decode(codes, zt, zp)),
            "  of which position PointNet (K x 256 vertices)": best_of(
                lambda: m._position_feature(dec.canonical_vertices)),
            "score (penetration + contact)": best_of(lambda: graph.scorer(points, dec.vertices, dec.keypoints, lp)),
        }
        lines.append(f"eager DVQ-VAE stage times at K={grasps} (median of 7, ms):")
        lines += [f"  {k:<58s} {v:7.2f}" for k, v in stages.items()]
        from torch.profiler import profile

        with profile() as prof:
            for _ in range(3):
                graph(points, noise, temp)
        lines.append(f"torch.profiler, 3 eager calls at K={grasps}, top ops by self CPU time:")
        lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    grasps = [int(k) for k in args.grasps.split(",")]
    cache_dir = args.cache_dir
    hand = load_hand_model("standin")
    load0 = os.getloadavg()
    print(f"# bench_inference: torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} threads, "
          f"N={args.num_points}, K={grasps}, rounds={args.rounds}, load avg {load0[0]:.2f}")
    print("# compact presets, UNTRAINED (seeded) weights: timing only; work per call is weight-independent")

    gens: dict[tuple[str, str], GraspGenerator] = {}
    build_s: dict[str, float] = {}
    for kind in MODELS:
        for backend in BACKENDS:
            t = time.perf_counter()
            gens[(kind, backend)] = build_generator(kind, args.num_points, backend, cache_dir, hand=hand)
            build_s[f"{kind}/{backend}"] = time.perf_counter() - t
    print("# backend build/load (s): " + ", ".join(f"{k} {v:.1f}" for k, v in build_s.items()))

    points = probe_points(args.num_points)
    noise = {(kind, k): gens[(kind, "eager")].make_noise(k, 0) for kind in MODELS for k in grasps}
    cells = [(kind, backend, k) for kind in MODELS for backend in BACKENDS for k in grasps]
    samples: dict[tuple[str, str, int], list[float]] = {c: [] for c in cells}
    for c in cells:  # warm-up (TorchScript's profiling executor optimises after a couple of runs)
        for _ in range(args.warmup):
            gens[c[:2]].run_graph(points, noise[(c[0], c[2])], 1.0, None)
    rng = random.Random(0)
    for _ in range(args.rounds):
        order = cells[:]
        rng.shuffle(order)
        for kind, backend, k in order:
            g = gens[(kind, backend)]
            t = time.perf_counter()
            g.run_graph(points, noise[(kind, k)], 1.0, None)
            samples[(kind, backend, k)].append((time.perf_counter() - t) * 1e3)
    stats = {c: (float(np.percentile(v, 50)), float(np.percentile(v, 95))) for c, v in samples.items()}

    # end to end generate() for K = 16 with every backend (raw 20k-point cloud, FPS to N, map back)
    e2e: dict[tuple[str, str], float] = {}
    cloud = raw_cloud()
    e2e_rounds = max(3, args.rounds // 4)
    e2e_samples: dict[tuple[str, str], list[float]] = {(kind, b): [] for kind in MODELS for b in BACKENDS}
    for key in e2e_samples:
        gens[key].generate(cloud, 16, seed=0)
    for r in range(e2e_rounds):
        for key in e2e_samples:
            t = time.perf_counter()
            gens[key].generate(cloud, 16, seed=r)
            e2e_samples[key].append((time.perf_counter() - t) * 1e3)
    e2e = {key: float(np.median(v)) for key, v in e2e_samples.items()}

    # ------------------------------------------------------------------ report
    print()
    print(f"{'model':<7} {'backend':<12} {'K':>3} {'p50 ms':>8} {'p95 ms':>8} {'eager/this':>11}")
    for kind, backend, k in cells:
        p50, p95 = stats[(kind, backend, k)]
        speed = stats[(kind, "eager", k)][0] / p50
        print(f"{kind:<7} {backend:<12} {k:>3} {p50:8.2f} {p95:8.2f} {speed:10.2f}x")
    print()
    print("ratio DVQ-VAE / GraspCVAE (p50, same backend):")
    for backend in BACKENDS:
        ratios = "  ".join(f"K={k}: {stats[('dvqvae', backend, k)][0] / stats[('cvae', backend, k)][0]:.2f}x"
                           for k in grasps)
        print(f"  {backend:<12} {ratios}")
    print("ratio backend / eager (p50 latency; < 1 is faster):")
    for kind in MODELS:
        for backend in BACKENDS[1:]:
            ratios = "  ".join(f"K={k}: {stats[(kind, backend, k)][0] / stats[(kind, 'eager', k)][0]:.2f}"
                               for k in grasps)
            print(f"  {kind:<7} {backend:<12} {ratios}")
    print("end to end generate(), K=16, raw 20k-point cloud (median ms): "
          + ", ".join(f"{kind}/{b} {v:.1f}" for (kind, b), v in e2e.items()))

    memory: list[dict] = []
    if not args.no_memory:
        memory = measure_memory(args.num_points, max(grasps), cache_dir, args.threads)
        print(f"peak memory, K={max(grasps)}: RSS growth while loading the backend and running it 3x "
              "(fresh process each; model weights already in memory):")
        for m in memory:
            print(f"  {m['kind']:<7} {m['backend']:<12} +{m['peak_delta_mb']:7.1f} MB   "
                  f"(peak RSS {m['peak_rss_mb']:.0f} MB)")

    # targets
    k_ref = 16 if 16 in grasps else grasps[len(grasps) // 2]
    best = min(BACKENDS, key=lambda b: stats[("dvqvae", b, k_ref)][0])
    best_ms = stats[("dvqvae", best, k_ref)][0]
    best_cvae = min(BACKENDS, key=lambda b: stats[("cvae", b, k_ref)][0])
    model_ratio = best_ms / stats[("cvae", best_cvae, k_ref)][0]
    exported = [b for b in BACKENDS if b != "eager"]
    best_exp = min(exported, key=lambda b: stats[("dvqvae", b, k_ref)][0])
    speedup = stats[("dvqvae", "eager", k_ref)][0] / stats[("dvqvae", best_exp, k_ref)][0]
    targets = {
        f"DVQ-VAE K={k_ref} p50 with the best CPU backend <= {TARGET_DVQVAE_K16_MS:.0f} ms":
            (f"{best} {best_ms:.1f} ms", best_ms <= TARGET_DVQVAE_K16_MS),
        f"DVQ-VAE / GraspCVAE (best backend each, K={k_ref}) <= {TARGET_MODEL_RATIO:.0f}x":
            (f"{model_ratio:.2f}x", model_ratio <= TARGET_MODEL_RATIO),
        f"best exported backend >= {TARGET_EXPORT_SPEEDUP}x faster than eager (DVQ-VAE, K={k_ref})":
            (f"{best_exp} {speedup:.2f}x", speedup >= TARGET_EXPORT_SPEEDUP),
    }
    print("targets (2-core CPU, compact):")
    for name, (value, ok) in targets.items():
        print(f"  [{'PASS' if ok else 'MISS'}] {name}: {value}")
    load1 = os.getloadavg()
    print(f"# load average at the end {load1[0]:.2f} (other processes share the CPUs: absolute times are noisy, "
          "ratios are measured side by side)")

    if args.profile:
        print()
        print(profile_eager(gens[("dvqvae", "eager")], grasps=k_ref))

    return {
        "env": {"torch": torch.__version__, "cpus": os.cpu_count(), "threads": args.threads,
                "machine": platform.machine(), "num_points": args.num_points, "rounds": args.rounds,
                "load_avg_start": load0[0], "load_avg_end": load1[0], "untrained_weights": True},
        "latency_ms": {f"{kind}/{b}/K={k}": {"p50": stats[(kind, b, k)][0], "p95": stats[(kind, b, k)][1]}
                       for kind, b, k in cells},
        "end_to_end_ms_K16": {f"{kind}/{b}": v for (kind, b), v in e2e.items()},
        "memory": memory,
        "build_seconds": build_s,
        "targets": {k: {"value": v, "met": ok} for k, (v, ok) in targets.items()},
    }


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds (a fast smoke run)")
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch / ORT intra-op threads")
    p.add_argument("--num-points", type=int, default=3000)
    p.add_argument("--grasps", default="1,16,64", help="comma-separated K values")
    p.add_argument("--rounds", type=int, default=0, help="timed rounds per cell (default 30, quick 8)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--cache-dir", default="", help="artifact cache (default: a fresh temp dir)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-backend peak-memory processes")
    p.add_argument("--profile", action="store_true", help="stage breakdown + torch.profiler of eager DVQ-VAE")
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args(argv)
    if args.rounds <= 0:
        args.rounds = 8 if args.quick else 30
    if args.quick:
        args.warmup = min(args.warmup, 2)
    own_cache = not args.cache_dir
    if own_cache:
        args.cache_dir = tempfile.mkdtemp(prefix="dvqvae-bench-")
    try:
        result = run(args)
    finally:
        if own_cache:
            import shutil

            shutil.rmtree(args.cache_dir, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
