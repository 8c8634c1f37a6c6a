"""Stack settings: the `model-serving:*` config of one stack, validated once into `StackSettings`."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from infra.spec.errors import ConfigError, ErrorItem, FieldProblemsError, pydantic_errors
from infra.spec.instances import INSTANCE_TYPES
from infra.spec.kubernetes_names import Annotations, Labels, OwnLabels
from infra.spec.manifest import QUANTITY_PATTERN, key_path_problem
from infra.spec.paths import OUTSIDE, is_inside
from infra.spec.prices import PriceTable, price_table_problems
from infra.spec.serving_pools import ServingPoolsSettings
from infra.spec.settings_base import DNS_LABEL, DnsLabel, Settings
from infra.spec.validators import FiniteValue, stack_name_problem
from infra.spec.yamlio import read_yaml

PROJECT = "model-serving"
STACKS_DIR = "stacks"
STACK_FILE_PREFIX = "Pulumi."
STACK_FILE_SUFFIX = ".yaml"
# Each stack is planned in full by `modelctl plan --all-stacks`: a bound on the work one
# checkout can ask for, like MAX_MANIFESTS.
MAX_STACKS = 50
# Keys of a stack file's `config:` that belong to Pulumi itself or to providers the program
# may use (aws, for a managed object store); they are passed through untouched and may be
# secrets (`secure:`), which offline runs mask.
PASSTHROUGH_NAMESPACES = ("pulumi", "aws")

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
BUCKET_NAME = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
KEY_PREFIX = r"^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$"
CIDR = r"^([0-9]{1,3}\.){3}[0-9]{1,3}/[0-9]{1,2}$"
# docker/distribution reference grammar (reference/regexp.go), reduced to what we accept.
IMAGE_REFERENCE = re.compile(
    r"^(?P<repository>[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)+)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
# An exact release: 2.19.1, v1.2.3, 2.17.0-gpu. `latest`, `2`, `2.19` float and are refused.
EXACT_VERSION_TAG = re.compile(r"^v?[0-9]+\.[0-9]+\.[0-9]+([-+][A-Za-z0-9_.-]+)?$")

Hostname = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN, max_length=253)]


class KubernetesTarget(Settings):
    context: str | None = Field(default=None, description="kubeconfig context of the target cluster.")
    kubeconfig: str | None = Field(default=None, description="Path to a kubeconfig file; default: the usual lookup.")
    render_dir: str | None = Field(
        default=None,
        description="Render manifests to this directory instead of applying them (no cluster needed).",
    )

    @model_validator(mode="after")
    def _one_target(self) -> KubernetesTarget:
        if self.render_dir is None and self.context is None and self.kubeconfig is None:
            raise FieldProblemsError(
                [
                    (
                        "",
                        "name a cluster (`context` or `kubeconfig`) or a `renderDir`; "
                        "refusing to guess the current context",
                    )
                ]
            )
        if self.render_dir is not None and (self.context is not None or self.kubeconfig is not None):
            raise FieldProblemsError(
                [("renderDir", "a rendering stack talks to no cluster; drop `context`/`kubeconfig`")]
            )
        return self


class ClusterMode(StrEnum):
    existing = "existing"
    eks = "eks"


def _instance_type_problem(instance_type: str) -> str | None:
    if instance_type in INSTANCE_TYPES:
        return None
    return f"Got {instance_type!r}; supported instance types: {', '.join(INSTANCE_TYPES)}"


class NodePool(Settings):
    """An EKS managed node group: one instance type, and the bounds the node autoscaler keeps to."""

    instance_type: Annotated[str, StringConstraints(pattern=r"^[a-z0-9]+\.[a-z0-9]+$")] = Field(
        description=f"EC2 instance type, one of {', '.join(INSTANCE_TYPES)} (their allocatable is known)."
    )
    min_size: int = Field(default=1, ge=0, strict=True)
    desired_size: int = Field(default=2, ge=0, strict=True)
    max_size: int = Field(default=4, ge=1, strict=True)

    @model_validator(mode="after")
    def _sizes(self) -> NodePool:
        problems = []
        problem = _instance_type_problem(self.instance_type)
        if problem:
            problems.append(("instanceType", problem))
        if not self.min_size <= self.desired_size <= self.max_size:
            problems.append(("desiredSize", "needs minSize <= desiredSize <= maxSize"))
        if problems:
            raise FieldProblemsError(problems)
        return self


class GpuNodePool(NodePool):
    """The GPU node group: empty until a GPU pod is pending, then scaled up by the node autoscaler."""

    # Scale from zero: for a managed node group created with 0 nodes the Cluster Autoscaler
    # reads its labels and taints through eks:DescribeNodegroup (kubernetes/autoscaler@
    # cluster-autoscaler-chart-9.59.0 cluster-autoscaler/cloudprovider/aws/README.md:L110).
    min_size: int = Field(default=0, ge=0, strict=True)
    desired_size: int = Field(default=0, ge=0, strict=True)
    max_size: int = Field(default=2, ge=1, strict=True)

    @model_validator(mode="after")
    def _has_gpus(self) -> GpuNodePool:
        known = INSTANCE_TYPES.get(self.instance_type)
        if known is not None and known.gpus == 0:
            gpu_types = ", ".join(t.name for t in INSTANCE_TYPES.values() if t.gpus)
            raise FieldProblemsError(
                [("instanceType", f"Got {self.instance_type!r}, which has no GPU; GPU instance types: {gpu_types}")]
            )
        return self


class EksSettings(Settings):
    kubernetes_version: Annotated[str, StringConstraints(pattern=r"^1\.[0-9]+$")] = Field(
        description="EKS Kubernetes version, e.g. 1.33."
    )
    cpu_nodes: NodePool = Field(description="The managed node group every model runs on by default.")
    gpu_nodes: GpuNodePool | None = Field(
        default=None,
        description="A tainted GPU node group for models with `resources.gpu` (default 0 nodes until one is needed).",
    )


Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)]


class TaintEffect(StrEnum):
    NoSchedule = "NoSchedule"
    PreferNoSchedule = "PreferNoSchedule"
    NoExecute = "NoExecute"


class TaintSettings(Settings):
    key: Annotated[str, StringConstraints(min_length=1, max_length=316)] = Field(description="Taint key.")
    value: str | None = Field(default=None, description="Taint value.")
    effect: TaintEffect = Field(strict=False, description="NoSchedule, PreferNoSchedule or NoExecute.")


class NodePoolSettings(Settings):
    """One node pool of an existing cluster, as the scheduler sees one of its nodes."""

    name: DnsLabel = Field(description="Pool name (for messages).")
    cpu: Quantity = Field(description="Allocatable CPU per node (Kubernetes quantity, e.g. 3920m).")
    memory: Quantity = Field(description="Allocatable memory per node (e.g. 14Gi).")
    gpus: int = Field(default=0, ge=0, description="Allocatable nvidia.com/gpu per node.")
    count: int = Field(ge=0, description="Nodes in the pool now.")
    max_count: int | None = Field(
        default=None, ge=0, description="The most nodes a node autoscaler may scale the pool to; absent: none does."
    )
    labels: Labels = Field(default_factory=dict, description="Labels every node of the pool carries.")
    taints: tuple[TaintSettings, ...] = Field(default=(), strict=False, description="Taints of every node.")

    @model_validator(mode="after")
    def _max_count(self) -> NodePoolSettings:
        if self.max_count is not None and self.max_count < self.count:
            raise FieldProblemsError([("maxCount", f"Got {self.max_count}; needs maxCount >= count ({self.count})")])
        return self


class ClusterSettings(Settings):
    mode: ClusterMode = Field(default=ClusterMode.existing, strict=False, description="existing or eks.")
    eks: EksSettings | None = Field(default=None, description="The EKS cluster (mode: eks).")
    gpu_nodes: bool = Field(
        default=False,
        description="An existing cluster has GPU nodes labelled model-serving.dev/node-pool=gpu, "
        "tainted nvidia.com/gpu:NoSchedule.",
    )
    oidc_provider_arn: str | None = Field(
        default=None, description="An existing cluster's IAM OIDC provider, for per-model roles (IRSA)."
    )
    oidc_issuer: str | None = Field(default=None, description="Its issuer host/path, without https://.")
    node_pools: tuple[NodePoolSettings, ...] = Field(
        default=(),
        strict=False,
        description="An existing cluster's node pools (allocatable per node, count, labels, taints), for the "
        "scheduling check; absent: unknown, not checked. An eks stack knows its pools from cluster.eks.",
    )

    @model_validator(mode="after")
    def _mode_fields(self) -> ClusterSettings:
        if self.mode is ClusterMode.eks and self.eks is None:
            raise FieldProblemsError([("eks", "required when mode is eks")])
        if self.mode is ClusterMode.existing and self.eks is not None:
            raise FieldProblemsError([("eks", "only used when mode is eks")])
        if self.mode is ClusterMode.eks and self.node_pools:
            raise FieldProblemsError([("nodePools", "only for an existing cluster; an eks stack sizes cluster.eks")])
        names = [pool.name for pool in self.node_pools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise FieldProblemsError([("nodePools", f"pool names must be unique; repeated: {', '.join(duplicates)}")])
        if (self.oidc_provider_arn is None) != (self.oidc_issuer is None):
            raise FieldProblemsError([("oidcIssuer", "give both oidcProviderArn and oidcIssuer, or neither")])
        return self

    @property
    def has_gpu_nodes(self) -> bool:
        return self.gpu_nodes or (self.eks is not None and self.eks.gpu_nodes is not None)


class AddonSettings(Settings):
    """Cluster add-ons as pinned Helm releases, each switched on by the stack."""

    envoy_gateway: bool = Field(default=False, description="Gateway API CRDs and Envoy Gateway.")
    metrics_server: bool = Field(default=False, description="metrics-server (the HPAs need it).")
    kube_prometheus_stack: bool = Field(default=False, description="Prometheus Operator, Prometheus and Grafana.")
    flagger: bool = Field(default=False, description="Flagger (with progressiveDelivery.flagger).")
    keda: bool = Field(
        default=False,
        description="KEDA (the ScaledObjects of models and pools whose autoscaling metric is `requests` need it; "
        "leave it off where the cluster's admins run KEDA already).",
    )
    cluster_autoscaler: bool = Field(
        default=False,
        description="Cluster Autoscaler with its own IAM role, scaling the EKS managed node groups between "
        "minSize and maxSize (cluster.mode: eks only).",
    )
    values: dict[Annotated[str, StringConstraints(pattern=DNS_LABEL)], dict[str, FiniteValue]] = Field(
        default_factory=dict,
        description="Helm values merged over an add-on's defaults, keyed by release name (envoy-gateway, "
        "metrics-server, kube-prometheus-stack, flagger, keda), for what one cluster needs: e.g. metrics-server's "
        "`args: [--kubelet-insecure-tls]` on kind, whose kubelets serve self-signed certificates.",
    )

    @model_validator(mode="after")
    def _values_of_installed_releases(self) -> AddonSettings:
        installed = {
            "envoy-gateway": self.envoy_gateway,
            "metrics-server": self.metrics_server,
            "kube-prometheus-stack": self.kube_prometheus_stack,
            "flagger": self.flagger,
            "keda": self.keda,
        }
        problems = []
        for release in self.values:
            if release not in installed:
                problems.append((f"values.{release}", f"unknown add-on; values apply to {', '.join(installed)}"))
            elif not installed[release]:
                problems.append((f"values.{release}", "this add-on is not installed by the stack; drop its values"))
        if problems:
            raise FieldProblemsError(problems)
        return self


# Cluster Autoscaler image per Kubernetes minor: "We recommend using Cluster Autoscaler with the
# Kubernetes control plane ... version for which it was meant" (kubernetes/autoscaler@
# cluster-autoscaler-chart-9.59.0 cluster-autoscaler/README.md:L48); the chart's default
# image is v1.35.0 (cluster-autoscaler/charts/cluster-autoscaler/values.yaml:L306). Tag
# cluster-autoscaler-1.33.6 is the newest 1.33 release in kubernetes/autoscaler (be4b5a1).
CLUSTER_AUTOSCALER_IMAGE_TAGS = {"1.33": "v1.33.6"}


class RouteKind(StrEnum):
    gateway = "gateway"
    ingress = "ingress"


class GatewaySettings(Settings):
    create: bool = Field(default=True, description="Declare a Gateway for the stack's host in the namespace.")
    name: DnsLabel = Field(default="models", description="Gateway name (declared or existing).")
    namespace: DnsLabel | None = Field(default=None, description="Namespace of an existing Gateway.")
    class_name: DnsLabel | None = Field(default=None, description="GatewayClass of the declared Gateway.")
    listener: DnsLabel = Field(default="https", description="Listener (sectionName) routes attach to.")

    @model_validator(mode="after")
    def _class_when_created(self) -> GatewaySettings:
        if self.create and self.class_name is None:
            raise FieldProblemsError([("className", "required when the stack declares its Gateway (create: true)")])
        if self.create and self.namespace is not None:
            raise FieldProblemsError([("namespace", "a declared Gateway lives in the stack's namespace; drop it")])
        return self


class GrpcRoutingSettings(Settings):
    """Where models that list `grpc` in serving.protocols take gRPC calls: `<model>.grpc.<host>`."""

    listener: DnsLabel = Field(
        default="grpc",
        description="Gateway listener (sectionName) the GRPCRoutes attach to; on a declared Gateway, an "
        "HTTPS listener for `*.grpc.<host>` (on an existing one, a listener for those names).",
    )
    tls_secret_name: DnsLabel | None = Field(
        default=None, description="Secret with a certificate for `*.grpc.<host>`, for a declared Gateway."
    )


class RoutingSettings(Settings):
    kind: RouteKind = Field(default=RouteKind.gateway, strict=False, description="gateway (HTTPRoute) or ingress.")
    host: Hostname = Field(description="Host name models are served on.")
    tls_secret_name: DnsLabel | None = Field(default=None, description="Secret holding the host's TLS certificate.")
    gateway: GatewaySettings | None = None
    ingress_class_name: DnsLabel | None = Field(default=None, description="IngressClass (kind: ingress).")
    controller_namespace: DnsLabel = Field(
        description="Namespace of the Gateway/Ingress controller's proxies, allowed through the NetworkPolicy."
    )
    grpc: GrpcRoutingSettings | None = Field(
        default=None,
        description="gRPC for the models that ask for it (serving.protocols), one host name per model: "
        "`<model>.grpc.<host>` (Gateway API GRPCRoute; kind gateway only).",
    )

    def grpc_host(self, model: str) -> str:
        """Each model's PredictionService has the same methods and carries the model's name inside the
        request body, so a route can only tell models apart by host name."""
        return f"{model}.{self.grpc_domain}"

    @property
    def grpc_domain(self) -> str:
        return f"grpc.{self.host}"

    @model_validator(mode="after")
    def _kind_fields(self) -> RoutingSettings:
        problems = []
        if self.grpc is not None:
            if self.kind is not RouteKind.gateway:
                problems.append(("grpc", "needs routing.kind: gateway (a GRPCRoute); an Ingress has no portable gRPC"))
            elif self.gateway is not None and self.gateway.create and self.grpc.tls_secret_name is None:
                problems.append(
                    ("grpc.tlsSecretName", f"required: the declared Gateway terminates TLS for *.grpc.{self.host}")
                )
        if self.kind is RouteKind.gateway:
            if self.gateway is None:
                problems.append(("gateway", "required when kind is gateway"))
            elif self.gateway.create and self.tls_secret_name is None:
                problems.append(("tlsSecretName", "required: the declared Gateway terminates TLS for the host"))
            if self.ingress_class_name is not None:
                problems.append(("ingressClassName", "only used when kind is ingress"))
        else:
            if self.ingress_class_name is None:
                problems.append(("ingressClassName", "required when kind is ingress"))
            if self.gateway is not None:
                problems.append(("gateway", "only used when kind is gateway"))
        if problems:
            raise FieldProblemsError(problems)
        return self


# A host the cluster's DNS answers for: a Service (`<svc>.<ns>.svc`, `...svc.cluster.local`).
# Nothing outside the cluster resolves it, and traffic to it is DNATed to a pod.
CLUSTER_INTERNAL_SUFFIXES = (".svc", ".svc.cluster.local", ".cluster.local")
# Label keys and values (k8s.io/apimachinery pkg/util/validation: IsQualifiedName, IsValidLabelValue).
LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY = rf"^({DNS_SUBDOMAIN[1:-1]}/)?{LABEL_NAME}$"
LABEL_VALUE = rf"^({LABEL_NAME})?$"
# ConfigMap data keys (IsConfigMapKey).
CONFIG_MAP_KEY = r"^[-._a-zA-Z0-9]+$"
EndpointUrl = Annotated[str, StringConstraints(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")]
# A Prometheus's address (KEDA's triggers, Flagger's analysis, the shadow verdict); `modelctl
# promote --prometheus` takes the same.
HTTP_URL_PATTERN = r"^https?://[^\s]+$"
PrometheusAddress = Annotated[str, StringConstraints(pattern=HTTP_URL_PATTERN)]


def cluster_internal_host(endpoint: str | None) -> str | None:
    """The endpoint's host when only the cluster's DNS can resolve it, else None."""
    if endpoint is None:
        return None
    host = urlsplit(endpoint).hostname or ""
    return host if host.endswith(CLUSTER_INTERNAL_SUFFIXES) else None


class InClusterStore(Settings):
    """The store's own pods, when it runs in the cluster the models run in (MinIO)."""

    namespace: DnsLabel = Field(description="Namespace of the store's pods.")
    pod_selector: dict[
        Annotated[str, StringConstraints(pattern=LABEL_KEY, max_length=316)],
        Annotated[str, StringConstraints(pattern=LABEL_VALUE)],
    ] = Field(min_length=1, description="Labels of the store's pods, e.g. `app.kubernetes.io/name: minio`.")
    port: int = Field(
        ge=1,
        le=65535,
        description="The store pods' container port (MinIO: 9000), not its Service's port: a NetworkPolicy "
        "sees the connection after the Service has translated it to a pod.",
    )


