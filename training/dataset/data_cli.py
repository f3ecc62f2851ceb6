"""``dvqvae-data``: make the synthetic grasp training set and look at it.

Subcommands::

    dvqvae-data objects list  [--count N] [--seed S] [--families a,b]   # recipes as JSON lines
    dvqvae-data objects write --out DIR [--count N] [--seed S]          # meshes (.ply) + recipes.jsonl
    dvqvae-data synth OUT [--count N | --recipes FILE | --meshes DIR | --random-urdfs SPLIT]
                          [--workers 2] [--hands 96] [--steps 100] [--max-grasps 40] [--robustness]
    dvqvae-data stats DIR                                                # counts, types, histograms
    dvqvae-data show DIR --out DIR [--objects 6] [--grasps 4] [--sheet PNG]  # PNG gallery
    dvqvae-data pack DIR OUT                  # compact form to commit (recipes, seeds, grasps, metrics)
    dvqvae-data unpack OUT DIR [--workers 2]  # rebuild the full dataset from it (checked, resumable)

``synth`` is resumable: the work unit is one object; the dataset writer
(:mod:`dvqvae_training.dataset.dataset_format`) commits whole objects atomically, so a killed run started
again with the same arguments skips what was committed and redoes the rest (nothing lost, nothing
twice). Each object's grasps are deterministic in (object id, ``--seed``), whatever the worker
count or order. Per object the source JSON keeps the synthesis summary (candidates, rejections by
reason, per-type counts, timings) next to the recipe.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dvqvae_model.sim.visualize import agg_figure, rasterize, save_figure, view_rotation

__all__ = ["ObjectJob", "dataset_stats", "main", "make_jobs", "recipe_list", "render_gallery", "run_job", "synth"]

DEFAULT_POINTS = 3000


# =============================================================================== object sources


@dataclass(frozen=True)
class ObjectJob:
    """One object to synthesise: where its mesh comes from, its id, its split (None = hashed)."""

    kind: str  # "recipe", "mesh", "random_urdf"
    spec: Any  # recipe dict, mesh path, or random_urdfs index
    object_id: str
    split: str | None = None


def recipe_list(count: int, seed: int = 0, families: Sequence[str] | None = None) -> list[Any]:
    """``count`` procedural recipes: families round-robin, parameters drawn from (seed, i)."""
    from dvqvae_training.synthesis.objects import FAMILIES, recipe_from_seed

    fams = list(families or FAMILIES)
    bad = [f for f in fams if f not in FAMILIES]
    if bad:
        raise ValueError(f"unknown families {bad}; known: {list(FAMILIES)}")
    out, seen = [], set()
    i = 0
    while len(out) < count:
        rng = np.random.default_rng([int(seed), i])
        r = recipe_from_seed(fams[i % len(fams)], int(rng.integers(2**31 - 1)))
        i += 1
        if r.object_id not in seen:
            seen.add(r.object_id)
            out.append(r)
    return out


def make_jobs(args: argparse.Namespace) -> list[ObjectJob]:
    """Jobs for the object source chosen on the command line."""
    from dvqvae_training.synthesis.objects import (
        ObjectRecipe,
        find_mesh_files,
        random_urdf_ids,
        random_urdf_split,
    )

    if getattr(args, "recipes", None):
        recs = [ObjectRecipe.from_dict(json.loads(line)) for line in Path(args.recipes).read_text().splitlines() if line.strip()]
        return [ObjectJob("recipe", r.to_dict(), r.object_id) for r in recs]
    if getattr(args, "meshes", None):
        root = Path(args.meshes).resolve()
        return [ObjectJob("mesh", str(p), "file-" + Path(p).relative_to(root).as_posix().replace("/", "_")) for p in find_mesh_files(root)]
    if getattr(args, "random_urdfs", None):
        return [ObjectJob("random_urdf", i, f"random_urdf-{i:03d}", random_urdf_split(i)) for i in random_urdf_ids(args.random_urdfs)]
    fams = args.families.split(",") if getattr(args, "families", None) else None
    return [ObjectJob("recipe", r.to_dict(), r.object_id) for r in recipe_list(args.count, args.object_seed, fams)]


def load_job_mesh(job: ObjectJob) -> tuple[Any, dict[str, Any]]:
    """(watertight mesh in metres, source dict for the dataset) of a job."""
    from dvqvae_training.synthesis.objects import (
        ObjectRecipe,
        load_mesh,
        load_random_urdf,
        make_object,
        random_urdf_path,
    )

    if job.kind == "recipe":
        return make_object(ObjectRecipe.from_dict(job.spec)), {"recipe": dict(job.spec)}
    if job.kind == "mesh":
        return load_mesh(job.spec), {"mesh": str(job.spec)}
    if job.kind == "random_urdf":
        return load_random_urdf(int(job.spec)), {"mesh": random_urdf_path(int(job.spec)), "random_urdf": int(job.spec)}
    raise ValueError(f"unknown job kind {job.kind!r}")


# =============================================================================== workers

_WORKER: dict[str, Any] = {}


def _worker_init(hand_spec: str, config: dict[str, Any], cache_dir: str | None) -> None:
    """Per-process state: one thread, the hand model and the synthesizer (built once)."""
    import torch
    from dvqvae_training.synthesis.synthesizer import GraspSynthesizer, SynthConfig

    from dvqvae_model.hand.hand_model import load_hand_model

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and terminates us
    from dvqvae_training.synthesis.grasp_labels import GraspLabeller

    hand = load_hand_model(hand_spec)
    _WORKER["synth"] = GraspSynthesizer(hand, SynthConfig.from_dict(config))
    _WORKER["labeller"] = GraspLabeller(hand, regions=_WORKER["synth"].prior.regions)
    _WORKER["cache_dir"] = cache_dir


def run_job(job: ObjectJob, seed: int, num_points: int = DEFAULT_POINTS) -> dict[str, Any]:
    """Synthesise one object in this process (worker state from :func:`_worker_init`)."""
    from dvqvae_training.dataset.dataset_format import sample_surface
    from dvqvae_training.synthesis.objects import MeshRejected
    from dvqvae_training.synthesis.synthesizer import object_seed

    t0 = time.perf_counter()
    try:
        mesh, source = load_job_mesh(job)
    except MeshRejected as e:
        return {"job": job, "error": f"mesh rejected: {e.reason}"}
    t_mesh = time.perf_counter() - t0
    try:
        res = _WORKER["synth"].synthesize(mesh, seed=seed, object_id=job.object_id, cache_dir=_WORKER["cache_dir"])
    except (RuntimeError, ValueError, MemoryError, OSError) as e:  # e.g. vhacd or open3d failing on one mesh
        # one bad object must not end a two-hour run: report it; it is retried on resume
        return {"job": job, "error": f"{type(e).__name__}: {e}"}
    pts, nrm = sample_surface(mesh, num_points, seed=object_seed(job.object_id, seed) % (2**31))
    labels = _WORKER["labeller"].label(res.params, pts, nrm)
    summary = res.summary()
    summary["timings"]["mesh_s"] = round(t_mesh, 4)
    source = dict(source, synth={**summary, "seed": int(seed)})
    return {
        "job": job,
        "points": pts,
        "normals": nrm,
        "source": source,
        "params": res.params,
        "types": res.types,
        "labels": labels,
        "metrics": res.metrics,
        "summary": summary,
    }


# =============================================================================== synth


def _writer(out: Path, cfg: Any, hand: Any, num_points: int, objects_per_shard: int, mixed_versions: bool = False) -> Any:
    from dvqvae_training.dataset.dataset_format import DatasetWriter
    from dvqvae_training.synthesis.grasp_labels import GRASP_LABELS
    from dvqvae_training.synthesis.grasp_types import GRASP_TYPE_NAMES, type_table
    from dvqvae_training.synthesis.synthesizer import METRIC_NAMES, SYNTH_VERSION

    return DatasetWriter(
        out,
        generator_version=f"{SYNTH_VERSION}/{cfg.fingerprint()}",
        hand_fingerprint=hand.fingerprint,
        num_points=num_points,
        grasp_types=GRASP_TYPE_NAMES,
        metric_names=METRIC_NAMES,
        objects_per_shard=objects_per_shard,
        extra={"synth_config": cfg.to_dict(), "grasp_type_table": type_table()},
        grasp_labels=GRASP_LABELS,
        mixed_versions=mixed_versions,
    )


def objects_to_redo(writer: Any, object_ids: set[str], large_extent: float) -> list[str]:
    """Objects of ``object_ids`` in the dataset that another generator version made and that are
    large (largest extent >= ``large_extent``) or got no grasps: what ``--large-objects`` redoes."""
    from dvqvae_training.dataset.dataset_format import load_npz

    base = writer.manifest["generator_version"]
    out = []
    for entry in writer.manifest["shards"]:
        if not object_ids & set(entry["object_ids"]):
            continue
        d = load_npz(writer.root / entry["file"])
        counts = np.bincount(d["grasp_object"], minlength=len(d["object_id"]))
        extent = (d["object_points"].max(1) - d["object_points"].min(1)).max(1)
        for o, oid in enumerate(map(str, d["object_id"])):
            if oid not in object_ids:
                continue
            try:
                version = json.loads(str(d["object_source"][o])).get("synth", {}).get("generator_version", base)
            except json.JSONDecodeError:
                version = base
            if version != writer.generator_version and (extent[o] >= large_extent or counts[o] == 0):
                out.append(oid)
    return out


def synth(
    out: str | os.PathLike,
    jobs: Sequence[ObjectJob],
    config: Any,
    *,
    seed: int = 0,
    workers: int = 2,
    hand_spec: str = "standin",
    cache_dir: str | None = None,
    num_points: int = DEFAULT_POINTS,
    objects_per_shard: int = 8,
    target_grasps: int = 0,
    progress: bool = True,
    log: Any = None,
    redo_large: bool = False,
) -> dict[str, Any]:
    """Synthesise grasps for ``jobs`` into the dataset at ``out`` (resumable; see module doc).

    ``redo_large``: objects of ``jobs`` already in the dataset that another generator version
    made and that are large or got no grasps are dropped and synthesised again with ``config``
    (resumable too: an object redone with this version is not redone again).
    """
    import multiprocessing as mp

    from tqdm import tqdm

    from dvqvae_model.hand.hand_model import load_hand_model

    log = log or sys.stderr
    hand = load_hand_model(hand_spec)
    stats = {"objects": 0, "grasps": 0, "candidates": 0, "failed": [], "rejected": {}, "seconds": 0.0}
    t_start = time.perf_counter()
    with _writer(Path(out), config, hand, num_points, objects_per_shard, mixed_versions=redo_large) as writer:
        for msg in writer.recovered:
            print(f"resume: {msg}", file=log)
        if redo_large:
            redo = objects_to_redo(writer, {j.object_id for j in jobs}, config.large_extent)
            if redo:
                print(f"redo: {len(redo)} large or grasp-less objects made by another version", file=log)
                writer.drop_objects(redo)
        done_grasps = sum(int(s["num_grasps"]) for s in writer.manifest["shards"])
        todo = [j for j in jobs if not writer.has_object(j.object_id)]
        skipped = len(jobs) - len(todo)
        if skipped:
            print(f"resume: {skipped} of {len(jobs)} objects already in {out} ({done_grasps} grasps)", file=log)
        if target_grasps and done_grasps >= target_grasps:
            todo = []
        bar = tqdm(total=len(jobs), initial=skipped, unit="obj", disable=not progress, file=log, dynamic_ncols=True, smoothing=0.05)
        total = done_grasps

        def consume(r: dict[str, Any]) -> bool:
            nonlocal total
            job = r["job"]
            bar.update(1)
            if "error" in r:
                stats["failed"].append({"object_id": job.object_id, "error": r["error"]})
                return False
            source = dict(r["source"], synth={**r["source"].get("synth", {}), "generator_version": writer.generator_version})
            writer.add_object(
                job.object_id, r["points"], r["normals"], source, r["params"], r["types"], r["metrics"], split=job.split,
                labels=r["labels"],
            )
            s = r["summary"]
            stats["objects"] += 1
            stats["grasps"] += s["accepted"]
            stats["candidates"] += s["candidates"]
            for k, v in s["rejected"].items():
                stats["rejected"][k] = stats["rejected"].get(k, 0) + v
            total += s["accepted"]
            elapsed = time.perf_counter() - t_start
            bar.set_postfix(
                grasps=total,
                accept=f"{stats['grasps'] / max(1, stats['candidates']):.0%}",
                per_min=f"{stats['grasps'] / max(elapsed, 1e-9) * 60:.0f}",
                refresh=False,
            )
            return bool(target_grasps) and total >= target_grasps

        cfg = config.to_dict()
        if workers <= 1:
            import torch

            threads, sigint = torch.get_num_threads(), signal.getsignal(signal.SIGINT)
            _worker_init(hand_spec, cfg, cache_dir)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                for job in todo:
                    if consume(run_job(job, seed, num_points)):
                        break
            finally:  # in-process run: give the caller its settings back
                torch.set_num_threads(threads)
                signal.signal(signal.SIGINT, sigint)
        else:
            ctx = mp.get_context("spawn")  # no forked torch/open3d/pybullet state
            pool = ctx.Pool(workers, initializer=_worker_init, initargs=(hand_spec, cfg, cache_dir), maxtasksperchild=200)
            try:
                for r in pool.imap_unordered(_run_job_star, [(j, seed, num_points) for j in todo], chunksize=1):
                    if consume(r):
                        break
            finally:
                pool.terminate()
                pool.join()
        bar.close()
    stats["seconds"] = time.perf_counter() - t_start
    stats["total_grasps"] = total
    return stats


def _run_job_star(a: tuple[ObjectJob, int, int]) -> dict[str, Any]:
    return run_job(*a)


# =============================================================================== stats


def _hist_lines(values: np.ndarray, bins: int = 10, width: int = 40, lo: float | None = None, hi: float | None = None) -> list[str]:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return ["    (no values)"]
    lo = float(v.min()) if lo is None else lo
    hi = float(v.max()) if hi is None else hi
    if hi <= lo:
        hi = lo + 1e-9
    counts, edges = np.histogram(np.clip(v, lo, hi), bins=bins, range=(lo, hi))
    top = max(1, counts.max())
    return [f"    [{edges[i]:8.3f}, {edges[i + 1]:8.3f})  {counts[i]:7d}  {'#' * round(width * counts[i] / top)}" for i in range(bins)]


# largest object extent (from the stored surface points), to show where the synthesizer struggles
SIZE_BINS_CM = (6.0, 10.0, 15.0, 20.0)
SIZE_BINS_LABELS = ("<6 cm", "6-10 cm", "10-15 cm", "15-20 cm", ">=20 cm")


def dataset_stats(root: str | os.PathLike, labeller: Any = None) -> dict[str, Any]:
    """Counts per split / type / family, metric arrays, summed synthesis bookkeeping, and the
    confusion of pre-shape types vs post-hoc labels (grasps stored unlabelled are labelled with
    ``labeller`` when given, else counted as unlabelled)."""
    from dvqvae_training.dataset.dataset_format import SPLITS, DatasetReader
    from dvqvae_training.synthesis.grasp_labels import GRASP_LABELS

    reader = DatasetReader(root, verify="size")
    types = reader.grasp_types
    label_names = reader.grasp_labels or list(GRASP_LABELS)
    confusion = np.zeros((len(types) + 1, len(label_names) + 1), np.int64)  # last row/col: unknown
    out: dict[str, Any] = {
        "splits": {s: {"objects": reader.num_objects(s), "grasps": reader.num_grasps(s)} for s in SPLITS},
        "objects": reader.num_objects(),
        "grasps": reader.num_grasps(),
        "types": {t: 0 for t in types},
        "families": {},
        "metrics": {m: [] for m in reader.metric_names},
        "candidates": 0,
        "rejected": {},
        "empty_objects": 0,
        "sizes": {label: {"objects": 0, "grasps": 0, "empty": 0} for label in SIZE_BINS_LABELS},
        "timings": {},
        "label_names": label_names,
        "confusion": confusion,
    }
    for i in range(len(reader.shards)):
        d = reader.load_shard(i)
        for t, c in zip(*np.unique(d["grasp_type"], return_counts=True)):
            name = types[int(t)] if 0 <= int(t) < len(types) else "unknown"
            out["types"][name] = out["types"].get(name, 0) + int(c)
        for m, name in enumerate(reader.metric_names):
            out["metrics"][name].append(d["grasp_metrics"][:, m])
        lab = d["grasp_label"].copy() if "grasp_label" in d else np.full(len(d["grasp_params"]), -1, np.int16)
        if labeller is not None:
            for o in np.unique(d["grasp_object"][lab < 0]):
                rows = np.flatnonzero((d["grasp_object"] == o) & (lab < 0))
                lab[rows] = labeller.label(d["grasp_params"][rows], d["object_points"][o], d["object_normals"][o])
        np.add.at(confusion, (np.where(d["grasp_type"] >= 0, d["grasp_type"], len(types)), np.where(lab >= 0, lab, len(label_names))), 1)
        per_obj = np.bincount(d["grasp_object"], minlength=len(d["object_id"]))
        out["empty_objects"] += int((per_obj == 0).sum())
        extent_cm = 100 * (d["object_points"].max(1) - d["object_points"].min(1)).max(1)
        for o, b in enumerate(np.digitize(extent_cm, SIZE_BINS_CM)):
            c = out["sizes"][SIZE_BINS_LABELS[b]]
            c["objects"] += 1
            c["grasps"] += int(per_obj[o])
            c["empty"] += int(per_obj[o] == 0)
        for o, src in enumerate(d["object_source"]):
            try:
                s = json.loads(str(src))
            except json.JSONDecodeError:
                s = {}
            fam = s.get("recipe", {}).get("family") or ("random_urdf" if "random_urdf" in s else "mesh")
            f = out["families"].setdefault(fam, {"objects": 0, "grasps": 0})
            f["objects"] += 1
            f["grasps"] += int(per_obj[o])
            syn = s.get("synth", {})
            out["candidates"] += int(syn.get("candidates", 0))
            for k, v in syn.get("rejected", {}).items():
                out["rejected"][k] = out["rejected"].get(k, 0) + int(v)
            for k, v in syn.get("timings", {}).items():
                out["timings"][k] = out["timings"].get(k, 0.0) + float(v)
    out["metrics"] = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in out["metrics"].items()}
    return out


def format_stats(st: dict[str, Any]) -> str:
    lines = [f"objects {st['objects']} (without grasps: {st['empty_objects']}), grasps {st['grasps']}"]
    for s, c in st["splits"].items():
        lines.append(f"  {s:5s}  objects {c['objects']:6d}  grasps {c['grasps']:7d}")
    if st["candidates"]:
        lines.append(f"candidates {st['candidates']}, acceptance {st['grasps'] / st['candidates']:.1%}")
        lines.append("rejected by reason:")
        for k, v in sorted(st["rejected"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {k:18s} {v:8d}")
    lines.append("grasp types:")
    for k, v in st["types"].items():
        lines.append(f"  {k:12s} {v:8d}  {v / max(1, st['grasps']):6.1%}")
    conf = np.asarray(st["confusion"])
    if conf.sum():
        names = list(st["label_names"]) + ["unlabelled"]
        cols = [j for j in range(len(names)) if conf[:, j].any()]
        lines.append("final-grasp labels (columns) by pre-shape (rows):")
        lines.append("  " + " " * 12 + "".join(f"{names[j][:9]:>10s}" for j in cols))
        for i, t in enumerate(list(st["types"]) + ["unknown"]):
            if i < len(conf) and conf[i].any():
                lines.append(f"  {t:12s}" + "".join(f"{conf[i, j]:10d}" for j in cols))
        lines.append("  " + f"{'all':12s}" + "".join(f"{conf[:, j].sum():10d}" for j in cols))
        known = conf[: len(st["types"]), : len(st["label_names"])]
        agree = sum(known[i, list(st["label_names"]).index(t)] for i, t in enumerate(st["types"]) if t in st["label_names"])
        if known.sum():
            lines.append(f"  pre-shape and final label agree for {agree / known.sum():.1%} of labelled grasps")
    lines.append("families:")
    for k, v in sorted(st["families"].items()):
        lines.append(f"  {k:12s} objects {v['objects']:6d}  grasps {v['grasps']:7d}  per object {v['grasps'] / max(1, v['objects']):5.1f}")
    lines.append("largest extent:")
    for k, v in st["sizes"].items():
        if v["objects"]:
            lines.append(
                f"  {k:12s} objects {v['objects']:6d}  grasps {v['grasps']:7d}  per object {v['grasps'] / v['objects']:5.1f}"
                f"  without grasps {v['empty']:4d}"
            )
    if st["timings"]:
        lines.append("time (summed over objects, s): " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(st["timings"].items())))
    for name, vals in st["metrics"].items():
        v = vals[np.isfinite(vals)]
        if len(v) == 0:
            lines.append(f"metric {name}: no values")
            continue
        lines.append(f"metric {name}: n {len(v)}  mean {v.mean():.3f}  median {np.median(v):.3f}  min {v.min():.3f}  max {v.max():.3f}")
        lines.extend(_hist_lines(v))
    return "\n".join(lines)


# =============================================================================== rendering
# (the rasterizer and figure helpers live in dvqvae_model.sim.visualize, with the other pictures)



def _points_as_mesh(points: np.ndarray, radius: float = 0.0015) -> tuple[np.ndarray, np.ndarray]:
    """Tiny octahedra at points (when an object's mesh cannot be rebuilt)."""
    o = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float64) * radius
    f = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5], [0, 3, 5]])
    v = (points[:, None, :] + o[None]).reshape(-1, 3)
    faces = (f[None] + 6 * np.arange(len(points))[:, None, None]).reshape(-1, 3)
    return v, faces


