"""Flagger's load tester on every stack with Flagger (pure builders): the Deployment, its Service,
its NetworkPolicy, and the ConfigMap holding TF-Serving's gRPC descriptors for `ghz`.

Why: Flagger counts a metric query without values as a failed check (fluxcd/flagger@v1.44.0
pkg/controller/scheduler_metrics.go L318-L324), so an analysis that sees no predictions rolls a
good version back; and its Gateway API router shifts HTTPRoutes only (pkg/router/gateway_api.go),
so gRPC never reaches the canary through the Gateway. The Canaries' `rollout` webhooks
(infra/model/loadtest.py) ask this load tester to send REST predictions (`hey`) and to check
gRPC Predict (`ghz`) against the canary Service directly.

The shape follows fluxcd/flagger@v1.44.0 kustomize/tester/: deployment.yaml (image L22,
command L27-L31, limits/requests L53-L58, readOnlyRootFilesystem and runAsUser 10001 L60-L61) and
service.yaml (port 80 -> named port `http`, L11-L15). The image carries `hey`, `jq` and `ghz`
(Dockerfile.loadtester L49 and L57 at v1.44.0) and runs as a non-root `app` user (L66).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.platform.network import platform_labels
from infra.platform.pod_security import restricted_security_context

NAME = "flagger-loadtester"
# The image kustomize/tester/deployment.yaml:L22 pins at fluxcd/flagger@v1.44.0. Pinned by exact
# tag only: no digest of it could be established from the sources read offline.
IMAGE = "ghcr.io/fluxcd/flagger-loadtester:0.38.0"
HTTP_PORT = 8080  # `-port=8080` (deployment.yaml:L29)
SERVICE_PORT = 80  # service.yaml:L12-L15
RUN_AS_USER = 10001  # deployment.yaml:L61; the image's `app` user owns /home/app (Dockerfile.loadtester)
# The label kustomize/tester selects by (deployment.yaml:L8-L10), and the first of Flagger's selector
# labels, as every workload here; a model named `flagger-loadtester` would collide (service-isolation).
SELECTOR = {"app": NAME}
# ghz needs the service's descriptors: from server reflection or from `--proto`/`--protoset`
# (bojand/ghz runner/reporter.go Options.Proto/Protoset). TF-Serving long had no reflection
# (tensorflow/serving#2148, "does not currently support gRPC server reflection"); a comment there
# says commit c140e01 (2024-02) added it, and whether our 2.19.1 image serves it was not verified
# offline. A protoset of the real descriptors works either way. The image ships only grpc-health's
# proto (Dockerfile.loadtester:L61, /tmp/ghz/health.proto), so we mount ours (scripts/write_protoset.py).
PROTOSET_FILE = "prediction_service.protoset"
PROTOSET_DIR = "/protos"
PROTOSET_PATH = f"{PROTOSET_DIR}/{PROTOSET_FILE}"
PROTOSET_SOURCE = Path(__file__).with_name("protos") / PROTOSET_FILE
PREDICT_METHOD = "tensorflow.serving.PredictionService/Predict"
METADATA_METHOD = "tensorflow.serving.PredictionService/GetModelMetadata"
# Where serving pods take connections from the load tester: TF-Serving's gRPC and REST ports.
SERVING_PORTS = (8500, 8501)
MODEL_LABEL = "model-serving.dev/model"


def url(namespace: str) -> str:
    """The webhook URL Flagger calls (POST /: pkg/loadtester/server.go HandleNewTask)."""
    return f"http://{NAME}.{namespace}:{SERVICE_PORT}/"


def _metadata(namespace: pulumi.Input[str], name: str | None = None) -> k8s.meta.v1.ObjectMetaArgs:
    return k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=platform_labels() | SELECTOR)


def protoset_config_map(namespace: pulumi.Input[str]) -> dict[str, Any]:
    return {
        "metadata": _metadata(namespace),
        "binary_data": {PROTOSET_FILE: base64.b64encode(PROTOSET_SOURCE.read_bytes()).decode("ascii")},
    }


def replicas(production: bool) -> int:
    # Two in production, as every workload there (policy rule production-replicas), so a node drain
    # never leaves an analysis without its webhooks. Each replica runs what it is asked; a background
    # `hey` may then run on both at once, at most doubling the REST load of a step.
    return 2 if production else 1


def deployment(
    namespace: pulumi.Input[str], protoset_config_map_name: pulumi.Input[str], production: bool
) -> dict[str, Any]:
    probe = k8s.core.v1.ProbeArgs(
        http_get=k8s.core.v1.HTTPGetActionArgs(path="/healthz", port="http"), timeout_seconds=5
    )
    container = k8s.core.v1.ContainerArgs(
        name="loadtester",
        image=IMAGE,
        image_pull_policy="IfNotPresent",
        command=["./loadtester", f"-port={HTTP_PORT}", "-log-level=info", "-timeout=1h"],
        ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=HTTP_PORT, protocol="TCP")],
        liveness_probe=probe,
        readiness_probe=probe,
        resources=k8s.core.v1.ResourceRequirementsArgs(
            requests={"cpu": "10m", "memory": "32Mi"}, limits={"cpu": "1000m", "memory": "512Mi"}
        ),
        security_context=restricted_security_context(RUN_AS_USER),
        volume_mounts=[
            k8s.core.v1.VolumeMountArgs(name="protos", mount_path=PROTOSET_DIR, read_only=True),
            k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
        ],
    )
    return {
        "metadata": _metadata(namespace),
        "spec": k8s.apps.v1.DeploymentSpecArgs(
            replicas=replicas(production),
            # One new pod before an old one goes, as the models' Deployments roll.
            strategy=k8s.apps.v1.DeploymentStrategyArgs(
                type="RollingUpdate",
                rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(max_surge=1, max_unavailable=0),
            ),
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=SELECTOR),
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(labels=platform_labels() | SELECTOR),
                spec=k8s.core.v1.PodSpecArgs(
                    automount_service_account_token=False,
                    security_context=k8s.core.v1.PodSecurityContextArgs(
                        run_as_non_root=True, seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault")
                    ),
                    containers=[container],
                    volumes=[
                        k8s.core.v1.VolumeArgs(
                            name="protos",
                            config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=protoset_config_map_name),
                        ),
                        k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs()),
                    ],
                ),
            ),
        ),
    }


def disruption_budget(namespace: pulumi.Input[str]) -> dict[str, Any]:
    return {
        "metadata": _metadata(namespace),
        "spec": k8s.policy.v1.PodDisruptionBudgetSpecArgs(
            min_available=1, selector=k8s.meta.v1.LabelSelectorArgs(match_labels=SELECTOR)
        ),
    }


def service(namespace: pulumi.Input[str]) -> dict[str, Any]:
    """The Service the webhooks name: a stable DNS name (`url`)."""
    return {
        "metadata": _metadata(namespace, NAME),
        "spec": k8s.core.v1.ServiceSpecArgs(
            type="ClusterIP",
            selector=SELECTOR,
            ports=[k8s.core.v1.ServicePortArgs(name="http", port=SERVICE_PORT, target_port="http", protocol="TCP")],
        ),
    }


def network_policy(namespace: pulumi.Input[str], flagger_namespace: str) -> dict[str, Any]:
    """Ingress from Flagger only; egress to the models' serving ports only. DNS comes from the
    namespace's allow-dns policy (infra/platform/network.py allow_dns); policies add up.

    Flagger is admitted by its namespace, the one our add-on installs it in. A stack whose
    cluster already runs Flagger (prod: no `addons.flagger`) must run it there too; nothing here
    can read where it runs, so the `webhooks-reachable` check only covers stacks installing it."""

    def tcp(port: int) -> k8s.networking.v1.NetworkPolicyPortArgs:
        return k8s.networking.v1.NetworkPolicyPortArgs(protocol="TCP", port=port)

    # A connection to the canary Service reaches the policy as one to a canary pod and its
    # container port (see infra/model/network_policy.py store_egress), so egress names the model pods.
    models = k8s.networking.v1.NetworkPolicyPeerArgs(
        pod_selector=k8s.meta.v1.LabelSelectorArgs(
            match_expressions=[k8s.meta.v1.LabelSelectorRequirementArgs(key=MODEL_LABEL, operator="Exists")]
        )
    )
    flagger = k8s.networking.v1.NetworkPolicyPeerArgs(
        namespace_selector=k8s.meta.v1.LabelSelectorArgs(
            match_labels={"kubernetes.io/metadata.name": flagger_namespace}
        )
    )
    return {
        "metadata": _metadata(namespace),
        "spec": k8s.networking.v1.NetworkPolicySpecArgs(
            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=SELECTOR),
            policy_types=["Ingress", "Egress"],
            ingress=[k8s.networking.v1.NetworkPolicyIngressRuleArgs(from_=[flagger], ports=[tcp(HTTP_PORT)])],
            egress=[k8s.networking.v1.NetworkPolicyEgressRuleArgs(to=[models], ports=[tcp(p) for p in SERVING_PORTS])],
        ),
    }
