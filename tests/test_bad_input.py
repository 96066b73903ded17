"""Bad input never changes a result silently: the validator, the importer, the study's readers and the params
loader against broken inputs, each built here from a small generated dataset (no binary fixtures).

Every case asserts one of: an error or counted warning naming the file, the row (where there is one), the
column and the value; or, for inputs the study treats itself, that labels and tokens equal the clean
dataset's (or change exactly as documented) and that what was left out is counted.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from claimsutil import cohort as co
from claimsutil import meds as cm
from claimsutil import tokenize as tok
from claimsutil.config import CohortParams, ParamsError, SynthParams, TaskSpec, load_params
from claimsutil.meds import clean_dataset, import_dataset, validate_dataset
from claimsutil.splits import build_splits
from claimsutil.synth import generate

ROOT = Path(__file__).resolve().parents[1]
SHARD = "data/shard-00000.parquet"
OTHER = "data/shard-00001.parquet"
AMLODIPINE = "YJ/2171022F1053"
HTN = TaskSpec("hypertension", ("ICD10/I10",))
AML = TaskSpec("amlodipine", ("YJ/2171022",))
US = 1_000_000


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_input") / "meds"
    params = SynthParams(patients=1200, seed=7, block_size=600, shard_size=600, workers=1)
    generate(params, root, root.with_name("meds_truth"), progress=False)
    return root


@pytest.fixture(scope="module")
def clean_labels(clean) -> dict[str, pl.DataFrame]:
    return {name: c.labels for name, c in co.build_tasks(clean, (HTN, AML), seed=3).items()}


def broken(clean: Path, tmp_path: Path, change: Callable[[pl.DataFrame], pl.DataFrame], shard: str = SHARD) -> Path:
    """A copy of CLEAN with CHANGE applied to one shard (read and written with polars)."""
    root = tmp_path / "meds"
    shutil.copytree(clean, root)
    df = pl.read_parquet(root / shard)
    change(df).write_parquet(root / shard)
    return root


def resort(df: pl.DataFrame) -> pl.DataFrame:
    return df.sort("subject_id", "time", nulls_last=False, maintain_order=True)


def at_year(year: int) -> pl.Expr:
    """15 June of YEAR (any year numpy can hold: 400 Gregorian years are always 146,097 days)."""
    cycles = max(0, (year - 2000) // 400)
    days = (dt.date(year - 400 * cycles, 6, 15) - dt.date(1970, 1, 1)).days + 146_097 * cycles
    return pl.lit(days * 86_400 * US, pl.Int64).cast(pl.Datetime("us"))


def only(report, check: str):
    found = [p for p in report.errors + report.warnings if p.check == check]
    assert found, f"no {check} in:\n" + "\n".join(report.lines())
    return found[0]


def subject_with(df: pl.DataFrame, code: str, text: str | None = None) -> int:
    rows = df.filter(pl.col("code") == code)
    if text is not None:
        rows = rows.filter(pl.col("text_value") == text)
    return int(rows["subject_id"][0])


# ---- 1. validator: errors and warnings with file, row, column and value -----------------------------


def _corrupt_page(root: Path) -> None:
    """Flip bytes inside the first data page of the code column; the footer stays intact."""
    path = root / SHARD
    meta = pq.ParquetFile(path).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    column = meta.row_group(0).column(names.index("code"))
    data = bytearray(path.read_bytes())
    start = column.data_page_offset + 40
    data[start : start + 64] = bytes(64)
    path.write_bytes(bytes(data))


def _invalid_utf8(root: Path) -> None:
    import pyarrow as pa

    table = pq.read_table(root / SHARD)
    codes = table.column("code").combine_chunks().cast(pa.binary()).to_pylist()
    codes[5] = b"ICD10/\xff\xfe"
    table = table.set_column(
        table.schema.get_field_index("code"), "code", pa.array(codes, pa.binary()).view(pa.string())
    )
    pq.write_table(table, root / SHARD)


def _duplicate_column(root: Path) -> None:
    import pyarrow as pa

    table = pq.read_table(root / SHARD)
    table = pa.Table.from_arrays([*table.columns, table.column("code")], names=[*table.column_names, "code"])
    pq.write_table(table, root / SHARD)


def _uint64_ids(root: Path, huge: bool) -> None:
    import pyarrow as pa

    table = pq.read_table(root / SHARD)
    ids = table.column("subject_id").to_numpy().astype("uint64")
    if huge:  # the last subject (rows stay sorted) gets an id beyond int64
        ids[ids == ids.max()] = 2**63 + 5
    table = table.set_column(0, "subject_id", pa.array(ids, pa.uint64()))
    pq.write_table(table, root / SHARD)


def _rename(root: Path, suffix: str) -> None:
    (root / OTHER).rename((root / OTHER).with_suffix(suffix))


def _timed_row(df: pl.DataFrame, n: int = 40) -> int:
    """The index of a timed row in the middle of a subject's history."""
    return int(df.with_row_index().filter(pl.col("time").is_not_null())["index"][n])


