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
import multiprocessing as mp
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from claimsutil.config import CohortParams, EvaluationParams, SynthParams
from claimsutil.metrics import evaluate_on_sample, predictions_frame, write_predictions
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


_WORKER: dict = {}


def _worker_world(truth_dir: str) -> tuple[World, ConditionArrays, AcuteArrays]:
    """The generator's world and its arrays, built once per process and truth folder."""
    if _WORKER.get("truth_dir") != truth_dir:
        world = truth_world(truth_dir)
        _WORKER.update(truth_dir=truth_dir, world=(world, ConditionArrays(world), AcuteArrays(world)))
    return _WORKER["world"]


@dataclass(frozen=True)
class _Query:
    """One outcome asked of the oracle: what counts as a hit, over which window, with how many futures."""

    outcome: tuple[str, ...]
    horizon_days: int
    include_suspected: bool
    replicates: int
    seed: int


def _requests(truth_dir: Path, labels: pl.DataFrame, world: World) -> pl.DataFrame:
    """LABELS (subject_id, prediction_time) with their recorded state and the simulation month `t` of the
    index receipt, sorted by subject."""
    # The prediction time is the midnight after the index receipt; the outcome window starts there.
    index = labels.select("subject_id", "prediction_time").with_columns(
        index_day=(pl.col("prediction_time").dt.epoch("us") // _US_PER_DAY).cast(pl.Int64),
        month=(pl.col("prediction_time") - dt.timedelta(microseconds=1)).dt.month_start().dt.date(),
    )
    return (
        _load_state(truth_dir, index, world)
        .with_columns(
            hospital_index=pl.col("hospital").str.strip_prefix("H").cast(pl.Int64) - 1,
            t=(pl.col("month").cast(pl.Date).dt.year() - world.start.year) * 12
            + pl.col("month").cast(pl.Date).dt.month()
            - world.start.month,
        )
        .sort("subject_id")
    )


def _replay(job: tuple[str, _Query, int, pl.DataFrame]) -> np.ndarray:
    """The share of futures with an outcome record, for each row of one index month's GROUP. Its randomness
    depends only on (seed, outcome, month), so any process gives the same numbers."""
    truth_dir, query, t, group = job
    world, conds, acutes = _worker_world(truth_dir)
    codes = np.array([i for i, c in enumerate(world.codes) if c.startswith(tuple(query.outcome))])
    key = zlib.crc32(",".join(query.outcome).encode())
    reps = query.replicates
    rng = np.random.default_rng(seed_sequence(query.seed, 2, key, t))
    sim = _simulator(world, conds, acutes, group, reps, rng, t + 1)
    day = np.repeat(group["index_day"].to_numpy(), reps)
    end = int(day.max()) + query.horizon_days
    month = t + 1  # the state is the end of the index month: the future starts next month
    while month < sim.T and world.month_days[month] < end:
        sim._month(month)
        month += 1
    ev = sim.ev.collect()
    hit_rows = np.isin(ev["code"], codes) & ((ev["flag"] == 0) | query.include_suspected)
    hit_rows &= (ev["day"] >= day[ev["pid"]]) & (ev["day"] < day[ev["pid"]] + query.horizon_days)
    hit = np.zeros(sim.n, bool)
    hit[ev["pid"][hit_rows]] = True
    return hit.reshape(-1, reps).mean(axis=1)


def _init_worker() -> None:
    # One BLAS thread per worker: the workers already fill the cores (the simulation's matmuls are small).
    _WORKER.clear()
    _WORKER["limits"] = threadpool_limits(1)


def _probabilities(truth_dir: str | Path, asks: list[tuple[pl.DataFrame, _Query]], workers: int) -> list[pl.DataFrame]:
    """For each (labels, query) of ASKS: the labels with `probability`. Index months are replayed in WORKERS
    processes (largest first); the numbers do not depend on WORKERS."""
    truth_dir = Path(truth_dir)
    world = truth_world(truth_dir)
    jobs, owners = [], []
    requests = [_requests(truth_dir, labels, world) for labels, _ in asks]
    for a, ((_, query), rows) in enumerate(zip(asks, requests, strict=True)):
        for (t,), group in rows.group_by("t", maintain_order=True):
            jobs.append((str(truth_dir), query, int(t), group))
            owners.append(a)
    order = sorted(range(len(jobs)), key=lambda j: -jobs[j][3].height * jobs[j][1].replicates)
    results: list[np.ndarray | None] = [None] * len(jobs)
    if workers <= 1 or len(jobs) <= 1:
        for j in order:
            results[j] = _replay(jobs[j])
    else:
        context = mp.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_init_worker) as pool:
            for j, probs in zip(order, pool.map(_replay, [jobs[j] for j in order]), strict=True):
                results[j] = probs
    out = []
    for a, (labels, _) in enumerate(asks):
        mine = [j for j in range(len(jobs)) if owners[j] == a]
        if mine:
            probs = pl.concat([jobs[j][3].select("subject_id").with_columns(probability=results[j]) for j in mine])
        else:
            probs = pl.DataFrame(schema={"subject_id": pl.Int64, "probability": pl.Float64})
        out.append(labels.select("subject_id", "prediction_time").join(probs, on="subject_id", how="left"))
    return out


