"""Serving pools: rendered objects against the schemas and the engine checks, a pool's
`models.config` through TF-Serving's proto, stable packing, errors naming file and field, the
pool's fetch script against S3 on loopback, pooled canaries, explicit and auto packing."""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes.utils.quantity import parse_quantity
from tensorflow_serving.config import model_server_config_pb2

from infra.model import tfserving
from infra.model.component import MODEL_TYPE
from infra.model.fetch import fetch_pool_script, fetch_script
from infra.model.pool import MEMBERS_ANNOTATION, POOL_LABEL
from infra.model.pool_component import POOL_TYPE
from infra.offline import DeclaredResource, OfflineRun, run_stack
from infra.platform.object_store import CHECKSUMS_FILE, COMMIT_MARKER, version_prefix
from infra.spec.errors import ConfigError
from infra.spec.manifest import parse_manifest, served_in
from infra.spec.placement import place, shard_index
from infra.spec.serving_pools import PoolSettings, ServingPoolsSettings
from infra.spec.settings import load_stack_settings
from policy.engines import pod_templates, selects
from policy.rules import MANDATORY
from scripts.modelctl.cli import main
from scripts.modelctl.guardrails import as_policy_resource, check, stack_policy_settings
from scripts.modelctl.incremental import piece_of
from scripts.modelctl.localstore import TEST_CREDENTIALS
from scripts.modelctl.plan import ComponentKind
from tests.conftest import ROOT, copy_project, edit_yaml
from tests.test_fetch_script import SAVED_MODEL, checksum_list
from tests.test_schemas import KUBERNETES_VERSIONS, crd_validator, is_custom

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
SERVICE = "kubernetes:core/v1:Service"
HTTP_ROUTE = "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute"
GATEWAY_CLASS = ("gateway.networking.k8s.io", "GatewayClass")  # checked in tests/test_platform.py

IRIS = yaml.safe_load((ROOT / "models" / "iris.yaml").read_text())
LOCAL = "stacks/Pulumi.local.yaml"
# The local stack's pool, as committed (its batching is taxi-fare's).
SHARED = yaml.safe_load((ROOT / LOCAL).read_text())["config"]["model-serving:servingPools"]["pools"][0]


def member_document(name: str, environment: str = "local", stable: int = 3, **serving) -> dict:
    """iris under another name and artifact path, served in one environment only."""
    document = copy.deepcopy(IRIS)
    document["name"] = name
    document["artifact"]["path"] = name
    document["environments"] = {environment: {"stable": stable, "protocols": ["rest"]}}
    for key, value in serving.items():
        document["serving"][key] = value
    return document


