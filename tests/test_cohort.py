"""Cohorts: labels on hand-built timelines, invariants on generator data, splits, budgets, Table 2, oracle."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import shutil
from pathlib import Path

import meds
import polars as pl
import pytest

from claimsutil import cohort as co
from claimsutil import splits as sp
from claimsutil.config import BaselineConfig, CohortParams, Population, SynthParams, TaskSpec
from claimsutil.meds import SPLITS_FILE, shard_paths, subject_hospitals
from claimsutil.synth import generate

END = dt.datetime(2024, 1, 1)
HTN = TaskSpec("hypertension", ("ICD10/I10",), horizon_days=365, min_prior_days=365)


def d(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def write_shards(root: Path, shards: list[list[tuple]]) -> Path:
    """Rows (subject_id, time or None, code, suspected) -> a MEDS data folder, one file per shard."""
    (root / "data").mkdir(parents=True)
    for i, rows in enumerate(shards):
        rows = sorted(rows, key=lambda r: (r[0], r[1] is not None, r[1] or dt.datetime.min, r[2]))
        pl.DataFrame(
            {
                "subject_id": [r[0] for r in rows],
                "time": [r[1] for r in rows],
                "code": [r[2] for r in rows],
                "diagnosis_certainty": ["suspected" if len(r) > 3 and r[3] else None for r in rows],
            },
            schema={
                "subject_id": pl.Int64,
                "time": pl.Datetime("us"),
                "code": pl.String,
                "diagnosis_certainty": pl.String,
            },
        ).write_parquet(root / "data" / f"{i}.parquet")
    return root


def covered(sid: int, start: str, end: str = "2024-01-01", reason: str = "data_cutoff") -> list[tuple]:
    return [(sid, None, "HOSPITAL/H01"), (sid, d(start), "COVERAGE/START"), (sid, d(end), "COVERAGE/END")]


def visit(sid: int, when: str, code: str = "ICD10/J06.9", suspected: bool = False) -> tuple:
    return (sid, d(when), code, suspected)


@pytest.fixture
def timelines(tmp_path) -> Path:
    """Each patient has at most one candidate index receipt (receipts from 2023-01-01 on leave less than a
    horizon before the end of the data), so every label is known exactly."""
    p1 = [*covered(1, "2020-01-01"), visit(1, "2022-01-05"), visit(1, "2023-01-05", "ICD10/I10")]  # pt + 364 d
    p2 = [*covered(2, "2020-01-01"), visit(2, "2022-01-05"), visit(2, "2023-01-06", "ICD10/I10")]  # pt + 365 d
    p4 = [*covered(4, "2020-01-01"), visit(4, "2022-01-05"), visit(4, "2022-01-05", "ICD10/I10")]  # at the index
    p5 = [*covered(5, "2021-06-01"), visit(5, "2021-07-01"), visit(5, "2022-01-01")]  # never 365 days covered
    p6 = [*covered(6, "2019-01-01"), visit(6, "2019-06-01", "ICD10/I10"), visit(6, "2020-06-01")]  # prior outcome
    p7 = [*covered(7, "2020-01-01", "2022-05-01", "insurance_change"), visit(7, "2021-06-01")]  # censored
    p9 = [*covered(9, "2020-01-01"), visit(9, "2022-01-05"), visit(9, "2023-01-05", "ICD10/I10", suspected=True)]
    p10 = [*covered(10, "2020-01-01"), visit(10, "2020-06-01", "ICD10/I10", suspected=True), visit(10, "2022-01-05")]
    p11 = [(11, d("1950-01-01"), "MEDS_BIRTH"), visit(11, "2020-01-01"), visit(11, "2021-01-05"),
           visit(11, "2023-06-01")]  # no coverage events: covered from the first to the last event  # fmt: skip
    p12 = [(12, None, "GENDER/F"), (12, d("1950-01-01"), "MEDS_BIRTH")]  # no clinical event at all
    return write_shards(tmp_path / "meds", [p1 + p2 + p4 + p5 + p6, p7 + p9 + p10 + p11 + p12])


def _by_subject(c: co.TaskCohort) -> tuple[dict, dict]:
    labels = {r["subject_id"]: r for r in c.labels.iter_rows(named=True)}
    status = dict(c.status.iter_rows())
    return labels, status


def test_labels_on_hand_built_timelines(timelines):
    c = co.build_tasks(timelines, (HTN,), seed=1)["hypertension"]
    labels, status = _by_subject(c)
    assert status == {
        1: "included", 2: "included", 4: "prior_outcome", 5: "insufficient_observation", 6: "prior_outcome",
        7: "censored", 9: "included", 10: "included", 11: "included", 12: "insufficient_observation",
    }  # fmt: skip
    assert {s: r["boolean_value"] for s, r in labels.items()} == {1: True, 2: False, 9: False, 10: False, 11: False}
    # The prediction time is the midnight after the index receipt: the index visit is visible to models.
    assert labels[1]["prediction_time"] == d("2022-01-06")
    assert labels[11]["prediction_time"] == d("2021-01-06")
    meds.LabelSchema.validate(c.labels.to_arrow())


def test_suspected_outcomes_and_suspected_washout(timelines):
    include = dataclasses.replace(HTN, suspected="include")
    labels, _ = _by_subject(co.build_tasks(timelines, (include,), seed=1)["hypertension"])
    assert labels[9]["boolean_value"] is True  # a suspected record counts as the outcome
    washout = dataclasses.replace(HTN, washout_suspected=True)
    labels, status = _by_subject(co.build_tasks(timelines, (washout,), seed=1)["hypertension"])
    assert status[10] == "prior_outcome" and 10 not in labels  # a suspected-only record before the index
    assert status[9] == "included" and labels[9]["boolean_value"] is False


def population_timelines(root: Path) -> Path:
    """Patients whose candidate index receipts are their visits up to 2022 (the end of the data leaves no horizon
    after that), for the population filters: diabetes (E11) before, at, after them or only suspected; ages
    around 75 at the prediction time 2022-01-06; sexes and hospitals."""

    def person(sid: int, born: str, sex: str, hospital: str = "HOSPITAL/H01") -> list[tuple]:
        return [(sid, None, sex), (sid, None, hospital), (sid, d(born), "MEDS_BIRTH"),
                (sid, d("2020-01-01"), "COVERAGE/START"), (sid, d("2024-01-01"), "COVERAGE/END")]  # fmt: skip

    rows = [
        *person(1, "1940-01-01", "GENDER/F"), visit(1, "2021-03-01", "ICD10/E11.9"), visit(1, "2022-01-05"),
        *person(2, "1940-01-01", "GENDER/M"), visit(2, "2022-01-05"),
        visit(2, "2023-03-01", "ICD10/E11.9"),  # diagnosed after every receipt that leaves a whole horizon
        *person(3, "1947-01-07", "GENDER/F"), visit(3, "2022-01-05", "ICD10/E11.9"),  # at the index visit: 74.99 y
        *person(4, "1947-01-05", "GENDER/M", "HOSPITAL/H02"), visit(4, "2021-03-01", "ICD10/E11.9", True),
        visit(4, "2022-01-05"),  # suspected diabetes only; 75 years old at the prediction time
        *person(5, "1960-01-01", "GENDER/F"), visit(5, "2021-01-10"), visit(5, "2021-06-01", "ICD10/E11.9"),
        visit(5, "2022-01-05"),  # two candidate receipts: only the later one is inside the diabetes population
    ]  # fmt: skip
    return write_shards(root, [rows])


def test_population_filters_judge_only_the_past(tmp_path):
    meds_dir = population_timelines(tmp_path / "meds")

    def status(population: Population) -> tuple[dict, dict]:
        spec = TaskSpec("t", ("ICD10/I10",), population=population)
        labels, status = _by_subject(co.build_tasks(meds_dir, (spec,), seed=3)["t"])
        return labels, status

    labels, st = status(Population(prior_codes=("ICD10/E11",)))
    # Diabetes after the prediction time does not count (2); a record on the index visit is before the
    # prediction time (3); a suspected-only diagnosis does not count (4).
    assert st == {1: "included", 2: "outside_population", 3: "included", 4: "outside_population", 5: "included"}
    drawn = {co.build_tasks(meds_dir, (TaskSpec("t", ("ICD10/I10",), population=Population(("ICD10/E11",))),),
                            seed=seed)["t"].labels.filter(pl.col("subject_id") == 5)["prediction_time"][0]
             for seed in range(12)}  # fmt: skip
    assert drawn == {d("2021-06-02"), d("2022-01-06")}  # the receipt before the diagnosis (2021-01-10) never
    _, st = status(Population(min_age=75))
    assert {s for s, v in st.items() if v == "included"} == {1, 2, 4}  # 3 is 74.998 at the prediction time
    _, st = status(Population(min_age=60, max_age=75, sex="F"))
    assert {s for s, v in st.items() if v == "included"} == {3, 5}
    _, st = status(Population(hospitals=("HOSPITAL/H02",)))
    assert {s for s, v in st.items() if v == "included"} == {4}
    labels, st = status(Population())
    assert set(st.values()) == {"included"}


def test_population_tasks_in_table2_and_budgets_capped(tmp_path):
    from claimsutil.config import load_params

    meds_dir = population_timelines(tmp_path / "meds")
    spec = TaskSpec("t", ("ICD10/I10",), population=Population(prior_codes=("ICD10/E11",)))
    cohorts = co.build_tasks(meds_dir, (spec,), seed=3)
    splits = pl.DataFrame({"subject_id": [1, 2, 3, 4, 5], "split": ["train"] * 5})
    row = co.table2(cohorts, splits).row(0, named=True)
    assert row["population"] == "a prior record of ICD10/E11"
    assert (row["eligible"], row["excluded_outside_population"]) == (3, 2)
    params = tmp_path / "params.yaml"
    params.write_text("scales: {m: {}}\ncohort: {budgets: [10, 20, 40]}\ntasks:\n  a: {outcome: [X]}\n"
                      "  b: {outcome: [X], max_budget: 25, population: {min_age: 75, sex: F}}\n")  # fmt: skip
    tasks = {t.name: t for t in load_params(params).tasks}
    assert tasks["a"].budgets == (10, 20, 40) and tasks["b"].budgets == (10, 20)
    assert tasks["b"].population == Population(min_age=75, sex="F")
    params.write_text("scales: {m: {}}\ntasks:\n  b: {outcome: [X], population: {min_age: 80, max_age: 70}}\n")
    with pytest.raises(ValueError, match=r"tasks.b.population.max_age = 70"):
        load_params(params)
    params.write_text("scales: {m: {}}\ntasks:\n  b: {outcome: [X], max_budget: 50}\n")
    with pytest.raises(ValueError, match=r"tasks.b.max_budget = 50 leaves none of cohort.budgets"):
        load_params(params)


def test_index_choice_is_seeded_and_independent_of_sharding(timelines, tmp_path):
    rows = pl.read_parquet(shard_paths(timelines))
    single = tmp_path / "one"
    (single / "data").mkdir(parents=True)
    rows.write_parquet(single / "data" / "all.parquet")
    a = co.build_tasks(timelines, (HTN,), seed=1)["hypertension"].labels
    b = co.build_tasks(single, (HTN,), seed=1)["hypertension"].labels
    assert a.sort("subject_id").equals(b.sort("subject_id"))


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort_synth") / "meds"
    generate(SynthParams(patients=12000, seed=5, block_size=2000, shard_size=6000, workers=2), out,
             out.with_name("meds_truth"), progress=False)  # fmt: skip
    return out


TASKS = (
    HTN,
    TaskSpec("ckd", ("ICD10/N18",), 365, 365),
    TaskSpec("amlodipine", ("YJ/2171022",), 365, 365),
)


def test_labels_obey_the_definition_on_generator_data(generated):
    """For every labelled patient: index at a receipt after a year of coverage, no earlier outcome, and a
    label equal to 'an outcome record within the horizon'."""
    events = pl.read_parquet(shard_paths(generated))
    for spec in TASKS:
        c = co.build_tasks(generated, (spec,), seed=3)[spec.name]
        assert c.status.height == 12000 and c.labels.height == (c.status["status"] == "included").sum()
        idx = c.labels.with_columns(index=pl.col("prediction_time") - dt.timedelta(days=1))  # receipts at 00:00
        hit = pl.any_horizontal([pl.col("code").str.starts_with(p) for p in spec.outcome])
        outcome = events.filter(hit & pl.col("diagnosis_certainty").is_null()).select("subject_id", o="time")
        joined = idx.join(outcome, on="subject_id", how="left")
        assert joined.filter(pl.col("o") < pl.col("prediction_time")).height == 0  # washout
        horizon = dt.timedelta(days=spec.horizon_days)
        within = joined.group_by("subject_id").agg(
            label=pl.col("boolean_value").first(),
            hit=(pl.col("o") < pl.col("prediction_time") + horizon).any(),
        )
        assert (within["label"] == within["hit"]).all()
        receipts = events.filter(pl.col("time").is_not_null()).select("subject_id", index="time").unique()
        assert idx.join(receipts, on=["subject_id", "index"]).height == idx.height
        starts = events.filter(pl.col("code") == "COVERAGE/START").select("subject_id", s="time")
        observed = idx.join(starts, on="subject_id").filter(pl.col("s") <= pl.col("index") - dt.timedelta(days=365))
        assert observed["subject_id"].n_unique() == idx.height
        assert 0.005 < c.labels["boolean_value"].mean() < 0.1


def test_splits_are_patient_level_and_disjoint(generated):
    hospitals = subject_hospitals(generated)
    params = CohortParams(held_out_hospitals=3)
    splits = sp.assign_splits(hospitals, params)
    assert splits.height == 12000 and splits["subject_id"].n_unique() == 12000
    assert set(splits["split"]) == set(sp.SPLITS)
    held = splits.filter(pl.col("split") == "held_out_hospital")["hospital"].unique()
    assert held.len() == 3
    assert splits.filter(pl.col("hospital").is_in(held.implode()))["split"].unique().to_list() == ["held_out_hospital"]
    shares = splits.filter(pl.col("split") != "held_out_hospital")["split"].value_counts(normalize=True)
    share = dict(shares.iter_rows())
    assert abs(share["train"] - 0.70) < 0.03 and abs(share["test"] - 0.15) < 0.03
    # A patient's split does not depend on who else is in the data.
    subset = sp.assign_splits(hospitals.filter(pl.col("subject_id") % 2 == 0), params)
    assert subset.join(splits, on="subject_id")["split"].equals(
        subset.join(splits, on="subject_id")["split_right"], check_names=False
    )
    with pytest.raises(sp.SplitError, match="held_out_hospitals = 40"):
        sp.assign_splits(hospitals, CohortParams(held_out_hospitals=40))
    # Data without HOSPITAL/ codes: nothing is held out, and the note says why.
    anonymous = hospitals.with_columns(hospital=pl.lit(None, pl.String))
    assert (
        sp.held_out_count(anonymous, params)[0] == 0 and "no HOSPITAL/ codes" in sp.held_out_count(anonymous, params)[1]
    )
    assert "held_out_hospital" not in sp.assign_splits(anonymous, params)["split"].to_list()


def test_the_meds_split_file_says_what_the_study_splits_say(generated):
    # The built-in world writes metadata/subject_splits.parquet by the study's rule (CohortParams' defaults here).
    study = sp.build_splits(generated, CohortParams(split_source="study"))[0]
    meds_file = pl.read_parquet(generated / SPLITS_FILE)
    assert meds_file.equals(sp.meds_subject_splits(study))
    assert set(meds_file["split"]) == {"train", "tuning", "held_out"}
    joined = study.join(meds_file, on="subject_id", suffix="_meds")
    pairs = dict(joined.group_by("split").agg(pl.col("split_meds").unique()).iter_rows())
    assert pairs == {"train": ["train"], "validation": ["tuning"], "test": ["held_out"],
                     "held_out_hospital": ["held_out"]}  # fmt: skip
    # Read back as a dataset's own file (cohort.split_source: dataset, the default): the same splits.
    back, _, info = sp.build_splits(generated, CohortParams(), generated)
    assert back.equals(study) and info["subjects_not_in_split_file"] == 0
    assert "subject_splits.parquet" in info["split_source"]


def test_labels_with_a_record_at_the_prediction_time_are_counted(generated):
    cohorts = co.build_tasks(generated, TASKS[:2], seed=3)
    splits = sp.build_splits(generated, CohortParams())[0]
    got = co.records_at_prediction_time(generated, cohorts, splits)
    stamps = pl.read_parquet(generated / "data" / "*.parquet").select("subject_id", "time").drop_nulls().unique()
    for name, c in cohorts.items():
        hit = c.labels.join(stamps, left_on=["subject_id", "prediction_time"], right_on=["subject_id", "time"])
        hit = hit.join(splits, on="subject_id")
        row = got.filter(pl.col("task") == name).row(0, named=True)
        assert row["labels"] == c.labels.height and row["with_record"] == hit["subject_id"].n_unique() > 0
        assert row["test_with_record"] == hit.filter(pl.col("split") == "test")["subject_id"].n_unique()
    metrics = co.cohort_metrics(co.table2(cohorts, splits), {}, None, got)
    assert metrics[TASKS[0].name]["labels_with_record_at_prediction_time"] == got["with_record"][0]


def test_a_datasets_own_splits_are_used_and_every_difference_is_counted(generated, tmp_path):
    root = tmp_path / "meds"
    shutil.copytree(generated, root)
    params = CohortParams()
    study = sp.build_splits(root, dataclasses.replace(params, split_source="study"))[0]
    ids = study["subject_id"]
    own = pl.DataFrame({"subject_id": ids, "split": pl.Series(["train", "tuning", "held_out"])[
        (ids % 3).to_list()]}).filter(pl.col("subject_id") % 1000 != 7)  # fmt: skip
    own.write_parquet(root / SPLITS_FILE)
    splits, _, info = sp.build_splits(root, params, root)
    got = splits.join(own, on="subject_id", how="left", suffix="_own").join(study, on="subject_id", suffix="_study")
    held = pl.col("split_study") == "held_out_hospital"
    listed = got.filter(~held & pl.col("split_own").is_not_null())
    assert (listed["split"] == listed["split_own"].replace_strict(sp.FROM_MEDS)).all()  # the user's splits
    assert (got.filter(held)["split"] == "held_out_hospital").all()  # held-out hospitals stay held out
    unlisted = got.filter(~held & pl.col("split_own").is_null())
    assert (unlisted["split"] == unlisted["split_study"]).all() and unlisted.height > 0
    assert info["subjects_not_in_split_file"] == ids.len() - own.height
    taken = got.filter(held & pl.col("split_own").is_not_null()).group_by("split_own").len()
    assert info["held_out_hospital_patients_taken_from"] == dict(sorted(taken.iter_rows()))
    # cohort.split_source: study ignores the file.
    assert sp.build_splits(root, dataclasses.replace(params, split_source="study"), root)[0].equals(study)
    # A split name MEDS does not define stops with the file, the row and the value.
    own.with_columns(split=pl.when(pl.col("subject_id") == own["subject_id"][5]).then(pl.lit("test"))
                     .otherwise(pl.col("split"))).write_parquet(root / SPLITS_FILE)  # fmt: skip
    with pytest.raises(sp.SplitError, match=r"subject_splits.parquet: row 5, column split: 'test' is not a MEDS "
                       r"split name .*cohort.split_source: study"):  # fmt: skip
        sp.build_splits(root, params, root)


def test_budgets_are_balanced_training_samples(generated):
    spec = TASKS[2]
    c = co.build_tasks(generated, (spec,), seed=3)[spec.name]
    params = CohortParams(budgets=(20, 40), budget_seeds=2, held_out_hospitals=2)
    splits = sp.build_splits(generated, params)[0]
    budgets = co.sample_budgets(c.labels, splits, spec.name, params)
    assert budgets.group_by("budget", "seed").len().sort("budget", "seed")["len"].to_list() == [20, 20, 40, 40]
    joined = budgets.join(c.labels, on="subject_id").join(splits, on="subject_id")
    assert set(joined["split"]) == {"train"}
    balance = joined.group_by("budget", "seed").agg(pl.col("boolean_value").mean())
    assert (balance["boolean_value"] == 0.5).all()
    assert budgets.equals(co.sample_budgets(c.labels, splits, spec.name, params))  # seeded
    s0 = set(budgets.filter((pl.col("budget") == 40) & (pl.col("seed") == 0))["subject_id"])
    s1 = set(budgets.filter((pl.col("budget") == 40) & (pl.col("seed") == 1))["subject_id"])
    assert s0 != s1
    with pytest.raises(co.CohortError, match=r"task 'amlodipine': label budget 100000 needs 50000 positives.*"
                       r"set `tasks.amlodipine.max_budget` to at most \d+"):  # fmt: skip
        co.sample_budgets(c.labels, splits, spec.name, dataclasses.replace(params, budgets=(100000,)))


def test_table2_accounts_for_every_patient(generated):
    cohorts = co.build_tasks(generated, TASKS, seed=3)
    splits = sp.build_splits(generated, CohortParams(held_out_hospitals=2))[0]
    table = co.table2(cohorts, splits)
    for row in table.iter_rows(named=True):
        excluded = sum(row[f"excluded_{r}"] for r in co.EXCLUSIONS)
        assert row["eligible"] + excluded == row["patients"] == 12000
        assert sum(row[f"{s}_patients"] for s in sp.SPLITS) == row["eligible"]
        assert sum(row[f"{s}_positives"] for s in sp.SPLITS) == row["positives"]
        assert row["positive_rate"] == pytest.approx(row["positives"] / row["eligible"])


def test_tasks_that_cannot_be_evaluated_stop_clearly(generated):
    splits = sp.build_splits(generated, CohortParams(held_out_hospitals=2))[0]
    ghost = TaskSpec("ghost", ("ICD10/Z99.9", "YJ/0000000"), 365, 365)
    rare = TaskSpec("rare", ("ICD10/I63.9",), 30, 365)
    fine = TaskSpec("fine", ("YJ/2171022",), 365, 365)
    cohorts = co.build_tasks(generated, (ghost, rare, fine), seed=3)
    with pytest.raises(co.CohortError) as failure:
        co.check_tasks(generated, cohorts, splits, 1000)
    message = str(failure.value)
    # Every failing task at once, each with its codes and its counts per split; the one that works is not named.
    assert message.startswith("3 of 3 task(s)") or message.startswith("2 of 3 task(s)")
    assert re.search(r"task 'ghost': no event .* \['ICD10/Z99.9', 'YJ/0000000'\]", message)
    assert "check `tasks.ghost.outcome` in params.yaml" in message
    assert re.search(r"task 'rare' \(outcome \['ICD10/I63.9'\]\): fewer than cohort.min_positives = 1000", message)
    assert re.search(r"train: [\d,]+ patients, \d+ positives; validation: [\d,]+ patients", message)
    co.check_tasks(generated, {"fine": cohorts["fine"]}, splits, 10)  # enough positives: no error


def test_oracle_is_calibrated_deterministic_and_uses_no_future(generated):
    """The replayed oracle predicts as many outcomes as occur, ranks well, and reads nothing after the index."""
    from sklearn.metrics import roc_auc_score

    from claimsutil.synth.oracle import outcome_probabilities

    truth = generated.with_name("meds_truth")
    spec = TASKS[2]
    labels = co.build_tasks(generated, (spec,), seed=3)[spec.name].labels
    probs = outcome_probabilities(truth, labels, spec.outcome, spec.horizon_days, replicates=40, seed=1, workers=2)
    probs = probs.join(labels.select("subject_id", "boolean_value"), on="subject_id")
    assert probs.height == labels.height and probs["probability"].is_between(0, 1).all()
    expected, observed = probs["probability"].sum(), probs["boolean_value"].sum()
    assert abs(expected - observed) / observed < 0.25, (expected, observed)
    assert roc_auc_score(probs["boolean_value"], probs["probability"]) > 0.75
    subset = labels.head(300)
    again = outcome_probabilities(truth, subset, spec.outcome, spec.horizon_days, replicates=40, seed=1)
    # Rewriting the truth after each patient's index month changes nothing.
    hazards = pl.read_parquet(sorted((truth / "hazards").glob("*.parquet")))
    index_month = subset.select(
        "subject_id", m=(pl.col("prediction_time") - dt.timedelta(days=1)).dt.month_start().dt.date()
    )
    later = hazards.join(index_month, on="subject_id", how="inner").filter(pl.col("month") > pl.col("m")).drop("m")
    kept = hazards.join(later.select("subject_id", "month"), on=["subject_id", "month"], how="anti")
    altered = truth.with_name("altered")
    shutil.copytree(truth, altered)
    for f in (altered / "hazards").glob("*.parquet"):
        f.unlink()
    pl.concat([kept, later.with_columns(has_bits=pl.lit(-1, pl.Int32), dx_bits=pl.lit(-1, pl.Int32))]).write_parquet(
        altered / "hazards" / "all.parquet"
    )
    changed = outcome_probabilities(altered, subset, spec.outcome, spec.horizon_days, replicates=40, seed=1)
    assert changed.equals(again)
    twice = outcome_probabilities(truth, subset, spec.outcome, spec.horizon_days, replicates=40, seed=1, workers=2)
    assert twice.equals(again)  # same patients and seed, same numbers, whatever the worker processes


def test_baseline_beats_the_positive_rate_and_not_the_oracle(generated):
    """LightGBM on records lands between the positive rate and the oracle replayed from the true state."""
    from claimsutil import baseline, features, metrics
    from claimsutil.synth.oracle import outcome_probabilities

    # Amlodipine initiation: about 30 test positives at 12,000 patients. CKD (0.8% a year in this world) has 7, too
    # few for a bootstrap interval on AUPRC to clear the positive rate whatever the model.
    spec = TASKS[2]
    labels = co.build_tasks(generated, (spec,), seed=3)[spec.name].labels
    splits = sp.build_splits(generated, CohortParams(held_out_hospitals=0))[0]
    rows = labels.join(splits, on="subject_id")
    part = {s: rows.filter(pl.col("split") == s).drop("split", "hospital") for s in ("train", "validation", "test")}
    vocab = features.fit_vocabulary(generated, part["train"])
    X = {s: features.count_features(generated, part[s], vocab) for s in part}
    # One OpenMP thread: the suite runs beside the tiny study, and two spinning threads on a shared core made
    # this fit ten times slower (the assertions compare models, not digits).
    fitted = baseline.fit_baseline(X["train"], part["train"]["boolean_value"], X["validation"],
                                   part["validation"]["boolean_value"], BaselineConfig(num_threads=1))  # fmt: skip
    test = part["test"]
    p_model = baseline.predict(fitted, X["test"])
    # Enough futures that the oracle's Monte Carlo noise does not decide the comparison: with 100, four in five
    # patients get probability 0 at a 1% outcome rate and the oracle's AUROC drops by about 0.06.
    truth = generated.with_name("meds_truth")
    oracle = outcome_probabilities(truth, test, spec.outcome, spec.horizon_days, replicates=400, seed=2, workers=2)
    p_oracle = test.select("subject_id").join(oracle, on="subject_id", how="left")["probability"].to_numpy()
    y = test["boolean_value"].to_numpy()
    assert y.sum() >= 20  # enough positives for the comparisons below to mean something
    model_ci = metrics.bootstrap_ci(y, p_model, n_resamples=500, seed=0)["auprc"]
    assert model_ci.low > y.mean()  # clearly better than the positive rate
    diff = metrics.paired_bootstrap(y, p_model, p_oracle, n_resamples=500, seed=0)["auprc"]
    assert diff.low < 0  # the baseline is not significantly better than the oracle
    assert metrics.score(y, p_oracle)["auroc"] > metrics.score(y, p_model)["auroc"] - 0.02
