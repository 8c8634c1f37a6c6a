"""Pure builders of one model's Kubernetes objects: typed pulumi-kubernetes *Args, no resources."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.model import tfserving
from infra.platform.cluster import GPU_RESOURCE, GPU_TAINT, NODE_POOL_LABEL
from infra.platform.pod_security import restricted_security_context
from infra.spec.manifest import LABEL_STABLE, ServedModel
from infra.spec.settings import StackSettings

SERVING_CONTAINER = "tfserving"
FETCHER_CONTAINER = "fetch-models"
# A UID/GID above 10000 keeps clear of host users (kube-score, checkov CKV_K8S_40).
RUN_AS_USER = 65532
CONFIG_VOLUME = "config"
MODELS_VOLUME = "models"
TMP_VOLUME = "tmp"
STORE_CA_VOLUME = "store-ca"
STORE_CA_DIR = "/etc/model-serving/store-ca"
TMP_SIZE = "64Mi"
CONFIG_HASH_ANNOTATION = "model-serving.dev/config-hash"
GATEWAY_API_GROUP = "gateway.networking.k8s.io"
GATEWAY_API_VERSION = f"{GATEWAY_API_GROUP}/v1"
# Long enough for endpoints to drop the pod before the server stops taking requests.
PRE_STOP_SLEEP_SECONDS = 10
TERMINATION_GRACE_SECONDS = 45
# Loading a large SavedModel can take minutes; the startup probe allows 5 s x 120.
STARTUP_FAILURE_THRESHOLD = 120
FETCHER_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}}
SCALE_DOWN_STABILIZATION_SECONDS = 300
ROLLING_SURGE = "25%"


MODEL_LABEL = "model-serving.dev/model"
TRACK_LABEL = "model-serving.dev/track"
VERSION_LABEL = "model-serving.dev/version"


@dataclass(frozen=True)
class Workload:
    """One Deployment of a model: the stable track, or the canary serving another version."""

    model: ServedModel  # restricted to this track's version label
    track: str  # LABEL_STABLE or LABEL_CANARY

    @classmethod
    def of(cls, model: ServedModel, track: str) -> Workload:
        return cls(model.track(track), track)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def instance(self) -> str:
        """`iris` for stable, `iris-canary`: the stable name is the model's, so URNs and the
        Service name stay put when a canary comes and goes."""
        return self.model.name if self.track == LABEL_STABLE else f"{self.model.name}-{self.track}"

    @property
    def version(self) -> int:
        return self.model.version_labels[self.track]


# The label that selects one workload's pods. Flagger builds the primary Deployment and the
# apex, primary and canary Services from ONE label of its target's selector: the first of
# `app`, `name`, `app.kubernetes.io/name` it finds (`-selector-labels` default,
# fluxcd/flagger v1.44.0 cmd/flagger/main.go:116; getSelectorLabel,
# pkg/canary/deployment_controller.go:321-333), and selects `<value>-primary` / `<value>`
# with it (pkg/router/kubernetes_default.go:48-78). `app` comes first in that list and is
# unique per workload (`iris`, `iris-canary`), so every Service Flagger generates selects
# one model's pods. Until 2026-11 the selector was `app.kubernetes.io/name:
# tensorflow-serving` (the same for every model) plus the instance, so Flagger's Services
# selected every model's pods; the policy rule `service-isolation` now refuses that.
SELECTOR_LABEL = "app"
# Descriptive labels that every pod keeps: they were the selector before, so a Service that
# still selects them during an upgrade also reaches the new pods.
APP_NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
SERVER_APP_NAME = "tensorflow-serving"


def selector_labels(instance: str) -> dict[str, str]:
    """Labels that select one workload's pods; the Deployment selector is immutable, so
    changing them replaces the Deployment (see the README, "Upgrading")."""
    return {SELECTOR_LABEL: instance}


def model_selector(model_name: str) -> dict[str, str]:
    """Selects every pod of a model, whatever its track."""
    return {MODEL_LABEL: model_name}


def common_labels(workload: Workload) -> dict[str, str]:
    return selector_labels(workload.instance) | {
        APP_NAME_LABEL: SERVER_APP_NAME,
        INSTANCE_LABEL: workload.instance,
        MODEL_LABEL: workload.name,
        TRACK_LABEL: workload.track,
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "model-serving",
        "app.kubernetes.io/managed-by": "pulumi",
    }


def metadata(workload: Workload, namespace: pulumi.Input[str], name: str | None = None) -> k8s.meta.v1.ObjectMetaArgs:
    """Object metadata; `name` only where a stable name matters, otherwise Pulumi auto-names."""
    return k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=common_labels(workload))


def service_account(
    model: ServedModel, settings: StackSettings, namespace: pulumi.Input[str], role_arn: pulumi.Input[str] | None = None
) -> dict[str, Any]:
    """ServiceAccount kwargs; named after the model so a workload-identity role can trust it.
    `role_arn`: the model's own read role (IRSA), over any stack-wide annotation."""
    return service_account_of(
        metadata(Workload.of(model, LABEL_STABLE), namespace, name=model.name), settings, role_arn
    )


