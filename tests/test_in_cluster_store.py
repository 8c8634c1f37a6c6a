"""An in-cluster S3-compatible store (staging's MinIO): rendered objects, TLS end to end, outside checks, rules."""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import kubernetes_validate
import pytest

from infra.model.artifacts import verify_served_versions
from infra.model.fetch import fetch_script
from infra.platform.object_store import s3_client
from infra.spec.manifest import load_manifests, served_in
from infra.spec.settings import cluster_internal_host, load_stack_settings
from scripts.modelctl.cli import main
from scripts.modelctl.localstore import TEST_CREDENTIALS, free_port
from scripts.modelctl.publish import Publisher
from tests.conftest import ROOT, STACKS, edit_yaml

STAGING = "staging"
STAGING_FILE = "stacks/Pulumi.staging.yaml"
STORE_KEY = "model-serving:objectStore"
# What the staging stack file says; the tests below check the rendered objects against it.
CREDENTIALS_SECRET = "minio-fetcher-credentials"
CA_CONFIG_MAP, CA_KEY = "minio-ca", "ca.crt"
CA_PATH = f"/etc/model-serving/store-ca/{CA_KEY}"
MINIO_PODS = {"app.kubernetes.io/name": "minio"}
MINIO_POD_PORT = 9000
KUBERNETES_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
# A stand-in SavedModel: the fetcher and the checks only see bytes and checksums.
SAVED_MODEL = {
    "saved_model.pb": b"\x08\x01graph-bytes",
    "variables/variables.index": b"index",
    "variables/variables.data-00000-of-00001": os.urandom(2048),
}
# Each publish in this module's store takes a fresh version: versions are immutable.
VERSIONS = itertools.count(90)


# (a) What staging renders ------------------------------------------------------------------------


def staging_objects(runs, kind: str) -> list[dict]:
    objects = [r.object for r in runs[STAGING].kubernetes_objects() if r.object["kind"] == kind]
    assert objects, f"staging declares no {kind}"
    return objects


def test_staging_fetcher_gets_the_secret_and_the_private_ca(runs):
    settings = load_stack_settings(ROOT, STAGING)
    assert settings.object_store.endpoint == "https://minio.storage.svc.cluster.local"
    for deployment in staging_objects(runs, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        (fetcher,) = pod["initContainers"]
        assert fetcher["envFrom"] == [{"secretRef": {"name": CREDENTIALS_SECRET}}]
        env = {e["name"]: e["value"] for e in fetcher["env"]}
        assert env["S3_ENDPOINT"] == settings.object_store.endpoint, "in the pod, the in-cluster Service"
        assert env["AWS_CA_BUNDLE"] == CA_PATH
        mounts = {m["name"]: m for m in fetcher["volumeMounts"]}
        assert mounts["store-ca"] == {"name": "store-ca", "mountPath": os.path.dirname(CA_PATH), "readOnly": True}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["store-ca"]["configMap"] == {
            "name": CA_CONFIG_MAP,
            "items": [{"key": CA_KEY, "path": CA_KEY}],
            "defaultMode": 0o444,
        }
        # Only the fetcher talks to the store.
        for server in pod["containers"]:
            assert "store-ca" not in {m["name"] for m in server["volumeMounts"]}
            assert "envFrom" not in server


def test_staging_egress_selects_the_minio_pods_on_their_port_without_ip_blocks(runs):
    for policy in staging_objects(runs, "NetworkPolicy"):
        if "Egress" not in policy["spec"]["policyTypes"] or policy["spec"]["podSelector"] == {}:
            continue  # the namespace's default deny and DNS egress
        assert policy["spec"]["egress"] == [
            {
                "to": [
                    {
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "storage"}},
                        "podSelector": {"matchLabels": MINIO_PODS},
                    }
                ],
                "ports": [{"protocol": "TCP", "port": MINIO_POD_PORT}],
            }
        ]
        assert "ipBlock" not in str(policy)


