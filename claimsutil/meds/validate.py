"""Validate a MEDS dataset: every problem with its file, row, column and value; never a traceback.

Every check streams one shard at a time, so memory is bounded by the largest shard plus per-subject and
per-code bookkeeping (one row per subject / missing code, never per event). `CHECKS` lists every check and
its severity; `REPAIRABLE` those `python -m claimsutil.meds clean` repairs by dropping the rows.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from claimsutil.meds import (
    BIRTH_CODE,
    CERTAINTY_COLUMN,
    CERTAINTY_VALUES,
    CODES_FILE,
    DATA_DIR,
    DATASET_FILE,
    DEFAULT_TAIL_SHARE,
    MIN_TIME,
    SHARD_SUFFIX,
    SPLITS_FILE,
    DataWindow,
    MEDSFormatError,
    drop_reason,
    infer_window,
    is_parquet_file,
    other_files,
    scan_shard,
    shard_months,
    shard_paths,
)

ERROR = "error"
WARNING = "warning"
DEFAULT_MAX_EXAMPLES = 20
MAX_CODE_EXAMPLES = 10  # examples of codes absent from codes.parquet, over the whole dataset
MAX_VALUE_CHARS = 80  # longer values are cut in messages (with their length)

# Every check name and its severity: counts are keyed by these names.
CHECKS: dict[str, str] = {
    "no_data": ERROR,
    "unreadable": ERROR,
    "shard_name": ERROR,
    "duplicate_column": ERROR,
    "not_utf8": ERROR,
    "missing_column": ERROR,
    "column_type": ERROR,
    "value_out_of_range": ERROR,
    "null_subject_id": ERROR,
    "null_code": ERROR,
    "empty_code": ERROR,
    "implausible_time": ERROR,
    "certainty_value": ERROR,
    "before_birth": ERROR,
    "unsorted": ERROR,
    "subject_in_multiple_shards": ERROR,
    "codes_schema": ERROR,
    "splits_schema": ERROR,
    "dataset_json": ERROR,
    "castable_type": WARNING,
    "row_checks_skipped": WARNING,
    "other_file": WARNING,
    "after_death": WARNING,
    "after_data_end": WARNING,
    "code_not_in_metadata": WARNING,
    "duplicate_rows": WARNING,
    "missing_metadata": WARNING,
    "splits_unknown_subject": WARNING,
}
# What the study or `clean` does with each check that is not simply "fix the data".
REPAIRABLE = ("before_birth", "after_death", "duplicate_rows", "after_data_end")

REQUIRED_COLUMNS = ("subject_id", "time", "code")  # meds.DataSchema.required_columns() (a test keeps them equal)
_ROW = "__meds_validate_row__"  # row index column; a name no real dataset uses
_TIME_US = "__meds_validate_time_us__"  # the time as int64 microseconds: formattable at any year
_STRING_TYPES = (pa.string(), pa.large_string())
_TIME_TYPE = pa.timestamp("us")
_INT64_MAX = np.iinfo(np.int64).max
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MIN_US = int((MIN_TIME - dt.datetime(1970, 1, 1)) / dt.timedelta(microseconds=1))
_MAX_US = int((dt.datetime(9999, 12, 31, 23, 59, 59) - dt.datetime(1970, 1, 1)) / dt.timedelta(microseconds=1))


class MEDSValidationError(ValueError):
    """A MEDS dataset failed validation; the message lists the error examples and the summary."""


@dataclass(frozen=True)
class Problem:
    """One example of a failed check. `row` is the 0-based row in `file`, None when not row-specific."""

    severity: str
    check: str
    file: str
    row: int | None
    column: str | None
    value: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.severity.upper()} [{self.check}] {self.message}"


@dataclass
class ValidationReport:
    """Examples of problems (capped per check and file) and the full count of every check's occurrences."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    n_shards: int = 0
    n_rows: int = 0
    n_subjects: int = 0
    window: DataWindow | None = None  # the end of the data the time checks used (None: none could be found)

    @property
    def n_errors(self) -> int:
        return sum(n for check, n in self.counts.items() if CHECKS[check] == ERROR)

    @property
    def n_warnings(self) -> int:
        return sum(n for check, n in self.counts.items() if CHECKS[check] == WARNING)

    @property
    def ok(self) -> bool:
        return self.n_errors == 0

    @property
    def repairable(self) -> bool:
        """Whether every error is one `clean` repairs (so a cleaned copy can be valid)."""
        return all(CHECKS[c] != ERROR or c in REPAIRABLE for c, n in self.counts.items() if n)

    def summary(self) -> str:
        return (
            f"{self.n_errors} errors, {self.n_warnings} warnings in {self.n_shards} shards "
            f"({self.n_rows} rows, {self.n_subjects} subjects)"
        )

    def lines(self) -> list[str]:
        """Every example, then a line per check with more occurrences than examples, then the summary."""
        out = [str(p) for p in self.errors + self.warnings]
        shown = Counter(p.check for p in self.errors + self.warnings)
        for check, n in sorted(self.counts.items()):
            if n > shown[check]:
                out.append(f"{CHECKS[check].upper()} [{check}] {n} in total, {shown[check]} shown above")
        if self.window is not None:
            out.append(f"time checks: {self.window.describe()}")
        out.append(self.summary())
        return out


