"""Runs in the policy pack's virtualenv: every policy of `pack.policies()` over some objects,
through pulumi-policy's own argument types; prints [[policy, resource name], ...]."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path.cwd().parent))

from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
)

from policy.pack import policies

objects = json.loads(Path(sys.argv[1]).read_text())
config = json.loads(Path(sys.argv[2]).read_text())
options = PolicyResourceOptions(False, [], None, [], PolicyCustomTimeouts(0, 0, 0), [])
reported = []
for policy in policies():
    policy_config = {k: v for k, v in config[policy.name].items() if k != "enforcementLevel"}
    for type_, name, props in objects:
        urn = f"urn:pulumi:prod::model-serving::{type_}::{name}"

        def report(message, urn=None, policy=policy, name=name):
            reported.append((policy.name, name))

        if isinstance(policy, ResourceValidationPolicy):
            policy.validate(ResourceValidationArgs(type_, props, urn, name, options, None, policy_config), report)
    if not isinstance(policy, ResourceValidationPolicy):
        resources = [
            PolicyResource(t, p, f"urn:pulumi:prod::model-serving::{t}::{n}", n, options, None, None, [], {})
            for t, n, p in objects
        ]

        def report_stack(message, urn=None, policy=policy):
            reported.append((policy.name, urn.rsplit("::", 1)[1]))

        policy.validate(StackValidationArgs(resources, policy_config), report_stack)
print(json.dumps(sorted(set(reported))))
