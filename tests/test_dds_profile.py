"""dvqvae_ros.dds_profile: our Fast DDS writer profile is used unless the user chose one."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from dvqvae_ros.dds_profile import PROFILE_FILE, use_low_latency_profile


def test_profile_applies_only_when_the_user_has_none() -> None:
    env: dict[str, str] = {}
    assert use_low_latency_profile(env) and env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(PROFILE_FILE)
    for theirs in ({"FASTDDS_DEFAULT_PROFILES_FILE": "/etc/mine.xml"}, {"FASTRTPS_DEFAULT_PROFILES_FILE": "/x.xml"},
                   {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}):
        env = dict(theirs)
        assert not use_low_latency_profile(env) and env == theirs


def test_profile_is_a_default_writer_profile_with_a_short_heartbeat() -> None:
    ns = {"d": "http://www.eprosima.com"}
    root = ET.parse(PROFILE_FILE).getroot()
    writer = root.find("d:profiles/d:data_writer", ns)
    assert writer is not None and writer.get("is_default_profile") == "true"
    period = writer.find("d:times/d:heartbeat_period", ns)
    seconds = int(period.find("d:sec", ns).text) + int(period.find("d:nanosec", ns).text) / 1e9
    assert 0 < seconds <= 0.05, "repairs must come within a camera frame"