def write_model(root: Path, document: dict) -> None:
    (root / "models" / f"{document['name']}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))


def set_pools(root: Path, stack: str, *pools: dict, **extra) -> None:
    def change(document):
        document["config"]["model-serving:servingPools"] = {"pools": list(pools), **extra}

    edit_yaml(root / "stacks" / f"Pulumi.{stack}.yaml", change)


def quantity(text: str) -> int:
    return int(parse_quantity(text))


def component_children(run: OfflineRun, type_: str, name: str) -> dict[str, DeclaredResource]:
    """The children of one component (a ServingPool or a ModelDeployment), by resource name."""
    urn = run.find(type_, name).urn
    return {r.name: r for r in run.resources if r.parent == urn}


def models_config(run: OfflineRun, shard: str) -> model_server_config_pb2.ModelServerConfig:
    data = component_children(run, POOL_TYPE, shard)[f"{shard}-config"].object["data"]
    return text_format.Parse(data[tfserving.MODELS_CONFIG], model_server_config_pb2.ModelServerConfig())


def pool_members(run: OfflineRun) -> dict[str, list[str]]:
    """Each rendered shard's members, as its ConfigMap's models.config lists them."""
    shards = [r.name for r in run.resources if r.type == POOL_TYPE]
    return {shard: [entry.name for entry in models_config(run, shard).model_config_list.config] for shard in shards}


# A synthetic fleet on a copy of the local stack ------------------------------------------------

# `wide`: explicit, one shard, 50 members that name it. `shared`: the committed auto pool with 3
# shards; iris, taxi-fare and the `a..` models land there, `solo` (isolation: dedicated) does not.
WIDE = {
    "name": "wide",
    "packing": "explicit",
    "maxModels": 64,
    "resources": {"cpu": "2", "memory": "512Mi"},
    "autoscaling": {"minReplicas": 1, "maxReplicas": 3},
}
WIDE_MEMBERS = [f"m{i:02d}" for i in range(50)]
AUTO_MEMBERS = [f"a{i:02d}" for i in range(12)]
CANARY_MEMBERS = {"a03": (2, 25), "m07": (3, 40)}  # model -> canary version and weight


def wide_member(index: int) -> dict:
    """Members of different sizes and versions, so the sums and digests are each member's own."""
    resources = dict(IRIS["serving"]["resources"])
    if index % 3 == 0:
        resources["model_memory"] = f"{64 + index}Mi"
    if index % 4 == 0:
        resources["model_storage"] = f"{100 + index}Mi"
    document = member_document(WIDE_MEMBERS[index], stable=index % 3 + 1, resources=resources)
    document["environments"]["local"]["pool"] = "wide"
    return document


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    root = copy_project(tmp_path_factory.mktemp("fleet") / "project")
    documents = [wide_member(i) for i in range(len(WIDE_MEMBERS))]
    documents += [member_document(name) for name in AUTO_MEMBERS]
    documents.append(member_document("solo", isolation="dedicated"))
    for document in documents:
        name = document["name"]
        if name in CANARY_MEMBERS:
            version, weight = CANARY_MEMBERS[name]
            document["environments"]["local"]["canary"] = {"version": version, "weight": weight}
        write_model(root, document)
    set_pools(root, "local", {**SHARED, "shards": 3}, WIDE)
    return root, {d["name"]: d for d in documents}


@pytest.fixture(scope="module")
def fleet_run(fleet) -> OfflineRun:
    return run_stack(fleet[0], "local")


@pytest.fixture(scope="module")
def local_run() -> OfflineRun:
    return run_stack(ROOT, "local")


def test_the_local_stack_packs_iris_and_taxi_fare_into_one_shard(local_run):
    assert local_run.outputs["pools"] == {"shared-0": ["iris", "taxi-fare"]}
    assert pool_members(local_run) == {"shared-0": ["iris", "taxi-fare"]}
    # Their own components declare routes only: no workload of their own.
    for model in ("iris", "taxi-fare"):
        kinds = {r.type.rsplit(":", 1)[-1] for r in component_children(local_run, MODEL_TYPE, model).values()}
        assert kinds <= {"HTTPRoute", "GRPCRoute"}, (model, kinds)


def test_the_fleet_fills_every_shard_of_both_pools(fleet_run):
    members = pool_members(fleet_run)
    assert set(members) == {"shared-0", "shared-1", "shared-2", "wide-0"}
    assert members["wide-0"] == WIDE_MEMBERS
    assert sorted(m for shard in ("shared-0", "shared-1", "shared-2") for m in members[shard]) == sorted(
        [*AUTO_MEMBERS, "iris", "taxi-fare"]
    )
    assert all(members[shard] for shard in members), members


# 1. Schemas and engine checks ---------------------------------------------------------------------


@pytest.mark.parametrize("which", ["local", "fleet"])
@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
def test_pool_objects_pass_the_kubernetes_and_crd_schemas(request, which, kubernetes_version):
    run = request.getfixturevalue(f"{which}_run")
    pools = {r.urn for r in run.resources if r.type == POOL_TYPE}
    kinds = set()
    metadata_checked = set()
    # The platform's objects too: the pools' and members' references resolve against them.
    for resource in run.kubernetes_objects():
        obj = resource.object
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        if (group, obj["kind"]) == GATEWAY_CLASS:
            continue
        if is_custom(obj):
            errors = sorted(crd_validator(obj["apiVersion"], obj["kind"]).iter_errors(obj), key=str)
            assert not errors, f"{resource.urn}: {errors[0].message} at {list(errors[0].path)}"
            # Their metadata is an ObjectMeta; the members' routes all have the same shape, and
            # kubernetes-validate reads its schema afresh on each call.
            shape = (obj["kind"], resource.parent in pools)
            if shape in metadata_checked:
                continue
            metadata_checked.add(shape)
            obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
        try:
            kubernetes_validate.validate(obj, kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{resource.urn}: {exc.message} at {list(exc.path)}")
        if resource.parent in pools:
            kinds.add(resource.object["kind"])
    assert kinds == {
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    }


@pytest.mark.parametrize("which", ["local", "fleet"])
def test_pool_stacks_pass_every_engine_check_and_policy(request, which):
    run = request.getfixturevalue(f"{which}_run")
    root = ROOT if which == "local" else request.getfixturevalue("fleet")[0]
    violations = check(run, stack_policy_settings(root, "local"))
    assert [str(v) for v in violations if v.enforcement == MANDATORY] == []
    assert {v.rule for v in violations} <= {"images-by-digest"}


@pytest.mark.parametrize("which", ["local", "fleet"])
def test_a_pool_service_selects_exactly_its_shards_pods(request, which):
    run = request.getfixturevalue(f"{which}_run")
    resources = [as_policy_resource(r) for r in run.kubernetes_objects()]
    pods = pod_templates(resources)
    shards = [r.name for r in run.resources if r.type == POOL_TYPE]
    assert shards
    for shard in shards:
        kids = component_children(run, POOL_TYPE, shard)
        service = kids[f"{shard}-service"].object
        assert service["metadata"]["name"] == shard
        selected = [p.owner.object_name for p in pods if selects(service["spec"]["selector"], p.labels)]
        assert selected == [kids[f"{shard}-deployment"].object["metadata"]["name"]]
        # The pool's NetworkPolicy admits traffic to this shard's pods only.
        policy = kids[f"{shard}-netpol"].object
        assert policy["spec"]["podSelector"]["matchLabels"] == {POOL_LABEL: shard}


# 2. One pool with 50 members -------------------------------------------------------------------


def test_models_config_of_a_wide_pool_lists_each_members_stable_version(fleet, fleet_run):
    _, documents = fleet
    config = models_config(fleet_run, "wide-0")
    entries = {entry.name: entry for entry in config.model_config_list.config}
    assert list(entries) == WIDE_MEMBERS
    for name, entry in entries.items():
        stable = documents[name]["environments"]["local"]["stable"]
        assert entry.base_path == f"/models/{name}"
        assert entry.model_platform == "tensorflow"
        assert list(entry.model_version_policy.specific.versions) == [stable]
        assert dict(entry.version_labels) == {"stable": stable}


def test_a_wide_pools_pod_fetches_every_served_version_and_is_sized_by_its_members(fleet, fleet_run):
    _, documents = fleet
    kids = component_children(fleet_run, POOL_TYPE, "wide-0")
    pod = kids["wide-0-deployment"].object["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    expected = [
        f"{name}@{documents[name]['environments']['local']['stable']}="
        f"{IRIS['versions'][documents[name]['environments']['local']['stable']]['digest']}"
        for name in WIDE_MEMBERS
    ]
    assert init["args"] == [f"{tfserving.CONFIG_DIR}/{tfserving.FETCH_LIST}", *expected]
    # m07's canary (version 3) runs beside the pool: not fetched here.
    assert not any(arg.startswith("m07@3=") for arg in init["args"])

    def member_memory(document):
        resources = document["serving"]["resources"]
        return quantity(resources.get("model_memory") or resources["memory"])

    members = [documents[name] for name in WIDE_MEMBERS]
    memory = quantity(WIDE["resources"]["memory"]) + sum(member_memory(d) for d in members)
    storage = sum(quantity(d["serving"]["resources"]["model_storage"]) for d in members)
    (server,) = pod["containers"]
    assert quantity(server["resources"]["requests"]["memory"]) == memory
    assert quantity(server["resources"]["limits"]["memory"]) == memory
    assert server["resources"]["requests"]["cpu"] == WIDE["resources"]["cpu"]
    (models_volume,) = [v for v in pod["volumes"] if "emptyDir" in v and v["name"] != "tmp"]
    assert quantity(models_volume["emptyDir"]["sizeLimit"]) == storage
    annotation = yaml.safe_load(kids["wide-0-deployment"].object["metadata"]["annotations"][MEMBERS_ANNOTATION])
    assert annotation == {d["name"]: member_memory(d) for d in members}
    # The fetch list names each member's directory and source.
    data = kids["wide-0-config"].object["data"]
    lines = [line.split() for line in data[tfserving.FETCH_LIST].splitlines()]
    assert [line[:2] for line in lines] == [[name, f"/models/{name}"] for name in WIDE_MEMBERS]
    assert all(line[2].endswith(f"/{line[0]}") and line[2].startswith("s3://") for line in lines)


# 3. Stable packing ------------------------------------------------------------------------------


MANIFEST = parse_manifest(member_document("fleet-model"), "models/fleet-model.yaml", "fleet-model")


def fleet_of(names, bumped: str | None = None):
    """Served models named `names` (one parsed manifest, renamed), `bumped` at version 2."""
    manifests = []
    for name in names:
        manifest = MANIFEST.model_copy(update={"name": name})
        if name == bumped:
            local = manifest.environments["local"].model_copy(update={"stable": 2})
            manifest = manifest.model_copy(update={"environments": {"local": local}})
        manifests.append(manifest)
    return served_in(manifests, "local")


@cache
def settings_with(shards: int, max_models: int = 1000):
    pool = PoolSettings.model_validate({**SHARED, "shards": shards, "maxModels": max_models})
    base = load_stack_settings(ROOT, "local")
    return base.model_copy(update={"serving_pools": ServingPoolsSettings(pools=(pool,))})


def shard_of(settings, names, bumped=None) -> dict[str, str]:
    return place(settings, fleet_of(names, bumped)).shard_of


FLEET = [f"model-{i:03d}" for i in range(200)]


def test_adding_removing_or_bumping_one_model_moves_no_other():
    eight = settings_with(8)
    before = shard_of(eight, FLEET)
    assert set(before) == set(FLEET) and len(set(before.values())) == 8
    added = shard_of(eight, [*FLEET, "model-new"])
    assert {m: s for m, s in added.items() if m != "model-new"} == before
    removed = shard_of(eight, FLEET[:57] + FLEET[58:])
    assert removed == {m: s for m, s in before.items() if m != FLEET[57]}
    assert shard_of(eight, FLEET, bumped=FLEET[99]) == before


def test_placements_and_served_models_kept_in_the_process_answer_only_the_same_question():
    """place() and served_in() keep their answers per process (a fleet's plan asks each stack
    several times); an answer is reused only for the same stack settings and the same
    manifest objects, and a refused placement is refused again."""
    manifests = [MANIFEST.model_copy(update={"name": name}) for name in FLEET[:40]]
    served = served_in(manifests, "local")
    again = served_in(manifests, "local")
    assert again == served and again is not served  # a new list: callers may change theirs
    bumped = [m.model_copy() for m in manifests]
    bumped[3] = bumped[3].model_copy(
        update={"environments": {"local": bumped[3].environments["local"].model_copy(update={"stable": 7})}}
    )
    assert served_in(bumped, "local")[3].version_labels["stable"] == 7
    assert served[3].version_labels["stable"] != 7
    eight, nine = settings_with(8), settings_with(9)
    assert place(eight, served) is place(eight, served_in(manifests, "local"))
    assert place(nine, served).shard_of != place(eight, served).shard_of
    too_small = settings_with(8, max_models=2)
    for _ in range(2):
        with pytest.raises(ConfigError, match="more than maxModels 2"):
            place(too_small, served)


def test_a_ninth_shard_takes_models_only_onto_itself():
    before = shard_of(settings_with(8), FLEET)
    after = shard_of(settings_with(9), FLEET)
    moved = {m for m in FLEET if after[m] != before[m]}
    assert moved and all(after[m] == "shared-8" for m in moved)
    # About 1/9 of them, as rendezvous hashing promises.
    assert 200 / 9 / 2 < len(moved) < 200 / 9 * 2


names = st.sets(st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(names, st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True), st.integers(1, 12))
def test_placement_is_stable_under_any_change_of_one_model_or_one_more_shard(fleet_names, newcomer, shards):
    fleet_names = sorted(fleet_names - {newcomer})
    pool = settings_with(shards)
    before = shard_of(pool, fleet_names)
    grown = shard_of(pool, [*fleet_names, newcomer])
    assert {m: s for m, s in grown.items() if m != newcomer} == before
    assert grown[newcomer] == f"shared-{shard_index(newcomer, pool.serving_pools.pools[0])}"
    if fleet_names:
        gone = fleet_names[len(fleet_names) // 2]
        assert shard_of(pool, [m for m in fleet_names if m != gone]) == {m: s for m, s in before.items() if m != gone}
        assert shard_of(pool, fleet_names, bumped=gone) == before
    more = shard_of(settings_with(shards + 1), fleet_names)
    assert all(more[m] in (before[m], f"shared-{shards}") for m in fleet_names)


RENDERED_FLEET = [f"r{i:02d}" for i in range(40)]
# One change of each kind at once: a model added, one removed, one bumped.
ADDED, REMOVED, BUMPED = "r-new", "r17", "r23"


@pytest.fixture(scope="module")
def rendered_change(tmp_path_factory) -> tuple[OfflineRun, OfflineRun]:
    """Offline runs of a 40-model, 8-shard pool before and after the three changes."""
    root = copy_project(tmp_path_factory.mktemp("packing") / "project")
    for name in ("iris", "taxi-fare"):
        (root / "models" / f"{name}.yaml").unlink()
    set_pools(root, "local", {**SHARED, "shards": 8})
    for name in RENDERED_FLEET:
        write_model(root, member_document(name))
    before = run_stack(root, "local")
    write_model(root, member_document(ADDED))
    (root / "models" / f"{REMOVED}.yaml").unlink()
    write_model(root, member_document(BUMPED, stable=2))
    return before, run_stack(root, "local")


def config_maps(run: OfflineRun) -> dict[str, dict]:
    """Each shard's ConfigMap as rendered (its auto-name follows its data)."""
    shards = [r.name for r in run.resources if r.type == POOL_TYPE]
    return {s: component_children(run, POOL_TYPE, s)[f"{s}-config"].object for s in shards}


def test_rendered_pools_change_only_the_shards_of_the_changed_models(rendered_change):
    before, after = rendered_change
    members_before, members_after = pool_members(before), pool_members(after)
    assert len(members_before) == len(members_after) == 8
    where_before = {m: s for s, ms in members_before.items() for m in ms}
    where_after = {m: s for s, ms in members_after.items() for m in ms}
    assert set(where_before) == set(RENDERED_FLEET)
    assert set(where_after) == set(RENDERED_FLEET) - {REMOVED} | {ADDED}
    unchanged = set(RENDERED_FLEET) - {REMOVED, BUMPED}
    assert {m: where_after[m] for m in unchanged} == {m: where_before[m] for m in unchanged}
    assert where_after[BUMPED] == where_before[BUMPED]
    # Only the shards of the three changed models get new data; every other pod keeps running.
    maps_before, maps_after = config_maps(before), config_maps(after)
    changed = {s for s in maps_before if maps_before[s] != maps_after[s]}
    assert changed == {where_after[ADDED], where_before[REMOVED], where_after[BUMPED]}
    assert before.outputs["pools"] == members_before and after.outputs["pools"] == members_after


# 4. Errors ----------------------------------------------------------------------------------------


def edit_iris(*changes):
    """Break the project by changing iris's manifest with each of `changes` in turn."""

    def change(document):
        for one in changes:
            one(document)

    return lambda root: edit_yaml(root / "models" / "iris.yaml", change)


def names_pool(pool: str):
    return lambda d: d["environments"]["local"].update(pool=pool)


def serving(**fields):
    return lambda d: d["serving"].update(fields)


def in_local(**fields):
    """Per-environment overrides of the local stack's environment only (iris also names the pool
    in kind-pools, which an edit of `serving` would break too)."""
    return lambda d: d["environments"]["local"].update(fields)


def _gpu_stack(root: Path) -> None:
    def change(document):
        document["config"]["model-serving:cluster"] = {"gpuNodes": True}
        document["config"]["model-serving:images"]["servingGpu"] = "docker.io/tensorflow/serving:2.19.1-gpu"
        # A priced stack with GPU nodes prices GPU hours too (infra/spec/prices.py).
        document["config"]["model-serving:prices"]["gpuHour"] = 1.0

    edit_yaml(root / LOCAL, change)


def _gpu_member(root: Path) -> None:
    """A GPU model served on the local stack only, which is given GPU nodes."""
    _gpu_stack(root)
    document = member_document("vision", resources={**IRIS["serving"]["resources"], "gpu": 1})
    document["environments"]["local"]["pool"] = "shared"
    write_model(root, document)


def _critical_member_on_production(root: Path) -> None:
    """iris at 99.95 % names the pool of a production stack (kept apart from 99.9 % on)."""
    edit_yaml(root / LOCAL, lambda d: d["config"].update({"model-serving:production": True}))
    edit_iris(names_pool("shared"), lambda d: d["serving"]["slo"].update(availability=0.9995))(root)


def _shard_named_model(root: Path) -> None:
    write_model(root, member_document("shared-0"))


def _pools_on_flagger(root: Path) -> None:
    set_pools(root, "kind-flagger", SHARED)


ERROR_CASES = [
    # (id, stack, break(root), "file: field: ", fragment)
    (
        "unknown pool",
        "local",
        edit_iris(names_pool("nowhere")),
        "models/iris.yaml: environments.local.pool: ",
        "Got 'nowhere'; stack local declares the serving pools: shared",
    ),
    (
        "dedicated model names a pool",
        "local",
        edit_iris(names_pool("shared"), in_local(isolation="dedicated")),
        "models/iris.yaml: environments.local.pool: ",
        "names pool shared, but cannot share: isolation: dedicated",
    ),
    (
        "GPU model names a pool",
        "local",
        _gpu_member,
        "models/vision.yaml: environments.local.pool: ",
        "cannot share: a GPU model runs on its own GPU nodes",
    ),
    (
        "batching unlike the pool's",
        "local",
        edit_iris(names_pool("shared"), in_local(batching={"max_batch_size": 8, "batch_timeout_micros": 1000})),
        "models/iris.yaml: environments.local.pool: ",
        "its server-side batching differs from the pool's",
    ),
    (
        "availability kept apart on production",
        "local",
        _critical_member_on_production,
        "models/iris.yaml: environments.local.pool: ",
        "its availability objective 0.9995 is at least servingPools.dedicatedAvailability 0.999 of stack local",
    ),
    (
        "shard overflow",
        "local",
        lambda root: set_pools(root, "local", {**SHARED, "maxModels": 1}),
        f"{LOCAL}: config.model-serving:servingPools.pools[0].maxModels: ",
        "shard shared-0 of pool shared would hold 2 models, more than maxModels 1",
    ),
    (
        "pools on a Flagger stack",
        "kind-flagger",
        _pools_on_flagger,
        "stacks/Pulumi.kind-flagger.yaml: config.model-serving:servingPools.pools: ",
        "serving pools are off on a Flagger stack",
    ),
    (
        "model named like a shard",
        "local",
        _shard_named_model,
        "models/shared-0.yaml: name: ",
        "the workload and Service of shard shared-0 (pool shared, stack local) have this model's name",
    ),
]


@pytest.mark.parametrize(
    ("stack", "breaks", "error", "says"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_an_impossible_placement_is_one_clear_error_and_declares_nothing(project, capsys, stack, breaks, error, says):
    breaks(project)
    assert main(["--root", str(project), "validate"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.endswith("error(s)")]
    assert len(lines) == 1, err
    assert lines[0].startswith(error), err
    assert says in lines[0], err
    assert "Traceback" not in err
    run = OfflineRun(stack=stack)
    with pytest.raises(ConfigError) as raised:
        run_stack(project, stack, into=run)
    assert any(str(item).startswith(error) for item in raised.value.errors)
    assert run.resources == []


# 5. fetch-pool.sh against S3 on loopback ---------------------------------------------------------


@pytest.fixture
def pool_store(s3_server, tmp_path):
    """A bucket with versions of two models, the pool scripts, and a runner."""
    bucket = f"pool-{uuid.uuid4().hex[:8]}"
    client = s3_server.client()
    client.create_bucket(Bucket=bucket)

    def put_version(model: str, version: int) -> str:
        prefix = version_prefix("serving", model, version)
        for path, body in SAVED_MODEL.items():
            client.put_object(Bucket=bucket, Key=prefix + path, Body=body + model.encode())
        checksums = checksum_list({p: b + model.encode() for p, b in SAVED_MODEL.items()})
        client.put_object(Bucket=bucket, Key=prefix + CHECKSUMS_FILE, Body=checksums)
        client.put_object(Bucket=bucket, Key=prefix + COMMIT_MARKER, Body=b"")
        return "sha256:" + hashlib.sha256(checksums).hexdigest()

    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / tfserving.FETCH_SCRIPT).write_text(fetch_script())
    (scripts / tfserving.FETCH_POOL_SCRIPT).write_text(fetch_pool_script())
    models = tmp_path / "models"
    listing = tmp_path / "fetch.list"
    listing.write_text("".join(f"{m} {models / m} s3://{bucket}/serving/{m}\n" for m in ("iris", "wine")))
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    if shutil.which("aws", path=path) is None:
        pytest.fail("the aws CLI is not installed (requirements-dev.txt)")
    env = {"PATH": path, "HOME": str(tmp_path), "S3_ENDPOINT": s3_server.endpoint, **TEST_CREDENTIALS}

    def fetch(*specs: str) -> subprocess.CompletedProcess:
        script = scripts / tfserving.FETCH_POOL_SCRIPT
        return subprocess.run(
            ["/bin/sh", str(script), str(listing), *specs], env=env, capture_output=True, text=True, timeout=120
        )

    return put_version, fetch, models


def test_the_pool_fetches_and_verifies_each_member_into_its_own_directory(pool_store):
    put_version, fetch, models = pool_store
    iris, wine = put_version("iris", 3), put_version("wine", 1)
    result = fetch(f"iris@3={iris}", f"wine@1={wine}")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in models.iterdir()) == ["iris", "wine"]
    assert sorted(p.name for p in (models / "iris").iterdir()) == ["3"]
    assert sorted(p.name for p in (models / "wine").iterdir()) == ["1"]
    for model, version in (("iris", 3), ("wine", 1)):
        for path, body in SAVED_MODEL.items():
            assert (models / model / str(version) / path).read_bytes() == body + model.encode()
    assert "fetch-pool: 2 version(s) verified" in result.stdout


def test_a_member_missing_from_the_list_fails_naming_it(pool_store):
    _, fetch, models = pool_store
    result = fetch("rose@1=sha256:" + "0" * 64)
    assert result.returncode == 1
    assert "fetch-pool: model rose is not in " in result.stderr and "fetch.list" in result.stderr
    assert not (models / "rose").exists()
    assert "verified" not in result.stdout


def test_a_wrong_digest_fails_and_leaves_no_directory_for_that_version(pool_store):
    put_version, fetch, models = pool_store
    put_version("wine", 1)
    wrong = "sha256:" + "0" * 64
    result = fetch(f"wine@1={wrong}")
    assert result.returncode == 1
    assert f"the manifest says {wrong}" in result.stderr
    assert not (models / "wine" / "1").exists()
    assert "version(s) verified" not in result.stdout


def test_a_spec_without_a_model_is_refused(pool_store):
    _, fetch, _ = pool_store
    result = fetch("3=sha256:" + "0" * 64)
    assert result.returncode == 1
    assert "'3=sha256:" in result.stderr and "is not MODEL@VERSION=DIGEST" in result.stderr


# 6. A pooled model's canary ---------------------------------------------------------------------


@pytest.mark.parametrize("model", sorted(CANARY_MEMBERS))
def test_a_pooled_models_canary_runs_beside_its_pool(fleet_run, model):
    shard = fleet_run.outputs["models"][model]["pool"]
    kids = component_children(fleet_run, MODEL_TYPE, model)
    deployment = kids[f"{model}-canary-deployment"].object
    assert deployment["spec"]["template"]["metadata"]["labels"].get(POOL_LABEL) is None
    assert f"{model}-deployment" not in kids, "the stable version is the pool's"
    # Its own models.config serves the canary version only.
    data = kids[f"{model}-canary-config"].object["data"]
    (entry,) = text_format.Parse(
        data[tfserving.MODELS_CONFIG], model_server_config_pb2.ModelServerConfig()
    ).model_config_list.config
    version, weight = CANARY_MEMBERS[model]
    assert entry.name == model and list(entry.model_version_policy.specific.versions) == [version]
    route = kids[f"{model}-route"].object
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [
        {"name": shard, "port": tfserving.REST_PORT, "weight": 100 - weight},
        {"name": f"{model}-canary", "port": tfserving.REST_PORT, "weight": weight},
    ]
    # The pool serves the stable version only.
    (pooled,) = [e for e in models_config(fleet_run, shard).model_config_list.config if e.name == model]
    (stable,) = pooled.model_version_policy.specific.versions
    assert stable != version and dict(pooled.version_labels) == {"stable": stable}


# 7. Explicit and automatic packing ---------------------------------------------------------------


def test_an_explicit_pool_holds_only_the_models_that_name_it(fleet_run):
    assert pool_members(fleet_run)["wide-0"] == WIDE_MEMBERS
    assert all(fleet_run.outputs["models"][m]["pool"] == "wide-0" for m in WIDE_MEMBERS)
    assert all(fleet_run.outputs["models"][m]["pool"].startswith("shared-") for m in AUTO_MEMBERS)


def test_auto_packing_leaves_a_dedicated_model_its_own_workload(fleet_run):
    assert "pool" not in fleet_run.outputs["models"]["solo"]
    assert not any("solo" in members for members in pool_members(fleet_run).values())
    kids = component_children(fleet_run, MODEL_TYPE, "solo")
    assert {f"solo-{suffix}" for suffix in ("config", "deployment", "service", "hpa", "pdb")} <= set(kids)


def test_auto_packing_on_production_keeps_highly_available_models_apart():
    production = settings_with(2).model_copy(update={"production": True})
    critical = MANIFEST.model_copy(
        update={
            "name": "critical",
            "serving": MANIFEST.serving.model_copy(
                update={"slo": MANIFEST.serving.slo.model_copy(update={"availability": 0.9999})}
            ),
        }
    )
    served = served_in([MANIFEST, critical], "local")
    assert place(production, served).shard_of == {
        "fleet-model": f"shared-{shard_index('fleet-model', production.serving_pools.pools[0])}"
    }


# The incremental plan's invariant ------------------------------------------------------------------


@pytest.mark.parametrize("only", [{"solo"}, {"a03"}, {"m00"}])
def test_a_run_of_some_models_declares_them_and_their_pools_as_a_full_run_does(fleet, fleet_run, only):
    """The incremental plan takes the platform from any run of the same stack, each unchanged
    model's and pool's resources from an earlier run (scripts/modelctl/incremental.py): a subset
    run declares the models asked for and the pools that serve them, each exactly as a full run
    does, and the same skeleton."""
    subset = run_stack(fleet[0], "local", only_models=only)
    owners_full, owners_subset = piece_of(fleet_run), piece_of(subset)

    def owned_by(run, owners, pieces):
        return {r.urn: (r.inputs, sorted(r.dependencies)) for r in run.resources if owners[r.urn] in pieces}

    assert owned_by(subset, owners_subset, {None}) == owned_by(fleet_run, owners_full, {None})
    declared = {owner for owner in owners_subset.values() if owner is not None}
    assert {o.name for o in declared if o.kind is ComponentKind.model} == only
    shards = fleet_run.outputs["models"]
    assert {o.name for o in declared if o.kind is ComponentKind.pool} == {
        shards[m]["pool"] for m in only if "pool" in shards[m]
    }
    assert owned_by(subset, owners_subset, declared) == owned_by(fleet_run, owners_full, declared)


def test_a_pool_on_a_managed_store_reads_every_members_versions_through_its_own_role(project):
    """On an EKS stack that manages its store, the pool's pods read through one IRSA role that
    only the shard's ServiceAccount may assume, over each member's prefix and nothing else."""
    import json

    def change(document):
        config = document["config"]
        config.pop("model-serving:progressiveDelivery")  # pools are off under Flagger
        config["model-serving:servingPools"] = {"pools": [SHARED]}

    edit_yaml(project / "stacks" / "Pulumi.eks.yaml", change)
    run = run_stack(project, "eks")
    assert run.outputs["pools"] == {"shared-0": ["iris", "taxi-fare"]}
    children = component_children(run, POOL_TYPE, "shared-0")
    policy = json.loads(children["shared-0-reader-policy"].inputs["policy"])
    (read,) = [s for s in policy["Statement"] if s["Sid"] == "ReadModelVersions"]
    settings = load_stack_settings(project, "eks")
    store = settings.object_store
    assert read["Resource"] == [
        f"arn:aws:s3:::{store.bucket}/{store.prefix}/{path}/*" for path in ("iris", "pricing/taxi-fare")
    ]
    trust = json.loads(children["shared-0-reader"].inputs["assumeRolePolicy"])
    (subject,) = [v for k, v in trust["Statement"][0]["Condition"]["StringEquals"].items() if k.endswith(":sub")]
    assert subject == f"system:serviceaccount:{settings.namespace}:shared-0"
    account = children["shared-0-sa"].object["metadata"]
    assert account["name"] == "shared-0" and "eks.amazonaws.com/role-arn" in account["annotations"]
