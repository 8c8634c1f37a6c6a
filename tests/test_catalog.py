"""`modelctl catalog` without a browser: untrusted manifest text is escaped, --out is handled with
care, the links and the contract files are what the pages say."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from scripts.modelctl.catalog import GITHUB_REMOTE, MARKER, example_curl
from scripts.modelctl.cli import main
from tests.conftest import MANIFESTS, edit_yaml

HOSTILE = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def catalog(project: Path, out: Path, *extra: str) -> int:
    return main(["--root", str(project), "catalog", "--out", str(out), *extra])


def test_manifest_text_is_escaped_everywhere(project, tmp_path):
    def hostile(document):
        document["description"] = HOSTILE
        document["card"]["limitations"] = HOSTILE
        document["serving"]["example_request"]["instances"][0]["sepal_length"] = 5.1

    edit_yaml(project / "models" / "iris.yaml", hostile)
    out = tmp_path / "site"
    assert catalog(project, out) == 0
    for page in (out / "index.html", out / "models" / "iris.html"):
        text = page.read_text()
        assert "<script>alert" not in text and "<img src=x" not in text, page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&gt;&lt;img" in text
        # Only the site's own script, and the policy forbids any other.
        assert re.findall(r"<script[^>]*>", text) in ([], ['<script src="assets/filter.js" defer>'])
        assert "default-src &#x27;none&#x27;" in text


def test_the_example_curl_quotes_the_manifest_request_for_the_shell():
    command = example_curl("https://models.example.com", "iris", {"instances": [{"text": "it's $(rm -rf /)"}]})
    assert '-d \'{"instances":[{"text":"it\'"\'"\'s $(rm -rf /)"}]}\'' in command
    assert command.startswith("curl -sS -X POST https://models.example.com/v1/models/iris:predict")


def test_every_version_with_a_contract_gets_its_openapi_document(project, tmp_path):
    out = tmp_path / "site"
    assert catalog(project, out) == 0
    for manifest in MANIFESTS:
        for version, published in manifest.versions.items():
            path = out / "contracts" / f"{manifest.name}-{version}.openapi.json"
            assert path.is_file() == (published.contract is not None)
            if path.is_file():
                document = json.loads(path.read_text())
                assert document["x-tf-serving"] == {
                    "model": manifest.name,
                    "version": version,
                    "signature": manifest.serving.signature,
                }


def test_a_rerun_replaces_the_catalog_as_a_whole(project, tmp_path):
    out = tmp_path / "site"
    assert catalog(project, out) == 0
    (project / "models" / "taxi-fare.yaml").unlink()
    assert catalog(project, out) == 0
    assert not (out / "models" / "taxi-fare.html").exists(), "a removed model's page must go"
    assert (out / MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project", "site"], "no temporary directory is left behind"


def test_out_must_be_a_new_empty_or_catalog_directory(project, tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    assert catalog(project, a_file) == 1
    assert "is a file" in capsys.readouterr().err and a_file.read_text() == "keep me"
    other = tmp_path / "src"
    other.mkdir()
    (other / "main.py").write_text("keep me")
    assert catalog(project, other) == 1
    assert "not a catalog" in capsys.readouterr().err and (other / "main.py").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert catalog(project, empty) == 0


@pytest.mark.parametrize(
    "option, value",
    [
        ("--grafana-url", "javascript:alert(1)"),
        ("--grafana-url", 'https://grafana.example.com/"><script>'),
        ("--repo-url", "ftp://example.com/repo"),
        ("--stack", "nope"),
        ("--branch", "../../etc"),
    ],
)
def test_bad_options_give_one_error(project, tmp_path, option, value, capsys):
    assert catalog(project, tmp_path / "site", option, value) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and option in err[0], err
    assert not (tmp_path / "site").exists()


def test_links_without_urls_name_the_dashboard_and_say_why_history_is_missing(project, tmp_path, capsys):
    assert catalog(project, tmp_path / "site") == 0
    text = (tmp_path / "site" / "models" / "iris.html").read_text()
    assert "uid <code>model-serving-iris</code>" in text
    assert "no repository URL was given" in text
    assert "note: no --grafana-url" in capsys.readouterr().err


@pytest.mark.parametrize(
    "remote, web",
    [
        ("https://github.com/acme/model-serving.git", "acme/model-serving"),
        ("git@github.com:acme/model-serving.git", "acme/model-serving"),
        ("https://github.com/acme/model-serving", "acme/model-serving"),
        ("https://gitlab.com/acme/model-serving.git", None),
        ("/srv/git/model-serving", None),
    ],
)
def test_the_default_repository_url_comes_from_a_github_origin(remote, web):
    match = GITHUB_REMOTE.match(remote)
    assert (f"{match[1]}/{match[2]}" if match else None) == web
