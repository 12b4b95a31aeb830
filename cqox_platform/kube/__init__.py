"""The Kubernetes API client and its errors, without Dagster."""