class CaBundle(Settings):
    """A private CA the fetcher trusts for the store's certificate."""

    config_map: Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN, max_length=253)] = Field(
        description="ConfigMap in the models' namespace holding the CA certificate(s), PEM."
    )
    key: Annotated[str, StringConstraints(pattern=CONFIG_MAP_KEY, max_length=253)] = Field(
        description="Key of that ConfigMap holding the PEM bundle, e.g. `ca.crt`."
    )


class Integrity(StrEnum):
    """How the artifact checks verify the objects of a served version against its checksum list."""

    checksums = "checksums"  # HEAD with checksum mode: the store's SHA-256 of each object, no download
    download = "download"  # GET and hash every object (stores without S3 additional checksums)
    listing = "listing"  # only that the listed objects exist and nothing else: contents unverified


class ObjectStoreSettings(Settings):
    bucket: Annotated[str, StringConstraints(pattern=BUCKET_NAME)] = Field(description="Bucket holding model versions.")
    prefix: Annotated[str, StringConstraints(pattern=KEY_PREFIX)] = Field(description="Key prefix of all models.")
    region: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]+$")] = Field(description="Region of the bucket.")
    endpoint: EndpointUrl | None = Field(
        default=None, description="S3-compatible endpoint URL the fetcher uses (MinIO, ...); AWS S3 when absent."
    )
    external_endpoint: EndpointUrl | None = Field(
        default=None,
        description="The same store's URL from outside the cluster (e.g. MinIO's ingress), for what runs "
        "there: the artifact checks of `pulumi preview`/`up` and `modelctl`, the publisher. Default: `endpoint`.",
    )
    credentials_secret: DnsLabel | None = Field(
        default=None,
        description="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for the fetcher; "
        "absent: the pod's workload identity (IRSA) or the node role.",
    )
    ca_bundle: CaBundle | None = Field(
        default=None,
        description="A ConfigMap holding the private CA of the store's certificate, mounted read-only into "
        "the fetcher and named by AWS_CA_BUNDLE.",
    )
    in_cluster: InClusterStore | None = Field(
        default=None,
        description="The store runs in the cluster: the NetworkPolicy allows its pods by label, "
        "instead of `egressCidrs`.",
    )
    egress_cidrs: tuple[Annotated[str, StringConstraints(pattern=CIDR)], ...] = Field(
        default=("0.0.0.0/0",), strict=False, description="Where the fetcher may connect to reach the store."
    )
    port: int = Field(default=443, ge=1, le=65535, description="TCP port of the store, for the NetworkPolicy.")
    managed: bool = Field(
        default=False,
        description="Declare the bucket (versioning, encryption, public access blocked, TLS only, noncurrent "
        "versions expiring), per-model read roles and the CI publisher policy.",
    )
    noncurrent_version_days: int = Field(default=30, ge=1, description="Days a replaced object version is kept.")
    verify_artifacts: bool = Field(
        default=True,
        description="A real `pulumi preview`/`up` first checks that every served version is committed "
        "and matches its digest (standard AWS credential chain, `externalEndpoint` if set).",
    )

    integrity: Integrity = Field(
        default=Integrity.checksums,
        strict=False,
        description="How the artifact checks verify each object of a served version against the version's "
        "checksum list: `checksums` (HEAD requests; the store's S3 SHA-256 additional checksum, which "
        "`modelctl publish` stores), `download` (GET and hash every object; for stores without additional "
        "checksums), `listing` (only that exactly the listed objects exist; a warning says contents are unverified).",
    )

    @field_validator("prefix", mode="before")
    @classmethod
    def _prefix_is_relative(cls, value: Any) -> Any:
        if isinstance(value, str):
            problem = key_path_problem(value)
            if problem is not None:
                raise ValueError(f"Got {value!r}; {problem}; it is a key prefix in the bucket")
        return value

    def url(self, path: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}/{path}"

    @property
    def outside_endpoint(self) -> str | None:
        """The endpoint for clients outside the cluster (CI runners, operators' machines)."""
        return self.external_endpoint or self.endpoint

    @model_validator(mode="after")
    def _in_cluster_store(self) -> ObjectStoreSettings:
        problems = []
        internal = cluster_internal_host(self.endpoint)
        if internal and self.in_cluster is None:
            # NetworkPolicy sees the connection after the Service's DNAT: the store pod's IP and
            # port, which an ipBlock is not meant to match ("These should be cluster-external
            # IPs, since Pod IPs are ephemeral and unpredictable", kubernetes/website
            # content/en/docs/concepts/services-networking/network-policies.md, ipBlock).
            problems.append(
                (
                    "inCluster",
                    f"required: {internal} is a Service in the cluster, and the NetworkPolicy sees connections "
                    "to it after the Service's translation, at the store pod's IP and port, which egressCidrs "
                    "cannot match; name the store's pods ({namespace, podSelector, port})",
                )
            )
        if internal and self.verify_artifacts and self.external_endpoint is None:
            problems.append(
                (
                    "externalEndpoint",
                    f"required while verifyArtifacts is true: the artifact checks run outside the cluster "
                    f"(a CI runner), where {internal} does not resolve; give the store's URL from outside "
                    "(e.g. its ingress), or set verifyArtifacts: false",
                )
            )
        if internal and self.endpoint and self.endpoint.startswith("https://") and self.ca_bundle is None:
            # Publicly trusted CAs have issued no certificates for internal names since November
            # 2015 (https://cabforum.org/working-groups/server/internal-names), so the certificate
            # of a `.svc` name is signed by a private CA the fetcher must be given.
            problems.append(
                (
                    "caBundle",
                    f"required for https at {internal}: a certificate for a cluster-internal name comes from a "
                    "private CA, which the fetcher must be given ({configMap, key} of a ConfigMap holding it)",
                )
            )
        if self.ca_bundle is not None and self.endpoint and self.endpoint.startswith("http://"):
            problems.append(("caBundle", f"the endpoint {self.endpoint} is plain http; no certificate to verify"))
        if self.external_endpoint is not None:
            if self.endpoint is None:
                problems.append(("externalEndpoint", "only used with an `endpoint` (an S3-compatible store)"))
            elif cluster_internal_host(self.external_endpoint):
                problems.append(
                    ("externalEndpoint", f"Got {self.external_endpoint!r}; it must resolve outside the cluster")
                )
        if self.in_cluster is not None:
            # The fields' defaults are fine; only a value the stack wrote contradicts inCluster.
            if "egress_cidrs" in self.model_fields_set:
                problems.append(
                    ("egressCidrs", "contradicts inCluster: the NetworkPolicy allows the store's pods, not addresses")
                )
            if "port" in self.model_fields_set:
                problems.append(("port", "contradicts inCluster: the NetworkPolicy allows inCluster.port; drop it"))
            if self.credentials_secret is None:
                problems.append(
                    (
                        "credentialsSecret",
                        "required with inCluster: an in-cluster store (MinIO) knows no cloud workload identity "
                        "(IRSA); name a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                    )
                )
        if problems:
            raise FieldProblemsError(problems)
        return self


class ImageSettings(Settings):
    serving: str = Field(description="TensorFlow Serving image, pinned to an exact version or digest.")
    serving_gpu: str | None = Field(default=None, description="TensorFlow Serving GPU image, for GPU models.")
    fetcher: str = Field(description="Init image that copies versions from the store (needs aws CLI, sh, sha256sum).")
    require_digest: bool = Field(default=False, description="Refuse images not pinned by digest.")

    @model_validator(mode="after")
    def _pinned(self) -> ImageSettings:
        problems = []
        for field in ("serving", "fetcher", "serving_gpu"):
            if getattr(self, field) is None:
                continue
            problem = image_pin_problem(getattr(self, field), self.require_digest)
            if problem:
                problems.append((to_camel(field), problem))
        if problems:
            raise FieldProblemsError(problems)
        return self


def image_pin_problem(reference: str, require_digest: bool) -> str | None:
    """Why `reference` is not an acceptably pinned image, or None."""
    match = IMAGE_REFERENCE.match(reference)
    if not match:
        return f"Got {reference!r}; expected registry/repository:tag[@sha256:digest]"
    tag, digest = match["tag"], match["digest"]
    if require_digest and digest is None:
        return f"Got {reference!r}; this stack requires images pinned by digest (@sha256:...)"
    if digest is None and (tag is None or not EXACT_VERSION_TAG.match(tag)):
        return f"Got {reference!r}; pin an exact version tag (e.g. :2.19.1) or a digest, never a floating tag"
    return None


class MonitoringSettings(Settings):
    prometheus_namespace: DnsLabel | None = Field(
        default=None, description="Namespace whose Prometheus may scrape the REST port."
    )
    prometheus_operator: bool = Field(
        default=False, description="Declare a ServiceMonitor and a PrometheusRule per model (Prometheus Operator)."
    )
    grafana_dashboards: bool = Field(default=False, description="Declare a dashboard ConfigMap per model.")
    dashboard_namespace: DnsLabel | None = Field(
        default=None, description="Where Grafana's dashboard sidecar looks; default: the models' namespace."
    )
    selector_labels: OwnLabels = Field(
        default_factory=dict,
        description="Labels Prometheus selects monitors and rules by (kube-prometheus-stack: `release`).",
    )
    prometheus_address: PrometheusAddress | None = Field(
        default=None,
        description="URL of the Prometheus that scrapes the models (through the ServiceMonitors), as KEDA's "
        "operator reaches it: what the triggers of `autoscaling.metric: requests` query.",
    )


class ProgressiveDeliverySettings(Settings):
    """Metric-gated rollouts: Flagger shifts traffic and rolls back on the models' SLOs."""

    flagger: bool = Field(default=False, description="Declare a Flagger Canary per model (Gateway API provider).")
    prometheus_address: PrometheusAddress | None = Field(default=None, description="Prometheus the analysis queries.")
    interval: Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]*[smh]$")] = "1m"
    threshold: int = Field(default=5, ge=1, description="Failed checks before a rollback.")
    step_weight: int = Field(default=10, ge=1, le=50, description="Traffic added per step, %.")
    max_weight: int = Field(default=50, ge=1, le=100, description="Largest canary share before promotion, %.")

    @model_validator(mode="after")
    def _address(self) -> ProgressiveDeliverySettings:
        if self.flagger and self.prometheus_address is None:
            raise FieldProblemsError([("prometheusAddress", "required when flagger is on: the analysis queries it")])
        return self


