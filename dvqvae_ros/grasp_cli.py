"""``dvqvae-grasp``: grasps for one object without ROS, and the end-to-end ROS demo.

  dvqvae-grasp generate --object MESH|CLOUD|NAME --num-grasps K --out DIR [--partial-view] [--seed S] [--verify]
  dvqvae-grasp demo [--object mug] [--num-grasps 8] [--out demo_out]

``generate`` runs ``GraspGenerator`` in-process and writes ``DIR/grasps.npz`` (``vertices``
[K,778,3] float32 metres in the object's frame, ``faces``, ``sealed_faces``, ``mano`` [K,61],
``keypoints`` [K,21,3], ``scores`` [K] and ``score_terms`` [K,6] with ``score_term_names``), one
PLY per grasp, the object cloud, an HTML viewer and a PNG. Its generation settings (candidates,
ranking, refinement) default to the node's (``dvqvae_model.pipeline.defaults``), so offline and
online grasps match. ``--verify`` (offline only, needs pybullet) drops the grasps that let the object
fall, with the synthesizer's acceptance protocol (``dvqvae_training.synthesis.physics``).

``demo`` starts ``fake_depth_camera`` (the object plus ``--extra-objects`` on a table), ``object_segmenter``
and ``grasp_generator`` as processes talking over DDS (camera depth image -> segmenter -> grasp node;
``--input`` picks the segmenter's input, ``segmented_cloud`` skips it), listens to every output topic from
another, and writes the same files for the last cloud plus a table of segmentation quality (IoU against
the simulator's ground-truth mask), latency and quick grasp quality numbers.
"""
from __future__ import annotations

import argparse
import math
import errno
import pickle
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from dvqvae_ros.grasp_files import format_quality, load_object_cloud, quick_quality, resolve_model, write_grasp_files

__all__ = ["CliError", "MAX_GRASPS", "main"]

# The node's bound (dvqvae_ros.parameters.MAX_GRASPS, which this ROS-free path must not import:
# tests/test_grasp_cli.py keeps the two equal).
MAX_GRASPS = 256


