"""``GraspGenerator.generate`` with the node's settings: where the time goes, variants side by side.

    python benchmarks/bench_generate.py [--quick] [--threads 1] [--candidates 32,64,96] [--model default]

Each variant is one generator on the same model; every round calls each of them once on the same
cloud (3,000 points on the bundled mug) in a shuffled order (interleaved, so load from other processes hits all
alike) and the table gives each variant's p50 per stage (``GraspSet.timing``: preprocess, graph,
ranking, refinement, total) and its total's ratio to the first row. Rows:

* ``defaults``: ``DEFAULTS.generator_options()`` as the node runs it (the graph scores by the prior
  alone; the ranking measures the geometry);
* ``graph geometry``: the same with the graph's own geometric score as well (``ScoreWeights()``, as
  before the graph learnt to skip it; same grasps, same scores);
* ``logistic, no gravity``: the logistic fall model instead of the trees (``StabilityModel(trees="")``)
  and gravity unknown (no weight-carrying features): what the trees and gravity cost;
* ``no displacement estimate``: no displacement trees (``QualityWeights(displacement_model="")``):
  the weighted score with the fall probability, as before the estimated Q; what those trees cost;
* ``cloud penetration term``: neither learnt estimate (``penetration_model=""``,
  ``displacement_model=""``): the cloud's own term ranks; what the estimates and their view-shadow
  features cost;
* ``N candidates``: the defaults with another candidate count (``--candidates``);
* ``raw``: ranking off, K sampled (the path for callers that need it faster).

The bundled model's weights (``--model``); K = ``--grasps`` (8, the node's default).
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch
import trimesh

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from dvqvae_model.checkpoint import DEFAULT_MODEL_DIR, resolve_checkpoint  # noqa: E402
from dvqvae_model.nets.sampling_graph import ScoreWeights  # noqa: E402
from dvqvae_model.pipeline.defaults import DEFAULTS  # noqa: E402
from dvqvae_model.pipeline.grasp_quality import QualityWeights  # noqa: E402
from dvqvae_model.pipeline.stability import StabilityModel  # noqa: E402
from dvqvae_model.pipeline.generator import GraspGenerator  # noqa: E402
from dvqvae_model.sim.sample_objects import sample_object  # noqa: E402

STAGES = ("preprocess_ms", "inference_ms", "rank_ms", "refine_ms", "total_ms")


def variants(args) -> dict[str, GraspGenerator]:
    path = resolve_checkpoint(args.model, default_dir=DEFAULT_MODEL_DIR)
    opts = DEFAULTS.generator_options()
    logistic = QualityWeights(stability_model=StabilityModel(trees=""))
    out = {"defaults": GraspGenerator.from_checkpoint(path, **opts),
           "graph geometry": GraspGenerator.from_checkpoint(path, score_weights=ScoreWeights(), **opts),
           "logistic, no gravity": GraspGenerator.from_checkpoint(path, quality_weights=logistic,
                                                                  **{**opts, "gravity": None}),
           "no displacement estimate": GraspGenerator.from_checkpoint(
               path, quality_weights=QualityWeights(displacement_model=""), **opts),
           "cloud penetration term": GraspGenerator.from_checkpoint(
               path, quality_weights=QualityWeights(penetration_model="", displacement_model=""), **opts)}
    for c in (int(x) for x in args.candidates.split(",") if x.strip()):
        if c != DEFAULTS.candidates:
            out[f"{c} candidates"] = GraspGenerator.from_checkpoint(path, **{**opts, "candidates": c})
    out["raw"] = GraspGenerator.from_checkpoint(path, **{**opts, "ranking": False, "refine": False})
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 timed rounds instead of 30")
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (the node's worker: 1)")
    ap.add_argument("--grasps", type=int, default=DEFAULTS.num_grasps)
    ap.add_argument("--candidates", default="32,96", help="other candidate counts to time beside the default")
    ap.add_argument("--model", default="default")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rounds = args.rounds or (8 if args.quick else 30)
    cloud = np.asarray(trimesh.sample.sample_surface(sample_object("mug"), 3000, seed=0)[0], np.float32)
    gens = variants(args)
    for g in gens.values():  # warm-up: lazy set-up is not on the clock
        for s in range(2):
            g.generate(cloud, args.grasps, seed=s)
    times: dict[str, list[dict[str, float]]] = {name: [] for name in gens}
    rng = random.Random(0)
    for r in range(rounds):
        order = list(gens)
        rng.shuffle(order)
        for name in order:
            times[name].append(gens[name].generate(cloud, args.grasps, seed=100 + r).timing)
    base = float(np.median([t["total_ms"] for t in times["defaults"]]))
    print(f"generate() on a 3000-point mug cloud, K={args.grasps}, {args.threads} thread(s), {rounds} interleaved rounds "
          f"(p50 ms per stage):")
    print(f"  {'variant':<26}" + "".join(f"{s[:-3]:>12}" for s in STAGES) + f"{'vs defaults':>13}")
    for name, ts in times.items():
        med = {s: float(np.median([t[s] for t in ts])) for s in STAGES}
        print(f"  {name:<26}" + "".join(f"{med[s]:>12.1f}" for s in STAGES) + f"{med['total_ms'] / base:>12.2f}x")


if __name__ == "__main__":
    main()
