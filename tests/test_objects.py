"""Procedural objects, mesh loading (units, URDF, repair) and the random_urdfs split rule."""
from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from dvqvae_training.synthesis import implicit
from dvqvae_training.synthesis.objects import (
    FAMILIES,
    MAX_EXTENT,
    MIN_EXTENT,
    MeshRejected,
    ObjectRecipe,
    guess_units,
    load_mesh,
    load_random_urdf,
    make_object,
    random_urdf_ids,
    random_urdf_split,
    recipe_from_seed,
    sample_recipe,
)
from dvqvae_training.synthesis.sdf import mesh_occupancy

CHEAP = [f for f in FAMILIES if f not in ("mug", "union")]


@pytest.fixture(scope="module")
def built() -> dict[str, list[trimesh.Trimesh]]:
    """Two objects of every cheap family, one mug and one union (implicit meshing is slower)."""
    out = {f: [make_object(recipe_from_seed(f, s)) for s in (0, 1)] for f in CHEAP}
    out["mug"] = [make_object(recipe_from_seed("mug", 3))]
    out["union"] = [make_object(recipe_from_seed("union", 2))]
    return out


def thin_fraction(mesh: trimesh.Trimesh, depth: float = 0.0015, n: int = 3000) -> float:
    """Share of surface samples whose point ``depth`` inwards (along -normal) is not inside:
    there the solid is thinner than ~2 * depth (knife edges, thin plates)."""
    pts, fi = trimesh.sample.sample_surface(mesh, n, seed=0)
    q = pts - depth * mesh.face_normals[fi]
    return float(1.0 - mesh_occupancy(mesh, q).mean())


@pytest.mark.parametrize("family", FAMILIES)
def test_family_meshes_are_graspable_solids(built, family):
    for mesh in built[family]:
        assert mesh.is_watertight and mesh.is_winding_consistent
        assert mesh.volume > 0
        ext = mesh.extents.max()
        assert MIN_EXTENT - 1e-9 <= ext <= MAX_EXTENT + 1e-9, ext
        np.testing.assert_allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-9)  # bbox-centred
        assert thin_fraction(mesh) < 0.015, family


def test_recipe_json_round_trip_regenerates_identical_mesh(built):
    for family, seed, ref in (("bowl", 0, built["bowl"][0]), ("union", 2, built["union"][0])):
        recipe = recipe_from_seed(family, seed)
        again = ObjectRecipe.from_json(json.loads(json.dumps(recipe.to_json())))
        assert again == recipe
        assert again.object_id == recipe.object_id
        mesh = make_object(again)
        np.testing.assert_array_equal(mesh.vertices, ref.vertices)
        np.testing.assert_array_equal(mesh.faces, ref.faces)


def test_sample_recipe_is_deterministic_and_covers_families():
    a = [sample_recipe(np.random.default_rng(7)) for _ in range(2)]
    assert a[0] == a[1]
    rng = np.random.default_rng(0)
    fams = {sample_recipe(rng).family for _ in range(200)}
    assert fams == set(FAMILIES)
    assert sample_recipe(rng, "torus").family == "torus"
    with pytest.raises(ValueError):
        sample_recipe(rng, "teapot")
    # recipes differ between seeds
    assert recipe_from_seed("cup", 1).params != recipe_from_seed("cup", 2).params


def test_guess_units():
    assert guess_units(0.15) == "m"
    assert guess_units(8.0) == "cm"
    assert guess_units(150.0) == "mm"
    assert guess_units(0.03) == "m"


@pytest.mark.parametrize("units,factor", [("mm", 1000.0), ("cm", 100.0), ("m", 1.0)])
def test_load_mesh_guesses_units(tmp_path, units, factor):
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.04)
    sphere.apply_scale(factor)
    sphere.apply_translation([0.12 * factor, 0.0, 0.0])
    path = tmp_path / f"ball_{units}.stl"
    sphere.export(path)
    mesh = load_mesh(path)
    assert mesh.metadata["units"] == units
    np.testing.assert_allclose(mesh.extents.max(), 0.08, rtol=1e-3)
    np.testing.assert_allclose(mesh.bounds.mean(0), 0.0, atol=1e-9)
    np.testing.assert_allclose(mesh.metadata["center_offset"], [0.12, 0, 0], atol=1e-6)
    # explicit units and scale override the guess
    forced = load_mesh(path, units="m", scale=1.0 / factor, size_range=None)
    np.testing.assert_allclose(forced.extents.max(), 0.08, rtol=1e-3)


