"""Run the Pulumi program offline under Pulumi's own mocks and record what it declares.

The same `program.declare()` that `pulumi up` runs is executed with `preview=False`, so
every `apply` runs and every input is known; the mocks stand in for the engine only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import hashlib
import json
import threading
from collections.abc import Callable, Collection
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime import resource as pulumi_resource
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.proto import resource_pb2, source_pb2
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _ensure_event_loop, _sync_await

from infra.spec.settings import PROJECT, read_stack_config

SECRET = "[secret]"
KUBERNETES_PREFIX = "kubernetes:"
HELM_PREFIX = "kubernetes:helm.sh/"
PROVIDER_PREFIX = "pulumi:providers:"
# Kinds the provider replaces, with a fresh auto-name, when their data changes
# (pulumi-kubernetes provider/pkg/provider/diff.go; `enableConfigMapMutable` turns it off).
REPLACED_ON_DATA_CHANGE = ("kubernetes:core/v1:ConfigMap", "kubernetes:core/v1:Secret")


@dataclass(frozen=True)
class DeclaredResource:
    """One resource the program registered: identity, parent and the inputs it was given."""

    urn: str
    type: str
    name: str
    parent: str | None
    custom: bool
    provider: str | None
    inputs: dict[str, Any]
    state: dict[str, Any]
    dependencies: tuple[str, ...] = ()
    # A multi-language component (pulumi-eks' Cluster): the engine constructs it through its
    # package's provider, like a custom resource.
    remote: bool = False
    # Providers by package that a component passes to its children (`providers=` option).
    providers: dict[str, str] = field(default_factory=dict)

    @property
    def package(self) -> str:
        """The package of the type token (`eks` of `eks:index:Cluster`)."""
        return self.type.split(":", 1)[0]

    def provider_for(self, package: str) -> str | None:
        """The explicit provider this registration names for `package`, as the engine resolves
        it: the request's `provider`, else the `providers` map (pulumi/pulumi
        pkg/resource/deploy/source_eval.go, resmon.RegisterResource)."""
        if self.provider and self.provider.split("::")[2].split("$")[-1] == f"pulumi:providers:{package}":
            return self.provider
        return self.providers.get(package)

    @property
    def is_kubernetes_object(self) -> bool:
        # A Helm release is the provider's bookkeeping, not an object of the Kubernetes API.
        return self.custom and self.type.startswith(KUBERNETES_PREFIX) and not self.type.startswith(HELM_PREFIX)

    @property
    def object(self) -> dict[str, Any]:
        """The Kubernetes object as the provider would send it: inputs plus the auto-name."""
        return self.state


@dataclass
class OfflineRun:
    """Everything one offline run of one stack declared, in registration order."""

    stack: str
    resources: list[DeclaredResource] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    # The models the stack serves, whether or not this run declared them all (`only_models`);
    # None when unknown (a custom entry, or a record of an older revision).
    served_models: tuple[str, ...] | None = None

    def by_urn(self) -> dict[str, DeclaredResource]:
        return {r.urn: r for r in self.resources}

    def kubernetes_objects(self) -> list[DeclaredResource]:
        return [r for r in self.resources if r.is_kubernetes_object]

    def find(self, type_: str, name: str) -> DeclaredResource:
        for resource in self.resources:
            if resource.type == type_ and resource.name == name:
                return resource
        raise KeyError(f"{type_} {name} not declared")


def auto_name(resource_name: str, seed: str) -> str:
    """What pulumi-kubernetes auto-naming produces (`<name>-<8 hex>`), deterministic per seed."""
    return f"{resource_name}-{hashlib.sha256(seed.encode()).hexdigest()[:8]}"


class _Mocks(pulumi_mocks.Mocks):
    """Engine stand-in: answers each registration with the auto-named metadata only.

    The program reads nothing but `metadata.name` back from its resources, and handing the
    whole object back through the wire format would double the cost of a large plan.
    """

    def __init__(self) -> None:
        self._current = threading.local()

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str, dict]:
        state = dict(args.inputs)
        if args.custom and args.typ.startswith(KUBERNETES_PREFIX):
            metadata = dict(state.get("metadata") or {})
            if not metadata.get("name"):
                seed = f"{args.typ}::{args.name}"
                if args.typ in REPLACED_ON_DATA_CHANGE:
                    seed += json.dumps([state.get("data"), state.get("binaryData")], sort_keys=True)
                metadata["name"] = auto_name(args.name, seed)
            state["metadata"] = metadata
            resource_id = f"{metadata.get('namespace', '')}/{metadata['name']}".lstrip("/")
            answer = {"metadata": {k: metadata[k] for k in ("name", "namespace") if k in metadata}}
        else:
            resource_id, answer = f"{args.name}-id", cloud_outputs(args.typ, args.name, args.inputs)
            state.update(answer)
        self._current.inputs, self._current.state = args.inputs, state
        return resource_id, answer

    def last_registration(self) -> tuple[dict, dict]:
        """Inputs and full state of the registration this thread just made."""
        return self._current.inputs, self._current.state

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, None]:
        raise NotImplementedError(f"the program makes no calls, got {args.token}")


class _RecordingMonitor(pulumi_mocks.MockMonitor):
    """MockMonitor that also keeps each registration's parent, provider and inputs."""

    def __init__(self, mocks: _Mocks):
        super().__init__(mocks)
        self.recorder = mocks
        self.declared: list[DeclaredResource] = []

    def GetDeploymentInfo(self, request):  # noqa: N802 - gRPC method name
        # Without resource references the SDK sends a resource input (pulumi-eks' `cluster=`)
        # as its URN/ID: deserialising a reference inside the mock monitor's thread would
        # create futures on another event loop than the program's.
        info = super().GetDeploymentInfo(request)
        features = [f for f in info.supportedFeatures if f != resource_pb2.RESOURCE_MONITOR_FEATURE_RESOURCE_REFERENCES]
        return resource_pb2.DeploymentInfo(supportedFeatures=features)

    def SupportsFeature(self, request):  # noqa: N802 - gRPC method name
        if request.id == "resourceReferences":
            return type("SupportsFeatureResponse", (object,), {"hasSupport": False})
        return super().SupportsFeature(request)

    def RegisterResource(self, request):  # noqa: N802 - gRPC method name
        response = super().RegisterResource(request)
        if request.type == "pulumi:pulumi:Stack":
            return response
        # super() called new_resource synchronously on this thread.
        inputs, state = self.recorder.last_registration()
        self.declared.append(
            DeclaredResource(
                urn=response.urn,
                type=request.type,
                name=request.name,
                parent=request.parent or None,
                custom=bool(request.custom),
                provider=request.provider or None,
                inputs=integral_numbers(inputs),
                state=integral_numbers(state),
                dependencies=tuple(request.dependencies),
                remote=bool(request.remote),
                providers=dict(request.providers),
            )
        )
        return response


