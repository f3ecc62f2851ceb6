"""``dvqvae-train``: train DVQ-VAE, its prior, both, or the GraspCVAE baseline.

    dvqvae-train all    --data data/grasps --out out/compact --max-minutes 600 --resume
    dvqvae-train dvqvae --data data/grasps --out out/compact --epochs 200
    dvqvae-train prior  --data data/grasps --out out/compact [--model out/compact/dvqvae/checkpoint]
    dvqvae-train cvae   --data data/grasps --out out/compact
    dvqvae-train validate --data data/grasps --model out/compact/checkpoint      # the val metrics of any checkpoint
    dvqvae-train average --inputs out/a/dvqvae/checkpoint out/b/dvqvae/checkpoint --out out/avg --data data/grasps
        # -> out/avg/dvqvae/checkpoint, the weights' mean, validated; then `dvqvae-train prior --out out/avg`

Data-parallel (DistributedDataParallel, gloo on CPU / nccl on GPU; ``--batch-size`` stays the global
batch, see ``dvqvae_training.train.distributed``)::

    torchrun --nproc-per-node 2 -m dvqvae_training.train.train_cli dvqvae --data data/grasps --out out/ddp

Rerunning the same command with ``--resume`` continues a stopped run exactly where its last saved
state left it. Exit status: 0 finished, 75 stopped early but resumable (time budget, --max-steps,
SIGINT/SIGTERM), 2 bad arguments, 1 other errors.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Optional, Sequence

from dvqvae_model.checkpoint import CheckpointError
from dvqvae_model.nets.config import DEFAULT_PRESET, PRESETS
from dvqvae_model.nets.dvqvae import HAND_FRAMES, HAND_SHAPES, VARIANTS
from dvqvae_model.canonical_frame import INPUT_FRAMES
from dvqvae_model.nets.rotations import ROTATION_REPRS
from dvqvae_training.dataset.dataset_format import DatasetError
from dvqvae_training.train import (
    EXIT_RESUMABLE,
    PriorTrainConfig,
    TrainConfig,
    TrainResult,
    train_all,
    train_cvae,
    train_dvqvae,
    train_prior,
)


#: Errors that mean bad input (paths, data, checkpoints, options): a message and exit status 2, no traceback.
_USER_ERRORS = (CheckpointError, DatasetError, FileExistsError, FileNotFoundError, ValueError)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dvqvae-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Exit status: 0 finished, 75 stopped early (resume with --resume).")
    p.add_argument("stage", choices=("dvqvae", "prior", "cvae", "all", "validate", "average"))
    p.add_argument("--data", default=None, help="dataset directory (dvqvae-data output); every stage but average "
                                                "needs it (average: validates the result when given)")
    p.add_argument("--out", default="out/train", help="run directory (states, logs, checkpoints)")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=PRESETS)
    p.add_argument("--variant", default="full", choices=VARIANTS, help="DVQ-VAE ablation variant")
    p.add_argument("--position-sees-codes", action="store_true",
                   help="feed the hand codes to the position decoder too (see DVQVAEConfig.position_sees_codes)")
    p.add_argument("--hand", default="standin", help="'standin' or a MANO_RIGHT.pkl path")
    p.add_argument("--num-points", type=int, default=0, help="object points per sample (0 = preset)")
    p.add_argument("--epochs", type=int, default=None, help="DVQ-VAE / CVAE epochs (default 200)")
    p.add_argument("--batch-size", type=int, default=None, help="DVQ-VAE / CVAE batch (default 32)")
    p.add_argument("--lr", type=float, default=None, help="DVQ-VAE / CVAE learning rate (default 1e-4)")
    p.add_argument("--contact-scale", type=float, default=None,
                   help="DVQ-VAE / CVAE: factor on the contact-term weights lambda_m, lambda_c, lambda_p "
                        "(default 1.0 = the paper's)")
    p.add_argument("--contact-warmup", type=float, default=None,
                   help="DVQ-VAE / CVAE: fraction of the steps over which the contact terms ramp linearly "
                        "from 0 to --contact-scale (default 0.3; 0 = full weight from the start)")
    p.add_argument("--loss-points", type=int, default=None,
                   help="DVQ-VAE / CVAE: object points used by the contact, consistency and penetration terms in "
                        "training steps (default 256; 0 = all, as runs started before this option; validation "
                        "always uses all; see benchmarks/bench_train.py)")
    p.add_argument("--prior-epochs", type=int, default=None, help="prior epochs (default 100)")
    p.add_argument("--prior-batch-size", type=int, default=None, help="prior batch (default 256)")
    p.add_argument("--prior-lr", type=float, default=None, help="prior learning rate (default 3e-4)")
    p.add_argument("--token-views", type=int, default=None, help="augmented passes cached for the prior (default 4)")
    p.add_argument("--model", default=None, help="prior stage: DVQ-VAE checkpoint (default OUT/dvqvae/checkpoint); "
                                                 "validate: the checkpoint to measure (a directory or 'default')")
    p.add_argument("--inputs", nargs="+", default=None, metavar="CHECKPOINT",
                   help="average: the DVQ-VAE (or CVAE) checkpoints to average (same lineage: same model config, "
                        "hand, tensors); written to OUT/<kind>/checkpoint")
    p.add_argument("--mix", nargs="+", type=float, default=None, metavar="W",
                   help="average: one weight per input (normalised to sum 1; default equal)")
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--no-rotate", action="store_true", help="no SO(3) augmentation")
    p.add_argument("--no-gating", action="store_true", help="DVQ-VAE without the skeletal gating (Table 4 ablation)")
    p.add_argument("--rotation", choices=ROTATION_REPRS, default=None,
                   help="DVQ-VAE: how the position decoder regresses the hand's orientation (default 6d, continuous; "
                        "axis_angle is the paper's)")
    p.add_argument("--codebook-init-rows", type=int, default=None,
                   help="DVQ-VAE: k-means-initialise the codebooks once this many encoder outputs per book were "
                        "seen (default 0 = on the first batch)")
    p.add_argument("--hand-frame", choices=HAND_FRAMES, default=None,
                   help="DVQ-VAE: what the hand encoders see (default centred, the paper's: the codes hold posture "
                        "and orientation; object: the hand in the object frame, so the codes hold its place too)")
    p.add_argument("--codebook-size", type=int, default=None,
                   help="DVQ-VAE: entries per hand codebook (default: the preset's, 128 as the paper's; the "
                        "prior's choices per token follow)")
    p.add_argument("--hand-shape", choices=HAND_SHAPES, default=None,
                   help="DVQ-VAE: where the hand's shape (betas) comes from (default decoded, the paper's: from "
                        "the codes, which cannot hold it; given: an input, the GT shape in training and the mean "
                        "hand at inference). --init-from may switch it: the weights are the same")
    p.add_argument("--input-frame", choices=INPUT_FRAMES, default=None,
                   help="the model's input frame (default principal: each cloud and its grasp rotated into the "
                        "cloud's principal axes; centred: translated only, the paper's)")
    p.add_argument("--partial-prob", type=float, default=None,
                   help="share of samples seen as one depth view of the object (default 0.3; 0 = full clouds only)")
    p.add_argument("--partial-method", choices=("visibility", "depth_camera", "auto"), default=None,
                   help="how partial views are made (default visibility: hidden-point removal on the stored "
                        "cloud; depth_camera renders the rebuilt mesh, 100x slower)")
    p.add_argument("--depth-noise", type=float, default=None, help="depth noise std in m (default 0.001)")
    p.add_argument("--table-cut", type=float, default=None,
                   help="partial views: drop points this close (m) to the object's base (default 0.005)")
    p.add_argument("--max-displacement-cm", type=float, default=0.0,
                   help="train only on grasps whose simulated displacement is at most this (0 = all)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out objects when the data has no val split")
    p.add_argument("--val-max-batches", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--num-threads", type=int, default=1,
                   help="torch CPU threads per process (default 1: 1.6-5x the grasps/s of torch's default of "
                        "all cores on the shared 2-core machine, see benchmarks/bench_train.py; 0 = torch's default)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--save-every", type=int, default=None, help="save a training state every N steps")
    p.add_argument("--log-every", type=int, default=None, help="log a step record every N steps")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop cleanly (resumable) after this wall time")
    p.add_argument("--max-steps", type=int, default=0, help="stop cleanly after this many steps per stage")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="DVQ-VAE / CVAE: start a new run from this checkpoint's weights (a directory or 'default'): "
                        "fine-tuning with other settings, or going on from committed weights")
    p.add_argument("--loss-weight", action="append", default=[], metavar="NAME=VALUE",
                   help="DVQ-VAE / CVAE: replace one of the model's loss weights in a new run (repeatable; names "
                        "as in LossWeights: lambda_p, lambda_v, lambda_h, ...; contact_scale still multiplies "
                        "lambda_m, lambda_c, lambda_p)")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out (starts fresh if none)")
    p.add_argument("--progress", dest="progress", action="store_true", default=None, help="force progress bars")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def _name_value(item: str) -> tuple[str, float]:
    name, sep, value = item.partition("=")
    try:
        if not sep:
            raise ValueError
        return name.strip(), float(value)
    except ValueError:
        raise ValueError(f"--loss-weight wants NAME=NUMBER, got {item!r}") from None


_PRIOR_NAMES = {"epochs": "--prior-epochs", "batch_size": "--prior-batch-size", "lr": "--prior-lr"}
_MAIN_ONLY = ("epochs", "batch_size", "lr", "contact_scale", "contact_warmup", "loss_points")


def _check_stage_options(args: argparse.Namespace) -> None:
    """The prior stage has its own epochs / batch / lr options: refuse the DVQ-VAE's rather than ignore them."""
    if args.stage != "prior":
        return
    for name in _MAIN_ONLY:
        if getattr(args, name) is not None:
            flag = "--" + name.replace("_", "-")
            hint = f" (the prior's is {_PRIOR_NAMES[name]})" if name in _PRIOR_NAMES else ""
            raise ValueError(f"{flag} sets the DVQ-VAE / CVAE stage, not the prior{hint}")


