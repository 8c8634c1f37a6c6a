"""One table of pins (infra/platform/pins.py): the charts installed, the CRDs vendored in
tests/schemas/, the release the engine emulation is written against, and every citation in the
code and the README name the same releases. Fails on the old Flagger pin (chart 1.45.0, CRDs and
citations 1.44.0)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infra.platform import addons, pins
from policy.fidelity import EMULATED_FLAGGER_RELEASE
from policy.keda import EMULATED_KEDA_RELEASE
from tests.conftest import ROOT
from tests.test_schemas import CRD_DIRS

SCHEMAS = ROOT / "tests" / "schemas"
CRD_DIR = re.compile(r"^(?P<project>[a-z-]+)-v(?P<release>[0-9]+\.[0-9]+\.[0-9]+)$")
CITED = ("infra", "policy", "scripts", "tests", ".github")


def _sources() -> dict[Path, str]:
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    for folder in CITED:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".sh", ".yml", ".yaml", ".md")]
    return {p: p.read_text() for p in files if "schemas" not in p.parts or p.name == "README.md"}


def _releases(pattern: str) -> set[str]:
    return {m for text in _sources().values() for m in re.findall(pattern, text)}


def test_every_vendored_crd_release_is_a_pinned_charts_and_validated():
    vendored = {p.name for p in SCHEMAS.iterdir() if p.is_dir()}
    pinned = {pin.crds for pin in pins.PINS.values() if pin.crds}
    assert vendored == pinned == set(CRD_DIRS)
    readme = (SCHEMAS / "README.md").read_text()
    assert all(f"`{name}/" in readme for name in vendored)
    # One release per project: a second directory would be a release nothing installs.
    projects = [CRD_DIR.match(name)["project"] for name in vendored]
    assert len(projects) == len(set(projects))


def test_the_flagger_chart_is_the_release_of_its_crds_and_of_the_emulation():
    release = CRD_DIR.match(pins.FLAGGER.crds)["release"]
    assert pins.FLAGGER.version == release == EMULATED_FLAGGER_RELEASE
    assert addons.FLAGGER.version == pins.FLAGGER.version


def test_the_keda_chart_is_the_release_of_its_crds_and_of_the_emulation():
    release = CRD_DIR.match(pins.KEDA.crds)["release"]
    assert pins.KEDA.version == release == EMULATED_KEDA_RELEASE
    assert addons.KEDA.version == pins.KEDA.version


@pytest.mark.parametrize(
    ("pattern", "pin"),
    [
        (r"fluxcd/flagger@v([0-9.]*[0-9])", pins.FLAGGER.version),
        (r"fluxcd/flagger tag v([0-9.]*[0-9])", pins.FLAGGER.version),
        (r"\bFlagger ([0-9]+\.[0-9]+\.[0-9]+)", pins.FLAGGER.version),
        (r"flagger-v([0-9.]*[0-9])", pins.FLAGGER.version),
        (r"Gateway API v([0-9.]*[0-9])", CRD_DIR.match(pins.ENVOY_GATEWAY.crds)["release"]),
        (r"gateway-api-v([0-9.]*[0-9])", CRD_DIR.match(pins.ENVOY_GATEWAY.crds)["release"]),
        (r"prometheus-operator-v([0-9.]*[0-9])", CRD_DIR.match(pins.KUBE_PROMETHEUS_STACK.crds)["release"]),
        (r"gateway-helm` (v[0-9.]*[0-9])", pins.ENVOY_GATEWAY.version),
        (r"metrics-server ([0-9]+\.[0-9]+\.[0-9]+)", pins.METRICS_SERVER.version),
        (r"kube-prometheus-stack ([0-9]+\.[0-9]+\.[0-9]+)", pins.KUBE_PROMETHEUS_STACK.version),
        (r"cluster-autoscaler-chart-([0-9.]*[0-9])", pins.CLUSTER_AUTOSCALER.version),
        (r"Cluster Autoscaler chart\s+([0-9]+\.[0-9]+\.[0-9]+)", pins.CLUSTER_AUTOSCALER.version),
        (r"k8s-device-plugin@v([0-9.]*[0-9])", pins.NVIDIA_DEVICE_PLUGIN.version),
        (r"NVIDIA device plugin chart ([0-9]+\.[0-9]+\.[0-9]+)", pins.NVIDIA_DEVICE_PLUGIN.version),
        (r"kedacore/keda@v([0-9.]*[0-9])", pins.KEDA.version),
        (r"keda-v([0-9.]*[0-9])", pins.KEDA.version),
        (r"\bKEDA (?:v|chart )?([0-9]+\.[0-9]+\.[0-9]+)", pins.KEDA.version),
    ],
)
def test_every_citation_names_the_pinned_release(pattern, pin):
    found = _releases(pattern)
    assert found == {pin}, f"{pattern}: cited {sorted(found)}, pinned {pin}"


def test_the_charts_installed_are_the_pins():
    charts = [
        addons.ENVOY_GATEWAY,
        addons.METRICS_SERVER,
        addons.KUBE_PROMETHEUS_STACK,
        addons.FLAGGER,
        addons.CLUSTER_AUTOSCALER,
        addons.NVIDIA_DEVICE_PLUGIN,
        addons.KEDA,
    ]
    assert {c.name: c.version for c in charts} == {name: pin.version for name, pin in pins.PINS.items()}
