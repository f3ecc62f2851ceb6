"""Post-hoc grasp labels: read off the final contacts, on hand-built fixtures."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dvqvae_model.hand.hand_metadata import vertex_normals
from dvqvae_training.synthesis.grasp_labels import GRASP_LABELS, GraspLabeller, LabelFeatures, label_from_features
from dvqvae_training.synthesis.grasp_types import GRASP_TYPES, blend_local_degrees
from dvqvae_training.synthesis.synthesizer import HandPrior


@pytest.fixture(scope="module")
def prior(hand):
    return HandPrior(hand)


@pytest.fixture(scope="module")
def labeller(hand, prior):
    return GraspLabeller(hand, regions=prior.regions)


def _posed(hand, prior, type_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Params [61] and vertices [V,3] of a grasp type's closed pre-shape (identity orientation)."""
    theta = torch.as_tensor(prior.local_pose(blend_local_degrees(GRASP_TYPES[type_name], 0.0)[None]), dtype=torch.float32)
    pose = prior.hand_pose(theta)
    params = torch.zeros(1, 61)
    params[:, 13:58] = pose
    with torch.no_grad():
        v = hand.from_params(params).vertices[0].numpy()
    return params[0].numpy(), v


def _skin(hand, vertices: np.ndarray, ids: np.ndarray, gap: float = 0.001) -> tuple[np.ndarray, np.ndarray]:
    """An object surface hugging the given hand vertices: points 1 mm off the skin, normals facing the hand."""
    n = vertex_normals(vertices.astype(np.float64), hand.faces.numpy().astype(np.int64))[ids]
    return vertices[ids] + gap * n, -n


def _label(labeller, params, pts, nrm) -> str:
    return GRASP_LABELS[int(labeller.label(params[None], pts, nrm)[0])]