@pytest.mark.parametrize("stack", [s for s in STACKS if load_stack_settings(ROOT, s).object_store.in_cluster is None])
def test_stores_outside_the_cluster_keep_their_address_blocks(runs, stack):
    store = load_stack_settings(ROOT, stack).object_store
    policies = [r.object for r in runs[stack].kubernetes_objects() if r.object["kind"] == "NetworkPolicy"]
    # The models' policies select one model's pods, a pool's its shard's (Flagger's load tester
    # has its own policy).
    serving = ("model-serving.dev/model", "model-serving.dev/pool")
    model_policies = [p for p in policies if set(serving) & set(p["spec"]["podSelector"].get("matchLabels", {}))]
    assert model_policies
    for policy in model_policies:
        (rule,) = policy["spec"]["egress"]
        assert rule["to"] == [{"ipBlock": {"cidr": c}} for c in store.egress_cidrs]
        assert rule["ports"] == [{"protocol": "TCP", "port": store.port}]


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
def test_staging_deployments_and_policies_pass_the_kubernetes_schema(runs, kubernetes_version):
    for kind in ("Deployment", "NetworkPolicy"):
        for obj in staging_objects(runs, kind):
            kubernetes_validate.validate(obj, kubernetes_version, strict=True)


# (b) TLS with a private CA, end to end ------------------------------------------------------------


@dataclass(frozen=True)
class TlsStore:
    """moto's S3 server over TLS on loopback, its certificate signed by a private CA."""

    endpoint: str
    ca_file: Path
    other_ca_file: Path  # a CA that did not sign the server's certificate


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _certificate(subject: str, key, issuer_name, issuer_key, ca: bool):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def make_pki(directory: Path) -> tuple[Path, Path, Path, Path]:
    """A private CA, a server certificate for localhost/127.0.0.1 it signs, and an unrelated CA."""
    from cryptography.hazmat.primitives import serialization

    ca_key = _key()
    ca = _certificate("model-serving test CA", ca_key, None, None, ca=True)
    server_key = _key()
    server = _certificate("localhost", server_key, ca.subject, ca_key, ca=False)
    other_key = _key()
    other = _certificate("some other CA", other_key, None, None, ca=True)
    paths = [directory / name for name in ("ca.crt", "server.crt", "server.key", "other-ca.crt")]
    paths[0].write_bytes(_pem(ca))
    paths[1].write_bytes(_pem(server))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    paths[3].write_bytes(_pem(other))
    return paths[0], paths[1], paths[2], paths[3]


@pytest.fixture(scope="module")
def tls_store(tmp_path_factory):
    """moto's server with `--ssl-cert/--ssl-key` (moto/server.py hands them to werkzeug's
    run_simple as its ssl_context), standing in for MinIO serving TLS from a private CA."""
    directory = tmp_path_factory.mktemp("pki")
    ca_file, cert_file, key_file, other_ca_file = make_pki(directory)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port), "-c", cert_file, "-k", key_file],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ | TEST_CREDENTIALS,
    )
    endpoint = f"https://localhost:{port}"
    context = ssl.create_default_context(cafile=str(ca_file))
    deadline = time.monotonic() + 30
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"moto server exited with {process.returncode}")
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1, context=context).close()
                break
            except OSError:  # refused, reset, timed out: not up yet
                if time.monotonic() > deadline:
                    pytest.fail(f"no TLS S3 server on {endpoint} within 30 s")
                time.sleep(0.1)
        yield TlsStore(endpoint, ca_file, other_ca_file)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def outside(monkeypatch, tls_store):
    """This process as a CI runner: credentials from the environment, the private CA trusted
    through AWS_CA_BUNDLE (botocore/configprovider.py, `ca_bundle`)."""
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in TEST_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tls_store.ca_file))
    return tls_store


@pytest.fixture
def staging_project(project, outside):
    """A copy of the project whose staging store is reached from outside at the TLS server;
    `endpoint` stays the in-cluster Service, which nothing here can resolve."""
    edit_yaml(
        project / STAGING_FILE,
        lambda d: d["config"][STORE_KEY].update({"externalEndpoint": outside.endpoint, "region": "us-east-1"}),
    )
    store = load_stack_settings(project, STAGING).object_store
    client = s3_client(store)
    if store.bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=store.bucket)
    return project