VIEWS = ((20.0, -60.0), (-30.0, 120.0), (75.0, 30.0))


def render_grasps_figure(
    object_vertices: np.ndarray,
    object_faces: np.ndarray,
    hands: Sequence[np.ndarray],
    hand_faces: np.ndarray,
    titles: Sequence[str],
    path: str | os.PathLike,
    views: Sequence[tuple[float, float]] = VIEWS,
    size: int = 260,
    suptitle: str | None = None,
) -> Path:
    """One column per hand, one row per view; object blue, hand skin-coloured; PNG at ``path``."""
    n = max(1, len(hands))
    fig = agg_figure((2.6 * n, 2.6 * len(views) + (0.4 if suptitle else 0.0)))
    for c in range(n):
        meshes = [(object_vertices, object_faces, (0.35, 0.55, 0.9))]
        allp = object_vertices
        if hands:
            meshes.append((hands[c], hand_faces, (0.95, 0.72, 0.55)))
            allp = np.concatenate([object_vertices, hands[c]])
        ctr = (allp.max(0) + allp.min(0)) / 2
        half = float((allp.max(0) - allp.min(0)).max()) * 0.58
        for r, (el, az) in enumerate(views):
            ax = fig.add_subplot(len(views), n, r * n + c + 1)
            ax.imshow(rasterize(meshes, view_rotation(el, az), ctr, half, size=size))
            ax.set_axis_off()
            if r == 0 and c < len(titles):
                ax.set_title(titles[c], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)


