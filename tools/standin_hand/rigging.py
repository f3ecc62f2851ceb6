"""Skinning weights, joint regressor and shape directions of the stand-in hand.

Why: MANO's deformation model is linear blend skinning of a template with a
joint regressor and linear shape directions; these are built here from the
skeleton and the implicit parts so that the hand bends smoothly and its joints
follow shape changes.

- Skinning: each vertex belongs softly to a part (palm or one finger) by its
  distance to that part's primitives; along a finger it is blended between
  consecutive bones by its arc-length position on the finger's chain
  (smoothstep over a width proportional to the finger's radius at that joint);
  the weights are then diffused a few steps over the mesh graph.
- Joint regressor: each joint is a weighted mean of a ring of vertices (a thin
  slab across the bone at the joint), with Gaussian weights minimally
  corrected so that the template reproduces the designed joint exactly.
- Shape directions: displacement fields from per-bone affine edits (overall
  size, palm width, finger length, thickness, palm length, then each finger's
  length), blended with the skinning weights, Gram-Schmidt orthogonalised.
"""
from __future__ import annotations

import numpy as np

from .implicit import HandShape
from .skeleton import FINGER_JOINTS, FINGERS, PART_NAMES, Skeleton

N_JOINTS = 16


def vertex_adjacency(n: int, faces: np.ndarray) -> list[np.ndarray]:
    """Sorted neighbour lists of the mesh graph."""
    nb: list[set[int]] = [set() for _ in range(n)]
    for a, b, c in faces:
        nb[a].update((b, c))
        nb[b].update((a, c))
        nb[c].update((a, b))
    return [np.array(sorted(s), dtype=np.int64) for s in nb]


def diffuse(x: np.ndarray, nbrs: list[np.ndarray], steps: int, lam: float = 0.5) -> np.ndarray:
    """Graph smoothing: x <- (1-lam) x + lam * mean over neighbours."""
    x = x.copy()
    for _ in range(steps):
        x = (1 - lam) * x + lam * np.stack([x[nb].mean(axis=0) for nb in nbrs])
    return x


