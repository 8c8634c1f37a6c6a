"""The Pulumi program: stack config and manifests in, one Platform and a ModelDeployment per model out."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pulumi

from infra.model.component import ModelDeployment
from infra.model.pool_component import ServingPool
from infra.model.routing import grpc_target, rest_url
from infra.platform.component import Platform
from infra.spec.errors import ConfigError
from infra.spec.manifest import load_manifests, served_in
from infra.spec.paths import links_outside
from infra.spec.placement import place
from infra.spec.project import stack_errors
from infra.spec.settings import (
    PROJECT,
    STRING_KEYS,
    StackSettings,
    settings_from_config,
    stack_environments,
    stack_file,
)

BOOTSTRAP_NOTICE = (
    "bootstrap: stack {stack} declares the platform only (cluster, add-ons, bucket, IAM) and no models, "
    "and checks no artifacts; next: `modelctl publish` the served versions to s3://{bucket}, then "
    "`pulumi config rm model-serving:bootstrap` and `pulumi up`"
)


def read_settings() -> StackSettings:
    """The only place config is read: `model-serving:*` of the running stack."""
    stack = pulumi.get_stack()
    config = pulumi.Config(PROJECT)

    def get(key: str) -> object:
        # Structured config reaches the program as JSON text; plain strings as they are.
        return config.get(key) if key in STRING_KEYS else config.get_object(key)

    return settings_from_config(stack, get, f"stacks/{stack_file(Path('.'), stack).name}")


def declare(
    settings: StackSettings,
    root: Path,
    verify_artifacts: bool = False,
    only_models: Collection[str] | None = None,
) -> list[str]:
    """Declare everything for one stack; raises ConfigError before declaring anything if input is bad.
    Returns the names of the models the stack serves, in declaration order.

    With `verify_artifacts`, every served version must be committed in the object store
    with the manifest's digest, or nothing is declared. With `bootstrap` set, the platform
    alone is declared (the stack's own bucket does not exist yet): no model, no artifact check.

    `only_models` is for the offline plan's incremental mode only (`main`, which `pulumi up`
    runs, never passes it): every manifest is still read and validated, the platform is
    declared, but of the served models only these. A model's resources depend on the stack,
    the platform and its own manifest alone, so the others are what a full run declares for
    them; what depends on the set of models, the `models` stack output, still lists them all.
    """
    # A real `pulumi preview` of a pull request reads what the offline plan reads: the same
    # refusal of links out of the repository, before anything is read.
    outside = links_outside(root)
    if outside:
        raise ConfigError(outside)
    # Every stack's environment, not only this stack's: the same rule `modelctl validate` applies.
    manifests = load_manifests(root, environments=stack_environments(root) or None)
    problems = stack_errors(settings, manifests)
    if problems:
        raise ConfigError(problems)
    served = served_in(manifests, settings.environment)
    if settings.bootstrap:
        pulumi.log.warn(BOOTSTRAP_NOTICE.format(stack=settings.stack, bucket=settings.object_store.bucket))
        platform = Platform("platform", settings)
        pulumi.export("namespace", platform.namespace_name)
        pulumi.export("models", {})
        pulumi.export("bootstrap", True)
        return []
    if verify_artifacts:
        from infra.model.artifacts import verify_served_versions

        problems = verify_served_versions(served, settings.object_store, warn=pulumi.log.warn)
        if problems:
            raise ConfigError(problems)
    placement = place(settings, served)
    platform = Platform("platform", settings)
    providers = [platform.k8s_provider] + ([platform.aws_provider] if platform.aws_provider else [])
    options = pulumi.ResourceOptions(providers=providers)
    # A pool is declared with any of its members: its objects depend on every member's manifest.
    pool_services = {
        shard.name: ServingPool(shard.name, shard, settings, platform, opts=options).service
        for shard in placement.shards
        if only_models is None or set(shard.member_names) & set(only_models)
    }
    shard_of = placement.shard_of
    exported = {}
    for model in served:
        shard = shard_of.get(model.name)
        if only_models is None or model.name in only_models:
            ModelDeployment(
                model.name, model, settings, platform, opts=options, pool=shard, pool_service=pool_services.get(shard)
            )
        exported[model.name] = {"url": rest_url(model.name, settings), "versions": dict(model.version_labels)}
        if model.serves_grpc:
            exported[model.name]["grpc"] = grpc_target(model.name, settings)
        if shard is not None:
            exported[model.name]["pool"] = shard
    pulumi.export("namespace", platform.namespace_name)
    pulumi.export("models", exported)
    if placement.shards:
        pulumi.export("pools", {shard.name: list(shard.member_names) for shard in placement.shards})
    return [model.name for model in served]


def main(root: Path | None = None) -> None:
    """Entry point for `pulumi preview/up` (via the root `__main__.py`) and the offline plan."""
    root = root or Path.cwd()
    try:
        settings = read_settings()
        # The offline plan runs `declare` directly; a real preview/up checks the artifacts.
        declare(settings, root, verify_artifacts=settings.object_store.verify_artifacts)
    except ConfigError as exc:
        for item in exc.errors:
            pulumi.log.error(str(item))
        # RunError: Pulumi reports the message without a Python traceback.
        raise pulumi.RunError(f"{len(exc.errors)} invalid manifest or stack setting(s); nothing declared") from None