def service_account_of(
    meta: k8s.meta.v1.ObjectMetaArgs, settings: StackSettings, role_arn: pulumi.Input[str] | None
) -> dict[str, Any]:
    """A serving workload's ServiceAccount: the stack's annotations, its own read role (IRSA) over them."""
    annotations: dict[str, pulumi.Input[str]] = dict(settings.service_account_annotations)
    if role_arn is not None:
        annotations["eks.amazonaws.com/role-arn"] = role_arn
    meta.annotations = annotations or None
    # The pod mounts no API token: the server never talks to the Kubernetes API.
    return {"metadata": meta, "automount_service_account_token": False}


def config_map(workload: Workload, files: dict[str, str], namespace: pulumi.Input[str]) -> dict[str, Any]:
    """ConfigMap kwargs. Auto-named: pulumi-kubernetes replaces a ConfigMap whose data changes
    (provider/pkg/provider/diff.go, unless enableConfigMapMutable), so the new name flows into
    the pod template and the Deployment rolls out, awaited by Pulumi."""
    return {"metadata": metadata(workload, namespace), "data": dict(files), "immutable": True}


def _http_probe(path: str, period: int, failure_threshold: int, timeout: int = 5) -> k8s.core.v1.ProbeArgs:
    return k8s.core.v1.ProbeArgs(
        http_get=k8s.core.v1.HTTPGetActionArgs(path=path, port="http"),
        period_seconds=period,
        timeout_seconds=timeout,
        failure_threshold=failure_threshold,
    )


def fetch_args(model: ServedModel) -> list[str]:
    """`VERSION=DIGEST` per served version: what the init container copies and verifies."""
    return [f"{v}={model.digest(v)}" for v in model.served_versions]


def fetcher_container(model: ServedModel, settings: StackSettings) -> k8s.core.v1.ContainerArgs:
    source = [
        k8s.core.v1.EnvVarArgs(name="MODEL_SOURCE", value=settings.object_store.url(model.manifest.artifact.path)),
        k8s.core.v1.EnvVarArgs(name="MODEL_DIR", value=tfserving.model_base_path(model.name)),
    ]
    return fetcher(settings, tfserving.FETCH_SCRIPT, fetch_args(model), source)


def fetcher(
    settings: StackSettings, script: str, args: list[str], source_env: list[k8s.core.v1.EnvVarArgs]
) -> k8s.core.v1.ContainerArgs:
    """The init container: runs `script` from the config volume against the object store."""
    store = settings.object_store
    env = [
        *source_env,
        k8s.core.v1.EnvVarArgs(name="AWS_REGION", value=store.region),
        # The aws CLI writes its cache under $HOME; the root filesystem is read-only.
        k8s.core.v1.EnvVarArgs(name="HOME", value="/tmp"),
    ]
    if store.endpoint:
        env.append(k8s.core.v1.EnvVarArgs(name="S3_ENDPOINT", value=store.endpoint))
    env_from = None
    if store.credentials_secret:
        env_from = [
            k8s.core.v1.EnvFromSourceArgs(secret_ref=k8s.core.v1.SecretEnvSourceArgs(name=store.credentials_secret))
        ]
    ca_mounts = []
    if store.ca_bundle:
        # The aws CLI (botocore) trusts the bundle AWS_CA_BUNDLE names instead of its default
        # one (botocore/configprovider.py: `ca_bundle` <- AWS_CA_BUNDLE; AWS CLI user guide,
        # "Environment variables to configure the AWS CLI"): the store's private CA.
        env.append(k8s.core.v1.EnvVarArgs(name="AWS_CA_BUNDLE", value=f"{STORE_CA_DIR}/{store.ca_bundle.key}"))
        ca_mounts = [k8s.core.v1.VolumeMountArgs(name=STORE_CA_VOLUME, mount_path=STORE_CA_DIR, read_only=True)]
    return k8s.core.v1.ContainerArgs(
        name=FETCHER_CONTAINER,
        image=settings.images.fetcher,
        image_pull_policy=_pull_policy(settings.images.fetcher),
        command=["/bin/sh", f"{tfserving.CONFIG_DIR}/{script}"],
        args=args,
        env=env,
        env_from=env_from,
        resources=k8s.core.v1.ResourceRequirementsArgs(**FETCHER_RESOURCES),
        security_context=restricted_security_context(RUN_AS_USER),
        volume_mounts=[
            k8s.core.v1.VolumeMountArgs(name=MODELS_VOLUME, mount_path=tfserving.MODELS_ROOT),
            k8s.core.v1.VolumeMountArgs(name=CONFIG_VOLUME, mount_path=tfserving.CONFIG_DIR, read_only=True),
            k8s.core.v1.VolumeMountArgs(name=TMP_VOLUME, mount_path="/tmp"),
            *ca_mounts,
        ],
    )


