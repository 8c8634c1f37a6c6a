"""The repository's shell scripts, for shellcheck: one list for `make lint` and the tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Interpreters shellcheck checks (its `--shell` choices); a script names one in its shebang.
SHELLS = {"sh", "bash", "dash", "ksh"}


def is_shell_script(path: Path) -> bool:
    """Named `*.sh`, or a shebang naming a shell directly or through `env` (`.ci/run`)."""
    if path.suffix == ".sh":
        return True
    with path.open("rb") as file:
        first_line = file.readline(200)
    if not first_line.startswith(b"#!"):
        return False
    words = first_line[2:].decode(errors="replace").split()
    if words and Path(words[0]).name == "env":
        words = words[1:]
    return bool(words) and Path(words[0]).name in SHELLS


def shell_scripts(root: Path = ROOT) -> list[Path]:
    """Every tracked or new (not ignored) shell script, relative to `root`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    # Regular files only: skips a .venv symlink and tracked files deleted in the work tree.
    paths = (root / name for name in listed.split("\0") if name)
    return sorted(p.relative_to(root) for p in paths if p.is_file() and not p.is_symlink() and is_shell_script(p))


if __name__ == "__main__":
    print("\n".join(str(path) for path in shell_scripts()))
