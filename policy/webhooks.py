"""Where a Canary's webhooks send requests: the webhook URL Flagger calls, and the targets of the
load tester's `hey` and `ghz` commands, as (Service, namespace, port) the cluster must resolve.

Flagger POSTs to `url` (fluxcd/flagger@v1.44.0 pkg/controller/webhook.go:L52-L90); the load
tester runs `metadata.cmd` in its own pod (pkg/loadtester/server.go:L296-L336, task_shell.go), so
the command's host is resolved by cluster DNS from the load tester's namespace.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from policy.engines import Resource

HOST_PORT = re.compile(r"^(?P<host>[a-z0-9]([a-z0-9.-]*[a-z0-9])?):(?P<port>[0-9]+)$")
CLUSTER_SUFFIXES = ("svc.cluster.local", "svc")
GRPC_PREDICT = "tensorflow.serving.PredictionService/Predict"
# What a model without a recorded contract is checked with (infra/model/loadtest.py ghz_command).
GRPC_CALLS = (GRPC_PREDICT, "tensorflow.serving.PredictionService/GetModelMetadata")


@dataclass(frozen=True)
class Target:
    """One Service a webhook reaches: the field that names it, and by what tool."""

    field: str
    tool: str  # "webhook", "hey", "ghz"
    service: str
    namespace: str
    port: int
    call: str = ""  # ghz --call


def _service(host: str, default_namespace: str) -> tuple[str, str] | None:
    """(Service, namespace) of a cluster DNS name `<svc>[.<ns>[.svc[.cluster.local]]]`, else None."""
    for suffix in CLUSTER_SUFFIXES:
        if host.endswith("." + suffix):
            host = host[: -len(suffix) - 1]
            break
    parts = host.split(".")
    if len(parts) == 1:
        return parts[0], default_namespace
    if len(parts) == 2:
        return parts[0], parts[1]
    return None  # outside the cluster: nothing to resolve here


def _url_target(url: str, field: str, tool: str, namespace: str) -> Target | None:
    parts = urlsplit(url)
    service = _service(parts.hostname or "", namespace)
    if service is None:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return Target(field, tool, service[0], service[1], port)


@functools.lru_cache(maxsize=4096)
def _commands(command: str) -> tuple[tuple[str, ...], ...]:
    """The simple commands of a shell line, split at `|`, `;`, `&&` and `||` outside quotes.

    Cached by the line: every rule that follows a Canary's webhooks asks again, and a fleet's
    Canaries share a few command shapes (a profile of a 1,000-model plan spent half its policy
    time in shlex here)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[tuple[str, ...]] = []
    words: list[str] = []
    try:
        for token in lexer:
            if token in ("|", ";", "&&", "||", "&"):
                commands.append(tuple(words))
                words = []
            else:
                words.append(token)
    except ValueError:
        return tuple(commands)  # unbalanced quotes: the shell would refuse it too
    commands.append(tuple(words))
    return tuple(commands)


def _command_targets(command: str, field: str, namespace: str) -> Iterable[Target]:
    for words in _commands(command):
        if not words:
            continue
        if words[0] == "hey":
            urls = [w for w in words if w.startswith(("http://", "https://"))]
            target = _url_target(urls[-1], field, "hey", namespace) if urls else None
            if target is not None:
                yield target
        elif words[0] == "ghz":
            call = words[words.index("--call") + 1] if "--call" in words[:-1] else ""
            hosts = [m for m in (HOST_PORT.match(w) for w in words[1:]) if m]
            if hosts:
                service = _service(hosts[-1]["host"], namespace)
                if service is not None:
                    yield Target(field, "ghz", service[0], service[1], int(hosts[-1]["port"]), call)


def targets(canary: Resource) -> list[Target]:
    """Every Service the Canary's webhooks reach, directly or through the load tester."""
    found: list[Target] = []
    for webhook in (canary.spec.get("analysis") or {}).get("webhooks") or []:
        field = f"analysis.webhooks.{webhook.get('name')}"
        url_target = _url_target(str(webhook.get("url", "")), f"{field}.url", "webhook", canary.namespace)
        if url_target is not None:
            found.append(url_target)
        command = (webhook.get("metadata") or {}).get("cmd")
        if command and url_target is not None:
            # The command runs in the webhook's pod: short names resolve in its namespace.
            found += _command_targets(str(command), f"{field}.metadata.cmd", url_target.namespace)
    return found


def rollout_webhooks(canary: Resource) -> list[Mapping[str, Any]]:
    """Webhooks Flagger calls at every analysis step (`type: rollout`, or no type)."""
    hooks = (canary.spec.get("analysis") or {}).get("webhooks") or []
    return [w for w in hooks if w.get("type", "rollout") in ("rollout", "")]


def problems(canary: Resource, lookup: Callable[[str, str, str], Resource | None]) -> Iterable[str]:
    """A webhook URL or load-test target that names no Service, or a port the Service lacks."""
    for target in targets(canary):
        service = lookup("Service", target.namespace, target.service)
        if service is None:
            yield (
                f"{target.field} ({target.tool}) reaches Service {target.namespace}/{target.service}, which the "
                "stack neither declares nor makes Flagger generate"
            )
            continue
        ports = [p.get("port") for p in service.spec.get("ports") or []]
        if target.port not in ports:
            yield f"{target.field} ({target.tool}): {service.describe()} has no port {target.port} (ports {ports})"
