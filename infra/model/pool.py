"""Pure builders of one serving pool's Kubernetes objects: one TF-Serving workload for many models.

What a failing member does to a pool (tensorflow/serving@2.19.1, eab9c35): the server loads
every model of `model_config_list` before it opens a port (`ServerCore::Create` runs the first
`ReloadConfig`, server_core.cc L258, L361-L362, and waits for every model, L705-L720; the ports
open only afterwards, model_servers/server.cc L330 then L372-L449). A member whose SavedModel
fails to load ends the start, after 5 attempts a minute apart (server.h L68-L69,
loader_harness.cc L82-L86): `load_servables_fast.cc` L87-L117 returns UNKNOWN and main.cc
L342-L346 exits ("Failed to start server"); a missing base path or version makes it wait
forever (file_system_storage_path_source.cc L236-L262). Either way a new pool pod never
becomes ready. So a config change is a new pod, never a reload (`--model_config_file_poll_wait_
seconds=0`, the ConfigMap immutable): the rolling update keeps `maxUnavailable: 0`, the old
pods go on serving every member while the new ones fail their startup probe, and Pulumi's await
fails the `pulumi up` at the Deployment's progress deadline. One member's bad version stalls its
pool's rollout; it never takes its co-tenants' traffic down. `modelctl publish` refuses a version
TF-Serving cannot load before it reaches a manifest, and the init container refuses a version
whose digest is not the manifest's before the server starts.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.model import tfserving
from infra.model.network_policy import network_policy_spec
from infra.model.workload import (
    APP_NAME_LABEL,
    INSTANCE_LABEL,
    SERVER_APP_NAME,
    TRACK_LABEL,
    autoscaler_spec,
    deployment_spec,
    disruption_budget_spec,
    fetcher,
    pod_spec,
    selector_labels,
    server_container,
    service_account_of,
    service_spec,
)
from infra.spec.manifest import LABEL_STABLE, ServedModel
from infra.spec.placement import Shard, quantity_bytes
from infra.spec.settings import StackSettings

POOL_LABEL = "model-serving.dev/pool"
# JSON {member: bytes it adds to a pod's memory request}: what the plan's cost and blast radius read.
MEMBERS_ANNOTATION = "model-serving.dev/members"


def members(shard: Shard) -> list[ServedModel]:
    """What the pool serves of each member: its stable version only (a canary runs beside it)."""
    return [member.track(LABEL_STABLE) for member in shard.members]


def labels(shard: Shard) -> dict[str, str]:
    return selector_labels(shard.name) | {
        APP_NAME_LABEL: SERVER_APP_NAME,
        INSTANCE_LABEL: shard.name,
        POOL_LABEL: shard.name,
        TRACK_LABEL: LABEL_STABLE,
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "model-serving",
        "app.kubernetes.io/managed-by": "pulumi",
    }


def metadata(shard: Shard, namespace: pulumi.Input[str], name: str | None = None) -> k8s.meta.v1.ObjectMetaArgs:
    return k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=labels(shard))


def fetch_list(shard: Shard, settings: StackSettings) -> str:
    """One line per member: `MODEL MODEL_DIR MODEL_SOURCE` (fetch_pool.sh reads it)."""
    return "".join(
        f"{m.name} {tfserving.model_base_path(m.name)} {settings.object_store.url(m.manifest.artifact.path)}\n"
        for m in shard.members
    )


def fetch_args(shard: Shard) -> list[str]:
    """The list's path, then `MODEL@VERSION=DIGEST` per served version: what the init container
    copies and verifies, in the pod template where a policy can read every digest."""
    specs = [f"{m.name}@{v}={m.digest(v)}" for m in members(shard) for v in m.served_versions]
    return [f"{tfserving.CONFIG_DIR}/{tfserving.FETCH_LIST}", *specs]


def config_files(shard: Shard, settings: StackSettings, fetch_script: str, fetch_pool_script: str) -> dict[str, str]:
    """Every file of the pool's ConfigMap: one `models.config` for every member, the fetch list."""
    files = {
        tfserving.MODELS_CONFIG: tfserving.models_config_list(members(shard)),
        tfserving.MONITORING_CONFIG: tfserving.monitoring_config(),
        tfserving.FETCH_SCRIPT: fetch_script,
        tfserving.FETCH_POOL_SCRIPT: fetch_pool_script,
        tfserving.FETCH_LIST: fetch_list(shard, settings),
    }
    if shard.pool.batching is not None:
        files[tfserving.BATCHING_CONFIG] = tfserving.batching_config(shard.pool.batching.as_batching())
    return files


