"""Task definitions -> labels, label budgets, Table 2 and the oracle ceiling (the splits: `claimsutil.splits`).

A task (params.yaml `tasks`) predicts, right after a visit, whether a first outcome record occurs within the
horizon. Per patient and task:

1. Candidate index receipts (distinct times of clinical events) have at least `min_prior_days` of
   continuous coverage before them and a whole horizon before the end of the data. None -> excluded,
   "insufficient_observation".
2. One candidate is drawn at random, seeded per (seed, task, patient): the same patient gets the same index
   whatever the sharding. The draw looks only at the past, never at when the outcome happens.
3. The prediction time is the midnight after the index receipt: models see every record up to and including
   the index visit (for MEDS, "up to and including prediction_time"; for our features, "strictly before").
   A task with a `population` (params.yaml `tasks.<name>.population`) draws only among receipts at which the
   patient belongs to it, judged on the past alone: a confirmed record of one of `prior_codes` before the
   prediction time, the age at the prediction time, the patient's sex and hospital. A patient with observed
   receipts but none inside the population -> excluded, "outside_population" (a patient diagnosed with diabetes
   only after every receipt that could be their index is not in a diabetes population). Age needs a MEDS_BIRTH
   record: without one the patient is outside an age-restricted population.
4. Washout: an outcome record (confirmed, plus suspected-only ones when `washout_suspected`) before the
   prediction time -> excluded, "prior_outcome".
5. Label: an outcome record in [prediction time, prediction time + horizon). No outcome and coverage ending
   (insurance change, death) before the horizon ends -> excluded, "censored".

Everything is read through `claimsutil.meds.Events`: records after death or past the end of the data are
neither index visits nor outcomes (they are counted there), and coverage follows the one rule of
`claimsutil.meds.coverage_periods` (a subject without coverage events, as in many users' data, is covered from
the first to the day after the last of their clinical events; a period still open at the data cut-off ends
there).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from claimsutil.config import CohortParams, Population, TaskSpec
from claimsutil.meds import (
    BIRTH_CODE,
    HOSPITAL_PREFIX,
    SEX_CODES,
    Events,
    clinical,
    coverage_periods,
    open_events,
    starts_with_any,
)
from claimsutil.splits import SPLITS, task_key, uniform_hash

EXCLUSIONS = ("insufficient_observation", "outside_population", "prior_outcome", "censored")
# An ACES task (`tasks.<name>.aces`, `claimsutil.aces`): no trigger of the patient passes its config's criteria.
ACES_EXCLUSION = "aces_criteria"
DAYS_PER_YEAR = 365.25
ONE_DAY = dt.timedelta(days=1)


class CohortError(ValueError):
    """A task cannot be built: no outcome in the data, or too few positives in a split."""


# ---------------------------------------------------------------------------------------------- reading
def _receipts(lf: pl.LazyFrame) -> pl.LazyFrame:
    return lf.filter(clinical()).select("subject_id", "time").unique().sort("subject_id", "time")


def _first_outcomes(lf: pl.LazyFrame, spec: TaskSpec) -> pl.LazyFrame:
    """Per subject: first outcome record (as the task counts them) and first record of any certainty."""
    hit = starts_with_any(spec.outcome) & pl.col("time").is_not_null()
    counts = pl.lit(True) if spec.suspected == "include" else ~pl.col("suspected")
    return (
        lf.filter(hit)
        .group_by("subject_id")
        .agg(
            first_outcome=pl.col("time").filter(counts).min(),
            first_any=pl.col("time").min(),
        )
    )


def _population_attributes(lf: pl.LazyFrame, population: Population) -> pl.DataFrame:
    """Per subject, what a population is judged on: birth time, sex, hospital and the first confirmed record
    of the population's prior codes (null where absent)."""
    code = pl.col("code")
    prior = (starts_with_any(population.prior_codes) & ~pl.col("suspected") & pl.col("time").is_not_null()
             if population.prior_codes else pl.lit(False))  # fmt: skip
    relevant = (code == BIRTH_CODE) | code.is_in(list(SEX_CODES)) | code.str.starts_with(HOSPITAL_PREFIX) | prior
    return (
        lf.filter(relevant)  # a few records per patient: the group_by reads no other
        .group_by("subject_id")
        .agg(
            birth=pl.col("time").filter(code == BIRTH_CODE).min(),
            sex=code.filter(code.is_in(list(SEX_CODES))).first().replace_strict(SEX_CODES, default=None),
            hospital=code.filter(code.str.starts_with(HOSPITAL_PREFIX)).min().str.strip_prefix(HOSPITAL_PREFIX),
            first_prior=pl.col("time").filter(prior).min(),
        )
        .collect()
    )