def publish_fake(root: Path, model: str, version: int, tmp: Path) -> str:
    """Publish SAVED_MODEL as `version` of `model` with the repo's publisher; its digest."""
    source = tmp / f"{model}-{version}"
    for relative, body in SAVED_MODEL.items():
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_bytes(body)
    store = load_stack_settings(root, STAGING).object_store
    manifest = next(m for m in load_manifests(root) if m.name == model)
    return Publisher(store, manifest).publish(source, version, progress=False).digest


def serve_in_staging(root: Path, model: str, version: int, digest: str) -> None:
    def change(document):
        document["versions"][version] = {"digest": digest, "metrics": {"accuracy": 0.99}}
        document["environments"][STAGING]["stable"] = version

    edit_yaml(root / "models" / f"{model}.yaml", change)


def run_fetcher(tls: TlsStore, root: Path, model: str, spec: str, tmp: Path, ca_file: Path | None):
    """The init container's script with the aws CLI, its environment as staging's pod gets it:
    the store's URL (here the TLS server stands in for the MinIO Service), the Secret's keys as
    variables, and AWS_CA_BUNDLE naming the mounted CA."""
    store = load_stack_settings(root, STAGING).object_store
    manifest = next(m for m in load_manifests(root) if m.name == model)
    script = tmp / "fetch-models.sh"
    script.write_text(fetch_script())
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOME": str(tmp),
        "MODEL_SOURCE": store.url(manifest.artifact.path),
        "MODEL_DIR": str(tmp / "models" / model),
        "S3_ENDPOINT": tls.endpoint,
        "AWS_REGION": store.region,
        "AWS_ACCESS_KEY_ID": TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }
    if ca_file is not None:
        env["AWS_CA_BUNDLE"] = str(ca_file)
    if shutil.which("aws", path=env["PATH"]) is None:
        pytest.fail("the aws CLI is not installed (requirements-dev.txt)")
    return subprocess.run(["/bin/sh", str(script), spec], env=env, capture_output=True, text=True, timeout=120)


def test_fetcher_copies_and_verifies_a_version_over_tls_with_the_private_ca(staging_project, tls_store, tmp_path):
    version = next(VERSIONS)
    digest = publish_fake(staging_project, "iris", version, tmp_path)
    result = run_fetcher(tls_store, staging_project, "iris", f"{version}={digest}", tmp_path, tls_store.ca_file)
    assert result.returncode == 0, result.stderr
    assert f"version {version} verified ({digest})" in result.stdout
    fetched = tmp_path / "models" / "iris" / str(version)
    for relative, body in SAVED_MODEL.items():
        assert (fetched / relative).read_bytes() == body


@pytest.mark.parametrize("trust", ["system CAs only", "another CA"])
def test_fetcher_refuses_the_store_without_its_ca(staging_project, tls_store, tmp_path, trust):
    version = next(VERSIONS)
    digest = publish_fake(staging_project, "iris", version, tmp_path)
    ca_file = None if trust == "system CAs only" else tls_store.other_ca_file
    result = run_fetcher(tls_store, staging_project, "iris", f"{version}={digest}", tmp_path, ca_file)
    assert result.returncode != 0
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr, result.stderr
    assert not (tmp_path / "models" / "iris" / str(version)).exists()


# (c) Artifact checks from outside the cluster -------------------------------------------------------


def test_checks_and_the_publisher_use_the_external_endpoint():
    store = load_stack_settings(ROOT, STAGING).object_store
    assert s3_client(store).meta.endpoint_url == store.external_endpoint == "https://minio.staging.example.com"
    prod = load_stack_settings(ROOT, "prod").object_store
    assert prod.external_endpoint is None and prod.outside_endpoint == prod.endpoint


def test_artifact_check_reaches_the_store_at_its_external_endpoint(staging_project, tmp_path, capsys):
    settings = load_stack_settings(staging_project, STAGING)
    assert cluster_internal_host(settings.object_store.endpoint), "the fetcher's endpoint does not resolve here"
    served = served_in(load_manifests(staging_project), STAGING)
    # Nothing published yet: the check got an answer from the store (not a DNS failure).
    problems = verify_served_versions(served, settings.object_store)
    assert problems and all("not committed" in p.message for p in problems), problems
    for model in served:
        version = next(VERSIONS)
        serve_in_staging(
            staging_project, model.name, version, publish_fake(staging_project, model.name, version, tmp_path)
        )
    served = served_in(load_manifests(staging_project), STAGING)
    assert verify_served_versions(served, settings.object_store) == []
    capsys.readouterr()
    assert main(["--root", str(staging_project), "plan", "--stack", STAGING, "--check-artifacts"]) == 0, (
        capsys.readouterr().err
    )


