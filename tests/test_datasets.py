"""PyTorch datasets: frames, rigid augmentation of hand + object, partial views, adapters."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from dvqvae_training.dataset.dataset_format import DatasetWriter, sample_surface
from dvqvae_training.dataset.datasets import (
    Augmentation,
    GraspDataset,
    MeshFolderDataset,
    ObManArrays,
    WristJoint,
    table_cut_keep,
    transform_hand_params,
)
from dvqvae_training.synthesis.objects import make_object, recipe_from_seed
from dvqvae_training.train.config import TrainConfig

N = 600


@pytest.fixture(scope="module")
def hand():
    from dvqvae_model.hand.hand_model import load_hand_model

    return load_hand_model("standin").double()


def random_params(rng: np.random.Generator, n: int) -> np.ndarray:
    p = np.zeros((n, 61))
    p[:, :10] = rng.normal(size=(n, 10))
    p[:, 10:13] = rng.normal(size=(n, 3))
    p[:, 13:58] = rng.normal(scale=0.3, size=(n, 45))
    p[:, 58:] = rng.normal(scale=0.1, size=(n, 3))
    return p


def verts(hand, params: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return hand.from_params(torch.as_tensor(np.asarray(params, dtype=np.float64)).reshape(-1, 61)).vertices.numpy()


def test_wrist_joint_is_affine_in_betas(hand):
    rng = np.random.default_rng(1)
    p = random_params(rng, 5)
    with torch.no_grad():
        joints = hand.from_params(torch.from_numpy(p)).joints.numpy()
    np.testing.assert_allclose(WristJoint(hand)(p[:, :10]), joints[:, 0] - p[:, 58:], atol=1e-12)


def test_rotating_params_equals_rotating_vertices(hand):
    rng = np.random.default_rng(0)
    p = random_params(rng, 6)
    R = Rotation.random(random_state=4).as_matrix()
    t = np.array([0.2, -0.1, 0.05])
    q = transform_hand_params(p, R, t, WristJoint(hand)(p[:, :10]))
    np.testing.assert_allclose(verts(hand, q), verts(hand, p) @ R.T + t, atol=1e-7)
    # a plain translation only changes transl; a wrong pivot (origin instead of j0) would fail
    wrong = p.copy()
    wrong[:, 10:13] = Rotation.from_matrix(R @ Rotation.from_rotvec(p[:, 10:13]).as_matrix()).as_rotvec()
    wrong[:, 58:] = p[:, 58:] @ R.T + t
    assert np.abs(verts(hand, wrong) - (verts(hand, p) @ R.T + t)).max() > 1e-3


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory, hand):
    root = tmp_path_factory.mktemp("grasps")
    rng = np.random.default_rng(0)
    with DatasetWriter(root, generator_version="t", hand_fingerprint=hand.fingerprint, num_points=N,
                       split_ratios={"train": 1.0}) as w:  # fmt: skip
        for fam, seed in (("box", 0), ("cylinder", 1)):
            recipe = recipe_from_seed(fam, seed)
            mesh = make_object(recipe)
            pts, nrm = sample_surface(mesh, N, seed=seed)
            w.add_object(recipe.object_id, pts, nrm, {"recipe": recipe.to_dict()}, random_params(rng, 3), ["power"] * 3,
                         {"displacement_cm": [0.5, 1.0, 3.0]})  # fmt: skip
    return root


def _original(ds: GraspDataset, i: int) -> dict:
    shard, row = (int(v) for v in ds.index[i])
    return ds.reader.grasp(shard, row)


def test_plain_items_are_centred(dataset_root, hand):
    ds = GraspDataset(dataset_root, "train")
    assert len(ds) == 6
    item = ds[0]
    assert item["points"].shape == (N, 3) and item["params"].shape == (61,) and item["normals"].shape == (N, 3)
    assert item["points"].dtype == torch.float32
    assert torch.allclose(item["points"].mean(0), torch.zeros(3), atol=1e-6)
    g = _original(ds, 0)
    c = item["center"].double().numpy()
    np.testing.assert_allclose(verts(hand, item["params"].double().numpy()), verts(hand, g["params"]) - c, atol=2e-6)
    assert item["metrics"].shape == (len(ds.reader.metric_names),)


def other_hand(tmp_path):
    """A valid hand model that is not the stand-in (its template 5 % larger): another fingerprint."""
    import pickle

    from dvqvae_model.hand.hand_model import load_hand_model, resolve_hand_path
    from dvqvae_model.hand.mano_pickle import load_mano_arrays

    arrays = {k: np.asarray(v) for k, v in load_mano_arrays(resolve_hand_path("standin")).items()}
    arrays["v_template"] = arrays["v_template"] * 1.05
    path = tmp_path / "MANO_RIGHT.pkl"
    path.write_bytes(pickle.dumps(arrays, protocol=2))
    return load_hand_model(str(path))


def test_dataset_refuses_another_hand_model(dataset_root, hand, tmp_path):
    other = other_hand(tmp_path)
    assert other.fingerprint != hand.fingerprint
    with pytest.raises(ValueError, match=f"hand model fingerprint {other.fingerprint} differs from the dataset's "
                                         f"{hand.fingerprint}"):
        GraspDataset(dataset_root, "train", hand=other)
    assert len(GraspDataset(dataset_root, "train", hand=hand)) == 6


def test_rotation_augmentation_moves_hand_and_object_together(dataset_root, hand):
    aug = Augmentation(rotate=True, translate=0.05)
    ds = GraspDataset(dataset_root, "train", augment=aug, hand=hand, seed=3)
    for i in (1, 4):
        item = ds[i]
        g = _original(ds, i)
        R = item["rotation"].double().numpy()
        assert abs(np.linalg.det(R) - 1) < 1e-5 and not np.allclose(R, np.eye(3))
        # object: every output point is an original point moved by x -> R x + t - c
        # (t unknown but the same for all: recover it from the hand)
        hv = verts(hand, item["params"].double().numpy())[0]
        hv0 = verts(hand, g["params"])[0]
        t_minus_c = (hv - hv0 @ R.T).mean(0)
        np.testing.assert_allclose(hv, hv0 @ R.T + t_minus_c, atol=5e-6)  # the hand moved rigidly
        back = (item["points"].double().numpy() - t_minus_c) @ R  # undo the same motion on the points
        d, _ = cKDTree(g["points"]).query(back)
        assert d.max() < 1e-5
    # reproducible per (seed, epoch, index); new epoch, new view
    assert torch.equal(ds[1]["rotation"], ds[1]["rotation"])
    r0 = ds[1]["rotation"]
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["rotation"], r0)
    with pytest.raises(ValueError, match="hand model"):
        GraspDataset(dataset_root, "train", augment=aug)


def test_partial_views(dataset_root, hand):
    vis = GraspDataset(dataset_root, "train", augment=Augmentation(partial_prob=1.0, partial_method="visibility"))
    item = vis[0]
    assert bool(item["partial"]) and item["points"].shape == (N, 3)
    distinct = len(np.unique(item["points"].numpy(), axis=0))
    assert distinct < 0.8 * N  # one side only: fewer distinct stored points, resampled to N

    cam = GraspDataset(dataset_root, "train", hand=hand,
                       augment=Augmentation(rotate=True, partial_prob=1.0, partial_method="depth_camera",
                                            depth_noise=0.0005, dropout=0.2))  # fmt: skip
    item = cam[2]
    assert bool(item["partial"]) and item["points"].shape == (N, 3)
    g = _original(cam, 2)
    mesh = make_object(recipe_from_seed("box", 0)) if g["object_id"].startswith("box") else None
    if mesh is None:
        mesh = make_object(recipe_from_seed("cylinder", 1))
    R = item["rotation"].double().numpy()
    world = (item["points"].double().numpy() + item["center"].double().numpy()) @ R  # back to the object frame
    _, dist, _ = trimesh.proximity.closest_point(mesh, world)
    assert np.percentile(dist, 95) < 0.003  # on the surface up to the depth noise


def test_table_cut_drops_the_base_facing_away_from_the_camera():
    rng = np.random.default_rng(3)
    pts = rng.uniform(-0.03, 0.03, size=(4000, 3))
    view_dir = np.array([0.0, 0.0, 1.0])  # camera above
    for _ in range(20):
        keep = table_cut_keep(pts, view_dir, 0.005, rng)
        assert 0.5 * len(pts) < keep.sum() < len(pts)  # a slab is cut, most of the object stays
        dropped = pts[~keep]
        # the dropped slab lies on the side facing away from the camera
        assert dropped[:, 2].mean() < pts[keep][:, 2].mean()
    assert table_cut_keep(pts, view_dir, 0.0, rng).sum() == len(pts) - 1  # only the lowest point itself


def test_training_default_sees_partial_views(dataset_root, hand):
    """The node's input is one depth view: the default training config shows them at its rate."""
    cfg = TrainConfig(data_dir=str(dataset_root), out_dir="unused")
    aug = cfg.augmentation()
    assert 0.0 < aug.partial_prob < 1.0 and aug.table_cut > 0 and aug.depth_noise > 0
    ds = GraspDataset(dataset_root, "train", augment=aug, hand=hand)
    partial = [bool(ds[i % len(ds)]["partial"]) for i in range(60)]
    assert 0 < sum(partial) < 60
    with pytest.raises(ValueError, match="partial_prob"):
        Augmentation(partial_prob=1.5)


