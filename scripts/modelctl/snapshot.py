"""What a revision's program declares per stack: run in-process, or from a git worktree in a subprocess.

The base of a plan is computed with the base revision's own `infra/` code, so a pull
request that changes the program is planned honestly; the head is the working tree.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from infra.offline import DeclaredResource, OfflineRun
from infra.spec.errors import ConfigError, ErrorItem

DRIVER = Path(__file__).with_name("snapshot_driver.py")


class RevisionError(Exception):
    """A revision could not be planned (bad ref, broken program, invalid input)."""


@dataclass
class Snapshot:
    """Offline runs of some stacks of one revision."""

    label: str
    runs: dict[str, OfflineRun]
    # Whether the runs declared only the models asked for (`only_models`) or every model.
    subset: bool = False


def _code_root() -> Path:
    import infra

    return Path(infra.__file__).resolve().parent.parent


def take(
    root: Path,
    stacks: Sequence[str],
    label: str = "working tree",
    short_lived: bool = False,
    only_models: Collection[str] | None = None,
) -> Snapshot:
    """Run the program of the tree at `root` for `stacks`.

    In-process when `root` holds the code this process runs; otherwise in a subprocess
    that imports `root`'s own `infra/`. `short_lived`: see `run_stack`. `only_models`: the
    platform and only these models (the plan's incremental mode); `Snapshot.subset` says
    whether the program could.
    """
    if root.resolve() == _code_root():
        from infra.offline import run_stack

        runs = {stack: run_stack(root, stack, short_lived=short_lived, only_models=only_models) for stack in stacks}
        return Snapshot(label, runs, subset=only_models is not None)
    return _take_in_subprocess(root, stacks, label, only_models)


def _take_in_subprocess(
    root: Path, stacks: Sequence[str], label: str, only_models: Collection[str] | None = None
) -> Snapshot:
    with tempfile.TemporaryDirectory(prefix="modelctl-snapshot-") as scratch:
        output = Path(scratch) / "snapshot.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULUMI_CONFIG")}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        subset = []
        if only_models is not None:
            (Path(scratch) / "only-models.json").write_text(json.dumps(sorted(only_models)))
            subset = ["--only-models", str(Path(scratch) / "only-models.json")]
        # `--`: a stack name is validated where it is found (stack_names), and is still never
        # read as an option (argparse: "--" ends the options, Python docs, argparse "Arguments
        # containing -").
        result = subprocess.run(
            [sys.executable, str(DRIVER), "--root", str(root), "--output", str(output), *subset, "--", *stacks],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        if result.returncode != 0 or not output.is_file():
            detail = result.stderr.strip().splitlines()[-1:] or ["no output"]
            raise RevisionError(f"{label}: the program failed: {detail[0]}")
        document = json.loads(output.read_text())
    if document.get("errors"):
        raise ConfigError([ErrorItem(f"{label}: {e['file']}", e["field"], e["message"]) for e in document["errors"]])
    return snapshot_from_document(label, document)


def snapshot_from_document(label: str, document: dict) -> Snapshot:
    """A Snapshot from the snapshot driver's JSON document (also what the plan cache keeps)."""
    runs = {}
    for stack, data in document["stacks"].items():
        resources = [DeclaredResource(**_known_fields(r)) for r in data["resources"]]
        served = data.get("served_models")
        runs[stack] = OfflineRun(
            stack=stack,
            resources=resources,
            outputs=data["outputs"],
            served_models=tuple(served) if served is not None else None,
        )
    return Snapshot(label, runs, subset=bool(document.get("subset")))


def _known_fields(record: dict) -> dict:
    """Fill fields an older revision's records may lack."""
    record = dict(record)
    record.setdefault("provider", None)
    record.setdefault("state", record.get("inputs", {}))
    record["dependencies"] = tuple(record.get("dependencies", ()))
    record.setdefault("remote", False)
    record.setdefault("providers", {})
    fields = (
        "urn",
        "type",
        "name",
        "parent",
        "custom",
        "provider",
        "inputs",
        "state",
        "dependencies",
        "remote",
        "providers",
    )
    return {k: record[k] for k in fields}


def resolve_commit(repo: Path, ref: str) -> str:
    """The commit `ref` names in `repo`, as 40 hex digits; a RevisionError otherwise.

    `ref` is passed to git as an argument, so a value starting with `-` would be read as an
    option (`--output=<file>` makes `git diff` write a file): it is refused, and git is told
    where its options end (`--end-of-options`, git 2.24+, Documentation/gitcli.txt). Every
    later git call gets the resolved hash, never the text that was given.
    """
    if not ref or ref.startswith("-") or any(c in ref for c in "\0\n\r"):
        raise RevisionError(f"base {ref!r}: not a git revision (a revision never starts with '-')")
    commit = git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}")
    if commit is None or not re.fullmatch(r"[0-9a-f]{40}([0-9a-f]{24})?", commit):
        raise RevisionError(f"base {ref}: not a commit in {repo}")
    return commit


