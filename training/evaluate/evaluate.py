"""Evaluation protocol of the paper's Table 1 (method-notes sec. 5) for one or several checkpoints.

For every test object (a split of one of our datasets, or a folder of object meshes) each model
generates K grasps from the object's point cloud with :class:`GraspGenerator`; the grasps are then
measured against the object *mesh*:

* contact ratio (%)        share of grasps with a hand vertex inside or within 5 mm of the object;
* penetration (cm^3)       solid volume inside both the sealed hand and the object on a lattice of
                           stated pitch (default 1 mm; see ``dvqvae_training.evaluate.metrics``);
* displacement (cm)        pybullet simulation of the ObMan / GraspTTA protocol (object under
                           gravity held by the static hand, 35 steps);
* entropy / cluster size   k-means (k = 20) over all grasps of a model: on the 61 parameters (the
                           authors' choice) and, as extra columns, on canonical 21 keypoints in cm
                           (HALO's choice);
* Q index                  0.301 * penetration + 0.699 * displacement (of the means);
* time (s)                 wall time to generate one batch (K grasps of one object), after a warm-up.

Objects are the outer loop, so an object's mesh geometry and convex decomposition are built once and
shared by all models. A pseudo-model ``data`` evaluates the dataset's own grasps (a reference for
what the metrics give on the training distribution).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import trimesh
from tqdm import tqdm

from dvqvae_model.pipeline.generator import GraspGenerator
from dvqvae_model.hand.hand_model import HandModel, load_hand_model
from dvqvae_training.evaluate.metrics import (
    K_CLUSTERS,
    ObjectGeometry,
    canonical_keypoints,
    contact_flags,
    kmeans_diversity,
    penetration_volumes_cm3,
    quality_index,
)

DATA_LABEL = "data"


@dataclass
class EvalConfig:
    """Protocol settings (defaults: the paper's HO-3D protocol, 100 grasps per object)."""

    num_grasps: int = 100
    temperature: float = 1.0
    top_k: Optional[int] = None
    seed: int = 0
    pitch_mm: float = 1.0  # penetration lattice pitch
    simulate: bool = True
    clusters: int = K_CLUSTERS
    num_points: int = 3000  # points sampled from each test mesh (the generator resamples to its own N)
    max_objects: int = 0  # 0 = all
    partial_view: bool = False  # inputs are one simulated depth view of each mesh (Table 3), not its full surface
    device: str = "cpu"
    vhacd_cache: Optional[str] = None  # convex decompositions cache (default: ~/.cache/dvqvae_ros/vhacd)
    progress: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TestObject:
    """One test object: its input cloud and its mesh in the same frame (metres)."""

    name: str
    points: np.ndarray  # [N, 3]
    mesh: trimesh.Trimesh
    gt_params: Optional[np.ndarray] = None  # [G, 61] dataset grasps in the same frame, if any


@dataclass
class ModelSpec:
    """A row of the comparison: ``LABEL=PATH[,refine|,node]``, a bare ``PATH``, or ``data``.

    ``,refine`` refines the raw samples; ``,node`` generates with the node's default settings
    (``pipeline.defaults.DEFAULTS``: over-sample, rank, ...), i.e. what a user of the node receives.
    """

    label: str
    path: Optional[str]
    refine: bool = False
    node: bool = False

    @classmethod
    def parse(cls, spec: str) -> "ModelSpec":
        spec = spec.strip()
        if spec == DATA_LABEL:
            return cls(DATA_LABEL, None)
        label, sep, rest = spec.partition("=")
        if not sep:
            label, rest = "", spec
        refine = node = False
        if rest.endswith(",refine"):
            rest, refine = rest[: -len(",refine")], True
        elif rest.endswith(",node"):
            rest, node = rest[: -len(",node")], True
        if not rest:
            raise ValueError(f"model spec {spec!r} has no path")
        if not label:
            label = Path(rest).name + ("+refine" if refine else "+node" if node else "")
        return cls(label, rest, refine, node)

    def generator_options(self) -> dict[str, Any]:
        """``GraspGenerator`` options of this row (raw: K samples as the model ranks them)."""
        if self.node:
            from dvqvae_model.pipeline.defaults import DEFAULTS

            return DEFAULTS.generator_options()
        return {"refine": self.refine}


# =============================================================================== test objects


def objects_from_dataset(data_dir: str | Path, split: str = "test", max_objects: int = 0) -> list[TestObject]:
    """Objects of a split of one of our datasets, meshes rebuilt from their recipe / mesh path."""
    from dvqvae_training.dataset.dataset_format import DatasetReader
    from dvqvae_training.dataset.datasets import mesh_from_source

    reader = DatasetReader(data_dir)
    ids = reader.object_ids(split)
    if not ids:
        raise ValueError(f"{data_dir}: split {split!r} has no objects")
    out = []
    for oid in ids[: max_objects or None]:
        o = reader.object(oid)
        out.append(TestObject(oid, np.asarray(o["points"], np.float32), mesh_from_source(o["source"]),
                              np.asarray(o["params"], np.float32)))
    return out


def objects_from_meshes(folder: str | Path, num_points: int = 3000, max_objects: int = 0,
                        units: str = "auto", scale: Optional[float] = None) -> list[TestObject]:
    """Objects from a folder of mesh files (HO-3D / FPHA / GRAB style); unusable meshes are skipped."""
    from dvqvae_training.dataset.datasets import MeshFolderDataset

    ds = MeshFolderDataset(folder, num_points=num_points, units=units, scale=scale)
    for path, reason in ds.rejected:
        print(f"skipping {path}: {reason}")
    if len(ds) == 0:
        raise ValueError(f"{folder}: no usable object meshes")
    out = []
    for i in range(min(len(ds), max_objects or len(ds))):
        item = ds.items[i]
        out.append(TestObject(item["name"], (item["points"] + item["center"]).astype(np.float32), ds.mesh(i)))
    return out


# =============================================================================== evaluation


def partial_view(mesh: trimesh.Trimesh, seed: int, min_points: int = 200) -> np.ndarray:
    """One simulated depth-camera view of ``mesh`` (``dvqvae_model.sim.depth_camera``: a random viewpoint,
    sensor noise), in the mesh's frame; the first of up to 10 viewpoints with ``min_points`` points."""
    from dvqvae_model.sim import depth_camera as dc

    rng = np.random.default_rng(seed)
    for _ in range(10):
        pts, cam = dc.capture_object_cloud(mesh, rng)
        if len(pts) >= min_points:
            return dc.transform_points(pts, cam).astype(np.float32)
    raise RuntimeError(f"no depth view of the mesh has {min_points} points (10 viewpoints tried)")


def with_partial_views(objects: Sequence[TestObject], seed: int = 0) -> list[TestObject]:
    """The same objects, each seen as one depth view (seeded per object: every model gets the same views)."""
    return [dataclasses.replace(o, points=partial_view(o.mesh, 1000 * seed + 1000 + i)) for i, o in enumerate(objects)]


def _hand_arrays(hand: HandModel) -> tuple[np.ndarray, np.ndarray]:
    return hand.sealed_faces.cpu().numpy(), hand.faces.cpu().numpy()


def _grasps_of(spec: ModelSpec, gen: Optional[GraspGenerator], obj: TestObject, hand: HandModel, cfg: EvalConfig,
               index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(params [K,61], vertices [K,778,3], keypoints [K,21,3], seconds) for one model and object."""
    if gen is None:  # dataset grasps
        if obj.gt_params is None or len(obj.gt_params) == 0:
            return np.zeros((0, 61), np.float32), np.zeros((0, 778, 3)), np.zeros((0, 21, 3)), float("nan")
        params = obj.gt_params[: cfg.num_grasps]
        with torch.no_grad():
            out = hand.from_params(torch.as_tensor(params, dtype=torch.float32))
        return params, out.vertices.cpu().numpy(), out.keypoints.cpu().numpy(), float("nan")
    t0 = time.perf_counter()
    gs = gen.generate(obj.points, cfg.num_grasps, temperature=cfg.temperature, top_k=cfg.top_k,
                      seed=cfg.seed + index)
    seconds = time.perf_counter() - t0
    return gs.params, gs.vertices, gs.keypoints, seconds


def _summary(rows: list[dict[str, Any]], params: list[np.ndarray], keypoints: list[np.ndarray],
             cfg: EvalConfig) -> dict[str, float]:
    contact = np.concatenate([r["contact"] for r in rows]) if rows else np.zeros(0)
    pen = np.concatenate([r["penetration_cm3"] for r in rows]) if rows else np.zeros(0)
    n = int(len(contact))
    s: dict[str, float] = {"num_objects": float(len(rows)), "num_grasps": float(n), "pitch_mm": cfg.pitch_mm}
    if n == 0:
        return s
    s["contact_ratio_pct"] = 100.0 * float(contact.mean())
    s["penetration_cm3"] = float(pen.mean())
    s["penetration_cm3_std"] = float(pen.std())
    if cfg.simulate:
        disp = np.concatenate([r["displacement_cm"] for r in rows])
        s["displacement_cm"] = float(disp.mean())
        s["displacement_cm_std"] = float(disp.std())
        s["quality_index"] = quality_index(s["penetration_cm3"], s["displacement_cm"])
    P, K = np.concatenate(params), np.concatenate(keypoints)
    if n >= 2:
        d = kmeans_diversity(P, k=cfg.clusters, seed=cfg.seed)
        s["entropy"], s["cluster_size"] = d.entropy, d.cluster_size
        dk = kmeans_diversity(canonical_keypoints(K), k=cfg.clusters, seed=cfg.seed)
        s["entropy_keypoints"], s["cluster_size_keypoints_cm"] = dk.entropy, dk.cluster_size
    times = [r["seconds"] for r in rows if math.isfinite(r["seconds"])]
    if times:
        s["time_per_batch_s"] = float(np.mean(times))
    return s


def evaluate(specs: Sequence[ModelSpec], objects: Sequence[TestObject], cfg: EvalConfig,
             hand: HandModel | str = "standin") -> dict[str, Any]:
    """Run the protocol for every model on every object; returns a JSON-ready report."""
    if not objects or not specs:
        raise ValueError("nothing to evaluate: need at least one object and one model")
    hand = load_hand_model(hand) if isinstance(hand, str) else hand
    sealed, faces = _hand_arrays(hand)
    gens: dict[str, Optional[GraspGenerator]] = {}
    for spec in specs:
        if spec.path is None:
            gens[spec.label] = None
            continue
        gen = GraspGenerator.from_checkpoint(spec.path, hand=hand, device=cfg.device, **spec.generator_options())
        gen.generate(objects[0].points, 2, seed=0)  # warm-up: graph construction is not generation time
        gens[spec.label] = gen
    per: dict[str, dict[str, Any]] = {s.label: {"rows": [], "params": [], "keypoints": []} for s in specs}
    pitch = cfg.pitch_mm / 1000.0
    for i, obj in enumerate(tqdm(objects, desc="objects", disable=not cfg.progress)):
        geo = ObjectGeometry(obj.mesh)
        sim = None
        if cfg.simulate:
            from dvqvae_training.synthesis.physics import GraspSimulator

            sim = GraspSimulator(obj.mesh, cache_dir=cfg.vhacd_cache)
        try:
            for spec in specs:
                params, verts, kps, seconds = _grasps_of(spec, gens[spec.label], obj, hand, cfg, i)
                if len(params) == 0:
                    continue
                row: dict[str, Any] = {
                    "object": obj.name, "seconds": seconds,
                    "contact": contact_flags(verts, geo),
                    "penetration_cm3": penetration_volumes_cm3(verts, sealed, geo, pitch),
                }
                if sim is not None:
                    row["displacement_cm"] = sim.displacements(verts, faces) * 100.0
                per[spec.label]["rows"].append(row)
                per[spec.label]["params"].append(np.asarray(params, np.float64))
                per[spec.label]["keypoints"].append(np.asarray(kps, np.float64))
        finally:
            if sim is not None:
                sim.close()
    models = []
    for spec in specs:
        p = per[spec.label]
        objects_out = [{"object": r["object"], "contact_ratio_pct": 100.0 * float(r["contact"].mean()),
                        "penetration_cm3": float(r["penetration_cm3"].mean()),
                        **({"displacement_cm": float(r["displacement_cm"].mean())} if "displacement_cm" in r else {}),
                        **({"time_s": r["seconds"]} if math.isfinite(r["seconds"]) else {})} for r in p["rows"]]
        models.append({"label": spec.label, "path": spec.path, "refine": spec.refine, "node_defaults": spec.node,
                       "summary": _summary(p["rows"], p["params"], p["keypoints"], cfg), "objects": objects_out})
    return {"protocol": "dvqvae-table1", "config": cfg.to_dict(), "hand_fingerprint": hand.fingerprint,
            "objects": [o.name for o in objects], "models": models}


# =============================================================================== reporting

TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("contact_ratio_pct", "Contact %", "{:.1f}"),
    ("penetration_cm3", "Pen. vol. cm^3", "{:.2f}"),
    ("displacement_cm", "Sim. disp. cm", "{:.2f}"),
    ("entropy", "Entropy", "{:.2f}"),
    ("cluster_size", "Cluster size", "{:.2f}"),
    ("quality_index", "Q", "{:.2f}"),
    ("time_per_batch_s", "Time s", "{:.3f}"),
    ("entropy_keypoints", "Entropy (kp)", "{:.2f}"),
    ("cluster_size_keypoints_cm", "Cluster (kp) cm", "{:.2f}"),
)


def markdown_table(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table (one row per model), with the protocol settings below it."""
    head = "| Model | " + " | ".join(c[1] for c in TABLE_COLUMNS) + " |"
    sep = "|---|" + "|".join("---:" for _ in TABLE_COLUMNS) + "|"
    lines = [head, sep]
    for m in report["models"]:
        s = m["summary"]
        cells = [fmt.format(s[key]) if key in s else "-" for key, _, fmt in TABLE_COLUMNS]
        lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
    c = report["config"]
    lines.append("")
    lines.append(f"{len(report['objects'])} objects, {c['num_grasps']} grasps per object, temperature "
                 f"{c['temperature']}, penetration pitch {c['pitch_mm']} mm, k-means k = {c['clusters']}, "
                 f"simulation {'on' if c['simulate'] else 'off'}; "
                 f"{'one simulated depth view' if c.get('partial_view') else 'the full surface cloud'} of each "
                 "object as input; time = one batch of K grasps for one object.")
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """``results.json`` and ``results.md`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / "results.json", out / "results.md"
    jpath.write_text(json.dumps(report, indent=1, default=float) + "\n")
    mpath.write_text("# Grasp generation evaluation\n\n" + markdown_table(report) + "\n")
    return jpath, mpath
