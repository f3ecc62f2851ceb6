"""Graspable objects: procedural families, mesh-file loading and pybullet's random_urdfs.

Conventions (everything returned here):
- metres, a single watertight, consistently wound ``trimesh.Trimesh`` with positive volume;
- procedural objects are centred at their axis-aligned **bounding-box centre**
  (loaded meshes too, unless ``center=False``); the offset that was removed is kept
  in ``mesh.metadata["center_offset"]`` for loaded meshes;
- every procedural object is fully described by a small JSON-serialisable
  :class:`ObjectRecipe`; ``make_object(recipe)`` is a pure function of it.

Size rules of the procedural families: largest extent within [4, 25] cm (the
mesh is uniformly rescaled into that range if a sampled shape falls outside),
walls, plates and tips no thinner than about 4 mm.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import xml.etree.ElementTree as ET
from typing import Any, Iterator

import numpy as np
import trimesh
from scipy.spatial.transform import Rotation

from dvqvae_training.synthesis import implicit as imp

MIN_EXTENT = 0.04
MAX_EXTENT = 0.25
MIN_THICKNESS = 0.004

FAMILIES: tuple[str, ...] = (
    "box",
    "cylinder",
    "sphere",
    "ellipsoid",
    "capsule",
    "cone",
    "torus",
    "superquadric",
    "bottle",
    "bowl",
    "cup",
    "mug",
    "union",
)


class MeshRejected(ValueError):
    """A mesh that cannot be used as a grasp target; ``reason`` says why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ObjectRecipe:
    """Everything needed to regenerate a procedural object exactly.

    ``params`` holds plain floats / lists / dicts only; ``seed`` is the seed the
    params were drawn from (``recipe_from_seed(family, seed)`` redraws them).
    """

    family: str
    params: dict[str, Any]
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "params": self.params, "seed": int(self.seed)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ObjectRecipe":
        if d.get("family") not in FAMILIES:
            raise ValueError(f"unknown object family {d.get('family')!r}")
        return cls(family=str(d["family"]), params=dict(d["params"]), seed=int(d["seed"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, s: str) -> "ObjectRecipe":
        return cls.from_dict(json.loads(s))

    @property
    def object_id(self) -> str:
        """Stable id: family plus a short hash of the canonical JSON."""
        h = hashlib.sha256(self.to_json().encode()).hexdigest()[:12]
        return f"{self.family}-{h}"


# =============================================================================== sampling


def _f(x: Any) -> Any:
    """Numpy scalars/arrays -> plain JSON types (floats round-trip exactly through JSON)."""
    if isinstance(x, np.ndarray):
        return [_f(v) for v in x.tolist()]
    if isinstance(x, (list, tuple)):
        return [_f(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x)
    if isinstance(x, (np.integer, int)):
        return int(x)
    return x


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _log_u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def _sample_params(family: str, rng: np.random.Generator) -> dict[str, Any]:
    if family == "box":
        L = _log_u(rng, 0.05, 0.22)
        dims = [L, max(MIN_THICKNESS * 2, L * _u(rng, 0.2, 1.0)), max(MIN_THICKNESS * 2, L * _u(rng, 0.1, 0.8))]
        rounding = 0.0 if rng.random() < 0.5 else _u(rng, 0.0, 0.25) * min(dims)
        return {"dims": dims, "rounding": rounding}
    if family == "cylinder":
        r = _u(rng, 0.012, 0.05)
        return {"radius": r, "height": _u(rng, 0.015, 0.22)}
    if family == "sphere":
        return {"radius": _u(rng, 0.02, 0.065)}
    if family == "ellipsoid":
        a = _u(rng, 0.025, 0.1)
        return {"radii": [a, a * _u(rng, 0.3, 1.0), a * _u(rng, 0.2, 1.0)]}
    if family == "capsule":
        r = _u(rng, 0.008, 0.04)
        return {"radius": r, "length": _u(rng, 0.01, 0.18)}
    if family == "cone":
        r1 = _u(rng, 0.015, 0.06)
        r2 = _u(rng, MIN_THICKNESS, 0.7 * r1)
        # height >= r1 - r2 keeps the base edge at 45 degrees or more (no knife edge)
        return {"radius_bottom": r1, "radius_top": r2, "height": _u(rng, max(0.03, r1 - r2), 0.2)}
    if family == "torus":
        major = _u(rng, 0.02, 0.08)
        return {"major": major, "minor": _u(rng, 0.006, min(0.025, 0.6 * major))}
    if family == "superquadric":
        a = _u(rng, 0.02, 0.09)
        return {
            "radii": [a, a * _u(rng, 0.3, 1.0), a * _u(rng, 0.25, 1.0)],
            "e1": _u(rng, 0.25, 1.4),
            "e2": _u(rng, 0.25, 1.4),
        }
    if family == "bottle":
        R = _u(rng, 0.02, 0.05)
        H = _u(rng, 0.1, 0.24)
        return {
            "radius": R,
            "height": H,
            "shoulder_frac": _u(rng, 0.45, 0.75),
            "neck_radius": _u(rng, 0.35, 0.6) * R,
            "neck_frac": _u(rng, 0.1, 0.25),
            "base_round": _u(rng, 0.1, 0.3) * R,
        }
    if family == "bowl":
        R = _u(rng, 0.05, 0.11)
        return {
            "radius": R,
            "depth": _u(rng, 0.35, 0.7) * R,
            "exponent": _u(rng, 2.0, 4.0),
            "wall": _u(rng, MIN_THICKNESS, 0.009),
        }
    if family in ("cup", "mug"):
        rb = _u(rng, 0.025, 0.045)
        p = {
            "radius_bottom": rb,
            "radius_top": rb * _u(rng, 1.0, 1.25 if family == "cup" else 1.08),
            "height": _u(rng, 0.06, 0.14),
            "wall": _u(rng, MIN_THICKNESS, 0.008),
            "bottom": _u(rng, 0.005, 0.012),
        }
        if family == "mug":
            p["handle_major"] = _u(rng, 0.25, 0.38) * p["height"]
            p["handle_minor"] = _u(rng, 0.005, 0.008)
            p["handle_center_frac"] = _u(rng, 0.45, 0.6)
        return p
    if family == "union":
        return _sample_union(rng)
    raise ValueError(f"unknown object family {family!r}; choose from {FAMILIES}")


_UNION_PARTS = ("box", "cylinder", "sphere", "capsule", "ellipsoid")


def _part_half_extents(part: dict[str, Any]) -> np.ndarray:
    t = part["type"]
    if t == "box":
        return np.asarray(part["dims"]) / 2
    if t == "cylinder":
        return np.array([part["radius"], part["radius"], part["height"] / 2])
    if t == "sphere":
        return np.full(3, part["radius"])
    if t == "capsule":
        return np.array([part["radius"], part["radius"], part["length"] / 2 + part["radius"]])
    if t == "ellipsoid":
        return np.asarray(part["radii"])
    raise ValueError(t)


def _sample_union(rng: np.random.Generator) -> dict[str, Any]:
    n = int(rng.integers(2, 5))
    parts: list[dict[str, Any]] = []
    for i in range(n):
        t = _UNION_PARTS[int(rng.integers(len(_UNION_PARTS)))]
        if t == "box":
            part: dict[str, Any] = {"dims": [_u(rng, 0.012, 0.08) for _ in range(3)]}
        elif t == "cylinder":
            part = {"radius": _u(rng, 0.008, 0.035), "height": _u(rng, 0.02, 0.1)}
        elif t == "sphere":
            part = {"radius": _u(rng, 0.01, 0.04)}
        elif t == "capsule":
            part = {"radius": _u(rng, 0.007, 0.03), "length": _u(rng, 0.01, 0.08)}
        else:
            part = {"radii": [_u(rng, 0.01, 0.05) for _ in range(3)]}
        part["type"] = t
        part["rotvec"] = _f(Rotation.random(random_state=int(rng.integers(2**31))).as_rotvec())
        if i == 0:
            part["center"] = [0.0, 0.0, 0.0]
        else:
            # New part centred strictly inside the previous one: the union is connected.
            prev = parts[-1]
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            local = 0.6 * u * _part_half_extents(prev)
            rot = Rotation.from_rotvec(prev["rotvec"]).as_matrix()
            part["center"] = _f(np.asarray(prev["center"]) + rot @ local)
        parts.append(_f(part))
    return {"parts": parts}


def sample_recipe(rng: np.random.Generator, family: str | None = None) -> ObjectRecipe:
    """Draw a random recipe (family uniform over FAMILIES unless given)."""
    if family is None:
        family = FAMILIES[int(rng.integers(len(FAMILIES)))]
    if family not in FAMILIES:
        raise ValueError(f"unknown object family {family!r}; choose from {FAMILIES}")
    seed = int(rng.integers(2**31 - 1))
    return recipe_from_seed(family, seed)


def recipe_from_seed(family: str, seed: int) -> ObjectRecipe:
    """The recipe of ``family`` drawn from ``seed`` (deterministic)."""
    params = _sample_params(family, np.random.default_rng(seed))
    return ObjectRecipe(family=family, params=_f(params), seed=int(seed))


# =============================================================================== building


def _implicit_pitch(extent: float, thinnest: float) -> float:
    return float(np.clip(min(extent / 45.0, thinnest / 1.8), 0.001, 0.003))


def _revolve(profile: np.ndarray, sections: int = 64) -> trimesh.Trimesh:
    m = trimesh.creation.revolve(np.asarray(profile, dtype=np.float64), sections=sections)
    if m.volume < 0:
        m.invert()
    return m


def _fillet(profile: np.ndarray, radius: float, count: int = 6) -> np.ndarray:
    """Round the polygon's corners off the axis (r > 0) with arcs of ``radius``
    (shrunk where edges are short) so no knife edges remain."""
    pts = np.asarray(profile, dtype=np.float64)
    out: list[np.ndarray] = []
    n = len(pts)
    for i in range(n):
        P = pts[i]
        if i == 0 or i == n - 1 or P[0] <= 1e-9:
            out.append(P)
            continue
        A, B = pts[i - 1], pts[i + 1]
        la, lb = np.linalg.norm(A - P), np.linalg.norm(B - P)
        u1, u2 = (A - P) / la, (B - P) / lb
        cos_full = float(np.clip(u1 @ u2, -1.0, 1.0))
        half = 0.5 * np.arccos(cos_full)
        if half > np.radians(70.0) or half < 1e-3:  # nearly straight (or degenerate): keep
            out.append(P)
            continue
        d = min(radius / np.tan(half), 0.45 * la, 0.45 * lb)
        rho = d * np.tan(half)
        bis = (u1 + u2) / np.linalg.norm(u1 + u2)
        C = P + bis * rho / np.sin(half)
        T1, T2 = P + u1 * d, P + u2 * d
        a1 = np.arctan2(*(T1 - C)[::-1])
        a2 = np.arctan2(*(T2 - C)[::-1])
        da = (a2 - a1 + np.pi) % (2 * np.pi) - np.pi  # short way round
        for w in np.linspace(0.0, 1.0, count):
            a = a1 + w * da
            out.append(C + rho * np.array([np.cos(a), np.sin(a)]))
    return np.array(out)


def _cup_profile(p: dict[str, Any]) -> np.ndarray:
    rb, rt, H, t, tb = p["radius_bottom"], p["radius_top"], p["height"], p["wall"], p["bottom"]
    slope = (rt - rb) / H
    r_in_bottom = rb + slope * tb - t
    prof = np.array([[0.0, 0.0], [rb, 0.0], [rt, H], [rt - t, H], [r_in_bottom, tb], [0.0, tb]])
    return _fillet(prof, min(0.003, 0.45 * t))


def _bottle_profile(p: dict[str, Any]) -> np.ndarray:
    R, H, rn = p["radius"], p["height"], p["neck_radius"]
    z_sh = p["shoulder_frac"] * H
    z_neck = (1.0 - p["neck_frac"]) * H
    b = p["base_round"]
    pts: list[tuple[float, float]] = [(0.0, 0.0)]
    for a in np.linspace(-np.pi / 2, 0.0, 6):  # rounded base edge
        pts.append((R - b + b * np.cos(a), b + b * np.sin(a)))
    pts.append((R, z_sh))
    for s in np.linspace(0.0, 1.0, 12)[1:]:  # smooth shoulder (cosine blend)
        w = 0.5 - 0.5 * np.cos(np.pi * s)
        pts.append((R + (rn - R) * w, z_sh + (z_neck - z_sh) * s))
    pts.append((rn, H))
    pts.append((0.0, H))
    return _fillet(np.array(pts), 0.002)


def _bowl_profile(p: dict[str, Any]) -> np.ndarray:
    # Outer wall z = D (r/R)^e (e >= 2: curvature radius >> wall, so the offset is
    # clean); the inner wall is its true offset by ``wall`` along the inward normal,
    # so the wall is equally thick where it is slanted; a half-round rim joins them.
    R, D, e, t = p["radius"], p["depth"], p["exponent"], p["wall"]
    r_out = np.linspace(0.0, R, 64)
    outer = np.stack([r_out, D * (r_out / R) ** e], axis=1)
    slope = D * e / R * (r_out / R) ** (e - 1)
    n = np.stack([-slope, np.ones_like(slope)], axis=1) / np.sqrt(1 + slope**2)[:, None]
    inner = outer + t * n
    inner[0, 0] = 0.0
    tangent = np.array([n[-1, 1], -n[-1, 0]])  # along the wall, pointing out of the rim
    mid = outer[-1] + 0.5 * t * n[-1]
    ang = np.linspace(-np.pi / 2, np.pi / 2, 9)[1:-1]
    rim = mid + 0.5 * t * (np.sin(ang)[:, None] * n[-1] + np.cos(ang)[:, None] * tangent)
    return np.concatenate([outer, rim, inner[::-1]])


def _superquadric(radii: list[float], e1: float, e2: float) -> trimesh.Trimesh:
    # Star-shaped about the origin: move each unit direction d to radius r with F(r d) = 1,
    # F(x) = ((|x/a|^(2/e2) + |y/b|^(2/e2))^(e2/e1) + |z/c|^(2/e1)); F(r d) = r^(2/e1) F(d).
    sphere = trimesh.creation.icosphere(subdivisions=4)
    d = sphere.vertices
    a, b, c = radii
    F = (np.abs(d[:, 0] / a) ** (2 / e2) + np.abs(d[:, 1] / b) ** (2 / e2)) ** (e2 / e1) + np.abs(d[:, 2] / c) ** (2 / e1)
    r = F ** (-e1 / 2)
    return trimesh.Trimesh(d * r[:, None], sphere.faces.copy(), process=False)


def _part_sdf(part: dict[str, Any]) -> imp.SDFFunction:
    t = part["type"]
    if t == "box":
        half = np.asarray(part["dims"]) / 2
        base = lambda q: imp.sdf_box(q, half, rounding=min(0.002, half.min() / 3))  # noqa: E731
    elif t == "cylinder":
        base = lambda q: imp.sdf_cylinder(q, part["radius"], part["height"] / 2)  # noqa: E731
    elif t == "sphere":
        base = lambda q: imp.sdf_sphere(q, part["radius"])  # noqa: E731
    elif t == "capsule":
        base = lambda q: imp.sdf_capsule(q, part["length"] / 2, part["radius"])  # noqa: E731
    elif t == "ellipsoid":
        base = lambda q: imp.sdf_ellipsoid(q, np.asarray(part["radii"]))  # noqa: E731
    else:
        raise ValueError(f"unknown union part {t!r}")
    rot = Rotation.from_rotvec(part["rotvec"]).as_matrix()
    return imp.transformed(base, rot, np.asarray(part["center"]))


def _part_bounds(part: dict[str, Any]) -> np.ndarray:
    rot = Rotation.from_rotvec(part["rotvec"]).as_matrix()
    h = _part_half_extents(part)
    ext = np.abs(rot) @ h
    c = np.asarray(part["center"])
    return np.stack([c - ext, c + ext])


def _build(recipe: ObjectRecipe) -> trimesh.Trimesh:
    fam, p = recipe.family, recipe.params
    if fam == "box":
        dims = np.asarray(p["dims"])
        if p["rounding"] <= 0:
            return trimesh.creation.box(extents=dims)
        half = dims / 2
        return imp.extract_mesh(
            lambda q: imp.sdf_box(q, half, p["rounding"]),
            np.stack([-half, half]),
            _implicit_pitch(dims.max(), dims.min()),
        )
    if fam == "cylinder":
        return trimesh.creation.cylinder(radius=p["radius"], height=p["height"], sections=64)
    if fam == "sphere":
        return trimesh.creation.icosphere(subdivisions=3, radius=p["radius"])
    if fam == "ellipsoid":
        m = trimesh.creation.icosphere(subdivisions=3)
        m.vertices = m.vertices * np.asarray(p["radii"])[None]
        return m
    if fam == "capsule":
        return trimesh.creation.capsule(height=p["length"], radius=p["radius"], count=[32, 32])
    if fam == "cone":
        h = p["height"]
        prof = np.array([[0.0, 0.0], [p["radius_bottom"], 0.0], [p["radius_top"], h], [0.0, h]])
        return _revolve(_fillet(prof, 0.003))
    if fam == "torus":
        return trimesh.creation.torus(p["major"], p["minor"], major_sections=64, minor_sections=24)
    if fam == "superquadric":
        return _superquadric(p["radii"], p["e1"], p["e2"])
    if fam == "bottle":
        return _revolve(_bottle_profile(p))
    if fam == "bowl":
        return _revolve(_bowl_profile(p), sections=72)
    if fam == "cup":
        return _revolve(_cup_profile(p), sections=72)
    if fam == "mug":
        return _build_mug(p)
    if fam == "union":
        parts = p["parts"]
        sdf = imp.union(*[_part_sdf(q) for q in parts])
        bounds = np.stack([b for b in map(_part_bounds, parts)])
        lo, hi = bounds[:, 0].min(0), bounds[:, 1].max(0)
        thin = min(_part_half_extents(q).min() * 2 for q in parts)
        return imp.extract_mesh(sdf, np.stack([lo, hi]), _implicit_pitch((hi - lo).max(), thin))
    raise ValueError(f"unknown object family {fam!r}")


def _build_mug(p: dict[str, Any]) -> trimesh.Trimesh:
    profile = _cup_profile(p)
    H, t = p["height"], p["wall"]
    a, b = p["handle_major"], p["handle_minor"]
    zc = p["handle_center_frac"] * H
    # Handle: torus in the xz-plane whose tube centre circle passes through the wall,
    # clipped to x >= x_clip (mid-wall) so no part of it enters the cup's cavity.
    r_at = p["radius_bottom"] + (p["radius_top"] - p["radius_bottom"]) * zc / H
    x_clip = r_at - t / 2
    b = min(b, 0.9 * np.sqrt(max(r_at**2 - x_clip**2, 1e-12)), 0.45 * t + 0.004)
    a = min(a, 0.45 * H - b)
    rot = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # torus axis z -> y
    torus = imp.transformed(lambda q: imp.sdf_torus(q, a, b), rot, np.array([r_at, 0.0, zc]))

    def handle(q: np.ndarray) -> np.ndarray:
        return np.maximum(torus(q), x_clip - q[..., 0])

    body = lambda q: imp.sdf_revolved(q, profile)  # noqa: E731
    R = max(p["radius_bottom"], p["radius_top"])
    lo = np.array([-R, -R, 0.0])
    hi = np.array([r_at + a + b, R, H])
    return imp.extract_mesh(imp.union(body, handle), np.stack([lo, hi]), _implicit_pitch((hi - lo).max(), min(t, 2 * b)))


def make_object(recipe: ObjectRecipe) -> trimesh.Trimesh:
    """Build the watertight mesh of ``recipe`` (metres, centred at its bounding-box centre).

    Raises ``MeshRejected`` if the construction did not give a closed solid
    (should not happen for recipes from ``sample_recipe``; tests check many seeds).
    """
    mesh = _build(recipe)
    mesh = trimesh.Trimesh(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces), process=True)
    ext = float(mesh.extents.max())
    if ext > MAX_EXTENT or ext < MIN_EXTENT:
        mesh.apply_scale(float(np.clip(ext, MIN_EXTENT, MAX_EXTENT)) / ext)
    mesh.apply_translation(-mesh.bounds.mean(axis=0))
    if not (mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0):
        raise MeshRejected(f"recipe {recipe.to_json()} produced a non-watertight mesh")
    mesh.metadata["recipe"] = recipe.to_dict()
    return mesh


# =============================================================================== mesh files

MESH_SUFFIXES = (".obj", ".ply", ".stl", ".off", ".glb", ".gltf")
_UNIT_FACTORS = {"m": 1.0, "cm": 0.01, "mm": 0.001}


def guess_units(max_extent: float) -> str:
    """Guess the length unit of a hand-held object from its largest raw extent.

    Picks the unit among m / cm / mm that puts the extent closest (in log scale)
    to 10 cm: e.g. 0.15 -> m, 8 -> cm, 150 -> mm. Ambiguity is real (a 2-unit
    object is 2 cm or 2 m): pass ``units`` explicitly when you know.
    """
    if not np.isfinite(max_extent) or max_extent <= 0:
        raise MeshRejected(f"degenerate mesh extent {max_extent}")
    best = min(_UNIT_FACTORS, key=lambda u: abs(np.log(max_extent * _UNIT_FACTORS[u] / 0.1)))
    return best


def _parse_urdf(path: str, geometry: str) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], str]:
    """(mesh filename, scale[3], 4x4 origin) of every mesh of the chosen geometry kind."""
    root = ET.parse(path).getroot()
    links = root.findall("link")
    found: list[tuple[str, np.ndarray, np.ndarray]] = []
    used = geometry
    for kind in ([geometry, "collision" if geometry == "visual" else "visual"]):
        for link in links:
            for el in link.findall(kind):
                mesh_el = el.find("geometry/mesh")
                if mesh_el is None:
                    continue
                scale = np.array([float(v) for v in mesh_el.get("scale", "1 1 1").split()])
                if scale.size == 1:
                    scale = np.repeat(scale, 3)
                T = np.eye(4)
                origin = el.find("origin")
                if origin is not None:
                    xyz = [float(v) for v in origin.get("xyz", "0 0 0").split()]
                    rpy = [float(v) for v in origin.get("rpy", "0 0 0").split()]
                    T[:3, :3] = Rotation.from_euler("xyz", rpy).as_matrix()
                    T[:3, 3] = xyz
                fn = mesh_el.get("filename", "")
                if fn.startswith("package://"):
                    fn = fn[len("package://"):].split("/", 1)[-1]
                found.append((os.path.join(os.path.dirname(path), fn), scale, T))
        if found:
            used = kind
            break
    if not found:
        raise MeshRejected(f"URDF {path} has no <mesh> geometry (primitive-only URDFs are not supported)")
    if len({id(l) for l in links if l.find(used + "/geometry/mesh") is not None}) > 1:
        raise MeshRejected(f"URDF {path} has meshes on several links; articulated objects are not supported")
    return found, used


