"""Uploads are bounded by what they decode to, not only by their size on the wire.

A Parquet file of zeros compresses about a thousand to one: the byte limit on the upload saw a few hundred KiB
while pandas built a frame of gigabytes. The file's metadata (rows, columns, uncompressed size) is read first,
and an upload over a cap is refused before any column is decoded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cqox_platform.datasets.validation import DatasetSchema, read_upload
from cqox_platform.errors import DatasetValidationError

BOMB_ROWS = 30_000_000
COLUMNS = ("treatment", "outcome", "age")


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """30 M rows of zeros in three int64 columns: about 720 MB as a frame, a few hundred KiB on disk."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.parquet"
    chunk = pa.table({c: np.zeros(1_000_000, dtype=np.int64) for c in COLUMNS})
    with pq.ParquetWriter(path, chunk.schema, compression="zstd") as writer:
        for _ in range(BOMB_ROWS // 1_000_000):
            writer.write_table(chunk)
    return path


def _read_in_a_fresh_interpreter(path: Path) -> tuple[str, int]:
    """``read_upload`` with the default limits in a new process: (what it said, its peak RSS in MiB)."""
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from cqox_platform.datasets.validation import read_upload
        from cqox_platform.errors import DatasetValidationError
        try:
            print("read", len(read_upload(Path(sys.argv[1]), ".parquet")), "rows")
        except DatasetValidationError as exc:
            print("refused:", exc)
        # VmHWM is this process's own peak: ru_maxrss would also count the parent's RSS (Linux keeps it across the
        # fork and exec), so a large pytest worker made the child look large.
        hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
        print(int(hwm.split()[1]) // 1024)
        """
    )
    # The default limits: no CQOX_* setting of the test process (a stack's environment, a test's leftovers) applies.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CQOX_", "DAGSTER_"))}
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    said, peak = proc.stdout.strip().rsplit("\n", 1)
    return said, int(peak)


def test_a_parquet_bomb_is_refused_from_its_metadata_without_decoding_it(bomb):
    """Failed before: 30 M rows were decoded (peak RSS over 1 GiB) and the upload was accepted."""
    assert bomb.stat().st_size < 2 * 1024 * 1024
    said, peak_mib = _read_in_a_fresh_interpreter(bomb)
    assert said.startswith("refused:") and "30000000 rows, over the limit of 10000000" in said, said
    assert "CQOX_DATASET_MAX_ROWS" in said
    # The interpreter with pandas and pyarrow loaded, and the file's footer: far below the 720 MB of the frame.
    assert peak_mib < 400, f"peak RSS {peak_mib} MiB while refusing"


def _parquet(tmp_path: Path, columns: int, rows: int = 10) -> Path:
    path = tmp_path / "upload.parquet"
    pq.write_table(pa.table({f"c{i}": np.zeros(rows, dtype=np.int64) for i in range(columns)}), path)
    return path


def test_too_many_columns_are_refused(tmp_path):
    with pytest.raises(DatasetValidationError, match="1001 columns, over the limit of 1000") as caught:
        read_upload(_parquet(tmp_path, 1001), ".parquet", DatasetSchema())
    assert "CQOX_DATASET_MAX_COLUMNS" in caught.value.problems[0]


def test_the_decoded_size_is_capped(tmp_path):
    """Rows x columns x 8 bytes (or Parquet's uncompressed size, if larger) is what pandas will hold."""
    schema = DatasetSchema(max_decoded_bytes=10 * 3 * 8 - 1)
    with pytest.raises(DatasetValidationError, match=r"decodes to about \d+ bytes, over the limit of 239"):
        read_upload(_parquet(tmp_path, 3), ".parquet", schema)


def test_the_limits_come_from_the_settings(monkeypatch, tmp_path):
    monkeypatch.setenv("CQOX_DATASET_MAX_ROWS", "9")
    with pytest.raises(DatasetValidationError, match="10 rows, over the limit of 9"):
        read_upload(_parquet(tmp_path, 3), ".parquet", DatasetSchema())


def test_a_csv_over_the_row_or_column_cap_is_refused_without_reading_it_all(tmp_path):
    path = tmp_path / "upload.csv"
    path.write_text("treatment,outcome,age\n" + "1,2.0,30\n" * 50)
    with pytest.raises(DatasetValidationError, match="more than 20 rows"):
        read_upload(path, ".csv", DatasetSchema(max_rows=20))
    with pytest.raises(DatasetValidationError, match="3 columns, over the limit of 2"):
        read_upload(path, ".csv", DatasetSchema(max_columns=2))


def test_an_upload_within_the_limits_reads_as_before(tmp_path):
    frame = read_upload(_parquet(tmp_path, 3, rows=1000), ".parquet", DatasetSchema())
    assert frame.shape == (1000, 3)
