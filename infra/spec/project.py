"""Whole-project checks: every stack file and every manifest, all problems reported at once."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from infra.spec.errors import ConfigError, ErrorItem
from infra.spec.manifest import MODELS_DIR, ModelManifest, Protocol, ServedModel, load_manifests, served_in
from infra.spec.paths import links_outside
from infra.spec.placement import placement_errors
from infra.spec.scaling import ScalingMetric
from infra.spec.settings import (
    PROJECT,
    STACK_FILE_PREFIX,
    STACK_FILE_SUFFIX,
    STACKS_DIR,
    RouteKind,
    StackSettings,
    load_stack_settings,
    stack_names,
)


def stack_errors(settings: StackSettings, manifests: Iterable[ModelManifest]) -> list[ErrorItem]:
    """Rules that need both a stack and the manifests it serves."""
    served_models = served_in(manifests, settings.environment)
    errors = placement_errors(settings, served_models)
    errors += request_scaling_errors(settings, served_models)
    for model in served_models:
        manifest, serving = model.manifest, model.serving
        served = manifest.environments[settings.environment]
        if serving.resources.gpu:
            file = f"{MODELS_DIR}/{manifest.name}.yaml"
            if not settings.cluster.has_gpu_nodes:
                errors.append(
                    ErrorItem(
                        file,
                        "serving.resources.gpu",
                        f"stack {settings.stack} has no GPU nodes (cluster.eks.gpuNodes, or cluster.gpuNodes "
                        "for an existing cluster); serve this model elsewhere or add them",
                    )
                )
            elif settings.images.serving_gpu is None:
                errors.append(
                    ErrorItem(file, "serving.resources.gpu", f"stack {settings.stack} names no images.servingGpu")
                )
        if serving.ingress and Protocol.grpc in serving.protocols:
            field = f"environments.{settings.environment}.protocols" if served.protocols else "serving.protocols"
            if settings.routing.kind is RouteKind.ingress:
                errors.append(
                    ErrorItem(
                        f"{MODELS_DIR}/{manifest.name}.yaml",
                        field,
                        f"lists grpc, but stack {settings.stack} routes by Ingress, which has no portable gRPC "
                        f"routing; set environments.{settings.environment}.protocols: [rest]",
                    )
                )
            elif settings.routing.grpc is None:
                errors.append(
                    ErrorItem(
                        f"{MODELS_DIR}/{manifest.name}.yaml",
                        field,
                        f"lists grpc, but stack {settings.stack} has no routing.grpc (the Gateway listener for "
                        f"*.grpc.{settings.routing.host}); add it to stacks/Pulumi.{settings.stack}.yaml",
                    )
                )
        errors += shadow_errors(settings, model)
        if served.canary is None:
            continue
        if settings.flagger:
            errors.append(
                ErrorItem(
                    f"{MODELS_DIR}/{manifest.name}.yaml",
                    f"environments.{settings.environment}.canary",
                    f"stack {settings.stack} rolls versions out with Flagger, which runs its own canary; "
                    "bump `stable` instead of declaring a canary",
                )
            )
        elif settings.routing.kind is RouteKind.ingress:
            errors.append(
                ErrorItem(
                    f"{MODELS_DIR}/{manifest.name}.yaml",
                    f"environments.{settings.environment}.canary",
                    f"stack {settings.stack} routes by Ingress, which has no portable traffic split; "
                    "a canary needs Gateway API routing (routing.kind: gateway) for its weight",
                )
            )
    return errors


def shadow_errors(settings: StackSettings, model: ServedModel) -> list[ErrorItem]:
    """A shadow needs a route of ours to mirror from: a Gateway API route on a stack without Flagger.

    Flagger rewrites the whole HTTPRoute spec on every reconciliation (`hrClone.Spec =
    httpRouteSpec`, fluxcd/flagger@v1.44.0 pkg/router/gateway_api.go:241, :417), which would drop
    our RequestMirror filter; its own mirror is Blue/Green's 100% copy to its canary (:383-397).
    An Ingress has no portable request mirroring (networking.k8s.io/v1 IngressSpec has none).
    """
    env = settings.environment
    if model.manifest.environments[env].shadow is None:
        return []
    file, field = f"{MODELS_DIR}/{model.name}.yaml", f"environments.{env}.shadow"
    if settings.flagger:
        reason = (
            f"stack {settings.stack} rolls versions out with Flagger, which rewrites the whole HTTPRoute "
            "(pkg/router/gateway_api.go:241) and would drop the mirror; shadow on a stack without Flagger"
        )
    elif settings.routing.kind is RouteKind.ingress:
        reason = (
            f"stack {settings.stack} routes by Ingress, which has no portable request mirroring; "
            "a shadow needs Gateway API routing (routing.kind: gateway) for its RequestMirror filter"
        )
    elif not model.serving.ingress:
        reason = "the model has no route here (ingress: false), so no request could be mirrored to a shadow"
    else:
        return []
    return [ErrorItem(file, field, reason)]


def request_scaling_errors(settings: StackSettings, served_models: Iterable[ServedModel]) -> list[ErrorItem]:
    """A stack whose models or pools scale on requests names the Prometheus KEDA's triggers query
    (monitoring.prometheusAddress) and has the ServiceMonitors that put TF-Serving's series there."""
    env = settings.environment
    scaling = []
    for model in served_models:
        manifest, served = model.manifest, model.manifest.environments[env]
        if model.serving.autoscaling.metric is ScalingMetric.requests:
            where = (
                f"environments.{env}.autoscaling"
                if served.autoscaling and served.autoscaling.metric
                else "serving.autoscaling"
            )
            scaling.append(f"{MODELS_DIR}/{manifest.name}.yaml ({where}.metric)")
    for index, pool in enumerate(settings.serving_pools.pools):
        if pool.autoscaling.metric is ScalingMetric.requests:
            scaling.append(f"pool {pool.name} (servingPools.pools.{index}.autoscaling.metric)")
    if not scaling:
        return []
    file = f"{STACKS_DIR}/{STACK_FILE_PREFIX}{settings.stack}{STACK_FILE_SUFFIX}"
    shown = ", ".join(scaling[:3]) + (f" and {len(scaling) - 3} more" if len(scaling) > 3 else "")
    errors = []
    if settings.monitoring.prometheus_address is None:
        errors.append(
            ErrorItem(
                file,
                f"config.{PROJECT}:monitoring.prometheusAddress",
                f"required: {shown} scale(s) on requests, and KEDA's trigger queries this Prometheus "
                "(e.g. http://kube-prometheus-stack-prometheus.monitoring:9090)",
            )
        )
    if not settings.monitoring.prometheus_operator:
        errors.append(
            ErrorItem(
                file,
                f"config.{PROJECT}:monitoring.prometheusOperator",
                f"must be true: {shown} scale(s) on requests, counted from TF-Serving's series that only the "
                "ServiceMonitors put into Prometheus",
            )
        )
    return errors


