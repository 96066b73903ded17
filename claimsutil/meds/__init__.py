"""MEDS datasets: the only place that knows the on-disk format, and the one way every stage reads it.

A MEDS root holds `data/**/*.parquet` (events), `metadata/dataset.json`, `metadata/codes.parquet` and
`metadata/subject_splits.parquet`. Stages read it through `Events`:

    events = Events("data/meds", end=params.data.end_date)   # the data window is decided once, by one rule
    for path in events.paths:
        lf = events.scan(path)           # subject_id, time, code, numeric_value, text_value, suspected
        periods = coverage_periods(lf, events.window.end)
    events.dropped                       # {"after_death": n, "after_data_end": n}: what the view left out

The view `Events.scan` never feeds a model or a label with an event the study does not believe:

- **after death**: an event dated after the day of the subject's first `MEDS_DEATH` (a `COVERAGE/END` on the
  day after it is the end of coverage, not an event) is dropped and counted;
- **past the end of the data**: an event at or after `window.end` (a `COVERAGE/END` exactly at it closes
  coverage at the cut-off) is dropped and counted.

The end of the data (`data_window`) is `data.end` from params.yaml when set; otherwise the first day of the
month after the earliest month by which all but `tail_share` (0.1%) of the records have happened (every timed
record but MEDS_BIRTH; a COVERAGE/END counts in the month of the last covered day).
One subject's record in 2200 cannot move it (a handful of records is far less than 0.1%), and months of real
data never fall in the tail (a month of a ten-year database holds about 0.8% of its events).

Coverage (`coverage_periods`): a subject's COVERAGE/START opens a period and the next COVERAGE/END closes it;
a START still open at the end of the data (the subject is enrolled at the cut-off) is closed at `window.end`;
a second START before any END closes the open period there; an END without an open period is ignored (the
validator warns about it). Subjects without any coverage event are taken as covered from their first
clinical event to the day after their last. Every stage uses this one rule.

Code families (`code_family`): the part before the first "/", case-insensitive: ICD10, ICD10CM, ICD9,
ICD9CM -> diagnosis; YJ, ATC, RXNORM, NDC -> drug; anything else -> other.

Validation, repair and import live in `claimsutil.meds.validate` and `claimsutil.meds.clean`; the command
line (`python -m claimsutil.meds validate|clean DIR`) in `claimsutil.meds.__main__`.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

# The layout and codes the `meds` package defines (meds.data_subdirectory, meds.code_metadata_filepath, ...;
# a test keeps them equal). Written out here because importing `meds` costs seconds (its JSON-schema
# dependencies build parsers at import), paid by every notebook kernel and worker process otherwise; the
# package itself is imported where its schemas are used.
DATA_DIR = "data"
CODES_FILE = "metadata/codes.parquet"
SPLITS_FILE = "metadata/subject_splits.parquet"
DATASET_FILE = "metadata/dataset.json"
SHARD_SUFFIX = ".parquet"

BIRTH_CODE = "MEDS_BIRTH"
DEATH_CODE = "MEDS_DEATH"
SPLIT_NAMES = ("train", "tuning", "held_out")  # meds.train_split, meds.tuning_split, meds.held_out_split
# Conventions of this project's claims datasets (a user's MEDS data need not follow them).
CERTAINTY_COLUMN = "diagnosis_certainty"  # code modifier: "suspected" on 疑い病名, null (or "confirmed") otherwise
SUSPECTED = "suspected"
CONFIRMED = "confirmed"
CERTAINTY_VALUES = (SUSPECTED, CONFIRMED)  # the values the certainty column may hold besides null
COVERAGE_START = "COVERAGE/START"  # first day of a coverage (insurance enrolment) period
COVERAGE_END = "COVERAGE/END"  # day after the last covered day; text_value gives the reason
HOSPITAL_PREFIX = "HOSPITAL/"
SEX_CODES = {"GENDER/F": "F", "GENDER/M": "M"}
# Records that are bookkeeping, not clinical events: never tokens, never receipts, never outcomes.
BOOKKEEPING_CODES = (BIRTH_CODE, DEATH_CODE, COVERAGE_START, COVERAGE_END)

FAMILY_BY_PREFIX = {
    "ICD10": "diagnosis",
    "ICD10CM": "diagnosis",
    "ICD9": "diagnosis",
    "ICD9CM": "diagnosis",
    "YJ": "drug",  # Japanese drug price list codes (YJ コード)
    "ATC": "drug",
    "RXNORM": "drug",
    "NDC": "drug",
}
DROP_REASONS = ("after_death", "after_data_end")
DEFAULT_TAIL_SHARE = 0.001
ONE_DAY = dt.timedelta(days=1)
MIN_TIME = dt.datetime(1900, 1, 1)  # earlier timestamps are implausible in claims


class MEDSFormatError(ValueError):
    """A shard cannot be read as the study reads MEDS (the message names the file and column)."""


# ------------------------------------------------------------------------------------------- files


def shard_paths(root: str | Path) -> list[Path]:
    """Every data shard under ROOT/data (nested folders allowed, as MEDS permits), in a stable order."""
    data_dir = Path(root) / DATA_DIR
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no MEDS data folder (expected {DATA_DIR}/*.parquet)")
    return sorted(p for p in data_dir.rglob(f"*{SHARD_SUFFIX}") if p.is_file())


def other_files(root: str | Path) -> list[Path]:
    """Files under ROOT/data that are not shards (MEDS reads only *.parquet): each is skipped by every reader."""
    data_dir = Path(root) / DATA_DIR
    if not data_dir.is_dir():
        return []
    return sorted(p for p in data_dir.rglob("*") if p.is_file() and not p.name.endswith(SHARD_SUFFIX))


def is_parquet_file(path: Path) -> bool:
    """Whether PATH starts with parquet's magic bytes (a shard under another name, e.g. *.pq)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PAR1"
    except OSError:
        return False


