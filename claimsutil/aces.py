"""Tasks defined by ACES configs (`tasks.<name>.aces` in params.yaml) -> the study's labels.

ACES (PyPI `es-aces`, the MEDS community's task language: predicates, a trigger, windows with constraints)
extracts one row per valid trigger. The study keeps ONE prediction time per patient, drawn as the built-in
tasks draw theirs, then takes the study's one path (budgets, fine-tuning, baseline, evaluation) as
`claimsutil.cohort.TaskCohort`s.

**The draw comes before the exclusions**, as in the built-in rule, so that the outcome's timing never chooses
the index. Each config runs twice in one ACES process: as written (the valid rows, with labels) and as its
*candidate config* (`candidate_config`): the same config without the constraints of the windows that do not
end at the trigger or before it, i.e. the triggers that qualify on the past alone. The candidates with a whole
horizon (`tasks.<name>.horizon_days`) before the end of the data are ranked by prediction time per patient and
rank floor(u * n) is drawn, u = `uniform_hash(subject_id, cohort.seed, task_key(name))`, n the patient's number
of candidates. The patient is included, with ACES's label, when the drawn index is a valid row; otherwise
excluded (`claimsutil.cohort.ACES_EXCLUSION`: the config's later windows, e.g. washout or censoring, reject it;
ACES says which rows are valid, not why). A patient without candidates: "insufficient_observation".
Drawing among the valid rows instead would keep every patient with any valid trigger, and place the index of a
patient with an early outcome before it: on the tiny profile that doubled the positives of every task.

**The view ACES reads.** Not data/meds itself but the study's view of it, written to a temporary folder (one
shard per MEDS shard), so that a config speaks of the same records as the built-in tasks:

- the records `claimsutil.meds.Events` leaves out (after death, past the end of the data) are left out;
- `diagnosis_certainty` is explicit on every record: "suspected" or "confirmed" (the data may leave confirmed
  records null, which no ACES predicate can match: `other_cols` compare by equality);
- coverage is written as the periods of the study's one rule (`claimsutil.meds.coverage_periods`): a
  COVERAGE/START at each start and a COVERAGE/END at each end (text_value: the reason, null for a period still
  open at the end of the data, which closes there); a subject without coverage events gets the implied period.

ACES needs polars<2 (the study pins polars 2.x), so it runs in its own environment, `.venv-aces` at the project
root (`make aces` builds it with pinned versions), called as the `aces-cli` command. A missing environment, a
missing or invalid config, or a failing extraction stops with an `AcesError` naming the task and its config.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
import yaml

from claimsutil.cohort import ACES_EXCLUSION, CohortError, TaskCohort, draw_index
from claimsutil.cohort import build_tasks as build_builtin_tasks
from claimsutil.config import TaskSpec, root_path
from claimsutil.meds import (
    CERTAINTY_COLUMN,
    CONFIRMED,
    COVERAGE_END,
    COVERAGE_START,
    SUSPECTED,
    Events,
    coverage_periods,
    open_events,
)

ACES_ENV = ".venv-aces"  # at the project root; `make aces` builds it
VIEW_COLUMNS = {"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.String, "numeric_value": pl.Float32,
                "text_value": pl.String, CERTAINTY_COLUMN: pl.String}  # fmt: skip


class AcesError(CohortError):
    """An ACES task cannot be built: no ACES environment, a missing or invalid config, a failed extraction."""


def aces_cli() -> Path:
    """The `aces-cli` of the project's ACES environment (`.venv-aces` at the project root, else beside the
    environment running this code). Raises AcesError saying how to build it."""
    for env in (root_path(ACES_ENV), Path(sys.prefix).parent / ACES_ENV):
        if (env / "bin" / "aces-cli").is_file():
            return env / "bin" / "aces-cli"
    raise AcesError(f"the ACES environment {ACES_ENV} is missing at the project root: run `make aces` (ACES needs "
                    "polars<2, so it has its own environment)")  # fmt: skip


def config_file(spec: TaskSpec) -> Path:
    """The ACES config of task SPEC, from the project root; AcesError when it is not a readable file."""
    path = root_path(spec.aces)
    if not path.is_file():
        raise AcesError(f"task '{spec.name}': tasks.{spec.name}.aces = {spec.aces!r}: no such file in the project")
    return path


# ---------------------------------------------------------------------------------------------- the view
def view_shard(lf: pl.LazyFrame, end_of_data) -> pl.DataFrame:
    """One shard of the view ACES reads (module docstring), from a shard of `Events.scan`."""
    periods = coverage_periods(lf, end_of_data)
    none = {"numeric_value": pl.lit(None, pl.Float32), CERTAINTY_COLUMN: pl.lit(CONFIRMED)}
    starts = periods.select("subject_id", time="start", code=pl.lit(COVERAGE_START), text_value=pl.lit(None, pl.String),
                            **none)  # fmt: skip
    ends = periods.select("subject_id", time="end", code=pl.lit(COVERAGE_END), text_value="reason", **none)
    certainty = pl.when("suspected").then(pl.lit(SUSPECTED)).otherwise(pl.lit(CONFIRMED))
    records = lf.filter(~pl.col("code").is_in([COVERAGE_START, COVERAGE_END])).select(
        "subject_id", "time", "code", pl.col("numeric_value").cast(pl.Float32), "text_value",
        certainty.alias(CERTAINTY_COLUMN),
    )  # fmt: skip
    view = pl.concat([records, starts, ends], how="diagonal_relaxed")
    # Static records first, then by time (MEDS order); a stable sort keeps the shard's order within a time.
    return (
        view.select(pl.col(c).cast(t) for c, t in VIEW_COLUMNS.items())
        .sort("subject_id", "time", nulls_last=False, maintain_order=True)
        .collect()
    )


def write_view(events: Events, out_dir: Path) -> tuple[list[str], pl.DataFrame]:
    """The view of every shard as OUT_DIR/<i>.parquet; returns the shard names and every subject's id."""
    names, subjects = [], []
    for i, (_, lf) in enumerate(events.scans()):
        view = view_shard(lf, events.window.end)
        view.write_parquet(out_dir / f"{i}.parquet")
        names.append(str(i))
        subjects.append(view.select("subject_id").unique())
    return names, pl.concat(subjects).unique().sort("subject_id")