def validate_project(root: Path) -> tuple[dict[str, StackSettings], list[ErrorItem]]:
    """Validate all stacks and manifests under `root`; return the valid stacks and every error."""
    # Refused by name before anything is read: links out of the repository under models/,
    # stacks/ and policy/ (the policy pack and its config are read by `pulumi preview`).
    errors: list[ErrorItem] = links_outside(root)
    if errors:
        return {}, sorted(set(errors), key=lambda e: (e.file, e.field, e.message))
    try:
        stacks = stack_names(root)
    except ConfigError as exc:
        return {}, exc.errors
    if not stacks:
        errors.append(ErrorItem(f"{STACKS_DIR}/", "", "no stack files (Pulumi.<stack>.yaml) found"))
    settings: dict[str, StackSettings] = {}
    environments: set[str] = set()
    for stack in stacks:
        try:
            settings[stack] = load_stack_settings(root, stack)
            environments.add(settings[stack].environment)
        except ConfigError as exc:
            errors.extend(exc.errors)
            # Assume the default so one broken stack file does not also fail every manifest.
            environments.add(stack)
    try:
        manifests = load_manifests(root, environments=environments or None)
    except ConfigError as exc:
        errors.extend(exc.errors)
    else:
        for stack_settings in settings.values():
            errors.extend(stack_errors(stack_settings, manifests))
    return settings, sorted(set(errors), key=lambda e: (e.file, e.field, e.message))
