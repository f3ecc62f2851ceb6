"""Grasp yield on large objects: the default synthesizer vs its large-object settings, side by side.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_large_objects.py [--objects 6] [--min-extent 0.15]

Takes the default set's procedural objects of ``--min-extent`` or more with the fewest grasps
(datasets/default; ``--pick random`` for a random sample of them), and the same number of 6-10 cm objects as the reference yield, and synthesizes
each with the default settings and with ``SynthConfig.large_objects()`` (hands that grasp the thin
direction of an edge, a rim or a handle, twice the hands) in one process, interleaved. Prints
accepted grasps per object, objects left without grasps, acceptance and seconds per object, and
the ratio the data issue asks for: yield on large objects over yield on 6-10 cm objects.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pick_objects(compact: str, lo: float, hi: float, count: int, fewest: bool) -> list[tuple[str, dict]]:
    """(object id, recipe) of procedural objects whose largest extent is in [lo, hi)."""
    from dvqvae_training.dataset.compact import read_compact
    from dvqvae_training.dataset.data_cli import load_job_mesh, ObjectJob

    _, a = read_compact(compact)
    counts = np.bincount(a["grasp_object"], minlength=len(a["object_id"]))
    order = np.argsort(counts, kind="stable") if fewest else np.random.default_rng(0).permutation(len(counts))
    out = []
    for o in order:
        src = json.loads(str(a["object_source"][o]))
        if "recipe" not in src:
            continue
        mesh, _ = load_job_mesh(ObjectJob("recipe", src["recipe"], str(a["object_id"][o])))
        if lo <= float(mesh.extents.max()) < hi:
            out.append((str(a["object_id"][o]), src["recipe"]))
        if len(out) == count:
            break
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--objects", type=int, default=6)
    ap.add_argument("--min-extent", type=float, default=0.15)
    ap.add_argument("--compact", default="datasets/default")
    ap.add_argument("--no-reference", action="store_true", help="skip the 6-10 cm reference objects")
    ap.add_argument("--pick", choices=("fewest", "random"), default="fewest",
                    help="large objects with the fewest grasps in the default set, or a random sample of them")
    a = ap.parse_args(argv)

    import torch

    from dvqvae_training.dataset import data_cli
    from dvqvae_training.dataset.data_cli import ObjectJob, run_job
    from dvqvae_training.synthesis.synthesizer import SynthConfig

    torch.set_num_threads(1)
    large = pick_objects(a.compact, a.min_extent, 10.0, a.objects, fewest=a.pick == "fewest")
    ref = [] if a.no_reference else pick_objects(a.compact, 0.06, 0.10, a.objects, fewest=False)
    configs = {"default": SynthConfig(), "large_objects": SynthConfig.large_objects()}
    cache = tempfile.mkdtemp(prefix="vhacd-")
    results: dict[tuple[str, str], list[dict]] = {}
    for group, objs in (("large", large), ("6-10cm", ref)):
        for oid, recipe in objs:
            for name, cfg in configs.items():
                if group == "6-10cm" and name != "default":
                    continue
                data_cli._worker_init("standin", cfg.to_dict(), cache)
                t = time.perf_counter()
                r = run_job(ObjectJob("recipe", recipe, oid), 0)
                s = r.get("summary", {})
                results.setdefault((group, name), []).append(
                    {"id": oid, "grasps": int(s.get("accepted", 0)), "candidates": int(s.get("candidates", 0)), "s": time.perf_counter() - t}
                )
                print(f"{group:7s} {name:14s} {oid:28s} grasps {s.get('accepted', 0):3d}  {time.perf_counter() - t:6.1f} s", flush=True)
    print()
    print(f"{'objects':8s} {'settings':14s} {'n':>3s} {'grasps/obj':>10s} {'empty':>6s} {'accept':>7s} {'s/obj':>6s}")
    per_obj = {}
    for (group, name), rows in results.items():
        g = np.array([r["grasps"] for r in rows])
        c = sum(r["candidates"] for r in rows)
        per_obj[(group, name)] = g.mean()
        print(f"{group:8s} {name:14s} {len(rows):3d} {g.mean():10.1f} {(g == 0).sum():6d} {g.sum() / max(c, 1):7.1%} {np.mean([r['s'] for r in rows]):6.1f}")
    if ("6-10cm", "default") in per_obj:
        base = per_obj[("6-10cm", "default")]
        for name in configs:
            print(f"yield ratio large/6-10cm with {name}: {per_obj[('large', name)] / max(base, 1e-9):.2f} (target >= 0.67)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
