"""launch/grasp_generator.launch.py and config/grasp_generator.yaml stay consistent with the package.

`launch` / `launch_ros` are not on PyPI, so the launch file is checked statically (ast): the
package, executables, config file and launch arguments it names must exist. Where a real ROS 2
`launch_ros` is importable, generate_launch_description() is also called. The YAML is validated
both by our parameter checkers and through rcl's own YAML parser.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import rclpy
import yaml
from rclpy.context import Context
from rclpy.node import Node

from dvqvae_ros.parameters import (
    FakeCameraParameters,
    GraspNodeParameters,
    SegmenterParameters,
    check_parameters,
    declare_parameters,
    read_parameters,
)

DOMAIN_ID = 79  # unique per test module
REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch" / "grasp_generator.launch.py"
CONFIG = REPO / "config" / "grasp_generator.yaml"
NODE_PARAMETERS = {"grasp_generator": GraspNodeParameters, "fake_depth_camera": FakeCameraParameters,
                   "object_segmenter": SegmenterParameters}


def _const(node: ast.AST):
    return node.value if isinstance(node, ast.Constant) else None


def _call_name(node: ast.Call) -> str:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


@pytest.fixture(scope="module")
def tree() -> ast.Module:
    return ast.parse(LAUNCH.read_text(), filename=str(LAUNCH))


@pytest.fixture(scope="module")
def module_constants(tree) -> dict[str, object]:
    out = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            if _const(stmt.value) is not None:
                out[stmt.targets[0].id] = _const(stmt.value)
    return out


def _value(node: ast.AST, constants: dict[str, object]):
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return _const(node)


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _call_name(n) == name]


def _kwargs(call: ast.Call) -> dict[str, ast.AST]:
    return {k.arg: k.value for k in call.keywords if k.arg}


def _console_scripts() -> dict[str, str]:
    setup = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(setup):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if key is not None and _const(key) == "console_scripts" and isinstance(value, ast.List):
                    pairs = [str(_const(e)).split("=", 1) for e in value.elts]
                    return {name.strip(): target.strip() for name, target in pairs}
    return {}


def test_launch_file_is_python_with_generate_launch_description(tree) -> None:
    names = [f.name for f in tree.body if isinstance(f, ast.FunctionDef)]
    assert "generate_launch_description" in names
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert {"LaunchDescription", "DeclareLaunchArgument", "LaunchConfiguration", "Node", "FindPackageShare"} <= imported


def test_nodes_name_existing_package_and_executables(tree, module_constants) -> None:
    package = ET.parse(REPO / "package.xml").getroot().findtext("name")
    scripts = _console_scripts()
    nodes = [_kwargs(c) for c in _calls(tree, "Node")]
    assert {_value(n["executable"], module_constants) for n in nodes} == {
        "grasp_generator", "fake_depth_camera", "object_segmenter"}
    for node in nodes:
        assert _value(node["package"], module_constants) == package
        exe = _value(node["executable"], module_constants)
        assert exe in scripts, f"setup.py console_scripts lacks {exe!r}"
        module, func = scripts[exe].split(":")
        assert callable(getattr(importlib.import_module(module), func))
        assert _value(node["name"], module_constants) == exe  # so the YAML section names match
        remaps = node["remappings"]
        assert isinstance(remaps, ast.List) and any(
            _const(t.elts[0]) == "points" for t in remaps.elts if isinstance(t, ast.Tuple))
    fake = next(n for n in nodes if _value(n["executable"], module_constants) == "fake_depth_camera")
    assert "condition" in fake and "use_fake_camera" in ast.unparse(fake["condition"])
    segmenter = next(n for n in nodes if _value(n["executable"], module_constants) == "object_segmenter")
    assert "segmented_cloud" in ast.unparse(segmenter["condition"])


def test_config_file_is_found_and_installed(tree) -> None:
    joins = [ast.unparse(c) for c in _calls(tree, "PathJoinSubstitution")]
    assert any("FindPackageShare" in j and "'config'" in j and "'grasp_generator.yaml'" in j for j in joins)
    assert CONFIG.is_file()
    setup = (REPO / "setup.py").read_text()
    assert 'glob("config/*.yaml")' in setup and 'glob("launch/*.launch.py")' in setup


def test_launch_arguments(tree) -> None:
    declared = {_const(c.args[0]) for c in _calls(tree, "DeclareLaunchArgument")}
    assert {"model", "hand_model", "backend", "points_topic", "use_fake_camera", "params_file", "input",
            "depth_topic", "camera_info_topic", "scene_cloud_topic", "mask_topic", "clicked_point_topic",
            "artifact", "force_rebuild"} <= declared
    used = {_const(c.args[0]) for c in _calls(tree, "LaunchConfiguration")}
    assert used <= declared, f"undeclared launch arguments: {used - declared}"
    for call in _calls(tree, "DeclareLaunchArgument"):
        kw = _kwargs(call)
        assert "default_value" in kw and _const(kw.get("description")), _const(call.args[0])


def test_yaml_sections_validate() -> None:
    data = yaml.safe_load(CONFIG.read_text())
    assert set(data) == set(NODE_PARAMETERS)
    for name, cls in NODE_PARAMETERS.items():
        values = data[name]["ros__parameters"]
        check_parameters(cls, values, node_name=name)  # unknown keys or bad values raise
    assert data["grasp_generator"]["ros__parameters"]["model"] == "default"


def test_yaml_through_rcl_parser() -> None:
    """The file as ROS itself parses it (`--params-file`) gives the same validated parameters."""
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    ctx = Context()
    rclpy.init(context=ctx, domain_id=DOMAIN_ID, args=["--ros-args", "--params-file", str(CONFIG)])
    try:
        data = yaml.safe_load(CONFIG.read_text())
        for name, cls in NODE_PARAMETERS.items():
            node = Node(name, context=ctx)
            try:
                declare_parameters(node, cls)
                got = read_parameters(node, cls)
            finally:
                node.destroy_node()
            assert got == check_parameters(cls, data[name]["ros__parameters"])
    finally:
        rclpy.try_shutdown(context=ctx)


class _Recorder:
    """Stands in for every launch / launch_ros class: remembers its arguments."""

    def __init__(self, *args, **kwargs) -> None:
        self.args, self.kwargs = args, kwargs


def _stub_modules() -> dict[str, types.ModuleType]:
    mods = {}
    layout = {
        "launch": ["LaunchDescription"],
        "launch.actions": ["DeclareLaunchArgument"],
        "launch.conditions": ["IfCondition"],
        "launch.substitutions": ["LaunchConfiguration", "PathJoinSubstitution", "EqualsSubstitution",
                                 "NotEqualsSubstitution"],
        "launch_ros": [],
        "launch_ros.actions": ["Node"],
        "launch_ros.parameter_descriptions": ["ParameterValue"],
        "launch_ros.substitutions": ["FindPackageShare"],
    }
    for name, classes in layout.items():
        mod = types.ModuleType(name)
        for cls in classes:
            setattr(mod, cls, type(cls, (_Recorder,), {}))
        mods[name] = mod
    return mods


def _load_launch_module():
    spec = importlib.util.spec_from_file_location("grasp_generator_launch", LAUNCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generate_launch_description_runs(monkeypatch) -> None:
    """Execute the launch file against recording stand-ins of the launch API."""
    for name, mod in _stub_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    description = _load_launch_module().generate_launch_description()
    (entities,) = description.args
    kinds = [type(e).__name__ for e in entities]
    assert kinds.count("Node") == 3 and kinds.count("DeclareLaunchArgument") == len(entities) - 3
    args = {e.args[0]: e.kwargs["default_value"] for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    assert args["model"] == "default" and args["use_fake_camera"] == "false" and args["backend"] == "auto"
    assert args["input"] == "depth_image" and args["depth_topic"] == "depth/image"
    nodes = {e.kwargs["executable"]: e.kwargs for e in entities if type(e).__name__ == "Node"}
    gen = nodes["grasp_generator"]
    overrides = gen["parameters"][1]
    plain = {k: v.args[0] for k, v in overrides.items() if type(v).__name__ == "LaunchConfiguration"}
    assert plain == {"model": "model", "hand_model": "hand_model", "backend": "backend", "device": "device"}
    typed = {k: (v.args[0].args[0], v.kwargs["value_type"]) for k, v in overrides.items()
             if type(v).__name__ == "ParameterValue"}
    assert typed == {"artifact": ("artifact", str), "force_rebuild": ("force_rebuild", bool)}
    assert args["artifact"] == "" and args["force_rebuild"] == "false"
    # launch_ros reads an untyped substitution as YAML and refuses null: every untyped override's default
    # must load as a scalar (an empty artifact path would not, hence ParameterValue(value_type=str))
    for name, cfg in overrides.items():
        if type(cfg).__name__ == "LaunchConfiguration":
            assert type(yaml.safe_load(args[cfg.args[0]])) in (bool, int, float, str), name
    assert yaml.safe_load(args["artifact"]) is None  # why artifact is typed
    values = {k: getattr(GraspNodeParameters(), k) for k in overrides}
    check_parameters(GraspNodeParameters, {**values, "artifact": args["artifact"],
                                           "force_rebuild": yaml.safe_load(args["force_rebuild"])})
    assert gen["parameters"][0].args == ("params_file",)
    (remap,) = gen["remappings"]
    assert remap[0] == "points" and remap[1].args == ("points_topic",)
    cond = nodes["fake_depth_camera"]["condition"]
    assert type(cond).__name__ == "IfCondition" and cond.args[0].args == ("use_fake_camera",)
    # input:=segmented_cloud: no segmenter, and the fake camera publishes its own segmentation on `points`
    seg = nodes["object_segmenter"]
    test = seg["condition"].args[0]
    assert type(test).__name__ == "NotEqualsSubstitution" and test.args[0].args == ("input",)
    assert test.args[1] == "segmented_cloud"
    assert seg["parameters"][1]["input"].args == ("input",)
    seg_remaps = {src: dst.args[0] for src, dst in seg["remappings"]}
    assert seg_remaps == {"points": "points_topic", "depth/image": "depth_topic",
                          "depth/camera_info": "camera_info_topic", "depth/points": "scene_cloud_topic",
                          "mask": "mask_topic", "clicked_point": "clicked_point_topic"}
    publish = nodes["fake_depth_camera"]["parameters"][1]["publish_segmented"]
    assert type(publish).__name__ == "EqualsSubstitution" and publish.args[1] == "segmented_cloud"
    cam_remaps = {src: dst.args[0] for src, dst in nodes["fake_depth_camera"]["remappings"]}
    assert {k: seg_remaps[k] for k in cam_remaps} == cam_remaps  # the camera feeds the segmenter
    default_params = args["params_file"]
    share, *rest = default_params.args[0]
    assert share.args == ("dvqvae_ros",) and rest == ["config", "grasp_generator.yaml"]


@pytest.mark.skipif(importlib.util.find_spec("launch_ros") is None, reason="launch_ros is not installed (pip path)")
def test_generate_launch_description_with_real_launch() -> None:  # pragma: no cover - needs a ROS 2 install
    description = _load_launch_module().generate_launch_description()
    from launch.actions import DeclareLaunchArgument

    args = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert {"model", "hand_model", "backend", "points_topic", "use_fake_camera", "input"} <= args
    assert len(description.entities) == len(args) + 3


def test_yaml_generation_settings_are_the_shared_defaults() -> None:
    """The node's file and dvqvae-grasp generate use one source of defaults (dvqvae_model.pipeline.defaults)."""
    from dvqvae_model.pipeline.defaults import DEFAULTS

    values = yaml.safe_load(CONFIG.read_text())["grasp_generator"]["ros__parameters"]
    for name in ("num_grasps", "candidates", "ranking", "refine", "refine_steps", "refine_time_ms"):
        assert values[name] == getattr(DEFAULTS, name), name
        assert getattr(GraspNodeParameters(), name) == getattr(DEFAULTS, name), name
