"""Throughput of the grasp synthesizer: accepted grasps per minute per core, acceptance rate,
and where the time goes (object preparation, optimisation, screening, penetration, physics).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_synth.py [--objects 8] [--workers 1] [--hands 96] [--steps 100]

Runs the real pipeline (`dvqvae_training.dataset.data_cli.run_job`: procedural object, grid SDF,
optimisation, checks, pybullet with the object's convex decomposition) on procedural objects of
every family, in 1 process or a pool. Reports wall and CPU time and the projection for the
default training set (20,000 grasps). The first object of each process pays one-off warm-up
(imports, hand prior, first torch call); it is reported separately and left out of the rates.
Convex decompositions go to a temporary cache unless --cache-dir is given, so vhacd time counts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TIMING_KEYS = ("mesh_s", "sdf_s", "vhacd_s", "optimise_s", "screen_s", "penetration_s", "physics_s")


def _job_star(a):
    from dvqvae_training.dataset.data_cli import run_job

    t = time.process_time()
    r = run_job(*a)
    r["cpu_s"] = time.process_time() - t
    r["pid"] = os.getpid()
    return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", type=int, default=8)
    ap.add_argument("--object-seed", type=int, default=123)
    ap.add_argument("--families", default=None)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--hands", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--config", default=None, help="JSON of SynthConfig overrides")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--target", type=int, default=20000, help="grasps of the projected run")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)


    from dvqvae_training.dataset.data_cli import ObjectJob, _worker_init, recipe_list
    from dvqvae_training.synthesis.synthesizer import SynthConfig

    over = json.loads(a.config) if a.config else {}
    if a.hands:
        over["hands_per_object"] = a.hands
    if a.steps:
        over["steps"] = a.steps
    cfg = SynthConfig.from_dict({**SynthConfig().to_dict(), **over})
    fams = a.families.split(",") if a.families else None
    jobs = [ObjectJob("recipe", r.to_dict(), r.object_id) for r in recipe_list(a.objects, a.object_seed, fams)]
    tmp = tempfile.TemporaryDirectory() if a.cache_dir is None else None
    cache = a.cache_dir or tmp.name
    args = [(j, 0, 3000) for j in jobs]
    t0 = time.perf_counter()
    results = []
    if a.workers <= 1:
        _worker_init("standin", cfg.to_dict(), cache)
        # warm-up on a tiny extra object so that the measured objects pay no one-off costs
        w0 = time.perf_counter()
        _job_star((ObjectJob("recipe", recipe_list(1, 999, ["sphere"])[0].to_dict(), "warmup"), 0, 3000))
        warm = time.perf_counter() - w0
        t0 = time.perf_counter()
        for x in args:
            results.append(_job_star(x))
    else:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        w0 = time.perf_counter()
        pool = ctx.Pool(a.workers, initializer=_worker_init, initargs=("standin", cfg.to_dict(), cache))
        warmup_jobs = [(ObjectJob("recipe", r.to_dict(), f"warmup{i}"), 0, 3000) for i, r in enumerate(recipe_list(a.workers, 999, ["sphere"]))]
        pool.map(_job_star, warmup_jobs, chunksize=1)
        warm = time.perf_counter() - w0
        t0 = time.perf_counter()
        results = list(pool.imap_unordered(_job_star, args, chunksize=1))
        pool.close()
        pool.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    acc = sum(r["summary"]["accepted"] for r in ok)
    cand = sum(r["summary"]["candidates"] for r in ok)
    cpu = sum(r["cpu_s"] for r in results)
    tim = {k: sum(r["summary"]["timings"].get(k, 0.0) for r in ok) for k in TIMING_KEYS}
    rej: dict[str, int] = {}
    per_type: dict[str, list[int]] = {}
    for r in ok:
        for k, v in r["summary"]["rejected"].items():
            rej[k] = rej.get(k, 0) + v
        for t, c in r["summary"]["per_type"].items():
            e = per_type.setdefault(t, [0, 0])
            e[0] += c["tried"]
            e[1] += c["accepted"]
    cores = max(1, a.workers)
    per_min_wall = acc / wall * 60
    per_min_core_cpu = acc / max(cpu, 1e-9) * 60
    print(f"config: {cfg.hands_per_object} hands x {cfg.steps} steps, max {cfg.max_grasps_per_object}/object, workers {a.workers}")
    print(f"warm-up (imports, hand prior, first calls; excluded): {warm:.1f} s")
    print(f"{'object':28s} {'acc':>4s} {'cand':>5s} {'wall':>6s} {'opt':>6s} {'phys':>6s} {'pen':>6s} {'prep':>6s}")
    for r in results:
        j = r["job"]
        if "error" in r:
            print(f"{j.object_id:28s} ERROR {r['error']}")
            continue
        t = r["summary"]["timings"]
        prep = t.get("mesh_s", 0) + t.get("sdf_s", 0) + t.get("vhacd_s", 0)
        print(
            f"{j.object_id:28s} {r['summary']['accepted']:4d} {r['summary']['candidates']:5d} {t.get('total_s', 0) + t.get('mesh_s', 0):6.1f} "
            f"{t.get('optimise_s', 0):6.1f} {t.get('physics_s', 0):6.1f} {t.get('penetration_s', 0):6.1f} {prep:6.1f}"
        )
    print(f"objects {len(ok)} ok / {len(results)}, accepted {acc} of {cand} candidates: acceptance {acc / max(1, cand):.1%}")
    print("rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(rej.items(), key=lambda kv: -kv[1]) if v))
    print("per type (accepted/tried): " + ", ".join(f"{t} {v[1]}/{v[0]}" for t, v in per_type.items()))
    tot = sum(tim.values())
    print("time split (summed over objects, s):  " + "  ".join(f"{k[:-2]} {v:.1f} ({v / max(tot, 1e-9):.0%})" for k, v in tim.items()))
    print(f"optimisation vs physics: {tim['optimise_s']:.1f} s vs {tim['physics_s']:.1f} s "
          f"({tim['optimise_s'] / max(acc, 1):.3f} vs {tim['physics_s'] / max(acc, 1):.3f} s per accepted grasp)")
    print(f"wall {wall:.1f} s, cpu {cpu:.1f} s over {cores} worker(s) (cpu/wall = {cpu / wall:.2f})")
    print(f"accepted grasps per minute: {per_min_wall:.1f} (wall, {cores} worker(s)); per core (cpu time): {per_min_core_cpu:.1f}")
    need = 170.0
    proj_2 = a.target / max(per_min_core_cpu * 2, 1e-9)
    print(f"projection: {a.target} grasps on 2 cores at the per-core cpu rate: {proj_2:.0f} min "
          f"({'meets' if proj_2 <= 120 else 'misses'} the 2 h target; needs {need:.0f}/min); "
          f"at the measured wall rate: {a.target / max(per_min_wall, 1e-9):.0f} min")
    if a.json:
        Path(a.json).write_text(json.dumps({
            "accepted": acc, "candidates": cand, "wall_s": wall, "cpu_s": cpu, "timings": tim, "rejected": rej,
            "per_type": per_type, "per_min_wall": per_min_wall, "per_min_core_cpu": per_min_core_cpu, "config": cfg.to_dict(),
        }, indent=1))  # fmt: skip
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