def test_obman_adapter(tmp_path, hand):
    rng = np.random.default_rng(0)
    S = 3
    cam_offset = np.array([0.05, -0.02, 0.6])  # ObMan clouds sit in front of the camera
    xyz = rng.normal(scale=0.03, size=(S, 3000, 3)) + cam_offset
    pc = np.concatenate([xyz, np.full((S, 3000, 1), 0.8)], axis=2).transpose(0, 2, 1).astype(np.float32)
    params = random_params(rng, S).astype(np.float32)
    params[:, 58:] += cam_offset
    np.save(tmp_path / "obj_pc_test.npy", pc)
    np.save(tmp_path / "hand_param_test.npy", params)
    ds = ObManArrays(tmp_path, "test")
    item = ds[1]
    assert item["points"].shape == (3000, 3) and float(item["scale"]) == pytest.approx(0.8)
    assert torch.allclose(item["points"].mean(0), torch.zeros(3), atol=1e-5)
    c = item["center"].double().numpy()
    np.testing.assert_allclose(c, xyz[1].mean(0), atol=1e-5)
    np.testing.assert_allclose(item["params"][58:].numpy(), params[1, 58:] - c, atol=1e-5)
    rot = ObManArrays(tmp_path, "test", hand=hand, augment=Augmentation(rotate=True), estimate_normals=True)
    it = rot[1]
    R = it["rotation"].double().numpy()
    hv = verts(hand, it["params"].double().numpy())[0]
    hv0 = verts(hand, params[1].astype(np.float64))[0]
    np.testing.assert_allclose(hv, hv0 @ R.T - it["center"].double().numpy(), atol=5e-5)
    assert torch.allclose(it["normals"].norm(dim=1), torch.ones(3000, dtype=it["normals"].dtype), atol=1e-4)
    np.save(tmp_path / "hand_param_bad.npy", params)
    np.save(tmp_path / "obj_pc_bad.npy", pc[:, :3])  # xyz without the scale channel
    with pytest.raises(ValueError):
        ObManArrays(tmp_path, "bad")


