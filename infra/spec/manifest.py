"""Model manifests: the pydantic schema of `models/<name>.yaml` and the one loader that reads them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from infra.spec.errors import ConfigError, ErrorItem, FieldProblemsError, pydantic_errors
from infra.spec.yamlio import read_yaml

MODELS_DIR = "models"
# `.yml` files are read too, so a stray copy cannot shadow a manifest unnoticed.
MANIFEST_SUFFIXES = (".yaml", ".yml")
SCHEMA_FILE = "manifest.schema.json"

# A model name is a TF-Serving model name, a URL segment and the stable name of its
# Service, so it must be a DNS-1035 label (Service names may not start with a digit).
# 40 characters leave room for the suffixes Pulumi's auto-naming appends.
MODEL_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MODEL_NAME_MAX = 40
# `<model>-canary` names a model's canary workload and Service; Flagger generates
# `<service>-primary` and `<service>-canary` Services (fluxcd/flagger
# pkg/router/kubernetes_default.go:48-78). A model named like that would collide.
RESERVED_NAME_SUFFIXES = ("-canary", "-primary")
# TF-Serving's version labels must match [a-zA-Z0-9_]+ (g3doc/serving_config.md).
LABEL_STABLE = "stable"
LABEL_CANARY = "canary"
# Kubernetes resource quantities (apimachinery resource.Quantity, without exponents).
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
ARTIFACT_PATH_PATTERN = r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*$"
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"

DEFAULT_SIGNATURE = "serving_default"
DEFAULT_TARGET_CPU = 70
DEFAULT_MODEL_STORAGE = "2Gi"
DEFAULT_NUM_BATCH_THREADS = 4
DEFAULT_MAX_ENQUEUED_BATCHES = 100
DEFAULT_AVAILABILITY = 0.99
DEFAULT_LATENCY_P99_MS = 500.0
DEFAULT_CANARY_WEIGHT = 10

ModelName = Annotated[str, StringConstraints(pattern=MODEL_NAME_PATTERN, min_length=1, max_length=MODEL_NAME_MAX)]
Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN)]
Digest = Annotated[str, StringConstraints(pattern=DIGEST_PATTERN)]
NonEmpty = Annotated[str, StringConstraints(min_length=1, strip_whitespace=True)]
VersionNumber = Annotated[int, Field(gt=0, strict=True)]


class Frozen(BaseModel):
    """Base of every manifest model: immutable, strict about unknown fields and types."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class Goal(StrEnum):
    """Which direction of the promotion metric is better."""

    maximize = "maximize"
    minimize = "minimize"


class ModelCard(Frozen):
    algorithm: NonEmpty = Field(description="Model family and architecture, e.g. 'Keras MLP, 2 hidden layers'.")
    training_data: NonEmpty = Field(description="What the model was trained on and where that data lives.")
    intended_use: NonEmpty = Field(description="What the model is for, and who calls it.")
    limitations: str | None = Field(default=None, description="Known failure modes and out-of-scope uses.")


class Artifact(Frozen):
    path: Annotated[str, StringConstraints(pattern=ARTIFACT_PATH_PATTERN, max_length=200)] = Field(
        description="Key prefix under the stack's object-store prefix; versions live at <store>/<path>/<version>/."
    )


class PublishedVersion(Frozen):
    digest: Digest = Field(description="sha256 of the version's checksum list in the object store ('sha256:<64 hex>').")
    metrics: dict[NonEmpty, float] = Field(
        default_factory=dict, description="Evaluation metrics on the held-out split, by name."
    )


class Resources(Frozen):
    cpu: Quantity = Field(description="CPU request of the serving container (Kubernetes quantity, e.g. 500m).")
    memory: Quantity = Field(description="Memory request of the serving container (e.g. 512Mi).")
    cpu_limit: Quantity | None = Field(default=None, description="CPU limit; defaults to the request.")
    memory_limit: Quantity | None = Field(default=None, description="Memory limit; defaults to the request.")
    model_storage: Quantity = Field(
        default=DEFAULT_MODEL_STORAGE,
        description="Size limit of the emptyDir the served versions are copied into.",
    )
    gpu: int | None = Field(
        default=None, ge=1, le=8, strict=True, description="NVIDIA GPUs per pod; schedules on the GPU nodes."
    )