class ExternalKind(StrEnum):
    """Kinds of objects a stack may name without declaring them."""

    secret = "Secret"
    config_map = "ConfigMap"
    gateway = "Gateway"
    gateway_class = "GatewayClass"
    ingress_class = "IngressClass"
    namespace = "Namespace"
    service_account = "ServiceAccount"


class ExternalObject(Settings):
    """A prerequisite the cluster already holds (installed by its admins, or by hand): the
    offline plan's reference check accepts references to it."""

    kind: ExternalKind = Field(strict=False, description="Kind of the object.")
    name: DnsLabel = Field(description="Its name.")
    namespace: DnsLabel | None = Field(
        default=None,
        description="Its namespace; absent for cluster-scoped kinds (GatewayClass, IngressClass, Namespace).",
    )

    @model_validator(mode="after")
    def _scope(self) -> ExternalObject:
        cluster_scoped = self.kind in (ExternalKind.gateway_class, ExternalKind.ingress_class, ExternalKind.namespace)
        if cluster_scoped and self.namespace is not None:
            raise FieldProblemsError([("namespace", f"a {self.kind.value} is cluster-scoped; drop `namespace`")])
        if not cluster_scoped and self.namespace is None:
            raise FieldProblemsError([("namespace", f"a {self.kind.value} lives in a namespace; name it")])
        return self


