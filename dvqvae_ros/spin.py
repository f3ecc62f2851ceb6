"""The shared ``main()`` body of our nodes: spin until Ctrl-C or shutdown, then clean up quietly.

rclpy's own SIGINT handler shuts the context down at once, under a worker thread that may be
publishing (an ``RCLError`` in the log) and before waiting service calls are answered; a second
SIGINT (``ros2 launch`` sends more than one) then lands in the clean-up as a ``KeyboardInterrupt``
traceback. So our nodes take the signals themselves (``ShutdownSignals``): during start-up the first
SIGINT/SIGTERM aborts loading (``KeyboardInterrupt``, caught by ``main``); once spinning it only asks
the loop to stop, the node finishes what it owes (``prepare_shutdown``: stop the worker, answer
pending calls), the answers go out, and only then is the context shut down. Later signals are ignored.
"""
from __future__ import annotations

import signal
import threading
import time
from typing import Any, Callable, Optional, Sequence

import rclpy
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.node import Node

__all__ = ["ShutdownSignals", "init_with_shutdown_signals", "run_node", "spin_until_shutdown"]

DRAIN_S = 2.0  # at most this long to send the answers of calls finished by prepare_shutdown
# then spin this long more: a call counts as answered when its callback returns the response, but the
# executor sends it after that (on another thread) and DDS may need a heartbeat (20 ms) to repair a
# lost packet; destroying the service at once lost the answer now and then under load
LINGER_S = 0.3


class ShutdownSignals:
    """SIGINT / SIGTERM: the first one stops the node (raises during start-up), later ones are ignored."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self._starting = True

    def install(self) -> "ShutdownSignals":
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)
        return self

    @staticmethod
    def ignore_from_now() -> None:
        """Torn down: the interpreter's own finalisation would reset our handler to the default, and a
        late signal would then kill the exiting process (exit code -2); ignore them instead."""
        if threading.current_thread() is not threading.main_thread():
            return  # (a node spun from a thread, e.g. in tests: signals are not ours to change)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)

    def running(self) -> None:
        """Start-up is over: from now on a signal only asks the spin loop to stop."""
        self._starting = False

    def _handle(self, signum: int, frame: Any) -> None:
        first = not self.requested.is_set()
        self.requested.set()
        if first and self._starting:
            raise KeyboardInterrupt  # abort model loading; main() exits quietly


def init_with_shutdown_signals(args: Optional[Sequence[str]]) -> ShutdownSignals:
    """``rclpy.init`` without rclpy's signal handlers, and ours installed (main thread only); our
    Fast DDS writer profile (``dds_profile``) unless the user chose one."""
    from rclpy.signals import SignalHandlerOptions

    from dvqvae_ros.dds_profile import use_low_latency_profile

    use_low_latency_profile()  # before the first participant: Fast DDS reads it then
    signals = ShutdownSignals().install()
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    return signals


def spin_until_shutdown(node: Node, executor: Executor, signals: Optional[ShutdownSignals] = None) -> int:
    """Spin ``node`` on ``executor`` until a signal (or an external shutdown); always exit 0, quietly."""
    stop = signals.requested if signals is not None else threading.Event()
    if signals is not None:
        signals.running()
    executor.add_node(node)
    context = node.context
    try:
        while context.ok() and not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        try:
            prepare = getattr(node, "prepare_shutdown", None)
            if prepare is not None and context.ok():
                prepare()  # stop generating; waiting calls get their answers
                deadline = time.monotonic() + DRAIN_S
                while context.ok() and time.monotonic() < deadline and getattr(node, "calls_in_flight", 0):
                    executor.spin_once(timeout_sec=0.05)
                linger = time.monotonic() + LINGER_S
                while context.ok() and time.monotonic() < linger:
                    executor.spin_once(timeout_sec=0.05)
            executor.shutdown()
            node.destroy_node()
        except KeyboardInterrupt:  # only without our handler (embedding): still tear down
            node.destroy_node()
        finally:
            rclpy.try_shutdown(context=context)
            if signals is not None:
                signals.ignore_from_now()
    return 0


def run_node(make_node: Callable[[], Node], name: str, make_executor: Callable[[], Executor],
             args: Optional[Sequence[str]] = None,
             startup_errors: tuple[type[BaseException], ...] = ()) -> int:
    """A node's whole ``main()``: init with our signal handling, build the node, spin until shutdown.

    ``startup_errors`` (bad parameters, a missing model) are logged as one fatal line and exit 2; a
    signal during start-up exits 0 quietly; otherwise the exit code of ``spin_until_shutdown``.
    """
    import sys

    signals = init_with_shutdown_signals(list(args) if args is not None else sys.argv)
    try:
        node = make_node()
    except startup_errors as exc:
        rclpy.logging.get_logger(name).fatal(str(exc))
        rclpy.try_shutdown()
        signals.ignore_from_now()
        return 2
    except KeyboardInterrupt:  # SIGINT/SIGTERM while starting (e.g. loading a model): a normal, quiet exit
        rclpy.try_shutdown()
        signals.ignore_from_now()
        return 0
    return spin_until_shutdown(node, make_executor(), signals)
