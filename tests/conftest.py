"""Shared fixtures: the repository's stacks and manifests, and offline runs of the program."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from infra.model.component import MODEL_TYPE
from infra.model.pool_component import POOL_TYPE
from infra.offline import DeclaredResource, OfflineRun, run_stack
from infra.spec.manifest import load_manifests, served_in
from infra.spec.placement import Shard, place
from infra.spec.settings import load_stack_settings, stack_names

ROOT = Path(__file__).resolve().parent.parent
STACKS = stack_names(ROOT)
MANIFESTS = load_manifests(ROOT)
MODELS = [m.name for m in MANIFESTS]
# Every (model, stack) where the stack's environment serves the model: the `kind` stacks
# serve iris alone (a kind node on a CI runner holds one model comfortably).
MODEL_X_STACK = [
    (manifest.name, stack)
    for stack in STACKS
    for manifest in MANIFESTS
    if load_stack_settings(ROOT, stack).environment in manifest.environments
]


def shard_of(model: str, stack: str) -> Shard | None:
    """The serving-pool shard that serves `model`'s stable version in `stack`, None when the model
    has its own workload (infra/spec/placement.py decides)."""
    settings = load_stack_settings(ROOT, stack)
    placement = place(settings, served_in(MANIFESTS, settings.environment))
    name = placement.shard_of.get(model)
    return placement.shard(name) if name else None


def serving_component(run: OfflineRun, model: str, track: str = "stable") -> DeclaredResource:
    """The component that declares the workload serving `model`'s `track` in `run`: the pool
    shard's ServingPool for a pooled model's stable version, else the model's ModelDeployment."""
    shard = run.outputs["models"][model].get("pool") if track == "stable" else None
    return run.find(POOL_TYPE, shard) if shard else run.find(MODEL_TYPE, model)


def copy_project(destination: Path) -> Path:
    """A throwaway copy of what the program reads: manifests, stacks, Pulumi.yaml."""
    for name in ("models", "stacks"):
        shutil.copytree(ROOT / name, destination / name)
    shutil.copy(ROOT / "Pulumi.yaml", destination / "Pulumi.yaml")
    return destination


def edit_yaml(path: Path, change) -> None:
    """Load, change in place with `change(document)`, write back."""
    document = yaml.safe_load(path.read_text())
    change(document)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


@pytest.fixture(scope="session")
def runs() -> dict[str, OfflineRun]:
    """One offline run (Pulumi mocks, preview=False) per stack of the repository."""
    return {stack: run_stack(ROOT, stack) for stack in STACKS}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project")


@pytest.fixture(scope="session")
def s3_server():
    """One S3 protocol server on loopback for the session."""
    from scripts.modelctl.localstore import S3Server

    server = S3Server.start()
    try:
        yield server
    finally:
        server.stop()