def configs(args: argparse.Namespace) -> tuple[TrainConfig, PriorTrainConfig]:
    """The two stage configs from the command line (unset options keep the config defaults)."""
    _check_stage_options(args)
    progress = sys.stderr.isatty() if args.progress is None else bool(args.progress)
    common = dict(data_dir=args.data, out_dir=args.out, preset=args.preset, variant=args.variant, hand=args.hand,
                  position_sees_codes=args.position_sees_codes,
                  num_points=args.num_points, rotate=not args.no_rotate, use_gating=not args.no_gating, max_displacement_cm=args.max_displacement_cm,
                  val_fraction=args.val_fraction, val_max_batches=args.val_max_batches, seed=args.seed,
                  device=args.device, num_threads=args.num_threads, num_workers=args.workers,
                  max_minutes=args.max_minutes, max_steps=args.max_steps, resume=args.resume, progress=progress)
    for name in ("partial_prob", "partial_method", "depth_noise", "table_cut", "input_frame", "rotation",
                 "codebook_init_rows", "hand_frame", "hand_shape", "codebook_size", "init_from"):
        if getattr(args, name) is not None:
            common[name] = getattr(args, name)
    if args.loss_weight:
        common["loss_weights"] = dict(_name_value(item) for item in args.loss_weight)
    if args.grad_clip is not None:
        common["grad_clip"] = args.grad_clip
    if args.save_every is not None:
        common["save_every_steps"] = args.save_every
    if args.log_every is not None:
        common["log_every_steps"] = args.log_every

    def pick(**kw: Optional[object]) -> dict[str, object]:
        return {k: v for k, v in kw.items() if v is not None}

    main_cfg = TrainConfig(**common, **pick(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                            contact_scale=args.contact_scale, contact_warmup=args.contact_warmup,
                                            loss_points=args.loss_points))
    prior_cfg = PriorTrainConfig(**common, **pick(epochs=args.prior_epochs, batch_size=args.prior_batch_size,
                                                  lr=args.prior_lr, token_views=args.token_views))
    return main_cfg, prior_cfg


