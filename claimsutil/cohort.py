"""Task definitions -> labels, patient-level splits, label budgets, Table 2 and the oracle ceiling.

A task (params.yaml `tasks`) predicts, right after a visit, whether a first outcome record occurs within the
horizon. Per patient and task:

1. Candidate index receipts (distinct times of clinical events) have at least `min_prior_days` of
   continuous coverage before them and a whole horizon before the end of the data. None -> excluded,
   "insufficient_observation".
2. One candidate is drawn at random, seeded per (seed, task, patient): the same patient gets the same index
   whatever the sharding. The draw looks only at the past, never at when the outcome happens.
3. The prediction time is the midnight after the index receipt: models see every record up to and including
   the index visit (for MEDS, "up to and including prediction_time"; for our features, "strictly before").
4. Washout: an outcome record (confirmed, plus suspected-only ones when `washout_suspected`) before the
   prediction time -> excluded, "prior_outcome".
5. Label: an outcome record in [prediction time, prediction time + horizon). No outcome and coverage ending
   (insurance change, death) before the horizon ends -> excluded, "censored".

Coverage comes from COVERAGE/START and COVERAGE/END events; a subject without them (a user's data) is
taken as covered from the first to the day after the last of their clinical events.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass
from pathlib import Path

import meds
import numpy as np
import polars as pl

from claimsutil.config import CohortParams, TaskSpec
from claimsutil.meds import CERTAINTY_COLUMN, COVERAGE_END, COVERAGE_START, SUSPECTED, shard_paths

NON_CLINICAL = ("MEDS_BIRTH", "MEDS_DEATH", COVERAGE_START, COVERAGE_END)
EXCLUSIONS = ("insufficient_observation", "prior_outcome", "censored")
SPLITS = ("train", "validation", "test", "held_out_hospital")
ONE_DAY = dt.timedelta(days=1)


class CohortError(ValueError):
    """A task cannot be built: no outcome in the data, or too few positives in a split."""


def uniform_hash(ids: np.ndarray, *key: int) -> np.ndarray:
    """A uniform [0, 1) number per id, fixed by (key, id): splitmix64, so no sharding or order changes it."""
    x = ids.astype(np.uint64)
    for k in key:
        x = x ^ np.uint64(k & 0xFFFFFFFFFFFFFFFF)
        with np.errstate(over="ignore"):
            x = x + np.uint64(0x9E3779B97F4A7C15)
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def task_key(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


# ---------------------------------------------------------------------------------------------- reading
def _scan(path: Path) -> pl.LazyFrame:
    lf = pl.scan_parquet(path)
    names = lf.collect_schema().names()
    suspected = (pl.col(CERTAINTY_COLUMN) == SUSPECTED).fill_null(False) if CERTAINTY_COLUMN in names else pl.lit(False)
    return lf.select("subject_id", "time", "code", suspected.alias("suspected"))


def data_end(root: str | Path) -> dt.datetime:
    """The end of the data: the latest COVERAGE/END, or the day after the latest event if there are none."""
    ends, events = [], []
    for path in shard_paths(root):
        lf = pl.scan_parquet(path).select("time", "code")
        ends.append(lf.filter(pl.col("code") == COVERAGE_END).select(pl.col("time").max()).collect().item())
        events.append(lf.select(pl.col("time").max()).collect().item())
    if any(e is not None for e in ends):
        return max(e for e in ends if e is not None)
    return max(e for e in events if e is not None) + dt.timedelta(days=1)


def _periods(lf: pl.LazyFrame, receipts: pl.LazyFrame) -> pl.LazyFrame:
    """Coverage periods (subject_id, start, end): the k-th START with the k-th END; subjects without any
    coverage events are covered from their first to the day after their last clinical event."""
    cov = lf.filter(pl.col("code").is_in([COVERAGE_START, COVERAGE_END]) & pl.col("time").is_not_null())
    cov = cov.sort("subject_id", "time").with_columns(k=pl.int_range(pl.len()).over("subject_id", "code"))
    starts = cov.filter(pl.col("code") == COVERAGE_START).select("subject_id", "k", start="time")
    ends = cov.filter(pl.col("code") == COVERAGE_END).select("subject_id", "k", end="time")
    periods = starts.join(ends, on=["subject_id", "k"], how="inner").select("subject_id", "start", "end")
    implied = (
        receipts.group_by("subject_id")
        .agg(start=pl.col("time").min(), end=pl.col("time").max() + dt.timedelta(days=1))
        .join(cov.select("subject_id").unique(), on="subject_id", how="anti")
    )
    return pl.concat([periods, implied]).sort("subject_id", "start")


def _receipts(lf: pl.LazyFrame) -> pl.LazyFrame:
    clinical = lf.filter(pl.col("time").is_not_null() & ~pl.col("code").is_in(NON_CLINICAL))
    return clinical.select("subject_id", "time").unique().sort("subject_id", "time")


def _first_outcomes(lf: pl.LazyFrame, spec: TaskSpec) -> pl.LazyFrame:
    """Per subject: first outcome record (as the task counts them) and first record of any certainty."""
    hit = pl.any_horizontal([pl.col("code").str.starts_with(p) for p in spec.outcome]) & pl.col("time").is_not_null()
    counts = pl.lit(True) if spec.suspected == "include" else ~pl.col("suspected")
    return (
        lf.filter(hit)
        .group_by("subject_id")
        .agg(
            first_outcome=pl.col("time").filter(counts).min(),
            first_any=pl.col("time").min(),
        )
    )


# ---------------------------------------------------------------------------------------------- labels
@dataclass
class TaskCohort:
    """One task's labels (MEDS label schema, one row per included patient) and every patient's status."""

    spec: TaskSpec
    labels: pl.DataFrame  # subject_id, prediction_time, boolean_value
    status: pl.DataFrame  # subject_id, status ("included" or one of EXCLUSIONS)


def _located_receipts(lf: pl.LazyFrame) -> pl.DataFrame:
    """Every receipt with the coverage period it falls in (receipts outside coverage are dropped)."""
    receipts = _receipts(lf)
    periods = _periods(lf, receipts).sort("start")
    return (
        receipts.sort("time")
        .join_asof(
            periods, left_on="time", right_on="start", by="subject_id", strategy="backward", check_sortedness=False
        )
        .filter(pl.col("time") < pl.col("end"))
        .collect()
    )


def _shard_cohort(
    lf: pl.LazyFrame, located: pl.DataFrame, subjects: pl.DataFrame, spec: TaskSpec, seed: int, end_of_data
) -> TaskCohort:
    horizon = dt.timedelta(days=spec.horizon_days)
    prediction_time = pl.col("time").dt.truncate("1d") + ONE_DAY  # the midnight after the index receipt
    observed = located.with_columns(prediction_time=prediction_time).filter(
        (pl.col("time") - pl.col("start") >= dt.timedelta(days=spec.min_prior_days))
        & (pl.col("prediction_time") + horizon <= end_of_data)
    )
    # The index is drawn among receipts that qualify on the past alone: drawing only among receipts before the
    # outcome would let the future choose the index.
    candidates = (
        observed.join(_first_outcomes(lf, spec).collect(), on="subject_id", how="left")
        .sort("subject_id", "time")
        .with_columns(rank=pl.int_range(pl.len()).over("subject_id"), n=pl.len().over("subject_id"))
    )
    pick = np.floor(uniform_hash(candidates["subject_id"].to_numpy(), seed, task_key(spec.name)) * candidates["n"])
    washout = pl.min_horizontal("first_outcome", "first_any") if spec.washout_suspected else pl.col("first_outcome")
    horizon_end = pl.col("prediction_time") + horizon
    chosen = candidates.filter(pl.Series(pick.to_numpy() == candidates["rank"].to_numpy())).with_columns(
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
    status = subjects.join(chosen.select("subject_id", status=status), on="subject_id", how="left").with_columns(
        pl.col("status").fill_null("insufficient_observation")
    )
    return TaskCohort(spec, labels.sort("subject_id"), status.sort("subject_id"))


def build_tasks(root: str | Path, specs: tuple[TaskSpec, ...], seed: int) -> dict[str, TaskCohort]:
    """Labels and statuses of every task, reading each shard once (one shard in memory at a time)."""
    end_of_data = data_end(root)
    parts: dict[str, list[TaskCohort]] = {spec.name: [] for spec in specs}
    for path in shard_paths(root):
        lf = _scan(path)
        located = _located_receipts(lf)
        subjects = lf.select("subject_id").unique().collect()
        for spec in specs:
            parts[spec.name].append(_shard_cohort(lf, located, subjects, spec, seed, end_of_data))
    out = {}
    for spec in specs:
        labels = pl.concat([p.labels for p in parts[spec.name]])
        labels = labels.with_columns(pl.col("prediction_time").cast(pl.Datetime("us")))
        out[spec.name] = TaskCohort(spec, labels, pl.concat([p.status for p in parts[spec.name]]))
    return out


# ---------------------------------------------------------------------------------------------- splits
def subject_hospitals(root: str | Path) -> pl.DataFrame:
    """Every subject with its hospital (first static HOSPITAL/ code; null when the data has none)."""
    parts = []
    for path in shard_paths(root):
        lf = pl.scan_parquet(path).select("subject_id", "code")
        hosp = (
            lf.filter(pl.col("code").str.starts_with("HOSPITAL/"))
            .group_by("subject_id")
            .agg(hospital=pl.col("code").min().str.strip_prefix("HOSPITAL/"))
        )
        parts.append(lf.select("subject_id").unique().join(hosp, on="subject_id", how="left").collect())
    return pl.concat(parts).sort("subject_id")


def assign_splits(hospitals: pl.DataFrame, params: CohortParams) -> pl.DataFrame:
    """Patient-level train / validation / test, plus whole hospitals held out for transfer experiments.

    Hospitals are held out by a seeded draw; other patients are split by a hash of (seed, subject id), so
    a patient's split does not depend on the other patients. Columns: subject_id, hospital, split.
    """
    names = sorted(h for h in hospitals["hospital"].unique().to_list() if h is not None)
    if params.held_out_hospitals and len(names) <= params.held_out_hospitals:
        raise CohortError(
            f"cohort.held_out_hospitals = {params.held_out_hospitals} but the data has {len(names)} hospital(s); "
            "at least one must remain for training"
        )
    rng = np.random.default_rng([params.seed, task_key("held_out_hospitals")])
    held = sorted(rng.choice(names, size=params.held_out_hospitals, replace=False).tolist()) if names else []
    u = uniform_hash(hospitals["subject_id"].to_numpy(), params.seed, task_key("split"))
    train, validation = params.split["train"], params.split["validation"]
    split = np.where(u < train, "train", np.where(u < train + validation, "validation", "test"))
    return hospitals.with_columns(
        split=pl.when(pl.col("hospital").is_in(held)).then(pl.lit("held_out_hospital")).otherwise(pl.Series(split))
    )


def sample_budgets(labels: pl.DataFrame, splits: pl.DataFrame, task: str, params: CohortParams) -> pl.DataFrame:
    """Balanced (1:1) samples of the training patients for each label budget and seed.

    Columns: subject_id, budget, seed. Raises CohortError when a budget needs more positives than exist.
    """
    train = labels.join(splits.filter(pl.col("split") == "train"), on="subject_id").sort("subject_id")
    pos = train.filter(pl.col("boolean_value"))["subject_id"].to_numpy()
    neg = train.filter(~pl.col("boolean_value"))["subject_id"].to_numpy()
    rows = []
    for budget in params.budgets:
        half = budget // 2
        if len(pos) < half or len(neg) < half:
            raise CohortError(
                f"task '{task}': label budget {budget} needs {half} positives and {half} negatives in the training "
                f"split, which has {len(pos)} positives and {len(neg)} negatives"
            )
        for s in range(params.budget_seeds):
            rng = np.random.default_rng([params.seed, task_key(task), budget, s])
            chosen = np.concatenate([rng.choice(pos, half, replace=False), rng.choice(neg, half, replace=False)])
            rows.append(pl.DataFrame({"subject_id": np.sort(chosen), "budget": budget, "seed": s}))
    schema = {"subject_id": pl.Int64, "budget": pl.Int32, "seed": pl.Int32}
    return pl.concat([r.cast(schema) for r in rows]) if rows else pl.DataFrame(schema=schema)


# ---------------------------------------------------------------------------------------------- checks and Table 2
def outcome_event_count(root: str | Path, spec: TaskSpec) -> int:
    hit = pl.any_horizontal([pl.col("code").str.starts_with(p) for p in spec.outcome])
    return sum(
        pl.scan_parquet(p).select("code").filter(hit).select(pl.len()).collect().item() for p in shard_paths(root)
    )


def check_task(root: str | Path, cohort: TaskCohort, splits: pl.DataFrame, min_positives: int) -> None:
    """Stop with a clear message on a task that cannot be evaluated; never an empty cohort silently."""
    spec = cohort.spec
    if outcome_event_count(root, spec) == 0:
        raise CohortError(
            f"task '{spec.name}': no event in {root} matches the outcome code prefixes {list(spec.outcome)}; "
            f"check `tasks.{spec.name}.outcome` in params.yaml against the codes in metadata/codes.parquet"
        )
    counts = per_split_counts(cohort.labels, splits)
    for split in ("train", "validation", "test"):
        row = counts.filter(pl.col("split") == split)
        positives = int(row["positives"].sum()) if row.height else 0
        if positives < min_positives:
            raise CohortError(
                f"task '{spec.name}' (outcome {list(spec.outcome)}): {positives} positive patient(s) in the "
                f"{split} split, fewer than cohort.min_positives = {min_positives}; use more patients or a "
                "longer horizon"
            )


def per_split_counts(labels: pl.DataFrame, splits: pl.DataFrame) -> pl.DataFrame:
    joined = labels.join(splits.select("subject_id", "split"), on="subject_id", how="left")
    return joined.group_by("split").agg(
        patients=pl.len().cast(pl.Int64), positives=pl.col("boolean_value").sum().cast(pl.Int64)
    )


def table2(cohorts: dict[str, TaskCohort], splits: pl.DataFrame) -> pl.DataFrame:
    """Table 2: per task, eligible patients, positives, rate, exclusions by reason, per-split counts."""
    rows = []
    for name, c in cohorts.items():
        status = dict(c.status["status"].value_counts().iter_rows())
        by_split = {r["split"]: r for r in per_split_counts(c.labels, splits).iter_rows(named=True)}
        row = {
            "task": name,
            "outcome": " ".join(c.spec.outcome),
            "patients": c.status.height,
            "eligible": c.labels.height,
            "positives": int(c.labels["boolean_value"].sum()),
            **{f"excluded_{reason}": status.get(reason, 0) for reason in EXCLUSIONS},
        }
        for split in SPLITS:
            row[f"{split}_patients"] = by_split.get(split, {}).get("patients", 0)
            row[f"{split}_positives"] = by_split.get(split, {}).get("positives", 0)
        rows.append(row)
    table = pl.DataFrame(rows).with_columns(pl.col(pl.Int32, pl.UInt32).cast(pl.Int64))
    return table.with_columns(positive_rate=pl.col("positives") / pl.col("eligible")).select(
        "task", "outcome", "patients", "eligible", "positives", "positive_rate", pl.all().exclude(
            "task", "outcome", "patients", "eligible", "positives", "positive_rate"
        )
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- outputs
def write_cohort(
    out_dir: str | Path, cohorts: dict[str, TaskCohort], splits: pl.DataFrame, budgets: dict[str, pl.DataFrame]
) -> None:
    """data/cohort: labels/<task>.parquet (MEDS label schema), splits.parquet, budgets/<task>.parquet."""
    out = Path(out_dir)
    for sub in ("labels", "budgets"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name, c in cohorts.items():
        table = c.labels.select("subject_id", "prediction_time", "boolean_value").to_arrow()
        meds.LabelSchema.validate(table)  # the MEDS label schema, exactly
        pl.from_arrow(table).write_parquet(out / "labels" / f"{name}.parquet")
        budgets[name].write_parquet(out / "budgets" / f"{name}.parquet")
    splits.write_parquet(out / "splits.parquet")


def read_labels(cohort_dir: str | Path, task: str, split: str | None = None) -> pl.DataFrame:
    """A task's labels, with each patient's split; only SPLIT's patients when given."""
    cohort_dir = Path(cohort_dir)
    path = cohort_dir / "labels" / f"{task}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no labels for task '{task}' (tasks are declared in params.yaml)")
    labels = pl.read_parquet(path).join(pl.read_parquet(cohort_dir / "splits.parquet"), on="subject_id", how="left")
    return labels.filter(pl.col("split") == split) if split else labels


