"""Object segmentation (dvqvae_model.pipeline.segmentation) on simulated tabletop scenes, and depth decoding."""
from __future__ import annotations

import numpy as np
import pytest

from dvqvae_model.sim import depth_camera as dc
from dvqvae_model.pipeline.segmentation import Segmenter, SegmenterConfig, decode_depth, decode_mask, depth_to_cloud
from dvqvae_model.sim.tabletop import TABLE, make_tabletop_scene, noisy_frame, pixel_iou, target_label
from dvqvae_model.sim.sample_objects import sample_object

K = dc.CameraIntrinsics()


def _scene(names, seed, noise=1.0, **kw):
    rng = np.random.default_rng(seed)
    scene = make_tabletop_scene([sample_object(n) for n in names], rng, intrinsics=kw.pop("intrinsics", K), **kw)
    depth, labels = noisy_frame(scene, rng, noise=noise)
    return scene, depth, labels


# ------------------------------------------------------------------------------ depth decoding / camera model
def test_depth_to_cloud_matches_the_pinhole_model() -> None:
    intr = dc.CameraIntrinsics(width=7, height=5, fx=300.0, fy=250.0, cx=2.25, cy=1.5)
    depth = np.full((5, 7), np.nan, dtype=np.float32)
    depth[1, 2] = 0.8  # pixel centre (u=2, v=1)
    depth[3, 6] = 1.25
    depth[0, 0] = 0.0  # no return
    cloud = depth_to_cloud(depth, intr)
    np.testing.assert_allclose(cloud[1, 2], [(2 - 2.25) * 0.8 / 300.0, (1 - 1.5) * 0.8 / 250.0, 0.8], rtol=1e-6)
    np.testing.assert_allclose(cloud[3, 6], [(6 - 2.25) * 1.25 / 300.0, (3 - 1.5) * 1.25 / 250.0, 1.25], rtol=1e-6)
    assert np.isnan(cloud[0, 0]).all() and np.isnan(cloud[4, 4]).all()
    # the principal point (integer pixel centres, OpenCV / CameraInfo) lies on the optical axis
    centre = dc.CameraIntrinsics(width=5, height=3, fx=100.0, fy=100.0, cx=2.0, cy=1.0)
    np.testing.assert_allclose(depth_to_cloud(np.full((3, 5), 2.0), centre)[1, 2], [0.0, 0.0, 2.0])
    # the same numbers as the simulator's back-projection
    d = np.random.default_rng(0).uniform(0.3, 2.0, (K.height, K.width)).astype(np.float32)
    np.testing.assert_allclose(depth_to_cloud(d, K), dc.depth_to_points(d, K, organized=True), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="camera info says 640 x 480"):
        depth_to_cloud(np.ones((10, 10)), K)


def test_decode_depth_units_padding_and_byte_order() -> None:
    mm = np.array([[0, 1, 1234], [65535, 500, 0]], dtype=np.uint16)
    got = decode_depth(mm.tobytes(), "16UC1", 3, 2, 6)
    np.testing.assert_allclose(got[~np.isnan(got)], [0.001, 1.234, 65.535, 0.5], rtol=1e-6)
    assert np.isnan(got[0, 0]) and np.isnan(got[1, 2]) and got.dtype == np.float32
    padded = np.zeros((2, 5), dtype=np.uint16)  # 4 bytes of padding per row
    padded[:, :3] = mm
    np.testing.assert_array_equal(decode_depth(padded.tobytes(), "mono16", 3, 2, 10), got)
    np.testing.assert_array_equal(decode_depth(mm.astype(">u2").tobytes(), "16UC1", 3, 2, 6, big_endian=True), got)
    metres = np.array([[0.5, np.inf, np.nan, 0.0, -1.0, 2.0]], dtype=np.float32)
    got = decode_depth(metres.tobytes(), "32FC1", 6, 1, 24)
    assert got[0, 0] == 0.5 and got[0, 5] == 2.0 and np.isnan(got[0, 1:5]).all()


def test_decode_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unsupported depth encoding 'rgb8'.*16UC1"):
        decode_depth(bytes(12), "rgb8", 2, 2, 6)
    with pytest.raises(ValueError, match="step 2 is smaller"):
        decode_depth(bytes(8), "16UC1", 2, 2, 2)
    with pytest.raises(ValueError, match="has 6 bytes"):
        decode_depth(bytes(6), "16UC1", 2, 2, 4)
    with pytest.raises(ValueError, match="empty"):
        decode_depth(b"", "32FC1", 0, 0, 0)
    with pytest.raises(ValueError, match="unsupported mask encoding"):
        decode_mask(bytes(4), "32FC1", 1, 1, 4)
    mask = decode_mask(np.array([[0, 3, 5]], dtype=np.uint8).tobytes(), "mono8", 3, 1, 3)
    assert mask.tolist() == [[False, True, True]]
    assert decode_mask(np.array([[0, 3, 5]], dtype=np.uint8).tobytes(), "8UC1", 3, 1, 3, label=5).tolist() == [
        [False, False, True]]


