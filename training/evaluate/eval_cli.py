"""``dvqvae-eval``: the Table-1 protocol for several checkpoints side by side.

    dvqvae-eval --data data/grasps --split test \\
        --model DVQ-VAE=out/compact/checkpoint --model GraspCVAE=out/compact/cvae/checkpoint \\
        --model "DVQ-VAE+refine=out/compact/checkpoint,refine" --model data --out out/eval
    dvqvae-eval --data data/grasps --split test --model raw=default --model node=default,node
    dvqvae-eval --meshes path/to/ho3d_models --model out/compact/checkpoint --num-grasps 100
    dvqvae-eval --breakdown --data data/grasps --model dvqvae_model/assets/default_model --out out/breakdown
    dvqvae-eval --curves out/compact --out out/compact/curves.png

Prints a Markdown table and writes ``results.json`` / ``results.md`` to ``--out``. ``--breakdown``
splits one DVQ-VAE checkpoint's error instead (reconstruction vs sampling, posture vs position,
codebook usage; see ``dvqvae_training.evaluate.breakdown``) into ``breakdown.json`` / ``breakdown.md``.
``--curves RUN`` plots a training run's curves and codebook usage (``dvqvae_training.evaluate.curves``).
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
    with_partial_views,
    write_report,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dvqvae-eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="dataset directory: evaluate on the objects of --split")
    src.add_argument("--meshes", help="folder of object meshes (searched recursively)")
    src.add_argument("--curves", metavar="RUN", help="a dvqvae-train run directory: plot its training curves and "
                                                      "codebook usage to --out (a .png path)")
    p.add_argument("--split", default="test")
    p.add_argument("--model", action="append", default=[], metavar="LABEL=PATH[,refine|,node]",
                   help="checkpoint to evaluate (repeatable); 'data' = the dataset's own grasps; ',node' = with the "
                        "node's default settings (over-sample and rank), ',refine' = raw samples refined")
    p.add_argument("--out", default="out/eval")
    p.add_argument("--hand", default="standin")
    p.add_argument("--num-grasps", type=int, default=None, help="grasps per object (default 100; 5 with --breakdown)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pitch-mm", type=float, default=1.0, help="penetration lattice pitch (mm)")
    p.add_argument("--no-sim", action="store_true", help="skip the simulation displacement")
    p.add_argument("--partial-view", action="store_true",
                   help="feed each model one simulated depth view of each object (seeded, the same for every "
                        "model) instead of its full surface cloud: the paper's Table 3; metrics stay on the mesh")
    p.add_argument("--clusters", type=int, default=20)
    p.add_argument("--num-points", type=int, default=3000, help="points sampled per mesh (--meshes)")
    p.add_argument("--units", default="auto", choices=("auto", "m", "cm", "mm"), help="mesh units (--meshes)")
    p.add_argument("--max-objects", type=int, default=None, help="0 = all (default; 20 with --breakdown)")
    p.add_argument("--breakdown", action="store_true",
                   help="error breakdown of one DVQ-VAE checkpoint on --data (reconstruction vs sampling, "
                        "posture vs position, codebook usage)")
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
    if args.curves:
        return _curves(args)
    if not args.model:
        print("dvqvae-eval: error: --model is required (except with --curves)", file=sys.stderr)
        return 2
    if args.breakdown:
        return _breakdown(args)
    try:
        specs = [ModelSpec.parse(s) for s in args.model]
        labels = [s.label for s in specs]
        if len(set(labels)) != len(labels):
            raise ValueError(f"model labels must be unique, got {labels}")
        args.num_grasps = 100 if args.num_grasps is None else args.num_grasps
        args.max_objects = args.max_objects or 0
        cfg = EvalConfig(num_grasps=args.num_grasps, temperature=args.temperature, top_k=args.top_k, seed=args.seed,
                         pitch_mm=args.pitch_mm, simulate=not args.no_sim, clusters=args.clusters,
                         num_points=args.num_points, max_objects=args.max_objects, device=args.device,
                         vhacd_cache=args.vhacd_cache, progress=not args.no_progress, partial_view=args.partial_view)
        if args.data:
            objects = objects_from_dataset(args.data, args.split, args.max_objects)
        else:
            objects = objects_from_meshes(args.meshes, args.num_points, args.max_objects, units=args.units)
        if any(s.path is None for s in specs) and all(o.gt_params is None for o in objects):
            raise ValueError("'data' needs --data (mesh folders carry no grasps)")
        if args.partial_view:
            objects = with_partial_views(objects, args.seed)
    except (ValueError, FileNotFoundError) as e:
        print(f"dvqvae-eval: {e}", file=sys.stderr)
        return 2
    report = evaluate(specs, objects, cfg, hand=args.hand)
    print(markdown_table(report))
    jpath, mpath = write_report(report, args.out)
    print(f"\nwrote {jpath} and {mpath}")
    return 0


def _breakdown(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from dvqvae_training.evaluate.breakdown import BreakdownConfig, breakdown, breakdown_markdown

    try:
        if not args.data:
            raise ValueError("--breakdown needs --data (it compares the model with the dataset's grasps)")
        if len(args.model) != 1 or ModelSpec.parse(args.model[0]).path is None:
            raise ValueError("--breakdown takes exactly one --model checkpoint path")
        cfg = BreakdownConfig(grasps_per_object=5 if args.num_grasps is None else args.num_grasps,
                              max_objects=20 if args.max_objects is None else args.max_objects, seed=args.seed,
                              pitch_mm=args.pitch_mm, temperature=args.temperature)
        if cfg.grasps_per_object < 1:
            raise ValueError("--num-grasps must be >= 1")
        report = breakdown(ModelSpec.parse(args.model[0]).path, args.data, args.split, cfg, hand=args.hand,
                           progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"dvqvae-eval: {e}", file=sys.stderr)
        return 2
    text = breakdown_markdown(report)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "breakdown.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "breakdown.md").write_text("# Error breakdown\n\n" + text + "\n")
    print(f"\nwrote {out / 'breakdown.json'} and {out / 'breakdown.md'}")
    return 0



def _curves(args: argparse.Namespace) -> int:
    from dvqvae_training.evaluate.curves import plot_curves

    out = args.out if args.out.endswith(".png") else f"{args.out.rstrip('/')}/curves.png"
    try:
        summary = plot_curves(args.curves, out)
    except (FileNotFoundError, ValueError) as exc:
        print(f"dvqvae-eval: error: {exc}", file=sys.stderr)
        return 2
    usage = summary.pop("token_usage", None)
    for stage, s in summary.items():
        vals = ", ".join(f"{k} {v:.4g}" for k, v in s.items() if k.startswith("val_") and isinstance(v, float))
        print(f"{stage}: {s['epochs']} epochs, {s['steps']} steps; {vals}")
    for split, books in (usage or {}).items():  # the final encoder's tokens, as the prior cached them
        print(f"codebook entries used ({split} tokens): " +
              ", ".join(f"{name} {b['used']} (perplexity {b['perplexity']:.1f})" for name, b in books.items()))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
