"""Shared fixtures: synthetic phantoms (always) and real OpenKBP patients (skipped when absent)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MAMBADOSE_OPENKBP_DATA", REPO.parent / "shared" / "data"))


def load_script(path: Path) -> ModuleType:
    """A script that is not in a package (benchmarks/*.py, a Slicer module file) loaded as a module
    named after its file; its ``if __name__ == "__main__"`` block does not run. Its folder is on
    ``sys.path`` while it loads, as when it runs as a script, so it can import its neighbours."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def run_script(path: Path, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a script (benchmarks/*.py) with this Python, its arguments as strings, the output captured
    as text; the caller checks the return code."""
    return subprocess.run(
        [sys.executable, str(path), *map(str, args)], capture_output=True, encoding="utf-8", timeout=timeout
    )


def _unpacked_openkbp(tmp_root: Path, pattern: str) -> Path:
    """Unpack the OpenKBP archives matching ``pattern`` once per session; skip when absent."""
    archives = sorted(SHARED_DATA.glob(pattern)) if SHARED_DATA.is_dir() else []
    if not archives:
        pytest.skip(f"OpenKBP data not found in {SHARED_DATA} (set MAMBADOSE_OPENKBP_DATA)")
    out = tmp_root / "openkbp"
    out.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        stamp = out / (archive.name + ".done")
        if not stamp.exists():
            # tar (xz) is several times faster than Python's tarfile for these archives
            subprocess.run(["tar", "xJf", str(archive), "-C", str(out)], check=True)
            stamp.touch()
    return out


@pytest.fixture(scope="session")
def openkbp_validation_dir(tmp_path_factory) -> Path:
    """Folder holding the 33 real validation patients (``pt_201`` ...); skips when data is absent."""
    root = _unpacked_openkbp(tmp_path_factory.getbasetemp(), "openkbp-validation-pats-*.tar.xz")
    return root / "validation-pats"


@pytest.fixture(scope="session")
def openkbp_train_dir(tmp_path_factory) -> Path:
    """Folder holding the 169 real training patients (``pt_1`` ...); skips when data is absent."""
    root = _unpacked_openkbp(tmp_path_factory.getbasetemp(), "openkbp-train-pats-*.tar.xz")
    return root / "train-pats"


@pytest.fixture(scope="session")
def openkbp_patient_dir(openkbp_validation_dir) -> Path:
    """One real patient folder (the first validation patient)."""
    folders = sorted(openkbp_validation_dir.glob("pt_*"), key=lambda p: int(p.name.split("_")[1]))
    return folders[0]
