"""Waiting for Flagger's verdict on each model after `pulumi up`: a pure decision over the observed
Canary and Deployments, a reader of those objects from the cluster, and the polling loop.

On a Flagger stack `pulumi up` returns as soon as the target Deployment is updated (it carries
`pulumi.com/skipAwait`); Flagger then analyses the new revision and promotes it or rolls back.
`kubectl wait --for=condition=promoted` cannot tell: the Promoted condition is still True from
the previous success until Flagger notices the change, and False (never True) after a failure
(fluxcd/flagger@v1.44.0 pkg/canary/status.go L199-L243, MakeStatusConditions), so we read
`status.phase` and compare what the primary runs with what the target declares.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from infra.model.workload import CONFIG_HASH_ANNOTATION, MODEL_LABEL

FLAGGER_GROUP = "flagger.app"
FLAGGER_VERSION = "v1beta1"
# Flagger's phases (pkg/apis/flagger/v1beta1/status.go L40-L67).
PHASE_INITIALIZED = "Initialized"
PHASE_SUCCEEDED = "Succeeded"
PHASE_FAILED = "Failed"
PRIMARY_SUFFIX = "-primary"  # pkg/canary/deployment_controller.go L236
# An analysis takes about interval x maxWeight / stepWeight, then the primary's rolling update
# (prod: 1m x 50/10 plus minutes of model loading); 30 minutes leave room for a large model.
ROLLOUT_TIMEOUT_SECONDS = 1800
POLL_INTERVAL_SECONDS = 15

KubeObject = Mapping[str, Any]


class RolloutError(Exception):
    """The cluster could not be read (no kubeconfig, unreachable API server, an ambiguous Canary)."""


class Outcome(StrEnum):
    promoted = "promoted"
    failed = "failed"
    waiting = "waiting"


@dataclass(frozen=True)
class Observation:
    """What the cluster shows for one model: its Canary, the target Deployment, and Flagger's
    `<target>-primary` clone (None where absent)."""

    model: str
    canary: KubeObject | None
    target: KubeObject | None = None
    primary: KubeObject | None = None


@dataclass(frozen=True)
class Verdict:
    model: str
    outcome: Outcome
    phase: str
    detail: str

    def __str__(self) -> str:
        return f"{self.model}: {self.outcome} ({self.detail})"


def _get(obj: KubeObject | None, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def revision(deployment: KubeObject) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """What a pod template serves: our config hash (manifest, TF-Serving config) and the images.

    On promotion Flagger copies the target's pod template annotations to the primary
    (`makeAnnotations`, pkg/canary/util.go L75-L97: every key but `toolkit.fluxcd.io` ones,
    plus a fresh `flagger-id`; Promote in pkg/canary/deployment_controller.go L106-L114;
    createPrimaryDeployment at L262, L298-L302) and its pod spec with only ConfigMap and Secret
    names suffixed (L389-L390), so the primary serves the target's revision exactly when both
    agree on these.
    """
    template = _get(deployment, "spec", "template") or {}
    config_hash = (_get(template, "metadata", "annotations") or {}).get(CONFIG_HASH_ANNOTATION)
    containers = _get(template, "spec", "containers") or []
    return config_hash, tuple(sorted((c.get("name", ""), c.get("image", "")) for c in containers))


def _config_maps(deployment: KubeObject) -> set[str]:
    volumes = _get(deployment, "spec", "template", "spec", "volumes") or []
    return {f"configmap/{v['configMap']['name']}" for v in volumes if _get(v, "configMap", "name")}


def _failure_is_current(canary: KubeObject, target: KubeObject) -> bool:
    """Whether a Failed phase is about the target's current revision, not an earlier one.

    Flagger records the ConfigMaps it analysed in `status.trackedConfigs` ("configmap/<name>",
    pkg/canary/config_tracker.go L61-L62, L246-L256) whenever it syncs the status: on starting
    an analysis (pkg/controller/scheduler.go L925) and on rolling back (L985; SyncStatus in
    pkg/canary/deployment_status.go L29-L42). A version bump gives the model's ConfigMap a new
    name, so right after `pulumi up` a Failed phase whose tracked ConfigMaps lack the target's
    is the previous revision's, and Flagger has yet to pick up this one. (A change that keeps
    the ConfigMap, e.g. only an image, cannot be told apart: we then trust the phase.)
    """
    tracked = _get(canary, "status", "trackedConfigs")
    if not isinstance(tracked, Mapping):
        return True
    return _config_maps(target) <= set(tracked)


def decide(observation: Observation) -> Verdict:
    """Promoted: Flagger's phase is Initialized (first deployment) or Succeeded, and the primary
    serves the target's revision. Failed: the analysis of this revision failed (Flagger rolled
    back). Anything else: still waiting (not picked up yet, progressing, promoting)."""
    model, canary = observation.model, observation.canary
    if canary is None:
        return Verdict(model, Outcome.waiting, "", f"no Canary labelled {MODEL_LABEL}={model} yet")
    phase = _get(canary, "status", "phase") or ""
    target_name = _get(canary, "spec", "targetRef", "name") or "?"
    if observation.target is None:
        return Verdict(model, Outcome.waiting, phase, f"phase {phase or 'none'}; no Deployment {target_name} yet")
    if phase == PHASE_FAILED and _failure_is_current(canary, observation.target):
        checks = _get(canary, "status", "failedChecks")
        return Verdict(
            model,
            Outcome.failed,
            phase,
            f"Flagger's analysis of {target_name} failed after {checks} failed check(s) and rolled back; "
            f"`kubectl describe canary -n <namespace> -l {MODEL_LABEL}={model}` shows why",
        )
    promoted = observation.primary is not None and revision(observation.primary) == revision(observation.target)
    if phase in (PHASE_INITIALIZED, PHASE_SUCCEEDED) and promoted:
        return Verdict(model, Outcome.promoted, phase, f"phase {phase}; {target_name}{PRIMARY_SUFFIX} serves it")
    waiting_for = "the primary to serve this revision" if not promoted else "the analysis to finish"
    return Verdict(model, Outcome.waiting, phase, f"phase {phase or 'none'}; waiting for {waiting_for}")


def wait_for_rollouts(
    models: Sequence[str],
    observe: Callable[[str], Observation],
    timeout: float,
    poll_interval: float,
    report: Callable[[Verdict], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Verdict]:
    """Polls every model until each is promoted, one has failed (the stage fails anyway), or the
    timeout passes; reports each verdict when it changes. Returns the last verdict per model."""
    deadline = clock() + timeout
    verdicts: dict[str, Verdict] = {}
    while True:
        for model in models:
            if model in verdicts and verdicts[model].outcome is Outcome.promoted:
                continue
            verdict = decide(observe(model))
            if verdicts.get(model) != verdict:
                report(verdict)
            verdicts[model] = verdict
            if verdict.outcome is Outcome.failed:
                return list(verdicts.values())
        if all(v.outcome is Outcome.promoted for v in verdicts.values()) or clock() >= deadline:
            return [verdicts[m] for m in models]
        sleep(max(0.0, min(poll_interval, deadline - clock())))


class ClusterReader:
    """Reads a model's Canary (found by label: Pulumi auto-names it) and the Deployments it names,
    with the official Kubernetes client and a kubeconfig (the stack's context, or KUBECONFIG)."""

    def __init__(self, namespace: str, context: str | None = None, kubeconfig: str | None = None):
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        self.namespace = namespace
        # The client reads KUBECONFIG once, at import; read it now (a list of paths works too).
        config_file = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        try:
            # persist_config=False: never write refreshed credentials back into the user's file.
            self._api = config.new_client_from_config(config_file=config_file, context=context, persist_config=False)
        except (ConfigException, OSError) as exc:
            where = f"context {context!r}" if context else "the current context"
            raise RolloutError(f"cannot use the kubeconfig ({where}): {exc}") from None
        self._objects = client.CustomObjectsApi(self._api)
        self._apps = client.AppsV1Api(self._api)

    def __call__(self, model: str) -> Observation:
        selector = f"{MODEL_LABEL}={model}"
        canaries = self._call(
            f"list canaries -l {selector}",
            # 404 here means no Canary CRD: Flagger is not installed in this cluster.
            False,
            self._objects.list_namespaced_custom_object,
            FLAGGER_GROUP,
            FLAGGER_VERSION,
            self.namespace,
            "canaries",
            label_selector=selector,
        )
        items = canaries.get("items") or []
        if len(items) > 1:
            names = ", ".join(_get(c, "metadata", "name") or "?" for c in items)
            raise RolloutError(f"{model}: {len(items)} Canaries labelled {selector} in {self.namespace}: {names}")
        if not items:
            return Observation(model, None)
        canary = items[0]
        target_name = _get(canary, "spec", "targetRef", "name")
        if not target_name:
            return Observation(model, canary)
        return Observation(
            model, canary, self._deployment(target_name), self._deployment(f"{target_name}{PRIMARY_SUFFIX}")
        )

    def _deployment(self, name: str) -> KubeObject | None:
        found = self._call(f"get deployment {name}", True, self._apps.read_namespaced_deployment, name, self.namespace)
        return None if found is None else self._api.sanitize_for_serialization(found)

    def _call(self, what: str, missing_ok: bool, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return method(*args, _request_timeout=30, **kwargs)
        except ApiException as exc:
            if exc.status == 404 and missing_ok:
                return None
            raise RolloutError(f"{what} in {self.namespace}: HTTP {exc.status} {exc.reason}") from None
        except HTTPError as exc:
            # urllib3 wraps the cause (e.g. connection refused) in MaxRetryError; say the cause.
            raise RolloutError(f"{what} in {self.namespace}: {getattr(exc, 'reason', None) or exc}") from None
