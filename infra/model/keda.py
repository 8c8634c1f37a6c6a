"""Autoscaling on request rate: a KEDA ScaledObject with one Prometheus trigger (pure builders).

KEDA (kedacore/keda@v2.20.2, cited as <path>:<line>) turns a ScaledObject into an HPA it owns,
named `keda-hpa-<scaledobject>` (controllers/keda/hpa.go:401-402), on an external metric: the
trigger's query, divided by `threshold` per replica (no `metricType`: AverageValue,
pkg/scalers/scaler.go:99-101). Its admission webhook refuses a ScaledObject whose workload another
HPA or ScaledObject scales (apis/keda/v1alpha1/scaledobject_webhook.go:308, :391), so a workload
scaled on requests gets no HorizontalPodAutoscaler of ours.
"""

from __future__ import annotations

from typing import Any

import pulumi

from infra.model.observability import prediction_calls
from infra.model.workload import SCALE_DOWN_STABILIZATION_SECONDS

KEDA_API = "keda.sh/v1alpha1"
SCALED_OBJECT = "ScaledObject"
# The trigger's name: Flagger's `autoscalerRef.primaryScalerQueries` is keyed by it.
TRIGGER = "requests"
# Four scrapes at observability.SCRAPE_INTERVAL (30s): `rate` needs two samples in its window,
# and one missed scrape must not empty it.
RATE_WINDOW = "2m"
# A Deployment's pods are `<deployment>-<pod-template-hash>-<suffix>`, both lower-case
# alphanumerics; Flagger's primary is `<deployment>-primary`, whose pods this does not match.
POD_SUFFIX = "-[0-9a-z]+-[0-9a-z]+"


def request_rate_query(namespace: str, deployment_name: str, model_name: str | None = None) -> str:
    """Prediction calls per second served by the pods of `deployment_name` (every model it serves,
    or only `model_name`): one series, or none while nothing was called.

    Prediction calls as the alerts and Flagger's analysis count them (infra/model/observability.py
    says why): the kubelet's probes are not counted, or an idle model would look busy. The
    Prometheus scaler takes a single series and refuses several (pkg/scalers/prometheus_scaler.go
    :273-274); an empty answer counts as 0 (`ignoreNullValues`, default true: :56, :267-270).
    """
    where = f'namespace="{namespace}", pod=~"{deployment_name}{POD_SUFFIX}"'
    if model_name is not None:
        where += f', model_name="{model_name}"'
    return prediction_calls(where, RATE_WINDOW)


def scaled_object(
    metadata: Any,
    deployment_name: pulumi.Input[str],
    min_replicas: int,
    max_replicas: int,
    target_rps: float,
    query: pulumi.Input[str],
    prometheus_address: str,
) -> dict[str, Any]:
    """ScaledObject kwargs (a CustomResource): the Deployment between min and max replicas, at
    `target_rps` prediction calls per second per replica."""
    return {
        "api_version": KEDA_API,
        "kind": SCALED_OBJECT,
        "metadata": metadata,
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment_name},
            # At least 1 (the manifests allow no less): KEDA scales to zero only with minReplicaCount 0
            # (pkg/scaling/executor/scale_scaledobjects.go:98), and its HPA keeps 1..max.
            "minReplicaCount": min_replicas,
            "maxReplicaCount": max_replicas,
            "advanced": {
                # The HPA KEDA creates takes this behaviour (controllers/keda/hpa.go:79-81): as the CPU
                # HPAs, down one pod a minute after five quiet minutes (infra/model/workload.py).
                "horizontalPodAutoscalerConfig": {
                    "behavior": {
                        "scaleDown": {
                            "stabilizationWindowSeconds": SCALE_DOWN_STABILIZATION_SECONDS,
                            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                        }
                    }
                }
            },
            "triggers": [
                {
                    "type": "prometheus",
                    "name": TRIGGER,
                    # Trigger metadata is strings (pkg/scalers/prometheus_scaler.go:45-61 parses them).
                    "metadata": {
                        "serverAddress": prometheus_address,
                        "query": query,
                        "threshold": f"{target_rps:.12g}",
                        # With minReplicaCount >= 1 activation only sets the Active condition (the HPA
                        # scales 1..max): any prediction call makes the workload active (:319).
                        "activationThreshold": "0",
                        "ignoreNullValues": "true",
                    },
                }
            ],
        },
    }