def hospital_names(population: Population) -> list[str]:
    """The population's hospitals as the splits name them (HOSPITAL/H03 and H03 both mean H03)."""
    return [h.removeprefix(HOSPITAL_PREFIX) for h in population.hospitals]


def in_population(population: Population) -> pl.Expr:
    """True for a candidate receipt (with `prediction_time` and `_population_attributes`) inside POPULATION."""
    keep = pl.lit(True)
    if population.prior_codes:
        keep &= (pl.col("first_prior") < pl.col("prediction_time")).fill_null(False)
    age = (pl.col("prediction_time") - pl.col("birth")).dt.total_days() / DAYS_PER_YEAR
    if population.min_age is not None:
        keep &= (age >= population.min_age).fill_null(False)
    if population.max_age is not None:
        keep &= (age < population.max_age).fill_null(False)
    if population.sex is not None:
        keep &= (pl.col("sex") == population.sex).fill_null(False)
    if population.hospitals:
        keep &= pl.col("hospital").is_in(hospital_names(population)).fill_null(False)
    return keep


# ---------------------------------------------------------------------------------------------- labels
@dataclass
class TaskCohort:
    """One task's labels (MEDS label schema, one row per included patient) and every patient's status."""

    spec: TaskSpec
    labels: pl.DataFrame  # subject_id, prediction_time, boolean_value
    status: pl.DataFrame  # subject_id, status ("included" or one of EXCLUSIONS)


def _located_receipts(lf: pl.LazyFrame, end_of_data: dt.datetime) -> pl.DataFrame:
    """Every receipt with the coverage period it falls in (receipts outside coverage are dropped)."""
    receipts = _receipts(lf)
    periods = coverage_periods(lf, end_of_data).select("subject_id", "start", "end").sort("start")
    return (
        receipts.sort("time")
        .join_asof(
            periods, left_on="time", right_on="start", by="subject_id", strategy="backward", check_sortedness=False
        )
        .filter(pl.col("time") < pl.col("end"))
        .collect()
    )


def draw_index(candidates: pl.DataFrame, order: str, seed: int, task: str) -> pl.DataFrame:
    """One row per subject of CANDIDATES: ranked by ORDER within the subject, rank floor(u * n) is kept, u =
    `uniform_hash(subject_id, seed, task_key(task))` and n the subject's number of candidates. The one index draw
    of every task, built-in or ACES-defined (`claimsutil.aces`)."""
    ranked = candidates.sort("subject_id", order).with_columns(
        rank=pl.int_range(pl.len()).over("subject_id"), n=pl.len().over("subject_id")
    )
    pick = np.floor(uniform_hash(ranked["subject_id"].to_numpy(), seed, task_key(task)) * ranked["n"].to_numpy())
    return ranked.filter(pl.Series(pick == ranked["rank"].to_numpy())).drop("rank", "n")


