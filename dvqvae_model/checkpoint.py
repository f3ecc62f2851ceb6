"""Safe checkpoints: tensors in safetensors, everything else in JSON, written atomically.

Layout of a checkpoint directory::

    ckpt/
      model.safetensors    # generator weights (hand-model buffers excluded)
      prior.safetensors    # optional: autoregressive prior weights
      config.json          # kind, configs, hand fingerprint, data info, versions, sha256 of files

Why this shape: loading never unpickles anything (``safetensors.torch.load_file`` and
``json.load`` only), a flipped byte in a weights file is caught by its sha256, and a
checkpoint trained for one hand model is refused with another. The directory is built in a
temporary sibling and renamed into place, so a crash mid-write never leaves something that
looks like a complete checkpoint.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from dvqvae_model.io import atomic_directory, sha256_file, unknown_config_keys
from safetensors.torch import load_file, save_file
from torch import nn

from dvqvae_model.nets.prior import GatedPixelCNNPrior, PriorConfig

FORMAT_NAME = "dvqvae_ros.checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
PRIOR_FILE = "prior.safetensors"
CONFIG_FILE = "config.json"
# sha256 of config.json's canonical JSON (without this key); it covers the weights too, whose sha256
# config.json lists. Optional: checkpoints written before it load, checked against the bounds below.
CONFIG_HASH_KEY = "config_sha256"
MAX_CONFIG_INT = 1 << 20  # no size in a model/prior config is larger (an edited one would allocate TBs)
MAX_CONFIG_LIST = 256
MAX_MODEL_BYTES = 4 << 30  # a model built from config.json, counted on the meta device before allocating
MAX_HEADER_BYTES = 16 << 20  # safetensors header (JSON) of a weights file

_REQUIRED_KEYS: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "format_version": int,
    "kind": str,
    "model_config": dict,
    "prior_config": (dict, type(None)),
    "hand_fingerprint": str,
    "data_info": (dict, type(None)),
    "code_version": str,
    "created": str,
    "files": dict,
}


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, corrupted or does not fit the given hand/model."""


# --------------------------------------------------------------------------- model kinds
ModelBuilder = Callable[[dict, Any], nn.Module]


#: The checkpoint shipped with the package (``model: default``).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "assets" / "default_model"
#: Checkpoints shipped with the package, by the name a user passes as ``model``: the DVQ-VAE and the
#: GraspCVAE baseline trained on the same data with the same CPU budget (the paper's comparison).
BUNDLED_MODELS: dict[str, Path] = {
    "default": DEFAULT_MODEL_DIR,
    "default_cvae": DEFAULT_MODEL_DIR.parent / "default_cvae",
}


def resolve_checkpoint(spec: Union[str, Path], default_dir: Optional[Path] = None) -> Path:
    """A bundled name (``default``, ``default_cvae``) -> its checkpoint, anything else -> that directory;
    CheckpointError if absent. ``default_dir`` replaces the directory of ``default``."""
    if str(spec) in BUNDLED_MODELS:
        path = BUNDLED_MODELS[str(spec)]
        if str(spec) == "default" and default_dir is not None:
            path = Path(default_dir)
        if not (path / CONFIG_FILE).is_file():
            raise CheckpointError(f"no bundled checkpoint at {path}")
        return path
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"{str(path)!r} is not a directory; expected a checkpoint directory with {CONFIG_FILE}")
    return path


def _build_dvqvae(cfg: dict, hand: Any) -> nn.Module:
    mod = importlib.import_module("dvqvae_model.nets.dvqvae")
    return mod.DVQVAE(_config_from_dict(mod.DVQVAEConfig, cfg), hand)


def _build_cvae(cfg: dict, hand: Any) -> nn.Module:
    mod = importlib.import_module("dvqvae_model.nets.cvae")
    return mod.GraspCVAE(_config_from_dict(mod.CVAEConfig, cfg), hand)


_BUILDERS: dict[str, ModelBuilder] = {"dvqvae": _build_dvqvae, "cvae": _build_cvae}


