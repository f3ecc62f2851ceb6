"""On-disk grasp dataset: sharded .npz files plus a JSON manifest, resumable and verifiable.

Layout::

    root/manifest.json
    root/shards/shard-000000.npz ...

A shard holds whole objects with all their grasps (an object never spans shards):

=================  ==================  ===============================================
key                dtype / shape        meaning
=================  ==================  ===============================================
object_id          <U  [O]              stable id (e.g. ``ObjectRecipe.object_id``)
object_split       <U  [O]              "train" / "val" / "test"
object_source      <U  [O]              JSON: {"recipe": {...}} or {"mesh": path, ...}
object_points      f32 [O,N,3]          surface points (metres, object frame)
object_normals     f32 [O,N,3]          unit outward normals
grasp_object       i32 [G]              row of the grasp's object in this shard
grasp_params       f32 [G,61]           MANO parameters in the object frame
grasp_type         i16 [G]              index into manifest["grasp_types"], -1 = unknown:
                                        the pre-shape the synthesizer started from
grasp_label        i16 [G]              index into manifest["grasp_labels"], -1 = unlabelled:
                                        what the final grasp is (grasp_labels.py); optional,
                                        shards written before it existed lack it
grasp_metrics      f32 [G,M]            columns = manifest["metric_names"], NaN = missing
=================  ==================  ===============================================

Files are read with ``allow_pickle=False``. The manifest records the format
version, generator version, hand-model fingerprint, split rule and, per shard, its
sha256, byte size, counts and object ids.

Crash safety: a shard is written to a temp file, fsynced and ``os.replace``-d into
place, then the manifest is rewritten the same way. A shard is *committed* only
once the manifest lists it. On resume the writer deletes temp files and shard files
the manifest does not list (their objects were never committed and are reported as
not done), so an interrupted run loses nothing that was committed and never
duplicates an object.

Splits are per object (never per grasp): ``assign_split`` hashes the object id with
a salt into [0, 1) and cuts it by the train/val/test ratios; an explicit split can be
given per object (e.g. the fixed random_urdfs rule).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from dvqvae_model.io import atomic_write_bytes, sha256_file

FORMAT_NAME = "dvqvae-grasp-dataset"
FORMAT_VERSION = 1
PARAM_DIM = 61
SPLITS = ("train", "val", "test", "test_mesh")  # test_mesh: held-out real meshes (random_urdfs 800-999)
DEFAULT_GRASP_TYPES = ("power", "pinch", "tripod", "lateral", "spherical", "hook")
DEFAULT_METRICS = ("displacement_cm", "penetration_cm3", "contact", "max_axis_displacement_cm")
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
_SHARD_RE = re.compile(r"^shard-(\d{6})\.npz$")


class DatasetError(RuntimeError):
    """A dataset that cannot be used as asked (incompatible settings, bad manifest)."""


class CorruptShardError(DatasetError):
    """A shard listed in the manifest is missing, truncated or fails its checksum."""

    def __init__(self, problems: Sequence["ShardProblem"]):
        self.problems = list(problems)
        lines = [f"{len(self.problems)} corrupt shard(s):"] + [f"  {p}" for p in self.problems]
        lines.append(
            "Regenerate them: DatasetWriter(..., drop_corrupt=True) removes them from the manifest "
            "so their objects are produced again."
        )
        super().__init__("\n".join(lines))


@dataclasses.dataclass(frozen=True)
class ShardProblem:
    file: str
    reason: str  # "missing", "truncated", "size mismatch", "checksum mismatch", "unreadable"
    detail: str

    def __str__(self) -> str:
        return f"{self.file}: {self.reason} ({self.detail})"


# =============================================================================== helpers


def assign_split(object_id: str, ratios: Mapping[str, float], salt: str = "") -> str:
    """Deterministic split of an object: sha256(salt:id) -> u in [0,1) cut by the ratios."""
    total = sum(ratios.values())
    if total <= 0:
        raise ValueError("split ratios must sum to a positive number")
    h = hashlib.sha256(f"{salt}:{object_id}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    acc = 0.0
    names = [s for s in SPLITS if s in ratios] + [s for s in ratios if s not in SPLITS]
    for name in names:
        acc += ratios[name] / total
        if u < acc:
            return name
    return names[-1]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read a shard's arrays (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def check_shard(root: Path, entry: Mapping[str, Any], full: bool = True) -> ShardProblem | None:
    """Problem of one manifest shard entry (None if fine). ``full`` also checks sha256."""
    path = Path(root) / entry["file"]
    if not path.is_file():
        return ShardProblem(entry["file"], "missing", "file not found")
    size = path.stat().st_size
    if size < entry["bytes"]:
        return ShardProblem(entry["file"], "truncated", f"{size} of {entry['bytes']} bytes")
    if size != entry["bytes"]:
        return ShardProblem(entry["file"], "size mismatch", f"{size} bytes, manifest says {entry['bytes']}")
    if full:
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            return ShardProblem(entry["file"], "checksum mismatch", f"sha256 {digest[:12]}..., manifest {entry['sha256'][:12]}...")
    return None


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"cannot read manifest {path}: {e}") from e
    if manifest.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path} is not a {FORMAT_NAME} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{path}: format version {manifest.get('format_version')} (this code reads {FORMAT_VERSION})")
    return manifest


# =============================================================================== writer


class DatasetWriter:
    """Append objects with their grasps; flush them as shards; resume after a crash.

    >>> with DatasetWriter(root, generator_version="synth-1", hand_fingerprint=hand.fingerprint) as w:
    ...     for recipe in recipes:
    ...         if w.has_object(recipe.object_id):
    ...             continue                      # done in an earlier run
    ...         w.add_object(recipe.object_id, pts, nrm, {"recipe": recipe.to_dict()}, params, types, metrics)
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        generator_version: str,
        hand_fingerprint: str,
        num_points: int = 3000,
        grasp_types: Sequence[str] = DEFAULT_GRASP_TYPES,
        metric_names: Sequence[str] = DEFAULT_METRICS,
        split_ratios: Mapping[str, float] | None = None,
        split_salt: str = "dvqvae",
        objects_per_shard: int = 64,
        grasps_per_shard: int = 50_000,
        verify: bool = True,
        drop_corrupt: bool = False,
        extra: Mapping[str, Any] | None = None,
        grasp_labels: Sequence[str] | None = None,
        mixed_versions: bool = False,
    ):
        """``mixed_versions``: add objects made by a different generator version than the
        dataset's (e.g. objects redone with other synthesizer settings); every version used is
        listed in the manifest's ``generator_versions``."""
        self.root = Path(root)
        self.generator_version = str(generator_version)
        self.shard_dir = self.root / SHARD_DIR
        self.objects_per_shard = int(objects_per_shard)
        self.grasps_per_shard = int(grasps_per_shard)
        self.recovered: list[str] = []  # what resume cleaned up (for logs)
        settings = {
            "generator_version": str(generator_version),
            "hand_fingerprint": str(hand_fingerprint),
            "num_points": int(num_points),
            "grasp_types": list(grasp_types),
            "metric_names": list(metric_names),
            "split_ratios": dict(split_ratios or {"train": 0.8, "val": 0.1, "test": 0.1}),
            "split_salt": str(split_salt),
        }
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        if (self.root / MANIFEST).exists():
            self.manifest = _read_manifest(self.root)
            for key, value in settings.items():
                if key == "generator_version" and mixed_versions:
                    continue
                if self.manifest.get(key) != value:
                    raise DatasetError(
                        f"{self.root}: cannot resume, {key} differs (dataset {self.manifest.get(key)!r}, writer {value!r})"
                    )
            self._recover(verify=verify, drop_corrupt=drop_corrupt)
        else:
            self.manifest = {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                **settings,
                "created_unix": int(time.time()),
                "extra": dict(extra or {}),
                "shards": [],
                "objects": {},
            }
            self._cleanup_uncommitted()
            self._write_manifest()
        versions = list(self.manifest.get("generator_versions") or [self.manifest["generator_version"]])
        if self.generator_version not in versions:
            self.manifest["generator_versions"] = versions + [self.generator_version]
            self._write_manifest()
        if grasp_labels is not None:  # a later setting: resuming an unlabelled dataset may add it
            have = self.manifest.get("grasp_labels")
            if have is not None and list(have) != list(grasp_labels):
                raise DatasetError(f"{self.root}: grasp labels differ (dataset {have!r}, writer {list(grasp_labels)!r})")
            if have is None:
                self.manifest["grasp_labels"] = list(grasp_labels)
                self._write_manifest()
        self._buffer: list[dict[str, Any]] = []
        self._buffer_ids: set[str] = set()

    # ------------------------------------------------------------------ settings
    @property
    def num_points(self) -> int:
        return int(self.manifest["num_points"])

    @property
    def grasp_types(self) -> list[str]:
        return list(self.manifest["grasp_types"])

    @property
    def metric_names(self) -> list[str]:
        return list(self.manifest["metric_names"])

    # ------------------------------------------------------------------ recovery
    def _cleanup_uncommitted(self) -> None:
        listed = {Path(s["file"]).name for s in self.manifest["shards"]}
        for path in sorted(self.shard_dir.iterdir()):
            if ".tmp" in path.name or (_SHARD_RE.match(path.name) and path.name not in listed):
                path.unlink()
                self.recovered.append(f"removed uncommitted {path.relative_to(self.root)}")
        for path in sorted(self.root.glob(MANIFEST + ".tmp*")):
            path.unlink()
            self.recovered.append(f"removed {path.name}")

    def _recover(self, verify: bool, drop_corrupt: bool) -> None:
        self._cleanup_uncommitted()
        problems = [p for p in (check_shard(self.root, s, full=verify) for s in self.manifest["shards"]) if p]
        if problems and not drop_corrupt:
            raise CorruptShardError(problems)
        if problems:
            bad = {p.file for p in problems}
            for entry in [s for s in self.manifest["shards"] if s["file"] in bad]:
                for oid in entry["object_ids"]:
                    self.manifest["objects"].pop(oid, None)
                path = self.root / entry["file"]
                if path.exists():
                    path.unlink()
                self.recovered.append(f"dropped corrupt {entry['file']} ({len(entry['object_ids'])} objects to redo)")
            self.manifest["shards"] = [s for s in self.manifest["shards"] if s["file"] not in bad]
            self._write_manifest()

    # ------------------------------------------------------------------ queries
    def has_object(self, object_id: str) -> bool:
        """Committed or buffered already (skip it when resuming)."""
        return object_id in self.manifest["objects"] or object_id in self._buffer_ids

    @property
    def done_object_ids(self) -> set[str]:
        return set(self.manifest["objects"]) | set(self._buffer_ids)

    def drop_objects(self, object_ids: Iterable[str]) -> int:
        """Remove committed objects and their grasps (to redo them); returns how many.

        Each affected shard is rewritten without them as a new shard file, committed by the
        manifest, then the old file is deleted: a crash leaves either the old or the new shard
        listed (an unlisted file is removed on resume), never a half-dropped object.
        """
        drop = {str(o) for o in object_ids} & set(self.manifest["objects"])
        if not drop:
            return 0
        self.flush()
        for entry in [s for s in self.manifest["shards"] if drop & set(s["object_ids"])]:
            d = load_npz(self.root / entry["file"])
            keep = np.array([str(o) not in drop for o in d["object_id"]])
            gkeep = keep[d["grasp_object"]]
            remap = np.cumsum(keep) - 1
            self.manifest["shards"].remove(entry)
            for oid in entry["object_ids"]:
                if oid in drop:
                    self.manifest["objects"].pop(oid, None)
            if keep.any():
                arrays = {k: (v[keep] if k.startswith("object_") else v[gkeep]) for k, v in d.items()}
                arrays["grasp_object"] = remap[d["grasp_object"][gkeep]].astype(np.int32)
                data = _npz_bytes(arrays)
                index = 1 + max(
                    [int(_SHARD_RE.match(Path(s["file"]).name).group(1)) for s in self.manifest["shards"]]
                    + [int(_SHARD_RE.match(Path(entry["file"]).name).group(1))]
                )
                rel = f"{SHARD_DIR}/shard-{index:06d}.npz"
                atomic_write_bytes(self.root / rel, data)
                ids = [str(o) for o in arrays["object_id"]]
                splits: dict[str, list[int]] = {}
                for o, sp in enumerate(arrays["object_split"]):
                    c = splits.setdefault(str(sp), [0, 0])
                    c[0] += 1
                    c[1] += int((arrays["grasp_object"] == o).sum())
                self.manifest["shards"].append(
                    {"file": rel, "sha256": _sha256(data), "bytes": len(data), "num_objects": len(ids),
                     "num_grasps": int(len(arrays["grasp_params"])), "splits": splits, "object_ids": ids}
                )  # fmt: skip
                for oid in ids:
                    self.manifest["objects"][oid]["shard"] = rel
            self._write_manifest()  # the commit point
            (self.root / entry["file"]).unlink(missing_ok=True)
        return len(drop)

    def split_of(self, object_id: str) -> str:
        return assign_split(object_id, self.manifest["split_ratios"], self.manifest["split_salt"])

    # ------------------------------------------------------------------ writing
    def add_object(
        self,
        object_id: str,
        points: np.ndarray,
        normals: np.ndarray,
        source: Mapping[str, Any] | str,
        params: np.ndarray,
        grasp_types: Sequence[int | str] | np.ndarray | None = None,
        metrics: Mapping[str, Sequence[float]] | np.ndarray | None = None,
        split: str | None = None,
        labels: Sequence[int | str] | np.ndarray | None = None,
    ) -> str:
        """Buffer one object and its grasps (validated first, so a failure adds nothing).

        Returns the object's split. Raises ValueError for a duplicate id or bad shapes.
        """
        object_id = str(object_id)
        if self.has_object(object_id):
            raise ValueError(f"object {object_id!r} is already in the dataset")
        n = self.num_points
        pts = np.asarray(points, dtype=np.float32)
        nrm = np.asarray(normals, dtype=np.float32)
        if pts.shape != (n, 3) or nrm.shape != (n, 3):
            raise ValueError(f"points and normals must be [{n},3], got {pts.shape} and {nrm.shape}")
        if not (np.isfinite(pts).all() and np.isfinite(nrm).all()):
            raise ValueError("points/normals contain NaN or inf")
        prm = np.asarray(params, dtype=np.float32).reshape(-1, PARAM_DIM)
        G = len(prm)
        if not np.isfinite(prm).all():
            raise ValueError("grasp params contain NaN or inf")
        types = _name_indices(grasp_types, self.grasp_types, G, "grasp type")
        label_names = list(self.manifest.get("grasp_labels") or [])
        if labels is not None and not label_names:
            raise ValueError("labels given, but the dataset was opened without grasp_labels")
        lab = _name_indices(labels, label_names, G, "grasp label")
        M = len(self.metric_names)
        met = np.full((G, M), np.nan, dtype=np.float32)
        if metrics is not None:
            if isinstance(metrics, Mapping):
                unknown = set(metrics) - set(self.metric_names)
                if unknown:
                    raise ValueError(f"unknown metrics {sorted(unknown)}; dataset metrics {self.metric_names}")
                for name, vals in metrics.items():
                    v = np.asarray(vals, dtype=np.float32).reshape(-1)
                    if len(v) != G:
                        raise ValueError(f"metric {name}: {len(v)} values for {G} grasps")
                    met[:, self.metric_names.index(name)] = v
            else:
                arr = np.asarray(metrics, dtype=np.float32)
                if arr.shape != (G, M):
                    raise ValueError(f"metrics array must be [{G},{M}], got {arr.shape}")
                met[:] = arr
        split = split if split is not None else self.split_of(object_id)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        src = source if isinstance(source, str) else json.dumps(source, sort_keys=True, separators=(",", ":"))
        self._buffer.append(
            {"id": object_id, "split": split, "source": src, "points": pts, "normals": nrm,
             "params": prm, "types": types, "labels": lab, "metrics": met}
        )  # fmt: skip
        self._buffer_ids.add(object_id)
        if len(self._buffer) >= self.objects_per_shard or sum(len(b["params"]) for b in self._buffer) >= self.grasps_per_shard:
            self.flush()
        return split

    def flush(self) -> Path | None:
        """Write the buffered objects as one shard and commit it in the manifest."""
        if not self._buffer:
            return None
        buf = self._buffer
        arrays = {
            "object_id": np.array([b["id"] for b in buf]),
            "object_split": np.array([b["split"] for b in buf]),
            "object_source": np.array([b["source"] for b in buf]),
            "object_points": np.stack([b["points"] for b in buf]),
            "object_normals": np.stack([b["normals"] for b in buf]),
            "grasp_object": np.concatenate([np.full(len(b["params"]), i, dtype=np.int32) for i, b in enumerate(buf)]),
            "grasp_params": np.concatenate([b["params"] for b in buf]).reshape(-1, PARAM_DIM),
            "grasp_type": np.concatenate([b["types"] for b in buf]),
            "grasp_label": np.concatenate([b["labels"] for b in buf]),
            "grasp_metrics": np.concatenate([b["metrics"] for b in buf]).reshape(-1, len(self.metric_names)),
        }
        data = _npz_bytes(arrays)
        index = 1 + max((int(_SHARD_RE.match(Path(s["file"]).name).group(1)) for s in self.manifest["shards"]), default=-1)
        rel = f"{SHARD_DIR}/shard-{index:06d}.npz"
        atomic_write_bytes(self.root / rel, data)
        splits: dict[str, list[int]] = {}
        for b in buf:
            c = splits.setdefault(b["split"], [0, 0])
            c[0] += 1
            c[1] += len(b["params"])
        entry = {
            "file": rel,
            "sha256": _sha256(data),
            "bytes": len(data),
            "num_objects": len(buf),
            "num_grasps": int(len(arrays["grasp_params"])),
            "splits": splits,
            "object_ids": [b["id"] for b in buf],
        }
        self.manifest["shards"].append(entry)
        for b in buf:
            self.manifest["objects"][b["id"]] = {"split": b["split"], "shard": rel}
        self._write_manifest()  # the commit point
        self._buffer = []
        self._buffer_ids = set()
        return self.root / rel

    def _write_manifest(self) -> None:
        self.manifest["updated_unix"] = int(time.time())
        atomic_write_bytes(self.root / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True).encode())

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        # Buffered objects are complete (add_object validates before buffering), so they are
        # committed even when the caller's loop raised.
        self.flush()