def _shard_cohort(
    lf: pl.LazyFrame, located: pl.DataFrame, subjects: pl.DataFrame, spec: TaskSpec, seed: int, end_of_data
) -> TaskCohort:
    horizon = dt.timedelta(days=spec.horizon_days)
    prediction_time = pl.col("time").dt.truncate("1d") + ONE_DAY  # the midnight after the index receipt
    observed = located.with_columns(prediction_time=prediction_time).filter(
        (pl.col("time") - pl.col("start") >= dt.timedelta(days=spec.min_prior_days))
        & (pl.col("prediction_time") + horizon <= end_of_data)
    )
    outside = observed.select("subject_id").unique()
    if spec.population.restricted:
        attributes = _population_attributes(lf, spec.population)
        observed = observed.join(attributes, on="subject_id", how="left").filter(in_population(spec.population))
        outside = outside.join(observed.select("subject_id").unique(), on="subject_id", how="anti")
    else:
        outside = outside.clear()
    # The index is drawn among receipts that qualify on the past alone: drawing only among receipts before the
    # outcome would let the future choose the index.
    candidates = observed.select("subject_id", "time", "start", "end", "prediction_time").join(
        _first_outcomes(lf, spec).collect(), on="subject_id", how="left"
    )
    washout = pl.min_horizontal("first_outcome", "first_any") if spec.washout_suspected else pl.col("first_outcome")
    horizon_end = pl.col("prediction_time") + horizon
    chosen = draw_index(candidates, "time", seed, spec.name).with_columns(
        prior=(washout < pl.col("prediction_time")).fill_null(False),
        positive=(pl.col("first_outcome") < horizon_end).fill_null(False),
        censored=pl.col("end") < horizon_end,
    )
    labels = chosen.filter(~pl.col("prior") & (pl.col("positive") | ~pl.col("censored"))).select(
        "subject_id", "prediction_time", boolean_value="positive"
    )
    status = (
        pl.when(pl.col("prior"))
        .then(pl.lit("prior_outcome"))
        .when(pl.col("censored") & ~pl.col("positive"))
        .then(pl.lit("censored"))
        .otherwise(pl.lit("included"))
    )
    outside = outside.with_columns(status=pl.lit("outside_population"))
    status = pl.concat([chosen.select("subject_id", status=status), outside])
    status = subjects.join(status, on="subject_id", how="left").with_columns(
        pl.col("status").fill_null("insufficient_observation")
    )
    return TaskCohort(spec, labels.sort("subject_id"), status.sort("subject_id"))


def build_tasks(events: Events | str | Path, specs: tuple[TaskSpec, ...], seed: int) -> dict[str, TaskCohort]:
    """Labels and statuses of every task, reading each shard once (one shard in memory at a time). Records
    after death or past the end of the data are neither index visits nor outcomes (`claimsutil.meds.Events`)."""
    aces = [f"'{spec.name}' ({spec.aces})" for spec in specs if spec.aces is not None]
    if aces:  # never the built-in rules in place of a task's own definition
        raise CohortError(f"task(s) {', '.join(aces)} are defined by ACES configs: build them with "
                          "claimsutil.aces.build_tasks")  # fmt: skip
    events = open_events(events)
    end_of_data = events.window.end
    parts: dict[str, list[TaskCohort]] = {spec.name: [] for spec in specs}
    for _, lf in events.scans():
        lf = lf.select("subject_id", "time", "code", "text_value", "suspected")
        located = _located_receipts(lf, end_of_data)
        subjects = lf.select("subject_id").unique().collect()
        for spec in specs:
            parts[spec.name].append(_shard_cohort(lf, located, subjects, spec, seed, end_of_data))
    out = {}
    for spec in specs:
        labels = pl.concat([p.labels for p in parts[spec.name]])
        labels = labels.with_columns(pl.col("prediction_time").cast(pl.Datetime("us")))
        out[spec.name] = TaskCohort(spec, labels, pl.concat([p.status for p in parts[spec.name]]))
    return out


