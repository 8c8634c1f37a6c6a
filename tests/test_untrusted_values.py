"""Untrusted values in manifests, stack files and on the command line (issue 21): YAML keys
that are collections, versions past TF-Serving's int64, non-finite numbers, stack names that
read as options, Kubernetes annotation and label keys. Each is one error naming the file and
the field, exit 1, no traceback, nothing declared."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from infra.spec.errors import ConfigError
from infra.spec.yamlio import parse_yaml
from scripts.modelctl.cli import main
from tests.conftest import ROOT, edit_yaml
from tests.test_untrusted_input import IRIS, one_error, validate


def cli(project: Path, *argv: str) -> subprocess.CompletedProcess:
    """The console command in its own process: what a CI job runs."""
    return subprocess.run(
        [sys.executable, "-m", "scripts.modelctl.cli", "--root", str(project), *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


PROD = "stacks/Pulumi.prod.yaml"
KIND = "stacks/Pulumi.kind.yaml"


@pytest.mark.parametrize(
    ("file", "appended", "starts", "says"),
    [
        (IRIS, "? [a, b]\n: 1\n", f"{IRIS}: <file>: ", "a sequence as a mapping key at line"),
        (IRIS, "? {a: 1}\n: 1\n", f"{IRIS}: <file>: ", "a mapping as a mapping key at line"),
        (IRIS, "{[a]: 1}\n", f"{IRIS}: <file>: ", "a sequence as a mapping key"),
        # Under `config:`, whose keys are indented by two.
        (PROD, "  ? {a: 1}\n  : 2\n", f"{PROD}: config: ", "a mapping as a mapping key at line"),
    ],
    ids=["sequence key", "mapping key", "flow key", "key in a stack file"],
)
def test_a_collection_as_a_mapping_key_is_named(project, capsys, file, appended, starts, says):
    if appended.startswith("{"):
        (project / file).write_text(appended)
    else:
        (project / file).write_text((project / file).read_text() + appended)
    one_error(project, capsys, starts, says)


def test_a_collection_key_deep_inside_names_its_field():
    with pytest.raises(ConfigError) as exc:
        parse_yaml("a:\n- x: 1\n- y: 2\n  ? [k]\n  : 1\n", "f.yaml")
    assert [str(e) for e in exc.value.errors] == [
        "f.yaml: a.1: a sequence as a mapping key at line 4, column 5: keys are plain values (a name or a number)"
    ]


def test_a_collection_key_prints_no_traceback_from_the_console_command(project):
    (project / IRIS).write_text((project / IRIS).read_text() + "? [a, b]\n: 1\n")
    result = cli(project, "validate")
    assert result.returncode == 1
    assert result.stderr.startswith(f"{IRIS}: <file>: a sequence as a mapping key"), result.stderr
    assert "Traceback" not in result.stderr


def _set(path: str, value):
    def change(document):
        *parents, last = path.split(".")
        node = document
        for part in parents:
            node = node[int(part) if part.isdigit() else part]
        node[int(last) if last.isdigit() else last] = value

    return change


def _publish_as(version: int):
    def change(document):
        document["versions"][version] = copy.deepcopy(document["versions"][3])

    return change


BIG = 2**63
FINITE = "not a finite number"
BAD_INPUT = [
    # Versions: TF-Serving's int64 (infra/spec/validators.py).
    ("published version", IRIS, _publish_as(BIG), f"{IRIS}: versions.{BIG}: ", f"Got {BIG}; a version is"),
    ("stable", IRIS, _set("environments.prod.stable", BIG), f"{IRIS}: environments.prod.stable: ", "2^63-1"),
    (
        "canary",
        IRIS,
        _set("environments.dev.canary", {"version": BIG}),
        f"{IRIS}: environments.dev.canary.version: ",
        "2^63-1",
    ),
    # Non-finite numbers, typed and free-form.
    (
        "metric inf",
        IRIS,
        _set("versions.1.metrics.accuracy", float("inf")),
        f"{IRIS}: versions.1.metrics.accuracy: ",
        FINITE,
    ),
    ("min_delta nan", IRIS, _set("promotion.min_delta", float("nan")), f"{IRIS}: promotion.min_delta: ", FINITE),
    (
        "slo -inf",
        IRIS,
        _set("serving.slo", {"latency_p99_ms": float("-inf")}),
        f"{IRIS}: serving.slo.latency_p99_ms: ",
        FINITE,
    ),
    (
        "example nan",
        IRIS,
        _set("serving.example_request", {"instances": [{"x": float("nan")}]}),
        f"{IRIS}: serving.example_request.instances.0.x: ",
        FINITE,
    ),
    (
        "default inf",
        IRIS,
        _set("versions.1.contract.inputs.petal_width.default", float("inf")),
        f"{IRIS}: versions.1.contract.inputs.petal_width.default: ",
        FINITE,
    ),
    (
        "parameter nan",
        IRIS,
        _set("training.candidates.parameters", {"learning_rate": [float("nan")]}),
        f"{IRIS}: training.candidates.parameters.learning_rate.0: ",
        FINITE,
    ),
    (
        "helm value inf",
        "stacks/Pulumi.kind.yaml",
        _set("config.model-serving:addons.values.metrics-server.x", float("inf")),
        "stacks/Pulumi.kind.yaml: config.model-serving:addons.values.metrics-server.x: ",
        FINITE,
    ),
    # Annotation and label keys and values, as the API server checks them.
    (
        "annotation key",
        PROD,
        _set("config.model-serving:serviceAccountAnnotations.bad key!", "x"),
        f"{PROD}: config.model-serving:serviceAccountAnnotations.bad key!: ",
        "not a Kubernetes qualified name",
    ),
    (
        "annotation name 64",
        PROD,
        _set("config.model-serving:serviceAccountAnnotations", {"example.com/" + "a" * 64: "x"}),
        f"{PROD}: config.model-serving:serviceAccountAnnotations.example.com/",
        "at most 63",
    ),
    (
        "annotation prefix",
        PROD,
        _set("config.model-serving:serviceAccountAnnotations", {"Not_DNS/x": "x"}),
        f"{PROD}: config.model-serving:serviceAccountAnnotations.Not_DNS/x: ",
        "is not a DNS subdomain",
    ),
    (
        "annotation two slashes",
        PROD,
        _set("config.model-serving:serviceAccountAnnotations", {"a/b/c": "x"}),
        f"{PROD}: config.model-serving:serviceAccountAnnotations.a/b/c: ",
        "more than one '/'",
    ),
    (
        "annotations over 256 KiB",
        PROD,
        _set("config.model-serving:serviceAccountAnnotations", {"big": "x" * (256 * 1024)}),
        f"{PROD}: config.model-serving:serviceAccountAnnotations: ",
        "Kubernetes allows 262144",
    ),
    (
        "annotation of the project",
        PROD,
        _set("config.model-serving:serviceAccountAnnotations", {"model-serving.dev/x": "y"}),
        f"{PROD}: config.model-serving:serviceAccountAnnotations.model-serving.dev/x: ",
        "set by this project",
    ),
    (
        "label value",
        PROD,
        _set("config.model-serving:monitoring.selectorLabels.release", "not valid!"),
        f"{PROD}: config.model-serving:monitoring.selectorLabels.release: ",
        "a label value is",
    ),
    (
        "node label key",
        KIND,
        _set("config.model-serving:cluster.nodePools.0.labels", {"-bad": "x"}),
        f"{KIND}: config.model-serving:cluster.nodePools.0.labels.-bad: ",
        "not a Kubernetes qualified name",
    ),
    (
        "label of the project",
        PROD,
        _set("config.model-serving:monitoring.selectorLabels", {"model-serving.dev/model": "x"}),
        f"{PROD}: config.model-serving:monitoring.selectorLabels.model-serving.dev/model: ",
        "set by this project",
    ),
]


@pytest.mark.parametrize(
    ("file", "change", "starts", "says"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT]
)
def test_a_bad_value_is_one_error_naming_file_and_field(project, capsys, file, change, starts, says):
    edit_yaml(project / file, change)
    one_error(project, capsys, starts, says)


def test_the_largest_int64_is_a_version(project, capsys):
    edit_yaml(project / IRIS, _publish_as(BIG - 1))
    edit_yaml(project / IRIS, _set("environments.prod.stable", BIG - 1))
    assert validate(project, capsys)[0] == 0


def test_nodes_may_carry_the_project_labels(project, capsys):
    # Node labels describe what exists (the GPU pool's model-serving.dev/node-pool); only the
    # labels the project merges with its own refuse its prefix.
    labels = {"model-serving.dev/node-pool": "gpu", "Example.com/x": ""}
    edit_yaml(project / KIND, _set("config.model-serving:cluster.nodePools.0.labels", labels))
    assert validate(project, capsys)[0] == 1  # the prefix must be lower case, as a DNS subdomain
    del labels["Example.com/x"]
    edit_yaml(project / KIND, _set("config.model-serving:cluster.nodePools.0.labels", labels))
    assert validate(project, capsys)[0] == 0


def test_a_non_finite_metric_reaches_no_plan(project, tmp_path):
    edit_yaml(project / IRIS, _set("versions.3.metrics.accuracy", float("nan")))
    result = cli(project, "plan", "--stack", "prod", "--format", "json", "--render", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"{IRIS}: versions.3.metrics.accuracy: Got nan; {FINITE}"), result.stderr
    assert "Traceback" not in result.stderr and not result.stdout and not (tmp_path / "out").exists()


def test_a_version_past_int64_on_the_command_line_prints_no_traceback(project):
    result = cli(project, "promote", "iris", "--env", "dev", "--version", str(BIG))
    assert result.returncode == 1
    assert f"argument --version: Got {BIG}; a version is a whole number from 1 to 2^63-1" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_bad_annotation_key_prints_no_traceback_from_the_console_command(project):
    edit_yaml(project / PROD, _set("config.model-serving:serviceAccountAnnotations.-bad", "x"))
    result = cli(project, "validate")
    assert result.returncode == 1
    assert result.stderr.startswith(f"{PROD}: config.model-serving:serviceAccountAnnotations.-bad: not a Kubernetes")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["validate"], ["plan", "--all-stacks"]])
def test_a_stack_file_named_like_an_option_is_refused_naming_it(project, command):
    (project / "stacks" / "Pulumi.--output.yaml").write_text((project / PROD).read_text())
    result = cli(project, *command)
    assert result.returncode == 1
    assert result.stderr.startswith("stacks/Pulumi.--output.yaml: <file>: '--output' is not a stack name: it starts"), (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert not (ROOT / "--output").exists() and not (project / "--output").exists()


@pytest.mark.parametrize("stack", ["--output", "-p", "a" * 101, "", "a b"])
def test_a_stack_argument_that_is_not_a_stack_name_is_refused(capsys, stack):
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(ROOT), "plan", f"--stack={stack}"])
    assert exc.value.code == 1
    assert "argument --stack: " in capsys.readouterr().err


def test_stacks_reach_the_snapshot_subprocess_after_its_options(monkeypatch, tmp_path):
    from scripts.modelctl import snapshot

    seen = []

    def run(argv, **kwargs):
        seen.append(argv)
        return subprocess.CompletedProcess(argv, 1, "", "stopped here")

    monkeypatch.setattr(snapshot.subprocess, "run", run)
    with pytest.raises(snapshot.RevisionError):
        snapshot._take_in_subprocess(tmp_path, ["prod", "-weird"], "base")
    assert seen[0][-3:] == ["--", "prod", "-weird"]


@pytest.mark.parametrize(
    "text", ['{"accuracy": NaN}', '{"accuracy": Infinity}', '{"accuracy": -Infinity}', '{"accuracy": 1e999}']
)
def test_publish_refuses_non_finite_metrics_before_uploading(tmp_path, text):
    # read_metrics runs before Publisher.publish: a version whose metrics the manifest would
    # refuse is never uploaded first.
    from infra.platform.object_store import StoreError
    from scripts.modelctl.savedmodel_prep import read_metrics

    (tmp_path / "metrics.json").write_text(text)
    with pytest.raises(StoreError, match=r"metrics\.json: .*(not a number|not a finite number)"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.json").write_text('{"accuracy": 0.97, "loss": 1}')
    assert read_metrics(tmp_path) == {"accuracy": 0.97, "loss": 1.0}


@pytest.mark.parametrize(
    "owner", ["team`x@example.com", "team\x1b[2J@example.com", "#team@example.com", "a@b", "a@-b.com", "a b@c.com"]
)
def test_an_owner_that_is_not_a_plain_address_is_refused(project, owner):
    # `owner` reaches CODEOWNERS, where `#` starts a comment, and the plan and the catalog.
    from infra.spec.errors import ConfigError
    from infra.spec.manifest import load_manifests

    edit_yaml(project / "models" / "iris.yaml", lambda document: document.update(owner=owner))
    with pytest.raises(ConfigError) as raised:
        load_manifests(project)
    assert [(e.file, e.field) for e in raised.value.errors] == [("models/iris.yaml", "owner")]


def test_plain_team_addresses_are_owners(project):
    from infra.spec.manifest import load_manifests

    owner = "ml-platform+models@corp.example.co.uk"
    edit_yaml(project / "models" / "iris.yaml", lambda document: document.update(owner=owner))
    assert {m.owner for m in load_manifests(project) if m.name == "iris"} == {owner}
