"""Implicit (signed-distance-like) surface of the stand-in hand.

Why: a smooth union of simple primitives around the skeleton gives a closed,
self-intersection-free, genus-0 surface by construction; the mesh is then
extracted from it and every remeshed vertex is projected back onto it.

Primitives (all vectorised over points [N,3], negative inside, metres):
- per finger: a chain of round cones (tapered capsules) with a flattened
  (elliptic) cross-section, ending exactly at the fingertip point, plus a soft
  pad under the distal phalanx;
- palm: a rounded extruded polygon (slab) from the wrist to the knuckles;
- thenar and hypothenar bulges (ellipsoids) and a knuckle ridge;
- a short wrist stump, closed and rounded, just past the wrist joint.
Fingers are smooth-unioned with the palm (`smin`) so the webs are rounded;
fingers are never unioned with each other directly so they stay apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .skeleton import FINGER_JOINTS, FINGERS, PALM_NORMAL, Skeleton


def smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (C1) with blend radius k."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def round_cone(p: np.ndarray, a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
    """Exact SDF of a round cone (spheres ra at a, rb at b and their tangent cone)."""
    ba = b - a
    l2 = float(ba @ ba)
    rr = ra - rb
    a2 = l2 - rr * rr
    il2 = 1.0 / l2
    pa = p - a
    y = pa @ ba
    z = y - l2
    xv = pa * l2 - y[:, None] * ba
    x2 = np.einsum("ij,ij->i", xv, xv)
    y2 = y * y * l2
    z2 = z * z * l2
    k = np.sign(rr) * rr * rr * x2
    out = (np.sqrt(x2 * a2 * il2) + y * rr) * il2 - ra
    m1 = np.sign(z) * a2 * z2 > k
    m2 = np.sign(y) * a2 * y2 < k
    out = np.where(m1, np.sqrt(x2 + z2) * il2 - rb, out)
    out = np.where(m2 & ~m1, np.sqrt(x2 + y2) * il2 - ra, out)
    return out


def ellipsoid(p: np.ndarray, c: np.ndarray, axes: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Approximate SDF of an ellipsoid (centre c, rows of `axes` = unit axes)."""
    q = (p - c) @ axes.T
    k0 = np.linalg.norm(q / radii, axis=1)
    k1 = np.linalg.norm(q / (radii * radii), axis=1)
    return np.where(k1 > 1e-12, k0 * (k0 - 1.0) / np.maximum(k1, 1e-12), -radii.min())


