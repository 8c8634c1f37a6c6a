"""Pulumi entry point; `main: infra/` would break `import infra.x` under runpy."""

from infra.program import main

main()
