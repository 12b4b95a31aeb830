"""Metadata helpers shared by the asset modules: typed tables the Dagster UI sorts, instead of Markdown text.

A column's type is the type of every value in it, checked when the table is built: a size is an ``int`` of bytes
(the unit in the column's name), never "1.2 MiB", so the UI sorts it and a test compares it. ``None`` is an empty
cell in any column.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import dagster as dg

ColumnType = Literal["int", "float", "bool", "string"]
Cell = str | int | float | bool | None


def column(name: str, type: ColumnType = "string", description: str | None = None) -> dg.TableColumn:
    """One typed column; ``name`` is the header the UI shows (with its unit, e.g. ``size (bytes)``)."""
    return dg.TableColumn(name=name, type=type, description=description)


def _cell(col: dg.TableColumn, value: object) -> Cell:
    """``value`` as a cell of ``col``: numbers and booleans must already be of the column's type (a formatted
    number would sort as text); a string column takes the text of anything (dates, enums)."""
    if value is None:
        return None
    if col.type == "string":
        return value if isinstance(value, str) else str(value)
    if col.type == "bool" and isinstance(value, bool):
        return value
    if col.type == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if col.type == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"column {col.name!r} is {col.type}, got {type(value).__name__} {value!r}")


def table(columns: Sequence[dg.TableColumn], rows: Iterable[Sequence[object]]) -> dg.TableMetadataValue:
    """A typed table for an asset's or check's metadata: one record per row, keyed by the columns' names."""
    records = []
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"a row has {len(row)} cells for {len(columns)} columns: {list(row)!r}")
        records.append(dg.TableRecord({c.name: _cell(c, v) for c, v in zip(columns, row, strict=True)}))
    return dg.MetadataValue.table(records=records, schema=dg.TableSchema(columns=list(columns)))


def numeric_history(
    context: dg.AssetExecutionContext, key: dg.AssetKey, names: Sequence[str], limit: int
) -> dict[str, list[float | None]]:
    """Each of ``names`` as the previous ``limit`` materializations of ``key`` recorded it, oldest first (``None``
    where a run did not record a number): one read of the event log for every series of a history chart."""
    records = context.instance.fetch_materializations(key, limit=limit).records
    out: dict[str, list[float | None]] = {name: [] for name in names}
    for record in reversed(records):
        metadata = record.asset_materialization.metadata if record.asset_materialization else {}
        for name in names:
            entry = metadata.get(name)
            value = entry.value if entry is not None else None
            out[name].append(float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None)
    return out
