"""Tests of the open stand-in right hand asset, loaded through smplx.MANO directly.

Why: every other component relies on this asset having MANO's exact layout and
conventions and behaving like a human hand (closed, adult-sized, bends
without collapsing, meaningful shape directions, deterministic generation).
"""
from __future__ import annotations

import hashlib
import os
import pickle
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import trimesh
from scipy.sparse.csgraph import connected_components

smplx = pytest.importorskip("smplx")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSET = os.path.join(ROOT, "dvqvae_model", "assets", "standin_right.pkl")
sys.path.insert(0, os.path.join(ROOT, "tools"))

import make_standin_hand as gen  # noqa: E402
from standin_hand.rigging import part_labels  # noqa: E402
from standin_hand.skeleton import FINGER_JOINTS, PART_NAMES, build_skeleton  # noqa: E402

BONES_MM = {  # wrist->first joint, phalanges, last joint->tip
    "index": (91, 33, 22, 24), "middle": (95, 32, 23, 27), "ring": (86, 29, 25, 24),
    "pinky": (82, 21, 19, 19), "thumb": (39, 31, 27, 35),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only what a pickle of plain numpy arrays needs."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"forbidden global {module}.{name}")
        return super().find_class(module, name)


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return smplx.MANO(model_path=ASSET, use_pca=False, flat_hand_mean=True, is_rhand=True)


@pytest.fixture(scope="module")
def raw() -> dict:
    with open(ASSET, "rb") as fh:
        return _NumpyOnlyUnpickler(fh, encoding="latin1").load()


def _forward(model, hand_pose=None, betas=None) -> tuple[np.ndarray, np.ndarray]:
    hp = torch.zeros(1, 45) if hand_pose is None else torch.as_tensor(hand_pose, dtype=torch.float32)[None]
    b = torch.zeros(1, 10) if betas is None else torch.as_tensor(betas, dtype=torch.float32)[None]
    with torch.no_grad():
        out = model(betas=b, global_orient=torch.zeros(1, 3), hand_pose=hp, transl=torch.zeros(1, 3))
    return out.vertices[0].numpy().astype(np.float64), out.joints[0].numpy().astype(np.float64)


def _faces(model) -> np.ndarray:
    return np.asarray(model.faces, dtype=np.int64)


def _flex_pose(finger: str, degrees: float = 90.0) -> np.ndarray:
    axis = build_skeleton().bend_axis(finger)
    pose = np.zeros(45)
    for j in FINGER_JOINTS[finger]:
        pose[3 * (j - 1):3 * j] = axis * np.deg2rad(degrees)
    return pose


def _adjacency(faces: np.ndarray, n: int) -> sp.csr_matrix:
    i = faces.reshape(-1)
    j = faces[:, [1, 2, 0]].reshape(-1)
    a = sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    return (a + a.T).tocsr()


# -- layout -------------------------------------------------------------------------
def test_layout_and_shapes(model, raw):
    assert set(raw) == {"v_template", "f", "J_regressor", "kintree_table", "weights", "posedirs",
                        "shapedirs", "hands_components", "hands_mean"}
    assert all(type(v) is np.ndarray for v in raw.values())
    assert raw["v_template"].shape == (778, 3)
    assert raw["f"].shape == (1552, 3) and np.issubdtype(raw["f"].dtype, np.integer)
    assert raw["J_regressor"].shape == (16, 778)
    assert raw["weights"].shape == (778, 16)
    assert raw["posedirs"].shape == (778, 3, 135)
    assert raw["shapedirs"].shape == (778, 3, 10)
    np.testing.assert_array_equal(raw["hands_components"], np.eye(45))
    np.testing.assert_array_equal(raw["hands_mean"], np.zeros(45))
    assert raw["kintree_table"].shape == (2, 16)
    np.testing.assert_array_equal(raw["kintree_table"][0, 1:], [0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14])
    np.testing.assert_array_equal(model.parents.numpy(), [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14])
    v, j = _forward(model)
    assert v.shape == (778, 3) and j.shape == (16, 3)
    assert os.path.getsize(ASSET) < 2_100_000


def test_closed_mesh_adult_volume(model):
    v, _ = _forward(model)
    m = trimesh.Trimesh(v, _faces(model), process=False)
    assert m.is_watertight and m.is_winding_consistent
    assert m.euler_number == 2  # genus 0
    vol_cm3 = m.volume * 1e6
    assert 350.0 <= vol_cm3 <= 500.0, vol_cm3


def test_even_density(model):
    v, _ = _forward(model)
    m = trimesh.Trimesh(v, _faces(model), process=False)
    lengths = m.edges_unique_length
    assert np.percentile(lengths, 95) / np.percentile(lengths, 5) < 2.0
    areas = m.area_faces
    assert areas.max() / np.median(areas) < 4.0  # no huge palm triangles
    assert np.rad2deg(m.face_angles.min()) > 15.0


def test_frame_and_joint_order(model):
    _, j = _forward(model)
    np.testing.assert_allclose(j[0], [0.096, 0.006, 0.006], atol=0.005)
    for mcp in (1, 4, 7, 10):  # fingers point along -x
        assert j[mcp, 0] < j[0, 0] - 0.06
    for a, b in ((1, 2), (2, 3), (4, 5), (5, 6), (7, 8), (8, 9), (10, 11), (11, 12)):
        assert j[b, 0] < j[a, 0]
    # across the hand (z): thumb, index, middle, ring, pinky
    assert j[13, 2] > j[0, 2] + 0.02 and j[15, 2] > j[1, 2] + 0.02
    assert j[1, 2] > j[4, 2] > j[10, 2] > j[7, 2]


def test_palm_faces_minus_y(model):
    """Positive rotation about +z flexes a finger towards -y: the palm side."""
    _, j_rest = _forward(model)
    _, j_flex = _forward(model, _flex_pose("middle", 45.0))
    assert j_flex[6, 1] < j_rest[6, 1] - 0.02
    assert build_skeleton().bend_axis("middle")[2] > 0.99


def test_bone_lengths(model):
    v, j = _forward(model)
    labels = part_labels(model.lbs_weights.numpy())
    for name, (a, b, c, d) in BONES_MM.items():
        js = FINGER_JOINTS[name]
        pts = np.vstack([j[0], j[list(js)]])
        got = np.linalg.norm(np.diff(pts, axis=0), axis=1) * 1e3
        np.testing.assert_allclose(got, [a, b, c], rtol=0.15)
        # fingertip: the part's vertex farthest along the last bone direction
        u = (j[js[2]] - j[js[1]]) / np.linalg.norm(j[js[2]] - j[js[1]])
        part = np.flatnonzero(labels == PART_NAMES.index(name))
        tip = part[np.argmax(v[part] @ u)]
        assert abs(np.linalg.norm(v[tip] - j[js[2]]) * 1e3 - d) < 0.15 * d
    assert 0.16 < np.linalg.norm(v[np.argmin(v[:, 0])] - j[0]) < 0.19  # wrist to middle tip ~176 mm


def test_flexion_keeps_volume(model):
    """Each finger flexed 90 degrees at every joint: volume change < 15 % of the finger's."""
    f = _faces(model)
    v0, j0 = _forward(model)
    vol0 = trimesh.Trimesh(v0, f, process=False).volume
    labels = part_labels(model.lbs_weights.numpy())
    for name, js in FINGER_JOINTS.items():
        inside = (labels[f] == PART_NAMES.index(name)).all(axis=1)
        a, b, c = (v0[f[inside, k]] - j0[js[0]] for k in range(3))
        finger_vol = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0  # cone from the first joint
        assert finger_vol > 5e-6
        v1, _ = _forward(model, _flex_pose(name))
        vol1 = trimesh.Trimesh(v1, f, process=False).volume
        assert abs(vol1 - vol0) < 0.15 * finger_vol, (name, (vol1 - vol0) / finger_vol)


def test_flexion_keeps_thickness(model):
    """At 90 degrees the bent finger's joint regions keep most of their thickness."""
    f = _faces(model)
    for name in ("index", "middle", "ring", "pinky"):
        v0, j0 = _forward(model)
        v1, j1 = _forward(model, _flex_pose(name))
        for k in (1, 2):  # PIP and DIP: smallest distance from the joint to the skin
            jid = FINGER_JOINTS[name][k]
            d0 = np.linalg.norm(v0 - j0[jid], axis=1).min()
            d1 = np.linalg.norm(v1 - j1[jid], axis=1).min()
            assert d1 > 0.6 * d0, (name, k, d0, d1)
        assert trimesh.Trimesh(v1, f, process=False).is_watertight


def test_parts_connected(model):
    labels = part_labels(model.lbs_weights.numpy())
    adj = _adjacency(_faces(model), 778)
    for p in range(6):
        idx = np.flatnonzero(labels == p)
        assert len(idx) >= 30, (PART_NAMES[p], len(idx))
        n, _ = connected_components(adj[idx][:, idx], directed=False)
        assert n == 1, (PART_NAMES[p], n)


def test_skinning_weights_smooth(model):
    w = model.lbs_weights.numpy().astype(np.float64)
    assert (w >= 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)
    e = trimesh.Trimesh(_forward(model)[0], _faces(model), process=False).edges_unique
    jump = np.abs(w[e[:, 0]] - w[e[:, 1]]).sum(axis=1)
    # no edge hands a vertex over completely from one joint to another (that would be 2.0)
    assert jump.max() < 1.5 and np.percentile(jump, 99) < 1.0


def _tri_tri_hits(v: np.ndarray, f: np.ndarray) -> int:
    """Count intersecting pairs of non-adjacent triangles (edge-vs-triangle tests)."""
    tri = v[f]
    lo, hi = tri.min(axis=1), tri.max(axis=1)
    overlap = np.all((lo[:, None] <= hi[None]) & (lo[None] <= hi[:, None]), axis=2)
    share = (f[:, None, :, None] == f[None, :, None, :]).any(axis=(2, 3))
    ia, ib = np.nonzero(np.triu(overlap & ~share, 1))
    hits = np.zeros(len(ia), dtype=bool)
    for a_ids, b_ids in ((ia, ib), (ib, ia)):
        t = tri[b_ids]
        for k in range(3):  # each edge of a against triangle b (Moller-Trumbore)
            p, q = tri[a_ids, k], tri[a_ids, (k + 1) % 3]
            d = q - p
            e1, e2 = t[:, 1] - t[:, 0], t[:, 2] - t[:, 0]
            h = np.cross(d, e2)
            det = np.einsum("ij,ij->i", e1, h)
            ok = np.abs(det) > 1e-18
            inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
            s = p - t[:, 0]
            uu = inv * np.einsum("ij,ij->i", s, h)
            qv = np.cross(s, e1)
            vv = inv * np.einsum("ij,ij->i", d, qv)
            tt = inv * np.einsum("ij,ij->i", e2, qv)
            hits |= ok & (uu >= 0) & (vv >= 0) & (uu + vv <= 1) & (tt >= 0) & (tt <= 1)
    return int(hits.sum())


def test_no_self_intersection_at_rest(model):
    v, _ = _forward(model)
    assert _tri_tri_hits(v, _faces(model)) == 0


def test_self_intersection_check_detects_overlap(model):
    """The checker itself finds an intersection when a fingertip is pushed into the palm."""
    v, _ = _forward(model)
    f = _faces(model)
    labels = part_labels(model.lbs_weights.numpy())
    mid = np.flatnonzero(labels == PART_NAMES.index("middle"))
    v2 = v.copy()
    v2[mid] += np.array([0.09, 0.0, 0.0])  # slide the middle finger back over the palm
    assert _tri_tri_hits(v2, f) > 0


def test_shape_directions(model, raw):
    f = _faces(model)
    vols, spans = [], []
    for b0 in (-2.0, -1.0, 0.0, 1.0, 2.0):
        betas = np.zeros(10)
        betas[0] = b0
        v, j = _forward(model, betas=betas)
        vols.append(trimesh.Trimesh(v, f, process=False).volume)
        spans.append(np.linalg.norm(j[6] - j[0]))
    assert np.all(np.diff(vols) > 0) and np.all(np.diff(spans) > 0)
    assert 1.3 < vols[-1] / vols[2] < 1.5  # +2 sd: +10 % in size
    # the joints follow the shape: beta0 scales the whole skeleton about the wrist
    _, j0 = _forward(model)
    betas = np.zeros(10)
    betas[0] = 1.0
    _, j1 = _forward(model, betas=betas)
    np.testing.assert_allclose(j1 - j1[0], 1.05 * (j0 - j0[0]), atol=2e-4)
    # directions are orthogonal and non-trivial
    s = raw["shapedirs"].reshape(-1, 10)
    g = s.T @ s
    assert np.abs(g - np.diag(np.diag(g))).max() < 1e-8 * np.diag(g).max()
    assert np.sqrt(np.diag(g) / 778).min() > 5e-4  # > 0.5 mm rms per unit beta
    # the middle-finger direction mostly lengthens the middle finger
    betas = np.zeros(10)
    betas[6] = 2.0
    _, j2 = _forward(model, betas=betas)
    grow = np.linalg.norm(j2 - j0, axis=1)
    assert grow[6] > 2.0 * max(grow[3], grow[9], grow[12])


def test_joint_regressor_rings(raw):
    r = raw["J_regressor"]
    assert (r >= 0).all()
    np.testing.assert_allclose(r.sum(axis=1), 1.0, atol=1e-9)
    assert ((r > 0).sum(axis=1) >= 6).all()  # every joint is a mean over a ring of vertices
    np.testing.assert_allclose(r @ raw["v_template"], build_skeleton().joints, atol=1e-9)


def test_rig_is_deterministic(raw):
    """Re-rigging the stored template reproduces the stored arrays exactly."""
    hs = gen.HandShape(build_skeleton())
    v, f = raw["v_template"], raw["f"]
    again = gen.rig(hs, v, f)
    for k in ("weights", "J_regressor", "shapedirs", "posedirs", "kintree_table"):
        assert again[k].dtype == raw[k].dtype
        np.testing.assert_array_equal(again[k], raw[k], err_msg=k)


def test_marching_is_deterministic():
    hs = gen.HandShape(build_skeleton())
    a = gen.marching_tetrahedra(hs.sdf, gen.GRID_LO, gen.GRID_HI, 0.006)
    b = gen.marching_tetrahedra(hs.sdf, gen.GRID_LO, gen.GRID_HI, 0.006)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.skipif(os.environ.get("STANDIN_SKIP_REGEN") == "1", reason="regeneration disabled")
def test_generator_reproduces_asset_bytes():
    """A fresh run of the generator gives the committed asset byte for byte (~30 s)."""
    fresh = gen.asset_bytes(gen.build_standin())
    with open(ASSET, "rb") as fh:
        stored = fh.read()
    assert hashlib.sha256(fresh).hexdigest() == hashlib.sha256(stored).hexdigest()
