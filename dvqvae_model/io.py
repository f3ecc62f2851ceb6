"""Files: crash-safe writes, file digests and the JSON round trip of config dataclasses.

Crash-safe writing: a reader sees the old file or the whole new one, never half of it. Every
writer in the project (checkpoints, exported artifacts, dataset shards, CLI outputs) writes to a
temporary file (or directory) in the target's folder, fsyncs it, renames it into place and fsyncs
the folder, so the rename itself survives a power cut.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, TypeVar, Union

__all__ = [
    "fsync_path", "atomic_write_bytes", "atomic_directory", "staged_directory", "sha256_file", "config_to_dict", "config_from_dict",
    "unknown_config_keys", "SerializableConfig",
]


def fsync_path(path: Union[str, Path]) -> None:
    """Flush a file or a directory to disk; best effort (some file systems refuse directory fsync)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Union[str, Path], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file + fsync + ``os.replace`` + folder fsync."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")  # ".tmp" marks leftovers for cleanup
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_path(path.parent)


def atomic_directory(target: Union[str, Path], fill: Callable[[Path], None], *, file_mode: Optional[int] = None,
                     keep_existing: Optional[Callable[[Path], bool]] = None) -> Path:
    """Create ``target`` atomically: ``fill(tmp)`` writes into a sibling temp dir that is renamed into place.

    A crash leaves the old directory or the new one, never a half. An existing ``target`` is swapped
    out (renamed aside, then removed). ``file_mode`` chmods the files written (mkdtemp makes a private
    directory; what we write is meant to be shared). If the final rename fails because another
    process put its own copy in place first, ``keep_existing(target)`` may accept that copy.
    """
    out = Path(target)
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        fill(tmp)
        for child in tmp.iterdir():
            if file_mode is not None:
                os.chmod(child, file_mode)
            fsync_path(child)
        os.chmod(tmp, 0o755)
        fsync_path(tmp)
        if out.exists():
            old = parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:
                os.rename(tmp, out)
            except OSError:
                if keep_existing is not None and keep_existing(out):  # lost a race against an identical build
                    shutil.rmtree(tmp, ignore_errors=True)
                    return out
                raise
        fsync_path(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@contextlib.contextmanager
def staged_directory(out: Union[str, Path], stale: Sequence[str] = ()) -> Iterator[Path]:
    """Yield an empty staging folder; on success its files land in ``out`` together, on failure none do.

    A new ``out`` is the staging folder renamed into place (atomic). An existing ``out`` (e.g. one that
    already holds logs) gets the staged files by ``os.replace`` one by one: renames need no space, so a
    full disk or any error while writing leaves ``out`` as it was. Staged files are fsynced first.
    Files of ``out`` matching a ``stale`` glob that the new set does not replace are removed after the
    move (e.g. ``grasp_07.ply`` of an earlier, larger run).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(errno.EEXIST, "exists and is not a directory", str(out))
    fresh = not out.exists()
    parent = out.parent if fresh else out
    if fresh:
        parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        yield stage
        for child in stage.rglob("*"):
            if child.is_file():
                fsync_path(child)
        os.chmod(stage, 0o755)  # mkdtemp makes it private; outputs are meant to be shared
        if fresh:
            os.rename(stage, out)
        else:
            children = sorted(stage.iterdir())
            names = {c.name for c in children}
            for child in children:  # check every target first: the moves below should not fail half-way
                target = out / child.name
                if target.is_dir() != child.is_dir() and target.exists():
                    raise IsADirectoryError(errno.EISDIR, "an existing entry is in the way of an output",
                                            str(target))
            for child in children:
                target = out / child.name
                if child.is_dir() and target.is_dir():
                    shutil.rmtree(target)
                os.replace(child, target)
            for pattern in stale:
                for old in out.glob(pattern):
                    if old.name not in names and old.is_file():
                        old.unlink()
        fsync_path(out)
        fsync_path(out.parent)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def sha256_file(path: Union[str, Path], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


# --------------------------------------------------------------------------- config dataclasses <-> JSON
C = TypeVar("C")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A config dataclass as JSON data: nested dataclasses become dicts, tuples lists."""
    def plain(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def unknown_config_keys(cls: type, data: Mapping[str, Any]) -> list[str]:
    """Keys of ``data`` that are not fields of the dataclass ``cls`` (sorted)."""
    return sorted(set(data) - {f.name for f in dataclasses.fields(cls)})


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """The dataclass ``cls`` from JSON data; unknown keys are refused (a config of another code version),
    lists become tuples where the field's default is a tuple."""
    unknown = unknown_config_keys(cls, data)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s): {unknown} (written by another code version?)")
    d = dict(data)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in d and isinstance(d[f.name], list) and isinstance(f.default, tuple):
            d[f.name] = tuple(d[f.name])
    return cls(**d)


class SerializableConfig:
    """Mixin for config dataclasses: ``to_dict`` / ``from_dict`` through the functions above."""

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        return config_from_dict(cls, data)
