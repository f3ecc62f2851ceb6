"""What the ROS 2 test modules share: an isolated rclpy context, a background spinner, polling."""
from __future__ import annotations

import os
import threading
import time
from typing import Callable, Iterator

import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node


def domain(base: int) -> int:
    """A test module's ROS domain: ``base`` shifted by DVQVAE_TEST_DOMAIN_OFFSET, so that two
    checkouts can run the ROS tests at once on one machine without hearing each other."""
    return base + int(os.environ.get("DVQVAE_TEST_DOMAIN_OFFSET", "0"))


def ros_context(domain_id: int) -> Iterator[Context]:
    """A context of its own on ``domain_id`` (unique per test module: no cross-talk between suites);
    use as ``yield from ros_context(N)`` in a module fixture."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    context = Context()
    rclpy.init(context=context, domain_id=domain_id)
    yield context
    rclpy.try_shutdown(context=context)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


class Spinner:
    """Spin nodes on a background executor and stop without racing rclpy's executor shutdown.

    The loop of short spin_once calls ends before ``shutdown``; in-flight callbacks get a moment to
    finish, so none touches the executor's guard condition after shutdown destroyed it.
    """

    def __init__(self, ctx: Context, *nodes: Node) -> None:
        self.nodes, self.ctx = nodes, ctx
        self.executor = MultiThreadedExecutor(num_threads=3, context=ctx)
        for n in nodes:
            self.executor.add_node(n)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        while not self.stop.is_set() and self.ctx.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5.0)
        time.sleep(0.1)
        self.executor.shutdown(timeout_sec=2.0)
        for n in self.nodes:
            n.destroy_node()
