"""Tasks defined by ACES configs (claimsutil.aces): the shipped configs against the built-in definitions on the
tiny profile's data, the one-index draw, and the errors a user meets.

ACES runs in its own environment (.venv-aces, `make aces`; `make test` builds it first). Run alone, these tests
build it the same way when it is missing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from claimsutil import aces
from claimsutil import cohort as co
from claimsutil.config import CohortParams, ParamsError, SynthParams, TaskSpec, _tasks
from claimsutil.meds import Events

ROOT = Path(__file__).resolve().parents[1]
SEED = 7
# The reference tasks: name -> outcome prefix; tasks/aces/<name>.yaml defines each as ACES sees it.
REFERENCE = {"hypertension": "ICD10/I10", "ckd": "ICD10/N18", "amlodipine": "YJ/2171022", "pregabalin": "YJ/1190017"}
BUILTIN = {name: TaskSpec(name, (prefix,)) for name, prefix in REFERENCE.items()}
ACES = {name: dataclasses.replace(spec, aces=f"tasks/aces/{name}.yaml") for name, spec in BUILTIN.items()}


@pytest.fixture(scope="module")
def aces_env() -> Path:
    """The project's ACES environment, built by `make aces` when missing."""
    try:
        return aces.aces_cli()
    except aces.AcesError:
        built = subprocess.run(["make", "--no-print-directory", "aces"], cwd=ROOT, capture_output=True, text=True,
                               check=False)  # fmt: skip
        assert built.returncode == 0, f"make aces failed:\n{built.stdout[-2000:]}\n{built.stderr[-2000:]}"
        return aces.aces_cli()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, aces_env) -> dict:
    """The tiny profile's synthetic data, ACES's rows for the four shipped configs, and the view's subjects."""
    from claimsutil.synth import generate

    profile = yaml.safe_load((ROOT / "profiles" / "tiny.yaml").read_text(encoding="utf-8"))["synth"]
    root = tmp_path_factory.mktemp("aces")
    generate(SynthParams(**profile, workers=1), root / "meds", root / "meds_truth", progress=False)
    events = Events(root / "meds")
    (root / "view").mkdir()
    (root / "work").mkdir()
    shards, subjects = aces.write_view(events, root / "view")
    rows = aces.run_aces(root / "view", shards, list(ACES.values()), root / "work")
    return {"events": events, "root": root, "rows": rows, "subjects": subjects}


def builtin_rows(events: Events, spec: TaskSpec) -> pl.DataFrame:
    """Every candidate index of the built-in rules (before the draw) with its fate: prior, positive, censored."""
    horizon, parts = dt.timedelta(days=spec.horizon_days), []
    for _, lf in events.scans():
        lf = lf.select("subject_id", "time", "code", "text_value", "suspected")
        located = co._located_receipts(lf, events.window.end)
        candidates = located.with_columns(prediction_time=pl.col("time").dt.truncate("1d") + co.ONE_DAY).filter(
            (pl.col("time") - pl.col("start") >= dt.timedelta(days=spec.min_prior_days))
            & (pl.col("prediction_time") + horizon <= events.window.end)
        )
        parts.append(candidates.join(co._first_outcomes(lf, spec).collect(), on="subject_id", how="left"))
    return pl.concat(parts).select(
        "subject_id",
        "prediction_time",
        prior=(pl.col("first_outcome") < pl.col("prediction_time")).fill_null(False),
        positive=(pl.col("first_outcome") < pl.col("prediction_time") + horizon).fill_null(False),
        censored=pl.col("end") < pl.col("prediction_time") + horizon,
    )


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_shipped_config_gives_the_builtin_rows_but_one_rule(tiny, name):
    """Row by row (every valid index, before the draw): ACES's rows are the built-in valid rows with the same
    labels, except the positives whose coverage ends inside the horizon, which ACES excludes."""
    built = builtin_rows(tiny["events"], BUILTIN[name])
    valid = built.filter(~pl.col("prior") & (pl.col("positive") | ~pl.col("censored")))
    outcome_then_censored = valid.filter(pl.col("positive") & pl.col("censored"))
    expected = valid.join(outcome_then_censored, on=["subject_id", "prediction_time"], how="anti")
    got = tiny["rows"][name]
    assert got.schema == {"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"), "boolean_value": pl.Boolean}
    expected = expected.select("subject_id", "prediction_time", boolean_value="positive").sort(pl.all())
    assert got.sort(pl.all()).equals(expected), f"{name}: ACES rows differ from the built-in rows"
    assert got.height > 10_000 and got["boolean_value"].sum() > 50  # a real cohort, not two empty frames
    print(f"{name}: {valid.height:,} built-in valid rows, {got.height:,} ACES rows; "
          f"{outcome_then_censored.height:,} positive-then-censored rows only in the built-in")  # fmt: skip


