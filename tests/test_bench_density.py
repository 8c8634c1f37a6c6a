"""The density benchmark's counting (scripts/bench_density.py) on a fleet of 20 small models."""

from __future__ import annotations

from collections import Counter

import pytest
from kubernetes.utils.quantity import parse_quantity

from scripts.bench_density import POOL, SMALL_RESOURCES, density, fleet_project

MODELS = 20
MIB = 2**20


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from infra.offline import run_stack

    result = {}
    for label, pooled in (("dedicated", False), ("pooled", True)):
        directory = tmp_path_factory.mktemp(label)
        fleet_project(directory, MODELS, pooled)
        result[label] = run_stack(directory, "prod")
    return result


def test_dedicated_fleet_counts_one_workload_per_model(runs):
    counted = density(runs["dedicated"])
    # Prod without Flagger declares no workload of its own: the models' Deployments alone.
    assert counted["workloads"] == MODELS
    assert counted["pods"] == MODELS * 2  # prod's min_replicas
    assert counted["cpu"] == pytest.approx(MODELS * 2 * 0.1)
    assert counted["memory"] == MODELS * 2 * int(parse_quantity(SMALL_RESOURCES["memory"]))
    assert counted["resources"] == len(runs["dedicated"].resources)


def test_pooled_fleet_counts_each_shard_at_its_base_plus_members(runs):
    run = runs["pooled"]
    shards = Counter(entry["pool"] for entry in run.outputs["models"].values())
    assert sum(shards.values()) == MODELS  # every model is pooled: availability 0.995 < 0.999
    counted = density(run)
    replicas = POOL["autoscaling"]["minReplicas"]
    base = int(parse_quantity(POOL["resources"]["memory"]))
    member = int(parse_quantity(SMALL_RESOURCES["model_memory"]))
    assert counted["workloads"] == len(shards)
    assert counted["pods"] == replicas * len(shards)
    assert counted["cpu"] == pytest.approx(replicas * len(shards) * float(parse_quantity(POOL["resources"]["cpu"])))
    assert counted["memory"] == replicas * (len(shards) * base + MODELS * member)
    assert counted["resources"] < density(runs["dedicated"])["resources"]