def read_dataset_metadata(root: str | Path) -> dict:
    path = Path(root) / DATASET_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_code_metadata(root: str | Path) -> pa.Table:
    return pq.read_table(Path(root) / CODES_FILE)


def read_subject_splits(root: str | Path) -> pa.Table:
    return pq.read_table(Path(root) / SPLITS_FILE)


# ------------------------------------------------------------------------------------------- codes


def code_family(code: str) -> str:
    """'diagnosis', 'drug' or 'other' by the code's vocabulary (the part before the first "/")."""
    prefix, slash, _ = code.partition("/")
    return FAMILY_BY_PREFIX.get(prefix.upper(), "other") if slash else "other"


def family_expr(column: str = "code") -> pl.Expr:
    """`code_family` as a polars expression."""
    prefix = pl.col(column).str.split("/").list.first().str.to_uppercase()
    has_slash = pl.col(column).str.contains("/", literal=True)
    return pl.when(has_slash).then(prefix.replace_strict(FAMILY_BY_PREFIX, default="other")).otherwise(pl.lit("other"))


def starts_with_any(prefixes, column: str = "code") -> pl.Expr:
    """Whether the code starts with one of PREFIXES."""
    return pl.any_horizontal([pl.col(column).str.starts_with(p) for p in prefixes])


def clinical() -> pl.Expr:
    """A timed record that is a clinical event (not bookkeeping: birth, death, coverage)."""
    return pl.col("time").is_not_null() & ~pl.col("code").is_in(BOOKKEEPING_CODES)


# ------------------------------------------------------------------------------------------- one shard


def scan_shard(path: str | Path) -> pl.LazyFrame:
    """One shard as the study reads it: subject_id (Int64), time (Datetime us), code, numeric_value,
    text_value (nulls where absent) and a non-null boolean `suspected` (from `diagnosis_certainty`)."""
    path = Path(path)
    lf = pl.scan_parquet(path, hive_partitioning=False)
    try:
        schema = lf.collect_schema()
    except Exception as e:  # noqa: BLE001 - any reader failure is reported with the file
        raise MEDSFormatError(f"{path}: cannot read the parquet schema ({e}); run `python -m claimsutil.meds "
                              "validate` on the dataset") from None  # fmt: skip
    missing = [c for c in ("subject_id", "time", "code") if c not in schema]
    if missing:
        raise MEDSFormatError(f"{path}: MEDS column(s) {missing} missing (found {list(schema)})")
    if CERTAINTY_COLUMN in schema:
        if schema[CERTAINTY_COLUMN] not in (pl.String, pl.Categorical, pl.Null):
            raise MEDSFormatError(
                f"{path}: column {CERTAINTY_COLUMN} has type {schema[CERTAINTY_COLUMN]}; it must be a string "
                f'("{SUSPECTED}", "{CONFIRMED}" or null), so that suspected diagnoses are not read as confirmed'
            )
        suspected = (pl.col(CERTAINTY_COLUMN).cast(pl.String) == SUSPECTED).fill_null(False)
    else:
        suspected = pl.lit(False)
    optional = {
        name: pl.col(name).cast(dtype) if name in schema else pl.lit(None, dtype)
        for name, dtype in (("numeric_value", pl.Float64), ("text_value", pl.String))
    }
    return lf.select(
        pl.col("subject_id").cast(pl.Int64),
        pl.col("time").cast(pl.Datetime("us")),
        pl.col("code").cast(pl.String),
        *(expr.alias(name) for name, expr in optional.items()),
        suspected.alias("suspected"),
    )


