"""Where does a DVQ-VAE checkpoint's error come from? (``dvqvae-eval --breakdown``)

Before hours of training, split the gap between the model's grasps and its data into parts that
point at different fixes. On the grasps of a dataset split (test by default), per object ``G``
dataset grasps, all in the model's frame (centred, or principal axes: the checkpoint's input_frame) and
measured against the object *mesh*:

* ``data``            the dataset grasps themselves (the reference).
* ``reconstruction``  encode the grasp, quantise, decode (what training optimises). High error here
                      means the auto-encoder itself is the problem (capacity, training time, lr).
* ``continuous``      the same without quantisation (decode the encoder's raw hand latents): the
                      gap to ``reconstruction`` is the price of the codebooks.
* ``posture_only``    the reconstruction's posture (betas + finger pose) with the GT position
                      (global orientation + translation), and ``position_only`` the reverse: which
                      decoder stage carries the vertex error and the penetration. ``shape_only``: the
                      reconstruction's betas alone (the hand's shape, which the part codes cannot hold;
                      ``shape`` in the report gives the share of the data's betas variance recovered).
* ``sampled``         object token from the encoder, ``G`` hand-token sequences from the prior
                      (temperature 1), decoded: the generation path without ranking or refinement.
                      Vertex error is to the *nearest* dataset grasp of the object.

Also per codebook: entries in use and perplexity of the tokens the encoder assigns to these grasps
and of the prior's samples, the "alive" entries by the checkpoint's EMA usage, and the prior's NLL
/ accuracy on the encoder's tokens (teacher forcing) against the uniform baseline ln(K).
Penetration is the Table-1 volume (sealed hand x object mesh on a lattice); contact the Table-1 flag.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from dvqvae_model.checkpoint import load_checkpoint
from dvqvae_model.nets.dvqvae import DVQVAE
from dvqvae_model.hand.hand_model import SLICE_BETAS, SLICE_GLOBAL_ORIENT, SLICE_TRANSL, HandModel, load_hand_model
from dvqvae_model.nets.losses import POSITION_INDEX, POSTURE_INDEX
from dvqvae_model.nets.prior import gumbel_noise
from dvqvae_model.canonical_frame import principal_frame
from dvqvae_model.hand.rigid_motion import WristJoint, transform_hand_params
from dvqvae_training.evaluate.evaluate import TestObject, objects_from_dataset
from dvqvae_training.evaluate.metrics import ObjectGeometry, contact_flags, penetration_volumes_cm3

MODES = ("data", "reconstruction", "continuous", "posture_only", "position_only", "shape_only", "sampled")


@dataclass
class BreakdownConfig:
    grasps_per_object: int = 5
    max_objects: int = 20
    seed: int = 0
    pitch_mm: float = 1.0
    temperature: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic angle (degrees) between axis-angle rotations ``a[G,3]`` and ``b[G,3]``."""
    from scipy.spatial.transform import Rotation

    rel = Rotation.from_rotvec(a).inv() * Rotation.from_rotvec(b)
    return np.degrees(rel.magnitude())


def _usage(tokens: np.ndarray, vocab: int) -> tuple[int, float]:
    """(distinct entries used, perplexity = exp(entropy) of the assignment shares) of one token column."""
    counts = np.bincount(tokens, minlength=vocab).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return int((counts > 0).sum()), float(math.exp(-(p * np.log(p)).sum()))


