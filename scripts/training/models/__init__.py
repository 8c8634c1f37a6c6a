"""Training entrypoints of the example models (manifests' `training.entrypoint`)."""
