"""Containment: nothing outside the repository is read because a file under it says so.

A pull request controls what `models/`, `stacks/` and `policy/` hold, symbolic links
included; git stores a link as its target text, so `models/x.yaml -> /etc/passwd` or a
`stacks -> /home/runner` link arrives with a checkout. Every path we read from those
directories must resolve inside the root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from infra.spec.errors import ConfigError, ErrorItem

# Directories whose content a pull request controls and that the tools read.
CONTAINED_DIRS = ("models", "stacks", "policy")
# A directory walk is bounded too: the policy pack is a handful of files.
MAX_WALKED_ENTRIES = 10_000

OUTSIDE = "symbolic link resolving outside the repository; refusing to read it"


def is_inside(root: Path, path: Path) -> bool:
    """Does `path`, with every symbolic link resolved, lie under `root` (also resolved)?"""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a link loop: not somewhere we will read
        return False


def display_of(root: Path, path: Path) -> str:
    """`models/x.yaml` for `<root>/models/x.yaml`, without resolving links."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def require_inside(root: Path, path: Path, display: str | None = None) -> None:
    """Raise a ConfigError naming `path` unless it (and each link on the way) resolves under `root`."""
    if not is_inside(root, path):
        raise ConfigError([ErrorItem(display or display_of(root, path), "", OUTSIDE)])


def links_outside(root: Path, directories: tuple[str, ...] = CONTAINED_DIRS) -> list[ErrorItem]:
    """Every symbolic link under `directories` (the directories themselves included) that resolves
    outside `root`, by name. Links are not followed while walking, so a link to a directory
    outside is reported, not entered."""
    errors = []
    walked = 0
    for name in directories:
        top = root / name
        if top.is_symlink() and not is_inside(root, top):
            errors.append(ErrorItem(f"{name}/", "", OUTSIDE))
            continue
        if not top.is_dir():
            continue
        for entry in _entries(str(top)):
            walked += 1
            if walked > MAX_WALKED_ENTRIES:
                errors.append(
                    ErrorItem(f"{name}/", "", f"more than {MAX_WALKED_ENTRIES} files and directories; the limit")
                )
                return errors
            if entry.is_symlink():
                path = Path(entry.path)
                if not is_inside(root, path):
                    errors.append(ErrorItem(display_of(root, path), "", OUTSIDE))
    return errors


def _entries(top: str) -> Iterator[os.DirEntry[str]]:
    """Everything under `top` in `os.walk(top, followlinks=False)`'s order (per directory, its
    subdirectories then its files; then each subdirectory that is not a link), as directory
    entries: whether one is a link comes with the listing (d_type), where a Path would ask the
    system again for each of a fleet's thousand manifests, once per stack of a plan."""
    try:
        with os.scandir(top) as listing:
            entries = list(listing)
    except OSError:  # os.walk's default: a directory that cannot be listed is skipped
        return

    def is_directory(entry: os.DirEntry[str]) -> bool:
        try:
            return entry.is_dir()
        except OSError:
            return False

    directories = [entry for entry in entries if is_directory(entry)]
    yield from directories
    yield from (entry for entry in entries if not is_directory(entry))
    for entry in directories:
        if not entry.is_symlink():
            yield from _entries(entry.path)
