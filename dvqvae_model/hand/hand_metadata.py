"""Per-hand-model metadata derived from the model arrays (works for MANO and for the stand-in).

Nothing here is a hard-coded MANO vertex list: parts come from the skinning weights, fingertips
and contact regions from the rest geometry, the wrist cap from the mesh boundary, and joint limits
from the table in the method notes mapped onto each joint's anatomical axes. So any MANO-layout
model (the licensed MANO file or our openly generated stand-in) gets consistent metadata.

Axis mapping for joint limits (documented because it matters to every optimiser using them):
MANO's 45 pose values are axis-angle vectors whose components are about the axes of the rest
(template) frame. For each finger joint we build an anatomical frame from the rest pose:
  twist  t = direction of the bone leaving the joint (to the next joint or to the fingertip),
  bend   b = t x f, with f the direction the finger pad faces at rest (the palm normal made
             orthogonal to t): a positive rotation about b curls the finger towards the palm,
  spread s = +-f: a rotation about the pad normal swings the finger sideways; the sign is chosen
             so that positive spread is abduction, away from the middle finger's line (for the
             thumb: away from the index knuckle).
The anatomical limits (``local_joint_limits``: twist/spread/bend per joint) are exact in that
frame (``pose_to_local`` maps a pose into it). ``joint_limits`` [45,2] is the tight axis-aligned
box of that region in pose-component space (interval arithmetic through the frame), so every
anatomically allowed pose lies inside it and optimisers can simply clamp. For a MANO-like hand
(fingers along -x, palm normal -y) the frames are nearly axis-aligned: ``joint_axis_map`` then
reads bend = +z, spread = +-y, twist = -x for the four fingers (MANO's usual flexion about z).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

__all__ = [
    "PART_NAMES",
    "FINGER_NAMES",
    "FINGER_JOINTS",
    "JOINT_TO_PART",
    "META_VERSION",
    "JOINT_LIMITS_DEG",
    "HandMetadata",
    "compute_metadata",
    "model_fingerprint",
    "rest_joints",
    "vertex_normals",
    "mesh_edges",
    "boundary_loops",
    "triangulate_loops",
    "local_joint_limits",
    "pose_to_local",
    "pose_from_local",
    "save_metadata",
    "load_metadata",
    "load_or_compute_metadata",
]

META_VERSION = 1  # bump when the derivation changes: stored metadata is then recomputed

PART_NAMES: tuple[str, ...] = ("thumb", "index", "middle", "ring", "pinky", "palm")
FINGER_NAMES: tuple[str, ...] = PART_NAMES[:5]
# MANO joint ids (MCP/CMC, PIP/MCP, DIP/IP) of each finger, in part order.
FINGER_JOINTS: tuple[tuple[int, int, int], ...] = (
    (13, 14, 15),  # thumb
    (1, 2, 3),  # index
    (4, 5, 6),  # middle
    (10, 11, 12),  # ring
    (7, 8, 9),  # pinky
)
JOINT_TO_PART = np.full(16, 5, dtype=np.int64)
for _p, _js in enumerate(FINGER_JOINTS):
    JOINT_TO_PART[list(_js)] = _p

# Limits in degrees as (twist, spread, bend) ranges, from the method notes.
# Finger MCP spread is +-5..20 degrees depending on the finger (index 15, middle 5, ring 10, pinky 20).
_FINGER_MCP_SPREAD = {"index": 15.0, "middle": 5.0, "ring": 10.0, "pinky": 20.0}
JOINT_LIMITS_DEG: dict[int, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {}
for _name, _js in zip(FINGER_NAMES, FINGER_JOINTS):
    if _name == "thumb":
        JOINT_LIMITS_DEG[_js[0]] = ((-45.0, 45.0), (-15.0, 45.0), (0.0, 45.0))  # CMC
        JOINT_LIMITS_DEG[_js[1]] = ((0.0, 0.0), (-10.0, 10.0), (0.0, 90.0))  # MCP
        JOINT_LIMITS_DEG[_js[2]] = ((0.0, 0.0), (0.0, 0.0), (0.0, 90.0))  # IP
    else:
        sp_ = _FINGER_MCP_SPREAD[_name]
        JOINT_LIMITS_DEG[_js[0]] = ((0.0, 0.0), (-sp_, sp_), (0.0, 90.0))  # MCP
        JOINT_LIMITS_DEG[_js[1]] = ((0.0, 0.0), (0.0, 0.0), (0.0, 90.0))  # PIP
        JOINT_LIMITS_DEG[_js[2]] = ((0.0, 0.0), (0.0, 0.0), (0.0, 90.0))  # DIP


@dataclass
class HandMetadata:
    """Derived, model-specific facts the rest of the code base needs about a hand model.

    ``sealed_faces`` is the full watertight face set (the model's faces followed by the wrist cap);
    ``cap_faces`` is the cap alone (empty for a closed mesh such as the stand-in).
    ``joint_frames[k]`` rows are the (twist, spread, bend) unit axes of MANO joint k+1 in the rest
    frame; ``joint_axis_map[k, a]`` is the pose component (0..2) used for anatomical axis a and
    ``joint_axis_sign[k, a]`` its sign (see module docstring).
    """

    part_ids: np.ndarray  # [V] int64 in 0..5
    part_names: tuple[str, ...]
    fingertip_ids: np.ndarray  # [5] thumb, index, middle, ring, pinky
    contact_ids: np.ndarray  # [C] sorted vertex ids (finger pads + palm centre, palm side)
    sealed_faces: np.ndarray  # [F+K,3] faces + wrist cap
    joint_limits: np.ndarray  # [45,2] radians (lower, upper) per pose value
    fingerprint: str
    cap_faces: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    boundary_loops: tuple[np.ndarray, ...] = ()
    joint_frames: np.ndarray = field(default_factory=lambda: np.zeros((15, 3, 3)))
    joint_axis_map: np.ndarray = field(default_factory=lambda: np.zeros((15, 3), np.int64))
    joint_axis_sign: np.ndarray = field(default_factory=lambda: np.ones((15, 3)))
    palm_normal: np.ndarray = field(default_factory=lambda: np.array([0.0, -1.0, 0.0]))

    def part_vertex_ids(self, i: int) -> np.ndarray:
        """Vertex ids of part ``i`` (0 thumb .. 5 palm)."""
        if not 0 <= i < len(self.part_names):
            raise IndexError(f"part index {i} out of range 0..{len(self.part_names) - 1}")
        return np.flatnonzero(self.part_ids == i)

    @property
    def part_sizes(self) -> dict[str, int]:
        return {n: int((self.part_ids == i).sum()) for i, n in enumerate(self.part_names)}

    def finger_pose_slice(self, joint: int) -> slice:
        """Slice of the 45-d hand pose belonging to MANO joint ``joint`` (1..15)."""
        return slice(3 * (joint - 1), 3 * joint)


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------
def rest_joints(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The 16 rest-pose joints (J_regressor @ v_template), metres."""
    return np.asarray(arrays["J_regressor"], np.float64) @ np.asarray(arrays["v_template"], np.float64)


def vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals."""
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    vn = np.zeros_like(v)
    for k in range(3):
        np.add.at(vn, f[:, k], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-12)


def mesh_edges(f: np.ndarray) -> np.ndarray:
    """Unique undirected edges [E,2] (sorted pairs)."""
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    return np.unique(np.sort(e, axis=1), axis=0)


def _adjacency(num_vertices: int, edges: np.ndarray) -> sp.csr_matrix:
    data = np.ones(2 * len(edges))
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    return sp.csr_matrix((data, (rows, cols)), shape=(num_vertices, num_vertices))


def boundary_loops(f: np.ndarray) -> list[np.ndarray]:
    """Closed boundary loops, each ordered along the faces' half-edges (a->b as in some face)."""
    he = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    key = np.sort(he, axis=1)
    _, inv, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    bnd = he[counts[inv.ravel()] == 1]
    nxt: dict[int, list[int]] = {}
    for a, b in bnd:
        nxt.setdefault(int(a), []).append(int(b))
    loops: list[np.ndarray] = []
    while nxt:
        start = min(nxt)
        loop = [start]
        cur = start
        while True:
            outs = nxt.get(cur)
            if not outs:
                break
            n = outs.pop()
            if not outs:
                del nxt[cur]
            if n == start:
                break
            loop.append(n)
            cur = n
        loops.append(np.asarray(loop, dtype=np.int64))
    return loops


def _ear_clip(poly2d: np.ndarray) -> list[tuple[int, int, int]]:
    """Ear clipping of a simple CCW polygon; returns index triples in polygon order."""
    idx = list(range(len(poly2d)))
    tris: list[tuple[int, int, int]] = []

    def cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
        return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))

    guard = 0
    while len(idx) > 3 and guard < 10 * len(poly2d) ** 2:
        guard += 1
        clipped = False
        for k in range(len(idx)):
            i0, i1, i2 = idx[k - 1], idx[k], idx[(k + 1) % len(idx)]
            a, b, c = poly2d[i0], poly2d[i1], poly2d[i2]
            if cross(a, b, c) <= 1e-15:
                continue  # reflex or degenerate corner
            inside = False
            for j in idx:
                if j in (i0, i1, i2):
                    continue
                p = poly2d[j]
                if cross(a, b, p) >= 0 and cross(b, c, p) >= 0 and cross(c, a, p) >= 0:
                    inside = True
                    break
            if inside:
                continue
            tris.append((i0, i1, i2))
            idx.pop(k)
            clipped = True
            break
        if not clipped:
            raise ValueError("ear clipping failed (polygon not simple in projection)")
    if len(idx) == 3:
        tris.append((idx[0], idx[1], idx[2]))
    return tris


