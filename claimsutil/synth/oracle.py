"""The oracle ceiling: replay the generator forward from a patient's true state at the index date.

The ground truth stores, for every covered patient-month, the complete simulation state at the end of the
month (conditions present, diagnosed, suspected names pending, treatment regimens, last zoster) next to the
patient's fixed traits (latent factors, sex, age, hospital). For each labelled patient the oracle rebuilds
that state (and the confirmed long-tail categories of the history, which steer which tail codes come next)
for the month of the index receipt (the prediction time is the midnight after it; the generator
writes at most one receipt a month) and simulates `replicates` futures with fresh randomness. The share of
futures with an outcome record inside the horizon is the probability of
the outcome given everything true at the index date and nothing after it: the best any model could do.
Like the labels, it follows patients who stay covered and alive through the horizon.
"""

from __future__ import annotations

import datetime as dt
import json
import zlib
from pathlib import Path

import numpy as np
import polars as pl

from claimsutil.config import CohortParams, EvaluationParams, SynthParams
from claimsutil.metrics import evaluate, evaluate_on_sample, predictions_frame, write_predictions
from claimsutil.synth import catalog
from claimsutil.synth import tail as tail_catalog
from claimsutil.synth.simulate import AcuteArrays, BlockSimulator, ConditionArrays, Replay, unpack_bits
from claimsutil.synth.world import World, seed_sequence

_US_PER_DAY = 86_400_000_000


def truth_world(truth_dir: str | Path) -> World:
    """The world (vocabulary, hospitals) the truth folder was generated with."""
    info = json.loads((Path(truth_dir) / "generator.json").read_text(encoding="utf-8"))
    if "params" not in info:
        raise ValueError(f"{truth_dir}/generator.json: no generator parameters (not data from the built-in generator)")
    params = dict(info["params"])
    for key in ("truth_conditions", "truth_drugs"):
        params[key] = tuple(params[key])
    return World(SynthParams(**params, workers=1))


def _load_state(truth_dir: Path, requests: pl.DataFrame, world: World) -> pl.DataFrame:
    """Per request: fixed traits and the recorded state at the start of the index month."""
    ids = requests["subject_id"].implode()
    subjects = pl.scan_parquet(sorted((truth_dir / "subjects").glob("*.parquet"))).filter(
        pl.col("subject_id").is_in(ids)
    )
    hazards = pl.scan_parquet(sorted((truth_dir / "hazards").glob("*.parquet"))).filter(pl.col("subject_id").is_in(ids))
    state = requests.lazy().join(
        hazards.select("subject_id", "month", "has_bits", "dx_bits", "pending_bits", "zoster_month", "regimens"),
        on=["subject_id", "month"],
        how="left",
    )
    out = state.join(subjects, on="subject_id", how="left").collect()
    out = out.join(_tail_histories(truth_dir, requests), on=["subject_id", "month"], how="left")
    missing = out.filter(pl.col("has_bits").is_null() | pl.col("age_at_start").is_null())
    if missing.height:
        raise ValueError(
            f"{truth_dir}: {missing.height} request(s) have no recorded state for their index month "
            f"(e.g. month {missing['month'][0]}): this truth does not belong to the labelled dataset"
        )
    return out


def _tail_histories(truth_dir: Path, requests: pl.DataFrame) -> pl.DataFrame:
    """Per request: the confirmed tail categories of the history at the end of the index month (indices in
    `tail.categories()`, in the order the generator added them), as `tail_hist`."""
    files = sorted((truth_dir / "tail_history").glob("*.parquet"))
    if not files:  # truth written before the tail had a history: an empty one
        return requests.select("subject_id", "month", tail_hist=pl.lit([], pl.List(pl.Int16)))
    index = {c.code: i for i, c in enumerate(tail_catalog.categories())}
    log = (
        pl.scan_parquet(files)
        .join(requests.lazy().select("subject_id", index_month="month").unique(), on="subject_id")
        .filter(pl.col("month") <= pl.col("index_month"))
        .with_columns(pl.col("category").replace_strict(index, return_dtype=pl.Int16))
        .group_by("subject_id", "index_month", maintain_order=True)
        .agg(tail_hist=pl.col("category"))
        .rename({"index_month": "month"})
    )
    return log.collect()


def _simulator(world: World, conds: ConditionArrays, acutes: AcuteArrays, rows: pl.DataFrame, reps: int, rng, month):
    """A simulator holding REPS copies of each row's recorded state, replaying from MONTH."""
    K = conds.K

    def rep(values) -> np.ndarray:
        return np.repeat(np.asarray(values), reps, axis=0)

    traits = {
        "male": rep(rows["male"].to_numpy()),
        "hosp": rep(rows["hospital_index"].to_numpy()),
        "age0": rep(rows["age_at_start"].to_numpy()),
        "latent": rep(rows.select(f"latent_{name}" for name in catalog.LATENTS).to_numpy()),
    }
    never = np.iinfo(np.int16).min
    months = {
        key: rep(rows.select(pl.col(f"{key}_{name}").fill_null(never) for name in catalog.CONDITION_NAMES).to_numpy())
        for key in ("onset_month", "dx_month")
    }
    state = {
        "has": rep(unpack_bits(rows["has_bits"].to_numpy(), K)),
        "dx": rep(unpack_bits(rows["dx_bits"].to_numpy(), K)),
        "pending": rep(unpack_bits(rows["pending_bits"].to_numpy(), K)),
        "reg": rep(np.stack(rows["regimens"].to_numpy())),
        "last_zoster": rep(rows["zoster_month"].to_numpy()),
        "onset": months["onset_month"],
        "dx_month": months["dx_month"],
        "tail_hist": rep(_history_array(rows["tail_hist"])),
    }
    return BlockSimulator.from_state(world, conds, acutes, rng, traits, state, Replay(month))