def _frame(d: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Rows: d, the component of `up` orthogonal to d, their cross product."""
    d = d / np.linalg.norm(d)
    n = up - (up @ d) * d
    n /= np.linalg.norm(n)
    return np.stack([d, n, np.cross(d, n)])


def polygon_sdf_2d(q: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Signed distance to a closed 2-D polygon (negative inside), points q [N,2]."""
    d = np.full(len(q), np.inf)
    s = np.ones(len(q))
    n = len(poly)
    for i in range(n):
        a, b = poly[i - 1], poly[i]
        e = b - a
        w = q - a
        t = np.clip((w @ e) / (e @ e), 0.0, 1.0)
        dd = w - t[:, None] * e
        d = np.minimum(d, np.einsum("ij,ij->i", dd, dd))
        c1 = q[:, 1] >= a[1]
        c2 = q[:, 1] < b[1]
        c3 = e[0] * w[:, 1] > e[1] * w[:, 0]
        flip = (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
        s = np.where(flip, -s, s)
    return s * np.sqrt(d)


@dataclass
class HandShape:
    """The implicit hand: skeleton plus the few shape constants of palm and blends."""

    skel: Skeleton
    palm_half_thickness: float = 0.0056
    palm_round: float = 0.0095
    web_blend: float = 0.0075
    pad_size: float = 0.72

    # -- pieces ---------------------------------------------------------------
    def finger_segments(self, name: str) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
        """Round-cone segments (a, b, ra, rb) of a finger; the last ends at the tip."""
        spec = FINGERS[name]
        pts = self.skel.chain_points(name)
        r = spec.radii
        segs = []
        for k in range(3):
            a, b = pts[k], pts[k + 1]
            rb = r[k + 1]
            if k == 2:
                d = (b - a) / np.linalg.norm(b - a)
                b = b - rb * d  # the surface reaches the fingertip point exactly
            segs.append((a, b, r[k], rb))
        return segs

    def finger_sdf(self, p: np.ndarray, name: str) -> np.ndarray:
        """One finger: flattened round cones + distal pad."""
        spec = FINGERS[name]
        out = None
        for a, b, ra, rb in self.finger_segments(name):
            fr = _frame(b - a, PALM_NORMAL)
            q = p - a
            qn = q @ fr[1]
            # squash the palmar-dorsal coordinate: elliptic cross-section
            pq = p + ((1.0 / spec.flatten) - 1.0) * qn[:, None] * fr[1][None]
            d = round_cone(pq, a, b, ra, rb) * (0.5 * (1.0 + spec.flatten))
            out = d if out is None else smin(out, d, 0.002)
        # pad: soft bulge on the palmar side of the distal phalanx
        pts = self.skel.chain_points(name)
        a, b = pts[2], pts[3]
        d = b - a
        L = np.linalg.norm(d)
        fr = _frame(d, PALM_NORMAL)
        rt = spec.radii[2]
        c = a + 0.55 * d + fr[1] * (0.30 * rt)
        pad = ellipsoid(p, c, fr, np.array([0.42 * L, self.pad_size * rt, 0.85 * rt]))
        out = smin(out, pad, 0.004)
        return out

    def palm_polygon(self) -> np.ndarray:
        """Outline of the palm in the (x, z) plane (counter-clockwise)."""
        J = self.skel.joints
        ri = FINGERS["index"].radii[0]
        rp = FINGERS["pinky"].radii[0]
        idx, pky = J[1], J[7]
        return np.array([
            [0.100, -0.026],                       # wrist, ulnar side
            [0.062, -0.039],                       # hypothenar edge
            [pky[0] + 0.003, pky[2] - 0.35 * rp],  # below the pinky knuckle
            [J[10][0] - 0.001, J[10][2]],          # ring knuckle
            [J[4][0] - 0.002, J[4][2]],            # middle knuckle
            [idx[0] - 0.001, idx[2] + 0.25 * ri],  # index knuckle
            [0.040, 0.030],                        # radial edge (thenar web)
            [0.100, 0.022],                        # wrist, radial side
        ])

    def palm_sdf(self, p: np.ndarray) -> np.ndarray:
        """Rounded slab with a slightly domed back and a hollow palm."""
        poly = self.palm_polygon()
        q = p[:, [0, 2]]
        # offset by the rounding radius so the rounded outer edge lies on the outline
        d2 = polygon_sdf_2d(q, poly) + self.palm_round
        yc = 0.0030
        # back of the hand is domed across z: thicker along the middle metacarpal
        zc = 0.003
        dome = 0.0030 * np.exp(-((p[:, 2] - zc) / 0.028) ** 2)
        h = self.palm_half_thickness + dome
        dy = np.abs(p[:, 1] - yc) - h
        outside = np.sqrt(np.maximum(d2, 0.0) ** 2 + np.maximum(dy, 0.0) ** 2)
        inside = np.minimum(np.maximum(d2, dy), 0.0)
        return outside + inside - self.palm_round

    def wrist_sdf(self, p: np.ndarray) -> np.ndarray:
        """Short elliptic stump past the wrist joint, closed by a rounded cap."""
        J0 = self.skel.joints[0]
        a = np.array([0.075, J0[1], J0[2] - 0.002])
        b = np.array([0.098, J0[1], J0[2] - 0.002])
        pq = p.copy()
        pq[:, 1] = a[1] + (p[:, 1] - a[1]) / 0.68
        return round_cone(pq, a, b, 0.0285, 0.028) * 0.84

    def thenar_sdf(self, p: np.ndarray) -> np.ndarray:
        """Ball of the thumb: ellipsoid along the thumb metacarpal, palm side."""
        J = self.skel.joints
        c = 0.45 * J[13] + 0.55 * J[0] + np.array([-0.010, -0.006, -0.004])
        axes = _frame(np.array([-0.75, 0.0, 0.66]), PALM_NORMAL)
        return ellipsoid(p, c, axes, np.array([0.032, 0.015, 0.019]))

    def hypothenar_sdf(self, p: np.ndarray) -> np.ndarray:
        """Ulnar heel of the palm."""
        axes = _frame(np.array([-1.0, 0.0, -0.12]), PALM_NORMAL)
        c = np.array([0.064, -0.004, -0.024])
        return ellipsoid(p, c, axes, np.array([0.030, 0.011, 0.013]))

    # -- whole ----------------------------------------------------------------
    def sdf(self, p: np.ndarray) -> np.ndarray:
        """Signed distance (approximate, ~1-Lipschitz) of the hand surface."""
        p = np.asarray(p, dtype=np.float64)
        body = self.palm_sdf(p)
        body = smin(body, self.wrist_sdf(p), 0.012)
        body = smin(body, self.hypothenar_sdf(p), 0.008)
        body = smin(body, self.thenar_sdf(p), 0.010)
        out = body
        for name in ("index", "middle", "ring", "pinky"):
            out = smin(out, smin(body, self.finger_sdf(p, name), self.web_blend), 0.0)
        out = smin(out, smin(body, self.finger_sdf(p, "thumb"), 0.012), 0.0)
        return out

    def part_sdfs(self, p: np.ndarray) -> dict[str, np.ndarray]:
        """Distances to each part's own primitives (for skinning membership)."""
        p = np.asarray(p, dtype=np.float64)
        body = np.minimum(np.minimum(self.palm_sdf(p), self.wrist_sdf(p)), self.hypothenar_sdf(p))
        out = {name: self.finger_sdf(p, name) for name in FINGER_JOINTS}
        out["palm"] = np.minimum(body, self.thenar_sdf(p))
        return out

    def gradient(self, p: np.ndarray, eps: float = 1e-5) -> np.ndarray:
        """Central-difference gradient of `sdf`."""
        g = np.zeros_like(p)
        for i in range(3):
            e = np.zeros(3)
            e[i] = eps
            g[:, i] = (self.sdf(p + e) - self.sdf(p - e)) / (2 * eps)
        return g

    def project(self, p: np.ndarray, iters: int = 4) -> np.ndarray:
        """Newton-project points onto the zero level set."""
        p = np.array(p, dtype=np.float64)
        for _ in range(iters):
            f = self.sdf(p)
            g = self.gradient(p)
            g2 = np.maximum(np.einsum("ij,ij->i", g, g), 1e-12)
            p = p - (f / g2)[:, None] * g
        return p
