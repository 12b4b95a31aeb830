"""The CQOx dataset schema and its validation with pandas.

A causal-inference dataset has one binary treatment column, one numeric outcome and covariates. Validation
collects every problem at once (a user fixing an upload wants the whole list), then either returns the
profile of a clean frame or raises ``DatasetValidationError``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cqox_platform.errors import DatasetValidationError, InvalidDatasetNameError
from cqox_platform.settings import get_settings

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SUPPORTED_SUFFIXES = (".csv", ".parquet")


def validate_name(name: str) -> str:
    """Dataset names become S3 prefixes and partition keys: letters, digits, ``_ . -``; no ``..``; <= 128."""
    if not _NAME.match(name) or ".." in name:
        raise InvalidDatasetNameError(
            f"invalid dataset name {name[:80]!r}: use 1-128 letters, digits, '_', '.', '-', starting with a "
            f"letter or digit, and no '..'."
        )
    return name


def _setting(name: str) -> Callable[[], int]:
    return lambda: getattr(get_settings(), name)


@dataclass(frozen=True)
class DatasetSchema:
    """What a CQOx upload must look like. Configurable per deployment through the asset's config; the caps on
    what an upload decodes to (rows, columns, bytes) through the settings (``CQOX_DATASET_MAX_*``)."""

    treatment: str = "treatment"
    outcome: str = "outcome"
    covariates: tuple[str, ...] = ()  # empty: every other column is a covariate
    min_covariates: int = 1
    max_bytes: int = 256 * 1024 * 1024
    max_null_fraction: float = 0.2  # per covariate
    max_rows: int = field(default_factory=_setting("dataset_max_rows"))
    max_columns: int = field(default_factory=_setting("dataset_max_columns"))
    max_decoded_bytes: int = field(default_factory=_setting("dataset_max_decoded_bytes"))


@dataclass(frozen=True)
class DatasetProfile:
    rows: int
    columns: int
    dtypes: dict[str, str]
    null_counts: dict[str, int]
    treated: int
    control: int
    covariates: list[str] = field(default_factory=list)

    def as_metadata(self) -> dict:
        return {
            "rows": self.rows,
            "columns": self.columns,
            "dtypes": self.dtypes,
            "null_counts": self.null_counts,
            "treated": self.treated,
            "control": self.control,
            "covariates": self.covariates,
        }


#: Bytes a decoded cell takes at least (int64, float64, a pointer to an object): the floor of a frame's size.
_CELL_BYTES = 8


def read_upload(path: Path, suffix: str, schema: DatasetSchema | None = None) -> pd.DataFrame:
    """Parse a CSV or Parquet upload within ``schema``'s caps; a malformed or oversized file is a validation
    problem, not a crash.

    The caps are checked before the data is decoded: a Parquet file's footer gives its rows, columns and
    uncompressed size; a CSV's header its columns, and it is read one row past the row cap at most.
    """
    schema = schema or DatasetSchema()
    kind = suffix[1:]
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path).metadata
            uncompressed = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
            _check_caps(
                schema,
                meta.num_rows,
                meta.num_columns,
                max(uncompressed, meta.num_rows * meta.num_columns * _CELL_BYTES),
            )
            return pd.read_parquet(path)
        _check_caps(schema, 0, len(pd.read_csv(path, nrows=0).columns), 0)
        frame = pd.read_csv(path, nrows=schema.max_rows + 1)
        if len(frame) > schema.max_rows:
            _refuse(f"more than {schema.max_rows} rows, over the limit of {schema.max_rows} (CQOX_DATASET_MAX_ROWS)")
        return frame
    except DatasetValidationError:
        raise
    except Exception as exc:  # pandas and pyarrow raise many parser types; all mean "not a readable table"
        raise DatasetValidationError(
            f"the upload is not a readable {kind.upper()} file: {type(exc).__name__}: {str(exc)[:300]}",
            [f"unreadable {kind}: {str(exc)[:300]}"],
        ) from None


def _check_caps(schema: DatasetSchema, rows: int, columns: int, decoded_bytes: int) -> None:
    """Refuse an upload whose shape is over a cap, naming the cap and the setting that raises it."""
    if rows > schema.max_rows:
        _refuse(f"{rows} rows, over the limit of {schema.max_rows} (CQOX_DATASET_MAX_ROWS)")
    if columns > schema.max_columns:
        _refuse(f"{columns} columns, over the limit of {schema.max_columns} (CQOX_DATASET_MAX_COLUMNS)")
    if decoded_bytes > schema.max_decoded_bytes:
        _refuse(
            f"decodes to about {decoded_bytes} bytes, over the limit of {schema.max_decoded_bytes} "
            "(CQOX_DATASET_MAX_DECODED_BYTES)"
        )


def _refuse(problem: str) -> None:
    raise DatasetValidationError(
        f"the upload is too large once decoded: {problem}; split the dataset, or raise the limit for this "
        "installation if it is meant to be this large.",
        [problem],
    )


def validate_frame(df: pd.DataFrame, schema: DatasetSchema) -> DatasetProfile:
    problems: list[str] = []
    for column in (schema.treatment, schema.outcome):
        if column not in df.columns:
            problems.append(f"missing column {column!r}")
    covariates = list(schema.covariates) or [c for c in df.columns if c not in (schema.treatment, schema.outcome)]
    missing_cov = [c for c in covariates if c not in df.columns]
    problems += [f"missing covariate {c!r}" for c in missing_cov]
    if len(covariates) - len(missing_cov) < schema.min_covariates:
        problems.append(f"at least {schema.min_covariates} covariate column(s) required")
    if len(df) == 0:
        problems.append("no rows")
    if schema.treatment in df.columns:
        t = df[schema.treatment]
        if t.isna().any():
            problems.append(f"treatment {schema.treatment!r} has {int(t.isna().sum())} null value(s)")
        values = set(pd.unique(t.dropna()))
        if not values <= {0, 1}:
            shown = sorted(map(str, values))[:5]
            problems.append(f"treatment {schema.treatment!r} must be binary 0/1, found values {shown}")
    if schema.outcome in df.columns:
        o = df[schema.outcome]
        if not pd.api.types.is_numeric_dtype(o) or pd.api.types.is_bool_dtype(o):
            problems.append(f"outcome {schema.outcome!r} must be numeric, found {o.dtype}")
        elif o.isna().any():
            problems.append(f"outcome {schema.outcome!r} has {int(o.isna().sum())} null value(s)")
    for c in covariates:
        if c in df.columns and len(df) and df[c].isna().mean() > schema.max_null_fraction:
            problems.append(f"covariate {c!r} is {df[c].isna().mean():.0%} null (limit {schema.max_null_fraction:.0%})")
    if problems:
        raise DatasetValidationError(
            "the upload does not match the CQOx dataset schema: " + "; ".join(problems), problems
        )
    treated = int((df[schema.treatment].astype(int) == 1).sum())
    return DatasetProfile(
        rows=len(df),
        columns=len(df.columns),
        dtypes={c: str(t) for c, t in df.dtypes.items()},
        null_counts={c: int(n) for c, n in df.isna().sum().items()},
        treated=treated,
        control=len(df) - treated,
        covariates=covariates,
    )