# ------------------------------------------------------------------------------ scenes
def test_chooses_the_object_nearest_the_optical_axis() -> None:
    scene, depth, labels = _scene(["mug", "box", "ball", "bottle"], 3)
    result = Segmenter().segment_depth(depth, K)
    assert result.ok, result.warning
    target = target_label(depth, labels, K)
    assert pixel_iou(result.mask, labels == target) >= 0.9
    assert result.clusters >= 4 and result.points.shape == (int(result.mask.sum()), 3)
    # the points are the back-projected pixels, and the plane is the table seen from above
    np.testing.assert_allclose(result.points, depth_to_cloud(depth, K)[result.mask], atol=1e-6)
    assert np.degrees(np.arccos(result.plane[:3] @ scene.table_normal_cam)) < 2.0
    assert result.plane_inlier_fraction > 0.3 and result.timing_ms["total_ms"] > 0


def test_table_at_an_angle_and_expected_normal() -> None:
    scene, depth, labels = _scene(["box", "ball"], 5, elevation_deg=25.0, roll_deg=40.0)
    target = target_label(depth, labels, K)
    free = Segmenter().segment_depth(depth, K)
    assert free.ok and pixel_iou(free.mask, labels == target) >= 0.9
    told = Segmenter(SegmenterConfig(plane_normal=tuple(scene.table_normal_cam + 0.1))).segment_depth(depth, K)
    assert told.ok and pixel_iou(told.mask, labels == target) >= 0.9
    wrong = Segmenter(SegmenterConfig(plane_normal=(1.0, 0.0, 0.0))).segment_depth(depth, K)
    assert wrong.status == "no_plane" and "tilted" in wrong.warning and len(wrong.points) == 0


def test_object_touching_the_image_border() -> None:
    _, depth, labels = _scene(["box"], 7, distance=0.5, elevation_deg=50.0, roll_deg=0.0, azimuth_deg=0.0,
                              look_at_xy=(0.0, 0.4))
    obj = labels == 1
    assert np.count_nonzero(obj[:, 0]) > 50, "fixture: the object should be cut by the image border"
    result = Segmenter().segment_depth(depth, K)
    assert result.ok, result.warning
    assert pixel_iou(result.mask, obj) >= 0.9


def test_two_touching_objects_merge_and_a_mask_separates_them() -> None:
    """DBSCAN cannot split objects in contact (documented): the cluster holds both; a mask input does."""
    _, depth, labels = _scene(["box", "bottle"], 11, touching=True, distance=0.6, elevation_deg=45.0)
    both = (labels == 1) | (labels == 2)
    result = Segmenter().segment_depth(depth, K)
    assert result.ok and result.clusters == 1 and pixel_iou(result.mask, both) >= 0.9
    for k in (1, 2):
        masked = Segmenter().segment_depth(depth, K, mask=labels == k)
        assert masked.ok and pixel_iou(masked.mask, labels == k) >= 0.95


def test_mask_input_drops_table_pixels() -> None:
    _, depth, labels = _scene(["mug", "ball"], 2)
    from scipy import ndimage

    grown = ndimage.binary_dilation(labels == 1, iterations=4)  # a sloppy mask: the object plus 4 px of table
    result = Segmenter().segment_depth(depth, K, mask=grown)
    assert result.ok and pixel_iou(result.mask, labels == 1) >= 0.9
    assert np.count_nonzero(result.mask & (labels == TABLE)) < 0.02 * np.count_nonzero(grown & (labels == TABLE))
    bad = Segmenter().segment_depth(depth, K, mask=np.ones((10, 10), bool))
    assert bad.status == "no_target" and "mask is" in bad.warning


@pytest.mark.parametrize("rule", ["largest", "crop_box", "clicked"])
def test_target_rules(rule: str) -> None:
    _, depth, labels = _scene(["bottle", "ball"], 4, distance=0.6)
    cloud = depth_to_cloud(depth, K)
    pixels = {k: int(np.count_nonzero(labels == k)) for k in (1, 2)}
    if rule == "largest":
        want, cfg, clicked = max(pixels, key=pixels.get), SegmenterConfig(target="largest"), None
    else:
        want = 2  # not the one nearest the axis (the camera is aimed at object 1)
        pts = cloud[labels == 2]
        lo, hi = pts.min(axis=0) - 0.01, pts.max(axis=0) + 0.01
        cfg = SegmenterConfig(target=rule, crop_box=tuple(lo) + tuple(hi) if rule == "crop_box" else ())
        clicked = pts.mean(axis=0) if rule == "clicked" else None
    result = Segmenter(cfg).segment_depth(depth, K, clicked=clicked)
    assert result.ok and pixel_iou(result.mask, labels == want) >= 0.9


