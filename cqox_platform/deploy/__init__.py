"""Kubernetes manifests of the platform: rendering, server-side apply and drift (no Dagster import)."""