def config_map(shard: Shard, files: dict[str, str], namespace: pulumi.Input[str]) -> dict[str, Any]:
    """Auto-named and immutable, like a model's: new data is a new ConfigMap, so the pods roll."""
    return {"metadata": metadata(shard, namespace), "data": dict(files), "immutable": True}


def service_account(
    shard: Shard, settings: StackSettings, namespace: pulumi.Input[str], role_arn: pulumi.Input[str] | None = None
) -> dict[str, Any]:
    """Named after the shard, so the pool's read role (IRSA) can trust it."""
    return service_account_of(metadata(shard, namespace, name=shard.name), settings, role_arn)


def deployment(
    shard: Shard,
    settings: StackSettings,
    namespace: pulumi.Input[str],
    config_map_name: pulumi.Input[str],
    config_hash: str,
) -> dict[str, Any]:
    """One TF-Serving Deployment for every member: memory is the base plus each member's model."""
    served = members(shard)
    first = served[0]
    pool = shard.pool
    memory = quantity_bytes(shard.memory_bytes())
    # The server opens its ports only once every member is loaded (see the module docstring), so
    # one member's loaded version answering is the whole pod's readiness.
    ready_path = f"/v1/models/{first.name}/versions/{first.version_labels[LABEL_STABLE]}/metadata"
    server = server_container(
        settings.images.serving,
        tfserving.server_args_with(shard.pool.batching.as_batching() if shard.pool.batching else None),
        ready_path,
        f"/v1/models/{first.name}",
        requests={"cpu": pool.resources.cpu, "memory": memory},
        limits={"cpu": pool.resources.cpu_limit or pool.resources.cpu, "memory": memory},
    )
    init = fetcher(settings, tfserving.FETCH_POOL_SCRIPT, fetch_args(shard), [])
    pod = pod_spec(
        shard.name,
        settings,
        shard.name,
        config_map_name,
        fetcher=init,
        server=server,
        model_storage=quantity_bytes(shard.storage_bytes()),
        gpu=False,
    )
    meta = metadata(shard, namespace)
    meta.annotations = {MEMBERS_ANNOTATION: json.dumps(shard.member_memory(), sort_keys=True)}
    spec = deployment_spec(shard.name, labels(shard), config_hash, pod)
    return {"metadata": meta, "spec": spec}


def service(shard: Shard, namespace: pulumi.Input[str]) -> dict[str, Any]:
    """Named after the shard: `<shard>.<namespace>` serves `/v1/models/<member>` of every member."""
    return {"metadata": metadata(shard, namespace, name=shard.name), "spec": service_spec(shard.name)}


def autoscaler(shard: Shard, namespace: pulumi.Input[str], deployment_name: pulumi.Input[str]) -> dict[str, Any]:
    scaling = shard.pool.autoscaling
    return {
        "metadata": metadata(shard, namespace),
        "spec": autoscaler_spec(
            deployment_name, scaling.min_replicas, scaling.max_replicas, scaling.target_cpu_utilization
        ),
    }


def disruption_budget(shard: Shard, namespace: pulumi.Input[str]) -> dict[str, Any]:
    return {"metadata": metadata(shard, namespace), "spec": disruption_budget_spec(selector_labels(shard.name))}


def network_policy(shard: Shard, settings: StackSettings, namespace: pulumi.Input[str]) -> dict[str, Any]:
    grpc = any(member.serves_grpc for member in shard.members)
    return {
        "metadata": metadata(shard, namespace),
        "spec": network_policy_spec({POOL_LABEL: shard.name}, settings, grpc),
    }
