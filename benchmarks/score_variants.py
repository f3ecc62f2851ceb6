"""Ranking score variants side by side on the same candidates (validation split by default).

    python benchmarks/score_variants.py --view partial --max-objects 60 \
        --variant cap5:one_sided=1e9 --variant default: --variant cap20:stability_max_penetration=20,one_sided=1e9
    python benchmarks/score_variants.py --view partial --variant default: --variant no_disp_est:displacement_model=

For each object (its full surface cloud, or one simulated depth view as ``dvqvae-eval
--partial-view`` makes it), the bundled model samples ``--candidates`` grasps once (the node's
generator, seeded); every variant (``NAME:field=value,...``: ``QualityWeights`` fields, empty =
the code's defaults) re-scores the same candidates from their terms and keeps its best ``--keep``;
each kept grasp is measured once with the independent metrics (contact, penetration volume on a
1 mm lattice, pybullet displacement), so the variants differ only in what they pick. Prints
contact / penetration / displacement / Q per variant every 20 objects. Never the test split
unless asked: weights chosen on it would be fitted to the numbers we report.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dvqvae_model.pipeline.defaults import DEFAULTS  # noqa: E402
from dvqvae_model.pipeline.generator import GraspGenerator  # noqa: E402
from dvqvae_model.pipeline.grasp_quality import CloudSurface, QualityWeights, combine_terms  # noqa: E402
from dvqvae_training.evaluate.evaluate import objects_from_dataset, with_partial_views  # noqa: E402
from dvqvae_training.evaluate.metrics import (ObjectGeometry, contact_flags, penetration_volumes_cm3,  # noqa: E402
                                              quality_index)


# the learnt estimates a variant can switch off ("" = none): their terms are then left out of its score
ESTIMATES = {"penetration_model": "penetration_est", "displacement_model": "displacement_est"}


def parse_variant(text: str) -> tuple[str, QualityWeights]:
    """``NAME:field=value,...`` -> (name, QualityWeights with those fields replaced): float fields,
    or ``penetration_model=`` / ``displacement_model=`` (empty: score without that learnt estimate)."""
    name, _, rest = text.partition(":")
    fields = {f.name: f for f in dataclasses.fields(QualityWeights)}
    changes: dict[str, float | str] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if sep and key in ESTIMATES and value in ("", "bundled"):
            changes[key] = value
            continue
        if not sep or key not in fields or fields[key].type not in ("float", float):
            raise ValueError(f"--variant {text!r}: {item!r} is not FIELD=NUMBER of a float QualityWeights field "
                             f"(or {'= / '.join(ESTIMATES)}= with an empty value)")
        changes[key] = float(value)
    return name or "default", QualityWeights(**changes)


def variant_terms(terms: dict[str, torch.Tensor], weights: QualityWeights) -> dict[str, torch.Tensor]:
    """The terms a variant scores with: without the estimates it switches off."""
    return {k: v for k, v in terms.items() if k not in {t for f, t in ESTIMATES.items() if not getattr(weights, f)}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "grasps"))
    ap.add_argument("--split", default="val")
    ap.add_argument("--max-objects", type=int, default=60)
    ap.add_argument("--view", choices=("full", "partial"), default="full")
    ap.add_argument("--model", default="default")
    ap.add_argument("--candidates", type=int, default=DEFAULTS.candidates)
    ap.add_argument("--keep", type=int, default=DEFAULTS.num_grasps)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:FIELD=VALUE,...")
    args = ap.parse_args(argv)
    try:
        variants = dict(parse_variant(v) for v in (args.variant or ["default:"]))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from dvqvae_training.synthesis.physics import GraspSimulator

    torch.set_num_threads(1)
    objects = objects_from_dataset(args.data, args.split, args.max_objects)
    if args.view == "partial":
        objects = with_partial_views(objects, seed=0)
    gen = GraspGenerator.from_checkpoint(args.model, hand="standin", **DEFAULTS.generator_options())
    sealed, faces = gen.hand.sealed_faces.cpu().numpy(), gen.hand.faces.cpu().numpy()
    picked = {k: {"contact": [], "pen": [], "disp": []} for k in variants}
    one_sided = 0
    for i, obj in enumerate(objects):
        gs = gen.generate(obj.points, args.candidates, seed=i, candidates=args.candidates)
        terms = {k: torch.from_numpy(v.astype(np.float32)) for k, v in gs.terms.items()}
        # the generator's surface is built on the prepared cloud; its one-sidedness is per cloud
        surface = CloudSurface(torch.from_numpy(gen._prepare(obj.points, i).points)[None])
        terms["one_sidedness"] = surface.one_sidedness.expand(len(gs))
        one_sided += int(float(surface.one_sidedness[0]) >= QualityWeights().one_sided)
        picks = {k: np.argsort(-combine_terms(terms["prior"], variant_terms(terms, w), w).numpy(),
                               kind="stable")[: args.keep]
                 for k, w in variants.items()}
        union = sorted(set(np.concatenate(list(picks.values())).tolist()))
        geo = ObjectGeometry(obj.mesh)
        verts = gs.vertices[union]
        contact = contact_flags(verts, geo)
        pen = penetration_volumes_cm3(verts, sealed, geo, 0.001)
        sim = GraspSimulator(obj.mesh)
        try:
            disp = sim.displacements(verts, faces) * 100.0
        finally:
            sim.close()
        row = {u: j for j, u in enumerate(union)}
        for k, pick in picks.items():
            idx = [row[u] for u in pick]
            picked[k]["contact"] += contact[idx].tolist()
            picked[k]["pen"] += pen[idx].tolist()
            picked[k]["disp"] += disp[idx].tolist()
        if (i + 1) % 20 == 0 or i + 1 == len(objects):
            print(f"after {i + 1} objects ({args.split}, {args.view}; one-sided clouds: {one_sided}), "
                  f"best {args.keep} of {args.candidates}:", flush=True)
            for k, r in picked.items():
                p, d = float(np.mean(r["pen"])), float(np.mean(r["disp"]))
                print(f"  {k:24s} contact {100 * np.mean(r['contact']):5.1f} %  pen {p:5.2f} cm^3  "
                      f"disp {d:5.2f} cm  Q {quality_index(p, d):5.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
