"""Asset metadata is native Dagster: typed tables the UI sorts, numbers it plots, no Markdown tables."""

from __future__ import annotations

import re
from pathlib import Path

import dagster as dg
import pytest

from assets.metadata import column, table

ASSETS_DIR = Path(__file__).resolve().parents[3] / "assets"


def test_a_table_is_typed_records_keyed_by_column_name() -> None:
    value = table(
        [column("backup_id"), column("size (bytes)", "int"), column("seconds", "float"), column("ok", "bool")],
        [["b1", 1024, 2, True], ["b2", None, 0.5, False]],
    )
    assert isinstance(value, dg.TableMetadataValue)
    assert [c.type for c in value.schema.columns] == ["string", "int", "float", "bool"]
    assert value.records[0].data == {"backup_id": "b1", "size (bytes)": 1024, "seconds": 2.0, "ok": True}
    assert value.records[1].data["size (bytes)"] is None  # an empty cell in any column
    assert isinstance(value.records[0].data["seconds"], float)


def test_an_empty_table_keeps_its_schema() -> None:
    value = table([column("phase"), column("seconds", "float")], [])
    assert value.records == [] and [c.name for c in value.schema.columns] == ["phase", "seconds"]


@pytest.mark.parametrize(
    ("type_", "cell"),
    [("int", "1.2 MiB"), ("int", 1.5), ("int", True), ("float", "3.1 s"), ("float", False), ("bool", "yes")],
)
def test_a_cell_of_the_wrong_type_is_refused(type_, cell) -> None:
    """A formatted number in a numeric column would sort as text: refused when the table is built."""
    with pytest.raises(TypeError, match="column 'x' is"):
        table([column("x", type_)], [[cell]])


def test_a_string_column_takes_the_text_of_dates_and_numbers() -> None:
    from datetime import date

    value = table([column("day"), column("version")], [[date(2026, 3, 9), 7]])
    assert value.records[0].data == {"day": "2026-03-09", "version": "7"}


def test_a_row_with_the_wrong_number_of_cells_is_refused() -> None:
    with pytest.raises(ValueError, match="2 cells for 3 columns"):
        table([column("a"), column("b"), column("c")], [["x", "y"]])


def test_no_asset_module_builds_a_markdown_table() -> None:
    """The UI sorts and filters a table only when it is a TableMetadataValue; Markdown pipes are text to it."""
    offenders = []
    for path in sorted(ASSETS_DIR.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\|\s*-{3}|md_table|markdown import table|cqox_platform\.markdown", line):
                offenders.append(f"{path.relative_to(ASSETS_DIR.parent)}:{number}: {line.strip()}")
    assert not offenders, "Markdown tables in asset metadata:\n" + "\n".join(offenders)