def _gallery_items(reader: Any, hand: Any, objects: int, grasps: int, split: str | None, seed: int) -> list[dict[str, Any]]:
    """Up to ``objects`` random objects with grasps, each with up to ``grasps`` hands (types spread)."""
    import torch
    from dvqvae_training.dataset.datasets import mesh_from_source

    with_grasps = [oid for oid in reader.object_ids(split) if reader.object(oid)["params"].shape[0]]
    rng = np.random.default_rng(seed)
    pick = [with_grasps[i] for i in sorted(rng.choice(len(with_grasps), size=min(objects, len(with_grasps)), replace=False))] if with_grasps else []
    types, names = reader.grasp_types, reader.metric_names
    items = []
    for oid in pick:
        o = reader.object(oid)
        try:
            mesh = mesh_from_source(o["source"])
            ov, of = np.asarray(mesh.vertices), np.asarray(mesh.faces)
        except (OSError, ValueError, KeyError):  # no recipe / file missing: draw the stored points
            ov, of = _points_as_mesh(o["points"])
        order: list[int] = []  # round-robin over the types present
        by_type: dict[int, list[int]] = {}
        for g, t in enumerate(o["grasp_type"]):
            by_type.setdefault(int(t), []).append(g)
        while len(order) < min(grasps, len(o["params"])):
            for t in sorted(by_type):
                if by_type[t] and len(order) < grasps:
                    order.append(by_type[t].pop(0))
        with torch.no_grad():
            verts = hand.from_params(torch.as_tensor(o["params"][order], dtype=torch.float32)).vertices.numpy()
        titles = []
        for g in order:
            m = dict(zip(names, o["metrics"][g]))
            t = int(o["grasp_type"][g])
            titles.append(
                f"{types[t] if 0 <= t < len(types) else '?'}  d={m.get('displacement_cm', np.nan):.2f}cm"
                f"  p={m.get('penetration_cm3', np.nan):.2f}cm3"
            )
        items.append({"id": oid, "split": o["split"], "vertices": ov, "faces": of, "hands": list(verts), "titles": titles})
    return items