# ---------------------------------------------------------------------------------------------- budgets
def sample_budgets(labels: pl.DataFrame, splits: pl.DataFrame, task: str, params: CohortParams,
                   budgets: tuple[int, ...] | None = None) -> pl.DataFrame:  # fmt: skip
    """Balanced (1:1) samples of the training patients for each label budget (BUDGETS, default
    `cohort.budgets` up to the task's `max_budget`) and seed.

    Columns: subject_id, budget, seed. Raises CohortError when a budget needs more positives than exist.
    """
    train = labels.join(splits.filter(pl.col("split") == "train"), on="subject_id").sort("subject_id")
    pos = train.filter(pl.col("boolean_value"))["subject_id"].to_numpy()
    neg = train.filter(~pl.col("boolean_value"))["subject_id"].to_numpy()
    rows = []
    for budget in budgets or params.budgets:
        half = budget // 2
        if len(pos) < half or len(neg) < half:
            raise CohortError(
                f"task '{task}': label budget {budget} needs {half} positives and {half} negatives in the training "
                f"split, which has {len(pos)} positives and {len(neg)} negatives (set `tasks.{task}.max_budget` to "
                f"at most {2 * min(len(pos), len(neg))}, or lower `cohort.budgets`)"
            )
        for s in range(params.budget_seeds):
            rng = np.random.default_rng([params.seed, task_key(task), budget, s])
            chosen = np.concatenate([rng.choice(pos, half, replace=False), rng.choice(neg, half, replace=False)])
            rows.append(pl.DataFrame({"subject_id": np.sort(chosen), "budget": budget, "seed": s}))
    schema = {"subject_id": pl.Int64, "budget": pl.Int32, "seed": pl.Int32}
    return pl.concat([r.cast(schema) for r in rows]) if rows else pl.DataFrame(schema=schema)


def evaluation_sample(test: pl.DataFrame, negatives: int | None, seed: int, task: str) -> pl.DataFrame:
    """The scored test patients: every positive and NEGATIVES seeded negatives (None: all), with the weight
    that makes the sample stand for the whole test split (1 for positives, all / sampled for negatives).
    Columns: subject_id, prediction_time, boolean_value, weight; sorted by subject_id. Every model of the study
    (fine-tuned, from scratch, LightGBM, the oracle, zero-shot) is scored on this one sample."""
    test = test.select("subject_id", "prediction_time", "boolean_value").sort("subject_id")
    pos, neg = test.filter(pl.col("boolean_value")), test.filter(~pl.col("boolean_value"))
    if negatives is not None and negatives < neg.height:
        rng = np.random.default_rng([seed, task_key(task), 1])
        neg = neg[np.sort(rng.choice(neg.height, negatives, replace=False))]
        weight = test.height - pos.height
        neg = neg.with_columns(weight=pl.lit(weight / negatives))
    else:
        neg = neg.with_columns(weight=pl.lit(1.0))
    return pl.concat([pos.with_columns(weight=pl.lit(1.0)), neg]).sort("subject_id")