def register_model_kind(kind: str, builder: ModelBuilder) -> None:
    """Register how to rebuild a model of ``kind`` from its config dict and a hand model."""
    _BUILDERS[kind] = builder


def _config_from_dict(cls: Any, d: dict) -> Any:
    """Build a config dataclass, refusing unknown keys (a config for another code version)."""
    if dataclasses.is_dataclass(cls):
        unknown = unknown_config_keys(cls, d)
        if unknown:
            raise CheckpointError(
                f"model_config has keys unknown to {cls.__name__}: {unknown} "
                "(checkpoint written by a different code version?)"
            )
    if hasattr(cls, "from_dict"):
        return cls.from_dict(d)
    return cls(**d)


def config_to_dict(cfg: Any) -> dict:
    """Config object (dataclass with optional ``to_dict``) or dict -> JSON-ready dict."""
    if cfg is None:
        return {}
    if isinstance(cfg, dict):
        d = dict(cfg)
    elif hasattr(cfg, "to_dict"):
        d = cfg.to_dict()
    elif dataclasses.is_dataclass(cfg):
        d = dataclasses.asdict(cfg)
    else:
        raise TypeError(f"cannot serialise config of type {type(cfg).__name__}")
    return json.loads(json.dumps(d, allow_nan=False, default=_json_default))