# ---- formatting ------------------------------------------------------------------------------------


def format_value(value: object) -> str:
    """A value as messages show it: null, '' for an empty string, long strings cut with their length."""
    if value is None:
        return "null"
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="backslashreplace")
    text = str(value)
    if text == "":
        return "''"
    if len(text) > MAX_VALUE_CHARS:
        return f"{text[:MAX_VALUE_CHARS]}... ({len(text):,} characters)"
    return text


def format_time_us(us: int | None) -> str:
    """Microseconds since the epoch as an ISO timestamp, at any year numpy can hold (e.g. 50000)."""
    if us is None:
        return "null"
    return str(np.datetime64(int(us), "us")).replace("T", " ").removesuffix(".000000")


def _where(file: str, row: int | None, column: str | None) -> str:
    where = file if row is None else f"{file} row {row}"
    return where if column is None else f"{where}, column {column}"


class _Collector:
    """Counts every occurrence; keeps at most `max_examples` examples per (check, file)."""

    def __init__(self, max_examples: int) -> None:
        self.max_examples = max_examples
        self.problems: list[Problem] = []
        self.counts: Counter[str] = Counter()
        self._kept: Counter[tuple[str, str]] = Counter()

    def count(self, check: str, n: int) -> None:
        if n:
            self.counts[check] += n

    def room(self, check: str, file: str) -> int:
        return max(self.max_examples - self._kept[(check, file)], 0)

    def example(self, check: str, file: str, row: int | None, column: str | None, value: object, detail: str) -> None:
        if self.room(check, file) == 0:
            return
        self._kept[(check, file)] += 1
        shown = None if value is None else format_value(value)
        message = f"{_where(file, row, column)}: {detail}"
        self.problems.append(Problem(CHECKS[check], check, file, row, column, shown, message))

    def add(self, check: str, file: str, row: int | None, column: str | None, value: object, detail: str) -> None:
        self.counts[check] += 1
        self.example(check, file, row, column, value, detail)

    def report(self, n_shards: int, n_rows: int, n_subjects: int, window: DataWindow | None) -> ValidationReport:
        return ValidationReport(
            errors=[p for p in self.problems if p.severity == ERROR],
            warnings=[p for p in self.problems if p.severity == WARNING],
            counts=dict(self.counts),
            n_shards=n_shards,
            n_rows=n_rows,
            n_subjects=n_subjects,
            window=window,
        )


@dataclass
class _ScanState:
    """What crosses shard boundaries: subjects seen so far (with their file), codes absent from metadata."""

    known_codes: pl.DataFrame | None
    window: DataWindow | None
    files: list[str] = field(default_factory=list)
    seen: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema={"subject_id": pl.Int64, "file_idx": pl.UInt32})
    )
    missing_codes: dict[str, list] = field(default_factory=dict)  # code -> [file, first row, n rows]
    n_rows: int = 0
    skipped: int = 0  # shards whose row-level checks could not run


