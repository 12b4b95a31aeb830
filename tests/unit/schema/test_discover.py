"""Which file of sql/ applies to which dialect, and which names are refused."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cqox_platform.errors import MigrationError
from cqox_platform.schema import Dialect
from cqox_platform.schema.migrations import SQL_DIR, discover


def _write(directory: Path, names: list[str]) -> None:
    for name in names:
        (directory / name).write_text(f"-- {name}\n")


def test_repository_migrations_cover_both_dialects():
    for dialect in Dialect:
        migrations = discover(SQL_DIR, dialect)
        assert [m.version for m in migrations] == list(range(1, len(migrations) + 1)) and len(migrations) >= 7
        for m in migrations:
            assert m.path.name.endswith(f".{dialect.value}.sql") or m.path.name.count(".") == 1


def test_dialect_file_wins_over_common_file(tmp_path):
    _write(tmp_path, ["0001_a.sql", "0002_b.sql", "0002_b.timescaledb.sql"])
    assert [m.filename for m in discover(tmp_path, Dialect.TIMESCALEDB)] == ["0001_a.sql", "0002_b.timescaledb.sql"]
    assert [m.filename for m in discover(tmp_path, Dialect.PLAIN)] == ["0001_a.sql", "0002_b.sql"]


def test_version_without_a_file_for_the_dialect_is_refused(tmp_path):
    _write(tmp_path, ["0001_a.timescaledb.sql"])
    with pytest.raises(MigrationError, match=r"0001 has no file for the plain dialect.*0001_a\.plain\.sql"):
        discover(tmp_path, Dialect.PLAIN)


@pytest.mark.parametrize("name", ["1_short.sql", "0001-dash.sql", "0001_Upper.sql", "0001_a.mysql.sql"])
def test_bad_names_are_refused_naming_the_file(tmp_path, name):
    _write(tmp_path, [name])
    with pytest.raises(MigrationError, match=name.replace(".", r"\.")):
        discover(tmp_path, Dialect.PLAIN)


def test_one_version_two_names_is_refused(tmp_path):
    _write(tmp_path, ["0001_a.sql", "0001_b.plain.sql"])
    with pytest.raises(MigrationError, match="version 1 is already used"):
        discover(tmp_path, Dialect.PLAIN)


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(MigrationError, match="does not exist"):
        discover(tmp_path / "nope", Dialect.PLAIN)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.integers(1, 40), st.sets(st.sampled_from([None, "plain", "timescaledb"]), min_size=1)))
def test_discovery_is_ordered_and_picks_the_most_specific_file(layout):
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for version, variants in layout.items():
            for variant in variants:
                suffix = f".{variant}.sql" if variant else ".sql"
                (directory / f"{version:04d}_m{version}{suffix}").write_text(f"-- {version} {variant}\n")
        for dialect in Dialect:
            complete = all(dialect.value in v or None in v for v in layout.values())
            if not complete:
                with pytest.raises(MigrationError):
                    discover(directory, dialect)
                continue
            migrations = discover(directory, dialect)
            assert [m.version for m in migrations] == sorted(layout)
            for m in migrations:
                expected = dialect.value if dialect.value in layout[m.version] else None
                assert m.read() == f"-- {m.version} {expected}\n"
                assert len(m.checksum) == 64