def outcome_probabilities(
    truth_dir: str | Path,
    labels: pl.DataFrame,
    outcome: tuple[str, ...],
    horizon_days: int,
    include_suspected: bool = False,
    replicates: int = 200,
    seed: int = 0,
    workers: int = 1,
) -> pl.DataFrame:
    """P(an outcome record in [index, index + horizon)) for each labelled patient, by replaying the
    generator from the true state. LABELS: subject_id, prediction_time. Returns them with `probability`.
    WORKERS: processes replaying index months in parallel (never changes the numbers)."""
    query = _Query(tuple(outcome), horizon_days, bool(include_suspected), replicates, seed)
    return _probabilities(truth_dir, [(labels, query)], workers)[0]


def task_predictions(truth_dir: str | Path, cohorts: dict, splits: pl.DataFrame, replicates: int, seed: int,
                     workers: int = 1, samples: dict[str, dict] | None = None) -> dict:  # fmt: skip
    """Test-split predictions of the oracle for every task of COHORTS (`claimsutil.cohort.TaskCohort` by
    name), only of each task's evaluation sample when SAMPLES is given (`claimsutil.cohort.task_samples`);
    {} when there is no ground truth (user data). Every task's index months share one pool of WORKERS."""
    if not (Path(truth_dir) / "hazards").is_dir():
        return {}
    tests, asks = {}, []
    for name, c in cohorts.items():
        tests[name] = c.labels.join(splits.filter(pl.col("split") == "test"), on="subject_id")
        if samples is not None:
            tests[name] = tests[name].join(samples[name]["evaluation"].select("subject_id"), on="subject_id",
                                           how="semi")  # fmt: skip
        query = _Query(tuple(c.spec.outcome), c.spec.horizon_days, c.spec.suspected == "include", replicates, seed)
        asks.append((tests[name], query))
    out = {}
    for (name, test), probs in zip(tests.items(), _probabilities(truth_dir, asks, workers), strict=True):
        joined = test.join(probs.select("subject_id", "probability"), on="subject_id")
        out[name] = predictions_frame(
            joined["subject_id"], joined["prediction_time"], joined["boolean_value"], joined["probability"]
        )
    return out


def score_tasks(truth_dir: str | Path, cohorts: dict, splits: pl.DataFrame, params: CohortParams,
                out_dir: str | Path, samples: dict[str, dict],
                evaluation: EvaluationParams) -> dict[str, dict]:  # fmt: skip
    """The oracle's predictions of every task's evaluation sample (SAMPLES, `claimsutil.cohort.task_samples`:
    the patients every model is scored on), written to OUT_DIR/<task>.parquet, and their metrics there, weighted
    as every model's are. {} without ground truth (user data). The sample's check against the whole test split
    is LightGBM's (`claimsutil.baseline`): replaying every test patient's futures costs four times as long."""
    predictions = task_predictions(truth_dir, cohorts, splits, params.oracle_replicates, params.seed, params.workers,
                                   samples)  # fmt: skip
    on_sample = {}
    for name, frame in predictions.items():
        write_predictions(frame, Path(out_dir) / f"{name}.parquet")
        how = {"n_resamples": evaluation.n_resamples, "seed": evaluation.seed, "alpha": evaluation.alpha}
        on_sample[name] = evaluate_on_sample(frame, samples[name]["evaluation"], **how)
    return on_sample