def subject_ranges(path: str | Path, size: int) -> list[tuple[int, int]]:
    """The subject ids of shard PATH in ranges (lo, hi) of at most SIZE subjects each, in order, for
    `Events.scan(path, subjects=...)`. Raises MEDSFormatError, naming the file and the first row, when a
    subject_id is null (such a record belongs to no range)."""
    if size < 1:
        raise ValueError(f"subject_ranges: size must be >= 1 (got {size})")
    ids = scan_shard(path).select(pl.col("subject_id").unique()).collect(engine="streaming")["subject_id"]
    if ids.null_count():
        rows = scan_shard(path).select(pl.col("subject_id").is_null()).with_row_index("row")
        nulls = rows.filter(pl.col("subject_id")).select(n=pl.len(), first=pl.col("row").min()).collect()
        raise MEDSFormatError(f"{path}: {nulls['n'][0]} null value(s) in column subject_id (first at row "
                              f"{nulls['first'][0]})")  # fmt: skip
    ids = np.sort(ids.to_numpy())
    return [(int(ids[i]), int(ids[min(i + size, ids.size) - 1])) for i in range(0, ids.size, size)]


def drop_reason(end: dt.datetime) -> pl.Expr:
    """Why the study leaves a record out: "after_death", "after_data_end", or null (kept). Needs the columns
    of `scan_shard`; see the module docstring for the rules."""
    time, code = pl.col("time"), pl.col("code")
    death = time.filter(code == DEATH_CODE).min().over("subject_id")
    death_day_end = death.dt.truncate("1d") + ONE_DAY
    ends_coverage = code == COVERAGE_END
    after_death = death.is_not_null() & (
        (~ends_coverage & (time >= death_day_end)) | (ends_coverage & (time > death_day_end))
    )
    after_end = (code != BIRTH_CODE) & ((~ends_coverage & (time >= end)) | (ends_coverage & (time > end)))
    return (
        pl.when(time.is_null())
        .then(pl.lit(None, pl.String))
        .when(after_death)
        .then(pl.lit("after_death"))
        .when(after_end)
        .then(pl.lit("after_data_end"))
        .otherwise(pl.lit(None, pl.String))
    )


# ------------------------------------------------------------------------------------------- the window


@dataclass(frozen=True)
class DataWindow:
    """Where the data ends (exclusive), and how that was decided."""

    end: dt.datetime  # events at or after it are past the end of the data
    rule: str  # "params" (data.end) or "inferred"
    last_month_events: int = 0  # records in the last month before the end (`shard_months`)
    median_month_events: int = 0  # records in the median month (with any)
    events_after: int = 0  # records at or after the end (outliers)
    months_after: int = 0  # months with records at or after the end

    def describe(self) -> str:
        if self.rule == "params":
            return f"the data end on {self.end.date()} (data.end in params.yaml)"
        text = (
            f"the data end on {self.end.date()} (inferred: the month before holds {self.last_month_events:,} "
            f"records, the median month {self.median_month_events:,})"
        )
        if self.months_after:
            text += f"; {self.events_after:,} records in {self.months_after} later month(s) are past the end"
        return text


