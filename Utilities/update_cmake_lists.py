"""Regenerate the two module CMakeLists.txt from the files present (run from the repo root)."""

from pathlib import Path

MODELS = (
    "MambaUNetV2_OpenKBP.safetensors",
    "MambaUNetV2_OpenKBP.json",
    "MambaUNetV2_OpenKBP_ensemble.safetensors",
    "MambaUNetV2_OpenKBP_ensemble.json",
    "MambaUNetV2_OpenKBP_dvh.safetensors",
    "MambaUNetV2_OpenKBP_dvh.json",
)


def py_files(module: str, lib: str) -> list[str]:
    root = Path(module)
    files = sorted(
        p.relative_to(root).as_posix() for p in (root / lib).rglob("*.py") if "__pycache__" not in p.parts
    )
    return [f"{module}.py", *files]


def resources(module: str) -> list[str]:
    root = Path(module)
    return sorted(p.relative_to(root).as_posix() for p in (root / "Resources").rglob("*") if p.is_file())


def block(name: str, items: list[str]) -> str:
    return f"set({name}\n" + "".join(f"  {i}\n" for i in items) + "  )\n"


def write(module: str, lib: str, models: bool) -> None:
    text = "#-----------------------------------------------------------------------------\n"
    text += f"set(MODULE_NAME {module})\n\n"
    text += "#-----------------------------------------------------------------------------\n"
    text += f"# The module script and every file of its library package ({lib}).\n"
    text += block("MODULE_PYTHON_SCRIPTS", py_files(module, lib)) + "\n"
    text += block("MODULE_PYTHON_RESOURCES", resources(module))
    if models:
        text += "\n# The shipped models (weights + model cards), installed where weights.default_model_path() looks.\n"
        text += block("MODULE_MODEL_FILES", [f"../Resources/Models/{m}" for m in MODELS])
        text += "foreach(_model_file ${MODULE_MODEL_FILES})\n"
        text += "  if(EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${_model_file})\n"
        text += "    list(APPEND MODULE_PYTHON_RESOURCES ${_model_file})\n"
        text += "  endif()\n"
        text += "endforeach()\n"
    text += "\n#-----------------------------------------------------------------------------\n"
    text += "slicerMacroBuildScriptedModule(\n  NAME ${MODULE_NAME}\n  SCRIPTS ${MODULE_PYTHON_SCRIPTS}\n"
    text += "  RESOURCES ${MODULE_PYTHON_RESOURCES}\n  WITH_GENERIC_TESTS\n  )\n\n"
    text += "#-----------------------------------------------------------------------------\n"
    text += "if(BUILD_TESTING)\n  # Register the unittest subclass in the main script as a ctest.\n"
    text += "  slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)\nendif()\n"
    Path(module, "CMakeLists.txt").write_text(text)


write("MambaDosePrediction", "MambaDoseLib", True)
write("MambaDoseTraining", "MambaDoseTrainingLib", False)