def of_revision(repo: Path, ref: str, stacks: Sequence[str], only_models: Collection[str] | None = None) -> Snapshot:
    """Run the program of revision `ref` of the git repository at `repo` (a temporary worktree);
    `only_models`: see `take`."""
    label = f"base {ref}"
    commit = resolve_commit(repo, ref)
    prefix = git(repo, "rev-parse", "--show-prefix") or ""
    with tempfile.TemporaryDirectory(prefix="modelctl-base-") as scratch:
        worktree = Path(scratch) / "tree"
        if git(repo, "worktree", "add", "--detach", "--quiet", str(worktree), commit) is None:
            raise RevisionError(f"{label}: cannot create a git worktree")
        try:
            root = worktree / prefix
            available = [s for s in stacks if (root / "stacks" / f"Pulumi.{s}.yaml").is_file()]
            snapshot = (
                _take_in_subprocess(root, available, label, only_models)
                if available
                else Snapshot(label, {}, subset=only_models is not None)
            )
            # A stack added by the change has no base: everything in it is a create.
            for stack in stacks:
                snapshot.runs.setdefault(stack, OfflineRun(stack=stack))
            return snapshot
        finally:
            git(repo, "worktree", "remove", "--force", str(worktree))
            git(repo, "worktree", "prune")


def runs_here(root: Path) -> bool:
    """Does this process run the program of the tree at `root`?"""
    return root.resolve() == _code_root()


def of_revision_here(
    repo: Path, ref: str, stacks: Sequence[str], only_models: Collection[str] | None = None
) -> Snapshot:
    """Plan revision `ref`'s manifests and stacks with this process's program: only for a caller
    that knows the revision's program is this one, file for file (the incremental plan). Its
    files come from `git archive`, without a worktree or a second interpreter importing Pulumi."""
    from infra.offline import run_stack

    label = f"base {ref}"
    prefix = git(repo, "rev-parse", "--show-prefix") or ""
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", f"{resolve_commit(repo, ref)}:{prefix}".rstrip(":")],
        capture_output=True,
    )
    if archive.returncode != 0:
        raise RevisionError(f"{label}: cannot read its files: {archive.stderr.decode(errors='replace').strip()}")
    with tempfile.TemporaryDirectory(prefix="modelctl-base-") as scratch:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as files:
            files.extractall(scratch, filter="data")
        runs = {
            stack: run_stack(Path(scratch), stack, short_lived=True, only_models=only_models)
            for stack in stacks
            if (Path(scratch) / "stacks" / f"Pulumi.{stack}.yaml").is_file()
        }
    for stack in stacks:
        runs.setdefault(stack, OfflineRun(stack=stack))
    return Snapshot(label, runs, subset=only_models is not None)


def changed_files(repo: Path, ref: str) -> set[str]:
    """Paths (relative to `repo`) that differ between `ref` and the working tree, untracked included."""
    changed = git(repo, "diff", "--name-only", "--relative", resolve_commit(repo, ref), "--") or ""
    untracked = git(repo, "ls-files", "--others", "--exclude-standard") or ""
    return {line for line in (changed + "\n" + untracked).splitlines() if line}


def git(repo: Path, *args: str) -> str | None:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else None
