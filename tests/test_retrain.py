"""`modelctl retrain` end to end against an S3 server on loopback: the README's worked example as a new
model, parallel candidates, crashing and diverging candidates, the re-measured champion; and the
report and pull-request body as snapshots."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import pytest
import yaml

from infra.platform.object_store import version_prefix
from scripts.modelctl.cli import main
from scripts.modelctl.localstore import TEST_CREDENTIALS
from scripts.modelctl.retrain import (
    CandidateOutcome,
    ChampionOutcome,
    RetrainReport,
    pull_request_body,
    render_markdown,
    report_json,
)
from tests.conftest import ROOT

SNAPSHOTS = Path(__file__).parent / "snapshots"
BUCKET = "models-local"  # the local stack's bucket, which the README's example names
MODEL = "parcel-eta"


def readme_block(language: str, marker: str) -> str:
    """The README's fenced `language` block that contains `marker`."""
    blocks = re.findall(rf"```{language}\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return next(b for b in blocks if marker in b)


def parcels(rows: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = ["distance_km,weight_kg,service,hours"]
    for _ in range(rows):
        distance, weight, service = (
            round(rng.uniform(1, 300), 1),
            round(rng.uniform(0.1, 20), 2),
            rng.choice(["express", "standard"]),
        )
        hours = (6 if service == "express" else 20) + distance / 25 + weight / 4 + rng.gauss(0, 0.5)
        lines.append(f"{distance},{weight},{service},{hours:.2f}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def project(tmp_path_factory, s3_server):
    """A copy of the project whose local stack uses the loopback store, with the README's model added."""
    for name, value in TEST_CREDENTIALS.items():
        os.environ[name] = value
    root = tmp_path_factory.mktemp("retrain") / "project"
    for name in ("infra", "scripts", "models", "stacks"):
        shutil.copytree(ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "Pulumi.yaml", root / "Pulumi.yaml")
    stack = root / "stacks" / "Pulumi.local.yaml"
    text = stack.read_text()
    stack.write_text(
        text.replace(yaml.safe_load(text)["config"]["model-serving:objectStore"]["endpoint"], s3_server.endpoint)
    )
    client = s3_server.client()
    if BUCKET not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=BUCKET)
    evaluation = parcels(120, 99).encode()
    client.put_object(Bucket=BUCKET, Key=f"datasets/{MODEL}/dt=2026-03-01/part-0.csv", Body=parcels(300, 1).encode())
    client.put_object(Bucket=BUCKET, Key=f"datasets/{MODEL}/dt=2026-03-02/part-0.csv", Body=parcels(400, 2).encode())
    client.put_object(Bucket=BUCKET, Key=f"datasets/{MODEL}/frozen/eval.csv", Body=evaluation)
    # Only what the README says: its Python file and its manifest (the digest of our evaluation set filled in).
    (root / "scripts" / "training" / "models" / "parcel_eta.py").write_text(readme_block("python", "def recipe("))
    manifest = readme_block("yaml", f"name: {MODEL}")
    manifest = manifest.replace("<sha256sum of eval.csv>", hashlib.sha256(evaluation).hexdigest())
    (root / "models" / f"{MODEL}.yaml").write_text(manifest)
    return root


def retrain(root: Path, model: str, *extra: str) -> tuple[int, dict]:
    report_dir = root / "build" / "reports" / model
    code = main(
        [
            "--root",
            str(root),
            "retrain",
            model,
            "--env",
            "local",
            "--jobs",
            "2",
            "--report-dir",
            str(report_dir),
            *extra,
        ]
    )
    return code, json.loads((report_dir / "report.json").read_text())


def served(root: Path, model: str) -> dict:
    return yaml.safe_load((root / "models" / f"{model}.yaml").read_text())


def test_the_readme_model_retrains_publishes_and_promotes(project, s3_server, capsys):
    assert main(["--root", str(project), "validate"]) == 0
    code, report = retrain(project, MODEL, "--candidates", "2")
    assert code == 0, capsys.readouterr().err
    assert report["decision"] == "promoted" and report["version"] == 1 and report["promoted_as"] == "stable"
    assert report["data"]["partition"] == "dt=2026-03-02", "the newest partition is read"
    assert [c["name"] for c in report["candidates"]] == ["c1", "c2"]
    assert all(c["excluded"] is None and c["metrics"]["mae"] > 0 for c in report["candidates"])
    manifest = served(project, MODEL)
    assert manifest["environments"]["local"] == {"stable": 1}
    assert set(manifest["versions"][1]["metrics"]) == {"mae", "rmse"} and manifest["versions"][1]["contract"]
    prefix = version_prefix("serving", MODEL, 1)
    card = json.loads(s3_server.client().get_object(Bucket=BUCKET, Key=prefix + "model_card.json")["Body"].read())
    files = card["data"]["files"]
    assert files[0]["uri"].endswith("dt=2026-03-02/part-0.csv") and files[0]["etag"] and files[0]["rows"] == 400
    assert card["evaluation_set"]["rows"] == 120 and card["seed"] in (1, 2)
    assert "Promoted" in (project / "build" / "reports" / MODEL / "pr-body.md").read_text()


def test_the_champion_is_measured_again_and_a_stale_recorded_metric_is_not_evidence(project, s3_server, capsys):
    # The champion's recorded metric says it is awful (from other data, say); measured on the frozen
    # set it is as good as the same candidates trained again, so nothing beats it.
    text = (project / "models" / f"{MODEL}.yaml").read_text()
    recorded = served(project, MODEL)["versions"][1]["metrics"]["mae"]
    (project / "models" / f"{MODEL}.yaml").write_text(text.replace(f"mae: {recorded}", "mae: 99.0", 1))
    before = (project / "models" / f"{MODEL}.yaml").read_text()
    code, report = retrain(project, MODEL, "--candidates", "2")
    assert code == 3
    assert report["decision"] == "refused" and report["version"] is None
    assert report["champion"]["recorded"] == 99.0 and abs(report["champion"]["metrics"]["mae"] - recorded) < 1e-3
    assert "does not beat the champion" in report["reasons"][0]
    assert (project / "models" / f"{MODEL}.yaml").read_text() == before, "nothing published or promoted"
    listing = s3_server.client().list_objects_v2(Bucket=BUCKET, Prefix=version_prefix("serving", MODEL, 2))
    assert "Contents" not in listing
    assert "No new version" in capsys.readouterr().out


FLAKY = """
import importlib.util, pathlib
_spec = importlib.util.spec_from_file_location("parcel_eta", pathlib.Path(__file__).with_name("parcel_eta.py"))
_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_module)

def recipe(parameters):
    if parameters["seed"] == 2:
        raise RuntimeError("out of memory (simulated)")
    return _module.recipe(parameters)
"""


def test_a_crashing_and_a_diverging_candidate_are_excluded_and_the_others_go_on(project, capsys):
    (project / "scripts" / "training" / "models" / "flaky.py").write_text(FLAKY)
    document = served(project, MODEL)
    document.update(name="parcel-flaky", artifact={"path": "parcel-flaky"}, versions={})
    document.pop("environments", None)
    # seed 3 with a huge learning rate diverges: its metrics are NaN.
    document["training"] |= {
        "entrypoint": "scripts.training.models.flaky:recipe",
        "candidates": {"seeds": [1, 2, 3], "parameters": {"learning_rate": [0.01, 1.0e30]}},
    }
    (project / "models" / "parcel-flaky.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    code, report = retrain(project, "parcel-flaky", "--candidates", "6")
    by_name = {c["name"]: c for c in report["candidates"]}
    assert len(by_name) == 6, "every candidate finished, each reported"
    assert by_name["c3"]["excluded"].startswith("crashed: RuntimeError: out of memory")
    assert by_name["c4"]["excluded"].startswith("crashed")
    assert "not finite" in by_name["c2"]["excluded"] and by_name["c2"]["metrics"]["mae"] is None
    assert by_name["c1"]["excluded"] is None and by_name["c5"]["excluded"] is None
    assert code == 0 and report["winner"] in ("c1", "c5")


def fixed_report(promoted: bool) -> RetrainReport:
    report = RetrainReport(
        model="taxi-fare",
        environment="staging",
        metric="mae",
        goal="minimize",
        min_delta=0.02,
        data={
            "source": "s3://models/datasets/taxi-fare/",
            "partition": "dt=2026-03-02",
            "files": [
                {"uri": "s3://models/datasets/taxi-fare/dt=2026-03-02/trips.csv", "sha256": "ab" * 32, "etag": '"e1"'}
            ],
        },
        evaluation={"uri": "scripts/training/data/taxi-fare-eval.csv", "sha256": "cd" * 32},
        candidates=[
            CandidateOutcome("c1", {"seed": 1, "learning_rate": 0.01}, {"mae": 1.31, "rmse": 1.9}),
            CandidateOutcome("c2", {"seed": 1, "learning_rate": 0.003}, {"mae": float("nan"), "rmse": float("nan")}),
            CandidateOutcome("c3", {"seed": 2, "learning_rate": 0.01}, error="RuntimeError: boom"),
        ],
        champion=ChampionOutcome(3, recorded=1.37, metrics={"mae": 1.62, "rmse": 2.3}),
        next_version=4,
    )
    from scripts.modelctl.retrain import _decide

    _decide(report)
    if promoted:
        report.decision, report.version, report.promoted_as = "promoted", 4, "stable"
    return report


@pytest.mark.parametrize("promoted", [True, False], ids=["promoted", "refused"])
def test_report_and_pull_request_body_snapshots(promoted):
    report = fixed_report(promoted)
    if not promoted:
        report.champion.metrics = {"mae": 1.30, "rmse": 1.8}
        report.winner, report.reasons = None, []
        _ = [setattr(c, "excluded", None) for c in report.candidates]
        from scripts.modelctl.retrain import _decide

        _decide(report)
    outputs = {f"retrain-{'promoted' if promoted else 'refused'}.md": render_markdown(report)}
    outputs[f"retrain-{'promoted' if promoted else 'refused'}.json"] = (
        json.dumps(report_json(report), indent=2, sort_keys=True) + "\n"
    )
    if promoted:
        outputs["retrain-pr-body.md"] = pull_request_body(report)
    for name, text in outputs.items():
        snapshot = SNAPSHOTS / name
        if os.environ.get("UPDATE_SNAPSHOTS"):
            snapshot.write_text(text)
        assert text == snapshot.read_text(), f"{name}: run with UPDATE_SNAPSHOTS=1 after an intended change"


def test_retrain_refuses_bad_input_with_one_line(project, capsys):
    assert main(["--root", str(project), "retrain", "parcel-eta", "--env", "nowhere"]) == 1
    assert "no stack serves environment 'nowhere'" in capsys.readouterr().err
    text = (project / "models" / f"{MODEL}.yaml").read_text()
    (project / "models" / f"{MODEL}.yaml").write_text(re.sub(r"sha256: [0-9a-f]{64}", "sha256: " + "0" * 64, text))
    try:
        assert main(["--root", str(project), "retrain", MODEL, "--env", "local"]) == 1
        err = capsys.readouterr().err
        assert "models/parcel-eta.yaml: training.evaluation.sha256: " in err and "Traceback" not in err
    finally:
        (project / "models" / f"{MODEL}.yaml").write_text(text)


def test_training_commands_name_the_requirement_file_when_tensorflow_is_missing(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    for argv in (
        ["retrain", "iris", "--env", "dev"],
        ["train", "iris", "--version", "9", "--out", "/tmp/x"],
        ["publish", "iris", "/tmp", "--stack", "dev"],
    ):
        assert main(["--root", str(ROOT), *argv]) == 1
        assert "pip install -r requirements-training.txt" in capsys.readouterr().err
