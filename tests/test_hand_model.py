"""The hand layer on the bundled stand-in: shapes, units, order, metadata, sealing, angles, CLI."""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy.sparse.csgraph import connected_components

from dvqvae_model.hand import hand_metadata as hm
from dvqvae_model.hand.hand_cli import main as hand_cli_main
from dvqvae_model.hand.hand_model import (
    FINGER_JOINT_NAMES,
    KEYPOINT_NAMES,
    MANO_JOINT_NAMES,
    PARAM_DIM,
    STANDIN_META,
    HandModel,
    load_hand_model,
)
from dvqvae_model.hand.hand_poses import NAMED_POSES, named_pose, named_pose_params
from dvqvae_model.hand.mano_pickle import load_mano_arrays
from dvqvae_model.hand.skeleton import BEND_ANGLE_NAMES, bend_angles

torch.set_num_threads(1)


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep the array/metadata cache of these tests out of the user's ~/.cache."""
    old = os.environ.get("DVQVAE_CACHE_DIR")
    os.environ["DVQVAE_CACHE_DIR"] = str(tmp_path_factory.mktemp("dvqvae_cache"))
    yield
    if old is None:
        os.environ.pop("DVQVAE_CACHE_DIR", None)
    else:
        os.environ["DVQVAE_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def hand(_private_cache: None) -> HandModel:
    return load_hand_model("standin")


def _sealed_volume(v: torch.Tensor, faces: np.ndarray) -> float:
    return float(trimesh.Trimesh(v.detach().double().numpy(), faces, process=False).volume)


def _flex(hand: HandModel, finger: int, degrees: tuple[float, float, float]) -> torch.Tensor:
    """Params [1,61] bending one finger's three joints by the given angles (anatomical bend axis)."""
    local = np.zeros((15, 3))
    for n, j in enumerate(hm.FINGER_JOINTS[finger]):
        local[j - 1, 2] = math.radians(degrees[n])
    p = torch.zeros(1, PARAM_DIM)
    p[0, 13:58] = torch.as_tensor(hm.pose_from_local(hand.meta, local), dtype=torch.float32)
    return p


def test_shapes_dtypes_units(hand: HandModel) -> None:
    out = hand.from_params(torch.zeros(3, PARAM_DIM))
    assert out.vertices.shape == (3, 778, 3) and out.vertices.dtype == torch.float32
    assert out.joints.shape == (3, 16, 3) and out.keypoints.shape == (3, 21, 3)
    assert hand.faces.dtype == torch.long and hand.faces.shape[1] == 3
    assert hand.sealed_faces.dtype == torch.long and len(hand.sealed_faces) >= len(hand.faces)
    kp = out.keypoints[0]
    length = float((kp[12] - kp[0]).norm())  # wrist -> middle fingertip, metres
    assert 0.15 <= length <= 0.22, length
    extent = (out.vertices[0].max(0).values - out.vertices[0].min(0).values).max()
    assert 0.15 <= float(extent) <= 0.25  # metres, not millimetres
    assert len(hand.fingerprint) == 16 and int(hand.fingerprint, 16) >= 0
    assert hand.state_dict() == {}  # no (possibly licensed) model data in checkpoints
    assert list(hand.parameters()) == []


def test_joint_order_and_names(hand: HandModel) -> None:
    j = hand.rest().joints[0].numpy()
    assert len(MANO_JOINT_NAMES) == 16 and len(FINGER_JOINT_NAMES) == 15 and len(KEYPOINT_NAMES) == 21
    assert KEYPOINT_NAMES[0] == "wrist" and KEYPOINT_NAMES[4] == "thumb_tip" and KEYPOINT_NAMES[20] == "pinky_tip"
    # fingers point along -x: each chain moves away from the wrist along -x
    for chain in hm.FINGER_JOINTS[1:]:
        xs = [j[0, 0]] + [j[c, 0] for c in chain]
        assert all(a > b for a, b in zip(xs, xs[1:])), chain
    # across the hand (z): thumb > index > middle > ring > pinky (right hand, MANO frame)
    z = [j[c[0], 2] for c in hm.FINGER_JOINTS]
    assert z[0] > z[1] > z[2] > z[3] > z[4], z
    assert np.dot(hand.meta.palm_normal, [0, -1, 0]) > 0.9


def test_keypoints_are_joints_and_tip_vertices(hand: HandModel) -> None:
    torch.manual_seed(0)
    p = torch.randn(2, PARAM_DIM) * 0.3
    out = hand.from_params(p)
    tips = out.vertices[:, hand.meta.fingertip_ids]
    order = [0, 13, 14, 15, 1, 2, 3, 4, 5, 6, 10, 11, 12, 7, 8, 9]
    kp_joint_slots = [0, 1, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15, 17, 18, 19]
    torch.testing.assert_close(out.keypoints[:, kp_joint_slots], out.joints[:, order])
    torch.testing.assert_close(out.keypoints[:, [4, 8, 12, 16, 20]], tips)
    # tips are the extreme vertex of each finger along its distal bone
    v = hand.rest().vertices[0].numpy()
    jr = hand.rest().joints[0].numpy()
    for k, (_, j2, j3) in enumerate(hm.FINGER_JOINTS):
        d = jr[j3] - jr[j2]
        ids = hand.meta.part_vertex_ids(k)
        assert hand.meta.fingertip_ids[k] == ids[np.argmax(v[ids] @ d)]


def test_from_params_equals_forward_and_gradients(hand: HandModel) -> None:
    torch.manual_seed(1)
    params = (torch.randn(4, PARAM_DIM) * 0.2).requires_grad_(True)
    a = hand.from_params(params)
    b = hand(params[:, 0:10], params[:, 10:13], params[:, 13:58], params[:, 58:61])
    torch.testing.assert_close(a.vertices, b.vertices)
    torch.testing.assert_close(a.keypoints, b.keypoints)
    # our static-tree lbs call is exactly smplx.MANO's own forward
    ref = hand.mano(betas=params[:, :10], global_orient=params[:, 10:13], hand_pose=params[:, 13:58], transl=params[:, 58:])
    torch.testing.assert_close(a.vertices, ref.vertices, atol=0, rtol=0)
    torch.testing.assert_close(a.joints, ref.joints, atol=0, rtol=0)
    w = torch.randn_like(a.vertices)
    loss = (a.vertices * w).sum() + a.keypoints.square().sum()
    loss.backward()
    g = params.grad
    assert g is not None and torch.isfinite(g).all()
    assert (g.abs() > 0).all(), "every one of the 61 parameters must receive gradient"
    # translation moves everything rigidly
    p2 = params.detach().clone()
    p2[:, 58:61] += torch.tensor([0.1, -0.2, 0.3])
    shift = torch.tensor([0.1, -0.2, 0.3]).expand(4, 778, 3)
    torch.testing.assert_close(hand.from_params(p2).vertices - a.vertices.detach(), shift, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="params must be"):
        hand.from_params(torch.zeros(2, 60))


def test_parts_cover_and_connected(hand: HandModel) -> None:
    meta = hand.meta
    assert meta.part_names == ("thumb", "index", "middle", "ring", "pinky", "palm")
    assert meta.part_ids.shape == (778,) and set(np.unique(meta.part_ids)) == set(range(6))
    sizes = meta.part_sizes
    assert sum(sizes.values()) == 778 and min(sizes.values()) >= 40, sizes
    f = hand.faces.numpy()
    e = hm.mesh_edges(f)
    for i in range(6):
        ids = meta.part_vertex_ids(i)
        mask = np.zeros(778, bool)
        mask[ids] = True
        sub = e[mask[e[:, 0]] & mask[e[:, 1]]]
        remap = -np.ones(778, int)
        remap[ids] = np.arange(len(ids))
        import scipy.sparse as sp

        adj = sp.coo_matrix((np.ones(len(sub)), (remap[sub[:, 0]], remap[sub[:, 1]])), shape=(len(ids), len(ids)))
        assert connected_components(adj, directed=False)[0] == 1, meta.part_names[i]
    # the thumb tip is in the thumb part etc.
    assert [int(meta.part_ids[t]) for t in meta.fingertip_ids] == [0, 1, 2, 3, 4]
    # contact prior: on finger pads and palm, facing the palm side
    c = meta.contact_ids
    assert 40 <= len(c) <= 400
    assert set(np.unique(meta.part_ids[c])) == set(range(6))
    n = hm.vertex_normals(hand.rest().vertices[0].double().numpy(), f)
    assert float(np.mean(n[c] @ meta.palm_normal)) > 0.3


def test_sealed_mesh_watertight_and_volume_under_flexion(hand: HandModel) -> None:
    sealed = hand.meta.sealed_faces
    rest_v = hand.rest().vertices[0]
    mesh = trimesh.Trimesh(rest_v.double().numpy(), sealed, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    v0 = mesh.volume
    assert 1.5e-4 < v0 < 8e-4, v0  # 150-800 cm^3
    for finger in range(5):
        v = hand.from_params(_flex(hand, finger, (90.0, 90.0, 90.0))).vertices[0]
        ratio = _sealed_volume(v, sealed) / v0
        assert abs(ratio - 1) < 0.15, (hm.FINGER_NAMES[finger], ratio)
    fist = hand.from_params(named_pose_params(hand.meta, "fist")).vertices[0]
    assert abs(_sealed_volume(fist, sealed) / v0 - 1) < 0.15


def test_bend_axis_flexes_towards_palm(hand: HandModel) -> None:
    rest = hand.rest()
    for finger in range(1, 5):
        out = hand.from_params(_flex(hand, finger, (0.0, 90.0, 0.0)))
        k = 4 * finger + 4  # tip keypoint of this finger
        move = (out.keypoints[0, k] - rest.keypoints[0, k]).numpy()
        assert np.dot(move, hand.meta.palm_normal) > 0.01, (finger, move)
    # for the long fingers the bend axis is (close to) the template z axis, spread about y
    for j in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12):
        assert hand.meta.joint_axis_map[j - 1, 2] == 2 and hand.meta.joint_axis_sign[j - 1, 2] > 0
        assert hand.meta.joint_axis_map[j - 1, 1] == 1


def test_bend_angles_synthetic() -> None:
    joints = torch.zeros(2, 16, 3)
    for chain_i, chain in enumerate(hm.FINGER_JOINTS):
        for n, j in enumerate(chain):
            joints[:, j] = torch.tensor([-0.03 * (n + 1), 0.0, 0.01 * chain_i])
    joints[:, 0] = torch.tensor([0.0, 0.0, 0.0])
    # straight chains from the wrist: only the thumb/others are not collinear with the wrist unless
    # the wrist lies on their line, so put every chain on a ray from the wrist
    for chain_i, chain in enumerate(hm.FINGER_JOINTS):
        d = torch.tensor([-1.0, 0.0, 0.3 * (chain_i - 2)])
        d = d / d.norm()
        for n, j in enumerate(chain):
            joints[:, j] = d * 0.03 * (n + 1)
    joints.requires_grad_(True)
    a = bend_angles(joints)
    assert a.shape == (2, 10) and len(BEND_ANGLE_NAMES) == 10
    assert torch.allclose(a, torch.zeros_like(a), atol=1e-5)
    a.sum().backward()
    assert torch.isfinite(joints.grad).all()
    # flex the index finger 90 degrees at its PIP (j2): the second angle of index is pi/2
    j = joints.detach().clone()
    j2 = j[0, 2]
    j[0, 3] = j2 + torch.tensor([0.0, -0.03, 0.0])
    a2 = bend_angles(j)
    assert abs(float(a2[0, 3]) - math.pi / 2) < 1e-5 and abs(float(a2[0, 2])) < 1e-5
    assert BEND_ANGLE_NAMES[3] == "index_j2"


def test_bend_angles_on_hand(hand: HandModel) -> None:
    rest = bend_angles(hand.rest().joints)[0]
    assert float(rest.abs().max()) < 0.6  # a flat hand is nearly straight
    flexed = bend_angles(hand.from_params(_flex(hand, 1, (0.0, 90.0, 0.0))).joints)[0]
    delta = flexed - rest
    assert abs(float(delta[3]) - math.pi / 2) < 0.2, float(delta[3])
    others = torch.cat([delta[:3], delta[4:]])
    assert float(others.abs().max()) < 0.2


def test_named_poses_within_limits(hand: HandModel) -> None:
    lim = hand.meta.joint_limits
    assert lim.shape == (45, 2) and np.all(lim[:, 0] <= lim[:, 1])
    for name in NAMED_POSES:
        p = named_pose(hand.meta, name)
        assert np.all(p >= lim[:, 0] - 1e-9) and np.all(p <= lim[:, 1] + 1e-9), name
        loc = hm.pose_to_local(hand.meta, p)
        np.testing.assert_allclose(hm.pose_from_local(hand.meta, loc), p, atol=1e-12)
    # pinch brings thumb and index tips together, fist brings tips near the palm
    kp = hand.from_params(named_pose_params(hand.meta, "pinch")).keypoints[0]
    assert float((kp[4] - kp[8]).norm()) < 0.025


def test_metadata_roundtrip_and_fingerprint(hand: HandModel, tmp_path: Path) -> None:
    meta = hand.meta
    path = tmp_path / "meta.npz"
    hm.save_metadata(meta, path)
    back = hm.load_metadata(path)
    for name in ("part_ids", "fingertip_ids", "contact_ids", "sealed_faces", "joint_limits", "cap_faces", "joint_frames"):
        np.testing.assert_array_equal(getattr(back, name), getattr(meta, name))
    assert back.part_names == meta.part_names and back.fingerprint == meta.fingerprint
    assert len(back.boundary_loops) == len(meta.boundary_loops)
    arrays = load_mano_arrays(hand_path := Path(__file__).resolve().parents[1] / "dvqvae_model/assets/standin_right.pkl")
    assert hand_path.is_file()
    assert hm.model_fingerprint(arrays) == meta.fingerprint == load_hand_model("standin").fingerprint
    assert hm.compute_metadata(arrays).fingerprint == meta.fingerprint
    assert STANDIN_META.is_file() and hm.load_metadata(STANDIN_META).fingerprint == meta.fingerprint
    changed = dict(arrays)
    changed["v_template"] = arrays["v_template"] * 1.01
    assert hm.model_fingerprint(changed) != meta.fingerprint
    # stored metadata with another fingerprint is recomputed
    hm.save_metadata(meta, path)
    again = hm.load_or_compute_metadata(changed, path)
    assert again.fingerprint == hm.model_fingerprint(changed) and hm.load_metadata(path).fingerprint == again.fingerprint


def test_sealing_open_mesh() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=2)
    v, f = sphere.vertices, sphere.faces
    cut = f[(v[f].mean(axis=1)[:, 2] > 0.75)]
    keep = f[~(v[f].mean(axis=1)[:, 2] > 0.75)]
    assert len(cut) > 0
    loops = hm.boundary_loops(keep)
    assert len(loops) == 1 and len(loops[0]) >= 5
    cap = hm.triangulate_loops(v, loops)
    assert len(cap) == len(loops[0]) - 2
    sealed = trimesh.Trimesh(v, np.concatenate([keep, cap]), process=False)
    assert sealed.is_watertight and sealed.is_winding_consistent and sealed.volume > 0
    assert hm.triangulate_loops(v, hm.boundary_loops(f)).shape == (0, 3)