def test_candidate_config_drops_only_the_later_windows_constraints():
    config = yaml.safe_load((ROOT / "tasks" / "aces" / "ckd.yaml").read_text(encoding="utf-8"))
    candidates = aces.candidate_config(config)
    kept = {name for name, w in candidates["windows"].items() if "has" in w}
    assert kept == {"enrolled", "prior"}  # end: trigger; input (trigger + 1d) and target lose their `has`
    assert candidates["windows"]["target"]["label"] == "outcome" and "has" in config["windows"]["target"]
    assert [aces.is_past_window({"end": e}) for e in ("trigger", "trigger - 30d", "trigger + 1d", "input.end")] == [
        True, True, False, False]  # fmt: skip


def draw(tiny, name: str, seed: int = SEED, shuffle: bool = False) -> co.TaskCohort:
    rows = tiny["rows"]
    candidates = rows[name + aces.CANDIDATES]
    if shuffle:
        candidates = candidates.sample(fraction=1.0, shuffle=True, seed=1)
    return aces.draw_one(candidates, rows[name], tiny["subjects"], ACES[name], seed, tiny["events"].window.end)


def test_one_index_per_patient_as_the_builtin_draw(tiny):
    """The draw among the candidates gives every patient the built-in index; the labels are the built-in ones
    but for the patients whose drawn index is positive and then censored (excluded by ACES's censoring)."""
    builtin = co.build_tasks(tiny["events"], tuple(BUILTIN.values()), SEED)
    for name in REFERENCE:
        cohort, ref = draw(tiny, name), builtin[name]
        assert cohort.labels.schema == ref.labels.schema
        assert cohort.status.height == ref.status.height == tiny["subjects"].height
        both = ref.status.join(cohort.status, on="subject_id", suffix="_aces")
        moved = both.group_by("status", "status_aces").len().sort(pl.all())
        # positive-then-censored at the drawn index: included by the built-in rule, excluded by ACES
        lost = ref.labels.join(cohort.labels, on="subject_id", how="anti")
        assert lost["boolean_value"].all(), f"{name}: a built-in negative lost its label"
        expected = {("censored", co.ACES_EXCLUSION), ("insufficient_observation", "insufficient_observation"),
                    ("prior_outcome", co.ACES_EXCLUSION), ("included", "included")}  # fmt: skip
        expected |= {("included", co.ACES_EXCLUSION)} if lost.height else set()
        assert set(moved.select("status", "status_aces").iter_rows()) == expected, moved
        assert ref.labels.join(lost, on="subject_id", how="anti").equals(cohort.labels), f"{name}: labels differ"
        assert lost.height <= 0.01 * ref.labels.height
        print(f"{name}: built-in {ref.labels.height:,} patients ({ref.labels['boolean_value'].sum()} positive), "
              f"ACES {cohort.labels.height:,} ({cohort.labels['boolean_value'].sum()} positive); "
              f"{lost.height} positive-then-censored patients excluded by ACES")  # fmt: skip


def test_the_draw_is_seeded_and_order_free(tiny):
    first, shuffled = draw(tiny, "ckd"), draw(tiny, "ckd", shuffle=True)
    assert first.labels.equals(shuffled.labels) and first.status.equals(shuffled.status)
    assert not draw(tiny, "ckd", seed=SEED + 1).labels.equals(first.labels)  # the seed chooses


def test_build_tasks_mixes_builtin_and_aces_tasks_in_order(tiny, monkeypatch):
    monkeypatch.setenv("CLAIMSUTIL_ROOT", str(ROOT))
    specs = (BUILTIN["hypertension"], ACES["amlodipine"])
    cohorts = aces.build_tasks(tiny["events"], specs, SEED)
    assert list(cohorts) == ["hypertension", "amlodipine"]
    assert cohorts["hypertension"].labels.equals(co.build_tasks(tiny["events"], specs[:1], SEED)["hypertension"].labels)
    assert cohorts["amlodipine"].labels.equals(draw(tiny, "amlodipine").labels)
    table = co.table2(cohorts, pl.DataFrame({"subject_id": tiny["subjects"]["subject_id"], "split": "train"}))
    row = table.filter(pl.col("task") == "amlodipine").row(0, named=True)
    assert row["population"] == "as tasks/aces/amlodipine.yaml (ACES)"
    excluded = row[f"excluded_{co.ACES_EXCLUSION}"] + row["excluded_insufficient_observation"]
    assert row["eligible"] + excluded == row["patients"] == tiny["subjects"].height