OFFLINE_ACCOUNT = "000000000000"
OFFLINE_OIDC_ISSUER = "oidc.eks.offline.amazonaws.com/id/OFFLINE"


def cloud_outputs(resource_type: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Stand-ins for what a cloud provider computes (ARNs, the EKS kubeconfig and OIDC issuer),
    so the program's `apply`s run offline; they are recognisably fake (account 000000000000)."""
    if resource_type == "eks:index:Cluster":
        return {
            "kubeconfigJson": json.dumps({"apiVersion": "v1", "kind": "Config", "clusters": [], "users": []}),
            "oidcIssuer": OFFLINE_OIDC_ISSUER,
            "oidcProviderArn": f"arn:aws:iam::{OFFLINE_ACCOUNT}:oidc-provider/{OFFLINE_OIDC_ISSUER}",
        }
    if resource_type == "aws:iam/role:Role":
        return {"arn": f"arn:aws:iam::{OFFLINE_ACCOUNT}:role/{name}", "name": name}
    if resource_type == "aws:iam/policy:Policy":
        return {"arn": f"arn:aws:iam::{OFFLINE_ACCOUNT}:policy/{name}"}
    if resource_type == "aws:s3/bucket:Bucket":
        return {"arn": f"arn:aws:s3:::{inputs.get('bucket', name)}", "bucket": inputs.get("bucket", name)}
    return {}


def integral_numbers(value: Any) -> Any:
    """Pulumi's wire format carries every number as a double; give whole numbers back as ints,
    as the provider does when it serialises the object to JSON for the API server."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: integral_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral_numbers(v) for v in value]
    return value


def mask_secrets(value: Any) -> Any:
    """Stack-config values written `secure: <ciphertext>` become "[secret]": an offline run
    cannot decrypt them, and no plan, log or file may show them."""
    if isinstance(value, dict):
        if set(value) == {"secure"}:
            return SECRET
        return {k: mask_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


def config_strings(config: dict[str, Any]) -> dict[str, str]:
    """Stack-file values as the engine hands them to a program: strings, objects as JSON."""
    masked = mask_secrets(config)
    return {key: value if isinstance(value, str) else json.dumps(value) for key, value in masked.items()}


def run_stack(
    root: Path,
    stack: str,
    entry: Callable[[Path], None] | None = None,
    into: OfflineRun | None = None,
    short_lived: bool = False,
    only_models: Collection[str] | None = None,
) -> OfflineRun:
    """Run the program for `stack` of the project at `root`; raises ConfigError on bad input.

    `entry` replaces the default `program.declare(program.read_settings(), root)`, e.g. with
    `program.main` to exercise exactly what `pulumi up` runs. `into` receives what was
    declared even when the run fails. `short_lived`: the process ends soon after (a CLI),
    so the run's objects are frozen instead of scanned by a full garbage collection.
    `only_models`: declare the platform and only these models (`program.declare`); the plan's
    incremental mode, which takes the other models' resources from a run that declared them.
    """
    from infra import program

    if entry is not None and only_models is not None:
        raise ValueError("only_models applies to the default entry, program.declare")
    config = read_stack_config(root, stack)
    mocks = _Mocks()
    monitor = _RecordingMonitor(mocks)
    # A fresh root Stack resource per run, so URNs carry this stack's name.
    pulumi_settings.ROOT.set(None)
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    pulumi.runtime.set_all_config(config_strings(config), secret_keys=[])
    pulumi_settings.SETTINGS.rpc_manager.clear()
    pulumi_settings.SETTINGS.outputs.clear()
    run = into if into is not None else OfflineRun(stack=stack)

    async def program_and_outputs() -> None:
        if entry is None:
            run.served_models = tuple(program.declare(program.read_settings(), root, only_models=only_models))
        else:
            entry(root)
        stack_resource = pulumi_settings.get_root_resource()
        for name, value in stack_resource.outputs.items():  # type: ignore[union-attr]
            # A plain value is its own result; lifting it into Outputs costs a task per leaf,
            # seconds for the `models` output of a thousand models.
            run.outputs[name] = value if _plain(value) else await pulumi.Output.from_input(value).future()

    with _cyclic_gc_paused(freeze=short_lived), _no_source_positions(), _own_executor():
        try:
            _sync_await(run_pulumi_func(program_and_outputs))
        finally:
            run.resources = list(monitor.declared)
    return run


@contextmanager
def _own_executor():
    """The run's engine calls on worker threads that end with the run.

    The SDK hands every engine call to `loop.run_in_executor(None, ...)` (pulumi
    sdk/python/lib/pulumi/runtime/resource.py L1344 RegisterResource, L622 ReadResource;
    settings.py L476, L504; invoke.py L346, L523). The loop's default executor would keep its
    idle worker threads for the life of the process; with its own executor, shut down at the
    end, a run leaves no thread behind, so the plan may fork afterwards (a forked process
    would inherit the threads' locks but not the threads: scripts/modelctl/forked.py).
    """
    # Pulumi's mocks make each worker thread an event loop of its own (pulumi/runtime/mocks.py
    # L241-L242, `_ensure_event_loop`); made here instead, they are closed with the executor, so
    # that a run leaves no open file descriptor behind either.
    loops: list[asyncio.AbstractEventLoop] = []

    def own_loop() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loops.append(loop)

    executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="offline-run", initializer=own_loop)
    _ensure_event_loop().set_default_executor(executor)
    try:
        yield
    finally:
        executor.shutdown(wait=True)
        for loop in loops:
            loop.close()


def _empty_stack_trace() -> source_pb2.StackTrace:
    return source_pb2.StackTrace()


@contextmanager
def _no_source_positions():
    """Register resources without the call stack the SDK captures for the engine's error messages.

    Before every registration the Python SDK extracts the whole interpreter stack and turns each
    frame into a file URI (pulumi sdk/python/lib/pulumi/runtime/resource.py, `_get_stack_trace`,
    L741-L778 in 3.272.0, called from `register_resource` L1160 and `read_resource` L833); it is
    sent as `stackTrace` and `sourcePosition` of the RegisterResourceRequest, which only the
    engine reads. Offline, the monitor is ours and records neither (`_RecordingMonitor`), and the
    extraction was a sixth of a profiled thousand-model run. An empty StackTrace is what the SDK itself
    sends when it finds no user frame.
    """
    captured = pulumi_resource._get_stack_trace
    pulumi_resource._get_stack_trace = _empty_stack_trace
    try:
        yield
    finally:
        pulumi_resource._get_stack_trace = captured


def _plain(value: Any) -> bool:
    """JSON-like data without an Output or awaitable anywhere in it."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, str | int | float | bool)


@contextmanager
def _cyclic_gc_paused(freeze: bool):
    """Pause the cyclic garbage collector for the length of one run.

    A run allocates millions of short-lived objects that reference counting frees; the
    cyclic collector's generation scans over the growing heap took half the time of a
    100-model plan and made large plans superlinear (`make bench` shows the figures).
    Re-enabled, the first collection scans everything the run left (5 s at 1000 models);
    with `freeze` those objects move to the permanent generation instead, and the few
    reference cycles among them live until the process exits.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if was_enabled:
            gc.enable()
