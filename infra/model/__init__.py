"""The ModelDeployment component and its builders: workload, TF-Serving config, fetcher, Flagger, monitoring."""