def _set(df: pl.DataFrame, row: int, **values) -> pl.DataFrame:
    index = pl.int_range(pl.len()) == row
    return df.with_columns(**{c: pl.when(index).then(v).otherwise(pl.col(c)) for c, v in values.items()})


FILE_CASES = {
    # name: (how the copy is broken, check, column, a substring of the value or message)
    "corrupt data page": (_corrupt_page, "unreadable", None, "row group 0"),
    "bytes that are not UTF-8 in code": (_invalid_utf8, "not_utf8", "code", "\\xff"),
    "two columns named code": (_duplicate_column, "duplicate_column", "code", "2 columns are named code"),
    "uint64 ids beyond int64": (
        lambda r: _uint64_ids(r, True),
        "value_out_of_range",
        "subject_id",
        "9223372036854775813",
    ),
    "uint64 ids that fit": (lambda r: _uint64_ids(r, False), "column_type", "subject_id", "uint64"),
    "shard named *.pq": (lambda r: _rename(r, ".pq"), "shard_name", None, "rename it to shard-00001.parquet"),
    "shard named *.PARQUET": (lambda r: _rename(r, ".PARQUET"), "shard_name", None, "not named *.parquet"),
    "a text file under data/": (lambda r: (r / "data" / "README.txt").write_text("x"), "other_file", None, "ignored"),
    "garbage bytes as a shard": (lambda r: (r / SHARD).write_bytes(b"not parquet"), "unreadable", None, "cannot"),
    "missing codes.parquet": (lambda r: (r / cm.CODES_FILE).unlink(), "missing_metadata", None, "code metadata"),
    "garbage codes.parquet": (lambda r: (r / cm.CODES_FILE).write_bytes(b"x"), "codes_schema", None, "cannot read"),
    "dataset.json not JSON": (lambda r: (r / cm.DATASET_FILE).write_text("{oops"), "dataset_json", None, "not valid"),
    "dataset.json a list": (lambda r: (r / cm.DATASET_FILE).write_text("[1]"), "dataset_json", None, "JSON object"),
    "dataset.json mistyped": (
        lambda r: (r / cm.DATASET_FILE).write_text(json.dumps({"dataset_name": 5})),
        "dataset_json",
        "dataset_name",
        "expected a string",
    ),
    "splits with an extra column": (
        lambda r: pl.read_parquet(r / cm.SPLITS_FILE).with_columns(x=1).write_parquet(r / cm.SPLITS_FILE),
        "splits_schema",
        "x",
        "extra column",
    ),
    "splits naming unknown subjects": (
        lambda r: pl.concat(
            [pl.read_parquet(r / cm.SPLITS_FILE), pl.DataFrame({"subject_id": [10**9], "split": ["train"]})]
        ).write_parquet(r / cm.SPLITS_FILE),
        "splits_unknown_subject",
        "subject_id",
        "1000000000",
    ),  # fmt: skip
    "no data folder": (lambda r: shutil.rmtree(r / "data"), "no_data", None, "no data shards"),
}


