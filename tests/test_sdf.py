"""Grid signed distance: accuracy against a sphere's analytic field, gradients, batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from dvqvae_training.synthesis.sdf import ObjectSDF, mesh_signed_distance

R = 0.05
C = np.array([0.01, -0.02, 0.005])


@pytest.fixture(scope="module")
def sphere_sdf() -> ObjectSDF:
    mesh = trimesh.creation.icosphere(subdivisions=5, radius=R)
    mesh.apply_translation(C)
    return ObjectSDF.from_mesh(mesh, resolution=64, margin=0.03)


def analytic(p: torch.Tensor) -> torch.Tensor:
    return (p - torch.tensor(C, dtype=p.dtype)).norm(dim=-1) - R


def test_grid_layout(sphere_sdf):
    assert sphere_sdf.grid.shape == (1, 64, 64, 64)
    np.testing.assert_allclose(sphere_sdf.center[0].numpy(), C, atol=1e-6)
    np.testing.assert_allclose(float(sphere_sdf.pitch[0]), 2 * (R + 0.03) / 63, rtol=1e-5)
    assert float(sphere_sdf.grid.min()) < -0.045  # deep inside is negative


def test_sphere_matches_analytic_within_a_cell(sphere_sdf):
    g = torch.Generator().manual_seed(0)
    p = (torch.rand(3, 4000, 3, generator=g) - 0.5) * 0.16 + torch.tensor(C, dtype=torch.float32)
    d = sphere_sdf.query(p)
    assert d.shape == (3, 4000)
    err = (d - analytic(p)).abs()
    pitch = float(sphere_sdf.pitch[0])
    assert float(err.max()) < pitch  # everywhere in the cube: within one grid cell
    near = analytic(p).abs() < 0.01  # near the surface it is much better (exact band)
    assert float(err[near].max()) < 0.25 * pitch
    # single [P,3] queries give [P]
    assert sphere_sdf.query(p[0]).shape == (4000,)


def test_outside_the_grid_keeps_growing(sphere_sdf):
    far = torch.tensor([[0.5, 0.0, 0.0], [0.0, -0.4, 0.3]])
    d = sphere_sdf.query(far)
    true = analytic(far)
    assert torch.all(d > 0.3)
    assert torch.all((d - true).abs() < 0.03)  # clamped value + distance to the cube


def test_gradients_flow_and_point_outwards(sphere_sdf):
    p = (torch.rand(2, 500, 3) - 0.5) * 0.12 + torch.tensor(C, dtype=torch.float32)
    p = p[(p - torch.tensor(C, dtype=torch.float32)).norm(dim=-1) > 0.02].reshape(1, -1, 3).clone()
    p.requires_grad_(True)
    sphere_sdf.query(p).sum().backward()
    radial = torch.nn.functional.normalize(p.detach() - torch.tensor(C, dtype=torch.float32), dim=-1)
    cos = torch.nn.functional.cosine_similarity(p.grad, radial, dim=-1)
    assert p.grad is not None and torch.isfinite(p.grad).all()
    assert float(cos.median()) > 0.99
    normals = sphere_sdf.normals(p.detach())
    assert float(torch.nn.functional.cosine_similarity(normals, radial, dim=-1).min()) > 0.97


def test_batched_fields_of_different_objects():
    a = trimesh.creation.box(extents=[0.06, 0.04, 0.02])
    b = trimesh.creation.icosphere(subdivisions=3, radius=0.03)
    both = ObjectSDF.stack([ObjectSDF.from_mesh(a, 32), ObjectSDF.from_mesh(b, 32)])
    origin = torch.zeros(2, 1, 3)
    d = both.query(origin)[:, 0]
    assert abs(float(d[0]) + 0.01) < 2e-3  # box: 1 cm to the nearest face
    assert abs(float(d[1]) + 0.03) < 3e-3  # sphere: 3 cm
    with pytest.raises(ValueError):
        both.query(torch.zeros(3, 1, 3))  # batch mismatch
    # state dict round trip
    again = ObjectSDF.from_state_dict(both.state_dict())
    assert torch.equal(again.query(origin), both.query(origin))


def test_exact_mesh_signed_distance():
    box = trimesh.creation.box(extents=[0.1, 0.1, 0.1])
    d = mesh_signed_distance(box, np.array([[0.0, 0.0, 0.0], [0.08, 0.0, 0.0]]))
    np.testing.assert_allclose(d, [-0.05, 0.03], atol=1e-6)


def test_rejects_open_meshes():
    box = trimesh.creation.box(extents=[0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="watertight"):
        ObjectSDF.from_mesh(trimesh.Trimesh(box.vertices, box.faces[2:]), 16)