class StackSettings(Settings):
    """Everything the program needs from one stack's config, read once in `program.main()`."""

    stack: DnsLabel = Field(description="Stack name.")
    environment: DnsLabel = Field(description="Which `environments.<env>` of the manifests this stack serves.")
    namespace: DnsLabel = Field(description="Namespace the models run in.")
    cluster: ClusterSettings = ClusterSettings()
    kubernetes: KubernetesTarget | None = Field(
        default=None, description="How to reach an existing cluster (mode: existing), or render instead."
    )
    addons: AddonSettings = AddonSettings()
    routing: RoutingSettings
    object_store: ObjectStoreSettings
    images: ImageSettings
    monitoring: MonitoringSettings = MonitoringSettings()
    progressive_delivery: ProgressiveDeliverySettings | None = None
    serving_pools: ServingPoolsSettings = Field(
        default_factory=ServingPoolsSettings,
        description="Shared TF-Serving workloads for many models (docs/pools.md); absent: every model its own.",
    )
    production: bool = Field(
        default=False, description="A production stack: the policies require two replicas and a disruption budget."
    )
    service_account_annotations: Annotations = Field(
        default_factory=dict, description="Annotations on every model ServiceAccount (e.g. an IRSA role ARN)."
    )
    external: tuple[ExternalObject, ...] = Field(
        default=(),
        strict=False,
        description="Objects the stack's resources name but do not declare (a TLS Secret, a shared Gateway, "
        "an IngressClass): the plan's reference check accepts them.",
    )
    prices: PriceTable | None = Field(
        default=None,
        description="Hourly prices with their source and date, for the cost estimates of plans, status and the "
        "catalog (docs/cost.md); absent: capacity only.",
    )
    bootstrap: bool = Field(
        default=False,
        description="Declare the platform only — cluster, add-ons, bucket, IAM — and no models, for the first "
        "`pulumi up` of a stack that creates its own object store (objectStore.managed); publish the served "
        "versions, then remove the setting and run `pulumi up` again.",
    )

    @field_validator("bootstrap", mode="before")
    @classmethod
    def _bootstrap_as_written(cls, value: Any) -> Any:
        # `pulumi config set model-serving:bootstrap true` stores the string "true".
        return {"true": True, "false": False}.get(value, value) if isinstance(value, str) else value

    @property
    def rendering(self) -> bool:
        return self.kubernetes is not None and self.kubernetes.render_dir is not None

    @property
    def flagger(self) -> bool:
        return self.progressive_delivery is not None and self.progressive_delivery.flagger

    @model_validator(mode="after")
    def _cluster_target(self) -> StackSettings:
        if self.cluster.mode is ClusterMode.existing and self.kubernetes is None:
            raise FieldProblemsError([("kubernetes", "required for an existing cluster (cluster.mode: existing)")])
        if self.cluster.mode is ClusterMode.eks and self.kubernetes is not None:
            raise FieldProblemsError(
                [("kubernetes", "an eks stack reaches its cluster through the cluster's kubeconfig")]
            )
        return self

    @model_validator(mode="after")
    def _bootstrap_creates_its_store(self) -> StackSettings:
        if self.bootstrap and not self.object_store.managed:
            raise FieldProblemsError(
                [
                    (
                        "bootstrap",
                        "only for a stack that creates its object store (objectStore.managed: true); this stack's "
                        "store exists already: publish the served versions to it and run without bootstrap",
                    )
                ]
            )
        return self

    @model_validator(mode="after")
    def _cluster_autoscaler_on_eks(self) -> StackSettings:
        if not self.addons.cluster_autoscaler:
            return self
        if self.cluster.eks is None:
            raise FieldProblemsError(
                [("addons.clusterAutoscaler", "only for cluster.mode: eks (it scales the stack's managed node groups)")]
            )
        if self.cluster.eks.kubernetes_version not in CLUSTER_AUTOSCALER_IMAGE_TAGS:
            raise FieldProblemsError(
                [
                    (
                        "addons.clusterAutoscaler",
                        f"no Cluster Autoscaler release is pinned for Kubernetes {self.cluster.eks.kubernetes_version} "
                        f"(pinned: {', '.join(CLUSTER_AUTOSCALER_IMAGE_TAGS)})",
                    )
                ]
            )
        return self

    @model_validator(mode="after")
    def _no_pools_under_flagger(self) -> StackSettings:
        # Flagger's Canary targets one Deployment and rolls it as a whole (docs/pools.md, "Flagger"):
        # a version bump of one member would be analysed on every co-tenant's traffic.
        if self.flagger and self.serving_pools.pools:
            raise FieldProblemsError(
                [
                    (
                        "servingPools.pools",
                        "serving pools are off on a Flagger stack: Flagger's Canary rolls a pool's Deployment as a "
                        "whole, so one member's analysis would gate every co-tenant; drop the pools or "
                        "progressiveDelivery.flagger",
                    )
                ]
            )
        return self

    @model_validator(mode="after")
    def _prices_cover_the_cluster(self) -> StackSettings:
        if self.prices is None:
            return self
        eks = self.cluster.eks
        groups = None
        if eks is not None:
            groups = {"cluster.eks.cpuNodes": eks.cpu_nodes.instance_type}
            if eks.gpu_nodes is not None:
                groups["cluster.eks.gpuNodes"] = eks.gpu_nodes.instance_type
        gpu_nodes = self.cluster.gpu_nodes or any(pool.gpus for pool in self.cluster.node_pools)
        problems = price_table_problems(self.prices, groups, gpu_nodes)
        if problems:
            raise FieldProblemsError(problems)
        return self

    @model_validator(mode="after")
    def _flagger_needs_gateway(self) -> StackSettings:
        if self.flagger and self.routing.kind is not RouteKind.gateway:
            raise FieldProblemsError(
                [("progressiveDelivery.flagger", "Flagger's Gateway API provider needs routing.kind: gateway")]
            )
        return self


