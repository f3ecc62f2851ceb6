"""``LatestOnlyWorker``: one worker thread and a one-slot mailbox for the grasp node.

Inference is slower than a depth camera, so a queue would only grow stale: the
newest cloud replaces the waiting one, and nothing ever blocks the executor.
"""
from __future__ import annotations

import math
import threading
import time
import traceback
from typing import Callable, Generic, Optional, TypeVar

__all__ = ["LatestOnlyWorker"]

J = TypeVar("J")


class LatestOnlyWorker(Generic[J]):
    """One worker thread and a one-slot mailbox: the newest job wins, no queue builds up.

    ``submit`` never blocks. A job waiting in the slot when a newer one arrives is
    replaced and passed to ``on_drop``. Job starts are spaced by at least
    ``min_interval()`` seconds unless the job is ``urgent`` (a service request).
    """

    def __init__(self, handler: Callable[[J], None], min_interval: Callable[[], float],
                 on_drop: Callable[[J, J], None] | None = None, name: str = "grasp-worker",
                 on_reject: Callable[[J], None] | None = None) -> None:
        self._handler = handler
        self._min_interval = min_interval
        self._on_drop = on_drop
        self._on_reject = on_reject  # a job submitted after stop(): its owner must not wait for it
        self._cond = threading.Condition()
        self._slot: Optional[tuple[J, bool]] = None
        self._stopping = False
        self._busy = False
        self._last_start = -math.inf
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, job: J, urgent: bool = False) -> bool:
        """Put ``job`` in the slot; returns True if it replaced a waiting job.

        After ``stop()`` the job is refused and handed to ``on_reject`` (returns False).
        """
        with self._cond:
            stopping = self._stopping
            replaced = None if stopping else self._slot
            if not stopping:
                if replaced is not None:
                    self.dropped += 1
                    urgent = urgent or replaced[1]
                self._slot = (job, urgent)
                self._cond.notify_all()
        if stopping:
            if self._on_reject is not None:
                self._on_reject(job)
            return False
        if replaced is not None and self._on_drop is not None:
            self._on_drop(replaced[0], job)
        return replaced is not None

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is running or waiting (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy or self._slot is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def stop(self, timeout: float = 5.0) -> Optional[J]:
        """Stop the thread (after the running job, up to ``timeout``); returns the job left waiting, if any.

        The waiting job goes to ``on_reject`` first, before the running one is waited for.
        """
        with self._cond:
            self._stopping = True
            pending, self._slot = self._slot, None
            self._cond.notify_all()
        if pending is not None and self._on_reject is not None:
            self._on_reject(pending[0])
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        return pending[0] if pending is not None else None

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping:
                    if self._slot is not None:
                        wait = self._last_start + self._min_interval() - time.monotonic()
                        if self._slot[1] or wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait()
                if self._stopping:
                    return
                job = self._slot[0]  # type: ignore[index]
                self._slot = None
                self._busy = True
                self._last_start = time.monotonic()
            try:
                self._handler(job)
            except Exception:  # noqa: BLE001 - the worker must outlive any job
                traceback.print_exc()
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