# ---------------------------------------------------------------------------------------------- running ACES
CANDIDATES = "__candidates"  # suffix of the derived config whose rows are the candidate indexes


def is_past_window(window: dict) -> bool:
    """Whether a config's window ends at the trigger or before it (`end: trigger`, `end: trigger - 30d`): its
    constraints judge a trigger on the past alone."""
    return bool(re.fullmatch(r"\s*trigger\s*(-\s*\S.*)?", str(window.get("end"))))


def candidate_config(config: dict) -> dict:
    """CONFIG with the constraints (`has`) of every window that is not a past window dropped: ACES then returns
    the triggers that qualify on the past, the study's candidate indexes."""
    out = dict(config)
    out["windows"] = {name: w if is_past_window(w) else {k: v for k, v in w.items() if k != "has"}
                      for name, w in (config.get("windows") or {}).items()}  # fmt: skip
    return out


def _write_configs(specs: list[TaskSpec], work: Path) -> None:
    """WORK/<task>.yaml (the config as given) and WORK/<task>__candidates.yaml (`candidate_config`)."""
    for spec in specs:
        path = config_file(spec)
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise AcesError(f"task '{spec.name}': {spec.aces} is not valid YAML ({e})".replace("\n", " ")) from None
        if not isinstance(config, dict) or not isinstance(config.get("windows"), dict):
            raise AcesError(f"task '{spec.name}': {spec.aces} has no `windows` mapping (an ACES task config has "
                            "`predicates`, `trigger` and `windows`)")  # fmt: skip
        shutil.copyfile(path, work / f"{spec.name}.yaml")
        (work / f"{spec.name}{CANDIDATES}.yaml").write_text(yaml.safe_dump(candidate_config(config), sort_keys=False))


def _failure(output: str, specs: list[TaskSpec]) -> str:
    """Which task's job failed and ACES's own message (its last error line), from aces-cli's output."""
    job = re.search(r"Error executing job with overrides: \[(.*?)\]", output)
    name = re.search(r"cohort_name=([^',\]]+)", job.group(1)).group(1).removesuffix(CANDIDATES) if job else None
    spec = next((s for s in specs if s.name == name), None)
    lines = output.splitlines()
    errors = [i for i, line in enumerate(lines) if re.match(r"^\s*[\w.]*(Error|Exception)\b.*:", line)]
    if errors:  # the error line and its continuation (a regex error spans lines), up to Hydra's hint
        tail = lines[errors[-1] : errors[-1] + 8]
        tail = tail[: next((i for i, line in enumerate(tail) if "HYDRA_FULL_ERROR" in line), len(tail))]
        why = " ".join(line.strip() for line in tail if line.strip())
    else:
        why = (output.strip().splitlines() or ["no output"])[-1]
    tasks = ", ".join(f"'{s.name}' ({s.aces})" for s in ([spec] if spec else specs))
    who = f"task {tasks}" if spec else f"task(s) {tasks}"
    return f"{who}: ACES could not extract the labels: {why}"