# ---- metadata files ------------------------------------------------------------------------------


def _json_type_ok(value: object, spec: dict) -> bool:
    if spec.get("type") == "string":
        return isinstance(value, str)
    if spec.get("type") == "array":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return True


def _check_dataset_json(root: Path, out: _Collector) -> None:
    path = root / DATASET_FILE
    if not path.is_file():
        out.add("missing_metadata", DATASET_FILE, None, None, None, "file is missing (MEDS dataset metadata)")
        return
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        out.add("dataset_json", DATASET_FILE, None, None, None, f"not valid JSON: {e}")
        return
    if not isinstance(doc, dict):
        detail = f"expected a JSON object, got {type(doc).__name__}"
        out.add("dataset_json", DATASET_FILE, None, None, None, detail)
        return
    import meds  # the package's own schema of dataset.json (imported here: it is slow to import)

    for key, spec in meds.DatasetMetadataSchema.schema()["properties"].items():
        if key in doc and not _json_type_ok(doc[key], spec):
            expected = "a string" if spec["type"] == "string" else "a list of strings"
            out.add("dataset_json", DATASET_FILE, None, key, json.dumps(doc[key]), f"expected {expected}")


def _read_schema(path: Path, rel: str, check: str, out: _Collector) -> pa.Schema | None:
    try:
        return pq.read_schema(path)
    except Exception as e:  # noqa: BLE001 - whatever the reader says, it is reported with the file
        out.add(check, rel, None, None, None, f"cannot read parquet file: {format_value(e)}")
        return None


def _check_code_metadata(root: Path, out: _Collector) -> pl.DataFrame | None:
    """Check codes.parquet; return its distinct codes, or None when the code check cannot run."""
    path = root / CODES_FILE
    if not path.is_file():
        out.add("missing_metadata", CODES_FILE, None, None, None, "file is missing (code metadata)")
        return None
    schema = _read_schema(path, CODES_FILE, "codes_schema", out)
    if schema is None:
        return None
    lists = tuple(make(t) for make in (pa.list_, pa.large_list) for t in _STRING_TYPES)
    expected = {"code": _STRING_TYPES, "description": _STRING_TYPES, "parent_codes": lists}
    if "code" not in schema.names:
        out.add("codes_schema", CODES_FILE, None, "code", None, "required column is missing")
    for name, allowed in expected.items():
        if name in schema.names and not any(schema.field(name).type.equals(t) for t in allowed):
            actual = schema.field(name).type
            out.add("codes_schema", CODES_FILE, None, name, actual, f"type {actual} is not {allowed[0]}")
    if "code" not in schema.names or schema.field("code").type not in _STRING_TYPES:
        return None
    try:
        codes = pl.read_parquet(path, columns=["code"], hive_partitioning=False, glob=False)
    except Exception as e:  # noqa: BLE001
        out.add("codes_schema", CODES_FILE, None, "code", None, f"cannot read the codes: {format_value(e)}")
        return None
    return codes.drop_nulls().unique()


