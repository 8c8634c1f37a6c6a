"""Model manifests: the pydantic schema of `models/<name>.yaml` and the one loader that reads them."""

from __future__ import annotations

import contextlib
import os
import time
import typing
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from infra.spec.errors import ConfigError, ErrorItem, FieldProblemsError, pydantic_errors
from infra.spec.paths import OUTSIDE, is_inside, require_inside
from infra.spec.scaling import ScalingMetric, metric_problems
from infra.spec.shadow import LABEL_SHADOW, Shadow
from infra.spec.validators import FiniteValue, VersionNumber, finite
from infra.spec.yamlio import MAX_FILE_BYTES, decode_text, parse_yaml, read_bounded, read_yaml

MODELS_DIR = "models"
# `.yml` files are read too, so a stray copy cannot shadow a manifest unnoticed.
MANIFEST_SUFFIXES = (".yaml", ".yml")
# Bounds of what one checkout may ask us to read (a pull request from anyone is planned):
# at most this many manifests, together at most this many bytes (each file at most
# yamlio.MAX_FILE_BYTES). `scripts/bench_input.py` measures a project just under them.
# A fleet of 1,000 models (issue: plans at fleet scale) fits with room to grow.
MAX_MANIFESTS = 2000
MAX_MANIFEST_BYTES_TOTAL = 64 * MAX_FILE_BYTES
SCHEMA_FILE = "manifest.schema.json"

# A model name is a TF-Serving model name, a URL segment and the stable name of its
# Service, so it must be a DNS-1035 label (Service names may not start with a digit).
# 40 characters leave room for the suffixes Pulumi's auto-naming appends.
MODEL_NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MODEL_NAME_MAX = 40
# `<model>-canary` names a model's canary workload and Service; Flagger generates
# `<service>-primary` and `<service>-canary` Services (fluxcd/flagger
# pkg/router/kubernetes_default.go:48-78). A model named like that would collide.
# `<model>-shadow` names a model's shadow workload and Service (docs/shadow.md).
RESERVED_NAME_SUFFIXES = ("-canary", "-primary", "-shadow")
# TF-Serving's version labels must match [a-zA-Z0-9_]+ (g3doc/serving_config.md).
LABEL_STABLE = "stable"
LABEL_CANARY = "canary"
# Kubernetes resource quantities (apimachinery resource.Quantity, without exponents).
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
ARTIFACT_PATH_PATTERN = r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*$"
# The owner's address reaches CODEOWNERS (`modelctl codeowners`), the plan and the catalog: a
# narrow subset of RFC 5322's dot-atom addr-spec (section 3.4.1) and of a DNS host name, with no
# character that means something in those sinks (`#` starts a CODEOWNERS comment, backticks and
# controls would need escaping everywhere).
_DNS_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_PATTERN = rf"^[A-Za-z0-9._%+-]+@{_DNS_LABEL}(?:\.{_DNS_LABEL})+$"

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


class Frozen(BaseModel):
    """Base of every manifest model: immutable, strict about unknown fields and types, and
    about numbers: `.inf` and `.nan` would reach the JSON plan, Flagger's MetricTemplates and
    the catalog's charts, none of which can hold them."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class Goal(StrEnum):
    """Which direction of the promotion metric is better."""

    maximize = "maximize"
    minimize = "minimize"


class ModelCard(Frozen):
    algorithm: NonEmpty = Field(description="Model family and architecture, e.g. 'Keras MLP, 2 hidden layers'.")
    training_data: NonEmpty = Field(description="What the model was trained on and where that data lives.")
    intended_use: NonEmpty = Field(description="What the model is for, and who calls it.")
    limitations: str | None = Field(default=None, description="Known failure modes and out-of-scope uses.")


def key_path_problem(path: str) -> str | None:
    """Why `path` could name a key outside the prefix it is joined to, or None.

    S3 keys are plain strings, but the tools that turn them into file paths are not: the
    fetcher's `aws s3 cp --recursive` writes `<dir>/<key minus prefix>`, and a `..` segment
    would leave the directory. So a path is relative, and no segment is empty, `.` or `..`.
    """
    if path.startswith("/"):
        return "is absolute"
    if any(segment in ("", ".", "..") for segment in path.split("/")):
        return "contains an empty, `.` or `..` segment"
    return None


class Artifact(Frozen):
    path: Annotated[str, StringConstraints(pattern=ARTIFACT_PATH_PATTERN, max_length=200)] = Field(
        description="Key prefix under the stack's object-store prefix; versions live at <store>/<path>/<version>/."
    )

    @field_validator("path", mode="before")
    @classmethod
    def _stays_under_the_prefix(cls, value: Any) -> Any:
        # Before the pattern (which refuses these too) so the message says what is wrong.
        if isinstance(value, str):
            problem = key_path_problem(value)
            if problem is not None:
                raise ValueError(f"Got {value!r}; {problem}: it is a key prefix under the stack's objectStore.prefix")
        return value


class DType(StrEnum):
    """TensorFlow dtypes a TF-Serving REST request can carry (g3doc/api_rest.md, "JSON mapping")."""

    bool = "bool"
    string = "string"
    int8 = "int8"
    uint8 = "uint8"
    int16 = "int16"
    uint16 = "uint16"
    int32 = "int32"
    uint32 = "uint32"
    int64 = "int64"
    uint64 = "uint64"
    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"
    float64 = "float64"


class Isolation(StrEnum):
    """Whether a model may share a TF-Serving server (a serving pool) with other models."""

    shared = "shared"
    dedicated = "dedicated"


class Protocol(StrEnum):
    """APIs of TF-Serving a model exposes through the stack's routes."""

    rest = "rest"
    grpc = "grpc"


