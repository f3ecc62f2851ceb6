"""Rigid motions of posed hands: the MANO parameters of a hand moved by x -> R x + t.

MANO rotates about the rest wrist joint, not the origin, so moving a grasp is not just rotating
its global orientation and translation; the data augmentation and the generator's principal-frame
round trip both need the exact form.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.spatial.transform import Rotation

__all__ = ["PARAM_DIM", "WristJoint", "transform_hand_params"]

PARAM_DIM = 61
S_ORIENT, S_TRANSL = slice(10, 13), slice(58, 61)


class WristJoint:
    """Rest position of MANO joint 0 as a function of the shape: j0(betas) = a + B betas.

    Joint 0 is regressed from the shaped template before any posing, so it is affine
    in betas; ``a`` and ``B`` are read off the hand model once (11 forward passes).
    """

    def __init__(self, hand: Any):
        with torch.no_grad():
            kw = dict(dtype=hand.mano.v_template.dtype, device=hand.mano.v_template.device)
            betas = torch.cat([torch.zeros(1, 10, **kw), torch.eye(10, **kw)])
            z3 = torch.zeros(11, 3, **kw)
            out = hand(betas, z3, torch.zeros(11, 45, **kw), z3)
            j0 = out.joints[:, 0].double().cpu().numpy()
        self.a = j0[0]
        self.B = (j0[1:] - j0[0]).T  # [3,10]

    def __call__(self, betas: np.ndarray) -> np.ndarray:
        return self.a + np.asarray(betas, dtype=np.float64) @ self.B.T


def transform_hand_params(params: np.ndarray, rotation: np.ndarray, translation: np.ndarray, wrist: np.ndarray) -> np.ndarray:
    """Parameters of the hand moved by x -> R x + t.

    MANO poses v = R_g (v_local - j0) + j0 + transl (global orientation about the rest
    wrist joint j0, then translation). Then R v + t = (R R_g)(v_local - j0) + j0 + transl'
    with transl' = R (j0 + transl) + t - j0.
    params [...,61], rotation [3,3], translation [3], wrist j0 [...,3] (see WristJoint).
    """
    p = np.array(params, dtype=np.float64, copy=True)
    R = np.asarray(rotation, dtype=np.float64)
    flat = p.reshape(-1, PARAM_DIM)
    j0 = np.asarray(wrist, dtype=np.float64).reshape(-1, 3)
    Rg = Rotation.from_rotvec(flat[:, S_ORIENT]).as_matrix()
    flat[:, S_ORIENT] = Rotation.from_matrix(R @ Rg).as_rotvec()
    flat[:, S_TRANSL] = (j0 + flat[:, S_TRANSL]) @ R.T + np.asarray(translation, dtype=np.float64) - j0
    return flat.reshape(p.shape)
