"""The training state a run resumes from: tensors (modules, Adam moments, RNG) as one safetensors file
plus ``state.json``, the commit point written atomically after them. Nothing is ever unpickled."""
from __future__ import annotations

import json
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from dvqvae_model.hand.hand_model import HandModel
from dvqvae_model.io import atomic_write_bytes, sha256_file

STATE_FORMAT = "dvqvae-train-state"
STATE_VERSION = 1
STATE_JSON = "state.json"


# =============================================================================== training state


def _hand_prefixes(module: nn.Module) -> tuple[str, ...]:
    return tuple(name + "." for name, m in module.named_modules() if name and isinstance(m, HandModel))


def module_tensors(module: nn.Module) -> dict[str, Tensor]:
    """All parameters and buffers (persistent or not) except the hand model's: the full training state."""
    skip = _hand_prefixes(module)
    out: dict[str, Tensor] = {}
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if not name.startswith(skip):
            out[name] = t.detach().to("cpu").contiguous().clone()
    return out


def load_module_tensors(module: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Inverse of :func:`module_tensors`; refuses missing, unexpected or mis-shaped entries."""
    skip = _hand_prefixes(module)
    own = {n: t for n, t in list(module.named_parameters()) + list(module.named_buffers()) if not n.startswith(skip)}
    missing, unexpected = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(f"training state does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for name, t in own.items():
            src = tensors[name]
            if src.shape != t.shape:
                raise ValueError(f"training state: {name} has shape {tuple(src.shape)}, model {tuple(t.shape)}")
            t.copy_(src.to(t.device, t.dtype))


def _optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Adam state -> (tensors ``optim.{param}.{key}``, JSON with param groups and scalar entries)."""
    sd = opt.state_dict()
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"optim.{pid}.{key}"] = v.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[key] = v
    groups = json.loads(json.dumps(sd["param_groups"], default=list))
    return tensors, {"param_groups": groups, "scalars": scalars}


def _load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = t
    for pid, entries in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(entries)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


def _rng_state() -> tuple[dict[str, Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))
    py = random.getstate()
    meta = {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": [py[0], list(py[1]), py[2]]}
    return tensors, meta


def _set_rng_state(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    v, st, gauss = meta["python"]
    random.setstate((v, tuple(st), gauss))


def save_training_state(state_dir: Path, modules: dict[str, nn.Module], optimizer: torch.optim.Optimizer,
                        meta: dict[str, Any]) -> Path:
    """Write a training state: ``state-<step>-<id>.safetensors`` first, then ``state.json`` (atomic).

    ``state.json`` names the tensor file and its sha256; it is replaced only after the tensors are on
    disk, so a crash at any point leaves the previous complete state in force. Older tensor files
    are removed afterwards.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    for name, module in modules.items():
        tensors.update({f"module.{name}.{k}": v for k, v in module_tensors(module).items()})
    opt_tensors, opt_meta = _optimizer_state(optimizer)
    rng_tensors, rng_meta = _rng_state()
    tensors.update(opt_tensors)
    tensors.update(rng_tensors)
    fname = f"state-{int(meta.get('step', 0)):09d}-{uuid.uuid4().hex[:8]}.safetensors"
    tmp = state_dir / (fname + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": STATE_FORMAT})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, state_dir / fname)
    doc = dict(meta, format=STATE_FORMAT, format_version=STATE_VERSION, tensors_file=fname,
               sha256=sha256_file(state_dir / fname), optimizer=opt_meta, rng=rng_meta,
               saved_unix=time.time())
    atomic_write_bytes(state_dir / STATE_JSON, json.dumps(doc, indent=1, sort_keys=True).encode())
    for p in state_dir.iterdir():  # superseded or half-written tensor files
        if p.name != fname and p.name.startswith("state-"):
            p.unlink(missing_ok=True)
    return state_dir / STATE_JSON


def read_training_state(state_dir: Path) -> Optional[dict[str, Any]]:
    """``state.json`` of a state directory, or None when there is none."""
    path = Path(state_dir) / STATE_JSON
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    if meta.get("format") != STATE_FORMAT or meta.get("format_version") != STATE_VERSION:
        raise ValueError(f"{path} is not a version-{STATE_VERSION} {STATE_FORMAT} file")
    return meta


def load_training_state(state_dir: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(tensors, meta) of a training state, checksum verified; safetensors + JSON only."""
    meta = read_training_state(state_dir)
    if meta is None:
        raise FileNotFoundError(f"no training state in {state_dir}")
    path = Path(state_dir) / meta["tensors_file"]
    if not path.is_file() or sha256_file(path) != meta["sha256"]:
        raise ValueError(f"training state {path} is missing or corrupted (sha256 mismatch)")
    return load_file(str(path)), meta


def restore_training_state(tensors: dict[str, Tensor], meta: dict[str, Any], modules: dict[str, nn.Module],
                           optimizer: torch.optim.Optimizer) -> None:
    for name, module in modules.items():
        prefix = f"module.{name}."
        load_module_tensors(module, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    _load_optimizer_state(optimizer, tensors, meta["optimizer"])
    _set_rng_state(tensors, meta["rng"])