@pytest.mark.parametrize("name", sorted(FILE_CASES))
def test_file_defects_are_reported_never_raised(name, clean, tmp_path):
    change, check, column, text = FILE_CASES[name]
    root = tmp_path / "meds"
    shutil.copytree(clean, root)
    change(root)
    report = validate_dataset(root)  # never an exception
    problem = only(report, check)
    assert problem.column == column, problem
    assert text in (problem.value or "") + problem.message, problem
    assert problem.file and problem.file in problem.message
    assert report.ok == (cm.CHECKS[check] == "warning"), report.lines()
    if check == "value_out_of_range":
        assert "null_subject_id" not in report.counts  # no false "null" errors after the type error
    if name == "uint64 ids that fit":
        assert report.counts.get("row_checks_skipped", 0) == 0  # castable: the row checks still ran


def _shard_rows(name: str):
    def shard(df: pl.DataFrame) -> pl.DataFrame:
        row = _timed_row(df)
        return ROW_CHANGES[name][0](df, row)

    return shard


ROW_CHANGES = {
    # name: (change(df, row), check, column, value substring)
    "null subject_id": (lambda df, r: _set(df, r, subject_id=pl.lit(None, pl.Int64)), "null_subject_id", "subject_id", "null"),
    "null code": (lambda df, r: _set(df, r, code=pl.lit(None, pl.String)), "null_code", "code", "null"),
    "empty code": (lambda df, r: _set(df, r, code=pl.lit("")), "empty_code", "code", "''"),
    "a 5 MB code": (lambda df, r: _set(df, r, code=pl.lit("X" * 5_000_000)), "code_not_in_metadata", "code",
                    "(5,000,000 characters)"),
    "a code missing from codes.parquet": (lambda df, r: _set(df, r, code=pl.lit("ICD10/Q99.99")),
                                          "code_not_in_metadata", "code", "ICD10/Q99.99"),
    "an unsorted time in year 50000": (lambda df, r: _set(df, r, time=at_year(50000)), "unsorted", "time", "50000-"),
    "a year 50000 time is implausible": (lambda df, r: _set(df, r, time=at_year(50000)), "implausible_time", "time",
                                         "50000-"),
    "an event before MEDS_BIRTH": (lambda df, r: _set(df, r, time=at_year(1901)), "before_birth", "time", "1901-"),
    "an unsorted time": (lambda df, r: _set(df, r, time=at_year(2024)), "unsorted", "time", "2024-06-15"),
    "1e300 in a float64 numeric_value": (
        lambda df, r: _set(df.with_columns(pl.col("numeric_value").cast(pl.Float64)), r, numeric_value=pl.lit(1e300)),
        "value_out_of_range", "numeric_value", "1e+300"),
    "float64 numeric_value that fits": (lambda df, r: df.with_columns(pl.col("numeric_value").cast(pl.Float64)),
                                        "castable_type", "numeric_value", "double"),
    "numeric_value as integers": (lambda df, r: df.with_columns(pl.col("numeric_value").cast(pl.Int64)),
                                  "column_type", "numeric_value", "int64"),
    "text_value as integers": (lambda df, r: df.with_columns(text_value=pl.lit(1, pl.Int64)), "column_type",
                               "text_value", "int64"),
    "subject_id as strings": (lambda df, r: df.with_columns(pl.col("subject_id").cast(pl.String)), "column_type",
                              "subject_id", "string"),
    "time as strings": (lambda df, r: df.with_columns(pl.col("time").cast(pl.String)), "column_type", "time", "string"),
    "time with a timezone": (lambda df, r: df.with_columns(pl.col("time").dt.replace_time_zone("UTC")), "column_type",
                             "time", "tz=UTC"),
    "code as integers": (lambda df, r: df.with_columns(code=pl.lit(7, pl.Int64)), "column_type", "code", "int64"),
    "no time column": (lambda df, r: df.drop("time"), "missing_column", "time", "required"),
    "diagnosis_certainty as booleans": (
        lambda df, r: df.with_columns(pl.col("diagnosis_certainty").is_not_null().alias("diagnosis_certainty")),
        "column_type", "diagnosis_certainty", "bool"),
    "diagnosis_certainty with an unknown value": (
        lambda df, r: df.with_columns(pl.col("diagnosis_certainty").str.replace("suspected", "Suspected")),
        "certainty_value", "diagnosis_certainty", "Suspected"),
    "an exact duplicate row": (lambda df, r: resort(pl.concat([df, df[r]])), "duplicate_rows", None, ""),
    "a year-1800 birth": (lambda df, r: df.with_columns(
        time=pl.when(pl.col("code") == "MEDS_BIRTH").then(at_year(1800)).otherwise(pl.col("time"))),
        "implausible_time", "time", "1800-"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ROW_CHANGES))
