"""The shared ``main()`` body of our nodes: spin until Ctrl-C or shutdown, then clean up."""
from __future__ import annotations

import rclpy
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.node import Node

__all__ = ["spin_until_shutdown"]


def spin_until_shutdown(node: Node, executor: Executor) -> int:
    """Spin ``node`` on ``executor``; SIGINT is a normal exit (0), and everything is torn down."""
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
