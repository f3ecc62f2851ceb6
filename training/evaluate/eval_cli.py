"""``dvqvae-eval``: the Table-1 protocol for several checkpoints side by side.

    dvqvae-eval --data data/grasps --split test \\
        --model DVQ-VAE=out/compact/checkpoint --model GraspCVAE=out/compact/cvae/checkpoint \\
        --model "DVQ-VAE+refine=out/compact/checkpoint,refine" --model data --out out/eval
    dvqvae-eval --meshes path/to/ho3d_models --model out/compact/checkpoint --num-grasps 100

Prints a Markdown table and writes ``results.json`` / ``results.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from dvqvae_training.evaluate.evaluate import (
    EvalConfig,
    ModelSpec,
    evaluate,
    markdown_table,
    objects_from_dataset,
    objects_from_meshes,
    write_report,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dvqvae-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="dataset directory: evaluate on the objects of --split")
    src.add_argument("--meshes", help="folder of object meshes (searched recursively)")
    p.add_argument("--split", default="test")
    p.add_argument("--model", action="append", required=True, metavar="LABEL=PATH[,refine]",
                   help="checkpoint to evaluate (repeatable); 'data' = the dataset's own grasps")
    p.add_argument("--out", default="out/eval")
    p.add_argument("--hand", default="standin")
    p.add_argument("--num-grasps", type=int, default=100)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pitch-mm", type=float, default=1.0, help="penetration lattice pitch (mm)")
    p.add_argument("--no-sim", action="store_true", help="skip the simulation displacement")
    p.add_argument("--clusters", type=int, default=20)
    p.add_argument("--num-points", type=int, default=3000, help="points sampled per mesh (--meshes)")
    p.add_argument("--units", default="auto", choices=("auto", "m", "cm", "mm"), help="mesh units (--meshes)")
    p.add_argument("--max-objects", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-threads", type=int, default=0)
    p.add_argument("--vhacd-cache", default=None)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_threads > 0:
        import torch

        torch.set_num_threads(args.num_threads)
    try:
        specs = [ModelSpec.parse(s) for s in args.model]
        labels = [s.label for s in specs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"model labels must be unique, got {labels}")
        cfg = EvalConfig(num_grasps=args.num_grasps, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                         pitch_mm=args.pitch_mm, simulate=not args.no_sim, clusters=args.clusters,
                         num_points=args.num_points, max_objects=args.max_objects, device=args.device,
                         vhacd_cache=args.vhacd_cache, progress=not args.no_progress)
        if args.data:
            objects = objects_from_dataset(args.data, args.split, args.max_objects)
        else:
            objects = objects_from_meshes(args.meshes, args.num_points, args.max_objects, units=args.units)
        if any(s.path is None for s in specs) and all(o.gt_params is None for o in objects):
            raise ValueError("'data' needs --data (mesh folders carry no grasps)")
    except (ValueError, FileNotFoundError) as e:
        print(f"dvqvae-eval: {e}", file=sys.stderr)
        return 2
    report = evaluate(specs, objects, cfg, hand=args.hand)
    print(markdown_table(report))
    jpath, mpath = write_report(report, args.out)
    print(f"\nwrote {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