def run_aces(view_dir: Path, shards: list[str], specs: list[TaskSpec], work: Path) -> dict[str, pl.DataFrame]:
    """ACES's rows (subject_id, prediction_time, boolean_value) of every task in SPECS over the view's SHARDS,
    under the task's name (its config) and under name + CANDIDATES (`candidate_config`): one aces-cli process,
    a Hydra multirun over configs and shards."""
    cli = aces_cli()
    _write_configs(specs, work)
    names = [n for s in specs for n in (s.name, s.name + CANDIDATES)]
    command = [str(cli), "--multirun", "data=sharded", "data.standard=meds", f"data.root={view_dir}",
               f"data.shard={','.join(shards)}", f"cohort_dir={work}", f"cohort_name={','.join(names)}",
               "hydra/job_logging=disabled"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    output = done.stdout + "\n" + done.stderr
    if done.returncode != 0:
        raise AcesError(_failure(output, specs))
    out = {}
    for spec in specs:
        for name in (spec.name, spec.name + CANDIDATES):
            paths = [work / name / f"{shard}.parquet" for shard in shards]
            missing = [p.name for p in paths if not p.is_file()]
            if missing:
                raise AcesError(f"task '{spec.name}' ({spec.aces}): ACES wrote no rows for shard(s) {missing}")
            rows = pl.concat([pl.read_parquet(p, columns=["subject_id", "prediction_time", "boolean_value"])
                              for p in paths])  # fmt: skip
            out[name] = _checked(rows, spec)
    return out


def _checked(rows: pl.DataFrame, spec: TaskSpec) -> pl.DataFrame:
    """ACES's rows as label rows, or AcesError naming the config key the study needs."""
    where = f"task '{spec.name}' ({spec.aces})"
    if rows.height and rows["prediction_time"].null_count():
        raise AcesError(f"{where}: rows without a prediction time: give one window `index_timestamp: end` (or start)")
    if rows.height and rows["boolean_value"].null_count():
        raise AcesError(f"{where}: rows without a label: give one window `label: <predicate>` (the outcome)")
    dup = rows.filter(pl.struct("subject_id", "prediction_time").is_duplicated())
    if dup.height:
        first = dup.row(0, named=True)
        raise AcesError(f"{where}: {dup.height:,} rows share a subject and prediction time (e.g. subject "
                        f"{first['subject_id']} at {first['prediction_time']}): one index per trigger")  # fmt: skip
    return rows.select(pl.col("subject_id").cast(pl.Int64), pl.col("prediction_time").cast(pl.Datetime("us")),
                       pl.col("boolean_value").cast(pl.Boolean))  # fmt: skip


# ---------------------------------------------------------------------------------------------- one index each
def draw_one(candidates: pl.DataFrame, valid: pl.DataFrame, subjects: pl.DataFrame, spec: TaskSpec, seed: int,
             end_of_data) -> TaskCohort:  # fmt: skip
    """One index per patient drawn among CANDIDATES (those with a whole horizon before the end of the data) as
    the built-in tasks draw theirs; the patient is included, with ACES's label, when that index is among the
    config's VALID rows. Every subject of SUBJECTS gets a status (module docstring)."""
    horizon = dt.timedelta(days=spec.horizon_days)
    eligible = candidates.filter(pl.col("prediction_time") + horizon <= end_of_data)
    chosen = draw_index(eligible.select("subject_id", "prediction_time"), "prediction_time", seed, spec.name)
    labels = chosen.join(valid, on=["subject_id", "prediction_time"], how="inner").sort("subject_id")
    status = (
        subjects.join(chosen.with_columns(status=pl.lit(ACES_EXCLUSION)), on="subject_id", how="left")
        .join(labels.select("subject_id", included=pl.lit(True)), on="subject_id", how="left")
        .select("subject_id", status=pl.when("included").then(pl.lit("included"))
                .otherwise(pl.col("status").fill_null("insufficient_observation")))
    )  # fmt: skip
    return TaskCohort(spec, labels.select("subject_id", "prediction_time", "boolean_value"), status.sort("subject_id"))


def build_aces_tasks(events: Events | str | Path, specs: list[TaskSpec], seed: int) -> dict[str, TaskCohort]:
    """The cohorts of the ACES tasks SPECS: the view written once, ACES run once, one index per patient."""
    events = open_events(events)
    for spec in specs:
        config_file(spec)  # fail before the view is written
    with tempfile.TemporaryDirectory(prefix="claims-aces-") as tmp:
        view_dir, work = Path(tmp) / "view", Path(tmp) / "tasks"
        view_dir.mkdir()
        work.mkdir()
        shards, subjects = write_view(events, view_dir)
        rows = run_aces(view_dir, shards, specs, work)
    return {spec.name: draw_one(rows[spec.name + CANDIDATES], rows[spec.name], subjects, spec, seed,
                                events.window.end) for spec in specs}  # fmt: skip


def build_tasks(events: Events | str | Path, specs: tuple[TaskSpec, ...], seed: int) -> dict[str, TaskCohort]:
    """Every task's cohort, in the order of SPECS: the built-in ones by `claimsutil.cohort.build_tasks`, the ACES
    ones (`tasks.<name>.aces`) by their configs."""
    events = open_events(events)
    builtin = tuple(s for s in specs if s.aces is None)
    aces = [s for s in specs if s.aces is not None]
    found = build_builtin_tasks(events, builtin, seed) if builtin else {}
    if aces:
        found |= build_aces_tasks(events, aces, seed)
    return {spec.name: found[spec.name] for spec in specs}