def _ball_caps(vertices: np.ndarray, a_ids: np.ndarray, b_ids: np.ndarray, cap: float = 0.008):
    """A ball held between two pads, seen near the two contacts: its surface points within ``cap``
    of either contact, with outward normals (what a depth view of a pinched object would give)."""
    va, vb = vertices[a_ids], vertices[b_ids]
    pa = va[np.linalg.norm(va - vb.mean(0), axis=1).argmin()]
    pb = vb[np.linalg.norm(vb - pa, axis=1).argmin()]
    centre, radius = (pa + pb) / 2, np.linalg.norm(pa - pb) / 2
    d = np.random.default_rng(0).normal(size=(20000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    pts = centre + radius * d
    keep = (np.linalg.norm(pts - pa, axis=1) < cap) | (np.linalg.norm(pts - pb, axis=1) < cap)
    return pts[keep], d[keep]


def test_pinch_is_a_pinch(hand, prior, labeller):
    params, v = _posed(hand, prior, "pinch")
    r = prior.regions.ids
    pts, nrm = _ball_caps(v, r["thumb.distal"], r["index.distal"])
    f = labeller.features(v[None], pts, nrm)[0]
    assert (f.thumb, f.fingers, f.palm, f.opposed, f.index_pad) == (True, 1, False, True, True)
    assert _label(labeller, params, pts, nrm) == "pinch"
    # the same ball between the thumb and the middle finger as well: three digits, a tripod
    pts3, nrm3 = _ball_caps(v, r["thumb.distal"], r["middle.distal"])
    both = np.concatenate([pts, pts3]), np.concatenate([nrm, nrm3])
    f3 = labeller.features(v[None], *both)[0]
    assert f3.fingers == 2 and f3.opposed and not f3.palm
    assert _label(labeller, params, *both) == "tripod"


def test_power_grasp_has_palm_contact(hand, prior, labeller):
    params, v = _posed(hand, prior, "power")
    r = prior.regions.ids
    regions = ["palm", "thumb.distal"] + [f"{f}.{s}" for f in ("index", "middle", "ring", "pinky") for s in ("proximal", "distal")]
    pts, nrm = _skin(hand, v, np.concatenate([r[k] for k in regions]))
    f = labeller.features(v[None], pts, nrm)[0]
    assert f.palm and f.thumb and f.fingers == 4 and f.wrap == 4
    assert _label(labeller, params, pts, nrm) == "power"


def _disc(centre: np.ndarray, normal: np.ndarray, radius: float, gap: float = 0.001, n: int = 3000):
    """A flat object surface: points on a disc ``gap`` in front of ``centre`` along ``normal`` (the
    direction from the object to the hand), with that normal."""
    normal = normal / np.linalg.norm(normal)
    t1 = np.cross(normal, [1.0, 0.0, 0.0] if abs(normal[0]) < 0.9 else [0.0, 1.0, 0.0])
    t1 /= np.linalg.norm(t1)
    t2 = np.cross(normal, t1)
    rng = np.random.default_rng(0)
    r, a = radius * np.sqrt(rng.uniform(size=n)), rng.uniform(0, 2 * np.pi, size=n)
    pts = centre - gap * normal + r[:, None] * (np.cos(a)[:, None] * t1 + np.sin(a)[:, None] * t2)
    return pts, np.repeat(normal[None], n, axis=0)


def _rest(hand) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        v = hand.rest().vertices[0].numpy()
    return v, vertex_normals(v.astype(np.float64), hand.faces.numpy().astype(np.int64))


def test_object_resting_on_the_palm_is_support(hand, prior, labeller):
    v, n = _rest(hand)
    palm = prior.regions.ids["palm"]
    pts, nrm = _disc(v[palm].mean(0), n[palm].mean(0), radius=0.02)
    f = labeller.features(v[None], pts, nrm)[0]
    assert f.palm and f.fingers == 0
    assert _label(labeller, np.zeros(61, np.float32), pts, nrm) == "support"


def test_thumb_without_opposition_is_not_a_precision_grasp(hand, prior, labeller):
    # the flat hand on a flat object: thumb and index pads touch it from the same side, so they
    # do not hold it between them
    v, n = _rest(hand)
    r = prior.regions.ids
    parts = [_disc(v[r[k]].mean(0), n[r[k]].mean(0), radius=0.004) for k in ("thumb.distal", "index.distal")]
    pts, nrm = np.concatenate([p for p, _ in parts]), np.concatenate([q for _, q in parts])
    f = labeller.features(v[None], pts, nrm)[0]
    assert f.thumb and f.fingers == 1 and not f.palm and not f.opposed
    assert _label(labeller, np.zeros(61, np.float32), pts, nrm) == "other"


def test_far_object_touches_nothing(hand, prior, labeller):
    params, v = _posed(hand, prior, "power")
    pts = np.random.default_rng(0).normal(size=(500, 3)) * 0.01 + np.array([0.5, 0.5, 0.5])
    nrm = pts - pts.mean(0)
    nrm /= np.linalg.norm(nrm, axis=1, keepdims=True)
    f = labeller.features(v[None], pts, nrm)[0]
    assert (f.thumb, f.fingers, f.palm) == (False, 0, False)
    assert _label(labeller, params, pts, nrm) == "other"


@pytest.mark.parametrize(
    "features,label",
    [
        (LabelFeatures(True, 4, True, 4, False, True, True), "power"),
        (LabelFeatures(True, 3, True, 0, False, True, True), "spherical"),
        (LabelFeatures(False, 4, False, 0, False, True, False), "hook"),
        (LabelFeatures(True, 2, False, 0, True, False, True), "lateral"),
        (LabelFeatures(True, 4, False, 0, False, True, True), "disk"),
        (LabelFeatures(True, 0, True, 0, False, False, False), "support"),
    ],
)
def test_rule_table(features, label):
    assert label_from_features(features) == label


def test_labels_survive_pack_and_unpack(tmp_path, hand, prior, labeller):
    """A dataset written with labels keeps them through the compact form."""
    from dvqvae_training.dataset import compact
    from dvqvae_training.dataset.dataset_format import DatasetReader, DatasetWriter

    params, v = _posed(hand, prior, "pinch")
    r = prior.regions.ids
    pts, nrm = _skin(hand, v, np.concatenate([r["thumb.distal"], r["index.distal"]]))
    rng = np.random.default_rng(0)
    sel = rng.choice(len(pts), 64)
    N = 64
    root = tmp_path / "ds"
    with DatasetWriter(root, generator_version="t", hand_fingerprint=hand.fingerprint, num_points=N,
                       grasp_labels=GRASP_LABELS) as w:  # fmt: skip
        w.add_object("a", pts[sel], nrm[sel], {"synth": {"seed": 0}}, np.stack([params, params]), labels=["pinch", "other"], split="train")
    assert DatasetReader(root).object("a")["grasp_label"].tolist() == [GRASP_LABELS.index("pinch"), GRASP_LABELS.index("other")]
    m = compact.pack(root, tmp_path / "c")
    assert m["dataset"]["grasp_labels"] == list(GRASP_LABELS)
    _, arrays = compact.read_compact(tmp_path / "c")
    assert arrays["grasp_label"].tolist() == [GRASP_LABELS.index("pinch"), GRASP_LABELS.index("other")]