# (d) The rules, each broken once in the staging stack file ------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    change: Callable[[dict], None]  # on the staging objectStore mapping
    field: str  # under config.model-serving:objectStore, empty when the file stays valid
    says: str


def _set(**fields) -> Callable[[dict], None]:
    return lambda store: store.update(fields)


def _drop(*names: str) -> Callable[[dict], None]:
    def change(store):
        for name in names:
            store.pop(name)

    return change


def _in_cluster(**fields) -> Callable[[dict], None]:
    def change(store):
        for name, value in fields.items():
            if value is None:
                store["inCluster"].pop(name)
            else:
                store["inCluster"][name] = value

    return change


CASES = [
    Case("no inCluster for a Service endpoint", _drop("inCluster"), "inCluster", "which egressCidrs cannot match"),
    Case(
        "no inCluster for a .svc endpoint",
        _set(inCluster=None, endpoint="https://minio.storage.svc:443"),
        "inCluster",
        "minio.storage.svc is a Service in the cluster",
    ),
    Case("no externalEndpoint while verifying", _drop("externalEndpoint"), "externalEndpoint", "verifyArtifacts"),
    Case("no caBundle for https", _drop("caBundle"), "caBundle", "private CA"),
    Case(
        "caBundle with plain http",
        _set(endpoint="http://minio.storage.svc.cluster.local:9000"),
        "caBundle",
        "plain http",
    ),
    Case("egressCidrs with inCluster", _set(egressCidrs=["10.0.0.0/8"]), "egressCidrs", "contradicts inCluster"),
    Case("port with inCluster", _set(port=443), "port", "contradicts inCluster"),
    Case("no credentialsSecret", _drop("credentialsSecret"), "credentialsSecret", "IRSA"),
    Case(
        "externalEndpoint inside the cluster",
        _set(externalEndpoint="https://minio.storage.svc.cluster.local"),
        "externalEndpoint",
        "must resolve outside the cluster",
    ),
    Case("inCluster without port", _in_cluster(port=None), "inCluster.port", "required field is missing"),
    Case("inCluster selecting every pod", _in_cluster(podSelector={}), "inCluster.podSelector", "at least 1 item"),
    Case(
        "bad label key",
        _in_cluster(podSelector={"app/name/x": "minio"}),
        "inCluster.podSelector.app/name/x",
        "pattern",
    ),
    Case(
        "caBundle without key", _set(caBundle={"configMap": CA_CONFIG_MAP}), "caBundle.key", "required field is missing"
    ),
    Case("no external check, no externalEndpoint", _set(verifyArtifacts=False, externalEndpoint=None), "", ""),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_broken_in_cluster_store_gives_one_clear_error(project, capsys, case):
    def change(document):
        store = document["config"][STORE_KEY]
        case.change(store)
        for name in [k for k, v in store.items() if v is None]:
            store.pop(name)

    edit_yaml(project / STAGING_FILE, change)
    code = main(["--root", str(project), "validate"])
    err = capsys.readouterr().err
    if not case.field:
        assert code == 0, err
        return
    assert code == 1
    lines = [line for line in err.splitlines() if not line.endswith("error(s)")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{STAGING_FILE}: config.{STORE_KEY}.{case.field}: "), err
    assert case.says in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("endpoint", "internal"),
    [
        ("https://minio.storage.svc.cluster.local", "minio.storage.svc.cluster.local"),
        ("https://minio.storage.svc:9000", "minio.storage.svc"),
        ("http://minio.storage.pod.cluster.local/", "minio.storage.pod.cluster.local"),
        ("https://minio.staging.example.com", None),
        ("http://127.0.0.1:9000", None),
        ("https://svc.example.com", None),
        (None, None),
    ],
)
def test_cluster_internal_hosts(endpoint, internal):
    assert cluster_internal_host(endpoint) == internal
