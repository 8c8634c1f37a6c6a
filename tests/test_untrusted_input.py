"""Hostile input from a pull request: every cap and containment rule gives one clear error
naming the file, in bounded time, with no traceback and nothing read outside the root."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.spec import yamlio
from infra.spec.errors import ConfigError
from infra.spec.manifest import MAX_MANIFEST_BYTES_TOTAL, MAX_MANIFESTS
from infra.spec.settings import MAX_STACKS
from infra.spec.yamlio import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES, check_events, parse_yaml
from scripts.modelctl.cli import main
from tests.conftest import ROOT

IRIS = "models/iris.yaml"
# Generous: these inputs took minutes (or never ended) before the caps; the caps make them
# milliseconds. The bound only has to tell "bounded" from "runs away" on a slow CI runner.
BOUNDED_SECONDS = 20
SECRET = "outside-the-repository-7f3a"


def validate(project: Path, capsys) -> tuple[int, list[str], float]:
    """`modelctl validate` in-process: exit code, the error lines (without the count), seconds."""
    started = time.monotonic()
    code = main(["--root", str(project), "validate"])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    return code, [line for line in err.splitlines() if not line.endswith("error(s)")], elapsed


def one_error(project: Path, capsys, starts: str, says: str) -> str:
    code, lines, elapsed = validate(project, capsys)
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(starts), lines
    assert says in lines[0], lines
    assert SECRET not in lines[0], "nothing from outside the root reaches the output"
    assert elapsed < BOUNDED_SECONDS, f"took {elapsed:.1f} s"
    return lines[0]


def billion_laughs(levels: int = 10, width: int = 10) -> str:
    """`a` is `width` strings, each next anchor `width` aliases of the previous: width^levels values."""
    names = [chr(ord("a") + i) for i in range(levels)]
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['lol'] * width)}]"]
    for previous, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [{', '.join([f'*{previous}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_is_refused_fast_naming_the_file(project, capsys):
    (project / IRIS).write_text(billion_laughs())
    line = one_error(project, capsys, f"{IRIS}: <file>: ", "anchors and aliases are not accepted")
    assert "line 1" in line


def test_a_billion_laughs_in_a_stack_file_is_refused_too(project, capsys):
    stack = project / "stacks" / "Pulumi.prod.yaml"
    stack.write_text(stack.read_text() + billion_laughs().replace("a:", "lol-a:", 1))
    one_error(project, capsys, "stacks/Pulumi.prod.yaml: <file>: ", "anchors and aliases are not accepted")


def test_a_list_nested_20000_deep_is_refused_naming_the_file(project, capsys):
    (project / IRIS).write_text("name: " + "[" * 20_000 + "]" * 20_000 + "\n")
    one_error(project, capsys, f"{IRIS}: <file>: ", f"nested more than {MAX_DEPTH} levels deep")


def test_deep_nesting_prints_no_traceback_from_the_console_command(project):
    (project / IRIS).write_text("- " * 20_000 + "x\n")
    result = subprocess.run(
        [sys.executable, "-m", "scripts.modelctl.cli", "--root", str(project), "validate"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"{IRIS}: <file>: nested more than {MAX_DEPTH} levels deep"), result.stderr
    assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr


def test_a_60_mb_manifest_is_refused_before_it_is_read(project, capsys, monkeypatch):
    with (project / IRIS).open("wb") as handle:
        handle.truncate(60 * 1024 * 1024)  # sparse: 60 MB of NULs without writing them
    opened: dict[int, str] = {}
    ever_opened: list[str] = []
    read = []
    real_open, real_read = os.open, os.read

    def recording_open(path, flags):
        descriptor = real_open(path, flags)
        opened[descriptor] = str(path)  # descriptors are reused: the latest open is the one read
        ever_opened.append(str(path))
        return descriptor

    monkeypatch.setattr(yamlio.os, "open", recording_open)
    monkeypatch.setattr(yamlio.os, "read", lambda fd, n: read.append(opened[fd]) or real_read(fd, n))
    one_error(project, capsys, f"{IRIS}: <file>: ", f"the limit is {MAX_FILE_BYTES} bytes")
    assert str(project / IRIS) in ever_opened
    assert str(project / IRIS) not in read, "the size is checked on the open file before reading any of it"


def test_a_file_that_grows_past_the_cap_is_read_no_further(tmp_path, monkeypatch):
    path = tmp_path / "x.yaml"
    path.write_bytes(b"a: b\n")
    # fstat says small, the content says otherwise: as if the file grew after fstat.
    real_fstat = os.fstat

    class Small:
        def __init__(self, info):
            self.st_mode, self.st_size = info.st_mode, 5

    monkeypatch.setattr(yamlio.os, "fstat", lambda fd: Small(real_fstat(fd)))
    path.write_bytes(b"#" * (MAX_FILE_BYTES + 4096))
    with pytest.raises(ConfigError) as caught:
        yamlio.read_bounded(path, "models/x.yaml")
    assert "more than" in str(caught.value) and str(caught.value).startswith("models/x.yaml: <file>: ")


def test_a_manifest_just_under_the_size_cap_is_read(tmp_path):
    path = tmp_path / "big.yaml"
    padding = "# " + "x" * 1000 + "\n"
    text = "name: iris\n" + padding * ((MAX_FILE_BYTES - 20) // len(padding))
    path.write_text(text)
    assert len(text) <= MAX_FILE_BYTES
    assert yamlio.read_yaml(path, "models/big.yaml") == {"name": "iris"}


def test_a_symlinked_manifest_outside_the_repository_is_refused_by_name(project, capsys, tmp_path):
    outside = tmp_path / "outside.yaml"
    outside.write_text(f"name: {SECRET}\n")
    (project / "models" / "x.yaml").symlink_to(outside)
    one_error(project, capsys, "models/x.yaml: <file>: ", "symbolic link resolving outside the repository")


def test_a_symlink_inside_the_repository_is_followed(project, capsys):
    (project / "shared").mkdir()
    (project / "models" / "iris.yaml").rename(project / "shared" / "iris.yaml")
    (project / "models" / "iris.yaml").symlink_to(Path("..") / "shared" / "iris.yaml")
    code, lines, _ = validate(project, capsys)
    assert code == 0, lines


@pytest.mark.parametrize("directory", ["models", "stacks", "policy"])
def test_a_symlinked_directory_outside_the_repository_is_refused(project, capsys, tmp_path, directory):
    outside = tmp_path / "elsewhere"
    if (project / directory).exists():
        (project / directory).rename(outside)
    else:
        outside.mkdir()
    (project / directory).symlink_to(outside)
    one_error(project, capsys, f"{directory}/: <file>: ", "symbolic link resolving outside the repository")


def test_a_link_out_of_the_policy_pack_is_refused_by_name(project, capsys, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (project / "policy" / "config").mkdir(parents=True)
    (project / "policy" / "config" / "prod.json").symlink_to(tmp_path / "config.json")
    one_error(project, capsys, "policy/config/prod.json: <file>: ", "symbolic link resolving outside")


def test_a_stack_file_linked_outside_is_refused_by_name(project, capsys, tmp_path):
    stack = project / "stacks" / "Pulumi.prod.yaml"
    stack.rename(tmp_path / "prod.yaml")
    stack.symlink_to(tmp_path / "prod.yaml")
    one_error(project, capsys, "stacks/Pulumi.prod.yaml: <file>: ", "symbolic link resolving outside")


def test_a_stack_name_is_never_a_path(project, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(project), "plan", "--stack", "../../etc/passwd"])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "is not a stack name" in err and "Traceback" not in err


def test_a_fifo_named_like_a_manifest_does_not_hang_the_reader(project, capsys):
    os.mkfifo(project / "models" / "x.yaml")
    one_error(project, capsys, "models/x.yaml: <file>: ", "not a regular file")


def test_more_manifests_than_the_cap_is_one_error_naming_the_directory(project, capsys):
    for number in range(MAX_MANIFESTS + 1):
        (project / "models" / f"m{number}.yaml").write_text("name: x\n")
    one_error(project, capsys, "models/: <file>: ", f"more than {MAX_MANIFESTS} manifests")


def test_manifests_over_the_total_size_cap_stop_the_reading(project, capsys):
    padding = ("# " + "x" * 1000 + "\n") * ((MAX_FILE_BYTES - 4096) // 1004)
    count = MAX_MANIFEST_BYTES_TOTAL // len(padding) + 1
    for number in range(count):
        (project / "models" / f"pad{number:03}.yaml").write_text(padding)
    code, lines, elapsed = validate(project, capsys)
    assert code == 1 and elapsed < BOUNDED_SECONDS
    total = [line for line in lines if "together, the limit" in line]
    assert len(total) == 1 and total[0].startswith("models/pad"), lines


def test_more_stacks_than_the_cap_is_one_error(project, capsys):
    for number in range(MAX_STACKS + 1):
        (project / "stacks" / f"Pulumi.s{number}.yaml").write_text("config: {}\n")
    one_error(project, capsys, "stacks/: <file>: ", f"more than {MAX_STACKS} stack files")


def test_the_depth_cap_is_exact():
    check_events("[" * MAX_DEPTH + "]" * MAX_DEPTH, "x.yaml")
    with pytest.raises(ConfigError, match=f"nested more than {MAX_DEPTH} levels deep"):
        check_events("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "x.yaml")


def test_the_node_cap_is_exact():
    check_events("[" + ", ".join(["0"] * (MAX_NODES - 1)) + "]", "x.yaml")
    with pytest.raises(ConfigError, match=f"more than {MAX_NODES} YAML nodes"):
        check_events("[" + ", ".join(["0"] * MAX_NODES) + "]", "x.yaml")


def test_an_anchor_alone_is_refused_with_its_position():
    with pytest.raises(ConfigError) as caught:
        parse_yaml("a: 1\nb: &here {c: 2}\n", "models/x.yaml")
    assert str(caught.value) == (
        "models/x.yaml: <file>: YAML anchor &here at line 2, column 4: anchors and aliases are not accepted "
        "here; write the value out"
    )


def test_a_merge_key_needs_an_alias_and_is_refused():
    with pytest.raises(ConfigError, match="anchors and aliases"):
        parse_yaml("base: &b {x: 1}\nderived:\n  <<: *b\n", "models/x.yaml")


def test_an_integer_of_5000_digits_is_a_clear_error(project, capsys):
    text = (project / IRIS).read_text().replace("min_replicas: 2", "min_replicas: " + "9" * 5000, 1)
    (project / IRIS).write_text(text)
    one_error(project, capsys, f"{IRIS}: <file>: ", "more than 4300 digits")


@pytest.mark.parametrize(
    ("path", "says"),
    [("/srv/iris", "is absolute"), ("iris/../taxi", "`..` segment"), ("iris//1", "empty"), ("./iris", "`.`")],
)
def test_an_artifact_path_that_leaves_the_prefix_is_refused(project, capsys, path, says):
    text = (project / IRIS).read_text().replace("path: iris", f"path: {path!r}", 1)
    (project / IRIS).write_text(text)
    line = one_error(project, capsys, f"{IRIS}: artifact.path: ", says)
    assert "under the stack's objectStore.prefix" in line


def test_an_object_store_prefix_with_dot_segments_is_refused(project, capsys):
    stack = project / "stacks" / "Pulumi.prod.yaml"
    text = stack.read_text()
    assert "prefix: " in text
    stack.write_text(text.replace("prefix: ", "prefix: ../", 1))
    one_error(project, capsys, "stacks/Pulumi.prod.yaml: config.model-serving:objectStore.prefix: ", "`..`")


def test_a_version_key_is_never_built_outside_the_prefix():
    from infra.platform.object_store import StoreError, version_prefix

    assert version_prefix("models", "iris", 2) == "models/iris/2/"
    for prefix, path in (("models", "../iris"), ("models/..", "iris"), ("models", "/iris")):
        with pytest.raises(StoreError, match="refusing to build a key"):
            version_prefix(prefix, path, 1)


class _Run:
    """The two things render() asks of an offline run."""

    def __init__(self, objects):
        self.objects = objects

    def kubernetes_objects(self):
        return self.objects

    def by_urn(self):
        return {}


class _Resource:
    def __init__(self, kind: str, name: str):
        self.parent = None
        self.object = {"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", "/etc/passwd", "UPPER"])
def test_render_refuses_a_name_that_is_not_a_plain_file_name(tmp_path, name):
    from scripts.modelctl.render import RenderError, render

    out = tmp_path / "render"
    with pytest.raises(RenderError, match="is not a plain file name"):
        render(_Run([_Resource("ConfigMap", name)]), out)
    assert not any(p.is_file() and p.name != ".modelctl-render" for p in tmp_path.rglob("*"))


def test_render_writes_plain_names_inside_the_directory(tmp_path):
    from scripts.modelctl.render import render

    written = render(_Run([_Resource("ConfigMap", "iris-config-1a2b")]), tmp_path / "render")
    assert written == [tmp_path / "render" / "configmap-iris-config-1a2b.yaml"]


@pytest.mark.parametrize("base", ["--output=OUT", "-p", "--upload-pack=touch OUT"])
def test_a_base_that_looks_like_a_git_option_is_refused(tmp_path, capsys, base):
    marker = tmp_path / "written-by-git"
    base = base.replace("OUT", str(marker))
    assert main(["--root", str(ROOT), "plan", "--stack", "local", f"--base={base}"]) == 1
    err = capsys.readouterr().err
    assert "not a git revision" in err and "Traceback" not in err
    assert not marker.exists()


def test_a_base_is_resolved_to_a_commit_before_git_sees_it_again():
    from scripts.modelctl.snapshot import RevisionError, resolve_commit

    head = resolve_commit(ROOT, "HEAD")
    assert len(head) == 40 and int(head, 16) >= 0
    with pytest.raises(RevisionError, match="not a commit"):
        resolve_commit(ROOT, "no-such-branch-3f1c")


def test_what_reaches_the_fetch_script_is_validated_tokens_only(runs):
    # The init container runs a shell script with the served versions as arguments and the
    # store's location in its environment: only patterns no shell or path can misread.
    import re

    from infra.model.workload import FETCHER_CONTAINER

    seen = 0
    for run in runs.values():
        for resource in run.kubernetes_objects():
            if resource.object["kind"] != "Deployment":
                continue
            for container in resource.object["spec"]["template"]["spec"].get("initContainers", []):
                if container["name"] != FETCHER_CONTAINER:
                    continue
                seen += 1
                args, env = container["args"], {e["name"]: e.get("value") for e in container["env"]}
                if "MODEL_SOURCE" not in env:
                    # A serving pool's fetcher: its member list (a file of the pool's ConfigMap,
                    # written by the program), then `MODEL@VERSION=DIGEST` with model names that
                    # are DNS labels (infra/model/pool.py fetch_args).
                    assert args[0] == "/etc/tfserving/fetch.list"
                    pattern = r"[a-z]([-a-z0-9]*[a-z0-9])?@[1-9][0-9]*=sha256:[0-9a-f]{64}"
                    assert len(args) > 1 and all(re.fullmatch(pattern, arg) for arg in args[1:])
                    continue
                assert all(re.fullmatch(r"[1-9][0-9]*=sha256:[0-9a-f]{64}", arg) for arg in args)
                assert re.fullmatch(r"s3://[a-z0-9.-]+(/[A-Za-z0-9!_.*'()-]+)+", env["MODEL_SOURCE"])
                assert ".." not in env["MODEL_SOURCE"].split("/")
    assert seen >= len(runs)


def test_the_program_in_a_real_preview_refuses_a_link_out_of_the_repository(project, tmp_path):
    import pulumi

    from infra import program
    from infra.offline import OfflineRun, run_stack

    # `local` checks no artifacts, so the link is the only thing wrong.
    declared = OfflineRun(stack="local")
    run_stack(project, "local", entry=program.main, into=declared)
    assert declared.resources
    (tmp_path / "rules.py").write_text("# not ours\n")
    (project / "policy").mkdir()
    (project / "policy" / "rules.py").symlink_to(tmp_path / "rules.py")
    declared = OfflineRun(stack="local")
    with pytest.raises(pulumi.RunError):
        run_stack(project, "local", entry=program.main, into=declared)
    assert declared.resources == [], "nothing declared"


def test_the_containment_walk_lists_what_os_walk_lists_in_its_order(tmp_path):
    """`links_outside` walks with directory entries (a Path asks the system again per file, once
    per stack of a fleet's plan); what it visits, and in which order (the MAX_WALKED_ENTRIES cap
    cuts at a position), is os.walk's without following links."""
    from infra.spec.paths import OUTSIDE, _entries, links_outside

    top = tmp_path / "policy"
    (top / "a" / "deep").mkdir(parents=True)
    (top / "b").mkdir()
    (top / "a" / "deep" / "x.yaml").write_text("x")
    (top / "b" / "y.py").write_text("y")
    (top / "z.txt").write_text("z")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    (outside / "inner").mkdir(parents=True)
    (top / "a" / "out").symlink_to(outside)  # a link to a directory outside: reported, not entered
    (top / "b" / "in.py").symlink_to(top / "z.txt")
    expected = [
        os.path.join(directory, name)
        for directory, subdirectories, files in os.walk(top, followlinks=False)
        for name in subdirectories + files
    ]
    assert [entry.path for entry in _entries(str(top))] == expected
    problems = links_outside(tmp_path, ("policy",))
    assert [(p.file, p.message) for p in problems] == [("policy/a/out", OUTSIDE)]
