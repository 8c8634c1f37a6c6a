"""`make demo`: the whole lifecycle on embedded defaults, leaving the working tree as it was.

On a throwaway git copy of the project: start an S3 server on loopback, train two versions
of the iris model, publish both to the local stack's store (each with its recorded contract
and TF-Serving warmup requests), show the published version's contract as an OpenAPI
document, promote the better (and watch the gate refuse the other), show the local stack's
plan with its version-bump and contract diff, render its YAML to build/local/, show its serving
pool (iris and taxi-fare in `shared-0`) and the capacity of each workload; then fresh data
for taxi-fare: two dated partitions uploaded to the store (the second drifted), a champion
trained on the first, `modelctl retrain` on the newest (parallel candidates, the champion
re-measured on the frozen evaluation set) and its decision, then a second retrain that finds
no better candidate and refuses; write the model catalog to build/catalog/, stop the server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from scripts.project_copy import copy_project_files

ROOT = Path(__file__).resolve().parent.parent
# `policy` too: the copy's plans check its own policy pack (as the e2e's and the benchmark's copies
# do), not whichever checkout the virtualenv's editable install points at.
PROJECT_FILES = ("infra", "scripts", "policy", "models", "stacks", "Pulumi.yaml", "__main__.py")
MODEL = "iris"
STACK = "local"
RENDER_DIR = ROOT / "build" / "local"
CATALOG_DIR = ROOT / "build" / "catalog"
FRESH_MODEL = "taxi-fare"
# Two days of trips after the committed data: day 1 like before, day 2 drifted (fares per km up).
PARTITION_DATES = {1: "2026-11-24", 2: "2026-11-25"}
PARTITION_ROWS = 2000
# TensorFlow's C++ start-up lines in the candidates' processes (printed before its log level
# applies): noise in the demo's output.
TF_NOISE = ("WARNING: All log messages before absl", "I0000 ", "W0000 ", "E0000 ")


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def modelctl(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    print(f"$ modelctl {' '.join(args)}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "scripts.modelctl.cli", "--root", str(root), *args],
        cwd=root,
        text=True,
        capture_output=True,
        env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONWARNINGS": "ignore"},
    )
    print(result.stdout, end="")
    stderr = "".join(line for line in result.stderr.splitlines(keepends=True) if not line.startswith(TF_NOISE))
    print(stderr, end="", file=sys.stderr)
    if check and result.returncode != 0:
        raise SystemExit(f"demo: `modelctl {' '.join(args)}` failed with exit code {result.returncode}")
    return result


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(root), "-c", "user.name=demo", "-c", "user.email=demo@example.com", *args],
        check=True,
        capture_output=True,
    )


def copy_project(destination: Path, endpoint: str) -> Path:
    copy_project_files(PROJECT_FILES, destination)
    # The throwaway copy's local store is the server this demo started (a free port).
    stack_file = destination / "stacks" / f"Pulumi.{STACK}.yaml"
    text = stack_file.read_text()
    configured = yaml.safe_load(text)["config"]["model-serving:objectStore"]["endpoint"]
    stack_file.write_text(text.replace(configured, endpoint))
    git(destination, "init", "-q", "-b", "main")
    git(destination, "add", "-A")
    git(destination, "commit", "-q", "-m", "demo: the project as it is")
    return destination


def main() -> int:
    from scripts.modelctl.localstore import TEST_CREDENTIALS, S3Server

    os.environ.update(TEST_CREDENTIALS)  # the loopback server's; no real credentials are involved
    with tempfile.TemporaryDirectory(prefix="model-serving-demo-") as scratch:
        scratch_dir = Path(scratch)
        step("Start an S3 server on loopback")
        server = S3Server.start()
        try:
            print(f"S3 protocol server (moto) at {server.endpoint}")
            project = copy_project(scratch_dir / "project", server.endpoint)
            bucket = yaml.safe_load((project / "stacks" / f"Pulumi.{STACK}.yaml").read_text())["config"][
                "model-serving:objectStore"
            ]["bucket"]
            server.client().create_bucket(Bucket=bucket)
            print(f"bucket s3://{bucket} created; working on a throwaway copy of the project in {project}")
            run_story(project, scratch_dir / "trained")
            run_fresh_data_story(project, scratch_dir / "trained", server.client(), bucket)
            step(f"The model catalog of this copy, to {CATALOG_DIR.relative_to(ROOT)}/")
            modelctl(project, "catalog", "--out", str(CATALOG_DIR))
            print(f"open {CATALOG_DIR / 'index.html'} in a browser (a static site: no server needed)")
        finally:
            step("Stop the S3 server")
            server.stop()
            print("stopped; the working tree is as it was")
    return 0


def run_story(project: Path, trained: Path) -> None:
    manifest = yaml.safe_load((project / "models" / f"{MODEL}.yaml").read_text())
    first, second = max(manifest["versions"]) + 1, max(manifest["versions"]) + 2

    step(f"Train two versions of {MODEL}")
    metrics = {}
    for version in (first, second):
        modelctl(project, "train", MODEL, "--version", str(version), "--out", str(trained))
        metrics[version] = json.loads((trained / MODEL / str(version) / "metrics.json").read_text())["accuracy"]

    step(f"Publish both to the {STACK} stack's store")
    for version in (first, second):
        modelctl(project, "publish", MODEL, str(trained / MODEL / str(version)), "--stack", STACK, "--quiet")
    print("$ git diff models/ (what the pull request would contain)")
    print(subprocess.run(["git", "-C", str(project), "diff", "--", "models"], capture_output=True, text=True).stdout)

    step(f"The contract of version {second}: its OpenAPI 3.1 document (TF-Serving's REST API)")
    document_path = trained / f"{MODEL}-{second}.openapi.json"
    modelctl(project, "contract", MODEL, "--version", str(second), "--output", str(document_path))
    document = json.loads(document_path.read_text())
    print(f"{document['info']['title']}, version {document['info']['version']}; paths:")
    for path, operations in document["paths"].items():
        print(f"  {', '.join(method.upper() for method in operations):<5} {path}")
    instance = document["components"]["schemas"]["RowPredictRequest"]["properties"]["instances"]["items"]
    print("one instance of a row request (`instances`):")
    print(json.dumps(instance, indent=2))
    warmup = trained / MODEL / str(second) / "assets.extra" / "tf_serving_warmup_requests"
    print(f"warmup requests published with it: {warmup.relative_to(trained)} ({warmup.stat().st_size} bytes)")

    better, worse = (second, first) if metrics[second] >= metrics[first] else (first, second)
    step(f"Promote the better version ({better}) in {STACK}")
    modelctl(project, "promote", MODEL, "--env", STACK, "--version", str(better))
    step(f"The gate refuses the other ({worse}): it does not beat the new champion")
    refused = modelctl(project, "promote", MODEL, "--env", STACK, "--version", str(worse), check=False)
    if refused.returncode != 1:
        raise SystemExit("demo: the promotion gate should have refused the worse version")

    step(f"Plan of the {STACK} stack: the version bump and its contract diff against the last commit")
    modelctl(project, "plan", "--stack", STACK, "--base", "HEAD")
    modelctl(project, "plan", "--stack", STACK, "--base", "HEAD", "--format", "markdown")

    step(f"Render the {STACK} stack's YAML to {RENDER_DIR.relative_to(ROOT)}/")
    rendered = modelctl(project, "plan", "--stack", STACK, "--render", str(RENDER_DIR))

    show_pools(project, rendered.stdout)


def show_pools(project: Path, full_plan: str) -> None:
    """The stack's serving pools from its outputs (what `pulumi stack output pools` shows), then
    the capacity lines of its full plan (`full_plan`, planned without a base, so every workload
    has one): a pool's pod requests its base plus each member's model."""
    from infra.model.pool import MEMBERS_ANNOTATION
    from infra.offline import run_stack
    from infra.spec.placement import quantity_bytes

    step(f"Serving pools of the {STACK} stack: models that share one TF-Serving workload (docs/pools.md)")
    run = run_stack(project, STACK, short_lived=True)
    outputs = run.outputs
    pools = outputs.get("pools", {})
    # What each member adds to a pool pod's memory request, as the pool's Deployment records it.
    member_memory = {
        r.name.removesuffix("-deployment"): json.loads(r.inputs["metadata"]["annotations"][MEMBERS_ANNOTATION])
        for r in run.kubernetes_objects()
        if r.type == "kubernetes:apps/v1:Deployment"
        and MEMBERS_ANNOTATION in r.inputs["metadata"].get("annotations", {})
    }
    for shard, members in pools.items():
        print(f"pool {shard}: serves {', '.join(members)} from one Deployment and Service `{shard}`")
        added = member_memory.get(shard, {})
        if added:
            print(
                "  a pod requests the server's base memory plus "
                + ", ".join(f"{model} {quantity_bytes(added[model])}" for model in members)
            )
    for model, served in outputs["models"].items():
        where = f"pool {served['pool']}" if "pool" in served else "its own workload"
        print(f"  {model}: {served['url']} -> {where}")
    if not pools:
        print(f"no serving pool in {STACK}: every model has its own workload")
    print("capacity and estimated cost of the stack, from the plan above (docs/cost.md):")
    shown = False
    for line in full_plan.splitlines():
        # The capacity table and the cost table, each a heading line and its indented rows.
        if line.startswith(("  capacity", "  cost per month")):
            shown = True
        elif not line.startswith("    "):
            shown = False
        if shown:
            print(line)


def upload_partition(client, bucket: str, day: int) -> None:
    from scripts.training.make_taxi_data import partition

    key = f"datasets/{FRESH_MODEL}/dt={PARTITION_DATES[day]}/trips.csv"
    client.put_object(Bucket=bucket, Key=key, Body=partition(day, rows=PARTITION_ROWS).encode())
    print(f"uploaded s3://{bucket}/{key} ({PARTITION_ROWS} trips of day {day})")


def retrain_once(project: Path, reports: Path) -> int:
    """One `modelctl retrain` of the fresh-data model; 0 promoted, 3 no winner (both fine here)."""
    result = modelctl(
        project,
        *("retrain", FRESH_MODEL, "--env", STACK, "--candidates", "2", "--jobs", "2", "--report-dir", str(reports)),
        check=False,
    )
    if result.returncode not in (0, 3):
        raise SystemExit(f"demo: retrain failed with exit code {result.returncode}")
    return result.returncode


def run_fresh_data_story(project: Path, trained: Path, client, bucket: str) -> None:
    from scripts.modelctl import manifest_edit

    step(f"The {FRESH_MODEL} champion in {STACK}: trained on the committed trips")
    champion = max(manifest_edit.load(project, FRESH_MODEL).versions) + 1
    modelctl(project, "train", FRESH_MODEL, "--version", str(champion), "--out", str(trained))
    modelctl(project, "publish", FRESH_MODEL, str(trained / FRESH_MODEL / str(champion)), "--stack", STACK, "--quiet")
    manifest_edit.edit(project, FRESH_MODEL, lambda d: manifest_edit.set_label(d, STACK, "stable", champion))
    print(f"{FRESH_MODEL} version {champion} serves as stable in {STACK}")

    step("Two days of fresh trips land in the store, fares per km drifting; training reads the newest partition")
    for day in PARTITION_DATES:
        upload_partition(client, bucket, day)
    prefix = f"s3://{bucket}/datasets/{FRESH_MODEL}/"
    manifest_edit.edit(project, FRESH_MODEL, lambda document: document["training"].__setitem__("data", prefix))
    print(f"models/{FRESH_MODEL}.yaml: training.data = {prefix}")

    step("Retrain on the newest partition: two candidates in parallel, the champion re-measured on the frozen set")
    decided = retrain_once(project, trained / "retrain" / "first")
    print(
        "decision: " + ("a better model, published and promoted" if decided == 0 else "no candidate beat the champion")
    )

    step("Retrain again on the same data: nothing beats the champion by the rule's margin, nothing is published")
    decided = retrain_once(project, trained / "retrain" / "second")
    print("decision: " + ("promoted" if decided == 0 else "refused (exit 3); nothing published"))


if __name__ == "__main__":
    sys.exit(main())
