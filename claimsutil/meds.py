"""Read, validate and iterate MEDS datasets: the only module that knows the on-disk format.

A MEDS root holds `data/**/*.parquet` (events), `metadata/dataset.json`, `metadata/codes.parquet` and
`metadata/subject_splits.parquet`.

Command line: `python -m claimsutil.meds validate DIR [--max-examples N]` prints every problem example and a
summary line, and exits 1 if the dataset has errors (0 with warnings only, 2 on a usage error).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import meds
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

DATA_DIR = meds.data_subdirectory  # "data"
CODES_FILE = meds.code_metadata_filepath  # "metadata/codes.parquet"
SPLITS_FILE = meds.subject_splits_filepath  # "metadata/subject_splits.parquet"
DATASET_FILE = meds.dataset_metadata_filepath  # "metadata/dataset.json"

# Conventions of this project's claims datasets (a user's MEDS data need not follow them).
CERTAINTY_COLUMN = "diagnosis_certainty"  # code modifier: "suspected" on 疑い病名, null when confirmed
SUSPECTED = "suspected"
COVERAGE_START = "COVERAGE/START"  # first day of a coverage (insurance enrolment) period
COVERAGE_END = "COVERAGE/END"  # day after the last covered day; text_value gives the reason


def shard_paths(root: str | Path) -> list[Path]:
    """Every data shard under ROOT/data (nested folders allowed, as MEDS permits), in a stable order."""
    data_dir = Path(root) / DATA_DIR
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no MEDS data folder (expected {DATA_DIR}/*.parquet)")
    return sorted(data_dir.rglob("*.parquet"))


def read_dataset_metadata(root: str | Path) -> dict:
    path = Path(root) / DATASET_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def read_code_metadata(root: str | Path) -> pa.Table:
    return pq.read_table(Path(root) / CODES_FILE)


def read_subject_splits(root: str | Path) -> pa.Table:
    return pq.read_table(Path(root) / SPLITS_FILE)


# --------------------------------------------------------------------------------------------------
# Validation. Every check streams one shard at a time, so memory is bounded by the largest shard plus
# per-subject and per-code bookkeeping (one row per subject / missing code, never per event).

ERROR = "error"
WARNING = "warning"
DEFAULT_MAX_EXAMPLES = 20
MAX_CODE_EXAMPLES = 10  # examples of codes absent from codes.parquet, over the whole dataset

# Every check name and its severity: counts are keyed by these names.
CHECKS: dict[str, str] = {
    "no_data": ERROR,
    "unreadable": ERROR,
    "missing_column": ERROR,
    "column_type": ERROR,
    "null_subject_id": ERROR,
    "null_code": ERROR,
    "before_birth": ERROR,
    "unsorted": ERROR,
    "subject_in_multiple_shards": ERROR,
    "codes_schema": ERROR,
    "splits_schema": ERROR,
    "dataset_json": ERROR,
    "castable_type": WARNING,
    "row_checks_skipped": WARNING,
    "code_not_in_metadata": WARNING,
    "duplicate_rows": WARNING,
    "missing_metadata": WARNING,
    "splits_unknown_subject": WARNING,
}

_ROW = "__meds_validate_row__"  # row index column; a name no real dataset uses
_STRING_TYPES = (pa.string(), pa.large_string())
_TIME_TYPE = pa.timestamp("us")


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

    @property
    def n_errors(self) -> int:
        return sum(n for check, n in self.counts.items() if CHECKS[check] == ERROR)

    @property
    def n_warnings(self) -> int:
        return sum(n for check, n in self.counts.items() if CHECKS[check] == WARNING)

    @property
    def ok(self) -> bool:
        return self.n_errors == 0

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
        out.append(self.summary())
        return out


def _fmt(value: object) -> str:
    return "null" if value is None else str(value)


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
        shown = None if value is None else _fmt(value)
        message = f"{_where(file, row, column)}: {detail}"
        self.problems.append(Problem(CHECKS[check], check, file, row, column, shown, message))

    def add(self, check: str, file: str, row: int | None, column: str | None, value: object, detail: str) -> None:
        self.counts[check] += 1
        self.example(check, file, row, column, value, detail)

    def report(self, n_shards: int, n_rows: int, n_subjects: int) -> ValidationReport:
        return ValidationReport(
            errors=[p for p in self.problems if p.severity == ERROR],
            warnings=[p for p in self.problems if p.severity == WARNING],
            counts=dict(self.counts),
            n_shards=n_shards,
            n_rows=n_rows,
            n_subjects=n_subjects,
        )


@dataclass
class _ScanState:
    """What crosses shard boundaries: subjects seen so far (with their file), codes absent from metadata."""

    known_codes: pl.DataFrame | None
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
    for key, spec in meds.DatasetMetadataSchema.schema()["properties"].items():
        if key in doc and not _json_type_ok(doc[key], spec):
            expected = "a string" if spec["type"] == "string" else "a list of strings"
            out.add("dataset_json", DATASET_FILE, None, key, json.dumps(doc[key]), f"expected {expected}")


def _read_schema(path: Path, rel: str, check: str, out: _Collector) -> pa.Schema | None:
    try:
        return pq.read_schema(path)
    except (OSError, pa.ArrowException) as e:
        out.add(check, rel, None, None, None, f"cannot read parquet file: {e}")
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
    codes = pl.read_parquet(path, columns=["code"], hive_partitioning=False, glob=False)
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
    # Cross-checking needs every subject in the data and an integer subject_id in both places.
    if state.skipped or "subject_id" not in schema.names:
        return
    if not pa.types.is_integer(schema.field("subject_id").type):
        return
    splits = pl.read_parquet(path, columns=["subject_id"], hive_partitioning=False, glob=False)
    splits = splits.with_row_index(_ROW).with_columns(pl.col("subject_id").cast(pl.Int64, strict=False))
    unknown = splits.drop_nulls("subject_id").join(state.seen, on="subject_id", how="anti").sort(_ROW)
    out.count("splits_unknown_subject", unknown.height)
    for row, sid in unknown.head(out.room("splits_unknown_subject", SPLITS_FILE)).iter_rows():
        detail = f"value {sid} is not a subject in the data"
        out.example("splits_unknown_subject", SPLITS_FILE, row, "subject_id", sid, detail)


# ---- data shards ---------------------------------------------------------------------------------


def _check_data_schema(schema: pa.Schema, rel: str, out: _Collector) -> bool:
    """Check column presence and types; return whether the row-level checks can still run."""
    usable = True
    for name in meds.DataSchema.required_columns():
        if name not in schema.names:
            out.add("missing_column", rel, None, name, None, "required column is missing")
            usable = False
    types = {f.name: f.type for f in schema}
    sid, time, code = types.get("subject_id"), types.get("time"), types.get("code")
    if sid is not None and sid != pa.int64():
        out.add("column_type", rel, None, "subject_id", sid, f"type {sid} is not int64")
        usable &= pa.types.is_integer(sid)
    if time is not None and time != _TIME_TYPE:
        detail = f"type {time} is not {_TIME_TYPE} (timezone-naive microseconds)"
        out.add("column_type", rel, None, "time", time, detail)
        usable &= pa.types.is_timestamp(time) or pa.types.is_date(time)
    if code is not None and code not in _STRING_TYPES:
        out.add("column_type", rel, None, "code", code, f"type {code} is not string or large_string")
        usable &= pa.types.is_dictionary(code) and code.value_type in _STRING_TYPES
    value = types.get("numeric_value")
    if value == pa.float64():
        out.add("castable_type", rel, None, "numeric_value", value, "type double is not float (castable)")
    elif value is not None and value != pa.float32():
        out.add("column_type", rel, None, "numeric_value", value, f"type {value} is not float")
    text = types.get("text_value")
    if text is not None and text not in _STRING_TYPES:
        out.add("column_type", rel, None, "text_value", text, f"type {text} is not string or large_string")
    return usable


def _rows(out: _Collector, check: str, rel: str, hits: pl.DataFrame, column: str, detail) -> None:
    """Count every row of HITS (sorted by row) and keep examples; DETAIL(record) explains one row."""
    out.count(check, hits.height)
    for rec in hits.head(out.room(check, rel)).iter_rows(named=True):
        out.example(check, rel, rec[_ROW], column, _fmt(rec[column]), detail(rec))


def _check_nulls(df: pl.DataFrame, rel: str, out: _Collector) -> None:
    for column in ("subject_id", "code"):
        hits = df.select(_ROW, column).filter(pl.col(column).is_null())
        _rows(out, f"null_{column}", rel, hits, column, lambda _: "value null (MEDS requires a value)")


def _check_sorted(df: pl.DataFrame, rel: str, out: _Collector) -> None:
    sid, time = pl.col("subject_id"), pl.col("time")
    prev_sid, prev_time = sid.shift(1), time.shift(1)
    earlier_subject = sid < prev_sid
    earlier_time = (sid == prev_sid) & ((prev_time.is_not_null() & time.is_null()) | (time < prev_time))
    flags = {"by_subject": earlier_subject, "bad": earlier_subject | earlier_time}
    hits = df.select(_ROW, "subject_id", "time", prev_sid=prev_sid, prev_time=prev_time, **flags)
    hits = hits.filter("bad")
    out.count("unsorted", hits.height)
    if hits.height == 0:
        return
    rec = hits.row(0, named=True)
    if rec["by_subject"]:
        detail = f"value {rec['subject_id']} follows subject {rec['prev_sid']} in the row before"
        column = "subject_id"
    else:
        detail = (
            f"value {_fmt(rec['time'])} follows {_fmt(rec['prev_time'])} in the row before, "
            f"for subject {rec['subject_id']}"
        )
        column = "time"
    detail += "; rows must be sorted by subject_id, then time with null (static) times first"
    out.example("unsorted", rel, rec[_ROW], column, _fmt(rec[column]), detail)


def _check_birth(df: pl.DataFrame, rel: str, out: _Collector) -> None:
    birth = pl.col("time").filter(pl.col("code") == meds.birth_code).min().over("subject_id")
    hits = df.select(_ROW, "subject_id", "time", birth=birth).filter(pl.col("time") < pl.col("birth"))

    def detail(rec: dict) -> str:
        return (
            f"value {_fmt(rec['time'])} is before {meds.birth_code} {_fmt(rec['birth'])} of subject {rec['subject_id']}"
        )

    _rows(out, "before_birth", rel, hits, "time", detail)


def _check_duplicates(df: pl.DataFrame, rel: str, out: _Collector) -> None:
    row = pl.struct([c for c in df.columns if c != _ROW])
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
    per_code = df.drop_nulls("code").group_by("code").agg(pl.col(_ROW).min(), n=pl.len())
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
    state.n_rows += pq.ParquetFile(path).metadata.num_rows
    if not _check_data_schema(schema, rel, out):
        state.skipped += 1
        detail = "row-level and cross-shard checks skipped: required columns missing or unusable"
        out.add("row_checks_skipped", rel, None, None, None, detail)
        return
    df = pl.read_parquet(path, hive_partitioning=False, glob=False).with_row_index(_ROW)
    df = df.with_columns(pl.col("subject_id").cast(pl.Int64, strict=False), pl.col("code").cast(pl.String))
    _check_nulls(df, rel, out)
    _check_sorted(df, rel, out)
    _check_birth(df, rel, out)
    _check_duplicates(df, rel, out)
    _track_subjects(df, rel, out, state)
    _track_codes(df, rel, state)


def _report_missing_codes(out: _Collector, state: _ScanState) -> None:
    out.count("code_not_in_metadata", len(state.missing_codes))
    for code, (rel, row, n) in list(state.missing_codes.items())[:MAX_CODE_EXAMPLES]:
        detail = f"value {code} is not in {CODES_FILE} ({n} rows in the dataset; first here)"
        out.example("code_not_in_metadata", rel, row, "code", code, detail)


def validate_dataset(
    root: str | Path, *, max_examples: int = DEFAULT_MAX_EXAMPLES, progress: bool = False
) -> ValidationReport:
    """Check a MEDS dataset shard by shard; see CHECKS for every check and its severity."""
    root = Path(root)
    out = _Collector(max_examples)
    _check_dataset_json(root, out)
    state = _ScanState(known_codes=_check_code_metadata(root, out))
    paths = sorted((root / DATA_DIR).rglob("*.parquet")) if (root / DATA_DIR).is_dir() else []
    if not paths:
        out.add("no_data", DATA_DIR, None, None, None, f"no data shards ({DATA_DIR}/**/*.parquet)")
    with tqdm(paths, desc="validate MEDS", unit="shard", disable=not progress) as bar:
        for path in bar:
            _check_shard(path, path.relative_to(root).as_posix(), out, state)
            bar.set_postfix(rows=state.n_rows)
    _report_missing_codes(out, state)
    _check_splits(root, out, state)
    return out.report(len(paths), state.n_rows, state.seen.height)


# ---- import --------------------------------------------------------------------------------------


def _error_text(src: Path, report: ValidationReport) -> str:
    lines = [str(p) for p in report.errors]
    return f"{src} is not a valid MEDS dataset:\n" + "\n".join([*lines, report.summary()])


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def import_dataset(
    src: str | Path, dst: str | Path, *, max_examples: int = DEFAULT_MAX_EXAMPLES, progress: bool = False
) -> ValidationReport:
    """Validate SRC, then copy its shards and metadata to DST (replaced); return the report (warnings)."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such MEDS directory")
    src_abs, dst_abs = src.resolve(), dst.resolve()
    # Replacing DST must never delete the user's data, so the two trees may not overlap.
    if dst_abs.is_relative_to(src_abs) or src_abs.is_relative_to(dst_abs):
        raise ValueError(f"import destination {dst} overlaps the source {src}")
    _remove(dst)
    report = validate_dataset(src, max_examples=max_examples, progress=progress)
    if not report.ok:
        raise MEDSValidationError(_error_text(src, report))
    staging = dst.with_name(dst.name + ".importing")
    _remove(staging)
    try:
        for shard in shard_paths(src):
            target = staging / shard.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(shard, target)
        if (src / "metadata").is_dir():
            shutil.copytree(src / "metadata", staging / "metadata")
        staging.rename(dst)  # only a complete copy ever appears under DST
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


# ---- command line --------------------------------------------------------------------------------


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m claimsutil.meds", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a MEDS dataset; exit 1 if it has errors")
    validate.add_argument("dir", type=Path, help="MEDS root (holds data/ and metadata/)")
    validate.add_argument(
        "--max-examples",
        type=_non_negative,
        default=DEFAULT_MAX_EXAMPLES,
        help="examples kept per check and file (all occurrences are counted)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "validate":
        if not args.dir.is_dir():
            parser.error(f"{args.dir}: not a directory")
        report = validate_dataset(args.dir, max_examples=args.max_examples, progress=sys.stderr.isatty())
        print("\n".join(report.lines()))
        return 0 if report.ok else 1
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