def _report(r: TrainResult) -> dict[str, object]:
    keys = ("loss", "vertex_err_mm", "contact_ratio", "pen_depth_mm", "nll", "accuracy", "perplexity")
    return {"stage": r.stage, "finished": r.finished, "stop_reason": r.stop_reason, "epoch": r.epoch, "step": r.step,
            "checkpoint": str(r.checkpoint) if r.checkpoint else None, "state": str(r.state_dir),
            "log": str(r.log_path), "elapsed_s": round(r.elapsed_seconds, 1),
            "val": {k: round(v, 4) for k, v in r.metrics.items() if k in keys}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.data is None and args.stage != "average":
            raise ValueError(f"the {args.stage} stage needs --data")
        main_cfg, prior_cfg = configs(args)
    except ValueError as e:
        print(f"dvqvae-train: {e}", file=sys.stderr)
        return 2
    if args.num_threads > 0:
        import torch

        torch.set_num_threads(args.num_threads)
    if args.stage in ("validate", "average"):
        return _measure_or_average(args, main_cfg)
    from dvqvae_training.train import distributed

    try:
        dist_ctx = distributed.from_environment(args.device)  # a torchrun job, or one process
    except (RuntimeError, ValueError, KeyError) as e:
        print(f"dvqvae-train: cannot join the distributed job: {e}", file=sys.stderr)
        return 2
    try:
        code = _run(args, main_cfg, prior_cfg, dist_ctx)
        # rank 0 still validates and saves after the others finish: tearing the gloo group down under
        # it aborted a rank now and then (SIGABRT, "terminate called without an active exception")
        dist_ctx.barrier()
        return code
    finally:
        dist_ctx.close()


def _run(args: argparse.Namespace, main_cfg: TrainConfig, prior_cfg: PriorTrainConfig, dist_ctx: object) -> int:
    if getattr(dist_ctx, "enabled", False) and args.stage in ("prior", "all"):
        print(f"dvqvae-train: the {args.stage!r} stage does not run under torchrun: train the DVQ-VAE (or cvae) "
              "distributed, then `dvqvae-train prior` in one process", file=sys.stderr)
        return 2
    deadline = time.monotonic() + 60.0 * args.max_minutes if args.max_minutes > 0 else None
    try:
        if args.stage == "dvqvae":
            results = [train_dvqvae(main_cfg, deadline=deadline)]
        elif args.stage == "cvae":
            results = [train_cvae(main_cfg, deadline=deadline)]
        elif args.stage == "prior":
            results = [train_prior(prior_cfg, model_checkpoint=args.model, deadline=deadline)]
        else:
            results = train_all(main_cfg, prior_cfg, deadline=deadline)
    except _USER_ERRORS as e:
        print(f"dvqvae-train: {e}", file=sys.stderr)
        return 2
    if not getattr(dist_ctx, "is_main", True):
        return 0 if all(r.finished for r in results) else EXIT_RESUMABLE
    for r in results:
        print(json.dumps(_report(r)))
    done = all(r.finished for r in results) and (args.stage != "all" or len(results) == 2)
    if not done:
        print(f"dvqvae-train: stopped early ({results[-1].stop_reason}); rerun with --resume to continue",
              file=sys.stderr)
        return EXIT_RESUMABLE
    return 0


def _measure_or_average(args: argparse.Namespace, cfg: TrainConfig) -> int:
    """``validate``: print a checkpoint's validation metrics; ``average``: write (and validate) a weight average."""
    from dvqvae_model.checkpoint import load_checkpoint, read_checkpoint_config
    from dvqvae_model.hand.hand_model import load_hand_model
    from dvqvae_training.train.average import average_checkpoints
    from dvqvae_training.train.stages import validate_grasp_model

    try:
        hand = load_hand_model(args.hand)
        validate = (lambda model: validate_grasp_model(model, cfg, hand)) if args.data else None
        if args.stage == "validate":
            if not args.model:
                raise ValueError("validate needs --model (a checkpoint directory or 'default')")
            metrics = validate(load_checkpoint(args.model, hand=hand).model)
            print(json.dumps({"checkpoint": args.model, "val": {k: round(v, 4) for k, v in metrics.items()}}))
            return 0
        if not args.inputs or len(args.inputs) < 2:
            raise ValueError("average needs --inputs with at least two checkpoints")
        out = average_checkpoints(args.inputs, args.out, args.mix, hand=hand, validate=validate)
    except _USER_ERRORS as e:
        print(f"dvqvae-train: {e}", file=sys.stderr)
        return 2
    metrics = read_checkpoint_config(out)["data_info"]["val_metrics"]
    print(json.dumps({"checkpoint": str(out), "val": {k: round(v, 4) for k, v in metrics.items()}}))
    if not metrics:
        print("dvqvae-train: not validated (no --data): the checkpoint records no val_metrics", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
