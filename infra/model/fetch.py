"""The init container's fetch script, with the object store's file names filled in."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from infra.model.tfserving import FETCH_SCRIPT
from infra.platform.object_store import CHECKSUMS_FILE, CLAIM_FILE, COMMIT_MARKER


@cache
def fetch_script() -> str:
    """The init container's script, with this module's file names filled in (read once: every
    workload of a stack embeds it)."""
    text = (Path(__file__).parent / "fetch_models.sh").read_text(encoding="utf-8")
    for placeholder, name in (
        ("@CHECKSUMS_FILE@", CHECKSUMS_FILE),
        ("@COMMIT_MARKER@", COMMIT_MARKER),
        ("@CLAIM_FILE@", CLAIM_FILE),
    ):
        text = text.replace(placeholder, name)
    return text


@cache
def fetch_pool_script() -> str:
    """A serving pool's init container script: `fetch_script()` once per line of its list."""
    text = (Path(__file__).parent / "fetch_pool.sh").read_text(encoding="utf-8")
    return text.replace("@FETCH_SCRIPT@", FETCH_SCRIPT)
