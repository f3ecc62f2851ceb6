"""Training curves and codebook usage of a run directory, as one PNG (``dvqvae-eval --curves RUN``).

Reads every stage's ``log.jsonl`` under the run (``dvqvae/``, ``cvae/``, ``prior/``): step records
(training loss at the paper's weights, per-codebook usage) and epoch records (validation metrics).
Panels, all against grasps seen (steps x batch), so runs with different batch sizes line up:

1. training loss (paper weights; a running mean over ``smooth`` steps) and validation loss per epoch;
2. validation vertex error (mm) per epoch, DVQ-VAE and GraspCVAE;
3. codebook entries alive by EMA usage, per codebook (the paper's Fig. 4);
4. perplexity of the codebook assignments in each training batch, per codebook (how many entries
   the encoder really spreads a batch over; collapse shows as a fall towards 1);
5. prior: training and validation NLL per epoch against the uniform baseline, when a prior ran;
6. code usage by the final encoder (the paper's Fig. 4): each codebook's entries sorted by their
   share of the prior's cached training tokens (``prior/tokens.safetensors``), and how many are used.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_log", "plot_curves", "token_usage"]

STAGES = ("dvqvae", "cvae", "prior")
TOKEN_NAMES = ("object", "thumb", "index", "middle", "ring", "pinky", "palm")


def read_log(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """(step records, epoch records, the last 'started' event) of one ``log.jsonl``; torn last lines are skipped."""
    steps: list[dict[str, Any]] = []
    epochs: list[dict[str, Any]] = []
    started: dict[str, Any] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line being written when the run was killed
                continue
            kind = rec.get("kind")
            if kind == "step":
                steps.append(rec)
            elif kind == "epoch":
                epochs.append(rec)
            elif rec.get("event") == "started":
                started = rec
    # a resumed run rewrites the steps after its last state: keep the last record of each step
    steps = list({int(r["step"]): r for r in steps}.values())
    epochs = list({int(r["epoch"]): r for r in epochs}.values())
    return sorted(steps, key=lambda r: r["step"]), sorted(epochs, key=lambda r: r["epoch"]), started


def token_usage(tokens_path: str | Path) -> dict[str, dict[str, Any]]:
    """Per split and codebook: entries used, perplexity and sorted shares of the cached tokens ``[N, 7]``."""
    from safetensors.numpy import load_file

    out: dict[str, dict[str, Any]] = {}
    for split, tok in load_file(str(tokens_path)).items():
        books = {}
        for col in range(tok.shape[1]):
            name = TOKEN_NAMES[col] if col < len(TOKEN_NAMES) else f"book{col}"
            counts = np.bincount(tok[:, col].astype(np.int64))
            share = np.sort(counts[counts > 0])[::-1] / max(1, counts.sum())
            books[name] = {"used": int((counts > 0).sum()), "perplexity": float(np.exp(-(share * np.log(share)).sum())),
                           "shares": share}
        out[split] = {"count": int(tok.shape[0]), "books": books}
    return out


def _running_mean(x: np.ndarray, n: int) -> np.ndarray:
    if n <= 1 or len(x) < n:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    head = c[1:n] / np.arange(1, n)
    return np.concatenate([head, (c[n:] - c[:-n]) / n])


def plot_curves(run_dir: str | Path, out_png: str | Path, smooth: int = 50) -> dict[str, Any]:
    """Write the PNG; return a JSON-ready summary (last validation metrics and usage per stage)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(run_dir)
    logs = {s: run / s / "log.jsonl" for s in STAGES if (run / s / "log.jsonl").is_file()}
    if not logs:
        raise FileNotFoundError(f"no stage logs (dvqvae/, cvae/, prior/ log.jsonl) under {run}")
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    ax_loss, ax_err, ax_alive, ax_perp, ax_prior, ax_spare = axes.ravel()
    summary: dict[str, Any] = {}
    for stage, path in logs.items():
        steps, epochs, started = read_log(path)
        batch = int((started.get("config") or {}).get("batch_size", 32))
        per_epoch = max(1, max((int(r["step"]) for r in steps), default=1) // max(1, len(epochs))) if epochs else 1
        last = epochs[-1] if epochs else {}
        summary[stage] = {"steps": int(steps[-1]["step"]) if steps else 0, "epochs": len(epochs),
                          **{k: v for k, v in last.items() if k.startswith("val_") and isinstance(v, (int, float))}}
        if stage == "prior":
            x = [int(r["epoch"]) for r in epochs]
            for key, label in (("train_loss", "train NLL"), ("val_nll", "val NLL")):
                ys = [r.get(key) for r in epochs]
                if any(y is not None for y in ys):
                    ax_prior.plot(x, ys, marker="o", label=label)
            vocab = ((started.get("prior_config") or {}).get("vocab_sizes") or [])
            if vocab:
                ax_prior.axhline(float(np.mean([math.log(v) for v in vocab[1:]])), ls="--", c="gray",
                                 label="uniform")
            ax_prior.set(title="prior (nats per hand token)", xlabel="epoch")
            ax_prior.legend()
            continue
        if steps:
            seen = np.array([r["step"] for r in steps], dtype=float) * batch
            loss = np.array([r.get("paper_loss", r.get("loss", np.nan)) for r in steps], dtype=float)
            ax_loss.plot(seen, _running_mean(loss, smooth), label=f"{stage} train", alpha=0.8)
        if epochs:
            ex = np.array([r.get("step", (i + 1) * per_epoch) for i, r in enumerate(epochs)], dtype=float) * batch
            ax_loss.plot(ex, [r.get("val_loss", np.nan) for r in epochs], marker="o", label=f"{stage} val")
            ax_err.plot(ex, [r.get("val_vertex_err_mm", np.nan) for r in epochs], marker="o", label=stage)
        books = sorted(k[len("used_codes_"):] for k in (steps[-1] if steps else {}) if k.startswith("used_codes_"))
        for b in books:
            ys = np.array([r.get(f"used_codes_{b}", np.nan) for r in steps], dtype=float)
            ax_alive.plot(seen, ys, label=b)
            pp = np.array([r.get(f"perplexity_{b}", np.nan) for r in steps], dtype=float)
            ax_perp.plot(seen, _running_mean(pp, smooth), label=b)
        if books:
            summary[stage]["alive_codes"] = {b: steps[-1].get(f"used_codes_{b}") for b in books}
    ax_loss.set(title="loss (paper weights)", xlabel="grasps seen", yscale="log")
    ax_err.set(title="validation vertex error (mm)", xlabel="grasps seen")
    ax_alive.set(title="codebook entries alive (EMA usage)", xlabel="grasps seen")
    ax_perp.set(title=f"batch code perplexity (mean of {smooth} steps)", xlabel="grasps seen")
    for ax in (ax_loss, ax_err, ax_alive, ax_perp):
        if ax.has_data():
            ax.legend(fontsize=8)
    if "prior" not in logs:
        ax_prior.axis("off")
    tokens = run / "prior" / "tokens.safetensors"
    if tokens.is_file():
        usage = token_usage(tokens)
        summary["token_usage"] = {split: {name: {k: v for k, v in b.items() if k != "shares"}
                                          for name, b in u["books"].items()} for split, u in usage.items()}
        for name, b in usage["train"]["books"].items():
            ax_spare.plot(np.arange(1, len(b["shares"]) + 1), b["shares"], label=f"{name}: {b['used']} used")
        ax_spare.set(title=f"code usage, {usage['train']['count']} training tokens (Fig. 4)",
                     xlabel="entry (by share)", ylabel="share", yscale="log")
        ax_spare.legend(fontsize=8)
    else:
        ax_spare.axis("off")
    fig.text(0.01, 0.01, _summary_text(summary), va="bottom", family="monospace", fontsize=7)
    fig.suptitle(f"training run {run}")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return summary


def _summary_text(summary: dict[str, Any]) -> str:
    lines = []
    for stage, s in summary.items():
        if stage not in STAGES:
            continue
        lines.append(f"{stage}: {s['epochs']} epochs, {s['steps']} steps")
        for key in ("val_loss", "val_vertex_err_mm", "val_nll", "val_accuracy"):
            if key in s:
                lines.append(f"  {key} {s[key]:.4g}")
    return "\n".join(lines)