class Batching(Frozen):
    max_batch_size: int = Field(gt=0, strict=True, description="Largest batch TF-Serving forms.")
    batch_timeout_micros: int = Field(ge=0, strict=True, description="How long to wait to fill a batch.")
    num_batch_threads: int = Field(
        default=DEFAULT_NUM_BATCH_THREADS, gt=0, strict=True, description="Threads that process batches."
    )
    max_enqueued_batches: int = Field(
        default=DEFAULT_MAX_ENQUEUED_BATCHES, gt=0, strict=True, description="Queue depth before requests are refused."
    )


class Autoscaling(Frozen):
    min_replicas: int = Field(ge=1, strict=True, description="Fewest serving pods.")
    max_replicas: int = Field(ge=1, strict=True, description="Most serving pods.")
    target_cpu_utilization: int = Field(
        default=DEFAULT_TARGET_CPU,
        ge=1,
        le=100,
        strict=True,
        description="Average CPU utilisation (% of request) the HPA aims for.",
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise FieldProblemsError(
                [("min_replicas", f"Got {self.min_replicas}, greater than max_replicas {self.max_replicas}")]
            )
        return self


class Slo(Frozen):
    """Service-level objectives the alerts and the metric-gated rollout hold the model to."""

    availability: float = Field(
        default=DEFAULT_AVAILABILITY, gt=0, lt=1, description="Share of requests that must succeed (0.99: 1% errors)."
    )
    latency_p99_ms: float = Field(default=DEFAULT_LATENCY_P99_MS, gt=0, description="p99 request latency bound, ms.")


class Rollout(Frozen):
    """Metric-gated rollout (Flagger analysis) settings; unset fields take the stack's defaults."""

    interval: Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]*[smh]$")] | None = Field(
        default=None, description="How often the analysis runs, e.g. 1m."
    )
    threshold: int | None = Field(default=None, ge=1, strict=True, description="Failed checks before rollback.")
    step_weight: int | None = Field(default=None, ge=1, le=50, strict=True, description="Traffic added per step, %.")
    max_weight: int | None = Field(default=None, ge=1, le=100, strict=True, description="Largest canary share, %.")


class Serving(Frozen):
    signature: NonEmpty = Field(default=DEFAULT_SIGNATURE, description="SavedModel signature clients call.")
    resources: Resources
    batching: Batching | None = Field(default=None, description="Server-side batching; off when absent.")
    autoscaling: Autoscaling
    ingress: bool = Field(default=True, description="Expose /v1/models/<name> on the stack's host.")
    slo: Slo = Field(default_factory=Slo, description="Objectives for alerts and metric-gated rollouts.")
    rollout: Rollout | None = Field(default=None, description="Metric-gated rollout settings (stacks with Flagger).")
    example_request: dict[str, Any] | None = Field(
        default=None,
        description='A TF-Serving REST predict body (`{"instances": [...]}`) used by `modelctl smoke`.',
    )

    @model_validator(mode="after")
    def _example_shape(self) -> Serving:
        body = self.example_request
        if body is not None:
            rows = body.get("instances", body.get("inputs"))
            if not isinstance(rows, list | dict) or not rows:
                raise FieldProblemsError([("example_request", "needs non-empty `instances` (or `inputs`)")])
            unknown = sorted(set(body) - {"instances", "inputs", "signature_name"})
            if unknown:
                raise FieldProblemsError(
                    [(f"example_request.{unknown[0]}", "not a field of a TF-Serving predict body")]
                )
        return self


class Promotion(Frozen):
    metric: NonEmpty = Field(description="Metric compared between challenger and champion.")
    # Enums take their YAML string value; global strict mode would demand an enum instance.
    goal: Goal = Field(strict=False, description="Whether a larger or a smaller metric is better.")
    min_delta: float = Field(default=0.0, ge=0, description="Smallest improvement that counts as better.")


class ResourcesOverride(Frozen):
    gpu: int | None = Field(default=None, ge=1, le=8, strict=True)
    cpu: Quantity | None = None
    memory: Quantity | None = None
    cpu_limit: Quantity | None = None
    memory_limit: Quantity | None = None
    model_storage: Quantity | None = None


class AutoscalingOverride(Frozen):
    min_replicas: int | None = Field(default=None, ge=1, strict=True)
    max_replicas: int | None = Field(default=None, ge=1, strict=True)
    target_cpu_utilization: int | None = Field(default=None, ge=1, le=100, strict=True)


