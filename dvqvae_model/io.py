"""Crash-safe file writing: a reader sees the old file or the whole new one, never half of it.

Every writer in the project (checkpoints, exported artifacts, dataset shards, CLI outputs) writes
to a temporary file in the target's folder, fsyncs it, ``os.replace``-s it into place and fsyncs
the folder, so the rename itself survives a power cut.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

__all__ = ["fsync_path", "atomic_write_bytes"]


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