def render_gallery(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    objects: int = 6,
    grasps: int = 4,
    split: str | None = None,
    seed: int = 0,
    hand_spec: str = "standin",
    sheet: str | os.PathLike | None = None,
) -> list[Path]:
    """PNG per object (up to ``grasps`` grasps, types spread, three views); with ``sheet`` also
    one overview picture (a row per object, one view); returns the paths."""
    from dvqvae_training.dataset.dataset_format import DatasetReader

    from dvqvae_model.hand.hand_model import load_hand_model

    reader = DatasetReader(root, verify="size")
    hand = load_hand_model(hand_spec)
    faces = hand.faces.numpy()
    items = _gallery_items(reader, hand, objects, grasps, split, seed)
    paths = [
        render_grasps_figure(
            it["vertices"], it["faces"], it["hands"], faces, it["titles"],
            Path(out) / f"{it['id'].replace('/', '_')}.png", suptitle=f"{it['id']} ({it['split']})",
        )  # fmt: skip
        for it in items
    ]
    if sheet and items:
        paths.append(render_sheet(items, faces, sheet))
    return paths


def render_sheet(items: Sequence[dict[str, Any]], hand_faces: np.ndarray, path: str | os.PathLike, size: int = 220) -> Path:
    """Overview: one row per object, one column per grasp, one view."""
    cols = max(len(it["hands"]) for it in items)
    fig = agg_figure((2.2 * cols, 2.3 * len(items)))
    rot = view_rotation(*VIEWS[0])
    for r, it in enumerate(items):
        for c, (hv, title) in enumerate(zip(it["hands"], it["titles"])):
            allp = np.concatenate([it["vertices"], hv])
            ctr, half = (allp.max(0) + allp.min(0)) / 2, float((allp.max(0) - allp.min(0)).max()) * 0.58
            meshes = [(it["vertices"], it["faces"], (0.35, 0.55, 0.9)), (hv, hand_faces, (0.95, 0.72, 0.55))]
            ax = fig.add_subplot(len(items), cols, r * cols + c + 1)
            ax.imshow(rasterize(meshes, rot, ctr, half, size=size))
            ax.set_axis_off()
            ax.set_title((f"{it['id']}\n" if c == 0 else "\n") + title, fontsize=6.5)
    fig.tight_layout()
    return save_figure(fig, path, dpi=80)


