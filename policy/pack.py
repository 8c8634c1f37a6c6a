"""The rules of rules.py as Pulumi policies (pulumi-policy SDK); __main__.py serves them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from policy.engines import NodePool
from policy.rules import MANDATORY, RULES, ExternalObject, PolicySettings, Resource, Rule

# What `--policy-pack-config policy/config/<stack>.json` may set for each policy
# (`modelctl policy-config --stack S` writes it from the stack file).
CONFIG_SCHEMA = PolicyConfigSchema(
    properties={
        "host": {"type": "string", "description": "The only host routes may serve."},
        "production": {"type": "boolean", "description": "The stack is production."},
        "requireDigest": {"type": "boolean", "description": "Images must be pinned by digest."},
        "disabledDefaultProviders": {"type": "array", "items": {"type": "string"}},
        "external": {"type": "array", "description": "Prerequisites the stack names but does not declare."},
        "nodePools": {"type": "array", "description": "Node pools pods may run on (allocatable per node)."},
    }
)


def settings_from(config: Mapping[str, Any] | None) -> PolicySettings:
    config = config or {}
    return PolicySettings(
        require_digest=bool(config.get("requireDigest", False)),
        production=bool(config.get("production", False)),
        host=config.get("host"),
        disabled_default_providers=tuple(config.get("disabledDefaultProviders") or ()),
        external=tuple(
            ExternalObject(e["kind"], e["name"], e.get("namespace") or "") for e in config.get("external") or ()
        ),
        node_pools=tuple(NodePool.from_config(p) for p in config.get("nodePools") or ()),
    )


def _default_level(rule: Rule) -> EnforcementLevel:
    # Without config, the rule's own default; a stack's config file may raise it.
    level = rule.enforcement(PolicySettings())
    return EnforcementLevel.MANDATORY if level == MANDATORY else EnforcementLevel.ADVISORY


def _resource_policy(rule: Rule) -> ResourceValidationPolicy:
    check = rule.check
    assert check is not None

    def validate(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
        resource = Resource(args.resource_type, args.name, args.props)
        for message in check(resource, settings_from(args.get_config())):
            report_violation(message, args.urn)

    return ResourceValidationPolicy(
        name=rule.name,
        description=rule.description,
        validate=validate,
        enforcement_level=_default_level(rule),
        config_schema=CONFIG_SCHEMA,
    )


def _stack_policy(rule: Rule) -> StackValidationPolicy:
    check = rule.check_stack
    assert check is not None

    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources = {id(r): r for r in args.resources}
        # The engine itself refuses a missing provider before policies run, so the pack leaves
        # `engine_package` unset; `modelctl plan` emulates that refusal offline.
        declared = [Resource(r.resource_type, r.name, r.props) for r in resources.values()]
        urns = {id(d): r.urn for d, r in zip(declared, resources.values(), strict=True)}
        for resource, message in check(declared, settings_from(args.get_config())):
            report_violation(f"{resource.type} {resource.name}: {message}", urns[id(resource)])

    return StackValidationPolicy(
        name=rule.name,
        description=rule.description,
        validate=validate,
        enforcement_level=_default_level(rule),
        config_schema=CONFIG_SCHEMA,
    )


def policies() -> list[ResourceValidationPolicy | StackValidationPolicy]:
    return [_resource_policy(r) if r.check is not None else _stack_policy(r) for r in RULES]
