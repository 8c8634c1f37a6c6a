"""The layering of DESIGN.md holds in the code: a module imports only from its own layer or the
layers below it, at module level or inside a function alike.

infra: spec <- platform <- model <- program <- offline; scripts/training (the recipes a model's
manifest names) <- scripts/modelctl (the CLI); the policy pack stands alone (it runs in its own
environment under `pulumi preview`). Nothing in infra or policy imports the tools above them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Lower number: lower layer. A module may import its own layer and any lower one.
LAYERS = {
    "infra.spec": 0,
    "infra.platform": 1,
    "infra.model": 2,
    "infra.program": 3,
    "infra.offline": 4,
    "scripts.training": 5,
    "scripts.modelctl": 6,
}
# Packages a layer never imports, whatever their place.
SEPARATE = {"infra": ("scripts", "policy", "tests"), "policy": ("infra", "scripts", "tests")}


def layer_of(module: str) -> int | None:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, relative ones resolved against `package`
    (default: the file's own)."""
    if package is None:
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = ".".join(parts[: len(parts) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            if node.module is None:  # `from . import x`: x is a module of the package
                found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, module))
    return found


SOURCES = sorted(
    path
    for top in ("infra", "scripts", "policy")
    for path in (ROOT / top).rglob("*.py")
    if "__pycache__" not in path.parts
)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_nothing_from_a_layer_above_its_own(path):
    name = module_name(path)
    own = layer_of(name)
    top = name.split(".")[0]
    wrong = []
    for line, imported in imports(path):
        target = layer_of(imported)
        if own is not None and target is not None and target > own:
            wrong.append(f"{path.relative_to(ROOT)}:{line} imports {imported} (a higher layer)")
        if imported.split(".")[0] in SEPARATE.get(top, ()):
            wrong.append(f"{path.relative_to(ROOT)}:{line} imports {imported} ({top} never imports it)")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_an_upward_import_inside_a_function(tmp_path):
    """The recipes once read a manifest through the CLI's manifest_edit inside a function."""
    module = ROOT / "scripts" / "training" / "recipes.py"
    source = module.read_text() + "\n\ndef _late():\n    from scripts.modelctl import manifest_edit\n"
    copy = tmp_path / "recipes.py"
    copy.write_text(source)
    found = [imported for _, imported in imports(copy, "scripts.training")]
    assert "scripts.modelctl" in found
    assert layer_of("scripts.modelctl.manifest_edit") > layer_of("scripts.training.recipes")
