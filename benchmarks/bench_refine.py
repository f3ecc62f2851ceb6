"""Refinement speed: the exact cloud search vs the grid surface, side by side in one run.

    python benchmarks/bench_refine.py [--data data/grasps] [--split test] [--max-objects 5] [--ids-file F]

For the objects of ``bench_ranking.py`` (full cloud + one depth view each), the node's path:
32 candidates ranked, the best 8 refined by ``GraspGenerator`` (which keeps a refined grasp only if
its exact score rose), with two refinement set-ups:

* ``exact`` (``RefineConfig`` defaults): the signed distance by a nearest-point search over the
  cloud at every step, 40 closure iterations, the object-in-hand search over every hand vertex;
* ``fast``: the cloud's signed distance sampled once on a 32^3 grid and interpolated
  (``GridSurface``; the chosen iterate checked on the exact surface), 15 closure iterations,
  every second hand vertex in the object-in-hand search;

each with 20 steps and no time limit (same work: per-call time and the ratio), and within the
node's budget of 60 ms and a 150 ms one (steps taken). Quality with the independent metrics
(penetration volume on a 1 mm lattice, simulated displacement, Q), as in ``bench_ranking.py``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ranking import Q_WEIGHTS, Evaluator, partial_view, pick_objects  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "grasps"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--ids-file", default="")
    ap.add_argument("--max-objects", type=int, default=5)
    ap.add_argument("--grasps", type=int, default=8)
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per setting and cloud (median)")
    args = ap.parse_args(argv)

    from dvqvae_model.checkpoint import DEFAULT_MODEL_DIR, resolve_checkpoint
    from dvqvae_model.pipeline.generator import GraspGenerator
    from dvqvae_model.pipeline.refine import RefineConfig

    path = resolve_checkpoint("default", default_dir=DEFAULT_MODEL_DIR)
    exact = {k: getattr(RefineConfig(), k) for k in ("grid", "closure_iters", "hand_stride")}
    fast = dict(grid=32, closure_iters=15, hand_stride=2)
    budgets = (("20 steps", 20, 1e3), ("60 ms", 1000, 0.06), ("150 ms", 1000, 0.15))
    settings = [(f"{kind} {label}", RefineConfig(steps=steps, max_time_s=t, **kw))
                for label, steps, t in budgets for kind, kw in (("exact", exact), ("fast", fast))]
    gens = {name: GraspGenerator.from_checkpoint(path, ranking=True, refine=True, candidates=args.candidates,
                                                 refine_config=cfg) for name, cfg in settings}
    gens["rank only"] = GraspGenerator.from_checkpoint(path, ranking=True, refine=False, candidates=args.candidates)
    objects = pick_objects(args.data, args.split, args.max_objects, args.ids_file)
    for g in gens.values():
        g.generate(objects[0].points, 4, seed=0, candidates=8)
    print(f"{len(objects)} {args.split} objects ({', '.join(o.name for o in objects)}), full + one depth view; "
          f"K = {args.grasps} of {args.candidates}; exact {exact}, fast {fast}", flush=True)
    rows = {name: {"pen": [], "disp": [], "ms": [], "steps": []} for name in gens}
    for oi, obj in enumerate(objects):
        ev = Evaluator(obj.mesh, gens["rank only"].hand, 0.001)
        try:
            for view, cloud in (("full", obj.points), ("partial", partial_view(obj.mesh, 1000 + oi))):
                for name, g in gens.items():
                    times, steps = [], []
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        gs = g.generate(cloud, args.grasps, seed=100 + oi)
                        times.append(1e3 * (time.perf_counter() - t0))
                        steps.append(getattr(g, "last_refine_info", {}).get("steps", 0) if g.refine else 0)
                    m = ev(gs.vertices)
                    r = rows[name]
                    r["pen"].append(m["pen"])
                    r["disp"].append(m["disp"])
                    r["ms"].append(float(np.median(times)))
                    r["steps"].append(float(np.median(steps)))
        finally:
            ev.close()
        print(f"  object {oi + 1}/{len(objects)} {obj.name} done", flush=True)
    print("\n| setting | refine steps (median) | generate p50 ms | pen. cm^3 | disp. cm | Q |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        pen, disp = np.concatenate(r["pen"]).mean(), np.concatenate(r["disp"]).mean()
        print(f"| {name} | {np.median(r['steps']):.0f} | {np.median(r['ms']):.0f} | {pen:.2f} | {disp:.2f} | "
              f"{Q_WEIGHTS[0] * pen + Q_WEIGHTS[1] * disp:.2f} |")
    base = np.median(rows["rank only"]["ms"])
    e, f = np.median(rows["exact 20 steps"]["ms"]) - base, np.median(rows["fast 20 steps"]["ms"]) - base
    print(f"\n20 refinement steps: exact {e:.0f} ms, fast {f:.0f} ms per call beyond ranking "
          f"({base:.0f} ms): {e / max(f, 1e-9):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
