"""Copying this project's files into a throwaway directory (the demo, the benchmark, tests)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def copy_project_files(names: Iterable[str], destination: Path) -> None:
    """Copy each top-level file or folder of `names` from the repository to `destination`,
    without Python's bytecode caches."""
    for name in names:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, destination / name)