def test_row_defects_name_file_row_column_and_value(name, clean, tmp_path):
    _, check, column, text = ROW_CHANGES[name]
    root = broken(clean, tmp_path, _shard_rows(name))
    report = validate_dataset(root)
    problem = only(report, check)
    assert problem.file == SHARD and problem.column == column, problem
    assert text in (problem.value or "") + problem.message, problem
    if check not in ("column_type", "missing_column", "castable_type"):
        assert problem.row is not None and f"row {problem.row}" in problem.message
    if problem.value is not None:
        assert len(problem.value) <= 120  # long values are cut, with their length
    assert report.ok == (cm.CHECKS[check] == "warning"), report.lines()


def test_identical_messages_are_capped_and_counted(clean, tmp_path):
    root = broken(clean, tmp_path, lambda df: df.with_columns(code=pl.lit(None, pl.String)))
    report = validate_dataset(root, max_examples=3)
    shown = [p for p in report.errors if p.check == "null_code"]
    assert len(shown) == 3 and report.counts["null_code"] == pl.read_parquet(root / SHARD).height
    assert f"ERROR [null_code] {report.counts['null_code']} in total, 3 shown above" in report.lines()


# ---- 2. what the study does with what the validator warns about ------------------------------------


def _after_death(df: pl.DataFrame) -> pl.DataFrame:
    deaths = df.filter(pl.col("code") == "MEDS_DEATH").select("subject_id", "time")
    later = deaths.with_columns(pl.col("time") + dt.timedelta(days=30))
    extra = pl.concat([later.with_columns(code=pl.lit(c)) for c in ("ICD10/I10", AMLODIPINE)])
    return resort(pl.concat([df, extra], how="diagonal_relaxed").cast(df.schema))


def test_events_after_death_are_neither_inputs_nor_outcomes(clean, clean_labels, tmp_path):
    root = broken(clean, tmp_path, _after_death)
    added = 2 * pl.read_parquet(clean / SHARD).filter(pl.col("code") == "MEDS_DEATH").height
    assert added > 0
    report = validate_dataset(root)
    assert report.ok and report.counts["after_death"] == added
    assert "subject" in only(report, "after_death").message
    events = cm.Events(root)
    assert events.dropped["after_death"] == added
    cohorts = co.build_tasks(events, (HTN, AML), seed=3)
    for name in ("hypertension", "amlodipine"):
        assert cohorts[name].labels.equals(clean_labels[name]), name  # not one positive more
    assert co.data_notes(events)["records_after_death"] == added
    splits = build_splits(clean, CohortParams(held_out_hospitals=0))[0]
    ids = splits["subject_id"]
    stats_clean = tok.build_store(clean, tok.build_vocabulary(clean, ids), tmp_path / "clean_tokens")
    stats = tok.build_store(events, tok.build_vocabulary(events, ids), tmp_path / "tokens")
    assert stats.tokens == stats_clean.tokens and stats.records_left_out["after_death"] == added


def _end_in_2200(df: pl.DataFrame) -> pl.DataFrame:
    sid = subject_with(df, "COVERAGE/END", "data_cutoff")
    last = (pl.col("subject_id") == sid) & (pl.col("code") == "COVERAGE/END") & (pl.col("text_value") == "data_cutoff")
    return df.with_columns(time=pl.when(last).then(at_year(2200)).otherwise(pl.col("time")))


