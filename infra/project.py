"""Whole-project checks: every stack file and every manifest, all problems reported at once."""

from __future__ import annotations

from pathlib import Path

from infra.errors import ConfigError, ErrorItem
from infra.manifest import load_manifests
from infra.settings import STACKS_DIR, StackSettings, load_stack_settings, stack_names


def validate_project(root: Path) -> tuple[dict[str, StackSettings], list[ErrorItem]]:
    """Validate all stacks and manifests under `root`; return the valid stacks and every error."""
    errors: list[ErrorItem] = []
    stacks = stack_names(root)
    if not stacks:
        errors.append(ErrorItem(f"{STACKS_DIR}/", "", "no stack files (Pulumi.<stack>.yaml) found"))
    settings: dict[str, StackSettings] = {}
    environments: set[str] = set()
    for stack in stacks:
        try:
            settings[stack] = load_stack_settings(root, stack)
            environments.add(settings[stack].environment)
        except ConfigError as exc:
            errors.extend(exc.errors)
            # Assume the default so one broken stack file does not also fail every manifest.
            environments.add(stack)
    try:
        load_manifests(root, environments=environments or None)
    except ConfigError as exc:
        errors.extend(exc.errors)
    return settings, sorted(set(errors), key=lambda e: (e.file, e.field, e.message))
