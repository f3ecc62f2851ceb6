"""The paper's Table 4 on our data: every DVQ-VAE ablation trained with the same budget, then evaluated.

    python -m dvqvae_training.evaluate.ablation --data data/grasps --out out/ablation --epochs 2 \\
        [--rows full,no_gating] [--max-objects 40 --num-grasps 5] [--eval-only]

Each row is ``dvqvae-train all`` (DVQ-VAE + prior) with the base recipe of the bundled model and one
change, into ``OUT/<row>/``; rows that finished are skipped and a stopped row resumes, so the
command can be rerun until it is done. Then the Table-1 protocol (``dvqvae-eval``) runs on all
finished rows on the same test objects and writes ``OUT/results.md`` / ``results.json``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from dvqvae_model.hand.hand_model import load_hand_model
from dvqvae_training.evaluate.evaluate import (
    EvalConfig,
    ModelSpec,
    evaluate,
    markdown_table,
    objects_from_dataset,
    write_report,
)
from dvqvae_training.train import PriorTrainConfig, TrainConfig, train_all

#: Table 4's rows: what each changes in the base recipe (TrainConfig fields).
ROWS: dict[str, dict[str, Any]] = {
    "full": {},
    "single_codebook": {"variant": "single_codebook"},
    "no_dual_stage": {"variant": "no_dual_stage"},
    "one_object_encoder": {"variant": "one_object_encoder"},
    "reverse_order": {"variant": "reverse_order"},
    "no_gating": {"use_gating": False},
    "no_position_codes": {"position_sees_codes": False},
    # not the paper's: the hand encoders see the hand in the object frame, so the codes carry its place
    "hand_in_object_frame": {"hand_frame": "object"},
}

#: The bundled model's recipe (README), shortened by --epochs.
BASE: dict[str, Any] = dict(position_sees_codes=True, lr=3e-4, contact_scale=0.02, contact_warmup=0.3,
                            num_threads=1, progress=False)


def row_configs(row: str, data: str, out: Path, epochs: int, prior_epochs: int, token_views: int = 4,
                **overrides: Any) -> tuple[TrainConfig, PriorTrainConfig]:
    if row not in ROWS:
        raise ValueError(f"unknown ablation row {row!r}; expected some of {', '.join(ROWS)}")
    common = dict(BASE, data_dir=data, out_dir=str(out / row), resume=True, **overrides)
    return (TrainConfig(**dict(common, epochs=epochs, **ROWS[row])),
            PriorTrainConfig(**dict(common, epochs=prior_epochs, token_views=token_views, **ROWS[row])))


def run(rows: Sequence[str], data: str, out: Path, *, epochs: int, prior_epochs: int, eval_cfg: EvalConfig,
        split: str = "test", token_views: int = 4, eval_only: bool = False,
        **overrides: Any) -> Optional[dict[str, Any]]:
    """Train the rows that are not finished, then evaluate the finished ones; the report (None: nothing
    finished, or stopped by a signal). ``eval_only``: evaluate the finished rows and train nothing (e.g.
    while other processes train the remaining rows into the same ``out``: one process per row at a time)."""
    hand = load_hand_model("standin")
    specs = []
    for row in rows:
        if eval_only:  # table what has finished, train nothing
            if (out / row / "checkpoint" / "config.json").is_file():
                specs.append(ModelSpec(row, str(out / row / "checkpoint")))
            else:
                print(f"{row}: not finished, left out of the table", flush=True)
            continue
        cfg, prior_cfg = row_configs(row, data, out, epochs, prior_epochs, token_views, **overrides)
        results = train_all(cfg, prior_cfg, hand=hand)
        if any(r.stop_reason == "signal" for r in results):  # the user stopped the driver, not just this row
            print(f"{row}: stopped by a signal; rerun to resume", flush=True)
            return None
        done = all(r.finished for r in results) and len(results) == 2
        print(f"{row}: {'finished' if done else 'stopped early (rerun to resume)'}", flush=True)
        if done:
            specs.append(ModelSpec(row, str(out / row / "checkpoint")))
    if not specs:
        return None
    report = evaluate(specs, objects_from_dataset(data, split, eval_cfg.max_objects), eval_cfg, hand=hand)
    report["ablation"] = {"rows": {s.label: ROWS[s.label] for s in specs}, "base": BASE, "epochs": epochs,
                          "prior_epochs": prior_epochs, "token_views": token_views, "overrides": overrides}
    write_report(report, out)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", default="out/ablation")
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    ap.add_argument("--epochs", type=int, default=2, help="DVQ-VAE epochs per row (the shared budget)")
    ap.add_argument("--prior-epochs", type=int, default=20)
    ap.add_argument("--token-views", type=int, default=4, help="augmented passes cached for each row's prior")
    ap.add_argument("--eval-only", action="store_true", help="table the finished rows, train nothing")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-objects", type=int, default=40)
    ap.add_argument("--num-grasps", type=int, default=5)
    ap.add_argument("--pitch-mm", type=float, default=1.0)
    ap.add_argument("--no-sim", action="store_true")
    ap.add_argument("--num-points", type=int, default=0, help="object points per sample (0 = the preset's)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    try:
        for r in rows:
            if r not in ROWS:
                raise ValueError(f"unknown ablation row {r!r}; expected some of {', '.join(ROWS)}")
        eval_cfg = EvalConfig(num_grasps=args.num_grasps, pitch_mm=args.pitch_mm, simulate=not args.no_sim,
                              max_objects=args.max_objects, progress=False)
        report = run(rows, args.data, Path(args.out), epochs=args.epochs, prior_epochs=args.prior_epochs,
                     eval_cfg=eval_cfg, split=args.split, token_views=args.token_views, eval_only=args.eval_only,
                     num_points=args.num_points, batch_size=args.batch_size)
    except (ValueError, FileNotFoundError) as exc:
        print(f"ablation: error: {exc}", file=sys.stderr)
        return 2
    if report is None:
        print("stopped, or no row finished yet: rerun to resume")
        return 75
    print(markdown_table(report))
    print(f"\nwrote {Path(args.out) / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
