"""The compact form of a grasp dataset: what cannot be recomputed, small enough to commit.

A synthesized dataset is mostly object surface points (3,000 points and normals per object:
about 70 kB each), which are a pure function of the object's recipe and a seed. The grasps are
the expensive part (an hour or two of optimisation and physics). ``pack`` keeps only

    DIR/manifest.json   the dataset manifest (settings, generator version, hand fingerprint,
                        synth config) without its shard table, plus counts and the archive hash
    DIR/grasps.npz      per object: id, split, source JSON (recipe + synthesis summary), the
                        seed of its surface points and a hash of those points;
                        per grasp: object row, 61 MANO parameters, type, metrics

and ``unpack`` rebuilds the full sharded dataset from it: meshes from the recipes (or the
referenced mesh files), surface points from the recorded seeds, every object checked against
its recorded points hash, so a rebuilt dataset is the synthesized one bit for bit, or the
command fails naming the object (a changed trimesh/numpy, a missing mesh file). ``unpack``
writes through :class:`DatasetWriter`, so it is atomic and resumable like ``synth``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from dvqvae_model.io import atomic_write_bytes
from dvqvae_training.dataset.dataset_format import (
    MANIFEST,
    PARAM_DIM,
    SPLITS,
    DatasetError,
    DatasetReader,
    DatasetWriter,
    load_npz,
    sample_surface,
)

COMPACT_FORMAT = "dvqvae-grasp-compact"
COMPACT_VERSION = 1
ARCHIVE = "grasps.npz"
# manifest keys that describe the full dataset's files, not its content
_FILE_KEYS = ("shards", "objects", "created_unix", "updated_unix")


def points_hash(points: np.ndarray, normals: np.ndarray) -> str:
    """Hash of an object's stored surface points and normals (float32 bytes)."""
    h = hashlib.sha256(np.ascontiguousarray(points, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(normals, dtype=np.float32).tobytes())
    return h.hexdigest()[:32]


def point_seed(object_id: str, source: dict[str, Any]) -> int:
    """Seed of an object's surface points as ``dvqvae-data synth`` drew them."""
    from dvqvae_training.synthesis.synthesizer import object_seed

    seed = source.get("synth", {}).get("seed")
    if seed is None:
        raise DatasetError(f"object {object_id}: its source records no synthesis seed, so its points cannot be redrawn")
    return object_seed(object_id, int(seed)) % (2**31)


# =============================================================================== pack


def pack(dataset: str | os.PathLike, out: str | os.PathLike, *, hand: Any = None, progress: bool = False) -> dict[str, Any]:
    """Write the compact form of ``dataset`` to folder ``out``; returns its manifest.

    Grasps without a post-hoc label (shards written before labels existed) are labelled here
    with ``hand`` (a model or spec; it must match the dataset's fingerprint). Without ``hand``
    the stand-in is used when it is the dataset's hand; otherwise they stay unlabelled (-1).
    """
    from tqdm import tqdm

    from dvqvae_training.synthesis.grasp_labels import GRASP_LABELS, GraspLabeller

    reader = DatasetReader(dataset, verify="full")
    labels_in = reader.grasp_labels
    if labels_in and labels_in != list(GRASP_LABELS):
        raise DatasetError(f"{dataset}: its grasp labels {labels_in} are not this code's {list(GRASP_LABELS)}")
    labeller = None
    ids, splits, sources, seeds, hashes = [], [], [], [], []
    g_obj, g_params, g_types, g_labels, g_metrics = [], [], [], [], []
    for i in tqdm(range(len(reader.shards)), unit="shard", desc="pack", disable=not progress):
        d = reader.load_shard(i)
        lab = d["grasp_label"].copy() if "grasp_label" in d else np.full(len(d["grasp_params"]), -1, np.int16)
        for o in np.unique(d["grasp_object"][lab < 0]):
            if labeller is None:
                h = _dataset_hand(reader, hand)
                labeller = GraspLabeller(h) if h is not None else False
            if labeller is False:
                break
            rows = np.flatnonzero((d["grasp_object"] == o) & (lab < 0))
            lab[rows] = labeller.label(d["grasp_params"][rows], d["object_points"][o], d["object_normals"][o])
        g_labels.append(lab)
        base = len(ids)
        for o in range(len(d["object_id"])):
            oid, src = str(d["object_id"][o]), str(d["object_source"][o])
            ids.append(oid)
            splits.append(str(d["object_split"][o]))
            sources.append(src)
            seeds.append(point_seed(oid, json.loads(src)))
            hashes.append(points_hash(d["object_points"][o], d["object_normals"][o]))
        g_obj.append(d["grasp_object"].astype(np.int32) + base)
        g_params.append(d["grasp_params"])
        g_types.append(d["grasp_type"])
        g_metrics.append(d["grasp_metrics"])
    m = len(reader.metric_names)
    arrays = {
        "object_id": np.array(ids, dtype=str),
        "object_split": np.array(splits, dtype=str),
        "object_source": np.array(sources, dtype=str),
        "object_point_seed": np.array(seeds, dtype=np.int64),
        "object_points_hash": np.array(hashes, dtype=str),
        "grasp_object": np.concatenate(g_obj) if g_obj else np.zeros(0, np.int32),
        "grasp_params": np.concatenate(g_params) if g_params else np.zeros((0, PARAM_DIM), np.float32),
        "grasp_type": np.concatenate(g_types) if g_types else np.zeros(0, np.int16),
        "grasp_label": np.concatenate(g_labels) if g_labels else np.zeros(0, np.int16),
        "grasp_metrics": np.concatenate(g_metrics) if g_metrics else np.zeros((0, m), np.float32),
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    data = buf.getvalue()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / ARCHIVE, data)
    counts = np.bincount(arrays["grasp_object"], minlength=len(ids)) if len(ids) else np.zeros(0, np.int64)
    manifest = {
        "format": COMPACT_FORMAT,
        "format_version": COMPACT_VERSION,
        "archive": ARCHIVE,
        "archive_sha256": hashlib.sha256(data).hexdigest(),
        "archive_bytes": len(data),
        "num_objects": len(ids),
        "num_objects_with_grasps": int((counts > 0).sum()),
        "num_grasps": int(len(arrays["grasp_params"])),
        "splits": {s: {"objects": splits.count(s), "grasps": int(counts[np.array(splits) == s].sum()) if ids else 0} for s in SPLITS},
        "dataset": {**{k: v for k, v in reader.manifest.items() if k not in _FILE_KEYS}, "grasp_labels": list(GRASP_LABELS)},
    }
    atomic_write_bytes(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def _dataset_hand(reader: DatasetReader, hand: Any) -> Any:
    """The hand model a dataset was made with (labels need its vertices); None if not known."""
    from dvqvae_model.hand.hand_model import load_hand_model

    if hand is None:
        standin = load_hand_model("standin")
        return standin if standin.fingerprint == reader.hand_fingerprint else None
    hand = load_hand_model(hand) if isinstance(hand, str) else hand
    if hand.fingerprint != reader.hand_fingerprint:
        raise DatasetError(
            f"the dataset was made with hand {reader.hand_fingerprint}, not {hand.fingerprint}: pass its hand model"
        )
    return hand


# =============================================================================== unpack


def read_compact(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(manifest, arrays) of a compact dataset, the archive checked against its recorded hash."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{folder}: no readable compact manifest ({e})") from e
    if manifest.get("format") != COMPACT_FORMAT:
        raise DatasetError(f"{folder}: not a compact grasp dataset (format {manifest.get('format')!r})")
    if int(manifest.get("format_version", -1)) > COMPACT_VERSION:
        raise DatasetError(f"{folder}: compact format version {manifest['format_version']} is newer than this code ({COMPACT_VERSION})")
    missing = [k for k in ("archive", "archive_sha256", "archive_bytes", "dataset") if k not in manifest]
    if missing:
        raise DatasetError(f"{folder}: compact manifest lacks {missing}")
    path = folder / Path(manifest["archive"]).name  # the archive lies beside its manifest
    data = path.read_bytes() if path.exists() else b""
    if hashlib.sha256(data).hexdigest() != manifest["archive_sha256"]:
        raise DatasetError(
            f"{path}: missing, truncated or modified ({len(data)} bytes, manifest says {manifest['archive_bytes']}); "
            "if it is a Git LFS pointer or a partial checkout, fetch the file again"
        )
    return manifest, load_npz(path)


def _rebuild_object(args: tuple[str, str, int, int]) -> tuple[str, np.ndarray, np.ndarray]:
    from dvqvae_training.dataset.datasets import mesh_from_source

    object_id, source, seed, num_points = args
    mesh = mesh_from_source(source)
    pts, nrm = sample_surface(mesh, num_points, seed=seed)
    return object_id, pts, nrm


def _parallel_map(fn: Callable[[Any], Any], items: list[Any], workers: int) -> Iterable[Any]:
    if workers <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
        yield from pool.imap(fn, items, chunksize=4)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def unpack(
    compact: str | os.PathLike,
    out: str | os.PathLike,
    *,
    workers: int = 2,
    objects_per_shard: int = 8,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Rebuild the full dataset at ``out`` from the compact one (resumable); returns counts.

    ``limit`` rebuilds only the first objects (for checks). Raises :class:`DatasetError` naming
    the first object whose regenerated points differ from the recorded hash.
    """
    from tqdm import tqdm

    manifest, a = read_compact(compact)
    ds = manifest["dataset"]
    writer = DatasetWriter(
        out,
        generator_version=ds["generator_version"],
        hand_fingerprint=ds["hand_fingerprint"],
        num_points=ds["num_points"],
        grasp_types=ds["grasp_types"],
        metric_names=ds["metric_names"],
        split_ratios=ds["split_ratios"],
        split_salt=ds["split_salt"],
        objects_per_shard=objects_per_shard,
        extra=ds.get("extra", {}),
        grasp_labels=ds.get("grasp_labels"),
    )
    if ds.get("generator_versions") and writer.manifest.get("generator_versions") != ds["generator_versions"]:
        writer.manifest["generator_versions"] = list(ds["generator_versions"])  # objects redone by other versions
        writer._write_manifest()
    n = len(a["object_id"]) if limit is None else min(int(limit), len(a["object_id"]))
    rows_of = np.argsort(a["grasp_object"], kind="stable")
    starts = np.searchsorted(a["grasp_object"][rows_of], np.arange(n + 1))
    todo = [o for o in range(n) if not writer.has_object(str(a["object_id"][o]))]
    jobs = [(str(a["object_id"][o]), str(a["object_source"][o]), int(a["object_point_seed"][o]), int(ds["num_points"])) for o in todo]
    rebuilt = 0
    with writer:
        bar = tqdm(total=n, initial=n - len(todo), unit="obj", disable=not progress, desc="unpack")
        for o, (oid, pts, nrm) in zip(todo, _parallel_map(_rebuild_object, jobs, workers)):
            if points_hash(pts, nrm) != str(a["object_points_hash"][o]):
                raise DatasetError(
                    f"object {oid}: regenerated surface points differ from the packed dataset's "
                    "(different trimesh/numpy than the pinned ones, or a changed mesh file)"
                )
            rows = rows_of[starts[o] : starts[o + 1]]
            writer.add_object(
                oid, pts, nrm, str(a["object_source"][o]), a["grasp_params"][rows], a["grasp_type"][rows],
                a["grasp_metrics"][rows], split=str(a["object_split"][o]),
                labels=a["grasp_label"][rows] if "grasp_label" in a else None,
            )  # fmt: skip
            rebuilt += 1
            bar.update(1)
        bar.close()
    return {"objects": n, "rebuilt": rebuilt, "skipped": n - len(todo), "grasps": int(starts[n])}