def _check_splits(root: Path, out: _Collector, state: _ScanState) -> None:
    path = root / SPLITS_FILE
    if not path.is_file():
        out.add("missing_metadata", SPLITS_FILE, None, None, None, "file is missing (subject splits)")
        return
    schema = _read_schema(path, SPLITS_FILE, "splits_schema", out)
    if schema is None:
        return
    for name, allowed in (("subject_id", (pa.int64(),)), ("split", _STRING_TYPES)):
        if name not in schema.names:
            out.add("splits_schema", SPLITS_FILE, None, name, None, "required column is missing")
        elif schema.field(name).type not in allowed:
            actual = schema.field(name).type
            out.add("splits_schema", SPLITS_FILE, None, name, actual, f"type {actual} is not {allowed[0]}")
    for name in schema.names:
        if name not in ("subject_id", "split"):
            out.add("splits_schema", SPLITS_FILE, None, name, None, "extra column (MEDS allows none here)")
    # Cross-checking needs every subject in the data and an int64 subject_id in both places.
    if state.skipped or "subject_id" not in schema.names or schema.field("subject_id").type != pa.int64():
        return
    try:
        splits = pl.read_parquet(path, columns=["subject_id"], hive_partitioning=False, glob=False)
    except Exception as e:  # noqa: BLE001
        out.add("splits_schema", SPLITS_FILE, None, "subject_id", None, f"cannot read: {format_value(e)}")
        return
    unknown = splits.with_row_index(_ROW).drop_nulls("subject_id").join(state.seen, on="subject_id", how="anti")
    unknown = unknown.sort(_ROW)
    out.count("splits_unknown_subject", unknown.height)
    for row, sid in unknown.head(out.room("splits_unknown_subject", SPLITS_FILE)).iter_rows():
        detail = f"value {sid} is not a subject in the data"
        out.example("splits_unknown_subject", SPLITS_FILE, row, "subject_id", sid, detail)


# ---- reading a shard -----------------------------------------------------------------------------


def _read_table(path: Path, rel: str, schema: pa.Schema, out: _Collector) -> pa.Table | None:
    """The shard as an Arrow table, row group by row group: a corrupt page or bytes that are not UTF-8 are
    errors naming the row group (and the row and column where Arrow tells), never an exception."""
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001
        out.add("unreadable", rel, None, None, None, f"cannot open parquet file: {format_value(e)}")
        return None
    groups, first, ok = [], 0, True
    strings = [f.name for f in schema if f.type in _STRING_TYPES]
    for i in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        try:
            group = pf.read_row_group(i)
        except Exception as e:  # noqa: BLE001 - a corrupt data page: the decoder's words, the rows it covers
            detail = f"row group {i} (rows {first}-{first + n - 1}) cannot be decoded: {format_value(e)}"
            out.add("unreadable", rel, None, None, None, detail)
            ok = False
            first += n
            continue
        for name in strings:
            column = group.column(name).combine_chunks()
            try:
                column.validate(full=True)
            except pa.ArrowInvalid:
                row = _first_invalid_utf8(column)
                raw = column.view(pa.binary())[row].as_py() if row is not None else None
                at = first + row if row is not None else None
                detail = f"value {format_value(raw)} holds bytes that are not UTF-8 (MEDS strings are UTF-8)"
                out.add("not_utf8", rel, at, name, raw, detail)
                ok = False
        groups.append(group)
        first += n
    return pa.concat_tables(groups) if ok and groups else (pf.schema_arrow.empty_table() if ok else None)


def _first_invalid_utf8(column: pa.Array) -> int | None:
    """The first row of a string column whose bytes are not UTF-8."""
    values = column.view(pa.binary()).to_pylist()
    for i, value in enumerate(values):
        if value is not None:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                return i
    return None


# ---- data shards ---------------------------------------------------------------------------------


