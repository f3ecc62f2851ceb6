"""Parameter table: defaults, clear validation errors, dynamic vs read-only, declaration on a real node."""
from __future__ import annotations


import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter

from ros_helpers import ros_context
from dvqvae_ros.parameters import (
    FakeCameraParameters,
    GraspNodeParameters,
    ParameterError,
    check_parameters,
    check_update,
    declare_parameters,
    dynamic_parameter_names,
    read_parameters,
)

DOMAIN_ID = 76  # unique per test module: no cross-talk with other suites running at the same time


@pytest.fixture(scope="module")
def ctx():
    yield from ros_context(DOMAIN_ID)


def test_defaults_are_valid() -> None:
    p = check_parameters(GraspNodeParameters, {})
    assert p == GraspNodeParameters()
    assert (p.model, p.hand_model, p.backend, p.device, p.qos, p.mode) == (
        "default", "standin", "auto", "cpu", "reliable", "continuous")
    assert 1 <= p.num_grasps <= 256 and p.seed == -1 and p.crop_box == ()
    assert check_parameters(FakeCameraParameters, {}) == FakeCameraParameters()


def test_dynamic_parameters_are_the_sampling_ones() -> None:
    assert dynamic_parameter_names(GraspNodeParameters) == {
        "num_grasps", "temperature", "top_k", "seed", "refine", "max_rate_hz", "candidates", "ranking",
        "refine_steps", "refine_time_ms", "gravity"}
    assert dynamic_parameter_names(FakeCameraParameters) == frozenset()


def test_gravity_is_a_direction_or_unknown() -> None:
    assert check_parameters(GraspNodeParameters, {}).gravity == (0.0, 1.0, 0.0)
    assert check_parameters(GraspNodeParameters, {"gravity": [0, 0, -9.8]}).gravity == (0.0, 0.0, -9.8)
    assert check_parameters(GraspNodeParameters, {"gravity": [0.0, 0.0, 0.0]}).gravity == (0.0, 0.0, 0.0)
    for bad in ([0.0, 1.0], "down", [0.0, float("nan"), 1.0], None):
        with pytest.raises(ParameterError, match="gravity"):
            check_parameters(GraspNodeParameters, {"gravity": bad})


@pytest.mark.parametrize("value", [0, 257, -3, 8.5, "8", True, None])
def test_num_grasps_range(value) -> None:
    with pytest.raises(ParameterError) as err:
        check_parameters(GraspNodeParameters, {"num_grasps": value}, node_name="node 'grasp_generator'")
    text = str(err.value)
    assert "grasp_generator" in text and "num_grasps" in text and "[1, 256]" in text and repr(value) in text


def test_all_errors_reported_at_once() -> None:
    with pytest.raises(ParameterError) as err:
        check_parameters(GraspNodeParameters, {
            "num_grasps": 0, "backend": "cuda-magic", "qos": "fast", "temperature": -1.0,
            "device": "gpu", "mode": "sometimes", "crop_box": [1.0, 2.0], "bogus": 1})
    lines = str(err.value).splitlines()
    for name in ("num_grasps", "backend", "qos", "temperature", "device", "mode", "crop_box", "bogus"):
        assert any(line.strip().startswith(f"- {name}:") for line in lines), name
    assert "auto, eager, torchscript, onnx, tensorrt" in str(err.value)


def test_numbers_are_coerced_sensibly() -> None:
    p = check_parameters(GraspNodeParameters, {"num_grasps": 16.0, "temperature": 2, "max_rate_hz": 0})
    assert p.num_grasps == 16 and isinstance(p.num_grasps, int)
    assert p.temperature == 2.0 and isinstance(p.temperature, float)
    assert p.sampling.num_grasps == 16 and p.sampling.max_rate_hz == 0.0
    with pytest.raises(ParameterError, match="temperature"):
        check_parameters(GraspNodeParameters, {"temperature": float("nan")})


@pytest.mark.parametrize("box,ok", [
    ([], True), (None, True), ([0, 0, 0, 1, 1, 1], True), ((-0.1, -0.2, 0.1, 0.1, 0.2, 1.5), True),
    ([0, 0, 0, 1, 1], False), ([0, 0, 0, 0, 1, 1], False), ([1, 0, 0, 0, 1, 1], False),
    ([0, 0, 0, 1, 1, float("inf")], False), ("0 0 0 1 1 1", False)])
def test_crop_box(box, ok) -> None:
    if ok:
        p = check_parameters(GraspNodeParameters, {"crop_box": box})
        assert p.crop_box == (tuple(float(v) for v in box) if box else ())
    else:
        with pytest.raises(ParameterError, match="crop_box"):
            check_parameters(GraspNodeParameters, {"crop_box": box})