# =============================================================================== reader


class DatasetReader:
    """Read a dataset; shards are verified (size always, sha256 with ``verify="full"``).

    Shards are loaded lazily and kept in a small LRU cache.
    """

    def __init__(self, root: str | os.PathLike, verify: str = "size", cache_shards: int = 4):
        if verify not in ("full", "size", "none"):
            raise ValueError("verify must be 'full', 'size' or 'none'")
        self.root = Path(root)
        self.manifest = _read_manifest(self.root)
        self.verify_mode = verify
        if verify != "none":
            problems = self.verify(full=verify == "full")
            if problems:
                raise CorruptShardError(problems)
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._cache_order: list[int] = []
        self._cache_size = max(1, int(cache_shards))

    # ------------------------------------------------------------------ manifest views
    @property
    def shards(self) -> list[dict[str, Any]]:
        return self.manifest["shards"]

    @property
    def fingerprint(self) -> str:
        """Identity of the content (shards in order, their hashes, each object's split): equal for any
        copy of the same data wherever it lies, different once a shard is added or rewritten."""
        content = {"shards": [[s["file"], s["sha256"]] for s in self.shards],
                   "splits": sorted((oid, info["split"]) for oid, info in self.manifest["objects"].items())}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def grasp_types(self) -> list[str]:
        return list(self.manifest["grasp_types"])

    @property
    def metric_names(self) -> list[str]:
        return list(self.manifest["metric_names"])

    @property
    def grasp_labels(self) -> list[str]:
        """Names of the post-hoc labels (empty for a dataset written before labels existed)."""
        return list(self.manifest.get("grasp_labels") or [])

    @property
    def hand_fingerprint(self) -> str:
        return str(self.manifest["hand_fingerprint"])

    @property
    def num_points(self) -> int:
        return int(self.manifest["num_points"])

    def verify(self, full: bool = True) -> list[ShardProblem]:
        """Check every listed shard; returns the problems found (empty if all good)."""
        return [p for p in (check_shard(self.root, s, full=full) for s in self.shards) if p]

    def object_ids(self, split: str | None = None) -> list[str]:
        return [oid for oid, info in self.manifest["objects"].items() if split is None or info["split"] == split]

    def num_objects(self, split: str | None = None) -> int:
        return len(self.object_ids(split))

    def num_grasps(self, split: str | None = None) -> int:
        if split is None:
            return sum(int(s["num_grasps"]) for s in self.shards)
        return sum(int(s["splits"].get(split, [0, 0])[1]) for s in self.shards)

    # ------------------------------------------------------------------ data
    def load_shard(self, index: int) -> dict[str, np.ndarray]:
        if index in self._cache:
            self._cache_order.remove(index)
            self._cache_order.append(index)
            return self._cache[index]
        entry = self.shards[index]
        if self.verify_mode != "none":
            problem = check_shard(self.root, entry, full=self.verify_mode == "full")
            if problem:
                raise CorruptShardError([problem])
        try:
            data = load_npz(self.root / entry["file"])
        except Exception as e:  # zipfile / numpy errors on damaged files
            raise CorruptShardError([ShardProblem(entry["file"], "unreadable", str(e))]) from e
        self._cache[index] = data
        self._cache_order.append(index)
        while len(self._cache_order) > self._cache_size:
            self._cache.pop(self._cache_order.pop(0))
        return data

    def grasp_index(self, split: str | None = None) -> np.ndarray:
        """[(shard, row)] of every grasp of the split's objects (int64 [G,2])."""
        return self._index(split, lambda d: d["object_split"][d["grasp_object"]])

    def object_index(self, split: str | None = None) -> np.ndarray:
        """[(shard, object row)] of the split's objects (int64 [O,2])."""
        return self._index(split, lambda d: d["object_split"])

    def _index(self, split: str | None, row_splits: Any) -> np.ndarray:
        """[(shard, row)] of the rows whose split (``row_splits(shard arrays)``) is ``split``."""
        rows = []
        for i, entry in enumerate(self.shards):
            if split is not None and split not in entry["splits"]:
                continue
            per_row = row_splits(self.load_shard(i))
            sel = np.arange(len(per_row)) if split is None else np.nonzero(per_row == split)[0]
            rows.append(np.stack([np.full(len(sel), i), sel], axis=1))
        return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), dtype=np.int64)

    def grasp(self, shard: int, row: int) -> dict[str, Any]:
        """One grasp with its object's points: a dict of numpy arrays and metadata."""
        d = self.load_shard(shard)
        o = int(d["grasp_object"][row])
        return {
            "object_id": str(d["object_id"][o]),
            "split": str(d["object_split"][o]),
            "source": str(d["object_source"][o]),
            "points": d["object_points"][o],
            "normals": d["object_normals"][o],
            "params": d["grasp_params"][row],
            "grasp_type": int(d["grasp_type"][row]),
            "grasp_label": int(d["grasp_label"][row]) if "grasp_label" in d else -1,
            "metrics": d["grasp_metrics"][row],
        }

    def object(self, object_id: str) -> dict[str, Any]:
        """An object's points, normals, source and all its grasps."""
        info = self.manifest["objects"].get(object_id)
        if info is None:
            raise KeyError(object_id)
        index = next(i for i, s in enumerate(self.shards) if s["file"] == info["shard"])
        d = self.load_shard(index)
        o = int(np.nonzero(d["object_id"] == object_id)[0][0])
        sel = d["grasp_object"] == o
        return {
            "object_id": object_id,
            "split": str(d["object_split"][o]),
            "source": str(d["object_source"][o]),
            "points": d["object_points"][o],
            "normals": d["object_normals"][o],
            "params": d["grasp_params"][sel],
            "grasp_type": d["grasp_type"][sel],
            "grasp_label": d["grasp_label"][sel] if "grasp_label" in d else np.full(int(sel.sum()), -1, np.int16),
            "metrics": d["grasp_metrics"][sel],
        }

    def iter_objects(self, split: str | None = None) -> Iterable[dict[str, Any]]:
        for oid in self.object_ids(split):
            yield self.object(oid)


def sample_surface(mesh: Any, num_points: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform surface points [N,3] and their face normals (deterministic in ``seed``)."""
    import trimesh

    pts, face_idx = trimesh.sample.sample_surface(mesh, num_points, seed=seed)
    return np.asarray(pts, dtype=np.float32), np.asarray(mesh.face_normals[face_idx], dtype=np.float32)


def _name_indices(values: Sequence[int | str] | np.ndarray | None, names: Sequence[str], count: int,
                  what: str) -> np.ndarray:
    """Per-grasp indices into ``names`` from names or indices (-1 = none), checked: a typo in a
    type or label name is an error, not a silently unlabelled grasp."""
    out = np.full(count, -1, dtype=np.int16)
    if values is None:
        return out
    vals = list(values)
    if len(vals) != count:
        raise ValueError(f"{len(vals)} {what}s for {count} grasps")
    for i, v in enumerate(vals):
        if isinstance(v, str):
            if v not in names:
                raise ValueError(f"unknown {what} {v!r}; dataset {what}s {list(names)}")
            out[i] = list(names).index(v)
        else:
            if not -1 <= int(v) < len(names):
                raise ValueError(f"{what} index {v} out of range")
            out[i] = int(v)
    return out