def shard_months(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Records of observed time per calendar month of one shard (columns time and code): month, events.

    Every timed record but MEDS_BIRTH counts, a COVERAGE/END in the month of the last covered day (the day
    before it): a patient covered to the cut-off is observed to the end, even without a visit there."""
    observed = pl.col("time").is_not_null() & (pl.col("code") != BIRTH_CODE)
    day = pl.when(pl.col("code") == COVERAGE_END).then(pl.col("time") - ONE_DAY).otherwise(pl.col("time"))
    return lf.filter(observed).group_by(month=day.dt.truncate("1mo").dt.date()).agg(events=pl.len().cast(pl.Int64))


def monthly_counts(paths: list[Path]) -> pl.DataFrame:
    """Records of observed time per calendar month over PATHS (`shard_months`): month (first day), events."""
    parts = [shard_months(scan_shard(path).select("time", "code")).collect() for path in paths]
    if not parts:
        return pl.DataFrame(schema={"month": pl.Date, "events": pl.Int64})
    return pl.concat(parts).group_by("month").agg(pl.col("events").sum()).sort("month")


def infer_window(months: pl.DataFrame, end: dt.datetime | None, tail_share: float, where: str) -> DataWindow:
    """The window for monthly clinical-event counts MONTHS (`monthly_counts`): END when given, else the rule of
    the module docstring. WHERE names the dataset in the error raised when there is nothing to infer from."""
    if end is not None:
        after = months.filter(pl.col("month") >= end.date().replace(day=1))
        return DataWindow(end, "params", events_after=int(after["events"].sum()), months_after=after.height)
    if months.is_empty():
        raise MEDSFormatError(f"{where}: no time-stamped record; the end of the data cannot be inferred "
                              "(set data.end in params.yaml)")  # fmt: skip
    months = months.sort("month")
    after = months["events"].sum() - months["events"].cum_sum()  # events after each month
    last_index = int((after > tail_share * int(months["events"].sum())).sum())  # the earliest month with a small tail
    last = months["month"][last_index]
    next_month = dt.date(last.year + last.month // 12, last.month % 12 + 1, 1)
    return DataWindow(
        end=dt.datetime.combine(next_month, dt.time()),
        rule="inferred",
        last_month_events=int(months["events"][last_index]),
        median_month_events=int(months["events"].median()),
        events_after=int(after[last_index]),
        months_after=months.height - last_index - 1,
    )


def data_window(root: str | Path, end: dt.datetime | None = None, tail_share: float = DEFAULT_TAIL_SHARE) -> DataWindow:
    """The end of the data of ROOT: END when given (data.end), else inferred by the rule of the module
    docstring. Raises MEDSFormatError when there is no timed record to infer it from."""
    return infer_window(monthly_counts(shard_paths(root)), end, tail_share, str(root))


# ------------------------------------------------------------------------------------------- the view


class Events:
    """A MEDS dataset as every stage reads it: its shards, its window, and the view without the records the
    study does not believe (after death, past the end of the data), which are counted."""

    def __init__(self, root: str | Path, end: dt.datetime | None = None, tail_share: float = DEFAULT_TAIL_SHARE):
        self.root = Path(root)
        self.paths = shard_paths(self.root)
        if not self.paths:
            raise FileNotFoundError(f"{self.root / DATA_DIR}: no data shards ({DATA_DIR}/**/*{SHARD_SUFFIX})")
        self.window = data_window(self.root, end, tail_share)

    @cached_property
    def _drops(self) -> dict[Path, dict[str, int]]:
        """Per shard: records the view leaves out, by reason (one pass over the shards)."""
        out = {}
        for path in self.paths:
            lf = scan_shard(path).select("subject_id", "time", "code")
            counts = lf.select(reason=drop_reason(self.window.end)).drop_nulls().group_by("reason").len().collect()
            out[path] = {reason: int(n) for reason, n in counts.iter_rows()}
        return out

    @property
    def dropped(self) -> dict[str, int]:
        """Records left out of the view, by reason (every reason listed, zeros included)."""
        totals = dict.fromkeys(DROP_REASONS, 0)
        for counts in self._drops.values():
            for reason, n in counts.items():
                totals[reason] += n
        return totals

    def scan(self, path: Path, subjects: tuple[int, int] | None = None) -> pl.LazyFrame:
        """Shard PATH as `scan_shard`, without the records the study leaves out. SUBJECTS (lo, hi): only the
        subjects with lo <= subject_id <= hi, filtered before anything else, so a reader of a large shard holds
        one range of its subjects at a time (parquet row groups outside the range are skipped by their
        statistics); the view of a subject does not depend on the other subjects."""
        lf = scan_shard(path)
        if subjects is not None:
            lf = lf.filter(pl.col("subject_id").is_between(*subjects))
        if not self._drops[path]:
            return lf  # nothing to leave out: no per-subject window over the shard
        return lf.filter(drop_reason(self.window.end).is_null())

    def scans(self):
        """(path, view) of every shard, in order."""
        for path in self.paths:
            yield path, self.scan(path)


def open_events(source: Events | str | Path, end: dt.datetime | None = None,
                tail_share: float = DEFAULT_TAIL_SHARE) -> Events:  # fmt: skip
    """SOURCE itself when it is already an Events, else the dataset at that path."""
    return source if isinstance(source, Events) else Events(source, end, tail_share)


# ------------------------------------------------------------------------------------------- coverage


def coverage_periods(lf: pl.LazyFrame, end: dt.datetime) -> pl.LazyFrame:
    """Coverage periods of a shard (the view of `Events.scan`): subject_id, start, end, reason (the END's
    text_value), open (no END before the end of the data), implied (the subject has no coverage events: first
    to the day after the last clinical event). One row per period, by the rule of the module docstring."""
    cov = lf.filter(pl.col("code").is_in([COVERAGE_START, COVERAGE_END]) & pl.col("time").is_not_null())
    # At one timestamp an END closes the previous period before a START opens the next.
    cov = cov.sort("subject_id", "time", pl.col("code") == COVERAGE_START).with_columns(
        next_code=pl.col("code").shift(-1).over("subject_id"),
        next_time=pl.col("time").shift(-1).over("subject_id"),
        next_reason=pl.col("text_value").shift(-1).over("subject_id"),
    )
    closed = pl.col("next_code") == COVERAGE_END
    periods = cov.filter(pl.col("code") == COVERAGE_START).select(
        "subject_id",
        start=pl.col("time"),
        end=pl.when(pl.col("next_code").is_null()).then(pl.lit(end)).otherwise(pl.col("next_time")),
        reason=pl.when(closed).then(pl.col("next_reason")).otherwise(pl.lit(None, pl.String)),
        open=pl.col("next_code").is_null(),
        implied=pl.lit(False),
    )
    events = lf.filter(clinical())
    implied = (
        events.group_by("subject_id")
        .agg(start=pl.col("time").min(), end=pl.col("time").max() + ONE_DAY)
        .join(cov.select("subject_id").unique(), on="subject_id", how="anti")
        .select("subject_id", "start", "end", reason=pl.lit(None, pl.String), open=pl.lit(False), implied=pl.lit(True))
    )
    return pl.concat([periods, implied]).sort("subject_id", "start")


def unmatched_coverage_ends(lf: pl.LazyFrame) -> pl.LazyFrame:
    """COVERAGE/END records with no open period before them (one row: unmatched_ends)."""
    cov = lf.filter(pl.col("code").is_in([COVERAGE_START, COVERAGE_END]) & pl.col("time").is_not_null())
    cov = cov.sort("subject_id", "time", pl.col("code") == COVERAGE_START)
    previous = pl.col("code").shift(1).over("subject_id")
    unmatched = (pl.col("code") == COVERAGE_END) & (previous.is_null() | (previous == COVERAGE_END))
    return cov.select(unmatched_ends=unmatched.sum().cast(pl.Int64))


# ------------------------------------------------------------------------------------------- subjects


def subject_hospitals(events: Events | str | Path) -> pl.DataFrame:
    """Every subject with its hospital (first HOSPITAL/ code; null when the data has none): subject_id, hospital."""
    parts = []
    for _, lf in open_events(events).scans():
        hosp = (
            lf.filter(pl.col("code").str.starts_with(HOSPITAL_PREFIX))
            .group_by("subject_id")
            .agg(hospital=pl.col("code").min().str.strip_prefix(HOSPITAL_PREFIX))
        )
        parts.append(lf.select("subject_id").unique().join(hosp, on="subject_id", how="left").collect())
    return pl.concat(parts).sort("subject_id")


from claimsutil.meds.clean import CleanReport, clean_dataset, import_dataset  # noqa: E402
from claimsutil.meds.validate import (  # noqa: E402 - the validator builds on the reading API above
    CHECKS,
    DEFAULT_MAX_EXAMPLES,
    ERROR,
    MAX_CODE_EXAMPLES,
    REPAIRABLE,
    WARNING,
    MEDSValidationError,
    Problem,
    ValidationReport,
    validate_dataset,
)

__all__ = [
    "BIRTH_CODE",
    "BOOKKEEPING_CODES",
    "CERTAINTY_COLUMN",
    "CHECKS",
    "CODES_FILE",
    "CONFIRMED",
    "COVERAGE_END",
    "COVERAGE_START",
    "DATASET_FILE",
    "DATA_DIR",
    "DEATH_CODE",
    "DEFAULT_MAX_EXAMPLES",
    "DROP_REASONS",
    "ERROR",
    "FAMILY_BY_PREFIX",
    "MAX_CODE_EXAMPLES",
    "REPAIRABLE",
    "SPLITS_FILE",
    "SUSPECTED",
    "WARNING",
    "CleanReport",
    "DataWindow",
    "Events",
    "MEDSFormatError",
    "MEDSValidationError",
    "Problem",
    "ValidationReport",
    "clean_dataset",
    "code_family",
    "coverage_periods",
    "data_window",
    "drop_reason",
    "family_expr",
    "import_dataset",
    "open_events",
    "other_files",
    "scan_shard",
    "shard_paths",
    "subject_hospitals",
    "unmatched_coverage_ends",
    "validate_dataset",
]
