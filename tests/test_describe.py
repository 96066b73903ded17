"""The data-description stage: exact numbers on a hand-built MEDS dataset, and notebook 00 end to end.

The dataset (data cutoff 2024-01-01, so the reference year is 2023, mid-year 2023-07-01):

    shard train/0:  1  F  born 1950-03-15  H01  covered 2020-01-01..2024-01-01
                    2  M  born 1983-07-02  H01  covered 2019-01-01..2020-01-01, 2021-01-01..2024-01-01 (gap)
                    3  F  born 2010-01-01  H02  covered 2018-01-01..2023-03-01 (not covered at mid-year)
    shard held_out/0:
                    4  M  born 1940-12-31  H02  covered 2015-01-01..2023-09-15, died 2023-09-14
                    5  F  born 1965-05-05  H02  covered from 2022-01-01, no END (open)
                    6  no sex, birth, hospital or START; an orphan COVERAGE/END; one 2023 diagnosis
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import nbformat
import papermill
import polars as pl
import pytest

from claimsutil import describe, report
from claimsutil.config import project_root
from claimsutil.meds import CERTAINTY_COLUMN, CODES_FILE, SPLITS_FILE

NOTEBOOK = project_root() / "notebooks" / "00_data.ipynb"
S = "suspected"
AMLODIPINE, LOSARTAN, OLMESARTAN = "YJ/2171022F1053", "YJ/2149039F1040", "YJ/2149044F1032"
TELMISARTAN, PREGABALIN = "YJ/2149042F1033", "YJ/1190017F1037"


def d(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _static(subject: int, *codes: str) -> list[tuple]:
    return [(subject, None, code, None, None, None) for code in codes]


def _receipt(subject: int, day: str, *codes: str | tuple[str, str]) -> list[tuple]:
    """Events of one receipt; a (code, "suspected") pair marks a suspected diagnosis."""
    rows = []
    for code in codes:
        code, certainty = code if isinstance(code, tuple) else (code, None)
        value = 30.0 if code.startswith("YJ/") else None
        rows.append((subject, d(day), code, value, None, certainty))
    return rows


def _event(subject: int, day: str, code: str, text: str | None = None) -> list[tuple]:
    return [(subject, d(day), code, None, text, None)]


def _patients_shard0() -> list[tuple]:
    return [
        *_static(1, "GENDER/F", "HOSPITAL/H01"),
        *_event(1, "1950-03-15", "MEDS_BIRTH"),
        *_event(1, "2020-01-01", "COVERAGE/START"),
        *_receipt(1, "2022-05-01", "ICD10/I10", AMLODIPINE),
        *_receipt(1, "2023-02-01", "ICD10/I10", AMLODIPINE, ("ICD10/E11.9", S)),
        *_receipt(1, "2023-08-01", "ICD10/I10", LOSARTAN, "ICD10/E11.9"),
        *_event(1, "2024-01-01", "COVERAGE/END", "data_cutoff"),
        *_static(2, "GENDER/M", "HOSPITAL/H01"),
        *_event(2, "1983-07-02", "MEDS_BIRTH"),
        *_event(2, "2019-01-01", "COVERAGE/START"),
        *_receipt(2, "2019-06-01", ("ICD10/I10", S)),
        *_event(2, "2020-01-01", "COVERAGE/END", "insurance_change"),
        *_event(2, "2021-01-01", "COVERAGE/START"),
        *_receipt(2, "2021-03-01", OLMESARTAN, "ICD10/I10"),
        *_receipt(2, "2023-04-01", "ICD10/I10", OLMESARTAN, ("ICD10/N18.9", S)),
        *_event(2, "2024-01-01", "COVERAGE/END", "data_cutoff"),
        *_static(3, "GENDER/F", "HOSPITAL/H02"),
        *_event(3, "2010-01-01", "MEDS_BIRTH"),
        *_event(3, "2018-01-01", "COVERAGE/START"),
        *_receipt(3, "2022-01-01", "ICD10/J45"),
        *_receipt(3, "2023-01-01", AMLODIPINE, LOSARTAN, "ICD10/I10"),
        *_event(3, "2023-03-01", "COVERAGE/END", "insurance_change"),
    ]


def _patients_shard1() -> list[tuple]:
    return [
        *_static(4, "GENDER/M", "HOSPITAL/H02"),
        *_event(4, "1940-12-31", "MEDS_BIRTH"),
        *_event(4, "2015-01-01", "COVERAGE/START"),
        *_receipt(4, "2023-03-01", "ICD10/I50", "ICD10/I10", TELMISARTAN),
        *_receipt(4, "2023-06-01", ("ICD10/I48", S), ("ICD10/I10", S)),
        *_event(4, "2023-09-14", "MEDS_DEATH"),
        *_event(4, "2023-09-15", "COVERAGE/END", "death"),
        *_static(5, "GENDER/F", "HOSPITAL/H02"),
        *_event(5, "1965-05-05", "MEDS_BIRTH"),
        *_event(5, "2022-01-01", "COVERAGE/START"),
        *_receipt(5, "2022-02-01", "ICD10/E78.5"),
        *_receipt(5, "2023-05-01", "ICD10/E78.5", PREGABALIN),
        *_event(6, "2016-01-01", "COVERAGE/END"),
        *_receipt(6, "2023-10-01", "ICD10/M81"),
    ]


SCHEMA = {
    "subject_id": pl.Int64,
    "time": pl.Datetime("us"),
    "code": pl.String,
    "numeric_value": pl.Float32,
    "text_value": pl.String,
    CERTAINTY_COLUMN: pl.String,
}


def write_meds(root: Path, *, full: bool = True) -> Path:
    """The dataset above under ROOT; not FULL: without HOSPITAL and COVERAGE codes, the certainty column
    and codes.parquet."""
    for name, rows in (("train/0", _patients_shard0()), ("held_out/0", _patients_shard1())):
        shard = pl.DataFrame(rows, schema=SCHEMA, orient="row")
        if not full:
            shard = shard.filter(~pl.col("code").str.contains("^(HOSPITAL|COVERAGE)/")).drop(CERTAINTY_COLUMN)
        path = root / "data" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        shard.write_parquet(path)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    (root / "metadata" / "dataset.json").write_text(json.dumps({"dataset_name": "test"}), encoding="utf-8")
    splits = {"subject_id": [1, 2, 3, 4, 5, 6], "split": ["train"] * 3 + ["held_out"] * 3}
    pl.DataFrame(splits).write_parquet(root / SPLITS_FILE)
    if full:
        pl.DataFrame(
            {
                "code": ["ICD10/I10", "ICD10/E11.9", AMLODIPINE],
                "description": ["Essential (primary) hypertension", "Type 2 diabetes", "amlodipine 2.5 mg"],
                "parent_codes": [[], [], []],
            },
            schema={"code": pl.String, "description": pl.String, "parent_codes": pl.List(pl.String)},
        ).write_parquet(root / CODES_FILE)
    return root


@pytest.fixture(scope="module")
def meds_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_meds(tmp_path_factory.mktemp("meds"))


@pytest.fixture(scope="module")
def bare_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No HOSPITAL or COVERAGE codes, no certainty column, no codes.parquet."""
    return write_meds(tmp_path_factory.mktemp("bare"), full=False)