class Canary(Frozen):
    version: VersionNumber = Field(description="Published version the canary workload serves.")
    weight: int = Field(
        default=DEFAULT_CANARY_WEIGHT, ge=1, le=99, strict=True, description="Share of the route's traffic, %."
    )


class EnvironmentServing(Frozen):
    stable: VersionNumber = Field(description="Published version served under the `stable` label.")
    canary: Canary | None = Field(
        default=None, description="A second workload serving another version for `weight`% of the traffic."
    )
    resources: ResourcesOverride | None = Field(default=None, description="Per-environment resource overrides.")
    autoscaling: AutoscalingOverride | None = Field(default=None, description="Per-environment autoscaling overrides.")
    batching: Batching | None = Field(default=None, description="Per-environment batching (replaces the default).")
    ingress: bool | None = Field(default=None, description="Per-environment override of serving.ingress.")

    @model_validator(mode="after")
    def _labels_unique(self) -> EnvironmentServing:
        if self.canary is not None and self.canary.version == self.stable:
            raise FieldProblemsError(
                [("canary.version", f"Got {self.canary.version}, the stable version too; a canary serves another")]
            )
        return self

    def labels(self) -> dict[str, int]:
        """TF-Serving version labels to version numbers."""
        labels = {LABEL_STABLE: self.stable}
        if self.canary is not None:
            labels[LABEL_CANARY] = self.canary.version
        return labels


class ModelManifest(Frozen):
    name: ModelName = Field(description="DNS-1035 label: TF-Serving model name, URL segment, Service name.")
    description: NonEmpty
    owner: Annotated[str, StringConstraints(pattern=EMAIL_PATTERN)] = Field(description="Owning team's e-mail.")
    card: ModelCard
    artifact: Artifact
    versions: dict[VersionNumber, PublishedVersion] = Field(
        description="Published versions, append-only and immutable.", min_length=1
    )
    serving: Serving
    promotion: Promotion
    environments: dict[ModelName, EnvironmentServing] = Field(
        default_factory=dict, description="What each stack serves, by version label."
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ModelManifest:
        published = ", ".join(str(v) for v in sorted(self.versions))
        problems: list[tuple[str, str]] = []
        for suffix in RESERVED_NAME_SUFFIXES:
            if self.name.endswith(suffix):
                problems.append(
                    (
                        "name",
                        f"Got {self.name!r}; names ending in {suffix!r} are taken by the Services of another model's "
                        f"canary workload and of Flagger's primary/canary (`<model>{suffix}`)",
                    )
                )
        for env, served in self.environments.items():
            for label, version in served.labels().items():
                if version not in self.versions:
                    field = "stable" if label == LABEL_STABLE else "canary.version"
                    problems.append(
                        (f"environments.{env}.{field}", f"Got {version}; published versions are {published}")
                    )
            try:
                self.serving_for(env)
            except FieldProblemsError as exc:
                problems.extend(exc.problems)
        if problems:
            raise FieldProblemsError(problems)
        return self

    def serving_for(self, env: str) -> Serving:
        """The serving spec for `env`: the defaults with the environment's overrides applied."""
        served = self.environments[env]
        resources = self.serving.resources
        if served.resources is not None:
            resources = resources.model_copy(update=served.resources.model_dump(exclude_none=True))
        autoscaling = self.serving.autoscaling
        if served.autoscaling is not None:
            merged = autoscaling.model_dump() | served.autoscaling.model_dump(exclude_none=True)
            if merged["min_replicas"] > merged["max_replicas"]:
                raise FieldProblemsError(
                    [
                        (
                            f"environments.{env}.autoscaling",
                            f"min_replicas {merged['min_replicas']} is greater than "
                            f"max_replicas {merged['max_replicas']} (after applying the overrides)",
                        )
                    ]
                )
            autoscaling = Autoscaling(**merged)
        return self.serving.model_copy(
            update={
                "resources": resources,
                "autoscaling": autoscaling,
                "batching": served.batching if served.batching is not None else self.serving.batching,
                "ingress": served.ingress if served.ingress is not None else self.serving.ingress,
            }
        )


@dataclass(frozen=True)
class ServedModel:
    """A model as one environment serves it: what the program declares resources from."""

    manifest: ModelManifest
    environment: str
    serving: Serving
    version_labels: Mapping[str, int]
    canary_weight: int | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def has_canary(self) -> bool:
        return LABEL_CANARY in self.version_labels

    def track(self, label: str) -> ServedModel:
        """The part of this model one workload serves: only the version under `label`."""
        return ServedModel(
            self.manifest, self.environment, self.serving, {label: self.version_labels[label]}, self.canary_weight
        )

    @property
    def served_versions(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.version_labels.values())))

    def digest(self, version: int) -> str:
        return self.manifest.versions[version].digest


