"""``dvqvae-grasp``: grasps for one object without ROS, and the end-to-end ROS demo.

  dvqvae-grasp generate --object MESH|CLOUD|NAME --num-grasps K --out DIR [--partial-view] [--seed S]
  dvqvae-grasp demo [--object mug] [--num-grasps 8] [--out demo_out]

``generate`` runs ``GraspGenerator`` in-process and writes ``DIR/grasps.npz`` (``vertices``
[K,778,3] float32 metres in the object's frame, ``faces``, ``sealed_faces``, ``mano`` [K,61],
``keypoints`` [K,21,3], ``scores``), one PLY per grasp, the object cloud, an HTML viewer and a PNG.

``demo`` starts ``fake_depth_camera`` (the object plus ``--extra-objects`` on a table), ``object_segmenter``
and ``grasp_generator`` as processes talking over DDS (camera depth image -> segmenter -> grasp node;
``--input`` picks the segmenter's input, ``segmented_cloud`` skips it), listens to every output topic from
another, and writes the same files for the last cloud plus a table of segmentation quality (IoU against
the simulator's ground-truth mask), latency and quick grasp quality numbers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence



from dvqvae_ros.grasp_files import format_quality, load_object_cloud, quick_quality, resolve_model, write_grasp_files

__all__ = ["main"]


# -------------------------------------------------------------------------------------- generate
def cmd_generate(args: argparse.Namespace) -> int:
    from dvqvae_model.pipeline.generator import GraspGenerator
    from dvqvae_model.pipeline.preprocess import CloudError

    model_dir = resolve_model(args.model)
    gen = GraspGenerator.from_checkpoint(model_dir, hand=args.hand)
    points, mesh = load_object_cloud(args.object, gen.num_points, partial_view=args.partial_view, seed=args.seed)
    try:
        gs = gen.generate(points, args.num_grasps, temperature=args.temperature, seed=args.seed)
    except CloudError as exc:
        print(f"error: bad object cloud: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    paths = write_grasp_files(out, vertices=gs.vertices, mano=gs.params, keypoints=gs.keypoints, scores=gs.scores,
                              hand=gen.hand, object_points=points, title=f"{Path(args.object).name}: {len(gs)} grasps")
    print(f"{len(gs)} grasps for {args.object} in {gs.timing.get('total_ms', float('nan')):.1f} ms -> {out}/")
    if mesh is not None and mesh.is_watertight and not args.no_quality:
        q = quick_quality(gs.vertices, gen.hand, mesh)
        print(format_quality(q))
    for key, p in paths.items():
        print(f"  {key:5s} {p}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dvqvae_ros.grasp_demo import cmd_demo as run_demo  # imports rclpy: only the demo path does

    return run_demo(args)


# ------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dvqvae-grasp", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="grasps for one object (mesh, cloud or sample name), no ROS")
    g.add_argument("--object", required=True, help="mesh file, point-cloud file (.npy/.xyz/.pcd/.ply) or mug|box|bottle|ball")
    g.add_argument("--num-grasps", type=int, default=8)
    g.add_argument("--out", required=True)
    g.add_argument("--partial-view", action="store_true", help="use one simulated depth view of the mesh")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--model", default="default", help="checkpoint directory or 'default'")
    g.add_argument("--hand", default="standin", help="'standin' or path to MANO_RIGHT.pkl")
    g.add_argument("--no-quality", action="store_true", help="skip the contact/penetration/simulation numbers")
    g.set_defaults(func=cmd_generate)
    d = sub.add_parser("demo", help="fake depth camera -> object segmenter -> grasp node over DDS -> files, "
                       "picture, segmentation IoU, latency, quality")
    d.add_argument("--object", default="mug")
    d.add_argument("--num-grasps", type=int, default=8)
    d.add_argument("--out", default="demo_out")
    d.add_argument("--model", default="default")
    d.add_argument("--hand", default="standin")
    d.add_argument("--rounds", type=int, default=6, help="complete grasp sets to collect")
    d.add_argument("--rate", type=float, default=2.0, help="camera rate (Hz)")
    d.add_argument("--distance", type=float, default=0.5)
    d.add_argument("--extra-objects", type=int, default=2, choices=range(4),
                   help="more sample objects on the table around --object (the segmenter must pick --object)")
    d.add_argument("--input", default="depth_image", choices=("depth_image", "scene_cloud", "segmented_cloud"),
                   help="what the segmenter reads; segmented_cloud: no segmenter, the camera's own segmentation")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--timeout", type=float, default=45.0)
    d.add_argument("--domain-id", type=int, default=42)
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "num_grasps", 1) < 1:
        raise SystemExit("error: --num-grasps must be >= 1")
    try:
        return int(args.func(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