def chain_arclength(v: np.ndarray, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Arc-length coordinate of points v along the polyline pts (4 points).

    Points before the first joint get negative values (the first segment is
    extended backwards). Returns (s, joint arc positions [3]).
    """
    seg = pts[1:] - pts[:-1]
    lens = np.linalg.norm(seg, axis=1)
    starts = np.concatenate([[0.0], np.cumsum(lens)[:-1]])
    best_d = np.full(len(v), np.inf)
    s = np.zeros(len(v))
    for k in range(3):
        u = seg[k] / lens[k]
        t = (v - pts[k]) @ u
        t = np.minimum(t, lens[k])
        if k > 0:
            t = np.maximum(t, 0.0)
        q = pts[k] + t[:, None] * u
        d = np.linalg.norm(v - q, axis=1)
        better = d < best_d - 1e-12
        best_d = np.where(better, d, best_d)
        s = np.where(better, starts[k] + t, s)
    return s, starts


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def part_membership(hs: HandShape, v: np.ndarray, tau: float = 0.0015) -> np.ndarray:
    """Soft part membership [V, 6] in PART_NAMES order, from the parts' distances."""
    d = hs.part_sdfs(v)
    D = np.stack([d[name] for name in PART_NAMES], axis=1)
    D = np.maximum(D, 0.0)  # inside a primitive is as good as on it
    z = -(D - D.min(axis=1, keepdims=True)) / tau
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


#: blend half-width at each chain joint, as a multiple of the finger radius there
BLEND = {"thumb": (2.2, 0.8, 0.8), "index": (0.9, 0.8, 0.8), "middle": (0.9, 0.8, 0.8),
         "ring": (0.9, 0.8, 0.8), "pinky": (0.9, 0.8, 0.8)}


def skinning_weights(hs: HandShape, v: np.ndarray, faces: np.ndarray, diffuse_steps: int = 3
                     ) -> np.ndarray:
    """LBS weights [V,16] (rows sum to 1)."""
    skel = hs.skel
    memb = part_membership(hs, v)
    W = np.zeros((len(v), N_JOINTS))
    W[:, 0] += memb[:, PART_NAMES.index("palm")]
    for name, js in FINGER_JOINTS.items():
        m = memb[:, PART_NAMES.index(name)]
        pts = skel.chain_points(name)
        s, sj = chain_arclength(v, pts)
        r = FINGERS[name].radii
        sig = [smoothstep((s - sj[k]) / (2 * BLEND[name][k] * r[k]) + 0.5) for k in range(3)]
        W[:, 0] += m * (1 - sig[0])
        W[:, js[0]] += m * (sig[0] - sig[1])
        W[:, js[1]] += m * (sig[1] - sig[2])
        W[:, js[2]] += m * sig[2]
    nbrs = vertex_adjacency(len(v), faces)
    W = diffuse(W, nbrs, diffuse_steps)
    W[W < 1e-6] = 0.0
    return W / W.sum(axis=1, keepdims=True)


def part_labels(W: np.ndarray) -> np.ndarray:
    """Argmax of skinning weights grouped into parts (PART_NAMES order)."""
    joint_part = np.full(N_JOINTS, PART_NAMES.index("palm"))
    for name, js in FINGER_JOINTS.items():
        joint_part[list(js)] = PART_NAMES.index(name)
    return joint_part[np.argmax(W, axis=1)]


def _fit_weights(w0: np.ndarray, P: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Non-negative weights near w0 with sum 1 and w @ P == target (active set)."""
    active = w0 > 0
    w = w0.copy()
    for _ in range(20):
        idx = np.flatnonzero(active)
        A = np.vstack([P[idx].T, np.ones(len(idx))])  # 4 x n
        D = w0[idx]
        b = np.concatenate([target, [1.0]])
        M = (A * D) @ A.T
        lam = np.linalg.solve(M, b - A @ w0[idx])
        wi = w0[idx] + D * (A.T @ lam)
        w = np.zeros_like(w0)
        w[idx] = wi
        if (wi >= 0).all():
            return w
        active[idx[wi < 0]] = False
    raise RuntimeError("joint regressor fit failed")


def joint_regressor(skel: Skeleton, v: np.ndarray, band: float = 0.004) -> np.ndarray:
    """[16, V] regressor: ring of vertices around each joint, exact on the template."""
    R = np.zeros((N_JOINTS, len(v)))
    J = skel.joints
    for j in range(N_JOINTS):
        u = skel.bone_direction(j)
        if j == 0:
            radius = 0.045
        elif j == 13:
            radius = 0.030
        else:
            name = [n for n, js in FINGER_JOINTS.items() if j in js][0]
            radius = 1.9 * FINGERS[name].radii[FINGER_JOINTS[name].index(j)]
        rel = v - J[j]
        ax = rel @ u
        rad = np.linalg.norm(rel - ax[:, None] * u, axis=1)
        if j == 13:  # inside the thenar: a ball of vertices around the joint
            w0 = np.exp(-0.5 * (np.linalg.norm(rel, axis=1) / 0.012) ** 2)
            w0[np.linalg.norm(rel, axis=1) > radius] = 0.0
        else:
            w0 = np.exp(-0.5 * (ax / band) ** 2)
            w0[(np.abs(ax) > 2.5 * band) | (rad > radius)] = 0.0
        w0 /= w0.sum()
        R[j] = _fit_weights(w0, v, J[j])
    return R


# -- shape directions --------------------------------------------------------------
def _bone_affine(u: np.ndarray, axial: float, radial: float, p: np.ndarray, p_new: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Affine map scaling along u by `axial`, across by `radial`, moving p to p_new."""
    uu = np.outer(u, u)
    A = axial * uu + radial * (np.eye(3) - uu)
    return A, p_new - A @ p


def _edit_field(skel: Skeleton, v: np.ndarray, W: np.ndarray, palm_A: np.ndarray, palm_c: np.ndarray,
                bone_axial: dict[str, tuple[float, float, float]] | None = None,
                radial: float = 1.0) -> np.ndarray:
    """Displacement of v under a palm affine edit (about palm_c) and per-finger bone scalings."""
    T = np.zeros((N_JOINTS, 3, 4))
    T[0, :, :3] = palm_A
    T[0, :, 3] = palm_c - palm_A @ palm_c
    for name, js in FINGER_JOINTS.items():
        pts = skel.chain_points(name)
        c = (bone_axial or {}).get(name, (1.0, 1.0, 1.0))
        p_new = palm_A @ pts[0] + T[0, :, 3]
        for k in range(3):
            u = pts[k + 1] - pts[k]
            u = u / np.linalg.norm(u)
            A, b = _bone_affine(u, c[k], radial, pts[k], p_new)
            T[js[k], :, :3], T[js[k], :, 3] = A, b
            p_new = p_new + c[k] * (pts[k + 1] - pts[k])
    vh = np.concatenate([v, np.ones((len(v), 1))], axis=1)
    moved = np.einsum("vj,jab,vb->va", W, T, vh)
    return moved - v


def shape_directions(skel: Skeleton, v: np.ndarray, W: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """[V,3,10] orthogonalised shape directions and their names (per unit beta)."""
    J = skel.joints
    I = np.eye(3)
    fields, names = [], []
    # 0 overall size: uniform scaling about the wrist (+5 % per unit)
    fields.append(0.05 * (v - J[0]))
    names.append("size")
    # 1 palm width: spread across z about the middle finger (+6 %)
    fields.append(_edit_field(skel, v, W, np.diag([1.0, 1.0, 1.06]), J[4]))
    names.append("palm_width")
    # 2 finger length: all phalanges +6 %
    allf = {n: (1.06, 1.06, 1.06) for n in FINGER_JOINTS}
    fields.append(_edit_field(skel, v, W, I, J[0], allf))
    names.append("finger_length")
    # 3 thickness: fingers radially +6 %, palm thicker (+6 % in y)
    fields.append(_edit_field(skel, v, W, np.diag([1.0, 1.06, 1.0]), J[0], None, radial=1.06))
    names.append("thickness")
    # 4 palm length: along x about the wrist (+6 %)
    fields.append(_edit_field(skel, v, W, np.diag([1.06, 1.0, 1.0]), J[0]))
    names.append("palm_length")
    for name in ("index", "middle", "ring", "pinky", "thumb"):
        fields.append(_edit_field(skel, v, W, I, J[0], {name: (1.08, 1.08, 1.08)}))
        names.append(f"{name}_length")
    X = np.stack([f.reshape(-1) for f in fields], axis=1)  # [3V, 10]
    norms = np.linalg.norm(X, axis=0)
    Q = np.zeros_like(X)
    for i in range(X.shape[1]):  # Gram-Schmidt, in order of importance
        q = X[:, i].copy()
        for _ in range(2):  # re-orthogonalise: "twice is enough" for round-off
            for k in range(i):
                q -= (Q[:, k] @ q) * Q[:, k]
        Q[:, i] = q / np.linalg.norm(q)
    S = Q * norms[None, :]
    return S.reshape(len(v), 3, -1), names


# -- posing and pose correctives -------------------------------------------------------
def rodrigues(aa: np.ndarray) -> np.ndarray:
    """Axis-angle [..., 3] -> rotation matrices [..., 3, 3]."""
    aa = np.asarray(aa, dtype=np.float64)
    th = np.linalg.norm(aa, axis=-1, keepdims=True)
    k = aa / np.maximum(th, 1e-12)
    K = np.zeros(aa.shape[:-1] + (3, 3))
    K[..., 0, 1], K[..., 0, 2] = -k[..., 2], k[..., 1]
    K[..., 1, 0], K[..., 1, 2] = k[..., 2], -k[..., 0]
    K[..., 2, 0], K[..., 2, 1] = -k[..., 1], k[..., 0]
    s, c = np.sin(th)[..., None], np.cos(th)[..., None]
    return np.eye(3) + s * K + (1 - c) * (K @ K)


def pose_feature(hand_pose: np.ndarray) -> np.ndarray:
    """MANO pose feature: (R_j - I) flattened for joints 1..15 -> [135]."""
    R = rodrigues(np.asarray(hand_pose).reshape(15, 3))
    return (R - np.eye(3)).reshape(-1)


def lbs_pose(v: np.ndarray, W: np.ndarray, Jreg: np.ndarray, parents: np.ndarray,
             hand_pose: np.ndarray, posedirs: np.ndarray | None = None) -> np.ndarray:
    """Numpy linear blend skinning as in smplx (zero global rotation / translation)."""
    J = Jreg @ v  # joints come from the unposed (shaped) template, as in smplx
    if posedirs is not None:
        v = v + np.einsum("vck,k->vc", posedirs, pose_feature(hand_pose))
    R = np.concatenate([np.eye(3)[None], rodrigues(np.asarray(hand_pose).reshape(15, 3))])
    G = np.zeros((N_JOINTS, 4, 4))
    for j in range(N_JOINTS):
        L = np.eye(4)
        L[:3, :3] = R[j]
        L[:3, 3] = J[j] - (J[parents[j]] if parents[j] >= 0 else 0.0)
        G[j] = L if parents[j] < 0 else G[parents[j]] @ L
    A = G.copy()
    A[:, :3, 3] -= np.einsum("jab,jb->ja", G[:, :3, :3], J)
    T = np.einsum("vj,jab->vab", W, A)
    return np.einsum("vab,vb->va", T[:, :3, :3], v) + T[:, :3, 3]


def mesh_volume(v: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume of a closed mesh."""
    a, b, c = v[faces[:, 0]], v[faces[:, 1]], v[faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def vertex_normals(v: np.ndarray, faces: np.ndarray) -> np.ndarray:
    fn = np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])
    vn = np.zeros_like(v)
    for i in range(3):
        np.add.at(vn, faces[:, i], fn)
    return vn / np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-15)


def pose_correctives(skel: Skeleton, v: np.ndarray, faces: np.ndarray, W: np.ndarray,
                     Jreg: np.ndarray, parents: np.ndarray) -> np.ndarray:
    """posedirs [V,3,135]: a volume-preserving bulge around each bent joint.

    For joint j the offset is c_j * g_j(v) * n(v) * (3 - trace R_j) / 2, i.e.
    (1 - cos(theta)) times a smooth bump g_j (Gaussian in the distance to the
    joint, restricted to the skin driven by j and its parent) along the rest
    normal. This is linear in MANO's pose feature (R_j - I) through its
    diagonal. c_j is calibrated so that a 90-degree flexion of joint j alone
    keeps the mesh volume of the rest pose (LBS alone loses it at the crease).
    """
    n = vertex_normals(v, faces)
    P = np.zeros((len(v), 3, 135))
    V0 = mesh_volume(v, faces)
    for name, js in FINGER_JOINTS.items():
        axis = skel.bend_axis(name)
        for k, j in enumerate(js):
            r = FINGERS[name].radii[k]
            sigma = 1.6 * r if j == 13 else 1.0 * r
            g = np.exp(-0.5 * (np.linalg.norm(v - skel.joints[j], axis=1) / sigma) ** 2)
            g *= W[:, j] + W[:, parents[j]]
            field = g[:, None] * n
            pose = np.zeros(45)
            pose[3 * (j - 1):3 * (j - 1) + 3] = axis * (np.pi / 2)

            def dvol(c: float) -> float:
                Pj = np.zeros_like(P)
                for d in (0, 4, 8):
                    Pj[:, :, 9 * (j - 1) + d] = -0.5 * c * field
                return mesh_volume(lbs_pose(v, W, Jreg, parents, pose, Pj), faces) - V0

            c0, c1 = 0.0, 0.001
            f0, f1 = dvol(c0), dvol(c1)
            for _ in range(4):  # secant on the (nearly linear) volume
                if abs(f1 - f0) < 1e-15:
                    break
                c0, c1, f0 = c1, c1 - f1 * (c1 - c0) / (f1 - f0), f1
                f1 = dvol(c1)
            for d in (0, 4, 8):
                P[:, :, 9 * (j - 1) + d] = -0.5 * c1 * field
    return P
