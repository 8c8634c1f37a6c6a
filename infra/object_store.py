"""Layout of model versions in the object store, shared by the publisher and the fetcher."""

from __future__ import annotations

from pathlib import Path

# s3://<bucket>/<prefix>/<artifact.path>/<version>/ holds the SavedModel files plus:
CHECKSUMS_FILE = "CHECKSUMS.sha256"  # `sha256sum` lines of every SavedModel file; its sha256 is the digest
COMMIT_MARKER = "_COMMITTED"  # written last; a version without it does not exist
METADATA_FILES = (CHECKSUMS_FILE, COMMIT_MARKER)


def version_prefix(prefix: str, artifact_path: str, version: int) -> str:
    """Key prefix of one version, with a trailing slash."""
    return f"{prefix.strip('/')}/{artifact_path}/{version}/"


def fetch_script() -> str:
    """The init container's script, with this module's file names filled in."""
    text = (Path(__file__).parent / "fetch_models.sh").read_text(encoding="utf-8")
    return text.replace("@CHECKSUMS_FILE@", CHECKSUMS_FILE).replace("@COMMIT_MARKER@", COMMIT_MARKER)