class TensorContract(Frozen):
    """One input or output tensor of the serving signature, as its SignatureDef declares it."""

    # Enums take their YAML string value; global strict mode would demand an enum instance.
    dtype: DType = Field(strict=False, description="TensorFlow dtype (float32, int64, string, ...).")
    shape: list[Annotated[int, Field(ge=-1, strict=True)]] | None = Field(
        description="Dimensions; -1 is any size (the first is the batch). null: unknown rank."
    )
    default: FiniteValue = Field(
        default=None,
        description="Inputs only: the value TF-Serving feeds when a request omits the input (SignatureDef "
        "`defaults`); an input with a default is optional.",
    )


TensorName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.\-/]+$", max_length=200)]


class Contract(Frozen):
    """The serving signature of a version: what a client sends and gets back."""

    inputs: dict[TensorName, TensorContract] = Field(min_length=1, description="Input tensors by name.")
    outputs: dict[TensorName, TensorContract] = Field(min_length=1, description="Output tensors by name.")

    @model_validator(mode="after")
    def _outputs_have_no_default(self) -> Contract:
        for name, tensor in self.outputs.items():
            if tensor.default is not None:
                raise FieldProblemsError([(f"outputs.{name}.default", "outputs have no default; drop it")])
        return self

    def required_inputs(self) -> list[str]:
        return [name for name, tensor in self.inputs.items() if tensor.default is None]


