"""The extension's CMake files: Slicer's extension template, and file lists that match the tree.

Each module's MODULE_PYTHON_SCRIPTS must name exactly its script and every ``.py`` of its library
package, and MODULE_PYTHON_RESOURCES exactly the files under its ``Resources`` folder (globbed
now, so a file added without updating the list fails). The shipped model files are named
explicitly and added only when present.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = {"MambaDosePrediction": "MambaDoseLib", "MambaDoseTraining": "MambaDoseTrainingLib"}
MODEL_DIR = ROOT / "Resources" / "Models"
SHIPPED_MODEL = (
    "MambaUNetV2_OpenKBP.safetensors",
    "MambaUNetV2_OpenKBP.json",
    "MambaUNetV2_OpenKBP_ensemble.safetensors",
    "MambaUNetV2_OpenKBP_ensemble.json",
    "MambaUNetV2_OpenKBP_dvh.safetensors",
    "MambaUNetV2_OpenKBP_dvh.json",
)

_COMMAND = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(((?:[^()\"]|\"[^\"]*\")*)\)", re.S)
_ARG = re.compile(r'"[^"]*"|[^\s"]+')


def cmake_commands(path: Path) -> list[tuple[str, list[str]]]:
    """(command name lower-cased, arguments) in file order; comments removed, quotes kept."""
    text = "\n".join(
        re.sub(r'#(?=(?:[^"]*"[^"]*")*[^"]*$).*', "", line) for line in path.read_text().splitlines()
    )
    return [(m.group(1).lower(), _ARG.findall(m.group(2))) for m in _COMMAND.finditer(text)]


def cmake_sets(path: Path) -> dict[str, list[str]]:
    return {args[0]: args[1:] for name, args in cmake_commands(path) if name == "set"}


def library_files(module: str, library: str) -> set[str]:
    root = ROOT / module
    return {
        p.relative_to(root).as_posix() for p in (root / library).rglob("*.py") if "__pycache__" not in p.parts
    }


def resource_files(module: str) -> set[str]:
    root = ROOT / module
    return {p.relative_to(root).as_posix() for p in (root / "Resources").rglob("*") if p.is_file()}


def test_top_level_follows_the_extension_template():
    commands = cmake_commands(ROOT / "CMakeLists.txt")
    names = [name for name, _ in commands]
    assert names[0] == "cmake_minimum_required"
    assert ("project", ["MambaDose"]) in commands
    sets = cmake_sets(ROOT / "CMakeLists.txt")
    for var in (
        "HOMEPAGE",
        "CATEGORY",
        "CONTRIBUTORS",
        "DESCRIPTION",
        "ICONURL",
        "SCREENSHOTURLS",
        "DEPENDS",
    ):
        assert sets.get(f"EXTENSION_{var}"), f"EXTENSION_{var} is not set"
    assert sets["EXTENSION_DEPENDS"] == ['"NA"']  # SlicerRT / PyTorch are optional, found at run time
    assert "research" in " ".join(sets["EXTENSION_DESCRIPTION"]).lower()
    order = [
        ("find_package", ["Slicer", "REQUIRED"]),
        ("include", ["${Slicer_USE_FILE}"]),
        ("add_subdirectory", ["MambaDosePrediction"]),
        ("add_subdirectory", ["MambaDoseTraining"]),
        ("include", ["${Slicer_EXTENSION_GENERATE_CONFIG}"]),
        ("include", ["${Slicer_EXTENSION_CPACK}"]),
    ]
    positions = [commands.index(c) for c in order]
    assert positions == sorted(positions)
    assert names.index("project") < positions[0]


@pytest.mark.parametrize(("module", "library"), MODULES.items())
def test_module_lists_exactly_the_files_present(module, library):
    path = ROOT / module / "CMakeLists.txt"
    sets = cmake_sets(path)
    assert sets["MODULE_NAME"] == [module]
    scripts = sets["MODULE_PYTHON_SCRIPTS"]
    assert scripts[0] == f"{module}.py"
    assert len(scripts) == len(set(scripts)), "a script is listed twice"
    assert set(scripts) == {f"{module}.py"} | library_files(module, library)
    resources = sets["MODULE_PYTHON_RESOURCES"]
    assert set(resources) == resource_files(module)
    for name in scripts + resources:
        assert (ROOT / module / name).is_file(), name
    assert f"Resources/Icons/{module}.png" in resources


@pytest.mark.parametrize("module", MODULES)
def test_module_uses_the_scripted_module_macros(module):
    commands = cmake_commands(ROOT / module / "CMakeLists.txt")
    build = next(args for name, args in commands if name == "slicermacrobuildscriptedmodule")
    assert build == [
        "NAME",
        "${MODULE_NAME}",
        "SCRIPTS",
        "${MODULE_PYTHON_SCRIPTS}",
        "RESOURCES",
        "${MODULE_PYTHON_RESOURCES}",
        "WITH_GENERIC_TESTS",
    ]
    names = [name for name, _ in commands]
    test_at = names.index("slicer_add_python_unittest")
    assert commands[test_at][1] == ["SCRIPT", "${MODULE_NAME}.py"]
    assert ("if", ["BUILD_TESTING"]) in commands[:test_at]


def test_prediction_module_ships_the_model_files_when_present():
    path = ROOT / "MambaDosePrediction" / "CMakeLists.txt"
    listed = cmake_sets(path)["MODULE_MODEL_FILES"]
    assert listed == [f"../Resources/Models/{name}" for name in SHIPPED_MODEL]
    present = {p.name for p in MODEL_DIR.glob("*") if p.is_file()} if MODEL_DIR.is_dir() else set()
    assert present <= set(SHIPPED_MODEL), f"model files not listed in CMake: {present - set(SHIPPED_MODEL)}"
    text = path.read_text()
    # each listed file is appended to the resources only if it exists
    assert "if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${_model_file})" in text
    assert "list(APPEND MODULE_PYTHON_RESOURCES ${_model_file})" in text


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_icons_are_pngs_of_the_expected_size():
    assert _png_size(ROOT / "Resources" / "Icons" / "MambaDose.png") == (128, 128)
    for module in MODULES:
        width, height = _png_size(ROOT / module / "Resources" / "Icons" / f"{module}.png")
        assert width == height and width >= 64


def test_requirements_are_the_core_dependencies_without_torch():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    lines = [
        line.split("#", 1)[0].strip()
        for line in (ROOT / "MambaDosePrediction" / "Resources" / "requirements.txt").read_text().splitlines()
    ]
    requirements = [line for line in lines if line]
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert set(requirements) <= set(dependencies)
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in requirements}
    assert "torch" not in names  # PyTorch comes from SlicerPyTorch's PyTorchUtils
    # what Slicer does not bundle must be listed
    needed = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower() for d in dependencies} - {
        "torch",
        "numpy",
        "simpleitk",
    }
    assert names == needed