def _check_data_schema(schema: pa.Schema, rel: str, out: _Collector) -> bool:
    """Check column names and types; return whether the row-level checks can still run."""
    usable = True
    names = Counter(schema.names)
    for name, n in sorted(names.items()):
        if n > 1:
            out.add("duplicate_column", rel, None, name, None, f"{n} columns are named {name} (names must be unique)")
            usable = False
    for name in REQUIRED_COLUMNS:
        if name not in schema.names:
            out.add("missing_column", rel, None, name, None, "required column is missing")
            usable = False
    if not usable:
        return False
    types = {f.name: f.type for f in schema}
    sid, time, code = types.get("subject_id"), types.get("time"), types.get("code")
    if sid != pa.int64():
        out.add("column_type", rel, None, "subject_id", sid, f"type {sid} is not int64")
        usable &= pa.types.is_integer(sid)
    if time != _TIME_TYPE:
        detail = f"type {time} is not {_TIME_TYPE} (timezone-naive microseconds)"
        out.add("column_type", rel, None, "time", time, detail)
        usable &= pa.types.is_timestamp(time) or pa.types.is_date(time)
    if code not in _STRING_TYPES:
        out.add("column_type", rel, None, "code", code, f"type {code} is not string or large_string")
        usable &= pa.types.is_dictionary(code) and code.value_type in _STRING_TYPES
    # Optional columns may be entirely null (Arrow's null type), as writers produce for an empty column.
    value = types.get("numeric_value")
    if value is not None and value not in (pa.float32(), pa.float64(), pa.null()):
        out.add("column_type", rel, None, "numeric_value", value, f"type {value} is not float")
    text = types.get("text_value")
    if text is not None and text not in (*_STRING_TYPES, pa.null()):
        out.add("column_type", rel, None, "text_value", text, f"type {text} is not string or large_string")
    certainty = types.get(CERTAINTY_COLUMN)
    if certainty is not None and certainty not in (*_STRING_TYPES, pa.null()):
        detail = (f"type {certainty} is not string: the code modifier holds {' or '.join(map(repr, CERTAINTY_VALUES))}"
                  " or null, and any other type would count every suspected diagnosis as confirmed")  # fmt: skip
        out.add("column_type", rel, None, CERTAINTY_COLUMN, certainty, detail)
    return usable


def _rows(out: _Collector, check: str, rel: str, hits: pl.DataFrame, column: str, detail, value=None) -> None:
    """Count every row of HITS (sorted by row) and keep examples; DETAIL(record) explains one row, VALUE(record)
    gives the value shown (default: the column's)."""
    out.count(check, hits.height)
    for rec in hits.head(out.room(check, rel)).iter_rows(named=True):
        shown = value(rec) if value else format_value(rec[column])
        out.example(check, rel, rec[_ROW], column, shown, detail(rec))


def _to_frame(table: pa.Table, rel: str, schema: pa.Schema, out: _Collector) -> pl.DataFrame | None:
    """The shard as the row checks need it (int64 subject ids, string codes, time in microseconds), or None
    after reporting why it cannot be (subject ids beyond int64)."""
    df = pl.from_arrow(table).with_row_index(_ROW)
    sid_type = schema.field("subject_id").type
    if sid_type != pa.int64():
        too_big = df.filter(pl.col("subject_id") > _INT64_MAX).select(_ROW, "subject_id")
        if too_big.height:
            _rows(out, "value_out_of_range", rel, too_big, "subject_id",
                  lambda r: f"value {r['subject_id']} does not fit int64 (MEDS subject ids are int64)")  # fmt: skip
            detail = "row-level and cross-shard checks skipped: subject ids cannot be read as int64"
            out.add("row_checks_skipped", rel, None, "subject_id", None, detail)
            return None
    time = pl.col("time")
    if isinstance(df.schema["time"], pl.Datetime) and df.schema["time"].time_zone is not None:
        time = time.dt.replace_time_zone(None)  # checked as the wall-clock times they hold
    time = time.cast(pl.Datetime("us"))
    return df.with_columns(
        pl.col("subject_id").cast(pl.Int64),
        pl.col("code").cast(pl.String),
        time.alias("time"),
        time.dt.epoch("us").alias(_TIME_US),
    )


