"""Metadata helpers shared by the asset modules (the Dagster side of ``cqox_platform.markdown``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import dagster as dg

from cqox_platform.markdown import table


def md_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> dg.MetadataValue:
    """A Markdown table for an asset's metadata, cells escaped."""
    return dg.MetadataValue.md(table(header, rows))
