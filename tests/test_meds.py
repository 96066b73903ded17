"""The MEDS validator, importer and readers, on hand-made datasets and on meds-testing-helpers samples."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from claimsutil import meds as cm
from claimsutil.meds import cli

MEDS_TYPES = {
    "subject_id": pa.int64(),
    "time": pa.timestamp("us"),
    "code": pa.string(),
    "numeric_value": pa.float32(),
    "text_value": pa.large_string(),
}
DERIVE = object()  # write_meds: build the metadata file from the shards


def ev(subject_id: int | None, time: str | None, code: str | None, value: float | None = None, **extra) -> dict:
    """One event row; TIME is an ISO date(time) or None for a static event."""
    when = None if time is None else datetime.fromisoformat(time)
    return {"subject_id": subject_id, "time": when, "code": code, "numeric_value": value, **extra}


def _table(rows: list[dict], types: dict[str, pa.DataType]) -> pa.Table:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    arrays = {c: pa.array([row.get(c) for row in rows], type=types.get(c, MEDS_TYPES.get(c))) for c in columns}
    return pa.table(arrays)


def write_meds(
    root: Path,
    shards: dict[str, list[dict]],
    codes: list[str] | None | object = DERIVE,
    splits: dict[int, str] | None | object = DERIVE,
    dataset: dict | str | None = DERIVE,
    types: dict[str, pa.DataType] | None = None,
) -> Path:
    """Write a MEDS dataset: SHARDS maps a path under ROOT to its rows; None for a metadata file omits it."""
    for rel, rows in shards.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(_table(rows, types or {}), root / rel)
    all_rows = [row for rows in shards.values() for row in rows]
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    if codes is DERIVE:
        codes = sorted({row["code"] for row in all_rows if isinstance(row.get("code"), str)})
    if codes is not None:
        table = pa.table(
            {"code": pa.array(codes, pa.string()), "description": pa.array([None] * len(codes), pa.string())}
        )
        pq.write_table(table, root / cm.CODES_FILE)
    if splits is DERIVE:
        splits = {row["subject_id"]: "train" for row in all_rows if row.get("subject_id") is not None}
    if splits is not None:
        table = pa.table({"subject_id": pa.array(list(splits), pa.int64()), "split": list(splits.values())})
        pq.write_table(table, root / cm.SPLITS_FILE)
    if dataset is DERIVE:
        dataset = {"dataset_name": "hand-made", "meds_version": "0.4.1"}
    if dataset is not None:
        text = dataset if isinstance(dataset, str) else json.dumps(dataset)
        (root / cm.DATASET_FILE).write_text(text, encoding="utf-8")
    return root


def subject(sid: int, *events: tuple) -> list[dict]:
    """A well-formed subject: a static code, MEDS_BIRTH in 1980, then EVENTS as (time, code) pairs."""
    return [
        ev(sid, None, "GENDER/F"),
        ev(sid, "1980-01-01", "MEDS_BIRTH"),
        *(ev(sid, t, c) for t, c in events),
    ]


def clean_shards() -> dict[str, list[dict]]:
    return {
        "data/shard-0.parquet": subject(1, ("2020-01-05", "ICD10/I10"), ("2020-02-01", "ICD10/E11"))
        + subject(2, ("2021-03-01", "ICD10/I10")),
        "data/shard-1.parquet": subject(3, ("2019-07-07", "YJ/2171022F1053")),
    }


def only(problems: list[cm.Problem], check: str) -> list[cm.Problem]:
    return [p for p in problems if p.check == check]


def the_one(report: cm.ValidationReport, check: str) -> cm.Problem:
    found = only(report.errors + report.warnings, check)
    assert len(found) == 1, report.lines()
    return found[0]


# ---- hand-made datasets --------------------------------------------------------------------------


def test_clean_dataset_has_no_problems(tmp_path: Path) -> None:
    report = cm.validate_dataset(write_meds(tmp_path, clean_shards()))
    assert report.ok and report.errors == [] and report.warnings == [] and report.counts == {}
    assert (report.n_shards, report.n_rows, report.n_subjects) == (2, 10, 3)
    assert report.summary() == "0 errors, 0 warnings in 2 shards (10 rows, 3 subjects)"


def test_nested_shards_and_extra_columns_are_allowed(tmp_path: Path) -> None:
    shards = {"data/train/0.parquet": [{**row, "diagnosis_certainty": None} for row in subject(1)]}
    shards["data/held_out/0.parquet"] = subject(2, ("2001-01-01", "ICD10/I10"))
    report = cm.validate_dataset(write_meds(tmp_path, shards))
    assert report.ok and report.counts == {} and report.n_shards == 2


@pytest.mark.parametrize("column", ["subject_id", "time", "code"])
def test_missing_required_column(tmp_path: Path, column: str) -> None:
    rows = [{k: v for k, v in row.items() if k != column} for row in subject(1)]
    report = cm.validate_dataset(write_meds(tmp_path, {"data/0.parquet": rows}, codes=["MEDS_BIRTH", "GENDER/F"]))
    problem = the_one(report, "missing_column")
    assert (problem.severity, problem.file, problem.row, problem.column) == (
        "error",
        "data/0.parquet",
        None,
        column,
    )
    assert not report.ok
    assert the_one(report, "row_checks_skipped").file == "data/0.parquet"


@pytest.mark.parametrize(
    ("column", "dtype", "check", "rows_checked"),
    [
        ("subject_id", pa.int32(), "column_type", True),
        ("subject_id", pa.string(), "column_type", False),
        ("time", pa.timestamp("ns"), "column_type", True),
        ("time", pa.timestamp("us", tz="UTC"), "column_type", True),
        ("time", pa.timestamp("ms"), "column_type", True),
        ("code", pa.large_string(), None, True),
        ("numeric_value", pa.float64(), "castable_type", True),
        ("numeric_value", pa.int64(), "column_type", True),
        ("text_value", pa.int64(), "column_type", True),
        ("text_value", pa.string(), None, True),
    ],
)
def test_column_types(tmp_path: Path, column: str, dtype: pa.DataType, check: str | None, rows_checked: bool) -> None:
    rows = [{**row, "text_value": None} for row in subject(1, ("2020-01-01", "LAB/HB"))]
    rows[-1]["numeric_value"] = 13.0
    if dtype == pa.string() and column == "subject_id":
        rows = [{**row, "subject_id": "1"} for row in rows]
    report = cm.validate_dataset(write_meds(tmp_path, {"data/0.parquet": rows}, types={column: dtype}, splits=None))
    found = only(report.errors + report.warnings, check) if check else []
    assert len(found) == (1 if check else 0), report.lines()
    if check:
        problem = found[0]
        assert (problem.file, problem.row, problem.column, problem.value) == (
            "data/0.parquet",
            None,
            column,
            str(dtype),
        )
        assert problem.severity == cm.CHECKS[check]
        assert report.ok == (check == "castable_type")
    assert ("row_checks_skipped" in report.counts) != rows_checked


def test_non_string_code_is_an_error(tmp_path: Path) -> None:
    rows = [ev(1, "2020-01-01", 7), ev(1, "2020-01-02", 8)]
    report = cm.validate_dataset(write_meds(tmp_path, {"data/0.parquet": rows}, codes=[], types={"code": pa.int64()}))
    problem = the_one(report, "column_type")
    assert (problem.column, problem.value) == ("code", "int64")
    assert "row_checks_skipped" in report.counts and not report.ok


@pytest.mark.parametrize("column", ["subject_id", "code"])
def test_null_required_value(tmp_path: Path, column: str) -> None:
    rows = subject(1, ("2020-01-01", "ICD10/I10"), ("2020-01-02", "ICD10/E11"))
    rows[3][column] = None
    report = cm.validate_dataset(write_meds(tmp_path, {"data/0.parquet": rows}))
    problem = the_one(report, f"null_{column}")
    assert (problem.severity, problem.file, problem.row, problem.column, problem.value) == (
        "error",
        "data/0.parquet",
        3,
        column,
        "null",
    )
    assert problem.message.startswith(f"data/0.parquet row 3, column {column}: value null")


def test_event_before_birth(tmp_path: Path) -> None:
    rows = [
        ev(42, None, "GENDER/M"),
        ev(42, "1999-03-02", "ICD10/I10"),
        ev(42, "2001-05-06", "MEDS_BIRTH"),
        ev(42, "2002-01-01", "ICD10/I10"),
    ]
    shards = {"data/shard-00000.parquet": subject(1), "data/shard-00001.parquet": rows}
    problem = the_one(cm.validate_dataset(write_meds(tmp_path, shards)), "before_birth")
    assert (problem.file, problem.row, problem.column, problem.value) == (
        "data/shard-00001.parquet",
        1,
        "time",
        "1999-03-02 00:00:00",
    )
    assert problem.message == (
        "data/shard-00001.parquet row 1, column time: value 1999-03-02 00:00:00 is before "
        "MEDS_BIRTH 2001-05-06 00:00:00 of subject 42"
    )


def test_every_occurrence_is_counted_but_examples_are_capped(tmp_path: Path) -> None:
    early = [ev(5, f"1970-01-{day:02d}", "ICD10/I10") for day in range(1, 31)]
    rows = [ev(5, None, "GENDER/F"), *early, ev(5, "1980-01-01", "MEDS_BIRTH")]
    report = cm.validate_dataset(write_meds(tmp_path, {"data/0.parquet": rows}), max_examples=4)
    assert report.counts == {"before_birth": 30}
    assert [p.row for p in report.errors] == [1, 2, 3, 4]
    assert report.n_errors == 30
    assert "ERROR [before_birth] 30 in total, 4 shown above" in report.lines()


@pytest.mark.parametrize(
    ("rows", "row", "column", "value"),
    [
        (subject(2) + subject(1), 2, "subject_id", "1"),
        (subject(1, ("2020-02-01", "A"), ("2020-01-01", "B")), 3, "time", "2020-01-01 00:00:00"),
        (subject(1, ("2020-02-01", "A")) + [ev(1, None, "GENDER/X")], 3, "time", "null"),
    ],
    ids=["subjects", "times", "static-after-timed"],
)
def test_unsorted_shard(tmp_path: Path, rows: list[dict], row: int, column: str, value: str) -> None:
    report = cm.validate_dataset(write_meds(tmp_path, {"data/0.parquet": rows}))
    problem = the_one(report, "unsorted")
    assert (problem.severity, problem.file, problem.row, problem.column, problem.value) == (
        "error",
        "data/0.parquet",
        row,
        column,
        value,
    )
    assert report.counts["unsorted"] >= 1


def test_unsorted_counts_every_offending_row_but_shows_the_first(tmp_path: Path) -> None:
    rows = subject(3) + subject(2) + subject(1)
    report = cm.validate_dataset(write_meds(tmp_path, {"data/0.parquet": rows}))
    assert report.counts == {"unsorted": 2}
    assert the_one(report, "unsorted").row == 2


def test_subject_split_across_shards(tmp_path: Path) -> None:
    shards = {
        "data/a.parquet": subject(1) + subject(7),
        "data/b.parquet": subject(2) + [ev(7, "2020-01-01", "ICD10/I10")],
    }
    report = cm.validate_dataset(write_meds(tmp_path, shards))
    problem = the_one(report, "subject_in_multiple_shards")
    assert (problem.file, problem.row, problem.column, problem.value) == (
        "data/b.parquet",
        2,
        "subject_id",
        "7",
    )
    assert "data/a.parquet" in problem.message and problem.message.startswith("data/b.parquet")
    assert report.n_subjects == 3


@pytest.mark.parametrize("missing", ["codes", "splits", "dataset"])
def test_missing_metadata_file_is_a_warning(tmp_path: Path, missing: str) -> None:
    write_meds(tmp_path, clean_shards(), **{missing: None})
    report = cm.validate_dataset(tmp_path)
    path = {"codes": cm.CODES_FILE, "splits": cm.SPLITS_FILE, "dataset": cm.DATASET_FILE}[missing]
    problem = the_one(report, "missing_metadata")
    assert (problem.severity, problem.file, problem.row) == ("warning", path, None)
    assert report.ok and report.counts == {"missing_metadata": 1}


@pytest.mark.parametrize("layout", ["no-data-folder", "empty-data-folder"])
def test_no_shards_is_an_error(tmp_path: Path, layout: str) -> None:
    write_meds(tmp_path, {}, codes=[], splits={})
    if layout == "empty-data-folder":
        (tmp_path / "data" / "train").mkdir(parents=True)
    report = cm.validate_dataset(tmp_path)
    assert the_one(report, "no_data").file == "data"
    assert not report.ok and report.n_shards == 0


def test_unreadable_shard(tmp_path: Path) -> None:
    write_meds(tmp_path, clean_shards())
    (tmp_path / "data" / "shard-2.parquet").write_bytes(b"not parquet at all")
    report = cm.validate_dataset(tmp_path)
    assert the_one(report, "unreadable").file == "data/shard-2.parquet"
    assert report.n_shards == 3 and not report.ok


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        (pa.table({"description": ["x"]}), "code", None),
        (pa.table({"code": pa.array([1], pa.int64())}), "code", "int64"),
        (pa.table({"code": ["A"], "parent_codes": pa.array([1], pa.int64())}), "parent_codes", "int64"),
    ],
)
def test_code_metadata_with_wrong_schema(tmp_path: Path, table: pa.Table, column: str, value: str | None) -> None:
    write_meds(tmp_path, clean_shards())
    pq.write_table(table, tmp_path / cm.CODES_FILE)
    report = cm.validate_dataset(tmp_path)
    problem = the_one(report, "codes_schema")
    assert (problem.severity, problem.file, problem.column, problem.value) == (
        "error",
        cm.CODES_FILE,
        column,
        value,
    )


def test_codes_absent_from_metadata_are_warnings_with_first_appearance(tmp_path: Path) -> None:
    first = subject(1, *((f"2020-01-{d:02d}", f"X/{d}") for d in range(1, 8)))
    second = subject(2, ("2020-01-01", "X/1"), *((f"2020-02-{d:02d}", f"Y/{d}") for d in range(1, 6)))
    shards = {"data/0.parquet": first, "data/1.parquet": second}
    report = cm.validate_dataset(write_meds(tmp_path, shards, codes=["MEDS_BIRTH", "GENDER/F"]))
    assert report.ok and report.counts == {"code_not_in_metadata": 12}
    examples = only(report.warnings, "code_not_in_metadata")
    assert len(examples) == cm.MAX_CODE_EXAMPLES
    assert (examples[0].file, examples[0].row, examples[0].column, examples[0].value) == (
        "data/0.parquet",
        2,
        "code",
        "X/1",
    )
    assert "(2 rows in the dataset; first here)" in examples[0].message
    assert (examples[7].file, examples[7].row, examples[7].value) == ("data/1.parquet", 3, "Y/1")


def test_empty_code_metadata_makes_every_code_a_warning(tmp_path: Path) -> None:
    report = cm.validate_dataset(write_meds(tmp_path, clean_shards(), codes=[]))
    assert report.ok and report.counts == {"code_not_in_metadata": 5}


def test_exact_duplicate_rows(tmp_path: Path) -> None:
    rows = subject(1, ("2020-01-01", "ICD10/I10"), ("2020-01-01", "ICD10/E11"), ("2020-01-01", "ICD10/I10"))
    rows.append(ev(1, "2020-01-01", "ICD10/I10"))
    report = cm.validate_dataset(write_meds(tmp_path, {"data/0.parquet": rows}))
    assert report.ok and report.counts == {"duplicate_rows": 2}
    problem = the_one(report, "duplicate_rows")
    assert (problem.severity, problem.file, problem.row) == ("warning", "data/0.parquet", 4)
    assert "exact duplicate of row 2 (2 duplicate rows in this file)" in problem.message


def test_rows_differing_only_in_value_are_not_duplicates(tmp_path: Path) -> None:
    rows = subject(1) + [ev(1, "2020-01-01", "LAB/HB", 13.0), ev(1, "2020-01-01", "LAB/HB", 14.0)]
    assert cm.validate_dataset(write_meds(tmp_path, {"data/0.parquet": rows})).counts == {}


def test_split_subjects_absent_from_data_are_warnings(tmp_path: Path) -> None:
    report = cm.validate_dataset(write_meds(tmp_path, clean_shards(), splits={1: "train", 99: "held_out", 3: "tuning"}))
    problem = the_one(report, "splits_unknown_subject")
    assert (problem.severity, problem.file, problem.row, problem.column, problem.value) == (
        "warning",
        cm.SPLITS_FILE,
        1,
        "subject_id",
        "99",
    )
    assert report.ok


@pytest.mark.parametrize(
    ("table", "column"),
    [
        (pa.table({"subject_id": pa.array([1], pa.int64())}), "split"),
        (pa.table({"subject_id": pa.array([1], pa.int64()), "split": [1]}), "split"),
        (pa.table({"subject_id": ["1"], "split": ["train"]}), "subject_id"),
        (pa.table({"subject_id": pa.array([1], pa.int64()), "split": ["train"], "fold": [0]}), "fold"),
    ],
    ids=["missing", "mistyped-split", "mistyped-id", "extra-column"],
)
def test_subject_splits_with_wrong_schema(tmp_path: Path, table: pa.Table, column: str) -> None:
    write_meds(tmp_path, clean_shards())
    pq.write_table(table, tmp_path / cm.SPLITS_FILE)
    report = cm.validate_dataset(tmp_path)
    problem = the_one(report, "splits_schema")
    assert (problem.severity, problem.file, problem.column) == ("error", cm.SPLITS_FILE, column)


@pytest.mark.parametrize(
    ("text", "column"),
    [('{"dataset_name": "x",', None), ("[1, 2]", None), ('{"dataset_name": 3}', "dataset_name")],
    ids=["truncated", "not-an-object", "mistyped-field"],
)
def test_bad_dataset_json_is_an_error(tmp_path: Path, text: str, column: str | None) -> None:
    report = cm.validate_dataset(write_meds(tmp_path, clean_shards(), dataset=text))
    problem = the_one(report, "dataset_json")
    assert (problem.severity, problem.file, problem.column) == ("error", cm.DATASET_FILE, column)


def test_unknown_dataset_json_keys_are_allowed(tmp_path: Path) -> None:
    report = cm.validate_dataset(write_meds(tmp_path, clean_shards(), dataset={"extension_columns": []}))
    assert report.counts == {}


def test_every_check_has_a_severity() -> None:
    assert set(cm.CHECKS.values()) == {cm.ERROR, cm.WARNING}


# ---- command line --------------------------------------------------------------------------------

SUMMARY = re.compile(r"^(\d+) errors, (\d+) warnings in (\d+) shards \((\d+) rows, (\d+) subjects\)$")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "claimsutil.meds", *args], capture_output=True, text=True, check=False)


def test_cli_clean_dataset_exits_0(tmp_path: Path) -> None:
    result = run_cli("validate", str(write_meds(tmp_path, clean_shards())))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "0 errors, 0 warnings in 2 shards (10 rows, 3 subjects)" and len(lines) == 2
    assert lines[0].startswith("time checks: the data end on 2021-04-01 (inferred")


def test_cli_warnings_only_exits_0(tmp_path: Path) -> None:
    result = run_cli("validate", str(write_meds(tmp_path, clean_shards(), codes=None, splits=None)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert SUMMARY.match(lines[-1]).groups()[:2] == ("0", "2")
    assert sum(line.startswith("WARNING [missing_metadata]") for line in lines) == 2


def test_cli_errors_exit_1_and_print_every_example(tmp_path: Path) -> None:
    rows = subject(1, ("2020-01-01", "ICD10/I10"))
    rows[2]["code"] = None
    rows += [ev(None, "2020-01-02", "ICD10/I10")] * 3
    result = run_cli("validate", str(write_meds(tmp_path, {"data/0.parquet": rows})), "--max-examples", "2")
    assert result.returncode == 1, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "ERROR [null_code] data/0.parquet row 2, column code: value null (MEDS requires a value)" in lines
    assert sum(line.startswith("ERROR [null_subject_id] data/0.parquet row") for line in lines) == 2
    assert "ERROR [null_subject_id] 3 in total, 2 shown above" in lines
    assert SUMMARY.match(lines[-1]).group(1) == "4"


def test_cli_not_a_directory_exits_2(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    result = run_cli("validate", str(tmp_path / "f"))
    assert result.returncode == 2
    assert "usage:" in result.stderr and "not a directory" in result.stderr


# Further usage errors in-process: each interpreter start pays for importing meds (about 2 s).
@pytest.mark.parametrize(
    "args",
    [
        ["validate", "no/such/dir"],
        [],
        ["validate"],
        ["frobnicate", "."],
        ["validate", ".", "--max-examples", "-1"],
    ],
)
def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture, args: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_cli_main_in_process(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["validate", str(write_meds(tmp_path, clean_shards())), "--max-examples", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "0 errors, 0 warnings in 2 shards (10 rows, 3 subjects)" and len(lines) == 2


# ---- import --------------------------------------------------------------------------------------


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_import_copies_shards_and_metadata(tmp_path: Path) -> None:
    src = write_meds(tmp_path / "src", {**clean_shards(), "data/nested/x.parquet": subject(4)}, codes=None)
    (src / "data" / "README.txt").write_text("not a shard")
    dst = tmp_path / "dst"
    (dst / "data").mkdir(parents=True)
    (dst / "data" / "stale.parquet").write_text("left over from an earlier run")
    report, cleaned = cm.import_dataset(src, dst)
    assert report.ok and report.counts == {"missing_metadata": 1, "other_file": 1} and cleaned is None
    assert the_one(report, "other_file").file == "data/README.txt"
    assert files_under(dst) == [
        "data/nested/x.parquet",
        "data/shard-0.parquet",
        "data/shard-1.parquet",
        cm.DATASET_FILE,
        cm.SPLITS_FILE,
    ]
    assert (dst / "data" / "shard-0.parquet").read_bytes() == (src / "data" / "shard-0.parquet").read_bytes()
    assert cm.validate_dataset(dst).counts == {"missing_metadata": 1}  # only shards are imported


def test_import_of_a_broken_dataset_raises_and_leaves_the_previous_import(tmp_path: Path) -> None:
    rows = subject(1, ("2020-01-01", "ICD10/I10"))
    rows[2]["code"] = None
    src = write_meds(tmp_path / "src", {"data/0.parquet": rows})
    dst = write_meds(tmp_path / "dst", clean_shards())  # what an earlier, good import left
    before = {name: (dst / name).read_bytes() for name in files_under(dst)}
    with pytest.raises(cm.MEDSValidationError) as info:
        cm.import_dataset(src, dst)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "data/0.parquet row 2, column code: value null" in message
    assert message.splitlines()[-1] == "1 errors, 0 warnings in 1 shards (3 rows, 1 subjects)"
    assert {name: (dst / name).read_bytes() for name in files_under(dst)} == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no staging folder left behind
    with pytest.raises(cm.MEDSValidationError):
        cm.import_dataset(src, tmp_path / "new")
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_import_refuses_overlapping_destination(tmp_path: Path, where: str) -> None:
    src = write_meds(tmp_path / "src", clean_shards())
    dst = {"same": src, "inside": src / "copy", "parent": tmp_path}[where]
    with pytest.raises(ValueError, match="overlaps"):
        cm.import_dataset(src, dst)
    assert cm.validate_dataset(src).ok


# ---- datasets from meds-testing-helpers ----------------------------------------------------------


def test_static_sample_is_valid(static_meds: Path) -> None:
    report = cm.validate_dataset(static_meds)
    assert report.ok, report.lines()
    assert set(report.counts) == {"code_not_in_metadata"}
    assert (report.n_shards, report.n_rows, report.n_subjects) == (4, 62, 6)


def test_generated_sample_is_valid_with_warnings(generated_meds: Path) -> None:
    report = cm.validate_dataset(generated_meds)
    assert report.ok, report.lines()
    assert report.counts["duplicate_rows"] > 0
    assert report.counts["code_not_in_metadata"] > 0  # its codes.parquet is empty
    # That generator's timelines run past death and past the end of most data: warnings the study treats.
    assert set(report.counts) <= {"duplicate_rows", "code_not_in_metadata", "after_death", "after_data_end"}
    assert report.n_subjects == 200


@pytest.mark.parametrize("name", ["static_meds", "generated_meds"])
def test_import_of_samples_validates_identically(request: pytest.FixtureRequest, tmp_path: Path, name: str) -> None:
    src = request.getfixturevalue(name)
    report, _ = cm.import_dataset(src, tmp_path / "copy")
    copy = cm.validate_dataset(tmp_path / "copy")
    assert copy == report and copy.ok
    shards = [p.relative_to(src) for p in cm.shard_paths(src)]
    assert [p.relative_to(tmp_path / "copy") for p in cm.shard_paths(tmp_path / "copy")] == shards


@pytest.mark.parametrize("name", ["static_meds", "generated_meds"])
def test_readers_on_samples(request: pytest.FixtureRequest, name: str) -> None:
    root = request.getfixturevalue(name)
    report = cm.validate_dataset(root)
    assert len(cm.shard_paths(root)) == report.n_shards
    assert "code" in cm.read_code_metadata(root).column_names
    splits = cm.read_subject_splits(root)
    assert splits.column_names == ["subject_id", "split"] and splits.num_rows == report.n_subjects
    assert isinstance(cm.read_dataset_metadata(root), dict)


def test_static_sample_shards_are_nested(static_meds: Path) -> None:
    names = [p.relative_to(static_meds).as_posix() for p in cm.shard_paths(static_meds)]
    assert names == [
        "data/held_out/0.parquet",
        "data/train/0.parquet",
        "data/train/1.parquet",
        "data/tuning/0.parquet",
    ]


def test_layout_constants_are_the_meds_packages():
    import meds

    from claimsutil.meds.validate import REQUIRED_COLUMNS

    layout = (meds.data_subdirectory, meds.code_metadata_filepath, meds.subject_splits_filepath)
    assert (cm.DATA_DIR, cm.CODES_FILE, cm.SPLITS_FILE, cm.DATASET_FILE) == (*layout, meds.dataset_metadata_filepath)
    assert (cm.BIRTH_CODE, cm.DEATH_CODE) == (meds.birth_code, meds.death_code)
    assert cm.SPLIT_NAMES == (meds.train_split, meds.tuning_split, meds.held_out_split)
    assert tuple(meds.DataSchema.required_columns()) == REQUIRED_COLUMNS