def test_load_mesh_urdf_scale_and_origin(tmp_path):
    box = trimesh.creation.box(extents=[4.0, 2.0, 1.0])
    box.export(tmp_path / "part.obj")
    (tmp_path / "thing.urdf").write_text(
        """<robot name="t"><link name="l">
        <visual><origin xyz="1 2 3" rpy="0 0 1.5707963267948966"/>
        <geometry><mesh filename="part.obj" scale="0.02 0.02 0.02"/></geometry></visual>
        </link></robot>"""
    )
    mesh = load_mesh(tmp_path / "thing.urdf")
    assert mesh.metadata["units"] == "m" and mesh.metadata["urdf_scale"] == [0.02] * 3
    # rotated 90 degrees about z: x and y extents swap
    np.testing.assert_allclose(np.sort(mesh.extents), [0.02, 0.04, 0.08], atol=1e-9)
    np.testing.assert_allclose(mesh.extents[:2], [0.04, 0.08], atol=1e-9)


def test_load_mesh_repairs_or_rejects(tmp_path):
    box = trimesh.creation.box(extents=[0.05, 0.05, 0.05])
    holed = trimesh.Trimesh(box.vertices, box.faces[1:], process=False)  # one triangle missing
    holed.export(tmp_path / "holed.ply")
    fixed = load_mesh(tmp_path / "holed.ply")
    assert fixed.is_watertight and fixed.metadata["repaired"]
    np.testing.assert_allclose(fixed.volume, 0.05**3, rtol=1e-6)

    tube = trimesh.creation.cylinder(radius=0.02, height=0.1, sections=32)
    side = tube.faces[np.abs(tube.face_normals[:, 2]) < 0.5]  # no caps: two 32-gon holes
    trimesh.Trimesh(tube.vertices, side, process=False).export(tmp_path / "tube.obj")
    with pytest.raises(MeshRejected, match="not watertight"):
        load_mesh(tmp_path / "tube.obj")
    hull = load_mesh(tmp_path / "tube.obj", allow_convex_hull=True)
    assert hull.metadata["convex_hull"] and hull.is_watertight

    with pytest.raises(MeshRejected, match="graspable range"):
        load_mesh(tmp_path / "holed.ply", units="m", scale=100.0)
    with pytest.raises(MeshRejected, match="no such file"):
        load_mesh(tmp_path / "missing.obj")


def test_random_urdf_split_rule():
    assert all(random_urdf_split(i) == "test_mesh" for i in range(800, 1000))
    train, val, test = (random_urdf_ids(s) for s in ("train", "val", "test"))
    assert test == list(range(800, 1000))
    assert sorted(train + val) == list(range(800))
    assert 50 <= len(val) <= 110  # ~10 %
    assert random_urdf_ids("val") == val  # deterministic


@pytest.mark.parametrize("index", [0, 417, 999])
def test_random_urdfs_load_in_metres(index):
    mesh = load_random_urdf(index)
    assert mesh.is_watertight and mesh.volume > 0
    assert mesh.metadata["urdf_scale"] == [0.015] * 3
    assert 0.01 < mesh.extents.max() < 0.25


def test_marching_tetrahedra_closed_and_accurate():
    # a sphere: closed, genus 0, volume within 1 %
    bounds = np.array([[-0.03] * 3, [0.03] * 3])
    ball = implicit.extract_mesh(lambda p: implicit.sdf_sphere(p, 0.03), bounds, 0.002, target_faces=None)
    assert ball.is_watertight and ball.is_winding_consistent and ball.euler_number == 2
    assert ball.volume == pytest.approx(4 / 3 * np.pi * 0.03**3, rel=0.01)
    # union of a cylinder and a torus through its side: one closed body of genus 1
    rot = np.array([[1.0, 0, 0], [0, 0, -1.0], [0, 1.0, 0]])
    solid = implicit.union(
        lambda p: implicit.sdf_cylinder(p, 0.02, 0.04),
        implicit.transformed(lambda p: implicit.sdf_torus(p, 0.02, 0.005), rot, np.array([0.025, 0.0, 0.0])),
    )
    mesh = implicit.extract_mesh(solid, np.array([[-0.02, -0.02, -0.04], [0.05, 0.02, 0.04]]), 0.0015, target_faces=4000)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.euler_number == 0
    assert len(mesh.faces) <= 4000 and mesh.body_count == 1