def _check_values(df: pl.DataFrame, rel: str, schema: pa.Schema, out: _Collector) -> None:
    for column in ("subject_id", "code"):
        hits = df.select(_ROW, column).filter(pl.col(column).is_null())
        _rows(out, f"null_{column}", rel, hits, column, lambda _: "value null (MEDS requires a value)")
    empty = df.select(_ROW, "code").filter(pl.col("code") == "")
    _rows(out, "empty_code", rel, empty, "code", lambda _: "value '' (an empty code names nothing)")
    if "numeric_value" in df.columns and schema.field("numeric_value").type == pa.float64():
        big = df.select(_ROW, "numeric_value").filter(pl.col("numeric_value").abs() > _FLOAT32_MAX)
        _rows(out, "value_out_of_range", rel, big, "numeric_value",
              lambda r: f"value {r['numeric_value']} overflows float32 (MEDS numeric_value is float32)")  # fmt: skip
        if big.height == 0:
            out.add("castable_type", rel, None, "numeric_value", "double",
                    "type double is not float (castable: every value fits float32)")  # fmt: skip
    if CERTAINTY_COLUMN in df.columns and schema.field(CERTAINTY_COLUMN).type in _STRING_TYPES:
        odd = df.select(_ROW, CERTAINTY_COLUMN).filter(
            pl.col(CERTAINTY_COLUMN).is_not_null() & ~pl.col(CERTAINTY_COLUMN).is_in(CERTAINTY_VALUES)
        )
        known = f"one of {list(CERTAINTY_VALUES)} or null"
        _rows(out, "certainty_value", rel, odd, CERTAINTY_COLUMN,
              lambda r: f"value {format_value(r[CERTAINTY_COLUMN])} is not {known}")  # fmt: skip


def _check_times(df: pl.DataFrame, rel: str, out: _Collector) -> None:
    t = pl.col(_TIME_US)
    bad = df.select(_ROW, "subject_id", "code", _TIME_US).filter(t.is_not_null() & ((t < _MIN_US) | (t > _MAX_US)))

    def detail(r: dict) -> str:
        when = "before 1900" if r[_TIME_US] < _MIN_US else "after the year 9999"
        return (
            f"value {format_time_us(r[_TIME_US])} ({r['code']}, subject {r['subject_id']}) is {when}: not a claims date"
        )

    _rows(out, "implausible_time", rel, bad, "time", detail, value=lambda r: format_time_us(r[_TIME_US]))


def _check_sorted(df: pl.DataFrame, rel: str, out: _Collector) -> None:
    sid, time = pl.col("subject_id"), pl.col(_TIME_US)
    prev_sid, prev_time = sid.shift(1), time.shift(1)
    earlier_subject = sid < prev_sid
    earlier_time = (sid == prev_sid) & ((prev_time.is_not_null() & time.is_null()) | (time < prev_time))
    flags = {"by_subject": earlier_subject, "bad": earlier_subject | earlier_time}
    hits = df.select(_ROW, "subject_id", _TIME_US, prev_sid=prev_sid, prev_time=prev_time, **flags).filter("bad")
    out.count("unsorted", hits.height)
    if hits.height == 0:
        return
    rec = hits.row(0, named=True)
    if rec["by_subject"]:
        detail = f"value {rec['subject_id']} follows subject {rec['prev_sid']} in the row before"
        column, value = "subject_id", rec["subject_id"]
    else:
        value = format_time_us(rec[_TIME_US])
        detail = (f"value {value} follows {format_time_us(rec['prev_time'])} in the row before, "
                  f"for subject {rec['subject_id']}")  # fmt: skip
        column = "time"
    detail += "; rows must be sorted by subject_id, then time with null (static) times first"
    out.example("unsorted", rel, rec[_ROW], column, value, detail)


def _check_birth(df: pl.DataFrame, rel: str, out: _Collector) -> None:
    birth = pl.col(_TIME_US).filter(pl.col("code") == BIRTH_CODE).min().over("subject_id")
    hits = df.select(_ROW, "subject_id", _TIME_US, birth=birth).filter(pl.col(_TIME_US) < pl.col("birth"))

    def detail(rec: dict) -> str:
        return (f"value {format_time_us(rec[_TIME_US])} is before {BIRTH_CODE} {format_time_us(rec['birth'])} of "
                f"subject {rec['subject_id']}")  # fmt: skip

    _rows(out, "before_birth", rel, hits, "time", detail, value=lambda r: format_time_us(r[_TIME_US]))


