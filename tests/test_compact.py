"""Compact datasets: pack keeps what cannot be recomputed; unpack rebuilds the rest bit for bit."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dvqvae_model.hand.hand_model import load_hand_model
from dvqvae_training.dataset import compact
from dvqvae_training.dataset.data_cli import main as data_main
from dvqvae_training.dataset.data_cli import recipe_list
from dvqvae_training.dataset.dataset_format import DatasetError, DatasetReader, DatasetWriter, sample_surface
from dvqvae_training.synthesis.objects import make_object

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "datasets" / "default"
N = 200  # points per object (3000 in the real set)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Four procedural objects stored as `synth` stores them: points drawn from the recorded seed."""
    root = tmp_path_factory.mktemp("ds") / "full"
    rng = np.random.default_rng(0)
    with DatasetWriter(root, generator_version="test-1", hand_fingerprint="abc", num_points=N,
                       metric_names=("displacement_cm", "penetration_cm3"), objects_per_shard=3) as w:  # fmt: skip
        for i, r in enumerate(recipe_list(4, seed=7)):
            source = {"recipe": r.to_dict(), "synth": {"seed": 3, "accepted": i}}
            pts, nrm = sample_surface(make_object(r), N, seed=compact.point_seed(r.object_id, source))
            g = i  # object 0 has no grasps: it is kept too
            w.add_object(r.object_id, pts, nrm, source, rng.normal(size=(g, 61)), ["power"] * g,
                         {"displacement_cm": rng.random(g)})  # fmt: skip
    return root


def assert_same(a: Path, b: Path) -> None:
    ra, rb = DatasetReader(a, verify="full"), DatasetReader(b, verify="full")
    assert sorted(ra.object_ids()) == sorted(rb.object_ids())
    for key in ("generator_version", "hand_fingerprint", "num_points", "grasp_types", "metric_names", "extra"):
        assert ra.manifest[key] == rb.manifest[key]
    for oid in ra.object_ids():
        x, y = ra.object(oid), rb.object(oid)
        assert x["split"] == y["split"] and x["source"] == y["source"]
        for k in ("points", "normals", "params", "grasp_type", "metrics"):
            np.testing.assert_array_equal(x[k], y[k], err_msg=f"{oid} {k}")


def test_pack_unpack_round_trip(dataset, tmp_path):
    m = compact.pack(dataset, tmp_path / "c")
    assert (m["num_objects"], m["num_objects_with_grasps"], m["num_grasps"]) == (4, 3, 6)
    assert m["archive_bytes"] < 0.25 * sum(p.stat().st_size for p in (dataset / "shards").iterdir())
    r = compact.unpack(tmp_path / "c", tmp_path / "re", workers=1, progress=False)
    assert (r["rebuilt"], r["grasps"]) == (4, 6)
    assert_same(dataset, tmp_path / "re")


def test_unpack_resumes_without_duplicates(dataset, tmp_path):
    compact.pack(dataset, tmp_path / "c")
    first = compact.unpack(tmp_path / "c", tmp_path / "re", workers=1, limit=2, progress=False)
    assert first["rebuilt"] == 2
    rest = compact.unpack(tmp_path / "c", tmp_path / "re", workers=2, progress=False)
    assert (rest["skipped"], rest["rebuilt"]) == (2, 2)
    assert_same(dataset, tmp_path / "re")


def test_truncated_archive_is_refused(dataset, tmp_path):
    compact.pack(dataset, tmp_path / "c")
    arc = tmp_path / "c" / compact.ARCHIVE
    arc.write_bytes(arc.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="truncated or modified"):
        compact.unpack(tmp_path / "c", tmp_path / "re", workers=1, progress=False)
    assert not (tmp_path / "re").exists()


def test_incomplete_manifest_is_refused(dataset, tmp_path):
    compact.pack(dataset, tmp_path / "c")
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    del m["archive_sha256"]
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="lacks"):
        compact.read_compact(tmp_path / "c")


def test_changed_points_name_the_object(dataset, tmp_path, capsys):
    """A recipe that no longer regenerates the packed points is an error, not a silent new dataset."""
    compact.pack(dataset, tmp_path / "c")
    manifest, arrays = compact.read_compact(tmp_path / "c")
    arrays = dict(arrays)
    seeds = arrays["object_point_seed"].copy()
    seeds[1] += 1  # as if the sampler had drawn other points for object 1
    arrays["object_point_seed"] = seeds
    np.savez_compressed(tmp_path / "c" / compact.ARCHIVE, **arrays)
    import hashlib

    data = (tmp_path / "c" / compact.ARCHIVE).read_bytes()
    manifest.update(archive_sha256=hashlib.sha256(data).hexdigest(), archive_bytes=len(data))
    (tmp_path / "c" / "manifest.json").write_text(json.dumps(manifest))
    assert data_main(["unpack", str(tmp_path / "c"), str(tmp_path / "re"), "--workers", "1", "--no-progress"]) == 1
    assert f"object {arrays['object_id'][1]}: regenerated surface points differ" in capsys.readouterr().err
    assert DatasetReader(tmp_path / "re").num_objects() == 1  # what was checked before it is kept


def test_cli_pack_then_unpack(dataset, tmp_path, capsys):
    assert data_main(["pack", str(dataset), str(tmp_path / "c")]) == 0
    assert "packed 4 objects, 6 grasps" in capsys.readouterr().out
    assert data_main(["unpack", str(tmp_path / "c"), str(tmp_path / "re"), "--workers", "1", "--no-progress"]) == 0
    assert_same(dataset, tmp_path / "re")


def test_default_training_set(tmp_path):
    """The committed default set: its size, its splits, and the first objects rebuild exactly."""
    manifest, a = compact.read_compact(DEFAULT)
    assert manifest["num_grasps"] >= 45_000
    assert manifest["num_objects_with_grasps"] >= 1_900
    assert manifest["num_objects_with_grasps"] == manifest["num_objects"]  # no object is left without grasps
    assert manifest["num_grasps"] == sum(s["grasps"] for s in manifest["splits"].values())
    assert len(set(a["object_id"].tolist())) == len(a["object_id"])  # an object has one split only
    assert set(a["object_split"].tolist()) == {"train", "val", "test", "test_mesh"}
    ids, splits = a["object_id"].tolist(), a["object_split"].tolist()
    urdf = {int(o.split("-")[1]): sp for o, sp in zip(ids, splits) if o.startswith("random_urdf-")}
    assert len(urdf) >= 990  # random_urdfs 000-999 (a few are outside the graspable size range)
    assert all((sp == "test_mesh") == (i >= 800) for i, sp in urdf.items())
    assert manifest["dataset"]["hand_fingerprint"] == load_hand_model("standin").fingerprint
    r = compact.unpack(DEFAULT, tmp_path / "re", workers=1, limit=3, progress=False)
    assert r["rebuilt"] == 3
    assert DatasetReader(tmp_path / "re", verify="full").num_grasps() == r["grasps"]
