"""Which plan a change gets, and why: incremental (only model manifests changed, so only those
models and the serving pools holding them can differ between base and head) or full (the
change touches the program, a stack file or the requirements). `scripts/modelctl/incremental.py`
plans the incremental mode.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from infra.spec.manifest import MANIFEST_SUFFIXES, MODELS_DIR
from scripts.modelctl import snapshot

INCREMENTAL = "incremental"
FULL = "full"
# Paths that cannot change what the program declares: modelctl and the training code (the plan
# runs the head's modelctl for both sides), the policy pack (it checks what is declared, and
# the checks always run on whole stacks), tests, docs, CI, what `make` and the plan write
# (build/, the plan cache's default home) and the repository's own files. Any
# other path is the program's (infra/, __main__.py, Pulumi.yaml, requirements*.txt,
# pyproject.toml, stacks/, and whatever is added later), so changing it runs the full plan.
DECLARES_NOTHING_DIRS = ("scripts/", "policy/", "tests/", "docs/", ".github/", ".ci/", "build/")
DECLARES_NOTHING_FILES = (".gitignore", "Makefile", "LICENSE")
SHOWN_PATHS = 3


@dataclass(frozen=True)
class Tree:
    """The files of one side of a change that the program may read, by path relative to the
    project root, each with its git blob id (a content hash)."""

    blobs: Mapping[str, str]

    def manifests(self) -> dict[str, str]:
        """Model name -> blob of each manifest (`models/<name>.yaml`, the files
        `load_manifests` reads; the file name is the model's name)."""
        found = {}
        for path, blob in self.blobs.items():
            folder, _, file = path.rpartition("/")
            if folder == MODELS_DIR and Path(file).suffix in MANIFEST_SUFFIXES:
                found[Path(file).stem] = blob
        return found

    def program(self) -> dict[str, str]:
        """Every other file that may shape what is declared (see DECLARES_NOTHING_*)."""
        return {path: blob for path, blob in self.blobs.items() if shapes_program(path)}

    def program_digest(self) -> str:
        return hashlib.sha256(repr(sorted(self.program().items())).encode()).hexdigest()


def shapes_program(path: str) -> bool:
    """Can a change to `path` change what the program declares, other than through one model?"""
    if path.startswith(DECLARES_NOTHING_DIRS) or path in DECLARES_NOTHING_FILES:
        return False
    if "/" not in path and path.endswith(".md"):
        return False
    # The program reads models/<name>.yaml only (not subfolders, not the JSON Schema).
    return not path.startswith(f"{MODELS_DIR}/")


@dataclass(frozen=True)
class Scope:
    """Which plan runs, and why (the plan output says both)."""

    mode: str
    reason: str
    changed_models: frozenset[str] = frozenset()
    base: Tree | None = None
    head: Tree | None = None

    @property
    def incremental(self) -> bool:
        return self.mode == INCREMENTAL

    def describe(self) -> str:
        return f"{self.mode} plan: {self.reason}"


def full(reason: str, base: Tree | None = None, head: Tree | None = None) -> Scope:
    return Scope(FULL, reason, base=base, head=head)


def scope_of_change(root: Path, base_ref: str, allow_incremental: bool = True) -> Scope:
    """Classify the change from `base_ref` to the working tree at `root`."""
    commit = snapshot.git(root, "rev-parse", "--verify", "--quiet", f"{base_ref}^{{commit}}")
    if commit is None:
        return full(f"{base_ref} is not a commit")
    base, head = tree_of_commit(root, commit), tree_of_working_tree(root)
    if base is None or head is None:
        return full("the files of the base or the head could not be listed", base, head)
    if not allow_incremental:
        return full("asked for (--full)", base, head)
    changed_paths = sorted(p for p in set(base.program().items()) ^ set(head.program().items()))
    program_paths = sorted({path for path, _ in changed_paths})
    if program_paths:
        shown = ", ".join(program_paths[:SHOWN_PATHS])
        more = f" and {len(program_paths) - SHOWN_PATHS} more" if len(program_paths) > SHOWN_PATHS else ""
        return full(f"the change touches the program, the stack files or the requirements ({shown}{more})", base, head)
    before, after = base.manifests(), head.manifests()
    changed = frozenset(m for m in set(before) | set(after) if before.get(m) != after.get(m))
    named = ", ".join(sorted(changed)[:SHOWN_PATHS]) + (
        f" and {len(changed) - SHOWN_PATHS} more" if len(changed) > SHOWN_PATHS else ""
    )
    what = f"only model manifests changed ({named})" if changed else "no model manifest changed"
    return Scope(
        INCREMENTAL,
        f"{what}; the program, stack files and requirements are the base's, so only "
        f"{'these models, the serving pools holding them and ' if changed else ''}"
        "the platform are planned on both sides",
        changed,
        base,
        head,
    )


def tree_of_commit(root: Path, commit: str) -> Tree | None:
    """The files of `commit` under the project root (`git ls-tree` lists paths relative to it)."""
    listing = snapshot.git(root, "ls-tree", "-r", "-z", commit)
    if listing is None:
        return None
    blobs = {}
    for entry in listing.split("\0"):
        if entry:
            meta, path = entry.split("\t", 1)
            blobs[path] = meta.split()[2]
    return Tree(blobs)


def tree_of_working_tree(root: Path) -> Tree | None:
    """The working tree's files, hashed as git hashes blobs: tracked and untracked files that
    git does not ignore, and every manifest whatever git thinks of it (the program reads each
    `models/*.yaml`). A file git would store differently (a clean filter, a symlink) hashes
    differently here: it counts as changed, the safe direction."""
    listing = snapshot.git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    if listing is None:
        return None
    paths = {p for p in listing.split("\0") if p}
    models = root / MODELS_DIR
    if models.is_dir():
        paths |= {f"{MODELS_DIR}/{p.name}" for p in models.iterdir() if p.suffix in MANIFEST_SUFFIXES}
    blobs = {}
    for path in paths:
        try:
            content = (root / path).read_bytes()
        except OSError:
            continue  # deleted in the working tree, or a directory (a submodule)
        blobs[path] = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    return Tree(blobs)
