"""Clients of the metrics systems (Prometheus), without Dagster."""
