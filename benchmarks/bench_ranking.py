"""What the node publishes, setting by setting: quality and latency side by side in one run.

    python benchmarks/bench_ranking.py [--max-objects 6] [--split test] [--data data/grasps] [--pitch-mm 1]

For test-split objects (evenly spread over the split's families; ``--max-objects`` bounds the run),
two input clouds each: the full surface cloud of the data set and one simulated depth view
(``dvqvae_model.depth_camera``, RealSense-like noise, a seeded random viewpoint). For K = 8 and
K = 16 and each generator setting:

* ``raw``             the sampling graph alone: K grasps as the model ranks them;
* ``rank Cx``         C x K candidates ranked by ``grasp_quality``, the best K kept (the node's score:
                      minus the estimated Q; C x K = 64 for K = 8 is the node's default);
* ``rank Cx no disp est`` the same ranked by the previous score (no displacement estimate: the
                      weighted sum with the fall probability);
* ``rank+refine``     ranked, then refined with the node's refine_steps / refine_time_ms (20 / 60 ms);
* ``rank+refine 150ms`` ranked, refined with 40 steps / 150 ms;
* ``rank+refine long`` ranked, refined with a generous budget (what offline use can afford).

Quality with the independent metrics of ``dvqvae-eval`` (``dvqvae_training.evaluate.metrics`` /
``physics``): contact %, penetration volume (cm^3, ``--pitch-mm`` lattice), simulated
displacement (cm), pooled diversity entropy (k-means, k = 20, over all kept grasps of a setting),
Q = 0.301 pen + 0.699 disp; latency = p50 wall time of one ``generate`` call (after a warm-up).
Then the rank correlation (Spearman, within each object's candidates, averaged) of the ranking
score, of each of its terms and of each stability feature
(``f_<name>``, ``dvqvae_model.pipeline.stability``) with penetration and displacement, against the
graph's own score.

Candidates are evaluated once per cloud: the raw K and the ranked settings are subsets of the same
seeded candidate set (checked), so only refined grasps need new simulations.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from dvqvae_training.evaluate.evaluate import partial_view  # noqa: E402  (one depth view; shared with dvqvae-eval)

Q_WEIGHTS = (0.301, 0.699)


def pick_objects(data: str, split: str, max_objects: int, ids_file: str = ""):
    """Test objects evenly spread over the split (ids are sorted by family); with ``ids_file`` only
    among the ids listed there (a data set that is still growing gives the same selection)."""
    from dvqvae_training.dataset.dataset_format import DatasetReader
    from dvqvae_training.dataset.datasets import mesh_from_source
    from dvqvae_training.evaluate.evaluate import TestObject

    reader = DatasetReader(data)
    ids = reader.object_ids(split)
    if ids_file:
        present = set(ids)
        ids = [i for i in Path(ids_file).read_text().split() if i in present]
    if not ids:
        raise SystemExit(f"{data}: split {split!r} has no objects")
    n = min(len(ids), max_objects) if max_objects else len(ids)
    chosen = [ids[int(i)] for i in np.linspace(0, len(ids) - 1, n).round().astype(int)]
    out = []
    for oid in chosen:
        o = reader.object(oid)
        out.append(TestObject(oid, np.asarray(o["points"], np.float32), mesh_from_source(o["source"])))
    return out


class Evaluator:
    """Independent metrics of hands on one object (geometry and pybullet world built once)."""

    def __init__(self, mesh, hand, pitch: float) -> None:
        from dvqvae_training.evaluate.metrics import ObjectGeometry
        from dvqvae_training.synthesis.physics import GraspSimulator

        self.geo, self.sim, self.pitch = ObjectGeometry(mesh), GraspSimulator(mesh), pitch
        self.sealed, self.faces = hand.sealed_faces.numpy(), hand.faces.numpy()

    def __call__(self, vertices: np.ndarray) -> dict[str, np.ndarray]:
        from dvqvae_training.evaluate.metrics import contact_flags, penetration_volumes_cm3

        return {"contact": contact_flags(vertices, self.geo).astype(float),
                "pen": penetration_volumes_cm3(vertices, self.sealed, self.geo, self.pitch),
                "disp": self.sim.displacements(vertices, self.faces) * 100.0}

    def close(self) -> None:
        self.sim.close()


def spearman_within(groups: list[tuple[np.ndarray, np.ndarray]]) -> float:
    from scipy.stats import spearmanr

    vals = [spearmanr(a, b)[0] for a, b in groups if np.std(a) > 0 and np.std(b) > 0]
    return float(np.mean(vals)) if vals else float("nan")


def report(results, corr, settings, args, final: bool) -> None:
    """Print the quality/latency table and the rank correlations (and write --json when final)."""
    from dvqvae_training.evaluate.metrics import kmeans_diversity

    rows = []
    for view in ("full", "partial"):
        for k, name in settings:
            r = results[(view, k, name)]
            pen, disp = np.concatenate(r["pen"]), np.concatenate(r["disp"])
            ent = kmeans_diversity(np.concatenate(r["params"]).astype(np.float64), k=20, seed=0).entropy
            rows.append({"view": view, "K": k, "setting": name, "contact_pct": 100.0 * np.concatenate(r["contact"]).mean(),
                         "penetration_cm3": pen.mean(), "displacement_cm": disp.mean(), "entropy": ent,
                         "Q": Q_WEIGHTS[0] * pen.mean() + Q_WEIGHTS[1] * disp.mean(),
                         "latency_p50_ms": float(np.median(r["ms"]))})
    print(f"\n{'final' if final else 'so far'}: {len(results[next(iter(results))]['pen'])} objects")
    print("| cloud | K | setting | contact % | pen. cm^3 | disp. cm | entropy | Q | latency p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['view']} | {row['K']} | {row['setting']} | {row['contact_pct']:.1f} | {row['penetration_cm3']:.2f} | "
              f"{row['displacement_cm']:.2f} | {row['entropy']:.2f} | {row['Q']:.2f} | {row['latency_p50_ms']:.0f} |")
    print(f"\nSpearman rank correlation within each cloud's {args.oversample * max(args.grasps)} candidates "
          "(averaged; + = a better score predicts a lower metric, for the terms: + = a larger term, a higher metric)")
    print("| cloud | term | vs penetration | vs displacement |")
    print("|---|---|---|---|")
    corr_out = {}
    for view in ("full", "partial"):
        first = ("graph score", "score")
        terms = sorted({key.split("|")[0] for key in corr[view]},
                       key=lambda t: (first.index(t) if t in first else len(first), t.startswith("f_"), t))
        for term in terms:
            a = spearman_within(corr[view].get(f"{term}|pen", []))
            b = spearman_within(corr[view].get(f"{term}|disp", []))
            corr_out[f"{view}|{term}"] = (a, b)
            print(f"| {view} | {term} | {a:.2f} | {b:.2f} |")
    if args.json and final:
        Path(args.json).write_text(json.dumps({"rows": rows, "spearman": corr_out}, indent=1, default=float))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "grasps"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--ids-file", default="", help="choose only among the object ids listed in this file")
    ap.add_argument("--max-objects", type=int, default=6)
    ap.add_argument("--grasps", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--oversample", type=int, default=0,
                    help="candidates = this x K (default: the node's ratio, DEFAULTS.candidates / DEFAULTS.num_grasps)")
    ap.add_argument("--pitch-mm", type=float, default=1.0)
    ap.add_argument("--model", default="default")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--json", default="", help="write every number here too")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: one object, K = 2, 2x candidates, 3 long-refinement steps, one timing pass")
    args = ap.parse_args(argv)
    if args.quick:
        args.max_objects, args.grasps, args.oversample = 1, [2], 2

    import torch

    from dvqvae_model.checkpoint import DEFAULT_MODEL_DIR, resolve_checkpoint
    from dvqvae_model.pipeline.defaults import DEFAULTS
    from dvqvae_model.pipeline.generator import GraspGenerator
    from dvqvae_model.pipeline.grasp_quality import CloudSurface, QualityWeights, quality_terms
    from dvqvae_model.pipeline.refine import RefineConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.oversample <= 0:
        args.oversample = max(1, DEFAULTS.candidates // DEFAULTS.num_grasps)
    path = resolve_checkpoint(args.model, default_dir=DEFAULT_MODEL_DIR)
    default_refine = RefineConfig(steps=DEFAULTS.refine_steps, max_time_s=DEFAULTS.refine_time_ms / 1e3)
    mid_refine = RefineConfig(steps=40, max_time_s=0.15)
    long_refine = RefineConfig(steps=3 if args.quick else 80, max_time_s=5.0)
    gens = {
        "raw": GraspGenerator.from_checkpoint(path, ranking=False, refine=False),
        "rank": GraspGenerator.from_checkpoint(path, ranking=True, refine=False),
        "rank no disp est": GraspGenerator.from_checkpoint(path, ranking=True, refine=False,
                                                           quality_weights=QualityWeights(displacement_model="")),
        "rank+refine": GraspGenerator.from_checkpoint(path, ranking=True, refine=True, refine_config=default_refine),
        "rank+refine 150ms": GraspGenerator.from_checkpoint(path, ranking=True, refine=True, refine_config=mid_refine),
        "rank+refine long": GraspGenerator.from_checkpoint(path, ranking=True, refine=True, refine_config=long_refine),
    }
    hand = gens["raw"].hand
    objects = pick_objects(args.data, args.split, args.max_objects, args.ids_file)
    warm = objects[0].points
    for g in gens.values():
        g.generate(warm, 4, seed=0, candidates=8)
    print(f"{len(objects)} {args.split} objects ({', '.join(o.name for o in objects)}), full cloud + one depth view "
          f"each; K = {args.grasps}, candidates = {args.oversample} x K; refine default: {default_refine.steps} steps / "
          f"{1e3 * default_refine.max_time_s:.0f} ms, long: {long_refine.steps} steps / {long_refine.max_time_s:.0f} s; "
          f"penetration pitch {args.pitch_mm} mm; node defaults: candidates {DEFAULTS.candidates}, "
          f"refine {DEFAULTS.refine}", flush=True)

    ranked = {f"rank {args.oversample}x": "rank", f"rank {args.oversample}x no disp est": "rank no disp est"}
    setting_gens = {"raw": "raw", **ranked, "rank+refine": "rank+refine", "rank+refine 150ms": "rank+refine 150ms",
                    "rank+refine long": "rank+refine long"}
    settings = [(k, name) for k in args.grasps for name in setting_gens]
    results = {(view, k, name): {"contact": [], "pen": [], "disp": [], "params": [], "ms": []}
               for view in ("full", "partial") for k, name in settings}
    corr: dict[str, dict[str, list]] = {view: {} for view in ("full", "partial")}
    t_start = time.time()
    for oi, obj in enumerate(objects):
        ev = Evaluator(obj.mesh, hand, args.pitch_mm / 1000.0)
        try:
            clouds = {"full": obj.points, "partial": partial_view(obj.mesh, 1000 + oi)}
            for view, cloud in clouds.items():
                seed = 100 + oi
                kmax = max(args.grasps)
                cmax = args.oversample * kmax
                # every candidate of the largest set, scored (no refinement), evaluated once
                allc = gens["rank"].generate(cloud, cmax, seed=seed, candidates=cmax)
                m_all = ev(allc.vertices)
                key = lambda p: np.round(p, 5).tobytes()  # noqa: E731 - identify a grasp by its parameters
                index = {key(p): i for i, p in enumerate(allc.params)}
                # every stability feature of the same candidates against the same cloud
                prep = gens["rank"]._prepare(cloud, seed)
                surface = CloudSurface(torch.from_numpy(np.asarray(prep.to_input_frame(prep.points), np.float32))[None])
                with torch.no_grad():
                    qt = quality_terms(surface, torch.from_numpy(allc.vertices), hand.part_ids,
                                       gens["rank"]._vertex_areas)
                feats = {k: v.numpy() for k, v in qt.items() if k.startswith("f_")}
                named = {"score": allc.scores, **allc.terms, **feats}
                for term, vals in named.items():
                    sign = -1.0 if term in ("score", "prior") else 1.0  # higher score = lower metric
                    for metric in ("pen", "disp"):
                        corr[view].setdefault(f"{term}|{metric}", []).append((sign * vals, m_all[metric]))
                for k in args.grasps:
                    c = args.oversample * k
                    for name, gen_name in setting_gens.items():
                        times = []
                        for _ in range(3 if name != "rank+refine long" and not args.quick else 1):
                            t0 = time.perf_counter()
                            gs = gens[gen_name].generate(cloud, k, seed=seed, candidates=c)
                            times.append(1e3 * (time.perf_counter() - t0))
                        idx = [index.get(key(p)) for p in gs.params]
                        if all(i is not None for i in idx):  # a subset of the evaluated candidates
                            m = {n: v[idx] for n, v in m_all.items()}
                        else:
                            m = ev(gs.vertices)
                        r = results[(view, k, name)]
                        for n in ("contact", "pen", "disp"):
                            r[n].append(m[n])
                        r["params"].append(gs.params)
                        r["ms"].append(float(np.median(times)))
                    # the graph's own score as the baseline of the correlations (raw path, all candidates)
                raw_all = gens["raw"].generate(cloud, cmax, seed=seed)
                idx = [index.get(key(p)) for p in raw_all.params]
                if all(i is not None for i in idx):
                    for metric in ("pen", "disp"):
                        corr[view].setdefault(f"graph score|{metric}", []).append((-raw_all.scores, m_all[metric][idx]))
        finally:
            ev.close()
        print(f"  object {oi + 1}/{len(objects)} {obj.name} done ({time.time() - t_start:.0f} s)", flush=True)
        if oi + 1 < len(objects):  # a running table: a long run is useful even if stopped early
            report(results, corr, settings, args, final=False)
    report(results, corr, settings, args, final=True)

    return 0


if __name__ == "__main__":
    sys.exit(main())
