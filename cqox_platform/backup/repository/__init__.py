"""Backup repositories the platform verifies besides its own: one engine each, driven by the engine's own tools."""
