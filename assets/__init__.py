"""Dagster assets and asset checks, grouped by domain."""