def test_mesh_folder_dataset(tmp_path):
    root = tmp_path / "testset"
    (root / "models" / "003_cracker_box").mkdir(parents=True)
    trimesh.creation.box(extents=[0.16, 0.06, 0.21]).export(root / "models" / "003_cracker_box" / "textured_simple.obj")
    juice = trimesh.creation.cylinder(radius=30.0, height=120.0)  # FPHA style, millimetres
    juice.export(root / "juice_bottle.ply")
    mug = make_object(recipe_from_seed("cup", 0))
    mug.export(root / "mug.ply")  # GRAB style, metres
    tube = trimesh.creation.cylinder(radius=0.02, height=0.1, sections=24)
    trimesh.Trimesh(tube.vertices, tube.faces[np.abs(tube.face_normals[:, 2]) < 0.5]).export(root / "broken.obj")
    ds = MeshFolderDataset(root, num_points=500)
    names = sorted(ds[i]["name"] for i in range(len(ds)))
    assert names == ["juice_bottle.ply", "models/003_cracker_box/textured_simple.obj", "mug.ply"]
    assert [p.endswith("broken.obj") for p, _ in ds.rejected] == [True]
    for i in range(len(ds)):
        it = ds[i]
        assert it["points"].shape == (500, 3)
        assert torch.allclose(it["points"].mean(0), torch.zeros(3), atol=1e-6)
        assert 0.04 < ds.mesh(i).extents.max() < 0.25  # all in metres
    juice_i = next(i for i in range(len(ds)) if ds[i]["name"] == "juice_bottle.ply")
    assert ds.mesh(juice_i).metadata["units"] == "mm"
    np.testing.assert_allclose(ds.mesh(juice_i).extents, [0.06, 0.06, 0.12], rtol=1e-2)
    json.dumps([r for _, r in ds.rejected])  # reasons are plain strings


def test_principal_input_frame_moves_hand_with_the_cloud(dataset_root, hand):
    """input_frame="principal": each sample (rotated, partial or not) is in its own cloud's principal axes, and
    the hand made the same rigid motion; validation-style items (no augmentation) too."""
    for aug in (Augmentation(rotate=True, partial_prob=0.5, partial_method="visibility", input_frame="principal"),
                Augmentation(input_frame="principal")):
        ds = GraspDataset(dataset_root, "train", augment=aug, hand=hand, seed=5)
        for i in (0, 3):
            item, g = ds[i], _original(ds, i)
            pts = item["points"].double().numpy()
            cov = pts.T @ pts
            assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-4 * cov.max()
            hv, hv0 = verts(hand, item["params"].double().numpy())[0], verts(hand, g["params"])[0]
            # the rigid motion taking the original hand to the sample's, applied to the points, lands on the
            # original surface (up to the depth noise-free views used here)
            a, b = hv0 - hv0.mean(0), hv - hv.mean(0)
            u, _, vt = np.linalg.svd(b.T @ a)
            R = u @ np.diag([1, 1, np.linalg.det(u @ vt)]) @ vt
            np.testing.assert_allclose(a @ R.T, b, atol=1e-5)
            back = (pts - hv.mean(0)) @ R + hv0.mean(0)
            assert cKDTree(g["points"]).query(back)[0].max() < 1e-5
    with pytest.raises(ValueError, match="hand model"):
        GraspDataset(dataset_root, "train", augment=Augmentation(input_frame="principal"))
    with pytest.raises(ValueError, match="input_frame"):
        Augmentation(input_frame="upright")
