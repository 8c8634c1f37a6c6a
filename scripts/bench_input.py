"""`make bench-input`: what hostile or huge input costs `modelctl validate` (the input bounds).

Each case is a throwaway copy of the project with one change, validated by `modelctl
validate` in a fresh process; the figures are that process's wall time and peak resident
memory (ru_maxrss from wait4), imports included. Cases above the caps must be refused fast;
cases just under them show the worst a pull request can make us spend.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from infra.spec.manifest import MAX_MANIFEST_BYTES_TOTAL, MAX_MANIFESTS
from infra.spec.yamlio import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES

ROOT = Path(__file__).resolve().parent.parent
IRIS = "models/iris.yaml"


def copy_project(destination: Path) -> Path:
    for name in ("models", "stacks"):
        shutil.copytree(ROOT / name, destination / name)
    shutil.copy(ROOT / "Pulumi.yaml", destination / "Pulumi.yaml")
    return destination


def run_validate(root: Path) -> tuple[float, float, int, str]:
    """Seconds, peak MiB, exit code and the first output line of `modelctl validate` on `root`."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.modelctl.cli", "--root", str(root), "validate"],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    first = output.splitlines()[0] if output else ""
    return seconds, usage.ru_maxrss / 1024, process.returncode, first


# Above the caps: each must be one clear error, fast. ----------------------------------------------


def billion_laughs(root: Path) -> None:
    names = [chr(ord("a") + i) for i in range(10)]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['lol'] * 10)}]"]
    lines += [f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]" for p, n in itertools.pairwise(names)]
    (root / IRIS).write_text("\n".join(lines) + "\n")


def nested_20000(root: Path) -> None:
    (root / IRIS).write_text("name: " + "[" * 20_000 + "]" * 20_000 + "\n")


def manifest_60_mb(root: Path) -> None:
    with (root / IRIS).open("wb") as handle:
        handle.write(b"name: iris\ndescription: '")
        block = b"x" * (1 << 20)
        for _ in range(60):
            handle.write(block)
        handle.write(b"'\n")


def too_many_manifests(root: Path) -> None:
    for number in range(MAX_MANIFESTS + 1):
        (root / "models" / f"m{number}.yaml").write_text("name: x\n")


# Just under the caps: the worst that is still read in full. ---------------------------------------


def flat_list_under_caps(root: Path) -> None:
    """One manifest of MAX_NODES - 10 scalars filling almost 1 MiB (validation refuses it)."""
    count = MAX_NODES - 10
    scalar = "x" * (MAX_FILE_BYTES // count - 4)
    text = "name: iris\nlabels:\n" + "".join(f"- {scalar}\n" for _ in range(count))
    assert len(text.encode()) <= MAX_FILE_BYTES
    (root / IRIS).write_text(text)


def mapping_under_caps(root: Path) -> None:
    """One manifest with MAX_NODES / 2 - 10 unknown keys: one validation error each."""
    count = MAX_NODES // 2 - 10
    width = MAX_FILE_BYTES // count - 6
    text = "".join(f"k{i:0{width}d}: 1\n" for i in range(count))
    assert len(text.encode()) <= MAX_FILE_BYTES
    (root / IRIS).write_text(text)


def deep_under_caps(root: Path) -> None:
    """Nesting at the depth cap, as many times as the node cap allows."""
    one = "[" * (MAX_DEPTH - 2) + "0" + "]" * (MAX_DEPTH - 2)  # under `x:` and the outer list
    repeat = min((MAX_FILE_BYTES - 64) // (len(one) + 2), MAX_NODES // MAX_DEPTH - 1)
    (root / IRIS).write_text("name: iris\nx: [" + ", ".join([one] * repeat) + "]\n")


def project_under_caps(root: Path) -> None:
    """MAX_MANIFESTS valid manifests together just under MAX_MANIFEST_BYTES_TOTAL."""
    iris = yaml.safe_load((root / IRIS).read_text())
    for path in (root / "models").glob("*.yaml"):
        path.unlink()
    budget = (MAX_MANIFEST_BYTES_TOTAL - 64 * 1024) // MAX_MANIFESTS
    for number in range(MAX_MANIFESTS):
        name = f"model{number:03d}"
        document = dict(iris, name=name, artifact={"path": name})
        base = yaml.safe_dump(document, sort_keys=False)
        document["description"] = "x" * max(1, budget - len(base) - 32)
        (root / "models" / f"{name}.yaml").write_text(yaml.safe_dump(document, sort_keys=False, width=1 << 30))


CASES: list[tuple[str, Callable[[Path], None] | None]] = [
    ("the repository as it is", None),
    ("billion laughs (10 nested aliases)", billion_laughs),
    ("list nested 20,000 deep", nested_20000),
    ("60 MB manifest", manifest_60_mb),
    (f"{MAX_MANIFESTS + 1} manifests", too_many_manifests),
    (f"1 MiB list of {MAX_NODES - 10} scalars", flat_list_under_caps),
    (f"1 MiB mapping of {MAX_NODES // 2 - 10} unknown keys", mapping_under_caps),
    (f"nesting {MAX_DEPTH} deep up to the node cap", deep_under_caps),
    (f"{MAX_MANIFESTS} valid manifests, {MAX_MANIFEST_BYTES_TOTAL >> 20} MiB in all", project_under_caps),
]


def main() -> int:
    print(
        f"modelctl validate, one fresh process per case (imports included). Caps: {MAX_FILE_BYTES >> 10} KiB "
        f"per file, depth {MAX_DEPTH}, {MAX_NODES} nodes per file, no anchors/aliases, "
        f"{MAX_MANIFESTS} manifests, {MAX_MANIFEST_BYTES_TOTAL >> 20} MiB of manifests."
    )
    print(f"{'case':<44} {'seconds':>8} {'peak MiB':>9} {'exit':>5}  first line of output")
    for label, change in CASES:
        with tempfile.TemporaryDirectory(prefix="bench-input-") as scratch:
            root = copy_project(Path(scratch) / "project")
            if change is not None:
                change(root)
            seconds, peak, code, first = run_validate(root)
        shown = first if len(first) <= 90 else first[:87] + "..."
        print(f"{label:<44} {seconds:>8.2f} {peak:>9.0f} {code:>5}  {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