def fetcher_volumes(settings: StackSettings) -> list[k8s.core.v1.VolumeArgs]:
    """Volumes only the fetcher mounts: the store's CA bundle, from a ConfigMap the operator keeps."""
    bundle = settings.object_store.ca_bundle
    if bundle is None:
        return []
    source = k8s.core.v1.ConfigMapVolumeSourceArgs(
        name=bundle.config_map, items=[k8s.core.v1.KeyToPathArgs(key=bundle.key, path=bundle.key)], default_mode=0o444
    )
    return [k8s.core.v1.VolumeArgs(name=STORE_CA_VOLUME, config_map=source)]


def _pull_policy(image: str) -> str:
    # A digest cannot change under us; a tag is re-checked so a re-pushed tag is noticed.
    return "IfNotPresent" if "@sha256:" in image else "Always"


def serving_container(workload: Workload, settings: StackSettings) -> k8s.core.v1.ContainerArgs:
    model = workload.model
    resources = model.serving.resources
    # Metadata of a version answers 200 only once it is loaded (NotFound -> 404 otherwise,
    # model_servers/http_server.cc), so readiness means "this workload's version serves".
    ready_path = f"/v1/models/{model.name}/versions/{workload.version}/metadata"
    # Extended resources are requested in whole units and must equal their limit.
    gpus = {GPU_RESOURCE: str(resources.gpu)} if resources.gpu else {}
    image = settings.images.serving_gpu if resources.gpu else settings.images.serving
    assert image is not None  # validation: a GPU model needs images.servingGpu
    return server_container(
        image,
        tfserving.server_args(model),
        ready_path,
        f"/v1/models/{model.name}",
        requests={"cpu": resources.cpu, "memory": resources.memory} | gpus,
        limits={"cpu": resources.cpu_limit or resources.cpu, "memory": resources.memory_limit or resources.memory}
        | gpus,
    )


def server_container(
    image: str,
    args: list[str],
    ready_path: str,
    live_path: str,
    requests: dict[str, str],
    limits: dict[str, str],
) -> k8s.core.v1.ContainerArgs:
    """The TF-Serving container: probes on the REST port, drained before it stops, restricted."""
    return k8s.core.v1.ContainerArgs(
        name=SERVING_CONTAINER,
        image=image,
        image_pull_policy=_pull_policy(image),
        command=[tfserving.SERVER_BINARY],
        args=args,
        ports=[
            k8s.core.v1.ContainerPortArgs(name="grpc", container_port=tfserving.GRPC_PORT, protocol="TCP"),
            k8s.core.v1.ContainerPortArgs(name="http", container_port=tfserving.REST_PORT, protocol="TCP"),
        ],
        startup_probe=_http_probe(ready_path, period=5, failure_threshold=STARTUP_FAILURE_THRESHOLD),
        readiness_probe=_http_probe(ready_path, period=5, failure_threshold=2),
        liveness_probe=_http_probe(live_path, period=10, failure_threshold=3),
        resources=k8s.core.v1.ResourceRequirementsArgs(requests=requests, limits=limits),
        # Keep serving while endpoints drop this pod, so a rollout loses no request.
        lifecycle=k8s.core.v1.LifecycleArgs(
            pre_stop=k8s.core.v1.LifecycleHandlerArgs(sleep=k8s.core.v1.SleepActionArgs(seconds=PRE_STOP_SLEEP_SECONDS))
        ),
        security_context=restricted_security_context(RUN_AS_USER),
        volume_mounts=[
            k8s.core.v1.VolumeMountArgs(name=MODELS_VOLUME, mount_path=tfserving.MODELS_ROOT, read_only=True),
            k8s.core.v1.VolumeMountArgs(name=CONFIG_VOLUME, mount_path=tfserving.CONFIG_DIR, read_only=True),
            k8s.core.v1.VolumeMountArgs(name=TMP_VOLUME, mount_path="/tmp"),
        ],
    )


