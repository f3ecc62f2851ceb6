"""Where a depth view cannot see (dvqvae_model.pipeline.view_shadow): a hand behind the visible surface."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from dvqvae_model.pipeline.grasp_quality import CloudSurface
from dvqvae_model.pipeline.view_shadow import SHADOW_NAMES, shadow_features, view_axes
from dvqvae_model.sim import depth_camera as dc
from scipy.spatial.transform import Rotation

BOX = (0.12, 0.08, 0.05)  # x, y, z extents: the camera looks down z from above


@pytest.fixture(scope="module")
def view() -> CloudSurface:
    """One depth view of the box from above and aside (it sees the top and two sides), in the box's frame."""
    box = trimesh.creation.box(extents=BOX)
    pts, cam = dc.capture_object_cloud(box, np.random.default_rng(0), azimuth=0.5, elevation=0.9)
    cloud = dc.transform_points(pts, cam).astype(np.float32)
    surface = CloudSurface(torch.from_numpy(cloud)[None])
    assert float(surface.one_sidedness[0]) > 0.35  # one-sided: the normals face the camera
    return surface


def patch(z: float, x: float = 0.0) -> np.ndarray:
    """A 2 x 2 cm patch of 25 'hand vertices' at height z over (x, 0)."""
    g = np.linspace(-0.01, 0.01, 5)
    xx, yy = np.meshgrid(g + x, g)
    return np.stack([xx.ravel(), yy.ravel(), np.full(25, z)], 1)


def features(surface: CloudSurface, hands: list[np.ndarray], rotation: np.ndarray | None = None) -> dict:
    v = torch.from_numpy(np.stack(hands)).float()
    pts, normals = surface.points, surface.normals
    if rotation is not None:
        r = torch.from_numpy(rotation).float()
        v, pts, normals = v @ r.T, pts @ r.T, normals @ r.T
    areas = torch.full((v.shape[1],), 1e-4 / 25)  # 1 cm^2 per patch
    return {k: t.numpy() for k, t in shadow_features(pts, normals, surface.spacing, v, areas).items()}


def test_a_hand_behind_the_visible_surface_counts_and_one_in_front_or_beside_does_not(view) -> None:
    top = BOX[2] / 2
    f = features(view, [patch(top + 0.01), patch(top - 0.005), patch(top - 0.015), patch(top - 0.015, x=0.2)])
    assert set(f) == set(SHADOW_NAMES)
    # in front of the top face (free space the camera saw), and beside the object: nothing behind
    for i in (0, 3):
        assert f["behind_1cm"][i] == f["behind_2cm"][i] == f["behind_area"][i] == 0.0
    # 5 mm under the top: 1 cm^2 x 0.5 cm / cos(tilt) behind along the line of sight (the view
    # direction: the cloud's mean normal, tilted from the top face's by the sides seen); 15 mm
    # under: beyond the 1 cm band, in the 2 cm one
    tilt = abs(view_axes(view.normals[0].numpy())[0, 2])
    assert tilt > 0.6
    assert f["behind_1cm"][1] == pytest.approx(0.5 / tilt, rel=0.1) == f["behind_2cm"][1]
    assert f["behind_1cm"][2] == 0.0 and f["behind_2cm"][2] == pytest.approx(1.5 / tilt, rel=0.1)
    assert f["behind_area"][1] == pytest.approx(1.0, rel=0.1) and f["behind_area"][2] == pytest.approx(1.0, rel=0.1)
    # the guessed thickness is the narrower width across the view, the same for every hand
    assert 100 * BOX[2] < f["thickness"][0] < 100 * BOX[0] and np.all(f["thickness"] == f["thickness"][0])


def test_the_features_do_not_depend_on_the_frame(view) -> None:
    """The view direction comes from the cloud's normals: a camera cloud and an object-frame cloud agree."""
    top = BOX[2] / 2
    hands = [patch(top - 0.005), patch(top - 0.015, x=0.03), patch(top + 0.01)]
    a = features(view, hands)
    b = features(view, hands, Rotation.from_euler("xyz", (0.7, -0.4, 1.9)).as_matrix())
    for name in SHADOW_NAMES:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-3, atol=1e-4)