def _json_default(o: Any) -> Any:
    if isinstance(o, (tuple, set)):
        return list(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --------------------------------------------------------------------------- helpers
@dataclass
class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns (modules in eval mode on the requested device)."""

    model: nn.Module
    prior: Optional[GatedPixelCNNPrior]
    config: dict  # the full config.json content
    kind: str
    hand: Any
    model_config: Any = None  # rebuilt config object (when the kind provides one)
    prior_config: Optional[PriorConfig] = None
    path: Path = field(default_factory=Path)

    @property
    def meta(self) -> dict:
        return self.config


def code_version() -> str:
    """Installed package version (from package metadata), or "unknown" when not installed."""
    try:
        from importlib.metadata import version

        return version("dvqvae_ros")
    except Exception:  # noqa: BLE001 - metadata absent when running from a bare checkout
        return "unknown"




def _hand_prefixes(model: nn.Module) -> list[str]:
    """Submodule prefixes that hold a hand model: its buffers come from the hand, not training."""
    try:
        from dvqvae_model.hand.hand_model import HandModel
    except Exception:  # noqa: BLE001 - hand layer missing: nothing to exclude
        return []
    return [name + "." for name, m in model.named_modules() if name and isinstance(m, HandModel)]


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    prefixes = _hand_prefixes(model)
    out: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        if any(k.startswith(p) for p in prefixes):
            continue
        # clone: safetensors refuses tensors sharing storage; contiguous CPU copies are safe.
        out[k] = v.detach().to("cpu").contiguous().clone()
    return out


def _looks_like_checkpoint(path: Path) -> bool:
    if not path.is_dir():
        return False
    entries = {p.name for p in path.iterdir()}
    return not entries or CONFIG_FILE in entries or MODEL_FILE in entries


# --------------------------------------------------------------------------- save
def save_checkpoint(
    path: Union[str, Path],
    model: nn.Module,
    prior: Optional[nn.Module] = None,
    *,
    kind: str,
    model_config: Any,
    prior_config: Any = None,
    hand_fingerprint: str,
    data_info: Optional[dict] = None,
    extra: Optional[dict] = None,
    overwrite: bool = True,
) -> Path:
    """Write a checkpoint directory atomically and return its path.

    ``model_config``/``prior_config`` are config dataclasses (with ``to_dict``) or dicts.
    ``data_info`` describes the training data (JSON-serialisable). An existing checkpoint at
    ``path`` is replaced (``overwrite=True``); a non-checkpoint directory is never touched.
    """
    path = Path(path)
    if kind not in _BUILDERS:
        raise CheckpointError(f"unknown model kind {kind!r}; known: {sorted(_BUILDERS)}")
    if prior is not None and prior_config is None:
        prior_config = getattr(prior, "cfg", None)
        if prior_config is None:
            raise CheckpointError("prior given without prior_config")
    if path.exists():
        if not overwrite:
            raise CheckpointError(f"{path} exists and overwrite=False")
        if not _looks_like_checkpoint(path):
            raise CheckpointError(f"refusing to replace {path}: it is not a checkpoint directory")
    parent = path.parent if str(path.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)

    meta: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model_config": config_to_dict(model_config),
        "prior_config": config_to_dict(prior_config) if prior is not None else None,
        "hand_fingerprint": str(hand_fingerprint),
        "data_info": json.loads(json.dumps(data_info, default=_json_default)) if data_info is not None else None,
        "code_version": code_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "files": {},
        "extra": json.loads(json.dumps(extra or {}, default=_json_default)),
    }

    def fill(tmp: Path) -> None:
        parts = [("model", MODEL_FILE, model)] + ([("prior", PRIOR_FILE, prior)] if prior is not None else [])
        for role, fname, module in parts:
            tensors = _trainable_state(module)
            fpath = tmp / fname
            save_file(tensors, str(fpath), metadata={"format": "pt", "role": role, "kind": kind})
            meta["files"][role] = {
                "name": fname,
                "sha256": sha256_file(fpath),
                "bytes": fpath.stat().st_size,
                "num_tensors": len(tensors),
            }
        meta[CONFIG_HASH_KEY] = config_digest(meta)
        with open(tmp / CONFIG_FILE, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")

    # 0o644: mkdtemp makes a private directory; a checkpoint is meant to be shared and read by others.
    atomic_directory(path, fill, file_mode=0o644)
    return path


# --------------------------------------------------------------------------- load
def read_checkpoint_config(path: Union[str, Path]) -> dict:
    """Read and validate ``config.json`` (schema only; weights are not touched)."""
    path = Path(path)
    if path.is_file() and path.name == CONFIG_FILE:
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    cpath = path / CONFIG_FILE
    if not cpath.is_file():
        raise CheckpointError(
            f"{cpath} is missing: {path} is not a complete checkpoint (interrupted write or wrong path)"
        )
    try:
        with open(cpath, "r", encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cpath} is not valid JSON (truncated or corrupted): {e}") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{cpath}: top level must be a JSON object")
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise CheckpointError(f"{cpath}: missing required keys {missing}")
    for k, t in _REQUIRED_KEYS.items():
        if not isinstance(meta[k], t) or (t is int and isinstance(meta[k], bool)):
            raise CheckpointError(f"{cpath}: key {k!r} has type {type(meta[k]).__name__}")
    if meta["format"] != FORMAT_NAME:
        raise CheckpointError(f"{cpath}: format {meta['format']!r} is not {FORMAT_NAME!r}")
    if meta["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{cpath}: format_version {meta['format_version']} is newer than supported ({FORMAT_VERSION})"
        )
    if CONFIG_HASH_KEY in meta:
        digest = config_digest(meta)
        if meta[CONFIG_HASH_KEY] != digest:
            raise CheckpointError(
                f"{cpath} was edited after the checkpoint was saved: its sha256 {digest[:16]}... does not match "
                f"the recorded {str(meta[CONFIG_HASH_KEY])[:16]}...; re-save the checkpoint from its source"
            )
    _check_config_bounds(meta, cpath)
    files = meta["files"]
    if "model" not in files:
        raise CheckpointError(f"{cpath}: files.model is missing")
    if (meta["prior_config"] is None) != ("prior" not in files):
        raise CheckpointError(f"{cpath}: prior_config and files.prior must be both present or both absent")
    for role, entry in files.items():
        if role not in ("model", "prior"):
            raise CheckpointError(f"{cpath}: unknown file role {role!r}")
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not isinstance(
            entry.get("sha256"), str
        ):
            raise CheckpointError(f"{cpath}: files.{role} needs string 'name' and 'sha256'")
        name = entry["name"]
        if "/" in name or "\\" in name or name.startswith(".") or not name.endswith(".safetensors"):
            raise CheckpointError(f"{cpath}: files.{role}.name {name!r} is not a plain .safetensors file name")
    return meta


def config_digest(meta: dict) -> str:
    """sha256 of the config's canonical JSON, without the digest's own key."""
    body = {k: v for k, v in meta.items() if k != CONFIG_HASH_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False, default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_config_bounds(meta: dict, cpath: Path) -> None:
    """Every number in the model/prior configs within sane bounds, before anything is built from them."""
    def walk(value: Any, where: str) -> None:
        if isinstance(value, bool) or value is None or isinstance(value, str):
            return
        if isinstance(value, (int, float)):
            if not abs(value) <= MAX_CONFIG_INT:  # also NaN
                raise CheckpointError(f"{cpath}: {where} = {value!r} is out of bounds (|x| <= {MAX_CONFIG_INT})")
        elif isinstance(value, list):
            if len(value) > MAX_CONFIG_LIST:
                raise CheckpointError(f"{cpath}: {where} has {len(value)} entries (> {MAX_CONFIG_LIST})")
            for i, v in enumerate(value):
                walk(v, f"{where}[{i}]")
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{where}.{k}")

    for key in ("model_config", "prior_config"):
        walk(meta.get(key), key)


def _safetensors_shapes(fpath: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header alone (nothing allocated)."""
    import struct

    with open(fpath, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise CheckpointError(f"{fpath}: too short to be a safetensors file")
        (size,) = struct.unpack("<Q", head)
        if size > MAX_HEADER_BYTES:
            raise CheckpointError(f"{fpath}: safetensors header of {size} bytes (> {MAX_HEADER_BYTES})")
        try:
            header = json.loads(f.read(size))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{fpath}: unreadable safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{fpath}: safetensors header is not a JSON object")
    return {k: tuple(v.get("shape", ())) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def _check_before_allocating(module_on_meta: Callable[[], nn.Module], fpath: Path, what: str) -> None:
    """Build the module on the meta device (no memory) and compare it with the weights file's header:
    an edited config fails here, with the shapes named, instead of allocating what it describes."""
    try:
        with torch.device("meta"):
            module = module_on_meta()
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError, NotImplementedError):
        return  # a builder that cannot run on meta: the checks after loading still apply
    prefixes = _hand_prefixes(module)
    expected = {k: v for k, v in module.state_dict().items() if not any(k.startswith(p) for p in prefixes)}
    total = sum(v.numel() * v.element_size() for v in expected.values())
    if total > MAX_MODEL_BYTES:
        raise CheckpointError(f"config.json describes a {what} of {total / 2**30:.1f} GiB "
                              f"(> {MAX_MODEL_BYTES / 2**30:.0f} GiB): edited or corrupted config")
    stored = _safetensors_shapes(fpath)
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    bad = [k for k in expected if k in stored and tuple(expected[k].shape) != stored[k]]
    if missing or unexpected or bad:
        detail = (f"{bad[0]} is {stored[bad[0]]} in {fpath.name}, config.json gives {tuple(expected[bad[0]].shape)}"
                  if bad else f"missing {missing[:4]}, unexpected {unexpected[:4]}")
        raise CheckpointError(f"config.json does not describe the {what} weights ({detail}); edited config?")


def _verify_file(ckpt: Path, role: str, entry: dict) -> Path:
    fpath = ckpt / entry["name"]
    if not fpath.is_file():
        raise CheckpointError(f"{fpath} is missing ({role} weights)")
    if "bytes" in entry and fpath.stat().st_size != entry["bytes"]:
        raise CheckpointError(
            f"{fpath} has {fpath.stat().st_size} bytes, config.json says {entry['bytes']} (truncated or replaced)"
        )
    digest = sha256_file(fpath)
    if digest != entry["sha256"]:
        raise CheckpointError(
            f"{fpath} is corrupted: sha256 {digest[:16]}... does not match config.json ({entry['sha256'][:16]}...)"
        )
    return fpath


def _load_weights(module: nn.Module, fpath: Path, device: str, what: str) -> None:
    try:
        tensors = load_file(str(fpath), device="cpu")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(f"{fpath}: cannot read safetensors ({e})") from e
    prefixes = _hand_prefixes(module)
    expected = {k: v for k, v in module.state_dict().items() if not any(k.startswith(p) for p in prefixes)}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{what} weights do not match the model built from config.json: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    bad = [k for k, v in tensors.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{what} weight {k} has shape {tuple(tensors[k].shape)}, model expects {tuple(expected[k].shape)}"
        )
    module.load_state_dict(tensors, strict=False)
    module.to(device)


def load_checkpoint(
    path: Union[str, Path],
    hand: Any = None,
    device: Union[str, torch.device] = "cpu",
) -> LoadedCheckpoint:
    """Validate and load a checkpoint; build the model (and prior) from its config.

    ``hand`` is a ``HandModel`` (or a spec string for ``load_hand_model``); ``None`` loads the
    stand-in. Its fingerprint must equal the one the checkpoint was trained with. ``path`` may be a
    bundled name (``default``, ``default_cvae``).
    """
    ckpt = resolve_checkpoint(path) if str(path) in BUNDLED_MODELS else Path(path)
    if ckpt.is_file() and ckpt.name == CONFIG_FILE:
        ckpt = ckpt.parent
    meta = read_checkpoint_config(ckpt)
    kind = meta["kind"]
    if kind not in _BUILDERS:
        raise CheckpointError(f"{ckpt}: unknown model kind {kind!r}; known: {sorted(_BUILDERS)}")
    paths = {role: _verify_file(ckpt, role, entry) for role, entry in meta["files"].items()}

    if hand is None or isinstance(hand, (str, Path)):
        from dvqvae_model.hand.hand_model import load_hand_model

        hand = load_hand_model(str(hand) if hand is not None else "standin")
    given_fp = getattr(hand, "fingerprint", None)
    if given_fp != meta["hand_fingerprint"]:
        raise CheckpointError(
            f"checkpoint was trained for hand {meta['hand_fingerprint']} but hand model {given_fp} was given "
            f"({ckpt}); load it with the hand model it was trained with"
        )

    try:
        _check_before_allocating(lambda: _BUILDERS[kind](meta["model_config"], hand), paths["model"], "model")
        if "prior" in paths:
            _check_before_allocating(lambda: GatedPixelCNNPrior(PriorConfig.from_dict(meta["prior_config"])),
                                     paths["prior"], "prior")
        model = _BUILDERS[kind](meta["model_config"], hand)
    except CheckpointError:
        raise
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{ckpt}: cannot build a {kind!r} model from model_config: {e}") from e
    _load_weights(model, paths["model"], str(device), "model")
    model.eval()

    prior = None
    prior_cfg = None
    if "prior" in paths:
        try:
            prior_cfg = PriorConfig.from_dict(meta["prior_config"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{ckpt}: bad prior_config: {e}") from e
        vocab = getattr(model, "token_vocab_sizes", None)
        if vocab is not None and tuple(vocab) != tuple(prior_cfg.vocab_sizes):
            raise CheckpointError(
                f"{ckpt}: prior vocab sizes {prior_cfg.vocab_sizes} do not match the model's tokens {tuple(vocab)}"
            )
        prior = GatedPixelCNNPrior(prior_cfg)
        _load_weights(prior, paths["prior"], str(device), "prior")
        prior.eval()

    model_cfg_obj = getattr(model, "cfg", None)
    return LoadedCheckpoint(
        model=model,
        prior=prior,
        config=meta,
        kind=kind,
        hand=hand,
        model_config=model_cfg_obj,
        prior_config=prior_cfg,
        path=ckpt,
    )