class PublishedVersion(Frozen):
    digest: Digest = Field(description="sha256 of the version's checksum list in the object store ('sha256:<64 hex>').")
    metrics: dict[NonEmpty, float] = Field(
        default_factory=dict, description="Evaluation metrics on the held-out split, by name."
    )
    contract: Contract | None = Field(
        default=None,
        description="The serving signature (`serving.signature`) of this version: every input and output "
        "with dtype and shape, recorded by `modelctl publish`. Plans compare it when a served version moves.",
    )
    breaking_change_acknowledged: NonEmpty | None = Field(
        default=None,
        description="Why this version may break clients of the versions it replaces. A production stack "
        "serves a version whose contract is incompatible with the one it replaces only with this set "
        "(rule contract-compatibility); the plan shows the reason.",
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
    model_memory: Quantity | None = Field(
        default=None,
        description="Memory one loaded copy of the model takes in a shared server (a serving pool adds it to "
        "the pool's base for each member); default: `memory`, which also counts a dedicated server's own.",
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
        description="Average CPU utilisation (% of request) the HPA aims for (metric cpu).",
    )
    # Enums take their YAML string value (as `goal` does).
    metric: Annotated[ScalingMetric, Field(strict=False)] = Field(
        default=ScalingMetric.cpu,
        description="`cpu`: a HorizontalPodAutoscaler on CPU utilisation; `requests`: a KEDA ScaledObject on the "
        "model's prediction calls per second (docs/autoscaling.md; the stack names its Prometheus).",
    )
    target_requests_per_second: float | None = Field(
        default=None,
        gt=0,
        description="Prediction calls per second one replica takes (metric requests only): KEDA keeps "
        "replicas = ceil(rate / target) within min and max.",
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> Autoscaling:
        problems = metric_problems(self.metric, self.target_requests_per_second, "target_requests_per_second")
        if self.min_replicas > self.max_replicas:
            problems.append(("min_replicas", f"Got {self.min_replicas}, greater than max_replicas {self.max_replicas}"))
        if problems:
            raise FieldProblemsError(problems)
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
    # Enums take their YAML string value (as `goal` does).
    protocols: list[Annotated[Protocol, Field(strict=False)]] = Field(
        default_factory=lambda: [Protocol.rest],
        description="APIs exposed through the stack's routes: `rest` always (probes, smoke, Flagger's route); "
        "`grpc` adds TF-Serving's PredictionService on `<model>.grpc.<host>` (a GRPCRoute).",
    )
    slo: Slo = Field(default_factory=Slo, description="Objectives for alerts and metric-gated rollouts.")
    rollout: Rollout | None = Field(default=None, description="Metric-gated rollout settings (stacks with Flagger).")
    # Enums take their YAML string value (as `goal` does).
    isolation: Annotated[Isolation, Field(strict=False)] = Field(
        default=Isolation.shared,
        description="`shared`: a stack's serving pool may hold this model (docs/pools.md); `dedicated`: it always "
        "gets its own TF-Serving workload.",
    )
    example_request: dict[str, FiniteValue] | None = Field(
        default=None,
        description='A TF-Serving REST predict body (`{"instances": [...]}`) used by `modelctl smoke`.',
    )

    @model_validator(mode="after")
    def _example_shape(self) -> Serving:
        _check_protocols(self.protocols, "protocols")
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


def _check_protocols(protocols: list[Protocol], field: str) -> None:
    if Protocol.rest not in protocols:
        raise FieldProblemsError(
            [(field, "must list `rest`: probes, `modelctl smoke` and Flagger's analysis use it; add `grpc` beside it")]
        )
    if len(set(protocols)) != len(protocols):
        raise FieldProblemsError([(field, "lists a protocol twice")])


class Promotion(Frozen):
    metric: NonEmpty = Field(description="Metric compared between challenger and champion.")
    # Enums take their YAML string value; global strict mode would demand an enum instance.
    goal: Goal = Field(strict=False, description="Whether a larger or a smaller metric is better.")
    min_delta: float = Field(default=0.0, ge=0, description="Smallest improvement that counts as better.")


# The training contract (`training:`): what `modelctl train`/`retrain` need to train a model.
# A Python reference inside the repository, `package.module:function`: dotted identifiers only,
# so it cannot name a path outside the root (`..`, `/`); the file is resolved and checked to lie
# under the root (symbolic links included) only by the commands that import it.
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
OBJECT_STORE_SCHEME = "s3://"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# GitHub's cron syntax is POSIX cron's five fields (docs.github.com, "Events that trigger
# workflows", schedule); no seconds, no `@daily` macros.
CRON_PATTERN = r"^\S+ \S+ \S+ \S+ \S+$"
# A retrain trains every candidate of the space; bounded so a manifest cannot ask for hours.
MAX_CANDIDATES = 32
ParameterValue = Annotated[int, Field(strict=True)] | float | str | bool | list[int]


def data_location_problem(value: str, prefix: bool) -> str | None:
    """Why `value` is neither a repository path nor an `s3://bucket/...` location, or None."""
    if value.startswith(OBJECT_STORE_SCHEME):
        bucket, _, key = value[len(OBJECT_STORE_SCHEME) :].partition("/")
        if not bucket or not key:
            return "an object-store location is s3://<bucket>/<key>"
        if prefix and not key.endswith("/"):
            return "an object-store data source is a prefix of dated partitions: end it with `/`"
        if not prefix and key.endswith("/"):
            return "names a prefix; the evaluation set is one object"
        problem = key_path_problem(key.rstrip("/"))
        return f"its key {problem}" if problem else None
    if "://" in value:
        return "only repository paths and s3:// locations are read"
    problem = key_path_problem(value.rstrip("/"))
    return f"a repository path that {problem}" if problem else None


class EvaluationSet(Frozen):
    """The frozen evaluation set: every candidate and the champion are measured on it."""

    path: NonEmpty = Field(
        description="A CSV with the features and the label: a path under the repository root, or an object "
        "`s3://<bucket>/<key>` in the store of the environment retrained."
    )
    sha256: Annotated[str, StringConstraints(pattern=SHA256_PATTERN)] = Field(
        description="SHA-256 (hex) of the file's bytes; a file with another digest is refused, so the set "
        "cannot drift between runs (a new set is a reviewed manifest change)."
    )

    @field_validator("path")
    @classmethod
    def _location(cls, value: str) -> str:
        problem = data_location_problem(value, prefix=False)
        if problem:
            raise ValueError(f"Got {value!r}; {problem}")
        return value


class CandidateSpace(Frozen):
    """The candidates a retrain trains: every seed with every combination of the parameters."""

    seeds: list[Annotated[int, Field(ge=0, strict=True)]] = Field(
        min_length=1, description="Random seeds; each is a candidate per parameter combination."
    )
    # Non-finite numbers are refused before the union, which would report each member's error.
    parameters: Annotated[
        dict[Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]*$")], list[ParameterValue]],
        BeforeValidator(finite),
    ] = Field(
        default_factory=dict,
        description="Hyperparameter name -> values to try (e.g. learning_rate: [0.01, 0.003]); passed to the "
        "entrypoint, and `epochs`, `learning_rate`, `batch_size`, `hidden_units` override the recipe's.",
    )

    @model_validator(mode="after")
    def _bounded(self) -> CandidateSpace:
        problems = [(f"parameters.{n}", "lists no values") for n, values in self.parameters.items() if not values]
        if len(set(self.seeds)) != len(self.seeds):
            problems.append(("seeds", "lists a seed twice"))
        if not problems and len(self.expand()) > MAX_CANDIDATES:
            problems.append(("", f"{len(self.expand())} candidates; at most {MAX_CANDIDATES} (MAX_CANDIDATES)"))
        if problems:
            raise FieldProblemsError(problems)
        return self

    def expand(self) -> list[dict[str, Any]]:
        """Every candidate's parameters, `seed` included, in a stable order (seeds outermost)."""
        import itertools

        names = sorted(self.parameters)
        combinations = list(itertools.product(*(self.parameters[n] for n in names)))
        return [
            {"seed": seed, **dict(zip(names, values, strict=True))} for seed in self.seeds for values in combinations
        ]


class PromoteAs(StrEnum):
    """The label a retrained winner gets in the environment."""

    stable = "stable"
    canary = "canary"


class Training(Frozen):
    """How `modelctl train` and `modelctl retrain` train this model (README, "Continuous training")."""

    entrypoint: Annotated[str, StringConstraints(pattern=ENTRYPOINT_PATTERN, max_length=200)] = Field(
        description="`package.module:function` in the repository: called with the candidate's parameters, "
        "returns the model's Recipe (scripts/training/recipes.py). Imported only by train and retrain."
    )
    data: NonEmpty = Field(
        description="Training data: a CSV path under the repository root, or an object-store prefix of dated "
        "partitions `s3://<bucket>/<prefix>/` holding `dt=YYYY-MM-DD/*.csv`; the newest partition is read."
    )
    evaluation: EvaluationSet = Field(description="The frozen evaluation set, with its SHA-256.")
    candidates: CandidateSpace = Field(description="Seeds and hyperparameters: the candidates of a retrain.")
    promote_as: PromoteAs = Field(
        default=PromoteAs.stable,
        strict=False,
        description="How a winner is served: `stable`, or `canary` beside the stable version (on a Flagger "
        "stack retrain promotes to stable and Flagger runs the canary).",
    )
    canary_weight: int = Field(
        default=DEFAULT_CANARY_WEIGHT, ge=1, le=99, strict=True, description="With promote_as canary: its share, %."
    )
    schedule: Annotated[str, StringConstraints(pattern=CRON_PATTERN)] | None = Field(
        default=None,
        description="Cron (UTC) of scheduled retraining; .github/workflows/retrain.yml mirrors it (a test "
        "checks they agree).",
    )

    @field_validator("data")
    @classmethod
    def _data_location(cls, value: str) -> str:
        problem = data_location_problem(value, prefix=value.startswith(OBJECT_STORE_SCHEME))
        if problem:
            raise ValueError(f"Got {value!r}; {problem}")
        return value


class ResourcesOverride(Frozen):
    gpu: int | None = Field(default=None, ge=1, le=8, strict=True)
    cpu: Quantity | None = None
    memory: Quantity | None = None
    cpu_limit: Quantity | None = None
    memory_limit: Quantity | None = None
    model_storage: Quantity | None = None
    model_memory: Quantity | None = None


class AutoscalingOverride(Frozen):
    min_replicas: int | None = Field(default=None, ge=1, strict=True)
    max_replicas: int | None = Field(default=None, ge=1, strict=True)
    target_cpu_utilization: int | None = Field(default=None, ge=1, le=100, strict=True)
    metric: Annotated[ScalingMetric, Field(strict=False)] | None = Field(
        default=None, description="Per-environment override of serving.autoscaling.metric."
    )
    target_requests_per_second: float | None = Field(
        default=None, gt=0, description="Per-environment override of serving.autoscaling.target_requests_per_second."
    )


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
    shadow: Shadow | None = Field(
        default=None,
        description="A workload serving another version on a copy of `percent`% of the route's requests; its "
        "responses are discarded (docs/shadow.md).",
    )
    resources: ResourcesOverride | None = Field(default=None, description="Per-environment resource overrides.")
    autoscaling: AutoscalingOverride | None = Field(default=None, description="Per-environment autoscaling overrides.")
    batching: Batching | None = Field(default=None, description="Per-environment batching (replaces the default).")
    ingress: bool | None = Field(default=None, description="Per-environment override of serving.ingress.")
    # Enums take their YAML string value (as `goal` does).
    protocols: list[Annotated[Protocol, Field(strict=False)]] | None = Field(
        default=None, description="Per-environment override of serving.protocols (e.g. `[rest]` on an Ingress stack)."
    )
    isolation: Annotated[Isolation, Field(strict=False)] | None = Field(
        default=None, description="Per-environment override of serving.isolation (e.g. `dedicated` in prod)."
    )
    pool: ModelName | None = Field(
        default=None,
        description="The serving pool of the stack (model-serving:servingPools) this model joins here; absent: the "
        "stack's `packing: auto` pool if it has one and the model may share, else a workload of its own.",
    )

    @model_validator(mode="after")
    def _labels_unique(self) -> EnvironmentServing:
        if self.protocols is not None:
            _check_protocols(self.protocols, "protocols")
        if self.canary is not None and self.canary.version == self.stable:
            raise FieldProblemsError(
                [("canary.version", f"Got {self.canary.version}, the stable version too; a canary serves another")]
            )
        if self.shadow is not None:
            if self.shadow.version == self.stable:
                raise FieldProblemsError(
                    [("shadow.version", f"Got {self.shadow.version}, the stable version too; a shadow serves another")]
                )
            if self.canary is not None and self.shadow.version == self.canary.version:
                raise FieldProblemsError(
                    [
                        (
                            "shadow.version",
                            f"Got {self.shadow.version}, the canary's version too; a shadow serves another",
                        )
                    ]
                )
        return self

    def labels(self) -> dict[str, int]:
        """TF-Serving version labels to version numbers."""
        labels = {LABEL_STABLE: self.stable}
        if self.canary is not None:
            labels[LABEL_CANARY] = self.canary.version
        if self.shadow is not None:
            labels[LABEL_SHADOW] = self.shadow.version
        return labels


class ModelManifest(Frozen):
    name: ModelName = Field(description="DNS-1035 label: TF-Serving model name, URL segment, Service name.")
    description: NonEmpty
    owner: Annotated[str, StringConstraints(pattern=EMAIL_PATTERN)] = Field(description="Owning team's e-mail.")
    card: ModelCard
    artifact: Artifact
    versions: dict[VersionNumber, PublishedVersion] = Field(
        default_factory=dict,
        description="Published versions, append-only and immutable; a new model starts with none (`{}`) and "
        "`modelctl publish` or `retrain` adds the first.",
    )
    serving: Serving
    promotion: Promotion
    environments: dict[ModelName, EnvironmentServing] = Field(
        default_factory=dict, description="What each stack serves, by version label."
    )
    training: Training | None = Field(
        default=None, description="How the model is trained and retrained; absent: it cannot be (re)trained here."
    )
    # env -> (the environment's entry, the defaults, the merged Serving) of `serving_for`.
    _serving_by_env: dict[str, tuple[EnvironmentServing, Serving, Serving]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> ModelManifest:
        published = ", ".join(str(v) for v in sorted(self.versions))
        problems: list[tuple[str, str]] = []
        for suffix in RESERVED_NAME_SUFFIXES:
            if self.name.endswith(suffix):
                problems.append(
                    (
                        "name",
                        f"Got {self.name!r}; names ending in {suffix!r} are taken by the Services of another "
                        f"model's canary or shadow workload and of Flagger's primary/canary (`<model>{suffix}`)",
                    )
                )
        for env, served in self.environments.items():
            for label, version in served.labels().items():
                if version not in self.versions:
                    field = "stable" if label == LABEL_STABLE else f"{label}.version"
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
        """The serving spec for `env`: the defaults with the environment's overrides applied.

        Kept per environment: a plan asks for it once per model, stack and run (61,000 times at a
        thousand models). The entry is used only while this manifest still holds the very objects
        it was merged from, so a copy with other environments or defaults merges again.
        """
        served = self.environments[env]
        hit = self._serving_by_env.get(env)
        if hit is not None and hit[0] is served and hit[1] is self.serving:
            return hit[2]
        merged = self._merged_serving(env, served)
        self._serving_by_env[env] = (served, self.serving, merged)
        return merged

    def _merged_serving(self, env: str, served: EnvironmentServing) -> Serving:
        resources = self.serving.resources
        if served.resources is not None:
            resources = resources.model_copy(update=served.resources.model_dump(exclude_none=True))
        autoscaling = self.serving.autoscaling
        if served.autoscaling is not None:
            override = served.autoscaling.model_dump(exclude_none=True)
            merged = autoscaling.model_dump() | override
            if override.get("metric") is ScalingMetric.cpu and "target_requests_per_second" not in override:
                # Back to CPU here: the request-rate target of the defaults does not apply.
                merged["target_requests_per_second"] = None
            problems = metric_problems(
                merged["metric"],
                merged["target_requests_per_second"],
                f"environments.{env}.autoscaling.target_requests_per_second",
            )
            if merged["min_replicas"] > merged["max_replicas"]:
                problems.append(
                    (
                        f"environments.{env}.autoscaling",
                        f"min_replicas {merged['min_replicas']} is greater than "
                        f"max_replicas {merged['max_replicas']} (after applying the overrides)",
                    )
                )
            if problems:
                raise FieldProblemsError(problems)
            autoscaling = Autoscaling(**merged)
        return self.serving.model_copy(
            update={
                "resources": resources,
                "autoscaling": autoscaling,
                "batching": served.batching if served.batching is not None else self.serving.batching,
                "ingress": served.ingress if served.ingress is not None else self.serving.ingress,
                "protocols": served.protocols if served.protocols is not None else self.serving.protocols,
                "isolation": served.isolation if served.isolation is not None else self.serving.isolation,
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
    # The serving pool `environments.<env>.pool` names, if any (the placement decides the shard).
    pool: str | None = None
    # `environments.<env>.shadow`, if any: the share of requests mirrored to the shadow track.
    shadow_percent: int | None = None

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def has_canary(self) -> bool:
        return LABEL_CANARY in self.version_labels

    @property
    def has_shadow(self) -> bool:
        return LABEL_SHADOW in self.version_labels

    @property
    def serves_grpc(self) -> bool:
        """TF-Serving's gRPC API is exposed through the stack's routes (not only in the namespace)."""
        return self.serving.ingress and Protocol.grpc in self.serving.protocols

    def track(self, label: str) -> ServedModel:
        """The part of this model one workload serves: only the version under `label`."""
        return ServedModel(
            self.manifest,
            self.environment,
            self.serving,
            {label: self.version_labels[label]},
            self.canary_weight,
            self.pool,
            self.shadow_percent,
        )

    @property
    def served_versions(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.version_labels.values())))

    def digest(self, version: int) -> str:
        return self.manifest.versions[version].digest


# served_in's answers in this process, by environment and the manifests' identities (immutable
# models, kept alive by the entry): validation, the program and the plan ask it for every stack
# several times per plan, and at a thousand models each answer is 1,000 ServedModels. The
# ServedModels are shared (frozen; nothing writes to their version labels).
_SERVED: OrderedDict[tuple, tuple[tuple[ModelManifest, ...], tuple[ServedModel, ...]]] = OrderedDict()
_SERVED_LIMIT = 64


def served_in(manifests: Iterable[ModelManifest], environment: str) -> list[ServedModel]:
    """The models `environment` serves, in name order."""
    manifests = tuple(manifests)
    key = (environment, tuple(map(id, manifests)))
    if key in _SERVED:
        _SERVED.move_to_end(key)
        return list(_SERVED[key][1])
    served = _served_in(manifests, environment)
    _SERVED[key] = (manifests, tuple(served))
    if len(_SERVED) > _SERVED_LIMIT:
        _SERVED.popitem(last=False)
    return served


def _served_in(manifests: Iterable[ModelManifest], environment: str) -> list[ServedModel]:
    served = []
    for m in sorted(manifests, key=lambda m: m.name):
        if environment in m.environments:
            canary = m.environments[environment].canary
            shadow = m.environments[environment].shadow
            served.append(
                ServedModel(
                    m,
                    environment,
                    m.serving_for(environment),
                    m.environments[environment].labels(),
                    canary.weight if canary else None,
                    m.environments[environment].pool,
                    shadow.percent if shadow else None,
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


class DocumentStore(typing.Protocol):
    """Parsed manifest documents kept between processes (the plan cache keeps them): `get`
    gives exactly what parsing `content` gave before, or None; `put` may decline a document."""

    def get(self, content: bytes) -> Any | None: ...

    def put(self, content: bytes, document: Any) -> None: ...


_DOCUMENTS: DocumentStore | None = None


def keep_documents_in(store: DocumentStore | None) -> None:
    """Parse each manifest content once across runs: `store` keeps the parsed documents (None:
    parse in every process). Validation runs on every read either way."""
    global _DOCUMENTS
    _DOCUMENTS = store
    forget_parsed()  # so that every content read from now on goes through `store` once


def forget_parsed() -> None:
    """Forget every manifest parsed in this process (as a new process would start)."""
    _PARSED.clear()
    _BY_STAT.clear()


def _parsed_manifest(path: Path, display: str, info: os.stat_result | None = None) -> ModelManifest:
    """Parse a manifest once per content (a fleet's plan reads each many times). The file is
    read within the size cap and without blocking (read_bounded: a FIFO or a huge file is
    refused unread), and what is parsed is exactly the bytes of the key.

    `info`, the file's stat: a file unchanged since it was parsed in this process (same device,
    inode, size, modification and change times) is not read again, as git's index trusts a
    file's stat (Documentation/technical/racy-git.txt). A file is trusted so only if, when it
    was read, its last change was more than RACY_NS ago: a later change then carries a later
    change time even on a file system with coarse timestamps, so a same-size rewrite within one
    timestamp tick cannot pass for the file that was read."""
    trusted = _stat_key(display, info) if info is not None else None
    if trusted is not None and trusted in _BY_STAT:
        _BY_STAT.move_to_end(trusted)
        return _BY_STAT[trusted]
    read_at = time.time_ns()
    data = read_bounded(path, display)
    key = (display, data)
    if key in _PARSED:
        _PARSED.move_to_end(key)
        _trust(trusted, info, read_at, _PARSED[key])
        return _PARSED[key]
    document = _DOCUMENTS.get(data) if _DOCUMENTS is not None else None
    if document is None:
        document = parse_yaml(decode_text(data, display), display)
        if _DOCUMENTS is not None:
            _DOCUMENTS.put(data, document)
    manifest = parse_manifest(document, display, path.stem)
    _PARSED[key] = manifest
    if len(_PARSED) > _PARSED_LIMIT:
        _PARSED.popitem(last=False)
    _trust(trusted, info, read_at, manifest)
    return manifest


# Valid manifests by file name and stat (see _parsed_manifest); bounded like _PARSED.
_BY_STAT: OrderedDict[tuple[str, int, int, int, int, int], ModelManifest] = OrderedDict()
# Coarser than any file system's timestamps that a repository lives on (FAT: 2 s).
RACY_NS = 3 * 10**9


def _stat_key(display: str, info: os.stat_result) -> tuple[str, int, int, int, int, int]:
    return (display, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _trust(
    key: tuple[str, int, int, int, int, int] | None,
    info: os.stat_result | None,
    read_at: int,
    manifest: ModelManifest,
) -> None:
    if key is None or info is None or read_at - max(info.st_mtime_ns, info.st_ctime_ns) <= RACY_NS:
        return
    _BY_STAT[key] = manifest
    if len(_BY_STAT) > _PARSED_LIMIT:
        _BY_STAT.popitem(last=False)


def load_manifests(root: Path, environments: Iterable[str] | None = None) -> list[ModelManifest]:
    """Read and validate every `models/*.yaml` under `root`; raise one ConfigError with all problems.

    With `environments`, a manifest that names an environment outside it is an error
    (a typo there would silently serve nothing).
    """
    models_dir = root / MODELS_DIR
    if models_dir.is_symlink() and not is_inside(root, models_dir):
        raise ConfigError([ErrorItem(f"{MODELS_DIR}/", "", OUTSIDE)])
    if not models_dir.is_dir():
        raise ConfigError([ErrorItem(f"{MODELS_DIR}/", "", "directory not found")])
    errors: list[ErrorItem] = []
    manifests: list[ModelManifest] = []
    origin: dict[str, str] = {}
    known = set(environments) if environments is not None else None
    entries = manifest_entries(root)
    # `models/` itself resolves inside the root (checked above, or not a link), so an entry
    # of it that is not a symbolic link does too; only links need resolving, one by one.
    models_inside = is_inside(root, models_dir)
    total = 0
    for entry in entries:
        path = models_dir / entry.name
        display = f"{MODELS_DIR}/{entry.name}"
        # The directory entry's type and its one stat (DirEntry caches both): a fleet's plan
        # lists `models/` once per stack, and a Path's is_symlink() and stat() cost a call each.
        if not (models_inside and not entry.is_symlink()) and not is_inside(root, path):
            errors.append(ErrorItem(display, "", OUTSIDE))
            continue
        info = None
        with contextlib.suppress(OSError):  # read_bounded names the problem
            info = entry.stat()
            # A file over the per-file cap gets its own error from read_bounded and is not read.
            total += info.st_size if info.st_size <= MAX_FILE_BYTES else 0
        if total > MAX_MANIFEST_BYTES_TOTAL:
            errors.append(
                ErrorItem(
                    display,
                    "",
                    f"the manifests up to this one hold more than {MAX_MANIFEST_BYTES_TOTAL // MAX_FILE_BYTES} MiB "
                    "together, the limit; nothing after it was read",
                )
            )
            break
        try:
            manifest = _parsed_manifest(path, display, info)
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


def manifest_paths(root: Path) -> list[Path]:
    """Every `models/*.yaml|yml`, in name order; a ConfigError when there are more than MAX_MANIFESTS."""
    return [root / MODELS_DIR / entry.name for entry in manifest_entries(root)]


def manifest_entries(root: Path) -> list[os.DirEntry[str]]:
    """The directory entries of every `models/*.yaml|yml`, in name order; a ConfigError when there
    are more than MAX_MANIFESTS.

    Counted from directory entries (not reading any), so the cap holds before any work.
    """
    models_dir = root / MODELS_DIR
    found = []
    with os.scandir(models_dir) as entries:
        for entry in entries:
            if os.path.splitext(entry.name)[1] in MANIFEST_SUFFIXES:
                found.append(entry)
                if len(found) > MAX_MANIFESTS:
                    raise ConfigError(
                        [
                            ErrorItem(
                                f"{MODELS_DIR}/",
                                "",
                                f"more than {MAX_MANIFESTS} manifests, the limit (MAX_MANIFESTS in "
                                "infra/spec/manifest.py); split the project or raise the limit",
                            )
                        ]
                    )
    return sorted(found, key=lambda entry: entry.name)


def manifest_path(root: Path, model: str) -> Path:
    """`models/<model>.yaml` under `root`: a ConfigError naming the models there when there is none,
    or when the file resolves outside `root`."""
    path = root / MODELS_DIR / f"{model}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (root / MODELS_DIR).glob("*.yaml"))
        raise ConfigError.single(f"{MODELS_DIR}/{model}.yaml", "", f"no such model (models are {', '.join(known)})")
    require_inside(root, path, f"{MODELS_DIR}/{path.name}")
    return path


def read_manifest(root: Path, model: str) -> ModelManifest:
    """One model's manifest, read and validated (the commands that edit or train one model)."""
    path = manifest_path(root, model)
    display = f"{MODELS_DIR}/{path.name}"
    return parse_manifest(read_yaml(path, display), display, model)


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema of a manifest, for editors (yaml-language-server) and `modelctl schema`."""
    schema = ModelManifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Model manifest"
    return schema