def test_sampling_settings_helpers() -> None:
    s = check_parameters(GraspNodeParameters, {"top_k": 0, "seed": -1}).sampling
    assert s.top_k_or_none is None and s.seed_or_none is None
    s = check_parameters(GraspNodeParameters, {"top_k": 5, "seed": 7}).sampling
    assert s.top_k_or_none == 5 and s.seed_or_none == 7


def test_check_update() -> None:
    assert check_update(GraspNodeParameters, "num_grasps", 12) == 12
    assert check_update(GraspNodeParameters, "refine", True) is True
    with pytest.raises(ParameterError, match=r"num_grasps: must be an integer in \[1, 256\], got 0"):
        check_update(GraspNodeParameters, "num_grasps", 0)
    with pytest.raises(ParameterError, match="backend: read-only after start-up"):
        check_update(GraspNodeParameters, "backend", "eager")
    with pytest.raises(ParameterError, match="unknown"):
        check_update(GraspNodeParameters, "nope", 1)


def test_artifact_and_force_rebuild(tmp_path) -> None:
    """A prebuilt artifact: validated on its own (a path that exists) and against backend / force_rebuild."""
    p = check_parameters(GraspNodeParameters, {})
    assert p.artifact == "" and p.force_rebuild is False  # default: the artifact cache
    art = tmp_path / "engine"
    art.mkdir()
    for backend in ("auto", "torchscript", "onnx", "tensorrt"):
        assert check_parameters(GraspNodeParameters, {"artifact": f" {art} ", "backend": backend}).artifact == str(art)
    assert check_parameters(GraspNodeParameters, {"artifact": None}).artifact == ""  # empty YAML value
    assert check_parameters(GraspNodeParameters, {"force_rebuild": True, "backend": "onnx"}).force_rebuild
    with pytest.raises(ParameterError, match=r"artifact: no such artifact directory or file: '.*missing'"):
        check_parameters(GraspNodeParameters, {"artifact": str(tmp_path / "missing")})
    with pytest.raises(ParameterError, match="artifact: must be a path"):
        check_parameters(GraspNodeParameters, {"artifact": 3})
    with pytest.raises(ParameterError, match="artifact / backend: backend eager runs the PyTorch model"):
        check_parameters(GraspNodeParameters, {"artifact": str(art), "backend": "eager"})
    with pytest.raises(ParameterError, match="artifact / force_rebuild: force_rebuild rebuilds the artifact cache"):
        check_parameters(GraspNodeParameters, {"artifact": str(art), "force_rebuild": True})
    with pytest.raises(ParameterError, match="force_rebuild / backend: backend eager builds nothing"):
        check_parameters(GraspNodeParameters, {"force_rebuild": True, "backend": "eager"})
    with pytest.raises(ParameterError, match="force_rebuild: must be true or false"):
        check_parameters(GraspNodeParameters, {"force_rebuild": "yes"})
    # both are start-up settings: read-only while running
    for name, value in (("artifact", str(art)), ("force_rebuild", True)):
        with pytest.raises(ParameterError, match=f"{name}: read-only after start-up"):
            check_update(GraspNodeParameters, name, value)


def test_fake_camera_parameters() -> None:
    with pytest.raises(ParameterError) as err:
        check_parameters(FakeCameraParameters, {"rate_hz": 0.0, "elevation_deg": 95.0, "object": ""})
    text = str(err.value)
    assert "rate_hz" in text and "elevation_deg" in text and "object" in text


def test_declare_and_read_on_a_node(ctx) -> None:
    node = Node("param_probe", context=ctx, parameter_overrides=[
        Parameter("temperature", value=2),  # an integer for a float parameter is fine
        Parameter("crop_box", value=[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]),
        Parameter("mode", value="on_demand")])
    try:
        declare_parameters(node, GraspNodeParameters)
        p = read_parameters(node, GraspNodeParameters)
        assert p.temperature == 2.0 and p.crop_box == (0.0, 0.0, 0.0, 1.0, 1.0, 1.0) and p.mode == "on_demand"
        desc = node.describe_parameter("backend")
        assert desc.read_only and "eager" in desc.description
        assert node.describe_parameter("artifact").read_only and "dvqvae-export" in \
            node.describe_parameter("artifact").description
        assert p.artifact == "" and p.force_rebuild is False
        assert not node.describe_parameter("num_grasps").read_only
        result = node.set_parameters([Parameter("backend", value="eager")])[0]
        assert not result.successful and "read-only" in result.reason
    finally:
        node.destroy_node()


def test_read_reports_bad_overrides_with_node_name(ctx) -> None:
    node = Node("param_probe_bad", context=ctx, parameter_overrides=[
        Parameter("num_grasps", value=1000), Parameter("qos", value="fastest")])
    try:
        declare_parameters(node, GraspNodeParameters)
        with pytest.raises(ParameterError) as err:
            read_parameters(node, GraspNodeParameters)
        text = str(err.value)
        assert "node 'param_probe_bad'" in text and "num_grasps" in text and "1000" in text and "qos" in text
    finally:
        node.destroy_node()