# ---------------------------------------------------------------------------------------------- errors
def test_builtin_build_refuses_an_aces_task(tiny):
    with pytest.raises(co.CohortError, match=r"'ckd' \(tasks/aces/ckd.yaml\) are defined by ACES configs"):
        co.build_tasks(tiny["events"], (ACES["ckd"],), SEED)


def test_a_broken_config_names_the_task_and_the_file(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("CLAIMSUTIL_ROOT", str(tmp_path))  # a project whose tasks/aces holds the broken config
    (tmp_path / "tasks" / "aces").mkdir(parents=True)
    text = (ROOT / "tasks" / "aces" / "ckd.yaml").read_text(encoding="utf-8")
    (tmp_path / "tasks" / "aces" / "bad.yaml").write_text(text.replace("coverage_end: (None, 0)", "coverage_end: (1"))
    bad = dataclasses.replace(ACES["ckd"], name="bad", aces="tasks/aces/bad.yaml")
    (tmp_path / "work").mkdir()
    with pytest.raises(aces.AcesError) as e:  # on the view the fixture wrote
        aces.run_aces(tiny["root"] / "view", ["0", "1"], [bad], tmp_path / "work")
    message = str(e.value)
    assert "task 'bad' (tasks/aces/bad.yaml)" in message and "Invalid constraint format" in message
    assert "Traceback" not in message and "\n" not in message
    missing = dataclasses.replace(bad, aces="tasks/aces/nowhere.yaml")
    with pytest.raises(aces.AcesError, match=r"tasks.bad.aces = 'tasks/aces/nowhere.yaml': no such file"):
        aces.build_aces_tasks(tiny["events"], [missing], SEED)


def test_a_missing_environment_says_make_aces(tmp_path, monkeypatch):
    monkeypatch.setenv("CLAIMSUTIL_ROOT", str(tmp_path))
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "elsewhere" / ".venv"))
    with pytest.raises(aces.AcesError, match=r"\.venv-aces is missing at the project root: run `make aces`"):
        aces.aces_cli()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"outcome": ["ICD10/N18"], "aces": "/abs/ckd.yaml"}, r"tasks.ckd.aces = '/abs/ckd.yaml' must be a .yaml"),
        ({"outcome": ["ICD10/N18"], "aces": "tasks/aces/ckd.json"}, r"must be a .yaml file"),
        ({"outcome": ["ICD10/N18"], "aces": "../ckd.yaml"}, r"must be a .yaml file"),
        ({"outcome": ["ICD10/N18"], "aces": "tasks/aces/ckd.yaml", "population": {"min_age": 75}},
         r"tasks.ckd sets \['population'\], which an ACES task does not use"),
        ({"outcome": ["ICD10/N18"], "aces": "tasks/aces/ckd.yaml", "min_prior_days": 30},
         r"tasks.ckd sets \['min_prior_days'\]"),
    ],
)  # fmt: skip
def test_params_check_the_aces_key(body, message):
    with pytest.raises(ParamsError, match=message):
        _tasks({"ckd": body}, CohortParams())


def test_params_accept_an_aces_task():
    (spec,) = _tasks({"ckd": {"outcome": ["ICD10/N18"], "aces": "tasks/aces/ckd.yaml", "horizon_days": 365}},
                     CohortParams())  # fmt: skip
    assert spec.aces == "tasks/aces/ckd.yaml" and spec.outcome == ("ICD10/N18",)
    assert all((ROOT / f"tasks/aces/{name}.yaml").is_file() for name in REFERENCE)


def test_the_cohort_stage_depends_on_the_aces_configs():
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["cohort"]
    assert "tasks/aces" in stage["deps"] and "claimsutil/aces.py" in stage["deps"]
    assert "tasks" in stage["params"]  # a task switched to (or from) ACES reruns the stage