@torch.no_grad()
def _object_rows(model: DVQVAE, prior: Any, hand: HandModel, obj: TestObject, cfg: BreakdownConfig,
                 index: int, sealed: np.ndarray,
                 wrist: WristJoint) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray, np.ndarray]:
    """Per-mode arrays for one object, plus (encoder tokens [G, 7], sampled tokens [G, 7])."""
    rng = np.random.default_rng([cfg.seed, index])
    g = min(cfg.grasps_per_object, len(obj.gt_params))
    gt_all = np.asarray(obj.gt_params, np.float64)
    gt = gt_all[:g]
    n = model.cfg.num_points
    sel = rng.permutation(len(obj.points))[:n] if len(obj.points) >= n else rng.integers(0, len(obj.points), n)
    pts = np.asarray(obj.points, np.float64)[sel]
    centre = pts.mean(0)
    # the model's frame: x_model = R (x - centre), R the principal axes or the identity (input_frame)
    R = principal_frame(pts - centre) if model.cfg.input_frame == "principal" else np.eye(3)

    def to_model(p: np.ndarray) -> np.ndarray:
        return transform_hand_params(p, R, -(R @ centre), wrist(p[:, :10]))

    x = torch.as_tensor((pts - centre) @ R.T, dtype=torch.float32).unsqueeze(0).expand(g, -1, -1).contiguous()
    gt_c = torch.as_tensor(to_model(gt), dtype=torch.float32)
    out = model(x, gt_c, compute_losses=False)
    rec = out.decoding.params
    cont = model.decode(out.z_hand, out.z_t, out.z_p, betas=gt_c[:, SLICE_BETAS]).params  # a given shape: the GT one
    post = torch.as_tensor(POSTURE_INDEX)
    posi = torch.as_tensor(POSITION_INDEX)
    posture_only, position_only, shape_only = gt_c.clone(), gt_c.clone(), gt_c.clone()
    posture_only[:, post] = rec[:, post]
    position_only[:, posi] = rec[:, posi]
    shape_only[:, SLICE_BETAS] = rec[:, SLICE_BETAS]
    # generation: encoder's object token, prior samples of the hand tokens
    obj_tok = out.tokens[:, 0]
    gen = torch.Generator().manual_seed(cfg.seed * 100_003 + index)
    noise = gumbel_noise(g, prior.num_hand_tokens, prior.max_vocab, generator=gen)
    hand_tok, _ = prior.sample(obj_tok[:1], noise, cfg.temperature)
    sampled = model.decode(model.hand_codes_from_tokens(hand_tok), out.z_t, out.z_p).params
    sampled_tokens = torch.cat([obj_tok[:, None], hand_tok], dim=1)

    params = {"data": gt_c, "reconstruction": rec, "continuous": cont, "posture_only": posture_only,
              "position_only": position_only, "shape_only": shape_only, "sampled": sampled}
    gt_v = hand.from_params(gt_c).vertices
    all_gt_v = hand.from_params(torch.as_tensor(to_model(gt_all), dtype=torch.float32)).vertices
    geo = ObjectGeometry(obj.mesh)
    rows: dict[str, dict[str, np.ndarray]] = {}
    for mode, p in params.items():
        v = hand.from_params(p).vertices
        if mode == "sampled":  # no paired GT: distance to the nearest dataset grasp of this object
            err = (v[:, None] - all_gt_v[None]).norm(dim=-1).mean(-1).min(dim=1).values
        else:
            err = (v - gt_v).norm(dim=-1).mean(-1)
        world = v.numpy().astype(np.float64) @ R + centre
        pn = p.numpy().astype(np.float64)
        gn = gt_c.numpy().astype(np.float64)
        rows[mode] = {
            "vertex_err_mm": err.numpy() * 1000.0,
            "penetration_cm3": penetration_volumes_cm3(world, sealed, geo, cfg.pitch_mm / 1000.0),
            "contact": contact_flags(world, geo).astype(np.float64),
            "orient_err_deg": _angle_deg(gn[:, SLICE_GLOBAL_ORIENT], pn[:, SLICE_GLOBAL_ORIENT]),
            "transl_err_mm": np.linalg.norm(gn[:, SLICE_TRANSL] - pn[:, SLICE_TRANSL], axis=1) * 1000.0,
            "posture_rmse": np.sqrt(((gn[:, POSTURE_INDEX] - pn[:, POSTURE_INDEX]) ** 2).mean(1)),
            "betas_sq_err": ((gn[:, SLICE_BETAS] - pn[:, SLICE_BETAS]) ** 2).sum(1),
        }
        if mode == "data":  # the data's shapes, once: the reference for "betas variance recovered"
            rows[mode]["betas_gt"] = gn[:, SLICE_BETAS]
        if mode == "sampled":  # paired parameter errors mean nothing for samples
            for k in ("orient_err_deg", "transl_err_mm", "posture_rmse", "betas_sq_err"):
                rows[mode][k] = np.full(g, np.nan)
    return rows, out.tokens.numpy(), sampled_tokens.numpy()


