"""Simulation displacement (pybullet protocol of ObMan / GraspTTA)."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from dvqvae_training.synthesis.physics import (
    AXIS_DIRECTIONS,
    GraspSimulator,
    SimulationConfig,
    simulate_displacement,
    vhacd_decomposition,
)

CFG = SimulationConfig()
# 35 semi-implicit Euler steps of free fall: g dt^2 (1 + 2 + ... + 35), less pybullet's
# default linear damping (0.04 per second).
FREE_FALL = 9.8 * (1 / 240) ** 2 * 35 * 36 / 2


@pytest.fixture(scope="module")
def ball() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=3, radius=0.03)


@pytest.fixture(scope="module")
def cube() -> trimesh.Trimesh:
    return trimesh.creation.box(extents=[0.04, 0.04, 0.04])


def plate(y_top: float) -> trimesh.Trimesh:
    """A 20 x 1 x 20 cm static slab whose upper face (towards -y) is at y = y_top."""
    slab = trimesh.creation.box(extents=[0.2, 0.01, 0.2])
    slab.apply_translation([0.0, y_top + 0.005, 0.0])
    return slab


def test_protocol_defaults():
    assert CFG.gravity == (0.0, 9.8, 0.0)
    assert (CFG.time_step, CFG.solver_iterations, CFG.steps) == (1 / 240, 150, 35)
    assert (CFG.object_mass, CFG.hand_friction, CFG.object_friction) == (1.0, 3.0, 3.0)
    assert (CFG.hand_restitution, CFG.object_restitution) == (0.0, 0.5)


def test_free_fall_and_support(cube, tmp_path):
    with GraspSimulator(cube, cache_dir=tmp_path) as sim:
        far = plate(1.0)
        d_free = sim.displacement(far.vertices, far.faces)
        assert abs(d_free - FREE_FALL) < 0.02 * FREE_FALL
        # gravity +y pushes the cube onto a slab touching it: it stays
        slab = plate(0.0201)
        d_held = sim.displacement(slab.vertices, slab.faces)
        assert d_held < 0.003
        # the same slab with gravity the other way does nothing
        d_away = sim.displacement(slab.vertices, slab.faces, gravity=(0.0, -9.8, 0.0))
        assert abs(d_away - FREE_FALL) < 0.02 * FREE_FALL
        # six gravity directions: only +y is supported
        d6 = sim.displacements(slab.vertices[None], slab.faces, directions="axes")
        assert d6.shape == (1, 6)
        plus_y = int(np.nonzero((AXIS_DIRECTIONS == [0, 1, 0]).all(1))[0][0])
        assert d6[0, plus_y] < 0.003
        assert np.all(np.delete(d6[0], plus_y) > 0.5 * FREE_FALL)


def test_real_hand_mesh_supports_object_in_its_palm(hand, ball, tmp_path):
    rest = hand.rest()
    v = rest.vertices[0].detach().numpy().astype(np.float64)
    faces = hand.faces.numpy()
    palm = v[hand.meta.part_ids == 5]
    c = palm.mean(0)
    near = palm[np.linalg.norm(palm[:, [0, 2]] - c[[0, 2]], axis=1) < 0.02]
    # put the palm just "below" the ball (palm normal is about -y; gravity is +y)
    hv = v - np.array([c[0], near[:, 1].min() - 0.0305, c[2]])
    with GraspSimulator(ball, cache_dir=tmp_path) as sim:
        d = sim.displacements(np.stack([hv, hv + [0.5, 0.0, 0.0]]), faces)
        times = sim.last_times
    assert d[1] == pytest.approx(FREE_FALL, rel=0.02)  # hand moved away: free fall
    assert d[0] < 0.4 * FREE_FALL  # the palm stops the fall (it may roll off the curved palm)
    assert np.mean(times) < 0.5  # seconds per grasp (typically a few ms)


def test_reused_client_matches_fresh_and_world_resets(ball, tmp_path):
    slab = plate(0.0301)
    offsets = [np.array([dx, 0.0, 0.0]) for dx in (0.0, 0.03, 0.06, 0.5, 0.0)]
    fresh = [simulate_displacement(slab.vertices + o, slab.faces, ball, cache_dir=tmp_path) for o in offsets]
    with GraspSimulator(ball, cache_dir=tmp_path) as sim:
        sim.reset_every = 2
        reused = sim.displacements(np.stack([slab.vertices + o for o in offsets]), slab.faces)
    np.testing.assert_allclose(reused, fresh, atol=1e-9)


def test_decomposition_is_cached(ball, tmp_path):
    path, com = vhacd_decomposition(ball, cache_dir=tmp_path)
    mtime = path.stat().st_mtime_ns
    again, _ = vhacd_decomposition(ball, cache_dir=tmp_path)
    assert again == path and again.stat().st_mtime_ns == mtime
    np.testing.assert_allclose(com, ball.vertices.mean(0))
    moved = ball.copy()
    moved.apply_scale(1.5)
    other, _ = vhacd_decomposition(moved, cache_dir=tmp_path)
    assert other != path
    # translation does not change the (centred) decomposition
    shifted = ball.copy()
    shifted.apply_translation([0.1, 0.2, 0.3])
    same, com2 = vhacd_decomposition(shifted, cache_dir=tmp_path)
    assert same == path
    np.testing.assert_allclose(com2, com + [0.1, 0.2, 0.3], atol=1e-9)