COVERED_DAYS = {1: 1461, 2: 365 + 1095, 3: 1885, 4: 3179, 5: 730}  # start..end (END = day after the last)


def test_dataset_summary(meds_root: Path) -> None:
    summary = describe.dataset_summary(meds_root)
    assert summary == {
        "shards": 2,
        "patients": 6,
        "events": 55,
        "events_per_patient_mean": pytest.approx(55 / 6),
        "events_per_patient_median": 10.0,  # counts 2, 7, 9, 11, 13, 13
        "events_per_patient_p90": 13.0,
        "first_event_date": "2015-01-01",
        "last_event_date": "2024-01-01",
        "patients_with_coverage": 5,
        "person_years": pytest.approx(sum(COVERED_DAYS.values()) / 365.25),
        "patients_with_gap": 1,
        "open_coverage_periods": 1,
        "unmatched_coverage_ends": 1,
        "deaths": 1,
        "data_end": "2024-01-01",  # the month of the last covered day (COVERAGE/END - 1 day) is December 2023
        "events_after_death": 0,
        "events_after_data_end": 0,
    }
    assert describe.last_full_year(meds_root) == 2023
    assert describe.events_per_patient(meds_root).rows() == [(2, 1), (7, 1), (9, 1), (11, 1), (13, 2)]


