"""The container security context every workload we declare runs with (models, fetchers, the load tester)."""

from __future__ import annotations

import pulumi_kubernetes as k8s


def restricted_security_context(user: int) -> k8s.core.v1.SecurityContextArgs:
    """Meets the `restricted` Pod Security Standard (kubernetes.io, "Pod Security Standards":
    no privilege escalation, non-root, all capabilities dropped, seccomp RuntimeDefault) and the
    usual benchmarks' read-only root; `user` is the image's own non-root UID (also its GID)."""
    return k8s.core.v1.SecurityContextArgs(
        allow_privilege_escalation=False,
        privileged=False,
        read_only_root_filesystem=True,
        run_as_non_root=True,
        run_as_user=user,
        run_as_group=user,
        capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
    )