def breakdown(checkpoint: str | Path, data_dir: str | Path, split: str = "test",
              cfg: Optional[BreakdownConfig] = None, hand: HandModel | str = "standin",
              progress: bool = False) -> dict[str, Any]:
    """The error breakdown of a DVQ-VAE checkpoint (with prior) on a dataset split; JSON-ready."""
    cfg = cfg or BreakdownConfig()
    hand = load_hand_model(hand) if isinstance(hand, str) else hand
    ck = load_checkpoint(checkpoint, hand=hand)
    if ck.config["kind"] != "dvqvae" or ck.prior is None:
        raise ValueError(f"{checkpoint}: the breakdown needs a DVQ-VAE checkpoint with its prior")
    model, prior = ck.model, ck.prior
    model.eval()
    prior.eval()
    objects = [o for o in objects_from_dataset(data_dir, split, 0) if o.gt_params is not None and len(o.gt_params)]
    objects = objects[: cfg.max_objects or None]
    if not objects:
        raise ValueError(f"{data_dir}: split {split!r} has no objects with grasps")
    sealed = hand.sealed_faces.cpu().numpy()
    acc: dict[str, dict[str, list[np.ndarray]]] = {m: {} for m in MODES}
    enc_tokens, smp_tokens = [], []
    from tqdm import tqdm

    wrist = WristJoint(hand)  # 11 hand passes: built once, not per object
    for i, obj in enumerate(tqdm(objects, desc="breakdown", disable=not progress)):
        rows, et, st = _object_rows(model, prior, hand, obj, cfg, i, sealed, wrist)
        for mode, r in rows.items():
            for k, v in r.items():
                acc[mode].setdefault(k, []).append(v)
        enc_tokens.append(et)
        smp_tokens.append(st)
    betas_gt = np.concatenate(acc["data"]["betas_gt"])
    betas_var = float(betas_gt.var(axis=0).sum())  # total variance of the data's shapes
    shape = {"data_betas_variance": betas_var, "reconstruction_betas_sq_err":
             float(np.concatenate(acc["reconstruction"]["betas_sq_err"]).mean())}
    shape["reconstruction_explained"] = (1.0 - shape["reconstruction_betas_sq_err"] / betas_var) if betas_var > 0 \
        else float("nan")
    modes: dict[str, dict[str, float]] = {}
    for mode in MODES:
        m: dict[str, float] = {}
        for k, parts in acc[mode].items():
            if k in ("betas_gt", "betas_sq_err"):
                continue
            v = np.concatenate(parts)
            if np.isnan(v).all():
                continue
            m[k] = float(np.nanmean(v))
            if k == "penetration_cm3":
                m["penetration_cm3_median"] = float(np.median(v))
            if k == "contact":
                m["contact_pct"] = 100.0 * m.pop("contact")
        modes[mode] = m
    enc = np.concatenate(enc_tokens)
    smp = np.concatenate(smp_tokens)
    alive = torch.cat([model.object_codebook.used_codes(), model.hand_codebook.used_codes()]).tolist()
    books = []
    for j, name in enumerate(model.codebook_names if model.variant != "single_codebook" else
                             ("object",) + tuple(f"hand_{i}" for i in range(6))):
        vocab = model.token_vocab_sizes[j]
        used, ppl = _usage(enc[:, j], vocab)
        row = {"codebook": name, "size": vocab, "encoded_used": used, "encoded_perplexity": ppl,
               "alive_ema": int(alive[min(j, len(alive) - 1)])}
        if j > 0:
            s_used, s_ppl = _usage(smp[:, j], vocab)
            row.update(sampled_used=s_used, sampled_perplexity=s_ppl)
        books.append(row)
    with torch.no_grad():
        t = torch.as_tensor(enc, dtype=torch.long)
        nll = float(prior.nll(t))
        acc_top1 = float((prior.logits(t).argmax(-1) == t[:, 1:]).float().mean())
    return {"protocol": "dvqvae-breakdown", "checkpoint": str(checkpoint), "data": str(data_dir), "split": split,
            "config": cfg.to_dict(), "objects": [o.name for o in objects], "num_grasps": int(len(enc)),
            "modes": modes, "codebooks": books, "shape": shape,
            "prior": {"nll": nll, "uniform_nll": float(math.log(model.token_vocab_sizes[1])),
                      "accuracy": acc_top1, "distinct_encoded_sequences": int(len({tuple(r) for r in enc[:, 1:]})),
                      "distinct_sampled_sequences": int(len({tuple(r) for r in smp[:, 1:]}))}}