def test_coverage_tables(meds_root: Path) -> None:
    months = sorted(int(days // (365.25 / 12)) for days in COVERED_DAYS.values())
    assert months == [23, 47, 48, 61, 104]
    assert describe.coverage_years(meds_root).rows() == [(m, 1) for m in months]
    assert describe.coverage_end_reasons(meds_root).rows() == [
        ("data_cutoff", 2, 2),
        ("insurance_change", 2, 2),
        ("death", 1, 1),
        ("open (no END)", 1, 1),
    ]


def test_codes_by_family(meds_root: Path) -> None:
    assert describe.codes_by_family(meds_root).rows() == [
        ("ICD10", 8, 18, 6),
        ("COVERAGE", 2, 12, 6),
        ("YJ", 5, 9, 5),
        ("GENDER", 2, 5, 5),
        ("HOSPITAL", 2, 5, 5),
        ("MEDS_BIRTH", 1, 5, 5),
        ("MEDS_DEATH", 1, 1, 1),
    ]


def test_top_codes(meds_root: Path, bare_root: Path) -> None:
    assert describe.top_codes(meds_root, "diagnosis", n=3).rows() == [
        ("ICD10/I10", "Essential (primary) hypertension", 9, 4),
        ("ICD10/E11.9", "Type 2 diabetes", 2, 1),
        ("ICD10/E78.5", None, 2, 1),
    ]
    assert describe.top_codes(meds_root, "drug", n=3).rows() == [
        (AMLODIPINE, "amlodipine 2.5 mg", 3, 2),
        (LOSARTAN, None, 2, 2),
        (OLMESARTAN, None, 2, 1),
    ]
    assert describe.top_codes(bare_root, "diagnosis", n=1)["description"].to_list() == [None]
    assert describe.top_codes(meds_root, "procedure", n=5).is_empty()


def test_chapter_of_a_code() -> None:
    codes = ["ICD10/I10", "ICD10/E11.9", "ICD10/H59.0", "ICD10/H65", "ICD10/D48", "ICD10/D50", "ICD10/V01",
             "ICD10/U07.1", "ICD10/z99.2", "YJ/2171022F1053", "MEDS_BIRTH"]  # fmt: skip
    chapters = pl.DataFrame({"code": codes}).select(chapter=describe.chapter_expr())["chapter"].to_list()
    assert chapters == [
        "IX circulatory",
        "IV endocrine, metabolic",
        "VII eye",
        "VIII ear",
        "II neoplasms",
        "III blood, immune",
        "XX external causes",
        "XXII special",
        "XXI health services",
        None,
        None,
    ]


def test_breadth_receipts_and_distinct_codes(meds_root: Path) -> None:
    frequencies = describe.code_frequencies(meds_root)
    assert frequencies.row(0, named=True) == {"code": "ICD10/I10", "records": 9, "patients": 4}
    assert frequencies.height == 8 and frequencies["records"].sum() == 18
    breadth = describe.zipf_summary(frequencies, min_patients=1, top=2)
    assert breadth["codes"] == 8 and breadth["codes_with_1_patients"] == 8
    assert breadth["top_2_share_of_records"] == pytest.approx(11 / 18)  # I10 9, then E11.9 or E78.5 2
    assert breadth["zipf_exponent"] > 0
    receipts = {r["family"]: r for r in describe.receipt_contents(meds_root).iter_rows(named=True)}
    assert receipts["diagnosis"]["mean"] == pytest.approx(18 / 13) and receipts["diagnosis"]["median"] == 1
    assert receipts["drug"]["mean"] == pytest.approx(9 / 13) and receipts["drug"]["median"] == 1
    distinct = {r["unit"]: r for r in describe.distinct_codes(meds_root).iter_rows(named=True)}
    assert distinct["patient"]["mean"] == pytest.approx(3.0) and distinct["patient"]["median"] == 3.5
    assert distinct["patient-year"]["mean"] == pytest.approx(24 / 11) and distinct["patient-year"]["median"] == 2


def test_chapter_correlations(meds_root: Path) -> None:
    import numpy as np

    corr = describe.chapter_correlations(meds_root)
    names = corr["chapter"].to_list()
    assert names == ["IV endocrine, metabolic", "IX circulatory", "X respiratory", "XIII musculoskeletal",
                     "XIV genitourinary"]  # fmt: skip
    values = corr.drop("chapter").to_numpy()
    assert np.allclose(values, values.T) and np.allclose(np.diag(values), 1.0)
    # Patients 1-6: distinct circulatory codes 1, 1, 1, 3, 0, 0; endocrine 1, 0, 0, 0, 1, 0.
    expected = np.corrcoef(np.log1p([1, 1, 1, 3, 0, 0]), np.log1p([1, 0, 0, 0, 1, 0]))[0, 1]
    assert values[0, 1] == pytest.approx(expected)
    assert describe.plot_chapter_correlations(corr) is not None


def _cell(table: pl.DataFrame, condition: str, age_band: str, sex: str) -> tuple:
    row = table.filter((pl.col("condition") == condition) & (pl.col("age_band") == age_band) & (pl.col("sex") == sex))
    assert row.height == 1, (condition, age_band, sex)
    return row.select("patients", "cases", "prevalence").row(0)


def test_condition_prevalence(meds_root: Path) -> None:
    # Population on 2023-07-01: patients 1 (F, 73), 2 (M, 39: birthday on 2 July), 4 (M, 82: alive until
    # September) and 5 (F, 58: open coverage). Not 3 (coverage ended in March), not 6 (an orphan COVERAGE/END
    # and no open period: by the study's one coverage rule, not covered).
    table = describe.condition_prevalence(meds_root)
    assert table.columns == ["condition", "age_band", "sex", "patients", "cases", "prevalence"]
    assert table["condition"].unique(maintain_order=True).to_list() == list(describe.DEFAULT_CONDITIONS)
    expected_all = {
        "hypertension": 3,  # 1, 2, 4 (4's suspected I10 does not matter; 3 is not in the population)
        "type2_diabetes": 1,  # 1 confirmed in August after a suspected record
        "dyslipidaemia": 1,
        "ckd": 0,  # 2's N18.9 is only suspected
        "heart_failure": 1,
        "atrial_fibrillation": 0,  # 4's I48 is only suspected
        "osteoporosis": 0,  # 6's M81 falls outside coverage
        "amlodipine_users": 1,
        "pregabalin_users": 1,
    }
    for condition, cases in expected_all.items():
        assert _cell(table, condition, "all", "all") == (4, cases, pytest.approx(cases / 4))
    assert _cell(table, "hypertension", "all", "F") == (2, 1, 0.5)
    assert _cell(table, "hypertension", "all", "M") == (2, 2, 1.0)
    assert _cell(table, "hypertension", "20-39", "M") == (1, 1, 1.0)
    assert _cell(table, "hypertension", "70-79", "F") == (1, 1, 1.0)
    assert _cell(table, "hypertension", "80+", "all") == (1, 1, 1.0)
    assert _cell(table, "hypertension", "50-59", "F") == (1, 0, 0.0)
    assert table.filter(pl.col("age_band").is_in(["<20", "unknown"])).is_empty()
    bands = table.filter((pl.col("condition") == "ckd") & (pl.col("sex") == "all"))["age_band"].to_list()
    assert bands == ["20-39", "50-59", "70-79", "80+", "all"]


def test_condition_prevalence_other_year_and_conditions(meds_root: Path) -> None:
    # 2022 mid-year: 1, 2, 3, 4, 5 covered; 6 has no 2022 event. 3 is 12 on 1 July 2022.
    table = describe.condition_prevalence(
        meds_root,
        conditions={"asthma": ["ICD10/J4"], "ccb": ["YJ/2171022", "YJ/2171014"]},
        age_bands=[40],
        year=2022,
    )
    assert _cell(table, "asthma", "all", "all") == (5, 1, 0.2)
    assert _cell(table, "asthma", "<40", "F") == (1, 1, 1.0)
    assert _cell(table, "ccb", "40+", "all") == (3, 1, pytest.approx(1 / 3))
    wide = describe.prevalence_by_band(table)
    assert wide.columns == ["condition", "<40", "40+", "all"]
    assert wide.row(0) == ("asthma", 50.0, 0.0, 20.0)


def test_without_coverage_codes(bare_root: Path) -> None:
    summary = describe.dataset_summary(bare_root)
    assert (summary["patients_with_coverage"], summary["person_years"], summary["patients_with_gap"]) == (
        0,
        0.0,
        0,
    )
    assert summary["last_event_date"] == "2023-10-01"
    assert describe.coverage_years(bare_root).is_empty() and describe.coverage_end_reasons(bare_root).is_empty()
    # The data end in October 2023, so 2022 is the last full year; without coverage events a patient is
    # covered from the first to the day after the last clinical event (the study's one rule): 1, 2, 3 and 5
    # on 1 July 2022 (4's events are all in 2023); only 1 has a confirmed I10 in 2022.
    assert describe.last_full_year(bare_root) == 2022
    table = describe.condition_prevalence(bare_root)
    assert _cell(table, "hypertension", "all", "all") == (4, 1, pytest.approx(1 / 4))


def test_hospital_profile(meds_root: Path) -> None:
    profile = describe.hospital_profile(meds_root)
    assert profile["hospital"].to_list() == ["H01", "H02", "unknown"]
    h01, h02, unknown = profile.iter_rows(named=True)
    years_h01 = (COVERED_DAYS[1] + COVERED_DAYS[2]) / 365.25
    assert h01 == {
        "hospital": "H01",
        "patients": 2,
        "person_years": pytest.approx(years_h01),
        "receipts": 6,
        "receipts_per_person_year": pytest.approx(6 / years_h01),
        "diagnosis_events": 9,
        "suspected_events": 3,
        "suspected_share": pytest.approx(1 / 3),
        "antihypertensive_starters": 2,
        "first_ccb": 1,  # patient 1 started on amlodipine (losartan came later)
        "first_arb": 1,  # patient 2 on olmesartan
        "ccb_share": 0.5,
        "arb_share": 0.5,
    }
    # Patient 3's first receipt holds both amlodipine and losartan: counted in both classes.
    assert (h02["patients"], h02["receipts"], h02["diagnosis_events"], h02["suspected_events"]) == (
        3,
        6,
        8,
        2,
    )
    assert h02["person_years"] == pytest.approx((COVERED_DAYS[3] + COVERED_DAYS[4] + COVERED_DAYS[5]) / 365.25)
    assert (h02["antihypertensive_starters"], h02["first_ccb"], h02["first_arb"]) == (2, 1, 2)
    assert (h02["suspected_share"], h02["ccb_share"], h02["arb_share"]) == (0.25, 0.5, 1.0)
    assert (unknown["patients"], unknown["person_years"], unknown["receipts"]) == (1, 0.0, 1)
    assert unknown["receipts_per_person_year"] is None and unknown["ccb_share"] is None


def test_hospital_profile_without_hospital_codes(bare_root: Path) -> None:
    profile = describe.hospital_profile(bare_root)
    assert profile.is_empty()
    assert "ccb_share" in profile.columns


def test_suspected(meds_root: Path, bare_root: Path) -> None:
    by_code = describe.suspected_by_code(meds_root)
    top = describe.top_suspected_codes(by_code, n=10)
    assert top.select("code", "events", "suspected_events", "suspected_pairs", "never_confirmed_pairs").rows() == [
        ("ICD10/I10", 9, 2, 2, 1),  # 2: confirmed later; 4: confirmed only before the suspicion
        ("ICD10/E11.9", 2, 1, 1, 0),
        ("ICD10/I48", 1, 1, 1, 1),
        ("ICD10/N18.9", 1, 1, 1, 1),
    ]
    assert top["never_confirmed_share"].to_list() == [0.5, 0.0, 1.0, 1.0]
    assert describe.suspected_summary(meds_root) == {
        "diagnosis_events": 18,
        "suspected_events": 5,
        "suspected_share": pytest.approx(5 / 18),
        "suspected_pairs": 5,
        "never_confirmed_pairs": 3,
        "never_confirmed_share": pytest.approx(3 / 5),
    }
    bare = describe.suspected_summary(bare_root)  # no certainty column: every diagnosis confirmed
    assert (bare["suspected_events"], bare["suspected_share"], bare["never_confirmed_share"]) == (
        0,
        0.0,
        None,
    )


def test_suppress_small(meds_root: Path, tmp_path: Path) -> None:
    profile = describe.hospital_profile(meds_root)
    shown = report.suppress_small(profile, min_cell=3, derived=describe.HOSPITAL_DERIVED)
    h01, h02, _ = shown.iter_rows(named=True)
    assert (h01["patients"], h01["receipts"], h01["first_ccb"], h01["antihypertensive_starters"]) == (
        "<3",
        "6",
        "<3",
        "<3",
    )
    assert h01["ccb_share"] is None and h01["suspected_share"] == pytest.approx(1 / 3)
    assert h02["patients"] == "3" and h02["ccb_share"] is None and h02["suspected_share"] is None
    assert h02["person_years"] == profile["person_years"][1]  # floats are not counts
    default = report.suppress_small(describe.codes_by_family(meds_root), keep=["codes"])
    assert default.row(0) == ("ICD10", "8", "18", "<10")  # kept counts are shown as they are (as text)
    report.check_small_cells(default)  # nothing left for write_table to refuse
    with pytest.raises(report.SmallCellError, match="column events shows 5 count.s. below 10"):
        report.write_table(describe.codes_by_family(meds_root), Path(tmp_path) / "raw", keep=["codes"])
    with pytest.raises(ValueError, match="subject ids"):
        report.suppress_small(pl.DataFrame({"subject_id": [1]}))
    with pytest.raises(ValueError, match="not count columns"):
        report.suppress_small(profile, derived={"ccb_share": ["hospital"]})
    table = describe.summary_table({"shards": 2, "deaths": 1, "patients": 12, "share": 0.25, "day": "2024-01-01"})
    assert table.rows() == [
        ("shards", "2"),
        ("deaths", "<10"),
        ("patients", "12"),
        ("share", "0.25"),
        ("day", "2024-01-01"),
    ]


def test_write_table_figures_and_metrics(meds_root: Path, tmp_path: Path) -> None:
    table = report.suppress_small(describe.codes_by_family(meds_root), keep=["codes"])
    report.write_table(table, tmp_path / "tables" / "codes")
    assert pl.read_csv(tmp_path / "tables" / "codes.csv", infer_schema=False)["events"].to_list()[:2] == [
        "18",
        "12",
    ]
    markdown = (tmp_path / "tables" / "codes.md").read_text(encoding="utf-8").splitlines()
    assert markdown[0] == "| family | codes | events | patients |"
    assert markdown[2] == "| ICD10 | 8 | 18 | <10 |"
    with pytest.raises(ValueError, match="subject ids"):
        report.write_table(pl.DataFrame({"subject_id": [1]}), tmp_path / "ids")
    figures = [
        describe.plot_prevalence(describe.condition_prevalence(meds_root)),
        describe.plot_hospital_profile(describe.hospital_profile(meds_root), min_cell=1),
        describe.plot_events_per_patient(describe.events_per_patient(meds_root), min_cell=1),
        describe.plot_coverage_years(describe.coverage_years(meds_root), min_cell=1),
    ]
    for index, figure in enumerate(figures):
        png, svg = report.save_figure(figure, tmp_path / "figures" / f"f{index}")
        assert png.stat().st_size > 0 and svg.read_text(encoding="utf-8").lstrip().startswith("<?xml")
    fresh = describe.plot_prevalence(describe.condition_prevalence(meds_root))
    again = report.save_figure(fresh, tmp_path / "figures" / "again")
    assert again[1].read_bytes() == (tmp_path / "figures" / "f0.svg").read_bytes()  # reproducible bytes


def _run_notebook(meds: Path, out: Path, executed: Path) -> None:
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(executed),
        parameters={"meds_dir": str(meds), "out_dir": str(out), "tokens_dir": str(out / "no_tokens")},
        kernel_name="claimsutil",
        progress_bar=False,
    )


def test_notebook_runs_and_writes_reports(meds_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports" / "data"
    _run_notebook(meds_root, out, tmp_path / "00_data.ipynb")
    for name in ("summary", "codes_by_family", "top_diagnoses", "top_drugs", "prevalence", "hospitals"):
        assert (out / "tables" / f"{name}.csv").is_file() and (out / "tables" / f"{name}.md").is_file(), name
    for name in ("prevalence", "hospitals", "events_per_patient", "coverage_years"):
        assert (out / "figures" / f"{name}.png").is_file() and (out / "figures" / f"{name}.svg").is_file(), name
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    summary = describe.dataset_summary(meds_root)
    for key in ("patients", "events", "deaths", "shards"):
        assert metrics[key] == summary[key], key
    assert metrics["person_years"] == pytest.approx(summary["person_years"])
    assert metrics["suspected_share"] == pytest.approx(describe.suspected_summary(meds_root)["suspected_share"])
    assert metrics["n_hospitals"] == 2
    assert metrics["reference_year"] == 2023
    assert metrics["prevalence_hypertension"] == pytest.approx(0.75)
    prevalence = pl.read_csv(out / "tables" / "prevalence.csv", infer_schema=False)
    assert set(prevalence["cases"]) <= {"<10"}  # every count of this small dataset is suppressed
    assert prevalence["prevalence"].null_count() == prevalence.height
    executed = (tmp_path / "00_data.ipynb").read_text(encoding="utf-8")
    assert "subject_id" not in executed


def test_notebook_skips_hospitals_when_absent(bare_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run_notebook(bare_root, out, tmp_path / "00_data.ipynb")
    assert not (out / "tables" / "hospitals.csv").exists()
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["n_hospitals"] == 0
    executed = nbformat.read(tmp_path / "00_data.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for cell in executed.cells for o in cell.get("outputs", []))
    assert "no HOSPITAL/ codes" in printed


def test_committed_notebook_is_clean() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "claimsutil"
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert "parameters" in code_cells[0].metadata.get("tags", [])
    assert all(not cell.outputs and cell.execution_count is None for cell in code_cells)
    parameters = {}
    exec(code_cells[0].source, {}, parameters)  # literals only
    assert parameters == {
        "meds_dir": "data/meds",
        "tokens_dir": "data/tokens",
        "out_dir": "reports/data",
        "params_file": "params.yaml",
    }


@pytest.mark.parametrize("name", ["static_meds", "generated_meds"])
def test_notebook_runs_on_an_external_generators_dataset(request: pytest.FixtureRequest, tmp_path: Path, name: str):
    """Other vocabularies (no ICD10/YJ codes, no coverage, nested shards) still get a full description."""
    root = request.getfixturevalue(name)
    out = tmp_path / "out"
    _run_notebook(root, out, tmp_path / "00_data.ipynb")
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["patients"] == describe.dataset_summary(root)["patients"] > 0
    assert metrics["n_hospitals"] == 0
    assert (out / "tables" / "codes_by_family.md").is_file()
