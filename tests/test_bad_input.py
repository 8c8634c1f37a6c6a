"""Broken manifests and stack files: one clear error naming the file and the field, exit 1."""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from scripts.modelctl.cli import main
from tests.conftest import ROOT, edit_yaml

IRIS = "models/iris.yaml"
PROD = "stacks/Pulumi.prod.yaml"


@dataclass(frozen=True)
class Case:
    id: str
    file: str
    breaks: Callable[[Path], None]  # called with the project root
    error: str  # the start of the one error line: "<file>: <field path>: "
    says: str  # a fragment of the message


def data(file: str, change) -> Callable[[Path], None]:
    return lambda root: edit_yaml(root / file, change)


def text(file: str, content: str) -> Callable[[Path], None]:
    return lambda root: (root / file).write_text(content)


def config(key: str, value) -> Callable[[dict], None]:
    def change(document):
        if value is None:
            document["config"].pop(key)
        else:
            document["config"][key] = value

    return change


def with_store(**fields):
    def change(document):
        store = document["config"]["model-serving:objectStore"]
        for name, value in fields.items():
            if value is None:
                store.pop(name)
            else:
                store[name] = value

    return change


def _key(part: str):
    # YAML's `1:` is an int key (published versions).
    return int(part) if part.isdigit() else part


def setitem(path: str, value) -> Callable[[dict], None]:
    def change(document):
        *parents, last = path.split(".")
        node = document
        for part in parents:
            node = node[_key(part)]
        node[_key(last)] = value

    return change


def iris_copy_named(name: str, filename: str) -> Callable[[Path], None]:
    def make(root: Path):
        document = yaml.safe_load((root / IRIS).read_text())
        document["name"] = name
        (root / "models" / filename).write_text(yaml.safe_dump(document))

    return make


def drop(path: str) -> Callable[[dict], None]:
    def change(document):
        *parents, last = path.split(".")
        node = document
        for part in parents:
            node = node[_key(part)]
        del node[_key(last)]

    return change