def oracle_predictions(
    truth_dir: str | Path, cohorts: dict[str, TaskCohort], splits: pl.DataFrame, replicates: int, seed: int
) -> dict:
    """Test-split predictions of the oracle (the generator replayed from each patient's true state at the
    index, `claimsutil.synth.oracle`) for every task; {} when there is no ground truth (user data)."""
    from claimsutil.metrics import predictions_frame
    from claimsutil.synth.oracle import outcome_probabilities

    if not (Path(truth_dir) / "hazards").is_dir():
        return {}
    out = {}
    for name, c in cohorts.items():
        test = c.labels.join(splits.filter(pl.col("split") == "test"), on="subject_id")
        probs = outcome_probabilities(
            truth_dir, test, c.spec.outcome, c.spec.horizon_days, c.spec.suspected == "include", replicates, seed
        )
        joined = test.join(probs.select("subject_id", "probability"), on="subject_id")
        out[name] = predictions_frame(
            joined["subject_id"], joined["prediction_time"], joined["boolean_value"], joined["probability"]
        )
    return out


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
            }  # fmt: skip
            for s in specs
        ]
    )


def cohort_metrics(table2: pl.DataFrame, oracle: dict[str, dict]) -> dict:
    """The cohort stage's metrics JSON: Table 2's numbers per task, and the oracle's AUPRC/AUROC/Brier."""
    out = {}
    for row in table2.iter_rows(named=True):
        task = row.pop("task")
        row.pop("outcome")
        entry = {k: v for k, v in row.items()}
        if task in oracle:
            entry["oracle"] = {m: oracle[task][m] for m in ("auprc", "auroc", "brier")}
        out[task] = entry
    return out