def early_stopping_sample(validation: pl.DataFrame, size: int, seed: int, task: str) -> pl.DataFrame:
    """A fixed sample of SIZE validation patients: up to half positives, the rest negatives (balanced like the
    label budgets). Sorted by subject_id. Every model early-stops on this one sample."""
    validation = validation.select("subject_id", "prediction_time", "boolean_value").sort("subject_id")
    pos, neg = validation.filter(pl.col("boolean_value")), validation.filter(~pl.col("boolean_value"))
    rng = np.random.default_rng([seed, task_key(task), 2])
    n_pos = min(pos.height, size // 2)
    n_neg = min(neg.height, size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"task '{task}': the validation split needs positives and negatives for early stopping")
    chosen = [pos[np.sort(rng.choice(pos.height, n_pos, replace=False))]]
    chosen.append(neg[np.sort(rng.choice(neg.height, n_neg, replace=False))])
    return pl.concat(chosen).sort("subject_id")


def task_samples(cohorts: dict[str, TaskCohort], splits: pl.DataFrame, params: CohortParams) -> dict[str, dict]:
    """Per task: the evaluation sample (test) and the early-stopping sample (validation) of every model."""
    out = {}
    for name, c in cohorts.items():
        labels = c.labels.join(splits.select("subject_id", "split"), on="subject_id")
        out[name] = {
            "evaluation": evaluation_sample(labels.filter(pl.col("split") == "test"), params.test_negatives,
                                            params.seed, name),
            "validation": early_stopping_sample(labels.filter(pl.col("split") == "validation"),
                                                params.validation_patients, params.seed, name),
        }  # fmt: skip
    return out


def read_sample(cohort_dir: str | Path, task: str, kind: str) -> pl.DataFrame:
    """A task's "evaluation" (test, weighted) or "validation" (early-stopping) sample."""
    path = Path(cohort_dir) / kind / f"{task}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no {kind} sample for task '{task}' (the cohort stage writes it)")
    return pl.read_parquet(path)


# ---------------------------------------------------------------------------------------------- checks and Table 2
def outcome_event_count(events: Events | str | Path, spec: TaskSpec) -> int:
    """Records of the outcome's codes in the data (the study's view: after death and past the end left out)."""
    return sum(lf.filter(starts_with_any(spec.outcome)).select(pl.len()).collect().item()
               for _, lf in open_events(events).scans())  # fmt: skip


def task_problems(
    events: Events | str | Path, cohort: TaskCohort, splits: pl.DataFrame, min_positives: int
) -> list[str]:
    """Why a task cannot be evaluated (empty when it can): no outcome record at all, or fewer positives than
    MIN_POSITIVES in a split; each message names the task, its codes and its counts per split."""
    spec = cohort.spec
    known = set(splits["hospital"].drop_nulls().to_list()) if "hospital" in splits.columns else set()
    unknown = [h for h, name in zip(spec.population.hospitals, hospital_names(spec.population), strict=True)
               if name not in known]  # fmt: skip
    if unknown:
        return [f"task '{spec.name}': `tasks.{spec.name}.population.hospitals` lists {unknown}, which no patient's "
                f"HOSPITAL/ code matches (the data has {len(known)}: e.g. {sorted(known)[:3]})"]  # fmt: skip
    if outcome_event_count(events, spec) == 0:
        return [f"task '{spec.name}': no event matches the outcome code prefixes {list(spec.outcome)}; check "
                f"`tasks.{spec.name}.outcome` in params.yaml against the codes in metadata/codes.parquet"]  # fmt: skip
    counts = {r["split"]: r for r in per_split_counts(cohort.labels, splits).iter_rows(named=True)}
    per_split = {s: (counts.get(s, {}).get("patients", 0), counts.get(s, {}).get("positives", 0))
                 for s in ("train", "validation", "test")}  # fmt: skip
    short = [s for s, (_, pos) in per_split.items() if pos < min_positives]
    if not short:
        return []
    shown = "; ".join(f"{s}: {n:,} patients, {pos:,} positives" for s, (n, pos) in per_split.items())
    why = f"fewer than cohort.min_positives = {min_positives} positives in the {', '.join(short)} split(s)"
    return [
        f"task '{spec.name}' (outcome {list(spec.outcome)}): {why} ({shown}); use more patients or a longer horizon"
    ]


def check_tasks(events: Events | str | Path, cohorts: dict[str, TaskCohort], splits: pl.DataFrame,
                min_positives: int) -> None:  # fmt: skip
    """Stop with every failing task at once (a CohortError listing each), never an empty cohort silently."""
    problems = [p for c in cohorts.values() for p in task_problems(events, c, splits, min_positives)]
    if problems:
        n = len(problems)
        raise CohortError(
            f"{n} of {len(cohorts)} task(s) cannot be evaluated:\n" + "\n".join(f"- {p}" for p in problems)
        )