def served_in(manifests: Iterable[ModelManifest], environment: str) -> list[ServedModel]:
    """The models `environment` serves, in name order."""
    served = []
    for m in sorted(manifests, key=lambda m: m.name):
        if environment in m.environments:
            canary = m.environments[environment].canary
            served.append(
                ServedModel(
                    m,
                    environment,
                    m.serving_for(environment),
                    m.environments[environment].labels(),
                    canary.weight if canary else None,
                )
            )
    return served


def parse_manifest(document: Any, display: str, expected_name: str | None = None) -> ModelManifest:
    """Validate one parsed manifest document; `display` is the file name used in errors."""
    if not isinstance(document, dict):
        raise ConfigError(
            [ErrorItem(display, "", f"expected a mapping of manifest fields, got {type(document).__name__}")]
        )
    try:
        manifest = ModelManifest.model_validate(document)
    except ValidationError as exc:
        raise ConfigError(pydantic_errors(display, exc)) from None
    if expected_name is not None and manifest.name != expected_name:
        raise ConfigError(
            [ErrorItem(display, "name", f"Got {manifest.name!r}; the file name says {expected_name!r} (rename one)")]
        )
    return manifest


# Valid manifests already parsed in this process, by file name and content. One plan reads
# the same manifests for validation and for every stack, on both sides: at a thousand models
# each read costs most of a second. The content is the key, so a hit is exactly what parsing
# would give; a manifest that fails is parsed again (and fails again) every time.
_PARSED: OrderedDict[tuple[str, bytes], ModelManifest] = OrderedDict()
_PARSED_LIMIT = 4096


def _parsed_manifest(path: Path, display: str) -> ModelManifest:
    try:
        key = (display, path.read_bytes())
    except OSError:
        key = None  # read_yaml reports it
    if key is not None and key in _PARSED:
        _PARSED.move_to_end(key)
        return _PARSED[key]
    manifest = parse_manifest(read_yaml(path, display), display, path.stem)
    if key is not None:
        _PARSED[key] = manifest
        if len(_PARSED) > _PARSED_LIMIT:
            _PARSED.popitem(last=False)
    return manifest


def load_manifests(root: Path, environments: Iterable[str] | None = None) -> list[ModelManifest]:
    """Read and validate every `models/*.yaml` under `root`; raise one ConfigError with all problems.

    With `environments`, a manifest that names an environment outside it is an error
    (a typo there would silently serve nothing).
    """
    models_dir = root / MODELS_DIR
    if not models_dir.is_dir():
        raise ConfigError([ErrorItem(f"{MODELS_DIR}/", "", "directory not found")])
    errors: list[ErrorItem] = []
    manifests: list[ModelManifest] = []
    origin: dict[str, str] = {}
    known = set(environments) if environments is not None else None
    paths = sorted(p for p in models_dir.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file())
    for path in paths:
        display = f"{MODELS_DIR}/{path.name}"
        try:
            manifest = _parsed_manifest(path, display)
        except ConfigError as exc:
            errors.extend(exc.errors)
            continue
        if manifest.name in origin:
            errors.append(
                ErrorItem(display, "name", f"model {manifest.name!r} is already defined in {origin[manifest.name]}")
            )
            continue
        if known is not None:
            for env in manifest.environments:
                if env not in known:
                    errors.append(
                        ErrorItem(
                            display,
                            f"environments.{env}",
                            f"no stack serves environment {env!r}; stacks serve {', '.join(sorted(known))}",
                        )
                    )
        origin[manifest.name] = display
        manifests.append(manifest)
    artifact_owner: dict[str, str] = {}
    for manifest in manifests:
        other = artifact_owner.setdefault(manifest.artifact.path, manifest.name)
        if other != manifest.name:
            errors.append(
                ErrorItem(
                    origin[manifest.name],
                    "artifact.path",
                    f"{manifest.artifact.path!r} is already the artifact path of model {other!r}",
                )
            )
    if errors:
        raise ConfigError(errors)
    return sorted(manifests, key=lambda m: m.name)


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema of a manifest, for editors (yaml-language-server) and `modelctl schema`."""
    schema = ModelManifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Model manifest"
    return schema