def deployment(
    workload: Workload,
    settings: StackSettings,
    namespace: pulumi.Input[str],
    config_map_name: pulumi.Input[str],
    config_hash: str,
    service_account_name: pulumi.Input[str],
    flagger_target: bool = False,
) -> dict[str, Any]:
    """Deployment kwargs: init container fetches, server serves, rolling update never drops capacity."""
    model = workload.model
    labels = common_labels(workload) | {VERSION_LABEL: str(workload.version)}
    pod = pod_spec(
        workload.instance,
        settings,
        service_account_name,
        config_map_name,
        fetcher=fetcher_container(model, settings),
        server=serving_container(workload, settings),
        model_storage=model.serving.resources.model_storage,
        gpu=bool(model.serving.resources.gpu),
    )
    meta = metadata(workload, namespace)
    if flagger_target:
        # Flagger owns this Deployment's rollout: it clones it to `<name>-primary`, which
        # serves, and scales this one to zero between analyses. Pulumi's await would wait
        # for replicas Flagger removes, so it is skipped (pulumi-kubernetes honours the
        # `pulumi.com/skipAwait` annotation); the analysis gates the rollout instead.
        meta.annotations = {"pulumi.com/skipAwait": "true"}
    return {"metadata": meta, "spec": deployment_spec(workload.instance, labels, config_hash, pod)}


def pod_spec(
    instance: str,
    settings: StackSettings,
    service_account_name: pulumi.Input[str],
    config_map_name: pulumi.Input[str],
    fetcher: k8s.core.v1.ContainerArgs,
    server: k8s.core.v1.ContainerArgs,
    model_storage: str,
    gpu: bool,
) -> k8s.core.v1.PodSpecArgs:
    """A serving pod: the fetcher fills the models volume, the server reads it; restricted, spread."""
    return k8s.core.v1.PodSpecArgs(
        service_account_name=service_account_name,
        automount_service_account_token=False,
        enable_service_links=False,
        termination_grace_period_seconds=TERMINATION_GRACE_SECONDS,
        security_context=k8s.core.v1.PodSecurityContextArgs(
            run_as_non_root=True,
            run_as_user=RUN_AS_USER,
            run_as_group=RUN_AS_USER,
            fs_group=RUN_AS_USER,
            seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
        ),
        init_containers=[fetcher],
        containers=[server],
        volumes=[
            k8s.core.v1.VolumeArgs(
                name=MODELS_VOLUME,
                empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit=model_storage),
            ),
            k8s.core.v1.VolumeArgs(
                name=CONFIG_VOLUME,
                config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=config_map_name, default_mode=0o444),
            ),
            k8s.core.v1.VolumeArgs(
                name=TMP_VOLUME, empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit=TMP_SIZE)
            ),
            *fetcher_volumes(settings),
        ],
        # GPU models go to the GPU node pool and tolerate its taint; the others never do.
        node_selector={NODE_POOL_LABEL: "gpu"} if gpu else None,
        tolerations=[
            k8s.core.v1.TolerationArgs(
                key=GPU_TAINT["key"], operator="Equal", value=GPU_TAINT["value"], effect=GPU_TAINT["effect"]
            )
        ]
        if gpu
        else None,
        topology_spread_constraints=[
            k8s.core.v1.TopologySpreadConstraintArgs(
                max_skew=1,
                topology_key="kubernetes.io/hostname",
                when_unsatisfiable="ScheduleAnyway",
                label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector_labels(instance)),
            )
        ],
    )


