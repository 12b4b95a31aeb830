"""The CQOx database schema: migrations, dialects, metrics ingest, rollups, partitions and retention."""

from cqox_platform.schema.dialect import Dialect, detect_dialect
from cqox_platform.schema.migrations import MigrationReport, MigrationRunner

__all__ = ["Dialect", "MigrationReport", "MigrationRunner", "detect_dialect"]