def test_one_outlier_cannot_move_the_end_of_the_data(clean, clean_labels, tmp_path):
    root = broken(clean, tmp_path, _end_in_2200)
    assert cm.data_window(root).end == cm.data_window(clean).end == dt.datetime(2025, 1, 1)
    report = validate_dataset(root)
    assert report.ok and report.counts["after_data_end"] == 1
    assert only(report, "after_data_end").value == "2200-06-15 00:00:00"
    events = cm.Events(root)
    assert events.dropped == {"after_death": 0, "after_data_end": 1}
    labels = co.build_tasks(events, (HTN, AML), seed=3)
    for name, frame in clean_labels.items():
        assert labels[name].labels.equals(frame), name  # the open period closes at the end of the data


def test_a_coverage_end_in_year_50000_is_an_error_and_the_study_still_reads(clean, clean_labels, tmp_path):
    def change(df):
        sid = subject_with(df, "COVERAGE/END", "data_cutoff")
        last = (pl.col("subject_id") == sid) & (pl.col("text_value") == "data_cutoff")
        return df.with_columns(time=pl.when(last).then(at_year(50000)).otherwise(pl.col("time")))

    root = broken(clean, tmp_path, change)
    problem = only(validate_dataset(root), "implausible_time")
    assert "50000-" in problem.value and problem.row is not None
    labels = co.build_tasks(root, (HTN,), seed=3)["hypertension"].labels
    assert labels.equals(clean_labels["hypertension"])


def test_still_enrolled_patients_are_covered_to_the_end(clean, clean_labels, tmp_path):
    """A COVERAGE/START without an END (still enrolled at the cut-off, as in most extracts) is covered to the
    end of the data: the same labels as when the END at the cut-off is written."""

    def drop_cutoff_ends(df: pl.DataFrame) -> pl.DataFrame:
        return df.filter(pl.col("text_value").fill_null("") != "data_cutoff")

    no_cutoff_ends = broken(broken(clean, tmp_path, drop_cutoff_ends), tmp_path / "b", drop_cutoff_ends, OTHER)
    assert validate_dataset(no_cutoff_ends).ok
    labels = co.build_tasks(no_cutoff_ends, (HTN, AML), seed=3)
    for name, frame in clean_labels.items():
        assert labels[name].labels.equals(frame), name


def test_boolean_certainty_is_never_read_as_confirmed(clean, tmp_path):
    root = broken(clean, tmp_path, _shard_rows("diagnosis_certainty as booleans"))
    with pytest.raises(cm.MEDSFormatError, match=r"shard-00000.parquet: column diagnosis_certainty has type Boolean"):
        co.build_tasks(root, (HTN,), seed=3)


def test_data_end_in_params_overrides_the_rule(clean):
    end = dt.datetime(2024, 7, 1)
    events = cm.Events(clean, end=end)
    assert events.window.rule == "params" and events.window.end == end
    assert events.dropped["after_data_end"] > 0  # the last half year is left out, and counted
    for lf in (events.scan(p) for p in events.paths):
        latest = lf.filter(pl.col("code") != "COVERAGE/END").select(pl.col("time").max()).collect().item()
        assert latest < end


# ---- 3. repair and import --------------------------------------------------------------------------


def _repairable(df: pl.DataFrame) -> pl.DataFrame:
    df = _after_death(df)
    birth = df.filter(pl.col("code") == "MEDS_BIRTH").select("subject_id", "time").head(3)
    before = birth.with_columns(pl.col("time") - dt.timedelta(days=400), code=pl.lit("ICD10/J06.9"))
    df = pl.concat([df, before, df[100:103]], how="diagonal_relaxed").cast(df.schema)
    return resort(df)


