"""Simulated depth camera: geometry of the rendered depth, back-projection, noise, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest

o3d = pytest.importorskip("open3d")  # the simulator needs open3d (the `data` extra)
import open3d.core as o3c  # noqa: E402
import trimesh  # noqa: E402

from dvqvae_model.sim.depth_camera import (  # noqa: E402
    CameraIntrinsics,
    add_depth_noise,
    capture_object_cloud,
    depth_noise_sigma,
    depth_to_points,
    look_at,
    make_scene,
    render_depth,
    transform_points,
)

K = CameraIntrinsics()
SMALL = CameraIntrinsics(width=160, height=120, fx=96.25, fy=96.25, cx=79.5, cy=59.5)


def distance_to_mesh(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    scene = make_scene(mesh)
    return scene.compute_distance(o3c.Tensor(points.astype(np.float32))).numpy()


def test_intrinsics_defaults_and_fov():
    hfov, vfov = K.fov_deg
    assert 79 < hfov < 80 and 63 < vfov < 65
    again = CameraIntrinsics.from_fov(640, 480, hfov)
    assert math.isclose(again.fx, K.fx, rel_tol=1e-9) and (again.cx, again.cy) == (319.5, 239.5)
    np.testing.assert_array_equal(K.matrix, [[385, 0, 319.5], [0, 385, 239.5], [0, 0, 1]])
    with pytest.raises(ValueError):
        CameraIntrinsics(fx=0.0)


def test_look_at_is_an_optical_frame():
    eye, target = np.array([0.5, 0.2, 0.3]), np.array([0.0, 0.0, 0.1])
    pose = look_at(eye, target, (0, 0, 1))
    rot = pose[:3, :3]
    np.testing.assert_allclose(rot.T @ rot, np.eye(3), atol=1e-12)
    assert math.isclose(np.linalg.det(rot), 1.0, rel_tol=1e-12)
    np.testing.assert_allclose(pose[:3, 3], eye)
    np.testing.assert_allclose(rot[:, 2], (target - eye) / np.linalg.norm(target - eye))
    assert rot[:, 1] @ [0, 0, 1] < 0  # image y (down) points away from world up
    assert abs(rot[:, 0] @ [0, 0, 1]) < 1e-12  # image x is horizontal
    with pytest.raises(ValueError, match="parallel"):
        look_at([0, 0, 1], [0, 0, 0], (0, 0, 1))


def test_sphere_depth_matches_geometry():
    radius, dist = 0.05, 0.45
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    pose = look_at([0, 0, dist], [0, 0, 0], (0, 1, 0))
    depth = render_depth(sphere, K, pose)
    assert depth.shape == (480, 640) and depth.dtype == np.float32
    hits = np.isfinite(depth)
    assert abs(float(depth[hits].min()) - (dist - radius)) < 1e-3
    # silhouette: a disc of angular radius asin(r / d)
    pix_radius = K.fx * math.tan(math.asin(radius / dist))
    assert abs(hits.sum() / (math.pi * pix_radius**2) - 1.0) < 0.02
    assert hits[240, 320] and not hits[0, 0]
    # the back-projected points lie on the mesh and on the camera-facing side only
    pts_world = transform_points(depth_to_points(depth, K), pose)
    assert len(pts_world) == hits.sum()
    assert distance_to_mesh(sphere, pts_world).max() < 1e-3
    towards_camera = pts_world @ np.array([0.0, 0.0, 1.0]) / radius
    assert towards_camera.min() > radius / dist - 0.02  # inside the visible cap


def test_box_face_depth_and_pixel_footprint():
    box = trimesh.creation.box(extents=(0.2, 0.2, 0.2))
    pose = look_at([0, 0, 0.5], [0, 0, 0], (0, 1, 0))
    depth = render_depth(box, K, pose)
    hits = np.isfinite(depth)
    np.testing.assert_allclose(depth[hits], 0.4, atol=1e-5)  # only the front face is seen
    # the face spans +-0.1 / 0.4 * fx = +-96.25 px around (319.5, 239.5): 192 x 192 pixel centres
    rows, cols = np.nonzero(hits)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (144, 335, 224, 415)
    assert hits.sum() == 192 * 192
    pts = depth_to_points(depth, K)
    assert np.abs(pts[:, :2]).max() <= 0.1 + 1e-6


def test_depth_to_points_organized_and_reprojection():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.1)
    pose = look_at([0.3, 0.0, 0.0], [0, 0, 0], (0, 0, 1))
    depth = render_depth(sphere, SMALL, pose)
    org = depth_to_points(depth, SMALL, organized=True)
    assert org.shape == (120, 160, 3)
    valid = np.isfinite(depth)
    assert np.isnan(org[~valid]).all() and np.isfinite(org[valid]).all()
    np.testing.assert_array_equal(org[valid], depth_to_points(depth, SMALL))
    v, u = np.nonzero(valid)
    p = org[valid].astype(np.float64)
    np.testing.assert_allclose(SMALL.fx * p[:, 0] / p[:, 2] + SMALL.cx, u, atol=1e-3)
    np.testing.assert_allclose(SMALL.fy * p[:, 1] / p[:, 2] + SMALL.cy, v, atol=1e-3)
    np.testing.assert_allclose(p[:, 2], depth[valid], rtol=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        depth_to_points(depth, K)


@pytest.mark.parametrize("distance", [0.4, 1.0])
def test_noise_has_configured_scale(distance):
    clean = np.full((200, 200), distance, dtype=np.float32)
    clean[:10] = np.inf
    noisy = add_depth_noise(clean, np.random.default_rng(0))
    assert np.isinf(noisy[:10]).all()
    residual = (noisy[10:] - clean[10:]).astype(np.float64)
    expected = float(depth_noise_sigma(distance))
    assert math.isclose(expected, 0.001 + 0.0019 * distance**2)
    assert abs(residual.std() / expected - 1.0) < 0.03
    assert abs(residual.mean()) < 0.05 * expected
    custom = add_depth_noise(clean, np.random.default_rng(0), sigma_base=0.005,
                             sigma_quadratic=0.0)
    assert abs((custom[10:] - clean[10:]).std() / 0.005 - 1.0) < 0.03


def test_noisy_capture_scatter_matches_model():
    box = trimesh.creation.box(extents=(0.2, 0.2, 0.2))
    clean, pose = capture_object_cloud(box, np.random.default_rng(1), distance=0.5, azimuth=0.0,
                                       elevation=0.0, noise=False)
    noisy, pose2 = capture_object_cloud(box, np.random.default_rng(1), distance=0.5, azimuth=0.0,
                                        elevation=0.0, noise=True)
    np.testing.assert_array_equal(pose, pose2)
    assert len(clean) == len(noisy)  # same pixels: noise moves points along their rays
    np.testing.assert_allclose(clean[:, 2], 0.4, atol=1e-5)
    assert abs(np.std(noisy[:, 2] - clean[:, 2]) / depth_noise_sigma(0.4) - 1.0) < 0.05


def test_capture_is_deterministic_partial_and_on_surface():
    mesh = trimesh.creation.capsule(height=0.1, radius=0.03)
    mesh.apply_translation([0.2, -0.1, 0.05])
    a, pose_a = capture_object_cloud(mesh, np.random.default_rng(7), intrinsics=SMALL, noise=True)
    b, pose_b = capture_object_cloud(mesh, np.random.default_rng(7), intrinsics=SMALL, noise=True)
    c, pose_c = capture_object_cloud(mesh, np.random.default_rng(8), intrinsics=SMALL, noise=True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(pose_a, pose_b)
    assert not np.array_equal(pose_a, pose_c)
    assert a.dtype == np.float32 and a.shape[1] == 3 and len(a) > 100
    assert (a[:, 2] > 0).all()
    # camera at the requested distance from the bounding-box centre, looking at it
    centre = mesh.bounds.mean(axis=0)
    assert math.isclose(np.linalg.norm(pose_a[:3, 3] - centre), 0.45, rel_tol=1e-9)
    # noise-free capture: on the surface, and only the side facing the camera
    clean, pose = capture_object_cloud(mesh, np.random.default_rng(3), noise=False, azimuth=0.5,
                                       elevation=0.3)
    world = transform_points(clean, pose)
    assert distance_to_mesh(mesh, world).max() < 1e-3
    _, _, triangles = mesh.nearest.on_surface(world[::50])
    to_camera = pose[:3, 3] - world[::50]
    facing = np.einsum("ij,ij->i", mesh.face_normals[triangles], to_camera)
    assert (facing > 0).mean() > 0.99
    sample = mesh.sample(5000, seed=0)  # a full-surface sample reaches much farther back
    back = pose[:3, 3] - centre
    depth_along = (sample - centre) @ (back / np.linalg.norm(back))
    seen_along = (world - centre) @ (back / np.linalg.norm(back))
    assert seen_along.min() > depth_along.min() + 0.02


def test_dropout_and_bad_arguments():
    box = trimesh.creation.box(extents=(0.2, 0.2, 0.2))
    full, _ = capture_object_cloud(box, np.random.default_rng(0), azimuth=0.0, elevation=0.0,
                                   intrinsics=SMALL, noise=False)
    thin, _ = capture_object_cloud(box, np.random.default_rng(0), azimuth=0.0, elevation=0.0,
                                   intrinsics=SMALL, noise=False, dropout=0.3)
    assert abs(len(thin) / len(full) - 0.7) < 0.03
    with pytest.raises(ValueError, match="inside the object"):
        capture_object_cloud(box, np.random.default_rng(0), distance=0.1)
    with pytest.raises(ValueError, match="dropout"):
        add_depth_noise(np.ones((4, 4)), np.random.default_rng(0), dropout=1.5)
    straight_down, pose = capture_object_cloud(box, np.random.default_rng(0),
                                               elevation=math.pi / 2, azimuth=0.0,
                                               intrinsics=SMALL, noise=False)
    assert len(straight_down) > 0
    np.testing.assert_allclose(pose[:3, 2], [0, 0, -1], atol=1e-9)


def test_prebuilt_scene_gives_same_depth():
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.05)
    pose = look_at([0.2, 0.1, 0.3], [0, 0, 0])
    np.testing.assert_array_equal(render_depth(mesh, SMALL, pose),
                                  render_depth(make_scene(mesh), SMALL, pose))