# =============================================================================== command line


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--count", type=int, default=1100, help="procedural objects (default 1100)")
    p.add_argument("--object-seed", type=int, default=0, help="seed of the procedural recipes")
    p.add_argument("--families", default=None, help="comma-separated procedural families (default: all)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--recipes", default=None, help="JSON-lines file of recipes (from `objects list`)")
    g.add_argument("--meshes", default=None, help="folder of mesh / URDF files instead of procedural objects")
    g.add_argument("--random-urdfs", default=None, choices=("train", "val", "trainval", "test_mesh", "all"), help="pybullet random_urdfs split (800-999 are test_mesh)")


def build_parser() -> argparse.ArgumentParser:
    from dvqvae_training.synthesis.synthesizer import SynthConfig

    d = SynthConfig()
    ap = argparse.ArgumentParser(prog="dvqvae-data", description="Synthesise and inspect the grasp training set.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    po = sub.add_parser("objects", help="procedural object recipes: list them or write their meshes")
    po.add_argument("action", choices=("list", "write"))
    po.add_argument("--count", type=int, default=20)
    po.add_argument("--object-seed", type=int, default=0)
    po.add_argument("--families", default=None)
    po.add_argument("--out", default=None, help="folder for `write` (meshes + recipes.jsonl)")
    po.add_argument("--format", default="ply", choices=("ply", "obj", "stl"))

    ps = sub.add_parser("synth", help="synthesise physics-checked grasps into a dataset folder (resumable)")
    ps.add_argument("out", help="dataset folder (created or resumed)")
    _add_source_args(ps)
    ps.add_argument("--seed", type=int, default=0, help="synthesis seed (grasps are deterministic per object and seed)")
    ps.add_argument("--workers", type=int, default=2)
    ps.add_argument("--hands", type=int, default=d.hands_per_object, help="hands optimised per object")
    ps.add_argument("--steps", type=int, default=d.steps)
    ps.add_argument("--max-grasps", type=int, default=d.max_grasps_per_object, help="accepted grasps per object at most")
    ps.add_argument("--types", default=",".join(d.types), help="grasp types to use")
    ps.add_argument("--robustness", action="store_true", help="also simulate gravity along the six axes (recorded)")
    ps.add_argument(
        "--large-objects", action="store_true",
        help="the large-object settings (grasp across thin parts, 2x hands on objects >= 15 cm); objects of the "
             "selection that another version made and that are large or got no grasps are redone",
    )  # fmt: skip
    ps.add_argument("--config", default=None, help="JSON object of further SynthConfig fields")
    ps.add_argument("--target-grasps", type=int, default=0, help="stop once the dataset holds this many grasps (0: all objects)")
    ps.add_argument("--points", type=int, default=DEFAULT_POINTS, help="object surface points stored per object")
    ps.add_argument("--objects-per-shard", type=int, default=8)
    ps.add_argument("--hand", default="standin", help="'standin' or a path to MANO_RIGHT.pkl")
    ps.add_argument("--cache-dir", default=None, help="convex decompositions (default ~/.cache/dvqvae_ros/vhacd)")
    ps.add_argument("--no-progress", action="store_true")

    pt = sub.add_parser("stats", help="counts per split, grasp types, rejection reasons, metric histograms")
    pt.add_argument("dir")
    pt.add_argument("--json", action="store_true", help="print the counts as JSON instead of text")
    pt.add_argument("--label", action="store_true", help="label grasps stored without a post-hoc label (slower)")
    pt.add_argument("--hand", default="standin", help="hand model of the dataset (for --label)")

    pw = sub.add_parser("show", help="PNG gallery of grasps on their objects")
    pw.add_argument("dir")
    pw.add_argument("--out", required=True)
    pw.add_argument("--objects", type=int, default=6)
    pw.add_argument("--grasps", type=int, default=4)
    pw.add_argument("--split", default=None)
    pw.add_argument("--seed", type=int, default=0)
    pw.add_argument("--hand", default="standin")
    pw.add_argument("--sheet", default=None, help="also one overview PNG here (a row per object)")

    pp = sub.add_parser("pack", help="compact form of a dataset (grasps, metrics, recipes, seeds) to commit")
    pp.add_argument("dir")
    pp.add_argument("out")
    pp.add_argument("--hand", default=None, help="hand model of the dataset, to label grasps stored without a label (default: the stand-in if it made the dataset)")
    pp.add_argument("--no-progress", action="store_true")

    pu = sub.add_parser("unpack", help="rebuild a full dataset from its compact form (points redrawn and checked)")
    pu.add_argument("compact")
    pu.add_argument("out")
    pu.add_argument("--workers", type=int, default=2)
    pu.add_argument("--limit", type=int, default=None, help="only the first N objects")
    pu.add_argument("--no-progress", action="store_true")
    return ap


def _cmd_objects(a: argparse.Namespace) -> int:
    from dvqvae_training.synthesis.objects import make_object

    fams = a.families.split(",") if a.families else None
    recs = recipe_list(a.count, a.object_seed, fams)
    if a.action == "list":
        for r in recs:
            print(r.to_json())
        return 0
    if not a.out:
        print("objects write needs --out DIR", file=sys.stderr)
        return 2
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in recs:
        m = make_object(r)
        m.export(out / f"{r.object_id}.{a.format}")
        lines.append(r.to_json())
        print(f"{r.object_id}  extents {np.round(m.extents * 100, 1).tolist()} cm  volume {m.volume * 1e6:.1f} cm3")
    (out / "recipes.jsonl").write_text("\n".join(lines) + "\n")
    return 0


def _cmd_synth(a: argparse.Namespace) -> int:
    from dvqvae_training.synthesis.synthesizer import SynthConfig

    extra = json.loads(a.config) if a.config else {}
    base = SynthConfig.large_objects() if a.large_objects else SynthConfig()
    cfg = SynthConfig.from_dict(
        {
            **base.to_dict(),
            "hands_per_object": a.hands,
            "steps": a.steps,
            "max_grasps_per_object": a.max_grasps,
            "types": tuple(t for t in a.types.split(",") if t),
            "robustness": bool(a.robustness),
            **extra,
        }
    )
    jobs = make_jobs(a)

    def _term(signum: int, frame: Any) -> None:  # `kill`: commit buffered objects like Ctrl-C does
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    print(f"synth: {len(jobs)} objects -> {a.out} ({a.workers} workers, {cfg.hands_per_object} hands x {cfg.steps} steps)", file=sys.stderr)
    try:
        st = synth(
            a.out, jobs, cfg, seed=a.seed, workers=a.workers, hand_spec=a.hand, cache_dir=a.cache_dir,
            num_points=a.points, objects_per_shard=a.objects_per_shard, target_grasps=a.target_grasps,
            progress=not a.no_progress, redo_large=a.large_objects,
        )  # fmt: skip
    except KeyboardInterrupt:
        print("interrupted: committed objects are kept; run the same command again to resume", file=sys.stderr)
        return 130
    rate = st["grasps"] / max(st["seconds"], 1e-9) * 60
    print(
        json.dumps(
            {
                "objects": st["objects"], "grasps": st["grasps"], "total_grasps": st["total_grasps"],
                "acceptance": round(st["grasps"] / max(1, st["candidates"]), 4), "grasps_per_min": round(rate, 1),
                "seconds": round(st["seconds"], 1), "rejected": st["rejected"], "failed": st["failed"][:20],
                "num_failed": len(st["failed"]),
            }
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.cmd == "objects":
        return _cmd_objects(a)
    if a.cmd == "synth":
        return _cmd_synth(a)
    if a.cmd == "stats":
        labeller = None
        if a.label:
            from dvqvae_training.synthesis.grasp_labels import GraspLabeller

            from dvqvae_model.hand.hand_model import load_hand_model

            labeller = GraspLabeller(load_hand_model(a.hand))
        st = dataset_stats(a.dir, labeller=labeller)
        if a.json:
            js = {k: v for k, v in st.items() if k != "metrics"}
            js["confusion"] = np.asarray(st["confusion"]).tolist()
            js["metrics"] = {k: {"n": int(np.isfinite(v).sum()), "mean": float(np.nanmean(v)) if np.isfinite(v).any() else None} for k, v in st["metrics"].items()}
            print(json.dumps(js, indent=1))
        else:
            print(format_stats(st))
        return 0
    if a.cmd in ("pack", "unpack"):
        from dvqvae_training.dataset import compact
        from dvqvae_training.dataset.dataset_format import DatasetError

        try:
            if a.cmd == "pack":
                m = compact.pack(a.dir, a.out, hand=a.hand, progress=not a.no_progress)
                print(f"packed {m['num_objects']} objects, {m['num_grasps']} grasps -> {a.out} ({m['archive_bytes'] / 1e6:.1f} MB)")
            else:
                r = compact.unpack(a.compact, a.out, workers=a.workers, limit=a.limit, progress=not a.no_progress)
                print(f"unpacked {r['objects']} objects ({r['rebuilt']} rebuilt, {r['skipped']} already there), {r['grasps']} grasps -> {a.out}")
        except DatasetError as e:
            print(f"dvqvae-data {a.cmd}: {e}", file=sys.stderr)
            return 1
        return 0
    if a.cmd == "show":
        paths = render_gallery(
            a.dir, a.out, objects=a.objects, grasps=a.grasps, split=a.split, seed=a.seed, hand_spec=a.hand, sheet=a.sheet
        )
        for p in paths:
            print(p)
        if not paths:
            print("no objects with grasps to show", file=sys.stderr)
            return 1
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
