"""prepare_cloud: validation, filtering, resampling, centring, determinism."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from scipy.spatial import cKDTree

from dvqvae_model.pipeline.preprocess import (
    CloudError,
    PreparedCloud,
    farthest_point_indices,
    prepare_cloud,
    statistical_inlier_mask,
    to_input_frame,
    voxel_indices,
)

SAMPLINGS = ("fps", "random", "voxel")


def sphere_cap(n: int, seed: int = 0, radius: float = 0.05, centre=(0.3, -0.1, 0.6)) -> np.ndarray:
    """Points on the camera-facing half of a sphere (a depth camera's view of a ball)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    d[:, 2] = -np.abs(d[:, 2])
    return (np.asarray(centre) + radius * d).astype(np.float32)


def max_distance_to(points: np.ndarray, reference: np.ndarray) -> float:
    return float(cKDTree(reference).query(points)[0].max())


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_deterministic_exact_count_centred_and_mapped_back(sampling):
    cloud = sphere_cap(8000)
    a = prepare_cloud(cloud, 3000, sampling=sampling, seed=5)
    b = prepare_cloud(cloud.copy(), 3000, sampling=sampling, seed=5)
    c = prepare_cloud(cloud, 3000, sampling=sampling, seed=6)
    assert isinstance(a, PreparedCloud)
    assert a.points.shape == (3000, 3) and a.points.dtype == np.float32
    assert a.centre.shape == (3,) and a.centre.dtype == np.float64
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.centre, b.centre)
    assert not np.array_equal(a.points, c.points)
    np.testing.assert_allclose(a.points.mean(axis=0), 0.0, atol=1e-6)
    # points + centre are input points (up to float32 rounding), all distinct
    back = a.to_input_frame(a.points)
    assert back.dtype == np.float64
    assert max_distance_to(back, cloud) < 1e-6
    assert len(np.unique(a.points, axis=0)) == 3000
    assert (a.num_input, a.num_valid) == (8000, 8000)


def test_fewer_points_than_requested_are_all_used_and_repeated():
    cloud = sphere_cap(500)
    out = prepare_cloud(cloud, 3000, seed=1)
    assert out.points.shape == (3000, 3)
    back = out.to_input_frame(out.points)
    assert max_distance_to(back, cloud) < 1e-6
    # every surviving input point appears at least once
    kept = out.num_valid - out.num_outliers
    assert len(np.unique(out.points, axis=0)) == kept
    np.testing.assert_array_equal(out.points, prepare_cloud(cloud, 3000, seed=1).points)


def test_drops_nonfinite_and_counts():
    cloud = sphere_cap(2000)
    cloud[:300] = np.nan
    cloud[300:310, 1] = np.inf
    out = prepare_cloud(cloud, 1000, remove_outliers=False)
    assert out.num_input == 2000 and out.num_valid == 1690
    assert np.isfinite(out.points).all()


def test_crop_box_and_radius():
    cloud = np.concatenate([sphere_cap(3000), sphere_cap(3000, seed=1, centre=(1.5, 0.0, 0.6))])
    box = (0.2, -0.2, 0.5, 0.4, 0.0, 0.7)
    out = prepare_cloud(cloud, 1000, crop_box=box)
    back = out.to_input_frame(out.points)
    assert np.all((back >= np.array(box[:3]) - 1e-6) & (back <= np.array(box[3:]) + 1e-6))
    assert out.num_valid == 3000
    # a ball around the median of the first object (3/4 of the points belong to it)
    cloud2 = np.concatenate([sphere_cap(6000), sphere_cap(2000, seed=1, centre=(0.6, 0.0, 0.6))])
    out2 = prepare_cloud(cloud2, 1000, crop_radius=0.12)
    back2 = out2.to_input_frame(out2.points)
    assert out2.num_valid == 6000
    assert np.linalg.norm(back2 - [0.3, -0.1, 0.6], axis=1).max() < 0.051
    with pytest.raises(ValueError, match="crop_box"):
        prepare_cloud(cloud, 100, crop_box=(1, 0, 0, 0, 1, 1))


