"""The layout is the architecture: imports flow one way and the model library stays ROS- and training-free.

Walks the source of the installed packages (found through their import specs, so an installed copy
is checked as it is installed), collects every import statement (module level and inside functions:
a lazy import is still a dependency) and fails on any import cycle, between modules or between the
subpackages that hold them, and on any ``dvqvae_model`` import of ROS, training or export code.
"""
from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

PACKAGES = ("dvqvae_model", "dvqvae_ros", "dvqvae_training", "dvqvae_export")
ROS_PREFIXES = ("rclpy", "rcl_interfaces", "builtin_interfaces", "launch", "launch_ros", "ament_index_python",
                "sensor_msgs_py", "tf2_ros")
ROS_SUFFIXES = ("_msgs", "_srvs")


def _modules() -> dict[str, Path]:
    """Every module of the installed packages: dotted name -> file."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        spec = importlib.util.find_spec(pkg)
        assert spec is not None and spec.submodule_search_locations, f"{pkg} is not importable"
        root = Path(list(spec.submodule_search_locations)[0])
        for f in sorted(root.rglob("*.py")):
            rel = f.relative_to(root).with_suffix("")
            parts = [pkg, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Absolute names imported by module ``name`` (a ``from pkg import sub`` names the submodule)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                found.add(sub if sub in known else mod)
    return found


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between project modules, every import of each project module)."""
    mods = _modules()
    known = set(mods)
    everything = {m: _imports(m, p, known) for m, p in mods.items()}
    edges = {m: {i for i in imps if i in known and i != m} for m, imps in everything.items()}
    return edges, everything


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _package_of(module: str, edges: dict[str, set[str]]) -> str:
    """The folder a module lives in: ``dvqvae_model.runtime.backends`` -> ``dvqvae_model.runtime``."""
    parts = module.split(".")
    is_pkg = any(m.startswith(module + ".") for m in edges)
    return module if is_pkg else ".".join(parts[:-1]) or module


def test_no_import_cycle_between_modules() -> None:
    edges, _ = _graph()
    assert len(edges) > 60, f"the walk found only {len(edges)} modules"
    assert _cycles(edges) == []


def test_no_import_cycle_between_subpackages() -> None:
    """The folders say which way the data flows: no two subpackages import each other, even indirectly."""
    edges, _ = _graph()
    folders: dict[str, set[str]] = {}
    for m, targets in edges.items():
        src = _package_of(m, edges)
        for t in targets:
            dst = _package_of(t, edges)
            # a package __init__ naming its own children is not a dependency of the folder on itself
            if dst != src and not dst.startswith(src + ".") and not src.startswith(dst + "."):
                folders.setdefault(src, set()).add(dst)
    assert _cycles(folders) == []


def test_model_library_imports_no_ros_training_or_export_code() -> None:
    _, everything = _graph()
    bad = {}
    for m, imps in everything.items():
        if not m.startswith("dvqvae_model"):
            continue
        wrong = sorted(i for i in imps
                       if i.split(".")[0] in ("dvqvae_ros", "dvqvae_training", "dvqvae_export", "training", "export")
                       or i.split(".")[0] in ROS_PREFIXES or i.split(".")[0].endswith(ROS_SUFFIXES))
        if wrong:
            bad[m] = wrong
    assert bad == {}


@pytest.mark.parametrize("module", ["dvqvae_ros.grasp_cli", "dvqvae_ros.grasp_files"])
def test_grasp_cli_generate_path_imports_no_ros(module: str) -> None:
    """``dvqvae-grasp generate`` runs without ROS: its modules import none (the demo module may)."""
    edges, everything = _graph()
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen or m == "dvqvae_ros.grasp_demo":  # entered only by the demo subcommand
            continue
        seen.add(m)
        todo.extend(edges.get(m, ()))
    ros = sorted({i for m in seen for i in everything[m]
                  if i.split(".")[0] in ROS_PREFIXES or i.split(".")[0].endswith(ROS_SUFFIXES)})
    assert ros == [], f"{module} reaches ROS modules {ros} through {sorted(seen)}"


def test_the_walk_sees_what_it_checks() -> None:
    """The checker itself: it finds a planted cycle and the known ROS imports of the node."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    _, everything = _graph()
    assert any(i.split(".")[0] == "rclpy" for i in everything["dvqvae_ros.grasp_node"])
    assert "dvqvae_model.runtime.backends" in everything["dvqvae_model.pipeline.generator"] or \
        "dvqvae_model.runtime" in everything["dvqvae_model.pipeline.generator"]


def _setup_kwargs() -> dict:
    """The keyword arguments setup.py passes to setuptools.setup (run with setup() captured)."""
    import os
    import runpy

    import setuptools

    repo = Path(__file__).resolve().parents[1]
    captured: dict = {}
    real = setuptools.setup
    setuptools.setup = lambda **kw: captured.update(kw)  # type: ignore[assignment]
    cwd = Path.cwd()
    try:
        os.chdir(repo)
        runpy.run_path(str(repo / "setup.py"))
    finally:
        os.chdir(cwd)
        setuptools.setup = real  # type: ignore[assignment]
    return captured


def test_tensorrt_extra_is_pinned_to_the_torch_release() -> None:
    """The 'tensorrt' extra pins the Torch-TensorRT series that pairs with the pinned torch: an open bound
    resolved to 2.14, which needs torch 2.14 and moved torch off its pin. Declared (setup.py) and installed
    (the distribution's metadata: rerun `make setup` after changing the extras) must say the same."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    from dvqvae_model.runtime.artifacts import tensorrt_requirement

    repo = Path(__file__).resolve().parents[1]
    torch_pin = next(line.split("==", 1)[1].strip() for line in (repo / "requirements.txt").read_text().splitlines()
                     if line.startswith("torch=="))
    expected = Requirement(tensorrt_requirement(torch_pin))
    assert str(expected) == "torch-tensorrt==2.13.*" and torch_pin.startswith("2.13")
    declared = [Requirement(r) for r in _setup_kwargs()["extras_require"]["tensorrt"]]
    assert [(r.name, str(r.specifier)) for r in declared] == [(expected.name, str(expected.specifier))]
    installed = [Requirement(r) for r in requires("dvqvae_ros") or []]
    trt = [r for r in installed if r.name == "torch-tensorrt"]
    assert len(trt) == 1, installed
    assert str(trt[0].specifier) == str(expected.specifier) and str(trt[0].marker) == 'extra == "tensorrt"'
    # the pin admits the paired release and nothing newer or older
    assert trt[0].specifier.contains("2.13.0") and trt[0].specifier.contains("2.13.1")
    assert not trt[0].specifier.contains("2.14.0") and not trt[0].specifier.contains("2.10.0")
    import torch

    assert tensorrt_requirement(torch.__version__) == str(expected), "the installed torch is not the pinned one"


def test_setup_installs_every_package_folder() -> None:
    """A real install carries every subpackage (and the assets), not only what a work tree has."""
    repo = Path(__file__).resolve().parents[1]
    captured = _setup_kwargs()
    installed = set(captured["packages"])
    names = {"dvqvae_model": "dvqvae_model", "dvqvae_ros": "dvqvae_ros", "training": "dvqvae_training",
             "export": "dvqvae_export"}
    wanted = set()
    for folder, name in names.items():
        for init in (repo / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(repo / folder).parts
            wanted.add(".".join((name, *rel)))
    assert wanted - installed == set()
    assert captured["package_dir"] == {"dvqvae_training": "training", "dvqvae_export": "export"}
    assert "assets/default_model/*" in captured["package_data"]["dvqvae_model"]