def test_open_wrist_is_sealed(hand: HandModel) -> None:
    """A MANO-like disc (open at the wrist) gets a cap from existing vertices; faces+cap watertight."""
    arrays = dict(load_mano_arrays(Path(__file__).resolve().parents[1] / "dvqvae_model/assets/standin_right.pkl"))
    v, f = arrays["v_template"], arrays["f"]
    wrist_x = hm.rest_joints(arrays)[0, 0]
    cut = (v[f][:, :, 0] > wrist_x + 0.005).all(axis=1)
    arrays["f"] = f[~cut]
    assert cut.sum() > 10
    meta = hm.compute_metadata(arrays)
    assert len(meta.boundary_loops) == 1 and len(meta.cap_faces) == len(meta.boundary_loops[0]) - 2
    assert len(meta.sealed_faces) == len(arrays["f"]) + len(meta.cap_faces)
    assert set(np.unique(meta.cap_faces)) <= set(meta.boundary_loops[0].tolist())
    mesh = trimesh.Trimesh(v, meta.sealed_faces, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    closed = trimesh.Trimesh(v, f, process=False).volume
    assert 0.8 * closed < mesh.volume < closed
    assert meta.fingerprint != hand.fingerprint  # faces are part of the fingerprint


def test_cli_info_json(hand: HandModel) -> None:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = hand_cli_main(["info", "--json"])
    assert rc == 0
    info = json.loads(buf.getvalue())
    assert info["num_vertices"] == 778 and info["num_joints"] == 16 and info["num_keypoints"] == 21
    assert info["num_faces"] == hand.num_faces and info["fingerprint"] == hand.fingerprint
    assert info["sealed_watertight"] is True and 150 < info["sealed_volume_cm3"] < 800
    assert sum(info["part_sizes"].values()) == 778
    # the console entry's code path in a fresh interpreter: stdout is pure JSON (no smplx chatter)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run(
        [sys.executable, "-m", "dvqvae_model.hand.hand_cli", "info", "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == info


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        load_hand_model(str(tmp_path / "nope" / "MANO_RIGHT.pkl"))
    with pytest.raises(FileNotFoundError, match="MANO_RIGHT.pkl"):
        load_hand_model(str(tmp_path))  # a folder without the file
    bad = tmp_path / "MANO_RIGHT.pkl"
    bad.write_bytes(b"\x80\x02}q\x00.")  # an empty dict
    with pytest.raises(ValueError, match="lacks keys"):
        load_hand_model(str(bad))
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        assert hand_cli_main(["info", "--hand", str(tmp_path / "missing.pkl")]) == 2
    assert "not found" in buf.getvalue()


def test_committed_standin_metadata_is_current() -> None:
    """The shipped metadata must match the shipped asset, so loading never has to rewrite it."""
    from dvqvae_model.hand import hand_model as hm
    from dvqvae_model.hand.hand_metadata import load_metadata, model_fingerprint
    from dvqvae_model.hand.mano_pickle import load_mano_arrays

    arrays = load_mano_arrays(hm.ASSET_DIR / "standin_right.pkl", use_cache=False)
    stored = load_metadata(hm.STANDIN_META)
    # load_metadata raises on a stale META_VERSION.
    assert stored.fingerprint == model_fingerprint(arrays), "run `dvqvae-hand regen-meta` and commit the result"