def triangulate_loops(v: np.ndarray, loops: Iterable[np.ndarray]) -> np.ndarray:
    """Cap faces closing each boundary loop, using existing vertices only.

    The cap traverses each boundary edge opposite to its face (loop reversed), so faces + cap are
    consistently oriented. Each loop is projected on its best-fit plane and ear-clipped; if the
    projection is not a simple polygon we fall back to a fan from the loop's first vertex.
    """
    caps: list[np.ndarray] = []
    for loop in loops:
        poly = np.asarray(loop[::-1], dtype=np.int64)
        if len(poly) < 3:
            continue
        pts = v[poly]
        centred = pts - pts.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
        area2 = float(np.sum(xy[:, 0] * np.roll(xy[:, 1], -1) - np.roll(xy[:, 0], -1) * xy[:, 1]))
        if area2 < 0:
            xy[:, 1] = -xy[:, 1]  # mirror the plane basis, keep the vertex order
        try:
            tris = np.asarray(_ear_clip(xy), dtype=np.int64)
        except ValueError:
            tris = np.asarray([(0, k, k + 1) for k in range(1, len(poly) - 1)], dtype=np.int64)
        caps.append(poly[tris])
    return np.concatenate(caps) if caps else np.zeros((0, 3), dtype=np.int64)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