def test_outlier_removal_removes_far_points():
    rng = np.random.default_rng(2)
    cloud = sphere_cap(5000)
    outliers = cloud[:25] + rng.choice([-1, 1], size=(25, 3)) * rng.uniform(0.1, 0.4, size=(25, 3))
    noisy = np.concatenate([cloud, outliers.astype(np.float32)])
    surface = cKDTree(cloud)

    def worst(out: PreparedCloud) -> float:
        return float(surface.query(out.to_input_frame(out.points))[0].max())

    kept = prepare_cloud(noisy, 3000, sampling="fps", remove_outliers=True)
    assert kept.num_outliers >= 25
    assert worst(kept) < 1e-6  # no outlier left
    raw = prepare_cloud(noisy, 3000, sampling="fps", remove_outliers=False)
    assert worst(raw) > 0.05  # FPS grabs the outliers first when they are not removed


def test_outlier_mask_small_cloud_is_skipped():
    pts = np.random.default_rng(0).normal(size=(15, 3))
    assert statistical_inlier_mask(pts, nb_neighbors=20).all()


@pytest.mark.skipif(importlib.util.find_spec("open3d") is None, reason="open3d not installed")
def test_outlier_rule_matches_open3d():
    import open3d as o3d

    rng = np.random.default_rng(4)
    pts = np.concatenate([rng.normal(scale=0.05, size=(3000, 3)),
                          rng.uniform(-1, 1, size=(40, 3))])
    for nb, ratio in ((20, 2.0), (8, 1.0)):
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
        _, idx = pcd.remove_statistical_outlier(nb_neighbors=nb, std_ratio=ratio)
        ref = np.zeros(len(pts), dtype=bool)
        ref[np.asarray(idx)] = True
        np.testing.assert_array_equal(statistical_inlier_mask(pts, nb, ratio), ref)


