"""TensorBoard events beside the run's CSV / JSON-lines logs, when the ``tensorboard`` package is installed.

``torch.utils.tensorboard`` needs the ``tensorboard`` package; without it this mirror does nothing and
the CSV / JSON lines stay the record (they always are: TensorBoard is a view). Step records become
``train/<name>`` scalars at their step, epoch records ``epoch/<name>`` scalars at the step the epoch
ended. On resume, events after the resumed step are purged (``purge_step``), as the JSON log is trimmed.

    tensorboard --logdir out/compact      # every stage's ``<stage>/tensorboard`` directory
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional


def summary_writer_class() -> Optional[type]:
    """``torch.utils.tensorboard.SummaryWriter``, or None when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class TensorBoardMirror:
    """Writes numeric fields of log records as scalars; created lazily, on the first record."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer: Any = None
        self._purge: Optional[int] = None
        self.available = summary_writer_class() is not None

    def purge_after(self, step: int) -> None:
        """Events with a step above ``step`` will be dropped (a resumed run writes them again)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._purge = int(step) + 1

    def _open(self) -> Any:
        if self._writer is None:
            cls = summary_writer_class()
            if cls is None:
                self.available = False
                return None
            self._writer = cls(log_dir=str(self.log_dir), purge_step=self._purge)
        return self._writer

    def write(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind == "event" and self._writer is not None:
            self._writer.flush()  # e.g. "stopped": the process may end next
        if not self.available or kind not in ("step", "epoch"):
            return
        w = self._open()
        if w is None:
            return
        step = int(record.get("step", 0))
        prefix = "train" if kind == "step" else "epoch"
        for key, value in record.items():
            if key in ("kind", "stage", "step") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(float(value)):
                w.add_scalar(f"{prefix}/{key}", float(value), step)
        if kind == "epoch":
            w.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
