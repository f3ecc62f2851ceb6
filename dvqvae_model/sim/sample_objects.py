"""Small household objects made procedurally, so the demo camera needs no data files.

Every mesh is deterministic, in metres, z up, centred on its bounding-box
centre (the fake camera looks at the origin), and sized like the real thing.
The solids of revolution are closed (watertight) profiles revolved about z.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import trimesh

__all__ = ["SAMPLE_OBJECTS", "load_object", "sample_object"]

_SECTIONS = 48


def _centred(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    return mesh


def _mug() -> trimesh.Trimesh:
    """A 10 cm mug, 8 cm across, 5 mm walls, with a ring handle on +x."""
    radius, height, wall = 0.04, 0.10, 0.005
    profile = np.array([
        [0.0, 0.0], [radius, 0.0], [radius, height], [radius - wall, height],
        [radius - wall, wall], [0.0, wall],
    ])
    body = trimesh.creation.revolve(profile, sections=_SECTIONS)
    handle = trimesh.creation.torus(major_radius=0.028, minor_radius=0.006, major_sections=32, minor_sections=12)
    # torus lies in the xy plane: stand it up in the xz plane, beside the body at mid height.
    handle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
    handle.apply_translation([radius + 0.012, 0.0, height / 2])
    return _centred(trimesh.util.concatenate([body, handle]))


def _box() -> trimesh.Trimesh:
    """A 6 x 9 x 15 cm carton."""
    return _centred(trimesh.creation.box(extents=(0.06, 0.09, 0.15)))


def _bottle() -> trimesh.Trimesh:
    """A 22 cm bottle: 7 cm body, shoulder, 2.4 cm neck."""
    profile = np.array([
        [0.0, 0.0], [0.035, 0.0], [0.035, 0.14], [0.025, 0.17], [0.012, 0.185],
        [0.012, 0.22], [0.0, 0.22],
    ])
    return _centred(trimesh.creation.revolve(profile, sections=_SECTIONS))


def _ball() -> trimesh.Trimesh:
    """An 8 cm ball."""
    return _centred(trimesh.creation.icosphere(subdivisions=3, radius=0.04))


SAMPLE_OBJECTS: dict[str, Callable[[], trimesh.Trimesh]] = {
    "mug": _mug,
    "box": _box,
    "bottle": _bottle,
    "ball": _ball,
}


def sample_object(name: str) -> trimesh.Trimesh:
    """A fresh copy of the bundled sample object ``name``."""
    try:
        return SAMPLE_OBJECTS[name]()
    except KeyError:
        raise ValueError(f"unknown sample object {name!r}; choose one of {', '.join(SAMPLE_OBJECTS)}") from None


def load_object(spec: str) -> trimesh.Trimesh:
    """A sample object by name, or any mesh file trimesh reads (.ply, .obj, .stl, ...), centred.

    File meshes are taken as metres; scenes are flattened into one mesh.
    """
    if spec in SAMPLE_OBJECTS:
        return sample_object(spec)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ValueError(
            f"object {spec!r} is neither a sample object ({', '.join(SAMPLE_OBJECTS)}) nor an existing mesh file"
        )
    loaded = trimesh.load(str(path), force="mesh")
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise ValueError(f"{path} holds no triangles")
    return _centred(loaded)
