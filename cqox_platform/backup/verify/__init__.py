"""Proving backups restore: restore points with row checksums, drills and their plans, and the verdicts and gauges
computed from what was measured."""