# Config keys of this project, as written in a stack file after `model-serving:`.
CONFIG_KEYS = tuple(info.alias or name for name, info in StackSettings.model_fields.items() if name != "stack")


# Keys whose value is a plain string; every other key holds an object (Pulumi structured config).
STRING_KEYS = ("environment", "namespace")


def settings_from_config(stack: str, get: Callable[[str], Any], file: str) -> StackSettings:
    """Build StackSettings from config values; `get(key)` returns a key's value or None."""
    values: dict[str, Any] = {"stack": stack}
    for key in CONFIG_KEYS:
        value = get(key)
        if value is not None:
            values[key] = value
    values.setdefault("environment", stack)
    try:
        return StackSettings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_config_paths(pydantic_errors(file, exc))) from None


def _config_paths(items: list[ErrorItem]) -> list[ErrorItem]:
    """`objectStore.bucket` -> `config.model-serving:objectStore.bucket`, as the key is written in the file."""
    fixed = []
    for item in items:
        path = f"config.{PROJECT}:{item.field}" if item.field else "config"
        fixed.append(ErrorItem(item.file, path, item.message))
    return fixed


def stack_file(root: Path, stack: str) -> Path:
    return root / STACKS_DIR / f"{STACK_FILE_PREFIX}{stack}{STACK_FILE_SUFFIX}"