CASES = [
    Case(
        "wrong type",
        IRIS,
        data(IRIS, setitem("serving.autoscaling.min_replicas", "two")),
        f"{IRIS}: serving.autoscaling.min_replicas: ",
        "valid integer",
    ),
    Case("unknown field", IRIS, data(IRIS, setitem("servng", {})), f"{IRIS}: servng: ", "unknown field"),
    Case(
        "unknown nested field",
        IRIS,
        data(IRIS, setitem("serving.resources.gpus", 1)),
        f"{IRIS}: serving.resources.gpus: ",
        "unknown field",
    ),
    Case(
        "unpublished version served",
        IRIS,
        data(IRIS, setitem("environments.prod.stable", 7)),
        f"{IRIS}: environments.prod.stable: ",
        "Got 7; published versions are 1, 2, 3",
    ),
    Case(
        "unpublished canary",
        IRIS,
        data(IRIS, setitem("environments.dev.canary.version", 9)),
        f"{IRIS}: environments.dev.canary.version: ",
        "published versions are 1, 2, 3",
    ),
    Case(
        "canary weight out of range",
        IRIS,
        data(IRIS, setitem("environments.dev.canary.weight", 100)),
        f"{IRIS}: environments.dev.canary.weight: ",
        "less than or equal to 99",
    ),
    Case(
        "canary on an Ingress stack",
        IRIS,
        data(IRIS, setitem("environments.staging.canary", {"version": 3, "weight": 10})),
        f"{IRIS}: environments.staging.canary: ",
        "routes by Ingress",
    ),
    Case(
        "example request without instances",
        IRIS,
        data(IRIS, setitem("serving.example_request", {"rows": []})),
        f"{IRIS}: serving.example_request: ",
        "needs non-empty `instances`",
    ),
    Case(
        "duplicate model name",
        "models/iris.yml",
        iris_copy_named("iris", "iris.yml"),
        "models/iris.yml: name: ",
        "already defined in models/iris.yaml",
    ),
    Case(
        "bad DNS name",
        "models/Iris_v2.yaml",
        iris_copy_named("Iris_v2", "Iris_v2.yaml"),
        "models/Iris_v2.yaml: name: ",
        "should match pattern",
    ),
    Case(
        "min greater than max",
        IRIS,
        data(IRIS, setitem("serving.autoscaling.min_replicas", 5)),
        f"{IRIS}: serving.autoscaling.min_replicas: ",
        "greater than max_replicas 4",
    ),
    Case(
        "min greater than max after override",
        IRIS,
        data(IRIS, setitem("environments.prod.autoscaling.min_replicas", 9)),
        f"{IRIS}: environments.prod.autoscaling: ",
        "min_replicas 9 is greater than max_replicas 6",
    ),
    Case(
        "YAML syntax error",
        IRIS,
        text(IRIS, "name: iris\nserving: [unclosed\n"),
        f"{IRIS}: <file>: ",
        "invalid YAML at line",
    ),
    Case("empty file", IRIS, text(IRIS, ""), f"{IRIS}: <file>: ", "file is empty"),
    Case("comment-only file", IRIS, text(IRIS, "# nothing here\n"), f"{IRIS}: <file>: ", "file is empty"),
    Case("list instead of mapping", IRIS, text(IRIS, "- name: iris\n"), f"{IRIS}: <file>: ", "expected a mapping"),
    Case(
        "duplicate YAML key",
        IRIS,
        text(IRIS, (ROOT / IRIS).read_text() + "owner: someone@example.com\n"),
        f"{IRIS}: <file>: ",
        "duplicate key 'owner'",
    ),
    Case(
        "file name differs from model name",
        IRIS,
        data(IRIS, setitem("name", "iris-two")),
        f"{IRIS}: name: ",
        "the file name says 'iris'",
    ),
    Case(
        "same version stable and canary",
        IRIS,
        data(IRIS, setitem("environments.dev.canary.version", 3)),
        f"{IRIS}: environments.dev.canary.version: ",
        "the stable version too",
    ),
    Case(
        "malformed digest",
        IRIS,
        data(IRIS, setitem("versions.1.digest", "md5:abc")),
        f"{IRIS}: versions.1.digest: ",
        "should match pattern",
    ),
    Case(
        "version zero",
        IRIS,
        data(IRIS, lambda d: d["versions"].update({0: copy.deepcopy(d["versions"][1])})),  # a copy: no alias
        f"{IRIS}: versions.0: ",
        "Got 0; a version is a whole number from 1 to 2^63-1",
    ),
    Case(
        "invalid promotion goal",
        IRIS,
        data(IRIS, setitem("promotion.goal", "maximise")),
        f"{IRIS}: promotion.goal: ",
        "'maximize' or 'minimize'",
    ),
    Case(
        "invalid owner", IRIS, data(IRIS, setitem("owner", "ml-platform")), f"{IRIS}: owner: ", "should match pattern"
    ),
    Case(
        "unknown environment",
        IRIS,
        data(IRIS, lambda d: d["environments"].update({"prdo": {"stable": 1}})),
        f"{IRIS}: environments.prdo: ",
        "no stack serves environment 'prdo'",
    ),
    Case(
        "bad CPU quantity",
        IRIS,
        data(IRIS, setitem("serving.resources.cpu", "lots")),
        f"{IRIS}: serving.resources.cpu: ",
        "should match pattern",
    ),
    Case(
        "artifact path escapes",
        IRIS,
        data(IRIS, setitem("artifact.path", "../taxi-fare")),
        f"{IRIS}: artifact.path: ",
        "contains an empty, `.` or `..` segment",
    ),
    Case(
        "missing required field",
        IRIS,
        data(IRIS, drop("description")),
        f"{IRIS}: description: ",
        "required field is missing",
    ),
    Case(
        "shared artifact path",
        IRIS,
        data(IRIS, setitem("artifact.path", "pricing/taxi-fare")),
        "models/taxi-fare.yaml: artifact.path: ",
        "already the artifact path of model 'iris'",
    ),
    Case(
        "boolean as string",
        IRIS,
        data(IRIS, setitem("serving.ingress", "yes")),
        f"{IRIS}: serving.ingress: ",
        "valid boolean",
    ),
    Case(
        "negative batch timeout",
        "models/taxi-fare.yaml",
        data("models/taxi-fare.yaml", setitem("serving.batching.batch_timeout_micros", -1)),
        "models/taxi-fare.yaml: serving.batching.batch_timeout_micros: ",
        "greater than or equal to 0",
    ),
    # Stack files
    Case(
        "stack: missing bucket",
        PROD,
        data(PROD, with_store(bucket=None)),
        f"{PROD}: config.model-serving:objectStore.bucket: ",
        "required field is missing",
    ),
    Case(
        "stack: unknown setting",
        PROD,
        data(PROD, config("model-serving:namespce", "models")),
        f"{PROD}: config.model-serving:namespce: ",
        "unknown setting",
    ),
    Case(
        "stack: floating image tag",
        PROD,
        data(
            PROD,
            lambda d: d["config"]["model-serving:images"].update({"serving": "docker.io/tensorflow/serving:latest"}),
        ),
        f"{PROD}: config.model-serving:images.serving: ",
        "never a floating tag",
    ),
    Case(
        "stack: digest required",
        PROD,
        data(PROD, lambda d: d["config"]["model-serving:images"].update({"requireDigest": True})),
        f"{PROD}: config.model-serving:images.serving: ",
        "requires images pinned by digest",
    ),
    Case(
        "contract: unknown dtype",
        IRIS,
        data(IRIS, setitem("versions.2.contract.inputs.petal_length.dtype", "float")),
        f"{IRIS}: versions.2.contract.inputs.petal_length.dtype: ",
        "'float32'",
    ),
    Case(
        "contract: an output with a default",
        IRIS,
        data(IRIS, setitem("versions.2.contract.outputs.species.default", ["setosa"])),
        f"{IRIS}: versions.2.contract.outputs.species.default: ",
        "outputs have no default",
    ),
    Case(
        "contract: empty acknowledgement",
        IRIS,
        data(IRIS, setitem("versions.3.breaking_change_acknowledged", " ")),
        f"{IRIS}: versions.3.breaking_change_acknowledged: ",
        "at least 1 character",
    ),
    Case(
        "protocols without rest",
        IRIS,
        data(IRIS, setitem("serving.protocols", ["grpc"])),
        f"{IRIS}: serving.protocols: ",
        "must list `rest`",
    ),
    Case(
        "unknown protocol",
        IRIS,
        data(IRIS, setitem("environments.prod.protocols", ["rest", "http3"])),
        f"{IRIS}: environments.prod.protocols.1: ",
        "'rest' or 'grpc'",
    ),
    Case(
        "stack: grpc on an ingress stack",
        "stacks/Pulumi.staging.yaml",
        data(
            "stacks/Pulumi.staging.yaml",
            lambda d: d["config"]["model-serving:routing"].update({"grpc": {"listener": "grpc"}}),
        ),
        "stacks/Pulumi.staging.yaml: config.model-serving:routing.grpc: ",
        "needs routing.kind: gateway",
    ),
    Case(
        "stack: grpc listener without a certificate",
        PROD,
        data(PROD, lambda d: d["config"]["model-serving:routing"]["grpc"].pop("tlsSecretName")),
        f"{PROD}: config.model-serving:routing.grpc.tlsSecretName: ",
        "terminates TLS for *.grpc.models.example.com",
    ),
    Case(
        "stack: ingress without class",
        "stacks/Pulumi.staging.yaml",
        data("stacks/Pulumi.staging.yaml", lambda d: d["config"]["model-serving:routing"].pop("ingressClassName")),
        "stacks/Pulumi.staging.yaml: config.model-serving:routing.ingressClassName: ",
        "required when kind is ingress",
    ),
    Case(
        "stack: no cluster named",
        PROD,
        data(PROD, config("model-serving:kubernetes", {})),
        f"{PROD}: config.model-serving:kubernetes: ",
        "refusing to guess the current context",
    ),
    Case(
        "stack: bad namespace",
        PROD,
        data(PROD, config("model-serving:namespace", "Models!")),
        f"{PROD}: config.model-serving:namespace: ",
        "should match pattern",
    ),
    Case(
        "stack: secret setting",
        PROD,
        data(PROD, config("model-serving:namespace", {"secure": "v1:abc"})),
        f"{PROD}: config.model-serving:namespace: ",
        "must not be a secret",
    ),
    Case(
        "stack: YAML syntax error",
        PROD,
        text(PROD, "config:\n  model-serving:namespace: [\n"),
        f"{PROD}: <file>: ",
        "invalid YAML",
    ),
    Case("stack: empty file", PROD, text(PROD, ""), f"{PROD}: <file>: ", "file is empty"),
    Case(
        "stack: key without namespace",
        PROD,
        data(PROD, config("namespace", "models")),
        f"{PROD}: config.namespace: ",
        "config keys are namespaced",
    ),
    Case(
        "stack: bad endpoint",
        PROD,
        data(PROD, with_store(endpoint="minio:9000")),
        f"{PROD}: config.model-serving:objectStore.endpoint: ",
        "should match pattern",
    ),
    Case(
        "stack: port out of range",
        PROD,
        data(PROD, with_store(port=70000)),
        f"{PROD}: config.model-serving:objectStore.port: ",
        "less than or equal to 65535",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_broken_input_gives_one_clear_error(project, capsys, case):
    case.breaks(project)
    assert main(["--root", str(project), "validate"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.endswith("error(s)")]
    assert len(lines) == 1, err
    assert lines[0].startswith(case.error), err
    assert case.says in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", CASES[:3] + CASES[-5:], ids=[c.id for c in CASES[:3] + CASES[-5:]])
def test_plan_of_broken_input_declares_nothing_and_exits_1(project, capsys, case, tmp_path):
    case.breaks(project)
    out = tmp_path / "render"
    assert main(["--root", str(project), "plan", "--stack", "prod", "--render", str(out)]) == 1
    captured = capsys.readouterr()
    assert case.error in captured.err
    assert not out.exists(), "nothing rendered from invalid input"


def test_there_are_at_least_twenty_distinct_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 20


def test_errors_are_all_reported_at_once(project, capsys):
    CASES[0].breaks(project)
    CASES[-3].breaks(project)  # prod stack
    edit_yaml(project / "models" / "taxi-fare.yaml", setitem("owner", "nobody"))
    assert main(["--root", str(project), "validate"]) == 1
    err = capsys.readouterr().err
    assert "3 error(s)" in err
    assert err.index("models/iris.yaml") < err.index("models/taxi-fare.yaml") < err.index("stacks/")


def test_the_console_command_prints_no_traceback(project):
    (project / IRIS).write_text("name: [")
    result = subprocess.run(
        [sys.executable, "-m", "scripts.modelctl.cli", "--root", str(project), "validate"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"{IRIS}: <file>: invalid YAML")
    assert "Traceback" not in result.stderr


def test_a_bad_command_line_exits_1(capsys):
    assert _exit_code(["plan"]) == 1
    assert "--stack" in capsys.readouterr().err
    assert _exit_code(["frobnicate"]) == 1
    assert main(["--root", "/nonexistent/dir", "validate"]) == 1
    assert main(["--root", str(ROOT), "plan", "--stack", "qa"]) == 1
    assert "stacks/Pulumi.qa.yaml: <file>: no such stack file" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["promote", "iris", "--env", "dev", "--version", "0"], "argument --version: Got 0; a version is a whole"),
        (["publish", "iris", "x", "--stack", "dev", "--version", str(2**63)], f"Got {2**63}; a version is"),
        (["promote", "iris", "--env", "dev", "--version", "two"], "argument --version: 'two' is not a whole number"),
        (["retrain", "taxi-fare", "--env", "local", "--jobs", "0"], "argument --jobs: 0: at least 1"),
        (["plan", "--all-stacks", "--jobs", "3"], "argument --jobs: invalid choice: 3"),
    ],
)
def test_a_bad_number_on_the_command_line_is_named(capsys, argv, message):
    assert _exit_code(argv) == 1
    assert message in capsys.readouterr().err


def _exit_code(argv) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code
