"""A tiny Kubernetes API server on loopback for the reads `modelctl smoke` makes on a Flagger stack,
and builders of the objects it serves (Kubernetes JSON spelling).

It answers only `GET /apis/flagger.app/v1beta1/namespaces/<ns>/canaries?labelSelector=k=v`
and `GET /apis/apps/v1/namespaces/<ns>/deployments/<name>`, from a per-model timeline: each
list of a model's Canaries moves that model one step on (as Flagger would between two polls),
and the Deployments read after it are that step's.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from infra.model.workload import CONFIG_HASH_ANNOTATION, MODEL_LABEL

Snapshot = dict[str, Any]  # {"canary": {...} | None, "deployments": [{...}, ...]}


def deployment(name: str, config_hash: str, config_map: str, image: str = "tensorflow/serving:2.19.1") -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "models"},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": {CONFIG_HASH_ANNOTATION: config_hash}},
                "spec": {
                    "containers": [{"name": "tfserving", "image": image}],
                    "volumes": [{"name": "config", "configMap": {"name": config_map}}],
                },
            },
        },
    }


def canary(model: str, target: str, phase: str, tracked: list[str] | None = None, failed_checks: int = 0) -> dict:
    status: dict[str, Any] = {"phase": phase, "failedChecks": failed_checks}
    if tracked is not None:
        status["trackedConfigs"] = {f"configmap/{name}": "checksum" for name in tracked}
    return {
        "apiVersion": "flagger.app/v1beta1",
        "kind": "Canary",
        "metadata": {"name": f"{model}-rollout-1a2b3c4d", "namespace": "models", "labels": {MODEL_LABEL: model}},
        "spec": {"targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target}},
        "status": status,
    }


class FakeKubernetes(ThreadingHTTPServer):
    def __init__(self, namespace: str, timelines: dict[str, list[Snapshot]]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.namespace = namespace
        self.timelines = timelines
        self.steps = dict.fromkeys(timelines, -1)  # a list of Canaries moves to the next step
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def current(self, model: str) -> Snapshot:
        timeline = self.timelines[model]
        return timeline[max(0, min(self.steps[model], len(timeline) - 1))]

    def kubeconfig(self, path: Path, context: str) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "ci", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": context, "context": {"cluster": "fake", "user": "ci"}}],
            "current-context": context,
        }
        path.write_text(json.dumps(config), encoding="utf-8")  # JSON is YAML
        return path

    def start(self) -> FakeKubernetes:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self


class _Handler(BaseHTTPRequestHandler):
    server: FakeKubernetes

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self, what: str) -> None:
        status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
        self._send(404, status | {"message": f"{what} not found"})

    def do_GET(self):
        url = urlparse(self.path)
        self.server.requests.append(self.path)
        namespace = self.server.namespace
        canaries = f"/apis/flagger.app/v1beta1/namespaces/{namespace}/canaries"
        deployments = f"/apis/apps/v1/namespaces/{namespace}/deployments/"
        if url.path == canaries:
            (selector,) = parse_qs(url.query)["labelSelector"]
            key, _, model = selector.partition("=")
            assert key == MODEL_LABEL, selector
            items = []
            if model in self.server.timelines:
                self.server.steps[model] += 1
                found = self.server.current(model)["canary"]
                items = [found] if found else []
            return self._send(200, {"apiVersion": "flagger.app/v1beta1", "kind": "CanaryList", "items": items})
        if url.path.startswith(deployments):
            name = url.path.removeprefix(deployments)
            for model in self.server.timelines:
                for found in self.server.current(model)["deployments"]:
                    if found["metadata"]["name"] == name:
                        return self._send(200, found)
            return self._not_found(f'deployments.apps "{name}"')
        return self._not_found(url.path)
