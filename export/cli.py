"""``dvqvae-export``: export a checkpoint's whole inference graph as one TorchScript / ONNX / TensorRT artifact.

    dvqvae-export --checkpoint CKPT --format torchscript|onnx|tensorrt --out DIR [--fp16] [--max-grasps K]
                  [--top-k K] [--opset 17] [--hand standin] [--num-points N] [--check-export]

Writes ``DIR/graph.{ts,onnx,ep}`` and ``DIR/artifact.json`` atomically (a crash leaves the old
artifact or none) after checking the artifact against eager PyTorch at K = 1 and 16 grasps
(geometry on the grasps that sampled eager's tokens; a token may differ only on a near-tie).
``--check-export`` (always on for tensorrt) also proves with ``torch.export`` that the graph has a
dynamic K and no random operators. TensorRT needs CUDA and torch-tensorrt 2.13 (README); the
sidecar records its engine / PyTorch segment count. ``--fp16``: the networks in half precision
with explicit casts, hand layer and scorer in fp32. Prints a JSON summary; exit code 2 on errors.

Load the result without this package (only ``dvqvae_model.runtime`` is needed)::

    GraspGenerator.from_checkpoint(CKPT, backend=FORMAT, backend_options={"artifact": DIR})
    grasp_generator --ros-args -p model:=CKPT -p backend:=FORMAT -p artifact:=DIR   # the node
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from dvqvae_model.runtime.artifacts import (
    ARTIFACT_FORMATS,
    DEFAULT_MAX_GRASPS,
    ONNX_OPSET,
    BackendError,
    BackendUnavailable,
    tensorrt_problem,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dvqvae-export", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint directory (config.json + *.safetensors)")
    p.add_argument("--format", required=True, choices=ARTIFACT_FORMATS, help="artifact format")
    p.add_argument("--out", required=True, help="artifact directory to write (replaced atomically)")
    p.add_argument("--fp16", action="store_true",
                   help="TensorRT only: encoders, prior and decoders in fp16 (explicit casts), hand layer and "
                        "scorer in fp32")
    p.add_argument("--max-grasps", type=int, default=DEFAULT_MAX_GRASPS,
                   help=f"largest K of the TensorRT optimisation profile (default {DEFAULT_MAX_GRASPS}; "
                        "larger requests run in chunks)")
    p.add_argument("--top-k", type=int, default=0, help="prior top-k baked into the graph (0 = off, default)")
    p.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset (default {ONNX_OPSET})")
    p.add_argument("--hand", default="standin", help="'standin' or the path of MANO_RIGHT.pkl")
    p.add_argument("--num-points", type=int, default=0, help="cloud size of the graph (0 = the model's own)")
    p.add_argument("--device", default="", help="torch device for TensorRT: cuda or cuda:N (default cuda); "
                   "the engine is built for and tied to that GPU model")
    p.add_argument("--check-export", action="store_true",
                   help="also prove torch.export with dynamic K and no random ops (always for tensorrt)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run(args)
    except (BackendError, ValueError, OSError, RuntimeError) as e:
        print(f"dvqvae-export: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0


def run(args: argparse.Namespace) -> dict:
    """Load the checkpoint, export, return the summary (raises on failure)."""
    from dvqvae_model.pipeline.generator import GraspGenerator

    from .artifact import checkpoint_source

    if args.fp16 and args.format != "tensorrt":
        raise ValueError("--fp16 applies to --format tensorrt only (the CPU backends run fp32)")
    if args.max_grasps < 16:
        raise ValueError(f"--max-grasps must be >= 16, got {args.max_grasps}")
    if args.format == "tensorrt":
        problem = tensorrt_problem()
        if problem:  # fail before loading anything; the CPU proof is available with --format onnx --check-export
            raise BackendUnavailable(problem + " (to check the graph on this machine instead: "
                                     "dvqvae-export --format onnx --check-export ...)")
    ckpt = Path(args.checkpoint).expanduser()
    device = (args.device or "cuda") if args.format == "tensorrt" else "cpu"
    kwargs = {"num_points": args.num_points} if args.num_points > 0 else {}
    # the exporters take the graph description, never the generator
    generator = GraspGenerator.from_checkpoint(ckpt, hand=args.hand, device=device, **kwargs).exportable
    top_k = args.top_k if args.top_k > 0 else None
    source = checkpoint_source(ckpt)
    source["export_options"] = {k: v for k, v in vars(args).items() if k not in ("verbose",)}
    checks = {}
    if args.check_export and args.format != "tensorrt":
        from .tensorrt import check_exportable

        checks["torch_export"] = check_exportable(generator, top_k=top_k, max_grasps=args.max_grasps,
                                                  run_decomposed=False).summary()
    if args.format == "torchscript":
        from .torchscript import export_torchscript

        result = export_torchscript(generator, args.out, top_k=top_k, source=source)
    elif args.format == "onnx":
        from .onnx_export import export_onnx

        result = export_onnx(generator, args.out, opset=args.opset, top_k=top_k, source=source)
    else:
        from .tensorrt import export_tensorrt

        result = export_tensorrt(generator, args.out, fp16=args.fp16, max_grasps=args.max_grasps, top_k=top_k,
                                 source=source, device=device)
    result.checks.update(checks)
    return result.summary()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