def test_clicked_rule_waits_for_a_click_and_checks_its_radius() -> None:
    _, depth, _ = _scene(["ball"], 1)
    seg = Segmenter(SegmenterConfig(target="clicked"))
    assert seg.segment_depth(depth, K).status == "no_target"
    assert "waiting for a clicked point" in seg.segment_depth(depth, K).warning
    far = seg.segment_depth(depth, K, clicked=np.array([5.0, 5.0, 5.0]))
    assert far.status == "no_target" and "click_radius" in far.warning
    with pytest.raises(ValueError, match="crop_box"):
        SegmenterConfig(target="crop_box")
    with pytest.raises(ValueError, match="target must be one of"):
        SegmenterConfig(target="biggest")


def test_no_table_empty_and_zero_depth_warn_without_points() -> None:
    _, depth, _ = _scene(["ball"], 8, table=False)
    result = Segmenter().segment_depth(depth, K)
    assert result.status in ("no_plane", "no_object") and result.warning and len(result.points) == 0
    _, depth, _ = _scene(["box"], 9, table=False, distance=0.4)
    result = Segmenter().segment_depth(depth, K)
    assert result.status in ("no_plane", "no_object") and result.warning and len(result.points) == 0
    for empty in (np.full((K.height, K.width), np.nan, np.float32),
                  decode_depth(bytes(K.width * K.height * 2), "16UC1", K.width, K.height, K.width * 2)):
        result = Segmenter().segment_depth(empty, K)
        assert result.status == "no_valid_depth" and "valid depth" in result.warning and len(result.points) == 0
    # a bare table: a plane, nothing on it
    rng = np.random.default_rng(0)
    scene = make_tabletop_scene([sample_object("ball")], rng, intrinsics=K)
    bare = np.where(scene.labels == TABLE, scene.depth, np.inf)
    result = Segmenter().segment_depth(bare, K)
    assert result.status == "no_object" and "nothing stands" in result.warning
    wrong = Segmenter().segment_depth(np.ones((10, 10), np.float32), K)
    assert wrong.status == "no_valid_depth" and "camera info says" in wrong.warning


def test_scene_clouds_organized_and_unorganized() -> None:
    _, depth, labels = _scene(["mug", "box", "bottle"], 6)
    target = labels == target_label(depth, labels, K)
    cloud = depth_to_cloud(depth, K)
    organized = Segmenter().segment_points(cloud)
    assert organized.ok and pixel_iou(organized.mask, target) >= 0.9
    valid = np.isfinite(cloud[..., 2])
    flat, truth = cloud[valid], target[valid]
    order = np.random.default_rng(0).permutation(len(flat))
    flat, truth = flat[order], truth[order]
    unorganized = Segmenter().segment_points(flat)
    assert unorganized.ok and pixel_iou(unorganized.mask, truth) >= 0.9
    masked = Segmenter().segment_points(flat, mask=truth)
    assert masked.ok and pixel_iou(masked.mask, truth) >= 0.95
    # an organized cloud in a body frame (x forward, z up, as ZED publishes): the rules that need no optical axis
    body = np.stack([cloud[..., 2], -cloud[..., 0], -cloud[..., 1]], axis=-1)
    pixels = {k: np.count_nonzero(labels == k) for k in np.unique(labels[labels > 0])}
    largest = Segmenter(SegmenterConfig(target="largest")).segment_points(body)
    assert largest.ok and pixel_iou(largest.mask, labels == max(pixels, key=pixels.get)) >= 0.9
    assert Segmenter().segment_points(np.zeros((5, 2))).status == "no_valid_depth"
    assert Segmenter().segment_points(np.full((50, 3), np.nan)).status == "no_valid_depth"


def test_a_noisy_far_camera_raises_the_object_floor() -> None:
    """2.5x RealSense noise at 1 m (~7 mm): a fixed 8 mm floor lets table speckle in; the measured one does not."""
    _, depth, labels = _scene(["box", "bottle"], 0, distance=1.0, elevation_deg=50.0, noise=2.5)
    target = labels == target_label(depth, labels, K)
    result = Segmenter().segment_depth(depth, K)
    assert result.ok, result.warning
    assert pixel_iou(result.mask, target) >= 0.93
    assert np.count_nonzero(result.mask & (labels == TABLE)) < 0.03 * np.count_nonzero(target)