def stack_names(root: Path) -> list[str]:
    """Stacks that have a file under `stacks/`, in name order; a ConfigError past MAX_STACKS."""
    directory = root / STACKS_DIR
    if directory.is_symlink() and not is_inside(root, directory):
        raise ConfigError([ErrorItem(f"{STACKS_DIR}/", "", OUTSIDE)])
    if not directory.is_dir():
        return []
    names = []
    problems = []
    for path in directory.glob(f"{STACK_FILE_PREFIX}*{STACK_FILE_SUFFIX}"):
        name = path.name[len(STACK_FILE_PREFIX) : -len(STACK_FILE_SUFFIX)]
        names.append(name)
        if len(names) > MAX_STACKS:
            raise ConfigError([ErrorItem(f"{STACKS_DIR}/", "", f"more than {MAX_STACKS} stack files, the limit")])
        # A discovered name becomes an argument of subprocesses and of `pulumi --stack`.
        problem = stack_name_problem(name)
        if problem is not None:
            problems.append(ErrorItem(f"{STACKS_DIR}/{path.name}", "", f"{problem}; rename the file"))
    if problems:
        raise ConfigError(sorted(problems))
    return sorted(names)


def read_stack_config(root: Path, stack: str) -> dict[str, Any]:
    """The `config:` mapping of a stack file, keys as written (`model-serving:namespace`)."""
    problem = stack_name_problem(stack)
    if problem is not None:
        raise ConfigError([ErrorItem(f"{STACKS_DIR}/", "", problem)])
    path = stack_file(root, stack)
    display = f"{STACKS_DIR}/{path.name}"
    if (root / STACKS_DIR).is_symlink() and not is_inside(root, root / STACKS_DIR):
        raise ConfigError([ErrorItem(f"{STACKS_DIR}/", "", OUTSIDE)])
    if (path.is_symlink() or path.exists()) and not is_inside(root, path):
        raise ConfigError([ErrorItem(display, "", OUTSIDE)])
    if not path.is_file():
        raise ConfigError(
            [ErrorItem(display, "", f"no such stack file (stacks are {', '.join(stack_names(root)) or 'none'})")]
        )
    document = read_yaml(path, display)
    if not isinstance(document, dict):
        raise ConfigError([ErrorItem(display, "", f"expected a mapping with `config:`, got {type(document).__name__}")])
    unknown = sorted(set(document) - {"config", "secretsprovider", "encryptedkey", "encryptionsalt", "environment"})
    if unknown:
        raise ConfigError([ErrorItem(display, k, "unknown top-level key of a Pulumi stack file") for k in unknown])
    config = document.get("config")
    if not isinstance(config, dict):
        raise ConfigError([ErrorItem(display, "config", "expected a mapping of config keys")])
    errors = []
    for key in config:
        namespace = str(key).split(":", 1)[0] if ":" in str(key) else None
        if namespace is None:
            errors.append(ErrorItem(display, f"config.{key}", f"config keys are namespaced: `{PROJECT}:{key}`?"))
        elif namespace == PROJECT:
            name = str(key).split(":", 1)[1]
            if name not in CONFIG_KEYS:
                errors.append(ErrorItem(display, f"config.{key}", f"unknown setting; known: {', '.join(CONFIG_KEYS)}"))
            elif _is_secure(config[key]):
                errors.append(
                    ErrorItem(display, f"config.{key}", "must not be a secret: settings here end up in plain manifests")
                )
        elif namespace not in PASSTHROUGH_NAMESPACES:
            errors.append(
                ErrorItem(
                    display, f"config.{key}", f"unknown config namespace {namespace!r}; this project reads `{PROJECT}:`"
                )
            )
    if errors:
        raise ConfigError(errors)
    return config


def _is_secure(value: Any) -> bool:
    if isinstance(value, Mapping):
        return set(value) == {"secure"} or any(_is_secure(v) for v in value.values())
    if isinstance(value, list):
        return any(_is_secure(v) for v in value)
    return False


def stack_environments(root: Path) -> set[str]:
    """The environments the stacks under `root` serve (`model-serving:environment`, default the
    stack's name): what a manifest's `environments.<env>` may name. A stack file that cannot be
    read counts as its name, so one broken file does not fail every manifest too."""
    environments = set()
    for stack in stack_names(root):
        try:
            value = read_stack_config(root, stack).get(f"{PROJECT}:environment")
        except ConfigError:
            value = None
        environments.add(value if isinstance(value, str) and value else stack)
    return environments


def load_stack_settings(root: Path, stack: str) -> StackSettings:
    """Read and validate `stacks/Pulumi.<stack>.yaml`."""
    config = read_stack_config(root, stack)
    display = f"{STACKS_DIR}/{stack_file(root, stack).name}"
    return settings_from_config(stack, lambda key: config.get(f"{PROJECT}:{key}"), display)