def _history_array(lists: pl.Series) -> np.ndarray:
    """(rows, tail.HISTORY) category indices, -1 padded."""
    out = np.full((len(lists), tail_catalog.HISTORY), -1, np.int16)
    for i, values in enumerate(lists.to_list()):
        if values:
            out[i, : len(values)] = values[: tail_catalog.HISTORY]
    return out


def outcome_probabilities(
    truth_dir: str | Path,
    labels: pl.DataFrame,
    outcome: tuple[str, ...],
    horizon_days: int,
    include_suspected: bool = False,
    replicates: int = 200,
    seed: int = 0,
) -> pl.DataFrame:
    """P(an outcome record in [index, index + horizon)) for each labelled patient, by replaying the
    generator from the true state. LABELS: subject_id, prediction_time. Returns them with `probability`."""
    truth_dir = Path(truth_dir)
    world = truth_world(truth_dir)
    conds, acutes = ConditionArrays(world), AcuteArrays(world)
    codes = np.array([i for i, c in enumerate(world.codes) if c.startswith(tuple(outcome))])
    # The prediction time is the midnight after the index receipt; the outcome window starts there.
    index = labels.select("subject_id", "prediction_time").with_columns(
        index_day=(pl.col("prediction_time").dt.epoch("us") // _US_PER_DAY).cast(pl.Int64),
        month=(pl.col("prediction_time") - dt.timedelta(microseconds=1)).dt.month_start().dt.date(),
    )
    rows = _load_state(truth_dir, index, world).with_columns(
        hospital_index=pl.col("hospital").str.strip_prefix("H").cast(pl.Int64) - 1,
        t=(pl.col("month").cast(pl.Date).dt.year() - world.start.year) * 12
        + pl.col("month").cast(pl.Date).dt.month()
        - world.start.month,
    )
    key = zlib.crc32(",".join(outcome).encode())
    parts = []
    for (t,), group in rows.sort("subject_id").group_by("t", maintain_order=True):
        rng = np.random.default_rng(seed_sequence(seed, 2, key, int(t)))
        sim = _simulator(world, conds, acutes, group, replicates, rng, int(t) + 1)
        day = np.repeat(group["index_day"].to_numpy(), replicates)
        end = int(day.max()) + horizon_days
        month = int(t) + 1  # the state is the end of the index month: the future starts next month
        while month < sim.T and world.month_days[month] < end:
            sim._month(month)
            month += 1
        ev = sim.ev.collect()
        hit_rows = np.isin(ev["code"], codes) & ((ev["flag"] == 0) | include_suspected)
        hit_rows &= (ev["day"] >= day[ev["pid"]]) & (ev["day"] < day[ev["pid"]] + horizon_days)
        hit = np.zeros(sim.n, bool)
        hit[ev["pid"][hit_rows]] = True
        parts.append(group.select("subject_id").with_columns(probability=hit.reshape(-1, replicates).mean(axis=1)))
    probs = pl.concat(parts) if parts else pl.DataFrame(schema={"subject_id": pl.Int64, "probability": pl.Float64})
    return labels.select("subject_id", "prediction_time").join(probs, on="subject_id", how="left")


def task_predictions(truth_dir: str | Path, cohorts: dict, splits: pl.DataFrame, replicates: int, seed: int) -> dict:
    """Test-split predictions of the oracle for every task of COHORTS (`claimsutil.cohort.TaskCohort` by
    name); {} when there is no ground truth (user data)."""
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


def score_tasks(truth_dir: str | Path, cohorts: dict, splits: pl.DataFrame, params: CohortParams,
                out_dir: str | Path, samples: dict[str, dict],
                evaluation: EvaluationParams) -> tuple[dict[str, dict], dict[str, dict]]:  # fmt: skip
    """The oracle's predictions of every task's whole test split, written to OUT_DIR/<task>.parquet, and their
    metrics on the task's evaluation sample (SAMPLES, `claimsutil.cohort.task_samples`: the number every model
    gets) and on the whole test split (the check of the sample). ({}, {}) without ground truth (user data)."""
    predictions = task_predictions(truth_dir, cohorts, splits, params.oracle_replicates, params.seed)
    on_sample, whole = {}, {}
    for name, frame in predictions.items():
        write_predictions(frame, Path(out_dir) / f"{name}.parquet")
        sample = samples[name]["evaluation"]
        how = {"n_resamples": evaluation.n_resamples, "seed": evaluation.seed, "alpha": evaluation.alpha}
        on_sample[name] = evaluate_on_sample(frame, sample, **how)
        whole[name] = evaluate(frame, **how)
    return on_sample, whole