def per_split_counts(labels: pl.DataFrame, splits: pl.DataFrame) -> pl.DataFrame:
    joined = labels.join(splits.select("subject_id", "split"), on="subject_id", how="left")
    return joined.group_by("split").agg(
        patients=pl.len().cast(pl.Int64), positives=pl.col("boolean_value").sum().cast(pl.Int64)
    )


def table2(cohorts: dict[str, TaskCohort], splits: pl.DataFrame) -> pl.DataFrame:
    """Table 2: per task, eligible patients, positives, rate, exclusions by reason, per-split counts."""
    rows = []
    reasons = EXCLUSIONS + ((ACES_EXCLUSION,) if any(c.spec.aces for c in cohorts.values()) else ())
    for name, c in cohorts.items():
        status = dict(c.status["status"].value_counts().iter_rows())
        by_split = {r["split"]: r for r in per_split_counts(c.labels, splits).iter_rows(named=True)}
        row = {
            "task": name,
            "outcome": " ".join(c.spec.outcome),
            "population": f"as {c.spec.aces} (ACES)" if c.spec.aces else c.spec.population.describe() or "all",
            "patients": c.status.height,
            "eligible": c.labels.height,
            "positives": int(c.labels["boolean_value"].sum()),
            **{f"excluded_{reason}": status.get(reason, 0) for reason in reasons},
        }
        for split in SPLITS:
            row[f"{split}_patients"] = by_split.get(split, {}).get("patients", 0)
            row[f"{split}_positives"] = by_split.get(split, {}).get("positives", 0)
        rows.append(row)
    table = pl.DataFrame(rows).with_columns(pl.col(pl.Int32, pl.UInt32).cast(pl.Int64))
    return table.with_columns(positive_rate=pl.col("positives") / pl.col("eligible")).select(
        "task", "outcome", "population", "patients", "eligible", "positives", "positive_rate", pl.all().exclude(
            "task", "outcome", "population", "patients", "eligible", "positives", "positive_rate"
        )
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- outputs
def _label_schema():
    import meds  # imported where it is used: it is slow to import

    return meds.LabelSchema


def write_cohort(
    out_dir: str | Path,
    cohorts: dict[str, TaskCohort],
    splits: pl.DataFrame,
    budgets: dict[str, pl.DataFrame],
    samples: dict[str, dict[str, pl.DataFrame]],
) -> None:
    """data/cohort: labels/<task>.parquet (MEDS label schema), splits.parquet (a copy of the splits stage's),
    budgets/<task>.parquet, evaluation/<task>.parquet and validation/<task>.parquet (`task_samples`)."""
    out = Path(out_dir)
    for sub in ("labels", "budgets", "evaluation", "validation"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name, c in cohorts.items():
        table = c.labels.select("subject_id", "prediction_time", "boolean_value").to_arrow()
        _label_schema().validate(table)  # the MEDS label schema, exactly
        pl.from_arrow(table).write_parquet(out / "labels" / f"{name}.parquet")
        budgets[name].write_parquet(out / "budgets" / f"{name}.parquet")
        for kind, frame in samples[name].items():
            frame.write_parquet(out / kind / f"{name}.parquet")
    splits.write_parquet(out / "splits.parquet")


def read_labels(cohort_dir: str | Path, task: str, split: str | None = None) -> pl.DataFrame:
    """A task's labels, with each patient's split; only SPLIT's patients when given."""
    cohort_dir = Path(cohort_dir)
    path = cohort_dir / "labels" / f"{task}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no labels for task '{task}' (tasks are declared in params.yaml)")
    labels = pl.read_parquet(path).join(pl.read_parquet(cohort_dir / "splits.parquet"), on="subject_id", how="left")
    return labels.filter(pl.col("split") == split) if split else labels


def task_table(specs: tuple[TaskSpec, ...]) -> pl.DataFrame:
    """The declared tasks, as the notebook shows them."""
    return pl.DataFrame(
        [
            {
                "task": s.name,
                "outcome": " ".join(s.outcome),
                "horizon_days": s.horizon_days,
                "min_prior_days": s.min_prior_days,
                "suspected": s.suspected,
                "washout_suspected": s.washout_suspected,
                "population": s.population.describe() or "all",
                "budgets": " ".join(map(str, s.budgets)),
            }  # fmt: skip
            for s in specs
        ]
    )


def sample_all_budgets(cohorts: dict[str, TaskCohort], splits: pl.DataFrame, params: CohortParams) -> dict:
    """`sample_budgets` of every task at its own budgets: task -> (subject_id, budget, seed)."""
    return {name: sample_budgets(c.labels, splits, name, params, c.spec.budgets) for name, c in cohorts.items()}


def data_notes(events: Events) -> dict[str, object]:
    """What the cohorts were built on: the end of the data (and its rule) and the records left out."""
    return {"data_end": events.window.end.date().isoformat(), "data_end_rule": events.window.rule,
            **{f"records_{reason}": n for reason, n in events.dropped.items()}}  # fmt: skip


def records_at_prediction_time(events: Events | str | Path, cohorts: dict[str, TaskCohort],
                               splits: pl.DataFrame) -> pl.DataFrame:  # fmt: skip
    """Per task, the labelled patients with a record stamped exactly at their prediction time (the midnight
    after the index visit, so the next day's records). MEDS tools read such a record as known at the prediction
    time (their inputs run "up to and including" it); the study's models and features stop strictly before it.
    Columns: task, labels, with_record, test_labels, test_with_record (one pass over the data)."""
    events = open_events(events)
    labels = pl.concat([c.labels.select("subject_id", pl.col("prediction_time").cast(pl.Datetime("us")),
                                        task=pl.lit(name)) for name, c in cohorts.items()])  # fmt: skip
    hits = []
    for _, lf in events.scans():
        stamps = lf.select("subject_id", prediction_time=pl.col("time").cast(pl.Datetime("us"))).drop_nulls().unique()
        hits.append(labels.lazy().join(stamps, on=["subject_id", "prediction_time"], how="semi").collect())
    hit = pl.concat(hits).select("task", "subject_id").with_columns(with_record=pl.lit(True))
    test, seen = pl.col("split") == "test", pl.col("with_record").fill_null(False)
    joined = labels.join(hit, on=["task", "subject_id"], how="left")
    joined = joined.join(splits.select("subject_id", "split"), on="subject_id", how="left")
    return joined.group_by("task", maintain_order=True).agg(
        labels=pl.len(), with_record=seen.sum(), test_labels=test.sum(), test_with_record=(test & seen).sum()
    )


def cohort_metrics(table2: pl.DataFrame, oracle: dict[str, dict], notes: dict | None = None,
                   at_prediction_time: pl.DataFrame | None = None) -> dict:  # fmt: skip
    """The cohort stage's metrics JSON: Table 2's numbers per task, the oracle's AUPRC/AUROC/Brier, the labels
    with a record at their prediction time (`records_at_prediction_time`) and the data notes (`data_notes`)
    under "data"."""
    out: dict = {"data": dict(notes)} if notes else {}
    for row in table2.iter_rows(named=True):
        task = row.pop("task")
        row.pop("outcome")
        row.pop("population")
        entry = {k: v for k, v in row.items()}
        if task in oracle:
            entry["oracle"] = {m: oracle[task][m] for m in ("auprc", "auroc", "brier")}
        if at_prediction_time is not None:
            row = at_prediction_time.filter(pl.col("task") == task)
            entry["labels_with_record_at_prediction_time"] = int(row["with_record"].sum())
            entry["test_labels_with_record_at_prediction_time"] = int(row["test_with_record"].sum())
        out[task] = entry
    return out