def deployment_spec(
    instance: str, labels: dict[str, str], config_hash: str, pod: k8s.core.v1.PodSpecArgs
) -> k8s.apps.v1.DeploymentSpecArgs:
    """A rolling update that never goes below the serving capacity; the config hash rolls the pods."""
    return k8s.apps.v1.DeploymentSpecArgs(
        # No `replicas`: the HorizontalPodAutoscaler owns the count, and a value here would
        # reset it on every `pulumi up`.
        selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector_labels(instance)),
        strategy=k8s.apps.v1.DeploymentStrategyArgs(
            type="RollingUpdate",
            # Never below the serving capacity; surge a quarter (at least one pod) at a time
            # so large deployments roll in a few steps.
            rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(max_unavailable=0, max_surge=ROLLING_SURGE),
        ),
        min_ready_seconds=5,
        revision_history_limit=5,
        progress_deadline_seconds=900,
        template=k8s.core.v1.PodTemplateSpecArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(
                labels=labels,
                annotations={
                    CONFIG_HASH_ANNOTATION: config_hash,
                    "kubectl.kubernetes.io/default-container": SERVING_CONTAINER,
                },
            ),
            spec=pod,
        ),
    )


def service(workload: Workload, namespace: pulumi.Input[str]) -> dict[str, Any]:
    """Service kwargs, named after the workload (`iris`, `iris-canary`): a stable DNS name."""
    return {"metadata": metadata(workload, namespace, name=workload.instance), "spec": service_spec(workload.instance)}


def service_spec(instance: str) -> k8s.core.v1.ServiceSpecArgs:
    """gRPC and REST of the pods of one workload."""
    return k8s.core.v1.ServiceSpecArgs(
        type="ClusterIP",
        selector=selector_labels(instance),
        ports=[
            k8s.core.v1.ServicePortArgs(
                name="grpc",
                port=tfserving.GRPC_PORT,
                target_port="grpc",
                protocol="TCP",
                app_protocol="kubernetes.io/h2c",
            ),
            k8s.core.v1.ServicePortArgs(
                name="http", port=tfserving.REST_PORT, target_port="http", protocol="TCP", app_protocol="http"
            ),
        ],
    )


def autoscaler(workload: Workload, namespace: pulumi.Input[str], deployment_name: pulumi.Input[str]) -> dict[str, Any]:
    scaling = workload.model.serving.autoscaling
    return {
        "metadata": metadata(workload, namespace),
        "spec": autoscaler_spec(
            deployment_name, scaling.min_replicas, scaling.max_replicas, scaling.target_cpu_utilization
        ),
    }


def autoscaler_spec(
    deployment_name: pulumi.Input[str], min_replicas: int, max_replicas: int, target_cpu: int
) -> k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs:
    """Scale a Deployment on CPU, and down one pod a minute after five quiet minutes."""
    return k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs(
        scale_target_ref=k8s.autoscaling.v2.CrossVersionObjectReferenceArgs(
            api_version="apps/v1", kind="Deployment", name=deployment_name
        ),
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        metrics=[
            k8s.autoscaling.v2.MetricSpecArgs(
                type="Resource",
                resource=k8s.autoscaling.v2.ResourceMetricSourceArgs(
                    name="cpu",
                    target=k8s.autoscaling.v2.MetricTargetArgs(type="Utilization", average_utilization=target_cpu),
                ),
            )
        ],
        behavior=k8s.autoscaling.v2.HorizontalPodAutoscalerBehaviorArgs(
            scale_down=k8s.autoscaling.v2.HPAScalingRulesArgs(
                stabilization_window_seconds=SCALE_DOWN_STABILIZATION_SECONDS,
                policies=[k8s.autoscaling.v2.HPAScalingPolicyArgs(type="Pods", value=1, period_seconds=60)],
            ),
        ),
    )


def disruption_budget(workload: Workload, namespace: pulumi.Input[str], whole_model: bool = False) -> dict[str, Any]:
    """PDB kwargs. `whole_model`: select every pod of the model, as under Flagger, whose
    `-primary` clone gets rewritten selector labels but keeps the model label."""
    selector = model_selector(workload.name) if whole_model else selector_labels(workload.instance)
    return {"metadata": metadata(workload, namespace), "spec": disruption_budget_spec(selector)}


def disruption_budget_spec(selector: dict[str, str]) -> k8s.policy.v1.PodDisruptionBudgetSpecArgs:
    return k8s.policy.v1.PodDisruptionBudgetSpecArgs(
        max_unavailable=1,
        selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
        # A pod stuck unready (e.g. a failed fetch) must not block node drains.
        unhealthy_pod_eviction_policy="AlwaysAllow",
    )