def _perp(x: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """Component of x orthogonal to unit vector axis, normalised."""
    return _unit(x - np.dot(x, axis) * axis)


# --------------------------------------------------------------------------------------------
# Derivations
# --------------------------------------------------------------------------------------------
def _connected_parts(part: np.ndarray, adj: sp.csr_matrix) -> np.ndarray:
    """Reassign stray islands so every part is one connected piece of the mesh graph."""
    part = part.copy()
    coo = adj.tocoo()
    for _ in range(20):
        changed = False
        for p in np.unique(part):
            ids = np.flatnonzero(part == p)
            sub = adj[ids][:, ids]
            n_comp, lab = connected_components(sub, directed=False)
            if n_comp <= 1:
                continue
            keep = np.argmax(np.bincount(lab))
            for c in range(n_comp):
                if c == keep:
                    continue
                island = ids[lab == c]
                mask = np.zeros(len(part), bool)
                mask[island] = True
                nb = coo.col[mask[coo.row] & ~mask[coo.col]]
                nb_parts = part[nb]
                nb_parts = nb_parts[nb_parts != p]
                if len(nb_parts) == 0:
                    continue  # an isolated mesh component: nothing to merge with
                part[island] = np.bincount(nb_parts).argmax()
                changed = True
        if not changed:
            break
    return part


def _flex_targets(joints: np.ndarray, palm_n: np.ndarray) -> np.ndarray:
    """Direction each finger curls towards / its pad faces [5,3] (before orthogonalising to the bone).

    Fingers curl towards the palm normal; the thumb curls across the palm, towards the palm and
    the little finger (opposition), so its target is tilted towards the pinky knuckle.
    """
    out = np.tile(palm_n, (5, 1))
    across = joints[7] - joints[1]
    across = _unit(across - np.dot(across, palm_n) * palm_n)
    out[0] = _unit(palm_n + 0.8 * across)
    return out


def _pad_directions(v: np.ndarray, joints: np.ndarray, tips: np.ndarray, palm_n: np.ndarray) -> np.ndarray:
    """Direction each finger's pad faces at rest [5,3] (flex target orthogonalised to its distal bone)."""
    targets = _flex_targets(joints, palm_n)
    out = np.zeros((5, 3))
    for k, (_, j2, _) in enumerate(FINGER_JOINTS):
        out[k] = _perp(targets[k], _unit(v[tips[k]] - joints[j2]))
    return out


def _joint_frames(joints: np.ndarray, tip_pos: np.ndarray, palm_n: np.ndarray) -> np.ndarray:
    """Anatomical (twist, spread, bend) axes [15,3,3] of MANO joints 1..15 (rows), rest frame."""
    frames = np.zeros((15, 3, 3))
    middle_dir = _unit(joints[4] - joints[0])
    targets = _flex_targets(joints, palm_n)
    for k, js in enumerate(FINGER_JOINTS):
        for n, j in enumerate(js):
            child = joints[js[n + 1]] if n < 2 else tip_pos[k]
            t = _unit(child - joints[j])
            f = _perp(targets[k], t)  # pad direction
            b = _unit(np.cross(t, f))  # bend axis: rotating about +b moves t towards f
            # Rotating about +f moves t towards f x t = -b (sideways). Orient the spread axis so that
            # positive spread is abduction: away from the middle finger's line (thumb: from index MCP).
            if k == 0:
                away = joints[j] - joints[1]
            elif k == 2:
                away = joints[10] - joints[1]  # middle finger: call the ring side "abduction"
            else:
                away = joints[j] - (joints[0] + middle_dir * np.dot(joints[j] - joints[0], middle_dir))
            s = f if np.dot(-b, away) >= 0 else -f
            frames[j - 1] = np.stack([t, s, b])
    return frames


def _assign_axes(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map each anatomical axis to its best-aligned template axis (a permutation) and sign."""
    amap = np.zeros((15, 3), np.int64)
    asign = np.ones((15, 3))
    for k in range(15):
        cos = frames[k]  # rows: anatomical axes, columns: template x, y, z components
        used_rows: set[int] = set()
        used_cols: set[int] = set()
        order = np.dstack(np.unravel_index(np.argsort(-np.abs(cos), axis=None), (3, 3)))[0]
        for r, c in order:
            if r in used_rows or c in used_cols:
                continue
            amap[k, r] = c
            asign[k, r] = 1.0 if cos[r, c] >= 0 else -1.0
            used_rows.add(int(r))
            used_cols.add(int(c))
    return amap, asign


def local_joint_limits() -> np.ndarray:
    """Anatomical limits [15,3,2] (radians) per articulated joint: (twist, spread, bend) x (lo, hi)."""
    return np.deg2rad(np.asarray([JOINT_LIMITS_DEG[j] for j in range(1, 16)], dtype=np.float64))


def _joint_limits(frames: np.ndarray) -> np.ndarray:
    """Axis-aligned box [45,2] on the pose components containing every anatomically allowed pose.

    A pose value vector of joint k is ``aa = frames[k].T @ theta`` with theta = (twist, spread, bend)
    inside the anatomical box; interval arithmetic gives each component's exact range. When the
    anatomical axes coincide with template axes this is just the table mapped with signs.
    """
    loc = local_joint_limits()  # [15,3,2]
    lim = np.zeros((45, 2))
    for k in range(15):
        F = frames[k]  # [3 anatomical, 3 components]
        lo = np.minimum(F * loc[k, :, :1], F * loc[k, :, 1:]).sum(axis=0)
        hi = np.maximum(F * loc[k, :, :1], F * loc[k, :, 1:]).sum(axis=0)
        lim[3 * k : 3 * k + 3, 0] = lo
        lim[3 * k : 3 * k + 3, 1] = hi
    return lim


def pose_to_local(meta: "HandMetadata", hand_pose: np.ndarray) -> np.ndarray:
    """Hand pose [...,45] -> anatomical (twist, spread, bend) angles [...,15,3] (linear map)."""
    aa = np.asarray(hand_pose).reshape(*np.shape(hand_pose)[:-1], 15, 3)
    return np.einsum("kac,...kc->...ka", meta.joint_frames, aa)


def pose_from_local(meta: "HandMetadata", local: np.ndarray) -> np.ndarray:
    """Anatomical angles [...,15,3] (radians) -> hand pose [...,45] (sum of axis rotations)."""
    aa = np.einsum("kac,...ka->...kc", meta.joint_frames, np.asarray(local, np.float64))
    return aa.reshape(*aa.shape[:-2], 45)


def _canonical_bytes(arr: np.ndarray, decimals: int = 7) -> bytes:
    a = np.asarray(arr)
    if a.dtype.kind == "f":
        a = np.round(a.astype(np.float64), decimals) + 0.0  # +0.0 folds -0.0 into 0.0
        a = a.astype("<f8")
    else:
        a = a.astype("<i8")
    return str(a.shape).encode() + np.ascontiguousarray(a).tobytes()


def model_fingerprint(arrays: Mapping[str, np.ndarray]) -> str:
    """Stable 16-hex-char id of a hand model's geometry, skinning, regressor, shape space, tree."""
    kt = np.asarray(arrays["kintree_table"]).astype(np.int64).copy()
    kt[0, 0] = -1
    h = hashlib.sha256()
    for name, arr in (
        ("v_template", arrays["v_template"]),
        ("f", arrays["f"]),
        ("weights", arrays["weights"]),
        ("J_regressor", arrays["J_regressor"]),
        ("shapedirs", np.asarray(arrays["shapedirs"])[:, :, :10]),
        ("kintree_table", kt),
    ):
        h.update(name.encode())
        h.update(_canonical_bytes(arr))
    return h.hexdigest()[:16]


def compute_metadata(arrays: Mapping[str, np.ndarray]) -> HandMetadata:
    """Derive all metadata from MANO-layout arrays (see module docstring for the conventions)."""
    v = np.asarray(arrays["v_template"], np.float64)
    f = np.asarray(arrays["f"], np.int64)
    w = np.asarray(arrays["weights"], np.float64)
    V = len(v)
    joints = rest_joints(arrays)
    adj = _adjacency(V, mesh_edges(f))

    dom_joint = np.argmax(w, axis=1)
    part_ids = _connected_parts(JOINT_TO_PART[dom_joint], adj)

    tips = np.zeros(5, np.int64)
    for k, (_, j2, j3) in enumerate(FINGER_JOINTS):
        ids = np.flatnonzero(part_ids == k)
        if len(ids) == 0:
            raise ValueError(f"part '{FINGER_NAMES[k]}' is empty: skinning weights do not cover it")
        d = _unit(joints[j3] - joints[j2])
        tips[k] = ids[np.argmax((v[ids] - joints[j3]) @ d)]

    palm_n = _unit(np.cross(joints[1] - joints[0], joints[7] - joints[0]))
    normals = vertex_normals(v, f)
    pads = _pad_directions(v, joints, tips, palm_n)
    contact = np.zeros(V, bool)
    for k, (_, j2, j3) in enumerate(FINGER_JOINTS):
        on_seg = (part_ids == k) & np.isin(dom_joint, (j2, j3))
        contact |= on_seg & (normals @ pads[k] > 0.5)
    mcps = joints[[1, 4, 7, 10]]
    centre = joints[0] + 0.6 * (mcps.mean(axis=0) - joints[0])  # palm centre, towards the knuckles
    radius = 0.45 * float(np.linalg.norm(mcps.mean(axis=0) - joints[0]))
    rel = v - centre
    rel_in_plane = rel - np.outer(rel @ palm_n, palm_n)
    contact |= (part_ids == 5) & (normals @ palm_n > 0.7) & (np.linalg.norm(rel_in_plane, axis=1) < radius)
    contact_ids = np.flatnonzero(contact).astype(np.int64)

    loops = boundary_loops(f)
    cap = triangulate_loops(v, loops)
    sealed = np.concatenate([f, cap]).astype(np.int64)

    frames = _joint_frames(joints, v[tips], palm_n)
    amap, asign = _assign_axes(frames)
    return HandMetadata(
        part_ids=part_ids.astype(np.int64),
        part_names=PART_NAMES,
        fingertip_ids=tips,
        contact_ids=contact_ids,
        sealed_faces=sealed,
        joint_limits=_joint_limits(frames),
        fingerprint=model_fingerprint(arrays),
        cap_faces=cap.astype(np.int64),
        boundary_loops=tuple(loops),
        joint_frames=frames,
        joint_axis_map=amap,
        joint_axis_sign=asign,
        palm_normal=palm_n,
    )


# --------------------------------------------------------------------------------------------
# Persistence (.npz, no pickle)
# --------------------------------------------------------------------------------------------
def save_metadata(meta: HandMetadata, path: str | os.PathLike[str]) -> None:
    """Write metadata atomically as a pickle-free .npz."""
    from .mano_pickle import atomic_save_npz

    loops = list(meta.boundary_loops)
    atomic_save_npz(
        Path(path),
        {
            "meta_version": np.asarray(META_VERSION, np.int64),
            "fingerprint": np.asarray(meta.fingerprint),
            "part_names": np.asarray(meta.part_names),
            "part_ids": meta.part_ids,
            "fingertip_ids": meta.fingertip_ids,
            "contact_ids": meta.contact_ids,
            "sealed_faces": meta.sealed_faces,
            "joint_limits": meta.joint_limits,
            "cap_faces": meta.cap_faces,
            "loop_vertices": np.concatenate(loops) if loops else np.zeros(0, np.int64),
            "loop_lengths": np.asarray([len(x) for x in loops], np.int64),
            "joint_frames": meta.joint_frames,
            "joint_axis_map": meta.joint_axis_map,
            "joint_axis_sign": meta.joint_axis_sign,
            "palm_normal": meta.palm_normal,
        },
    )


def load_metadata(path: str | os.PathLike[str]) -> HandMetadata:
    """Read metadata written by :func:`save_metadata` (raises ValueError on a stale version)."""
    with np.load(Path(path), allow_pickle=False) as z:
        if int(z["meta_version"]) != META_VERSION:
            raise ValueError(f"metadata version {int(z['meta_version'])} != {META_VERSION}")
        lengths = z["loop_lengths"]
        flat = z["loop_vertices"]
        loops = tuple(np.split(flat, np.cumsum(lengths)[:-1])) if len(lengths) else ()
        return HandMetadata(
            part_ids=z["part_ids"].astype(np.int64),
            part_names=tuple(str(s) for s in z["part_names"]),
            fingertip_ids=z["fingertip_ids"].astype(np.int64),
            contact_ids=z["contact_ids"].astype(np.int64),
            sealed_faces=z["sealed_faces"].astype(np.int64),
            joint_limits=z["joint_limits"].astype(np.float64),
            fingerprint=str(z["fingerprint"]),
            cap_faces=z["cap_faces"].astype(np.int64).reshape(-1, 3),
            boundary_loops=tuple(x.astype(np.int64) for x in loops),
            joint_frames=z["joint_frames"].astype(np.float64),
            joint_axis_map=z["joint_axis_map"].astype(np.int64),
            joint_axis_sign=z["joint_axis_sign"].astype(np.float64),
            palm_normal=z["palm_normal"].astype(np.float64),
        )


def load_or_compute_metadata(
    arrays: Mapping[str, np.ndarray], store: str | os.PathLike[str] | None
) -> HandMetadata:
    """Stored metadata if it matches the model's fingerprint (and version), else recompute + store.

    ``store`` is the .npz location (next to the stand-in asset, or in the cache dir for MANO);
    ``None`` means compute without storing. A failed write (read-only install) is not an error.
    """
    fp = model_fingerprint(arrays)
    if store is not None and Path(store).is_file():
        try:
            meta = load_metadata(store)
            if meta.fingerprint == fp and len(meta.part_ids) == len(arrays["v_template"]):
                return meta
        except (OSError, KeyError, ValueError):
            pass
    meta = compute_metadata(arrays)
    if store is not None:
        try:
            save_metadata(meta, store)
        except OSError:
            pass
    return meta
