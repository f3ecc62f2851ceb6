"""Fast DDS writer defaults for our nodes: lost samples repaired within a camera frame.

See ``fastdds_profile.xml`` (why: a reliable reader holds every later sample until a lost one is
repaired, and Fast DDS offers repairs every 3 s by default; measured in ``make demo`` and
``benchmarks/bench_node.py``). Applied by setting ``FASTDDS_DEFAULT_PROFILES_FILE`` for this
process before ``rclpy.init``, and only when the user has not chosen a profile file of their own
and the middleware is Fast DDS (the default RMW here).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import MutableMapping, Optional

__all__ = ["PROFILE_FILE", "use_low_latency_profile"]

PROFILE_FILE = Path(__file__).resolve().parent / "fastdds_profile.xml"
_PROFILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def use_low_latency_profile(env: Optional[MutableMapping[str, str]] = None) -> bool:
    """Point Fast DDS at our writer profile in ``env`` (default ``os.environ``); True if it was set."""
    env = os.environ if env is None else env
    rmw = env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if not rmw.startswith("rmw_fastrtps") or any(env.get(v) for v in _PROFILE_VARS) or not PROFILE_FILE.is_file():
        return False
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(PROFILE_FILE)
    return True