def _check_window(df: pl.DataFrame, rel: str, out: _Collector, window: DataWindow | None) -> None:
    """Events after MEDS_DEATH and past the end of the data: warnings, since the study leaves them out."""
    if window is None:
        return
    reasons = df.select(_ROW, "subject_id", "code", _TIME_US, reason=drop_reason(window.end)).drop_nulls("reason")
    explain = {
        "after_death": "after the day of the subject's MEDS_DEATH: the study leaves it out",
        "after_data_end": f"at or after the end of the data ({window.end.date()}): the study leaves it out",
    }
    for reason, why in explain.items():
        hits = reasons.filter(pl.col("reason") == reason)

        def detail(r: dict, why: str = why) -> str:
            return f"value {format_time_us(r[_TIME_US])} ({r['code']}, subject {r['subject_id']}) is {why}"

        _rows(out, reason, rel, hits, "time", detail, value=lambda r: format_time_us(r[_TIME_US]))


def _check_duplicates(df: pl.DataFrame, rel: str, out: _Collector) -> None:
    row = pl.struct([c for c in df.columns if c not in (_ROW, _TIME_US)])
    # Distinct hashes prove distinct rows, and hashing is several times cheaper than exact matching.
    if df.select(row.hash().n_unique()).item() == df.height:
        return
    hits = df.select(_ROW, key=row.hash(), dup=~row.is_first_distinct()).filter("dup")
    out.count("duplicate_rows", hits.height)
    if hits.height:
        example, key, _ = hits.row(0)
        # Exact matching among the few rows sharing the example's hash finds the row it duplicates.
        twins = df.filter(row.hash() == key).select(_ROW, first=pl.col(_ROW).min().over(row))
        first = twins.filter(pl.col(_ROW) == example)["first"][0]
        detail = f"exact duplicate of row {first} ({hits.height} duplicate rows in this file)"
        out.example("duplicate_rows", rel, example, None, None, detail)


def _track_subjects(df: pl.DataFrame, rel: str, out: _Collector, state: _ScanState) -> None:
    """A subject's events must all sit in one shard: compare this shard's subjects with earlier shards'."""
    subjects = (
        df.select(_ROW, "subject_id").drop_nulls("subject_id").group_by("subject_id").agg(pl.col(_ROW).min()).sort(_ROW)
    )
    split = subjects.join(state.seen, on="subject_id", how="inner").sort(_ROW)
    out.count("subject_in_multiple_shards", split.height)
    for rec in split.head(out.room("subject_in_multiple_shards", rel)).iter_rows(named=True):
        other = state.files[rec["file_idx"]]
        detail = f"value {rec['subject_id']} is also in {other} (a subject must be in one shard only)"
        out.example("subject_in_multiple_shards", rel, rec[_ROW], "subject_id", rec["subject_id"], detail)
    new = subjects.join(state.seen, on="subject_id", how="anti")
    file_idx = pl.lit(len(state.files), dtype=pl.UInt32).alias("file_idx")
    state.seen = pl.concat([state.seen, new.select("subject_id", file_idx)], rechunk=False)
    state.files.append(rel)


def _track_codes(df: pl.DataFrame, rel: str, state: _ScanState) -> None:
    if state.known_codes is None:
        return
    per_code = df.drop_nulls("code").filter(pl.col("code") != "").group_by("code").agg(pl.col(_ROW).min(), n=pl.len())
    missing = per_code.join(state.known_codes, on="code", how="anti").sort(_ROW)
    for code, row, n in missing.iter_rows():
        if code in state.missing_codes:
            state.missing_codes[code][2] += n
        else:
            state.missing_codes[code] = [rel, row, n]


def _check_shard(path: Path, rel: str, out: _Collector, state: _ScanState) -> None:
    schema = _read_schema(path, rel, "unreadable", out)
    if schema is None:
        state.skipped += 1
        return
    try:
        state.n_rows += pq.ParquetFile(path).metadata.num_rows
    except Exception:  # noqa: BLE001 - reported by _read_table below
        pass
    usable = _check_data_schema(schema, rel, out)
    table = _read_table(path, rel, schema, out) if usable else None
    df = _to_frame(table, rel, schema, out) if table is not None else None
    if df is None:
        state.skipped += 1
        if not usable or table is None:
            detail = "row-level and cross-shard checks skipped: the file or its required columns cannot be read"
            out.add("row_checks_skipped", rel, None, None, None, detail)
        return
    _check_values(df, rel, schema, out)
    _check_times(df, rel, out)
    _check_sorted(df, rel, out)
    _check_birth(df, rel, out)
    _check_window(df, rel, out, state.window)
    _check_duplicates(df, rel, out)
    _track_subjects(df, rel, out, state)
    _track_codes(df, rel, state)