class CliError(Exception):
    """A failure the user can act on: printed as one ``error:`` line, exit code ``code``
    (2: bad input or arguments, 1: the machine failed us - disk full, out of memory)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# -------------------------------------------------------------------------------------- generate
def cmd_generate(args: argparse.Namespace) -> int:
    from dvqvae_model.checkpoint import CheckpointError
    from dvqvae_model.pipeline.generator import GraspGenerator
    from dvqvae_model.pipeline.preprocess import CloudError

    out = Path(args.out)
    _check_writable(out)  # before minutes of work, not after
    model_dir = resolve_model(args.model)
    try:
        gen = GraspGenerator.from_checkpoint(model_dir, hand=args.hand, **generation_options(args))
    except (CheckpointError, OSError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        # UnsafePickleError (a refused --hand pickle) is an UnpicklingError; nothing from it ran
        raise CliError(f"cannot load model {str(model_dir)!r} with hand {args.hand!r}: "
                       f"{type(exc).__name__}: {exc}") from None
    points, mesh = load_object_cloud(args.object, gen.num_points, partial_view=args.partial_view, seed=args.seed)
    if args.verify and (mesh is None or not mesh.is_watertight):
        raise CliError("--verify needs a watertight object mesh (a mesh file or a sample name, not a cloud)")
    try:
        gs = gen.generate(points, args.num_grasps, temperature=args.temperature, seed=args.seed)
    except CloudError as exc:
        raise CliError(f"bad object cloud: {exc}") from None
    if args.verify:
        n = len(gs)
        gs, disp = verify_grasps(gs, gen.hand, mesh)
        print(f"--verify: {len(gs)} of {n} grasps hold the object (displacement < 2 cm, protocol gravity and "
              f"palm away); displacements cm: {[round(float(d), 2) for d in disp[:, 0]]}")
        if len(gs) == 0:
            print("error: no grasp passed --verify; try more --candidates or another --seed", file=sys.stderr)
            return 3
    try:
        paths = write_grasp_files(out, vertices=gs.vertices, mano=gs.params, keypoints=gs.keypoints,
                                  scores=gs.scores, hand=gen.hand, object_points=points,
                                  title=f"{Path(args.object).name}: {len(gs)} grasps", terms=gs.terms)
    except OSError as exc:
        raise CliError(f"cannot write the output files to {out}/: {exc.strerror or exc} "
                       f"({exc.filename or out}); no partial output was left", code=1) from None
    print(f"{len(gs)} grasps for {args.object} in {gs.timing.get('total_ms', float('nan')):.1f} ms -> {out}/")
    if mesh is not None and mesh.is_watertight and not args.no_quality:
        q = quick_quality(gs.vertices, gen.hand, mesh)
        print(format_quality(q))
    for key, p in paths.items():
        print(f"  {key:5s} {p}")
    return 0


def _check_writable(out: Path) -> None:
    """``out`` must be a folder (or creatable as one) we can write into: probed with a temporary folder."""
    import shutil
    import tempfile

    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out} exists and is not a folder; give a folder for the output files")
    probe_in = out if out.is_dir() else next((p for p in out.parents if p.exists()), Path("."))
    if not probe_in.is_dir():
        raise CliError(f"--out {out}: {probe_in} is not a folder")
    try:
        shutil.rmtree(tempfile.mkdtemp(prefix=".dvqvae-probe-", dir=probe_in))
    except OSError as exc:
        raise CliError(f"--out {out}: cannot write in {probe_in} ({exc.strerror or exc})") from None


def cmd_demo(args: argparse.Namespace) -> int:
    from dvqvae_ros.grasp_demo import cmd_demo as run_demo  # imports rclpy: only the demo path does

    return run_demo(args)


# ------------------------------------------------------------------------------------------- CLI
def _max_grasps() -> int:
    return MAX_GRASPS


def _grasp_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 1 <= value <= _max_grasps():
        raise argparse.ArgumentTypeError(f"must be in [1, {_max_grasps()}] (the node's bound), got {value}")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """GraspGenerator options from the CLI flags (their defaults are the node's: dvqvae_model.pipeline.defaults)."""
    from dvqvae_model.pipeline.refine import RefineConfig

    return {"candidates": args.candidates, "ranking": not args.raw, "refine": args.refine and not args.raw,
            "gravity": tuple(args.gravity),
            "refine_config": RefineConfig(steps=args.refine_steps, max_time_s=args.refine_time_ms / 1000.0)}


def verify_grasps(gs: Any, hand: Any, mesh: Any, *, max_displacement_cm: float = 2.0) -> tuple[Any, Any]:
    """(the grasps that hold the object, displacement per input grasp [K, 2] cm: protocol, palm away).

    The synthesizer's acceptance: the pybullet protocol displacement < ``max_displacement_cm``
    and, for grasps that pass it, the same with gravity pulling the object out of the palm.
    Offline only: this imports the training package (and pybullet) here, never in the node.
    """
    import numpy as np

    try:
        import pybullet  # noqa: F401
        from dvqvae_training.synthesis.physics import GraspSimulator
    except ImportError as exc:
        raise CliError(f"--verify needs pybullet and the training package ({exc}); "
                       "install the 'data' extra: pip install -e .[data]") from None
    from scipy.spatial.transform import Rotation

    if mesh is None or not mesh.is_watertight:
        raise CliError("--verify needs a watertight object mesh (a mesh file or a sample name, not a cloud)")
    faces = hand.faces.cpu().numpy()
    palm = np.asarray(hand.meta.palm_normal, dtype=np.float64)
    disp = np.full((len(gs), 2), np.nan)
    with GraspSimulator(mesh) as sim:
        g = float(np.linalg.norm(sim.config.gravity))
        for i in range(len(gs)):
            disp[i, 0] = sim.displacement(gs.vertices[i], faces) * 100.0
            if disp[i, 0] < max_displacement_cm:
                away = Rotation.from_rotvec(np.asarray(gs.params[i, 10:13], np.float64)).apply(palm) * g
                disp[i, 1] = sim.displacement(gs.vertices[i], faces, gravity=away) * 100.0
    holds = (disp[:, 0] < max_displacement_cm) & (disp[:, 1] < max_displacement_cm)
    keep = np.flatnonzero(holds)
    kept = type(gs)(gs.params[keep], gs.vertices[keep], gs.keypoints[keep], gs.joints[keep], gs.scores[keep],
                    gs.faces, dict(gs.timing), gs.centre, gs.seed, {k: v[keep] for k, v in gs.terms.items()})
    return kept, disp


def build_parser() -> argparse.ArgumentParser:
    from dvqvae_model.pipeline.defaults import DEFAULTS

    p = argparse.ArgumentParser(prog="dvqvae-grasp", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="grasps for one object (mesh, cloud or sample name), no ROS")
    g.add_argument("--object", required=True, help="mesh file, point-cloud file (.npy/.xyz/.pcd/.ply) or mug|box|bottle|ball")
    g.add_argument("--num-grasps", type=_grasp_count, default=DEFAULTS.num_grasps,
                   help=f"1..{_max_grasps()} (as the node)")
    g.add_argument("--candidates", type=int, default=DEFAULTS.candidates,
                   help="grasps sampled and ranked, the best --num-grasps kept (default: the node's)")
    g.add_argument("--raw", action="store_true", help="the raw path: no ranking, no refinement")
    g.add_argument("--gravity", type=_finite, nargs=3, default=DEFAULTS.gravity, metavar=("X", "Y", "Z"),
                   help="the direction gravity pulls in, in the object's frame (default: +y, the simulator's and "
                        "a camera optical frame's down; 0 0 0 = unknown)")
    g.add_argument("--refine", action=argparse.BooleanOptionalAction, default=DEFAULTS.refine,
                   help="refine the ranked grasps (default: the node's)")
    g.add_argument("--refine-steps", type=int, default=DEFAULTS.refine_steps)
    g.add_argument("--refine-time-ms", type=float, default=DEFAULTS.refine_time_ms)
    g.add_argument("--verify", action="store_true",
                   help="drop grasps that let the object fall (pybullet, the synthesizer's acceptance; offline only)")
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
    d.add_argument("--num-grasps", type=_grasp_count, default=DEFAULTS.num_grasps,
                   help=f"1..{_max_grasps()} (as the node)")
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
    """Every failure is one ``error:`` line on stderr and a non-zero exit code, never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; try a smaller --num-grasps or a smaller cloud", file=sys.stderr)
        return 1
    except (ValueError, pickle.UnpicklingError, EOFError) as exc:  # bad input named by the library
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            print(f"error: no space left for {exc.filename or 'the output'} ({exc.strerror})", file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # torch allocation failures and other library faults, summarised
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "allocate" in text or "memory" in text.lower():
            print(f"error: out of memory ({text}); try a smaller --num-grasps or a smaller cloud", file=sys.stderr)
        else:
            print(f"error: {type(exc).__name__}: {text}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
