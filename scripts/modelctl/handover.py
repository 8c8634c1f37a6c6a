"""Changes `pulumi up` cannot make in the order it makes them, and the step that must come first.

An autoscaler handover: a workload that scales on requests from this change on (issue 23,
docs/autoscaling.md) gets a KEDA ScaledObject in place of its HorizontalPodAutoscaler. Pulumi
creates and updates what the program declares as it registers it, and deletes what the program
no longer declares only once the program's registrations have ended (pulumi/pulumi
pkg/resource/deploy/deployment_executor.go, `Execute`: `performDeletes` when the event stream is
done; step_generator.go `GenerateDeletes`: the resources "not registered in the new snapshot").
So the ScaledObject is created while the HPA still scales the Deployment, and KEDA's admission
webhook refuses it (kedacore/keda@v2.20.2 apis/keda/v1alpha1/scaledobject_webhook.go:308), which
fails the update. The webhook skips an HPA annotated `validations.keda.sh/hpa-ownership: "false"`
(:273-275), so annotating the old HPA first lets the update through; Pulumi then deletes it.

The HPA's name in the cluster carries Pulumi's random suffix, which no offline plan knows: the
command selects it by its workload's instance label instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from infra.offline import DeclaredResource
from policy.engines import HPA, SCALED_OBJECT
from policy.keda import HPA_OWNERSHIP_ANNOTATION, target
from scripts.modelctl.guardrails import as_policy_resource
from scripts.modelctl.plan import Op, StackPlan

INSTANCE_LABEL = "app.kubernetes.io/instance"


@dataclass(frozen=True)
class Handover:
    """A ScaledObject this update creates for a workload whose HPA it deletes afterwards."""

    stack: str
    namespace: str
    workload: str  # the Deployment's name as declared
    instance: str  # the old HPA's instance label (the workload's name: `iris`, `iris-canary`)
    scaled_object: str  # the ScaledObject's logical name

    def command(self) -> list[str]:
        """Run before `pulumi up`: exempts the old HPA from KEDA's webhook check."""
        return [
            "kubectl",
            "--namespace",
            self.namespace,
            "annotate",
            "hpa",
            "--selector",
            f"{INSTANCE_LABEL}={self.instance}",
            f"{HPA_OWNERSHIP_ANNOTATION}=false",
        ]

    def describe(self, name: Callable[[str], str] = str) -> str:
        """One sentence; `name` formats the stack's, workload's and ScaledObject's names (markdown
        quotes them), the rest is this module's own text."""
        return (
            f"stack {name(self.stack)}: {name(self.instance)} moves from its HorizontalPodAutoscaler to the KEDA "
            f"ScaledObject {name(self.scaled_object)}; pulumi up creates the ScaledObject before it deletes the "
            "HPA, and KEDA's webhook refuses a ScaledObject whose workload an HPA scales, so the update fails "
            "unless the old HPA is exempted first"
        )


def handovers(plan: StackPlan) -> list[Handover]:
    """Each ScaledObject created in `plan` whose workload an HPA scales before it (not exempted
    from the webhook) and that the plan deletes."""
    deleted_hpas: dict[tuple[str, str, str], DeclaredResource] = {}
    for step in plan.changes:
        if step.op is Op.delete and step.old is not None and step.old.type == HPA:
            annotations = (step.old.inputs.get("metadata") or {}).get("annotations") or {}
            if annotations.get(HPA_OWNERSHIP_ANNOTATION) != "false":
                deleted_hpas[target(as_policy_resource(step.old))] = step.old
    found = []
    for step in plan.changes:
        if step.op in (Op.create, Op.replace) and step.new is not None and step.new.type == SCALED_OBJECT:
            key = target(as_policy_resource(step.new))
            hpa = deleted_hpas.get(key)
            namespace, _, workload = key
            if hpa is not None:
                labels = (hpa.inputs.get("metadata") or {}).get("labels") or {}
                instance = str(labels.get(INSTANCE_LABEL) or workload)
                found.append(Handover(plan.stack, namespace, workload, instance, step.new.name))
    return found
