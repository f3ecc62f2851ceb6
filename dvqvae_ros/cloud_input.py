"""The ``points`` subscription's QoS, and saying so when a publisher's clouds cannot be received.

Measured with ``benchmarks/bench_cloud_transport.py`` (two processes, Fast DDS, loopback): a
best-effort subscriber received 0 of 6 full-resolution 1280 x 720 clouds (14.7 MB each), whatever
the publisher's QoS and with ``FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA`` too, because one lost
~64 kB fragment loses the whole sample and best effort never asks for it again; a reliable
subscriber with a reliable publisher received 6 of 6 (p50 94 ms; 2 M points: 463 ms). So the
default is ``qos: reliable``. A reliable subscriber does not match a best-effort publisher: that
is reported by an incompatible-QoS event and warned about, with the fix. Clouds lost in transport
(message-lost events, best effort only) and a matched publisher whose clouds never arrive are
warned about once each, and counted in ``/diagnostics``.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_policy_name_from_kind, qos_profile_sensor_data

__all__ = ["CloudInputMonitor", "cloud_qos", "SILENCE_WARN_S"]

SILENCE_WARN_S = 5.0  # a publisher matched this long with no cloud received (nor a bad one) is reported


def cloud_qos(kind: str) -> QoSProfile:
    """``reliable``: every cloud arrives whole (depth 5, as ``sensor_data``: a short stall of the
    executor does not overwrite clouds in the reader's queue);
    ``sensor_data``: best effort, matches any publisher, large clouds are lost."""
    if kind == "sensor_data":
        return qos_profile_sensor_data
    return QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


class CloudInputMonitor:
    """Counts transport losses and QoS mismatches on the cloud subscription; warns once per kind."""

    def __init__(self, qos: str, topic: Callable[[], str], warn: Callable[[str], None]) -> None:
        self.qos = qos
        self._topic = topic
        self._warn = warn
        self._lock = threading.Lock()
        self.lost = 0  # clouds the middleware reports lost (best effort)
        self.incompatible = 0  # publishers refused for incompatible QoS
        self.skipped = 0  # clouds that never reached the callback: gaps in a publisher's sequence numbers
        self._last_seq: dict[bytes, int] = {}
        self._warned: set[str] = set()
        self._last_cloud = -float("inf")
        self._matched_since: Optional[float] = None

    def callbacks(self) -> SubscriptionEventCallbacks:
        return SubscriptionEventCallbacks(message_lost=self._on_lost, incompatible_qos=self._on_incompatible)

    def cloud_arrived(self, info: Optional[dict] = None) -> None:
        """A cloud reached the callback; ``info`` (rclpy's MessageInfo) reveals the ones that did not:
        overwritten in the reader's queue while the node was busy, or lost in transport."""
        gap = 0
        with self._lock:
            self._last_cloud = time.monotonic()
            seq = (info or {}).get("publication_sequence_number")
            gid = ((info or {}).get("publisher_gid") or {}).get("data")
            if seq is not None and gid is not None:
                last = self._last_seq.get(bytes(gid))
                self._last_seq[bytes(gid)] = int(seq)
                if last is not None and seq > last + 1:
                    gap = int(seq) - last - 1
                    self.skipped += gap
        if gap:
            self._once("skipped", (
                f"{gap} cloud(s) on {self._topic()} never reached the node (a gap in the publisher's sequence "
                "numbers): overwritten in the subscription's queue while the node was busy, or lost in transport; "
                "counted as clouds_skipped in /diagnostics"))

    def _once(self, key: str, text: str) -> None:
        with self._lock:
            if key in self._warned:
                return
            self._warned.add(key)
        self._warn(text)

    def _on_lost(self, info: Any) -> None:
        with self._lock:
            self.lost = int(info.total_count)
        self._once("lost", (
            f"clouds on {self._topic()} are being lost in transport ({info.total_count} so far): with "
            f"qos:={self.qos} (best effort) a cloud is dropped whole when one of its UDP fragments is lost, "
            "and clouds over ~1 MB (e.g. 1280x720) then never arrive; use qos:=reliable with a reliable "
            "publisher (see docs/reliability.md)"))

    def _on_incompatible(self, info: Any) -> None:
        with self._lock:
            self.incompatible = int(info.total_count)
        policy = qos_policy_name_from_kind(info.last_policy_kind)
        fix = ("set qos:=sensor_data (best effort; clouds over ~1 MB will be lost) or make the publisher reliable"
               if policy == "RELIABILITY" else "match the publisher's QoS")
        self._once("incompatible", (
            f"a publisher on {self._topic()} cannot be received: its QoS policy {policy} is incompatible "
            f"with this subscription (qos:={self.qos}); its clouds will never arrive. Fix: {fix}"))

    def check(self, publishers: int) -> None:
        """Called about once a second: a matched publisher whose clouds never arrive is reported."""
        now = time.monotonic()
        with self._lock:
            if publishers == 0:
                self._matched_since = None
                return
            if self._matched_since is None:
                self._matched_since = now
            silent = now - max(self._matched_since, self._last_cloud)
        if silent >= SILENCE_WARN_S and self._last_cloud == -float("inf"):
            hint = ("large clouds are lost with best effort: use qos:=reliable"
                    if self.qos == "sensor_data" else "is the publisher publishing? (ros2 topic hz)")
            self._once("silent", (
                f"{publishers} publisher(s) matched on {self._topic()} for {silent:.0f} s but no cloud has "
                f"arrived; {hint}"))