def repair_mesh(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """Cheap, shape-preserving repairs: merge duplicate vertices, drop degenerate and
    duplicate faces, fill small holes, make winding consistent and outward."""
    mesh = mesh.copy()
    mesh.merge_vertices()
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()
    if not mesh.is_watertight:
        trimesh.repair.fill_holes(mesh)
    trimesh.repair.fix_normals(mesh, multibody=True)
    if mesh.is_watertight and mesh.volume < 0:
        mesh.invert()
    return mesh


def load_mesh(
    path: str | os.PathLike,
    units: str = "auto",
    scale: float | None = None,
    *,
    center: bool = True,
    allow_convex_hull: bool = False,
    urdf_geometry: str = "visual",
    size_range: tuple[float, float] | None = (0.01, 0.6),
    min_thickness: float | None = None,
) -> trimesh.Trimesh:
    """Load an object mesh (obj/ply/stl/off/glb or URDF) as a watertight solid in metres.

    units: "auto" (URDF: the file's ``<mesh scale>`` is taken as giving metres;
    other files: :func:`guess_units`), or "m" / "cm" / "mm". ``scale`` multiplies
    after unit conversion. Non-watertight meshes are repaired
    (:func:`repair_mesh`); if that fails the mesh is rejected unless
    ``allow_convex_hull`` (then its convex hull is used and ``metadata["convex_hull"]``
    is set). ``size_range`` (metres, largest extent) rejects objects that are not
    hand-sized; None disables the check. ``min_thickness`` (metres) rejects objects
    whose smallest bounding-box extent is below it (flat sheets).
    Raises :class:`MeshRejected` with a reason.
    """
    path = os.fspath(path)
    if urdf_geometry not in ("visual", "collision"):
        raise ValueError(f"urdf_geometry must be 'visual' or 'collision', not {urdf_geometry!r}")
    if not os.path.exists(path):
        raise MeshRejected(f"no such file: {path}")
    meta: dict[str, Any] = {"source": path}
    if path.lower().endswith(".urdf"):
        try:
            entries, used = _parse_urdf(path, urdf_geometry)
        except ET.ParseError as e:
            raise MeshRejected(f"URDF {path} is not valid XML: {e}") from e
        parts = []
        for fn, sc, T in entries:
            m = _load_single(fn)
            m.vertices = m.vertices * sc[None]
            m.apply_transform(T)
            parts.append(m)
        mesh = trimesh.util.concatenate(parts) if len(parts) > 1 else parts[0]
        meta["urdf_geometry"] = used
        meta["urdf_scale"] = [float(v) for v in entries[0][1]]
        unit = "m" if units == "auto" else units
    else:
        mesh = _load_single(path)
        unit = guess_units(float(mesh.extents.max())) if units == "auto" else units
    if unit not in _UNIT_FACTORS:
        raise ValueError(f"units must be auto, m, cm or mm, not {units!r}")
    factor = _UNIT_FACTORS[unit] * (1.0 if scale is None else float(scale))
    mesh.apply_scale(factor)
    meta["units"] = unit
    meta["scale_applied"] = factor
    if not (mesh.is_watertight and mesh.is_winding_consistent):
        mesh = repair_mesh(mesh)
        meta["repaired"] = True
    if not mesh.is_watertight:
        if not allow_convex_hull:
            raise MeshRejected(
                f"{path}: not watertight after repair ({len(mesh.faces)} faces, "
                f"{int((trimesh.grouping.group_rows(mesh.edges_sorted, require_count=1)).size)} boundary edges); "
                "pass allow_convex_hull=True to use its convex hull instead"
            )
        mesh = mesh.convex_hull
        meta["convex_hull"] = True
    if mesh.volume <= 0:
        raise MeshRejected(f"{path}: non-positive volume {mesh.volume:.3g} after repair")
    ext = float(mesh.extents.max())
    if size_range is not None and not (size_range[0] <= ext <= size_range[1]):
        raise MeshRejected(
            f"{path}: largest extent {ext * 100:.1f} cm outside the graspable range "
            f"[{size_range[0] * 100:.0f}, {size_range[1] * 100:.0f}] cm (units={unit}, factor={factor:g})"
        )
    if min_thickness is not None and float(mesh.extents.min()) < min_thickness:
        raise MeshRejected(
            f"{path}: smallest extent {mesh.extents.min() * 1000:.1f} mm is below {min_thickness * 1000:.1f} mm"
        )
    if center:
        offset = mesh.bounds.mean(axis=0)
        mesh.apply_translation(-offset)
        meta["center_offset"] = [float(v) for v in offset]
    mesh.metadata.update(meta)
    return mesh


def _load_single(path: str) -> trimesh.Trimesh:
    if not os.path.exists(path):
        raise MeshRejected(f"mesh file not found: {path}")
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as e:  # trimesh raises many types for malformed files
        raise MeshRejected(f"cannot read {path}: {e}") from e
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0:
        raise MeshRejected(f"{path} holds no triangle mesh")
    if not np.isfinite(np.asarray(loaded.vertices)).all():
        raise MeshRejected(f"{path} has non-finite (NaN/inf) vertex coordinates")
    return trimesh.Trimesh(np.asarray(loaded.vertices, dtype=np.float64), np.asarray(loaded.faces), process=False)


def find_mesh_files(folder: str | os.PathLike) -> list[str]:
    """All mesh/URDF files under ``folder`` (recursive, sorted; URDFs shadow the meshes
    they reference in the same directory)."""
    out: list[str] = []
    for root, _dirs, files in os.walk(os.fspath(folder)):
        files = sorted(files)
        urdfs = [f for f in files if f.lower().endswith(".urdf")]
        if urdfs:
            out.extend(os.path.join(root, f) for f in urdfs)
            continue
        out.extend(os.path.join(root, f) for f in files if f.lower().endswith(MESH_SUFFIXES))
    return sorted(out)


# =============================================================================== random_urdfs

RANDOM_URDF_COUNT = 1000
RANDOM_URDF_TEST_START = 800  # 000-799 train/val, 800-999 test_mesh (fixed rule)


def random_urdfs_dir() -> str:
    import pybullet_data

    return os.path.join(pybullet_data.getDataPath(), "random_urdfs")


def random_urdf_path(index: int) -> str:
    if not 0 <= index < RANDOM_URDF_COUNT:
        raise IndexError(f"random_urdfs index {index} outside 0..999")
    return os.path.join(random_urdfs_dir(), f"{index:03d}", f"{index:03d}.urdf")


def random_urdf_split(index: int, val_fraction: float = 0.1) -> str:
    """'test_mesh' for 800-999 (a second, real-mesh test split); 000-799 go to 'val' by a
    stable hash (``val_fraction``), else 'train'."""
    if index >= RANDOM_URDF_TEST_START:
        return "test_mesh"
    h = int(hashlib.sha256(f"random_urdf/{index:03d}".encode()).hexdigest()[:8], 16) / 16**8
    return "val" if h < val_fraction else "train"


def random_urdf_ids(split: str, val_fraction: float = 0.1) -> list[int]:
    """Indices of a split: 'train', 'val', 'trainval', 'test_mesh' or 'all'."""
    if split == "trainval":
        return list(range(RANDOM_URDF_TEST_START))
    if split == "all":
        return list(range(RANDOM_URDF_COUNT))
    if split == "test":  # the old name of the held-out part
        split = "test_mesh"
    if split not in ("train", "val", "test_mesh"):
        raise ValueError(f"unknown split {split!r}")
    return [i for i in range(RANDOM_URDF_COUNT) if random_urdf_split(i, val_fraction) == split]


RANDOM_URDF_SIZE_RANGE = (0.03, 0.30)
RANDOM_URDF_MIN_THICKNESS = 0.004


def load_random_urdf(index: int, **kwargs: Any) -> trimesh.Trimesh:
    """random_urdfs/<index> through the URDF path (scale 0.015 from the file: metres).

    By default objects under 3 cm or thinner than 4 mm are rejected (a handful of the
    1000 are; one has NaN vertices); pass ``size_range`` / ``min_thickness`` to change.
    """
    kwargs.setdefault("size_range", RANDOM_URDF_SIZE_RANGE)
    kwargs.setdefault("min_thickness", RANDOM_URDF_MIN_THICKNESS)
    mesh = load_mesh(random_urdf_path(index), **kwargs)
    mesh.metadata["object_id"] = f"random_urdf-{index:03d}"
    return mesh


def iter_random_urdfs(split: str, **kwargs: Any) -> Iterator[tuple[int, trimesh.Trimesh | MeshRejected]]:
    """Yield (index, mesh) for a split; rejected meshes are yielded as their MeshRejected."""
    for i in random_urdf_ids(split):
        try:
            yield i, load_random_urdf(i, **kwargs)
        except MeshRejected as e:
            yield i, e