def _report_missing_codes(out: _Collector, state: _ScanState) -> None:
    out.count("code_not_in_metadata", len(state.missing_codes))
    for code, (rel, row, n) in list(state.missing_codes.items())[:MAX_CODE_EXAMPLES]:
        detail = f"value {format_value(code)} is not in {CODES_FILE} ({n} rows in the dataset; first here)"
        out.example("code_not_in_metadata", rel, row, "code", code, detail)


def _check_other_files(root: Path, out: _Collector) -> None:
    for path in other_files(root):
        rel = path.relative_to(root).as_posix()
        if is_parquet_file(path):
            try:
                rows = f"{pq.ParquetFile(path).metadata.num_rows:,} rows"
            except Exception:  # noqa: BLE001
                rows = "rows unknown"
            detail = (f"a parquet file ({rows}) not named *{SHARD_SUFFIX}: MEDS readers, this study's included, "
                      f"skip it; rename it to {path.stem}{SHARD_SUFFIX}")  # fmt: skip
            out.add("shard_name", rel, None, None, None, detail)
        else:
            out.add("other_file", rel, None, None, None, f"not a MEDS shard (*{SHARD_SUFFIX}): ignored")


def _window(root: Path, paths: list[Path], end: dt.datetime | None, tail_share: float) -> DataWindow | None:
    """The end of the data by the study's rule, from the shards that can be read (None: none can)."""
    parts = []
    for path in paths:
        try:
            parts.append(shard_months(scan_shard(path).select("time", "code")).collect())
        except Exception:  # noqa: BLE001 - unreadable shards are reported by the row checks
            continue
    if not parts:
        return None if end is None else DataWindow(end, "params")
    months = pl.concat(parts).group_by("month").agg(pl.col("events").sum()).sort("month")
    try:
        return infer_window(months, end, tail_share, str(root))
    except MEDSFormatError:
        return None


def validate_dataset(
    root: str | Path,
    *,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    progress: bool = False,
    end: dt.datetime | None = None,
    tail_share: float = DEFAULT_TAIL_SHARE,
) -> ValidationReport:
    """Check a MEDS dataset shard by shard; see CHECKS for every check and its severity. END and TAIL_SHARE:
    the end of the data, as `claimsutil.meds.data_window` decides it (data.end and data.end_tail_share)."""
    root = Path(root)
    out = _Collector(max_examples)
    _check_dataset_json(root, out)
    paths = shard_paths(root) if (root / DATA_DIR).is_dir() else []
    state = _ScanState(known_codes=_check_code_metadata(root, out), window=_window(root, paths, end, tail_share))
    if not paths:
        out.add("no_data", DATA_DIR, None, None, None, f"no data shards ({DATA_DIR}/**/*{SHARD_SUFFIX})")
    _check_other_files(root, out)
    with tqdm(paths, desc="validate MEDS", unit="shard", disable=not progress) as bar:
        for path in bar:
            _check_shard(path, path.relative_to(root).as_posix(), out, state)
            bar.set_postfix(rows=state.n_rows)
    _report_missing_codes(out, state)
    _check_splits(root, out, state)
    return out.report(len(paths), state.n_rows, state.seen.height, state.window)


def error_text(src: Path, report: ValidationReport) -> str:
    """The message of a failed validation: every error example and the summary."""
    lines = [str(p) for p in report.errors]
    return f"{src} is not a valid MEDS dataset:\n" + "\n".join([*lines, report.summary()])