def test_clean_drops_exactly_the_repairable_rows(clean, clean_labels, tmp_path):
    root = broken(clean, tmp_path, _repairable)
    report = validate_dataset(root)
    assert not report.ok and report.repairable and report.counts["before_birth"] == 3
    cleaned = clean_dataset(root, tmp_path / "cleaned")
    totals = cleaned.totals()
    assert totals["before_birth"] == 3 and totals["duplicate_rows"] == 3 and totals["after_death"] > 0
    assert cleaned.dropped[SHARD] == totals and not any(cleaned.dropped[OTHER].values())
    assert cleaned.rows_in - cleaned.rows_out == sum(totals.values())
    assert validate_dataset(tmp_path / "cleaned").counts == {}
    for name, frame in clean_labels.items():
        assert co.build_tasks(tmp_path / "cleaned", (HTN, AML), seed=3)[name].labels.equals(frame)
    assert (root / SHARD).is_file() and not validate_dataset(root).ok  # the input is left as it was


def test_the_clean_command_reports_per_file_and_reason(clean, tmp_path):
    root = broken(clean, tmp_path, _repairable)
    done = subprocess.run([sys.executable, "-m", "claimsutil.meds", "clean", str(root), str(tmp_path / "out")],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"{SHARD}: 3 before_birth" in done.stdout and "duplicate_rows" in done.stdout
    assert f"{tmp_path / 'out'}: valid" in done.stdout


def test_import_stops_or_cleans_as_on_invalid_says_and_keeps_the_previous_import(clean, tmp_path):
    root = broken(clean, tmp_path, _repairable)
    dst = tmp_path / "imported"
    import_dataset(clean, dst)
    before = sorted((p.name, p.stat().st_size) for p in dst.rglob("*"))
    with pytest.raises(cm.MEDSValidationError, match="Every error is repairable: set data.on_invalid: clean"):
        import_dataset(root, dst)
    assert sorted((p.name, p.stat().st_size) for p in dst.rglob("*")) == before  # untouched
    report, cleaned = import_dataset(root, dst, on_invalid="clean")
    assert report.ok and cleaned.totals()["before_birth"] == 3
    not_repairable = broken(clean, tmp_path / "x", _shard_rows("null code"))
    with pytest.raises(cm.MEDSValidationError, match="null_code"):
        import_dataset(not_repairable, dst, on_invalid="clean")


# ---- 4. cohorts ----------------------------------------------------------------------------------


def test_every_failing_task_is_reported_at_once(clean):
    specs = (TaskSpec("ghost", ("ICD10/Z99.9",)), TaskSpec("rare", ("ICD10/I63",), horizon_days=20), HTN)
    cohorts = co.build_tasks(clean, specs, seed=3)
    splits = build_splits(clean, CohortParams(held_out_hospitals=0))[0]
    with pytest.raises(co.CohortError) as failure:
        co.check_tasks(clean, cohorts, splits, min_positives=50)
    text = str(failure.value)
    assert "task 'ghost': no event" in text and "task 'rare'" in text and "task 'hypertension'" in text
    assert text.count("train:") == 2  # counts per split for the tasks that have outcomes


def test_data_without_hospitals_holds_out_none_and_says_so(clean, tmp_path):
    root = broken(clean, tmp_path, lambda df: df.filter(~pl.col("code").str.starts_with("HOSPITAL/")))
    root = broken(root, tmp_path / "b", lambda df: df.filter(~pl.col("code").str.starts_with("HOSPITAL/")), OTHER)
    splits, note, _ = build_splits(root, CohortParams(held_out_hospitals=4))
    assert "held_out_hospital" not in splits["split"].to_list() and "no HOSPITAL/ codes" in note


# ---- 5. params -----------------------------------------------------------------------------------

PARAMS = (ROOT / "params.yaml").read_text(encoding="utf-8")
PARAMS_CASES = {
    # name: (replace this, with this, the error must match)
    "a string for a boolean": ("tasks:\n  hypertension:\n    outcome: [ICD10/I10]\n",
                               "tasks:\n  hypertension:\n    outcome: [ICD10/I10]\n    washout_suspected: \"false\"\n",
                               r"tasks.hypertension.washout_suspected = 'false' must be a boolean"),
    "a misspelled section": ("\ncohort:\n", "\ncohrot:\n", r"unknown section\(s\) \['cohrot'\]"),
    "a duplicate key": ("  seed: 17 ", "  seed: 17\n  seed: 18 ", r"line \d+, column \d+: duplicate key 'seed'"),
    "a fractional integer": ("  horizon_days: 365 ", "  horizon_days: 365.9 ", r"cohort.horizon_days = 365.9 must be an integer"),
    "a boolean integer": ("  patients: 130000 ", "  patients: true ", r"synth.patients = True must be an integer"),
    "words for an integer": ("  horizon_days: 365 ", "  horizon_days: \"a year\" ", r"cohort.horizon_days = 'a year' must be"),
    "no tasks": (PARAMS[PARAMS.index("\ntasks:\n"):], "\ntasks: {}\n", r"tasks = \{\} must map at least one task"),
    "a task name with a slash": ("  ckd:\n", "  ckd/stage3:\n", r"tasks.ckd/stage3.name = 'ckd/stage3' must be letters"),
    "negative min_positives": ("  min_positives: 10 ", "  min_positives: -3 ", r"cohort.min_positives = -3 must be >= 1"),
    "negative min_cell": ("  min_cell: 10 ", "  min_cell: -1 ", r"describe.min_cell = -1 must be >= 1"),
    "unsorted age bands": ("[20, 40, 50, 60, 70, 80]", "[40, 20, 50]", r"describe.age_bands = \(40, 20, 50\) must be strictly"),
    "invalid YAML": ("profile: demo", "profile: [demo", r"line \d+, column \d+: invalid YAML"),
    "splits not summing to 1": ("validation: 0.15, test: 0.15", "validation: 0.15, test: 0.05", r"sum to 1"),
    "an unknown key": ("  min_count: 5 ", "  min_cuont: 5 ", r"unknown key\(s\) \['min_cuont'\] in section 'tokenize'"),
    "an unknown scale key": ("  xs: {lr: 0.015}", "  xs: {lr: 0.003, layers: 9}", r"unknown key\(s\) \['layers'\] in scales.xs"),
    "a boolean count": ("  budget_seeds: 1 ", "  budget_seeds: true ", r"cohort.budget_seeds = True must be an integer"),
    "words for a rate": ("  lr: 0.002 ", "  lr: fast ", r"pretrain.lr = 'fast' must be a number"),
    "an unknown choice": ("  repeats: first_per_episode", "  repeats: some", r"tokenize.repeats = 'some' must be one of"),
    "an impossible data end": ("  end: null", "  end: 2024-13-01", r"data.end = .* must be a date"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PARAMS_CASES))
def test_bad_params_name_the_key_and_value(name, tmp_path):
    old, new, message = PARAMS_CASES[name]
    assert old in PARAMS, f"{name}: params.yaml has no {old!r}"
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ParamsError, match=message):
        load_params(path)
    done = subprocess.run([sys.executable, "-m", "claimsutil.config", "check", str(path)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 2 and done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_the_committed_params_load():
    params = load_params(ROOT / "params.yaml")
    assert params.tasks and dataclasses.asdict(params)


# ---- 6. exit codes ---------------------------------------------------------------------------------


def test_exit_codes_say_valid_errors_or_usage(clean, tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "claimsutil.meds", *args], capture_output=True, text=True,
                              check=False)  # fmt: skip

    assert run("validate", str(clean)).returncode == 0
    root = tmp_path / "meds"
    shutil.copytree(clean, root)
    _corrupt_page(root)
    failed = run("validate", str(root))
    assert failed.returncode == 1 and "Traceback" not in failed.stdout + failed.stderr
    assert "ERROR [unreadable] data/shard-00000.parquet" in failed.stdout
    assert run("validate", str(tmp_path / "nowhere")).returncode == 2
    assert run("validate", str(clean), "--end", "soon").returncode == 2
    synth = subprocess.run([sys.executable, "-m", "claimsutil.synth", "--out", str(tmp_path / "s"), "--patients", "0"],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert synth.returncode == 2 and "synth.patients = 0 must be >= 1" in synth.stderr