MODE_COLUMNS = (("vertex_err_mm", "vertex err mm", "{:.1f}"), ("penetration_cm3", "pen. cm^3 mean", "{:.2f}"),
                ("penetration_cm3_median", "pen. median", "{:.2f}"), ("contact_pct", "contact %", "{:.0f}"),
                ("orient_err_deg", "orient err deg", "{:.1f}"), ("transl_err_mm", "transl err mm", "{:.1f}"),
                ("posture_rmse", "posture RMSE", "{:.3f}"))


def breakdown_markdown(report: dict[str, Any]) -> str:
    """The breakdown as Markdown tables (modes, codebooks, prior)."""
    lines = ["| grasps | " + " | ".join(c[1] for c in MODE_COLUMNS) + " |",
             "|---|" + "|".join("---:" for _ in MODE_COLUMNS) + "|"]
    for mode, m in report["modes"].items():
        cells = [fmt.format(m[k]) if k in m else "-" for k, _, fmt in MODE_COLUMNS]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines += ["", "| codebook | size | alive (EMA) | used by encoder | encoder perplexity | used by prior samples "
              "| sample perplexity |", "|---|---:|---:|---:|---:|---:|---:|"]
    for b in report["codebooks"]:
        s_used = b.get("sampled_used", "-")
        s_ppl = f"{b['sampled_perplexity']:.1f}" if "sampled_perplexity" in b else "-"
        lines.append(f"| {b['codebook']} | {b['size']} | {b['alive_ema']} | {b['encoded_used']} | "
                     f"{b['encoded_perplexity']:.1f} | {s_used} | {s_ppl} |")
    p = report["prior"]
    c = report["config"]
    sh = report["shape"]
    lines += ["", f"Hand shape (betas): the reconstruction's squared error {sh['reconstruction_betas_sq_err']:.2f} "
              f"against the data's variance {sh['data_betas_variance']:.2f}: "
              f"{100 * sh['reconstruction_explained']:.0f} % of it recovered."]
    lines += ["", f"Prior on the encoder's tokens: NLL {p['nll']:.3f} nats/token (uniform {p['uniform_nll']:.3f}), "
              f"top-1 accuracy {100 * p['accuracy']:.1f} %; distinct hand-token sequences: "
              f"{p['distinct_encoded_sequences']} encoded, {p['distinct_sampled_sequences']} sampled "
              f"of {report['num_grasps']}.",
              f"{len(report['objects'])} objects of split '{report['split']}', {c['grasps_per_object']} grasps each, "
              f"penetration pitch {c['pitch_mm']} mm, sampling temperature {c['temperature']}, seed {c['seed']}."]
    return "\n".join(lines)
