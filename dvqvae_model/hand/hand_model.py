"""Differentiable, batched MANO hand layer (smplx) with our metadata and 21 keypoints.

``load_hand_model("standin")`` uses the openly generated stand-in shipped in
``dvqvae_model/assets``; ``load_hand_model("/path/to/MANO_RIGHT.pkl")`` (or its folder) uses the
licensed MANO model. Either file is read with our restricted unpickler
(:mod:`dvqvae_model.hand.mano_pickle`) and handed to ``smplx.MANO`` through ``data_struct`` so smplx
never unpickles anything itself.

The forward pass calls smplx's own ``lbs`` on the buffers smplx.MANO built, but with the
kinematic tree as Python ints (:class:`_StaticParents`), so the joint chain unrolls statically
and the layer can be traced by ``torch.export`` / ONNX (smplx's module indexes a Python list
with tensor elements there, which export rejects). It equals ``smplx.MANO.forward``.

All buffers of the layer are non-persistent: a network that owns a HandModel does not copy MANO
data into its checkpoints (the MANO licence forbids redistributing it) and can be re-attached to
whichever hand model the user has.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from .hand_metadata import META_VERSION, HandMetadata, load_or_compute_metadata, model_fingerprint
from .mano_pickle import MANOFormatError, cache_dir, load_mano_arrays

__all__ = [
    "PARAM_DIM",
    "SLICE_BETAS",
    "SLICE_GLOBAL_ORIENT",
    "SLICE_HAND_POSE",
    "SLICE_TRANSL",
    "MANO_JOINT_NAMES",
    "FINGER_JOINT_NAMES",
    "KEYPOINT_NAMES",
    "KEYPOINT_SOURCE",
    "STANDIN_ASSET",
    "STANDIN_META",
    "HandOutput",
    "HandModel",
    "load_hand_model",
    "resolve_hand_path",
    "regenerate_standin_metadata",
]

PARAM_DIM = 61
SLICE_BETAS = slice(0, 10)
SLICE_GLOBAL_ORIENT = slice(10, 13)
SLICE_HAND_POSE = slice(13, 58)
SLICE_TRANSL = slice(58, 61)

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets"
STANDIN_ASSET = ASSET_DIR / "standin_right.pkl"
STANDIN_META = ASSET_DIR / "standin_right_meta.npz"

# MANO joint order: 0 wrist, 1-3 index, 4-6 middle, 7-9 pinky, 10-12 ring, 13-15 thumb.
MANO_JOINT_NAMES: tuple[str, ...] = (
    "wrist",
    "index_mcp", "index_pip", "index_dip",
    "middle_mcp", "middle_pip", "middle_dip",
    "pinky_mcp", "pinky_pip", "pinky_dip",
    "ring_mcp", "ring_pip", "ring_dip",
    "thumb_cmc", "thumb_mcp", "thumb_ip",
)  # fmt: skip
# The 15 articulated joints, in the order of the 45 hand-pose values (3 per joint).
FINGER_JOINT_NAMES: tuple[str, ...] = MANO_JOINT_NAMES[1:]

# 21 keypoints: wrist, then thumb, index, middle, ring, pinky, each knuckle -> tip.
# KEYPOINT_SOURCE indexes the concatenation [16 MANO joints, 5 fingertip vertices (thumb..pinky)].
KEYPOINT_SOURCE: tuple[int, ...] = (
    0,
    13, 14, 15, 16,
    1, 2, 3, 17,
    4, 5, 6, 18,
    10, 11, 12, 19,
    7, 8, 9, 20,
)  # fmt: skip
KEYPOINT_NAMES: tuple[str, ...] = tuple(
    (MANO_JOINT_NAMES[i] if i < 16 else f"{('thumb', 'index', 'middle', 'ring', 'pinky')[i - 16]}_tip")
    for i in KEYPOINT_SOURCE
)


class _StaticParents(list):
    """Kinematic tree as a list of Python ints with a ``shape`` (what smplx.lbs reads from it)."""

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)


@dataclass
class HandOutput:
    """Posed hand: vertices [B,778,3], joints [B,16,3] (MANO order), keypoints [B,21,3]; metres."""

    vertices: Tensor
    joints: Tensor
    keypoints: Tensor


class HandModel(nn.Module):
    """smplx.MANO (axis-angle, flat hand mean, no PCA) plus metadata, faces and keypoints."""

    faces: Tensor
    sealed_faces: Tensor
    fingertip_ids: Tensor
    part_ids: Tensor
    contact_ids: Tensor
    keypoint_source: Tensor

    def __init__(self, arrays: Mapping[str, np.ndarray], meta: HandMetadata, name: str = "hand") -> None:
        super().__init__()
        import smplx
        from smplx.utils import Struct

        self.name = name
        self.meta = meta
        self.fingerprint = meta.fingerprint
        self.num_vertices = int(len(arrays["v_template"]))
        # smplx prints a warning about 10 shape coefficients to stdout; keep stdout clean (CLI JSON).
        with contextlib.redirect_stdout(io.StringIO()):
            self.mano = smplx.MANO(
                model_path=name,
                data_struct=Struct(**{k: np.asarray(v) for k, v in arrays.items()}),
                use_pca=False,
                flat_hand_mean=True,
                num_pca_comps=45,
                num_betas=10,
                create_global_orient=False,
                create_hand_pose=False,
                create_betas=False,
                create_transl=False,
                create_body_pose=False,
                batch_size=1,
            )
        if bool(self.mano.pose_mean.abs().max() > 0):
            raise RuntimeError("smplx.MANO was expected to use a flat hand mean")
        parents = [int(x) for x in self.mano.parents.tolist()]
        self._parents = _StaticParents([-1] + parents[1:])
        self.register_buffer("faces", torch.as_tensor(np.asarray(arrays["f"]), dtype=torch.long))
        self.register_buffer("sealed_faces", torch.as_tensor(meta.sealed_faces, dtype=torch.long))
        self.register_buffer("fingertip_ids", torch.as_tensor(meta.fingertip_ids, dtype=torch.long))
        self.register_buffer("part_ids", torch.as_tensor(meta.part_ids, dtype=torch.long))
        self.register_buffer("contact_ids", torch.as_tensor(meta.contact_ids, dtype=torch.long))
        self.register_buffer("keypoint_source", torch.as_tensor(KEYPOINT_SOURCE, dtype=torch.long))
        for module in self.modules():  # keep (possibly licensed) model data out of state_dicts
            module._non_persistent_buffers_set.update(module._buffers.keys())

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def forward(self, betas: Tensor, global_orient: Tensor, hand_pose: Tensor, transl: Tensor) -> HandOutput:
        """Pose the hand: betas [B,10], global_orient [B,3], hand_pose [B,45], transl [B,3]."""
        B = hand_pose.shape[0]
        checks = (("betas", betas, 10), ("global_orient", global_orient, 3), ("hand_pose", hand_pose, 45), ("transl", transl, 3))
        for nm, t, d in checks:
            if t.dim() != 2 or t.shape[1] != d or t.shape[0] != B:
                raise ValueError(f"{nm} must be [B={B},{d}], got {list(t.shape)}")
        from smplx.lbs import lbs

        m = self.mano
        full_pose = torch.cat([global_orient, hand_pose], dim=1)  # flat hand mean: nothing to add
        verts, joints = lbs(
            betas, full_pose, m.v_template, m.shapedirs, m.posedirs, m.J_regressor, self._parents, m.lbs_weights
        )
        verts = verts + transl.unsqueeze(1)
        joints = joints + transl.unsqueeze(1)
        tips = verts[:, self.fingertip_ids]
        keypoints = torch.cat([joints, tips], dim=1)[:, self.keypoint_source]
        return HandOutput(vertices=verts, joints=joints, keypoints=keypoints)

    def from_params(self, params: Tensor) -> HandOutput:
        """Pose from the 61-d layout [betas 10 | global_orient 3 | hand_pose 45 | transl 3]."""
        if params.dim() != 2 or params.shape[1] != PARAM_DIM:
            raise ValueError(f"params must be [B,{PARAM_DIM}], got {list(params.shape)}")
        return self.forward(
            params[:, SLICE_BETAS], params[:, SLICE_GLOBAL_ORIENT], params[:, SLICE_HAND_POSE], params[:, SLICE_TRANSL]
        )

    def rest(self, batch: int = 1) -> HandOutput:
        """The flat hand with mean shape at the origin of the model frame."""
        p = self.faces.new_zeros((batch, PARAM_DIM), dtype=self.mano.v_template.dtype)
        return self.from_params(p)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, vertices={self.num_vertices}, faces={self.num_faces}, fingerprint={self.fingerprint}"


def resolve_hand_path(spec: str) -> Path:
    """Path of the pickle named by ``spec`` ("standin", a MANO_RIGHT.pkl path or its folder)."""
    if spec == "standin":
        if not STANDIN_ASSET.is_file():
            raise FileNotFoundError(
                f"the bundled stand-in hand asset is missing: {STANDIN_ASSET} "
                "(reinstall dvqvae_ros or regenerate it with tools/standin_hand)"
            )
        return STANDIN_ASSET
    p = Path(spec).expanduser()
    if p.is_dir():
        p = p / "MANO_RIGHT.pkl"
    if not p.is_file():
        raise FileNotFoundError(
            f"hand model '{spec}' not found (looked for {p}); pass 'standin' or the path of MANO_RIGHT.pkl "
            "from https://mano.is.tue.mpg.de"
        )
    if "left" in p.name.lower():
        raise MANOFormatError(f"{p.name}: only the right hand (MANO_RIGHT.pkl) is supported")
    return p


def _meta_store(spec: str, arrays: Mapping[str, np.ndarray]) -> Path:
    if spec == "standin" and os.access(ASSET_DIR, os.W_OK):
        return STANDIN_META
    if spec == "standin" and STANDIN_META.is_file():
        return STANDIN_META  # read-only install: use the shipped file (recomputed in memory if stale)
    return cache_dir() / f"hand_meta_v{META_VERSION}_{model_fingerprint(arrays)}.npz"


def load_hand_model(spec: str = "standin") -> HandModel:
    """Load the stand-in ("standin") or a user's MANO_RIGHT.pkl as a :class:`HandModel`."""
    path = resolve_hand_path(spec)
    arrays = load_mano_arrays(path)
    meta = load_or_compute_metadata(arrays, _meta_store(spec, arrays))
    return HandModel(arrays, meta, name="standin" if spec == "standin" else str(path))


def regenerate_standin_metadata() -> HandMetadata:
    """Recompute and store ``assets/standin_right_meta.npz`` if the asset's fingerprint changed."""
    arrays = load_mano_arrays(resolve_hand_path("standin"))
    return load_or_compute_metadata(arrays, STANDIN_META)