@pytest.mark.parametrize(
    "points, match",
    [
        (np.full((100, 3), np.nan), "all 100 points are non-finite"),
        (sphere_cap(3), r"too few valid points: 3 < min_points 64 \(3 input, 3 finite"),
        (np.zeros((0, 3)), "empty"),
        (np.zeros((100, 2)), r"shape \[N, 3\], got \(100, 2\)"),
        (np.zeros(300), r"shape \[N, 3\], got \(300,\)"),
        (np.zeros((100, 3, 1)), r"shape \[N, 3\]"),
        (np.array([["a", "b", "c"]] * 100), "numeric"),
        ([[0.0, 1.0], [1.0]], "cannot be read"),
        (np.zeros(100, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")]), "structured"),
    ],
)
def test_bad_input_raises_cloud_error(points, match):
    with pytest.raises(CloudError, match=match):
        prepare_cloud(points, 100)


def test_extent_checks_and_error_type():
    far_apart = np.concatenate([sphere_cap(500), sphere_cap(500, seed=1, centre=(9.0, 0, 0))])
    with pytest.raises(CloudError, match=r"spans 8\.\d+ m .*crop it"):
        prepare_cloud(far_apart, 100)
    tiny = (sphere_cap(500) - 0.3) * 0.005  # 0.5 mm ball
    with pytest.raises(CloudError, match=r"spans only 0\.\d+ mm"):
        prepare_cloud(tiny, 100)
    assert issubclass(CloudError, ValueError)
    cloud = sphere_cap(200)
    cloud[:150] = np.nan
    with pytest.raises(CloudError,
                       match=r"4\d < min_points 64 \(200 input, 50 finite, 4\d after outlier"):
        prepare_cloud(cloud, 100)
    with pytest.raises(ValueError, match="sampling"):
        prepare_cloud(sphere_cap(200), 100, sampling="poisson")
    with pytest.raises(ValueError, match="num_points"):
        prepare_cloud(sphere_cap(200), 0)
    with pytest.raises(ValueError, match="max_work_points"):
        prepare_cloud(sphere_cap(200), 100, max_work_points=50)
    same = np.tile([[0.1, 0.2, 0.3]], (500, 1))  # all points equal: kept, then rejected as tiny
    with pytest.raises(CloudError, match=r"spans only 0 mm"):
        prepare_cloud(same, 100)


def test_fps_matches_brute_force_reference():
    pts = np.random.default_rng(7).uniform(size=(300, 3))
    chosen = [11]
    nearest = np.linalg.norm(pts - pts[11], axis=1)
    while len(chosen) < 40:
        nxt = int(np.argmax(nearest))
        chosen.append(nxt)
        nearest = np.minimum(nearest, np.linalg.norm(pts - pts[nxt], axis=1))
    np.testing.assert_array_equal(farthest_point_indices(pts, 40, start=11), chosen)
    line = np.stack([np.linspace(0, 1, 101), np.zeros(101), np.zeros(101)], axis=1)
    assert sorted(farthest_point_indices(line, 3, start=0).tolist()) == [0, 50, 100]


@pytest.mark.parametrize("sampling", ("fps", "voxel"))
def test_even_sampling_is_density_independent(sampling):
    # a 10 cm square: the left half 9x denser than the right (as near vs far in a depth image)
    rng = np.random.default_rng(3)
    left = np.c_[rng.uniform(0.0, 0.05, 9000), rng.uniform(0, 0.1, 9000), np.zeros(9000)]
    right = np.c_[rng.uniform(0.05, 0.1, 1000), rng.uniform(0, 0.1, 1000), np.zeros(1000)]
    cloud = np.concatenate([left, right])
    kwargs = dict(remove_outliers=False, max_work_points=10000)  # no even-density pre-reduction
    out = prepare_cloud(cloud, 300, sampling=sampling, **kwargs)
    share_left = float((out.to_input_frame(out.points)[:, 0] < 0.05).mean())
    assert 0.4 < share_left < 0.6
    rand = prepare_cloud(cloud, 300, sampling="random", **kwargs)
    assert (rand.to_input_frame(rand.points)[:, 0] < 0.05).mean() > 0.85


def test_voxel_indices_distinct_even_with_duplicates():
    rng = np.random.default_rng(0)
    base = rng.uniform(size=(100, 3))
    dup = np.repeat(base, 20, axis=0)  # only 100 distinct positions
    idx = voxel_indices(dup, 500, np.random.default_rng(1))
    assert len(idx) == 500 and len(np.unique(idx)) == 500
    assert len(np.unique(dup[idx], axis=0)) == 100  # every position represented
    idx2 = voxel_indices(base, 100, np.random.default_rng(1))
    assert sorted(idx2.tolist()) == list(range(100))
    with pytest.raises(ValueError, match="cannot pick"):
        voxel_indices(base, 101, np.random.default_rng(1))


def test_working_set_cap_keeps_large_clouds_fast_and_valid():
    cloud = sphere_cap(30000)
    out = prepare_cloud(cloud, 3000, max_work_points=6000)
    assert out.points.shape == (3000, 3)
    assert out.num_valid == 30000 and out.num_outliers < 600
    assert max_distance_to(out.to_input_frame(out.points), cloud) < 1e-6


def test_to_input_frame_numpy_and_torch():
    centre = np.array([1.0, 2.0, 3.0])
    moved_np = to_input_frame(np.zeros((2, 5, 3), np.float32), centre)
    assert moved_np.shape == (2, 5, 3)
    np.testing.assert_array_equal(moved_np[1, 4], centre)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        to_input_frame(np.zeros((4, 2)), centre)
    torch = pytest.importorskip("torch")
    moved = to_input_frame(torch.zeros(4, 3, dtype=torch.float32), centre)
    assert moved.dtype == torch.float32 and torch.allclose(moved[0], torch.tensor([1.0, 2.0, 3.0]))


def test_subsampled_outlier_statistic_removes_the_same_outliers():
    """The node's default (neighbours searched in a 1,000-point subsample) keeps the exact rule's verdicts
    on a camera-like cloud with scattered outliers, and equals the exact rule on small clouds."""
    rng = np.random.default_rng(4)
    surface = sphere_cap(3000, seed=4).astype(np.float64)
    outliers = surface[:40] + rng.choice([-1, 1], size=(40, 3)) * rng.uniform(0.03, 0.2, size=(40, 3))
    cloud = np.concatenate([surface, outliers])
    truth = np.r_[np.zeros(len(surface), bool), np.ones(len(outliers), bool)]
    exact = statistical_inlier_mask(cloud, 20)
    fast = statistical_inlier_mask(cloud, 20, max_reference=1000, rng=np.random.default_rng(0))
    assert not fast[truth].any() and not exact[truth].any()  # every outlier removed by both
    assert fast[~truth].mean() > 0.99 and (fast == exact).mean() > 0.99
    again = statistical_inlier_mask(cloud, 20, max_reference=1000, rng=np.random.default_rng(0))
    assert np.array_equal(fast, again)  # deterministic for a given generator
    small = cloud[:900]
    assert np.array_equal(statistical_inlier_mask(small, 20, max_reference=1000), statistical_inlier_mask(small, 20))


def test_outlier_reference_none_is_the_exact_rule():
    cloud = sphere_cap(2500, seed=1)
    a = prepare_cloud(cloud, 2000, outlier_reference=None, seed=3)
    mask = statistical_inlier_mask(cloud.astype(np.float64), 20)
    assert a.num_outliers == int((~mask).sum())
