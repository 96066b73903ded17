"""Zero-shot prediction by simulating each patient's future with the generative model (as CoMET does).

    sample = zero_shot_sample(read_sample(cohort_dir, task, "evaluation"), config)
    futures = simulate(model_path, timeline, sample, spec.horizon_days, config)
    probability = futures.outcome_share(outcome_mask(timeline.tokens_list, spec), n=16)

For every patient of a task's sample the history is cut at the prediction time as fine-tuning cuts it (the
records strictly before it, the most recent that fit; here max_len - max_new tokens, leaving room for the
future), and `futures` futures are sampled (temperature 1, no task-specific tuning) until the horizon or a
token cap. A future's clock starts at the patient's last record before the prediction time and moves with the
time tokens it writes (each by its bin's `advance_days`); it is complete with the time token that reaches the
prediction time + horizon. The predicted probability of the outcome is the share of futures holding an outcome
code (`tasks.<name>.outcome` prefixes, suspected diagnoses as the task counts them) before that point. No
label is read anywhere on this path: the labels of the sample are only used to score it.

Determinism: every future draws its uniforms from a generator seeded by (seed, subject, prediction time,
future), batches are fixed by the sample's order and `batch_futures`, and workers only take whole batches,
so the same seed gives the same futures whatever the number of workers.

A sampled record dated between the last record and the prediction time (the first time token's bin is
coarse) counts as future: the prediction time is usually the index visit, whose own records are the first
of the future, and the bins cannot place them more precisely.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from claimsutil import tokenize as tok
from claimsutil.config import TaskSpec, ZeroShotConfig
from claimsutil.model import PAD_ID
from claimsutil.timeline import TIME_FAMILY, Timeline

__all__ = [
    "Futures",
    "code_frequencies",
    "death_times",
    "futures_curve",
    "impossible_events",
    "incidence_by_age",
    "launch_dates",
    "real_futures",
    "simulate_tasks",
    "stage_metrics",
    "outcome_mask",
    "prefix_mask",
    "simulate",
    "zero_shot_sample",
]


def prefix_mask(tokens: list[str], prefixes, suspected: bool = False) -> np.ndarray:
    """(V,) bool: the tokens starting with one of PREFIXES; a suspected diagnosis only with SUSPECTED."""
    prefixes = tuple(prefixes)
    return np.array([t.startswith(prefixes) and (suspected or not t.endswith(tok.SUSPECTED_SUFFIX))
                     for t in tokens], dtype=bool)  # fmt: skip


def outcome_mask(tokens: list[str], spec: TaskSpec) -> np.ndarray:
    """(V,) bool: the task's outcome tokens, suspected diagnoses counted as the task counts them."""
    return prefix_mask(tokens, spec.outcome, spec.suspected == "include")


def zero_shot_sample(evaluation: pl.DataFrame, config: ZeroShotConfig) -> pl.DataFrame:
    """The rows of a task's weighted evaluation sample that are simulated: all of them, or (config.positives /
    config.negatives > 0) a seeded sample of that many of each class, each row's weight multiplied by its
    class's count over the rows taken, so the sample still stands for the whole test split."""
    parts = []
    for label, k in ((True, config.positives), (False, config.negatives)):
        rows = evaluation.filter(pl.col("boolean_value") == label)
        if 0 < k < rows.height:
            order = np.random.default_rng([config.seed, int(label)]).permutation(rows.height)[:k]
            rows = rows[np.sort(order)].with_columns(pl.col("weight") * (evaluation.filter(
                pl.col("boolean_value") == label).height / k))  # fmt: skip
        parts.append(rows)
    return pl.concat(parts).sort("subject_id", "prediction_time")


@dataclass
class Futures:
    """The futures of a sample: tokens (rows, n, max_new), PAD after each future's end; `start` (rows,) the
    microseconds of the last record before the prediction time (the futures' clock starts there) and `offset`
    (rows,) the days from it to the prediction time; `limit` = offset + horizon days."""

    sample: pl.DataFrame
    tokens: np.ndarray
    start: np.ndarray
    offset: np.ndarray
    limit: np.ndarray
    age_days: np.ndarray  # age at the prediction time
    female: np.ndarray  # bool per row: the prompt holds a female sex token
    advance: np.ndarray  # (V,) days per token
    seconds: float  # sampling wall time

    @property
    def n(self) -> int:
        return self.tokens.shape[1]

    def elapsed(self) -> np.ndarray:
        """(rows, n, max_new) days from `start` before each token (a record's date; a time token's gap start)."""
        after = self.advance[self.tokens].cumsum(axis=2)
        return after - self.advance[self.tokens]

    def in_horizon(self) -> np.ndarray:
        """(rows, n, max_new) bool: sampled tokens dated before the prediction time + horizon (every token of
        a future but padding: the loop stops with the time token that crosses it)."""
        return (self.tokens != PAD_ID) & (self.elapsed() < self.limit[:, None, None])

    def outcome_hits(self, mask: np.ndarray) -> np.ndarray:
        """(rows, n) bool: the future holds a MASK token before the horizon."""
        return (mask[self.tokens] & self.in_horizon()).any(axis=2)

    def outcome_share(self, mask: np.ndarray, n: int | None = None) -> np.ndarray:
        """(rows,) the share of the first N futures (default all) holding a MASK token before the horizon."""
        return self.outcome_hits(mask)[:, : n or self.n].mean(axis=1)

    def subset(self, rows: np.ndarray) -> Futures:
        """The futures of ROWS (a bool mask or indices of the sample's rows)."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        return Futures(self.sample[rows], self.tokens[rows], self.start[rows], self.offset[rows], self.limit[rows],
                       self.age_days[rows], self.female[rows], self.advance, self.seconds)  # fmt: skip

    def generated_tokens(self) -> int:
        return int((self.tokens != PAD_ID).sum())

    def reached_horizon(self) -> float:
        """The share of futures that reached the horizon (the rest stopped at the token cap)."""
        return float((self.advance[self.tokens].sum(axis=2) >= self.limit[:, None]).mean())


# ------------------------------------------------------------------------------------------- sampling

_MODELS: dict[str, Any] = {}


def _model(path: str):
    if path not in _MODELS:
        from claimsutil.train.loop import load_pretrained

        _MODELS[path] = load_pretrained(path).eval()
    return _MODELS[path]


def _init_worker(num_threads: int) -> None:
    torch.set_num_threads(num_threads)


def _draws(seed: int, subjects: np.ndarray, times: np.ndarray, n: int, max_new: int) -> np.ndarray:
    """(rows * n, max_new) uniforms: future j of a row from a generator of (seed, subject, time, j)."""
    out = np.empty((subjects.size * n, max_new))
    for r, (s, t) in enumerate(zip(subjects.tolist(), times.tolist(), strict=True)):
        for j in range(n):
            out[r * n + j] = np.random.default_rng([seed, s, t >> 32 & 0xFFFFFFFF, t & 0xFFFFFFFF, j]).random(max_new)
    return out


def _sample_batch(job: tuple) -> np.ndarray:
    path, prompts, ages, limits, uniforms, advance, temperature = job
    model = _model(path)
    width = max(len(p) for p in prompts)
    padded = np.full((len(prompts), width), PAD_ID, dtype=np.int64)
    for r, p in enumerate(prompts):
        padded[r, width - len(p) :] = p
    n = uniforms.shape[0] // len(prompts)
    out = model.generate(torch.from_numpy(padded), torch.from_numpy(ages), torch.from_numpy(uniforms),
                         temperature=temperature, advance=torch.from_numpy(advance),
                         limit=torch.from_numpy(np.repeat(limits, n)))  # fmt: skip
    return out["tokens"].numpy().astype(np.int32)


def simulate(model_path: str | Path, timeline: Timeline, sample: pl.DataFrame, horizon_days,
             config: ZeroShotConfig, progress: bool = False) -> Futures:  # fmt: skip
    """`config.futures` futures of every row of SAMPLE (subject_id, prediction_time, ...) by the decoder at
    MODEL_PATH, each until HORIZON_DAYS (one number, or one per row) after its prediction time; see the module
    docstring."""
    from tqdm import tqdm

    store = timeline.store
    model_path = str(model_path)
    max_len = int(torch.load(model_path, map_location="cpu", weights_only=False)["model_config"]["max_len"])
    prompt_len = max_len - config.max_new
    if prompt_len < 8:
        raise ValueError(
            f"zeroshot.max_new = {config.max_new} leaves {prompt_len} of max_len {max_len} for the history"
        )
    sids = sample["subject_id"].cast(pl.Int64).to_numpy()
    times = sample["prediction_time"].cast(pl.Datetime("us")).dt.epoch("us").to_numpy()
    index = np.array([store.index_of(int(s)) for s in sids], dtype=np.int64)
    prompts, ages, start, female = [], np.empty(sids.size, np.float32), np.empty(sids.size, np.int64), []
    female_id = timeline.tokens_list.index("GENDER/F") if "GENDER/F" in timeline.tokens_list else -1
    age_now = np.empty(sids.size)
    for r, (i, t) in enumerate(zip(index.tolist(), times.tolist(), strict=True)):
        seq, a, _ = timeline.sequence(i, before=t, max_len=prompt_len)
        prompts.append(seq.astype(np.int64))
        ages[r] = a[0] if a.size else np.nan
        last = timeline.last_time(i, before=t)
        start[r] = t if last is None else last
        female.append(bool((seq == female_id).any()))
        age_now[r] = _age_at(timeline, i, t)
    offset = (times - start) / tok.US_PER_DAY
    limit = offset + np.broadcast_to(np.asarray(horizon_days, dtype=np.float64), offset.shape)
    advance = timeline.advance_days()
    per_batch = max(1, config.batch_futures // config.futures)
    uniforms = _draws(config.seed, sids, times, config.futures, config.max_new)
    jobs = []
    for a in range(0, sids.size, per_batch):
        b = min(a + per_batch, sids.size)
        jobs.append((model_path, prompts[a:b], ages[a:b], limit[a:b],
                     uniforms[a * config.futures : b * config.futures], advance, config.temperature))  # fmt: skip
    t0 = time.perf_counter()
    bar = tqdm(total=len(jobs), desc="futures", unit="batch", disable=not progress)
    results = []
    if config.workers == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(config.num_threads)
        try:
            for job in jobs:
                results.append(_sample_batch(job))
                bar.update(1)
        finally:
            torch.set_num_threads(threads)
    else:
        context = mp.get_context("spawn")
        with ProcessPoolExecutor(config.workers, mp_context=context, initializer=_init_worker,
                                 initargs=(config.num_threads,)) as pool:  # fmt: skip
            for done in pool.map(_sample_batch, jobs):
                results.append(done)
                bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    tokens = np.concatenate(results).reshape(sids.size, config.futures, config.max_new)
    return Futures(sample, tokens, start, offset, limit, age_now, np.array(female, dtype=bool), advance, seconds)


def _age_at(timeline: Timeline, i: int, t: int) -> float:
    """Patient I's age in days at time T (microseconds): its last record's age before T, plus the time since."""
    a, b = int(timeline.offsets[i]), int(timeline.offsets[i + 1])
    times, ages = timeline.times[a:b], timeline.ages[a:b]
    k = int(np.searchsorted(times, t, side="left")) - 1
    if k < 0 or times[k] == tok.TIME_STATIC:
        return float(ages[0]) if b > a else float("nan")
    return float(ages[k] + (t - times[k]) / tok.US_PER_DAY)


# ---------------------------------------------------------------------------------------- plausibility

# Codes no woman can have: prostate cancer, its in-situ and benign neoplasms, hyperplasia, inflammation and other
# disorders of the prostate, a raised PSA.
PROSTATE = ("ICD10/C61", "ICD10/D07.5", "ICD10/D29.1", "ICD10/D40.0", "ICD10/N40", "ICD10/N41", "ICD10/N42",
            "ICD10/R97.2")  # fmt: skip


def real_futures(timeline: Timeline, futures: Futures) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row, the ids and microseconds of the patient's real records in [prediction time, + horizon)."""
    store = timeline.store
    sids = futures.sample["subject_id"].cast(pl.Int64).to_numpy()
    times = futures.sample["prediction_time"].cast(pl.Datetime("us")).dt.epoch("us").to_numpy()
    horizon_us = ((futures.limit - futures.offset) * tok.US_PER_DAY).astype(np.int64)
    out = []
    for s, t, h in zip(sids.tolist(), times.tolist(), horizon_us.tolist(), strict=True):
        i = store.index_of(s)
        a, b = int(store.offsets[i]), int(store.offsets[i + 1])
        stamps = np.asarray(store.times_us[a:b])
        lo, hi = np.searchsorted(stamps, t, side="left"), np.searchsorted(stamps, t + h, side="left")
        out.append((np.asarray(store.tokens[a + lo : a + hi]).astype(np.int64), stamps[lo:hi]))
    return out


def _codes(timeline: Timeline) -> np.ndarray:
    """(V,) bool: the tokens that are codes (diagnoses, drugs, other codes; no specials, no time tokens)."""
    return (timeline.family_ids != tok.FAMILIES.index("special")) & (timeline.family_ids != TIME_FAMILY)


def code_frequencies(timeline: Timeline, futures: Futures, real: list) -> tuple[pl.DataFrame, float | None]:
    """Records per 1,000 patients in the horizon of every code, real against generated (the mean over a
    patient's futures), weighted by the sample's weights; and the RMSLE of log(1 + frequency) over the codes
    either side holds."""
    V, w = timeline.vocab_size, futures.sample["weight"].to_numpy().astype(np.float64)
    keep = futures.in_horizon()
    gen = np.zeros(V)
    for r in range(futures.tokens.shape[0]):
        gen += w[r] * np.bincount(futures.tokens[r][keep[r]], minlength=V) / futures.n
    obs = np.zeros(V)
    for r, (ids, _) in enumerate(real):
        obs += w[r] * np.bincount(ids, minlength=V)
    codes = _codes(timeline) & ((gen > 0) | (obs > 0))
    gen, obs = gen / w.sum() * 1000, obs / w.sum() * 1000
    rmsle = float(np.sqrt(np.mean((np.log1p(gen[codes]) - np.log1p(obs[codes])) ** 2))) if codes.any() else None
    ids = np.flatnonzero(codes)
    table = pl.DataFrame({"code": [timeline.tokens_list[i] for i in ids], "real_per_1000": obs[ids],
                          "generated_per_1000": gen[ids]}).sort("real_per_1000", descending=True)  # fmt: skip
    return table, rmsle


def incidence_by_age(futures: Futures, real: list, masks: dict[str, np.ndarray], age_bands,
                     min_cell: int) -> pl.DataFrame:  # fmt: skip
    """Per outcome and age band (lower edges in years): the weighted share of patients with a record of the
    outcome within the horizon, real against generated (each patient's share of futures), and the band's
    patients (rows whose count is below MIN_CELL show no shares)."""
    w = futures.sample["weight"].to_numpy().astype(np.float64)
    years = futures.age_days / 365.25
    edges = list(age_bands) + [np.inf]
    rows = []
    for name, mask in masks.items():
        generated = futures.outcome_share(mask)
        observed = np.array([bool(mask[ids].any()) for ids, _ in real])
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            band = (years >= lo) & (years < hi)
            n = int(band.sum())
            shown = n >= min_cell
            rows.append({"outcome": name, "age_band": f"{lo}-{hi - 1}" if np.isfinite(hi) else f"{lo}+",
                         "patients": n if shown else None,
                         "real": float(np.average(observed[band], weights=w[band])) if shown else None,
                         "generated": float(np.average(generated[band], weights=w[band])) if shown else None,
                         })  # fmt: skip
    return pl.DataFrame(rows, schema_overrides={"patients": pl.Int64, "real": pl.Float64, "generated": pl.Float64})


def death_times(meds_dir: str | Path, subject_ids) -> dict[int, int]:
    """{subject_id: microseconds of its first MEDS_DEATH record} for the SUBJECT_IDS that have one."""
    from claimsutil import meds

    ids = pl.Series("subject_id", np.asarray(subject_ids, dtype=np.int64))
    frames = [meds.scan_shard(p).filter(pl.col("code") == meds.DEATH_CODE).filter(pl.col("subject_id").is_in(ids))
              .select("subject_id", pl.col("time").cast(pl.Datetime("us")).dt.epoch("us")).collect()
              for p in meds.shard_paths(meds_dir)]  # fmt: skip
    deaths = pl.concat(frames).group_by("subject_id").agg(pl.col("time").min())
    return dict(zip(deaths["subject_id"].to_list(), deaths["time"].to_list(), strict=True))


def launch_dates(timeline: Timeline) -> dict[int, int]:
    """{token id: microseconds of the launch} of the drug tokens whose ingredient launched inside the data
    window of the built-in world (`claimsutil.synth.catalog.LAUNCH`, real Japanese launch dates)."""
    from claimsutil.synth import catalog

    prefixes = {d.yj_prefix: day for name, day in catalog.LAUNCH.items() if (d := catalog.drugs().get(name))}
    out = {}
    for i, t in enumerate(timeline.tokens_list):
        code = t.removeprefix("YJ/")
        if t.startswith("YJ/") and code[:7] in prefixes:
            out[i] = tok._as_us(dt.datetime.combine(prefixes[code[:7]], dt.time()))
    return out


def impossible_events(timeline: Timeline, futures: Futures, real: list, deaths: dict[int, int],
                      launches: dict[int, int]) -> pl.DataFrame:  # fmt: skip
    """Generated records that cannot happen, against the real futures: prostate codes in women, a drug dated
    before its launch, a record dated after the patient's death. Per kind: the records at risk (generated:
    all futures' records of the patients concerned), the impossible ones, and their share."""
    prostate = prefix_mask(timeline.tokens_list, PROSTATE, suspected=True)
    keep = futures.in_horizon() & _codes(timeline)[futures.tokens]
    dates = futures.start[:, None, None] + (futures.elapsed() * tok.US_PER_DAY).astype(np.int64)
    times = futures.sample["prediction_time"].cast(pl.Datetime("us")).dt.epoch("us").to_numpy()
    sids = futures.sample["subject_id"].to_list()
    launch = np.full(timeline.vocab_size, np.iinfo(np.int64).min, dtype=np.int64)
    for i, when in launches.items():
        launch[i] = when
    women = futures.female
    # Records of the day of death are possible (the data keep them); from the next day on they are not.
    never = np.iinfo(np.int64).max
    died = np.array([(deaths[s] // tok.US_PER_DAY + 1) * tok.US_PER_DAY if s in deaths else never for s in sids],
                    dtype=np.int64)  # fmt: skip
    codes = _codes(timeline)
    real_ids = [ids[codes[ids]] for ids, _ in real]
    real_at = [at[codes[ids]] for ids, at in real]
    rows = []

    def add(kind: str, at_risk: int, bad: int, real_risk: int, real_bad: int) -> None:
        rows.append({"event": kind, "generated_records": at_risk, "generated_impossible": bad,
                     "generated_share": bad / at_risk if at_risk else None, "real_records": real_risk,
                     "real_impossible": real_bad})  # fmt: skip

    add("prostate code in a woman", int(keep[women].sum()), int((keep & prostate[futures.tokens])[women].sum()),
        sum(ids.size for ids, f in zip(real_ids, women, strict=True) if f),
        sum(int(prostate[ids].sum()) for ids, f in zip(real_ids, women, strict=True) if f))  # fmt: skip
    is_drug = keep & (launch[futures.tokens] > np.iinfo(np.int64).min)
    real_drug = [launch[ids] > np.iinfo(np.int64).min for ids in real_ids]
    add(
        "drug before its launch",
        int(is_drug.sum()),
        int((is_drug & (dates < launch[futures.tokens])).sum()),
        sum(int(d.sum()) for d in real_drug),
        sum(int((d & (at < launch[ids])).sum()) for d, ids, at in zip(real_drug, real_ids, real_at, strict=True)),
    )
    dead = died < (times + ((futures.limit - futures.offset) * tok.US_PER_DAY).astype(np.int64))
    add(
        "record after death",
        int(keep[dead].sum()),
        int((keep & (dates >= died[:, None, None]))[dead].sum()),
        sum(ids.size for ids, d in zip(real_ids, dead, strict=True) if d),
        sum(int((at >= died[r]).sum()) for r, at in enumerate(real_at) if dead[r]),
    )
    return pl.DataFrame(rows)


# ------------------------------------------------------------------------------------------- the stage


def simulate_tasks(model_path: str | Path, timeline: Timeline, samples: dict[str, pl.DataFrame],
                   specs: dict[str, TaskSpec], config: ZeroShotConfig, progress: bool = False) -> Futures:  # fmt: skip
    """The futures of every task's sample in one simulation (one pool of workers): the samples stacked with a
    `task` column, each row until its task's horizon."""
    stacked = pl.concat([s.select("subject_id", "prediction_time", "boolean_value", "weight")
                         .with_columns(pl.lit(t).alias("task")) for t, s in samples.items()])  # fmt: skip
    horizons = np.array([specs[t].horizon_days for t in stacked["task"].to_list()], dtype=np.float64)
    return simulate(model_path, timeline, stacked, horizons, config, progress)


def futures_curve(futures: Futures, masks: dict[str, np.ndarray], ns, evaluation) -> tuple[pl.DataFrame, dict]:
    """Per task and n (the first n futures of each patient, n in NS): AUPRC, AUROC and Brier with their
    intervals on the task's weighted sample (`evaluation`'s bootstrap), and {(task, n): predictions frame}."""
    from claimsutil import metrics

    rows, frames = [], {}
    for task, mask in masks.items():
        part = futures.subset((futures.sample["task"] == task).to_numpy())
        s = part.sample
        for n in ns:
            frame = metrics.predictions_frame(s["subject_id"], s["prediction_time"], s["boolean_value"],
                                              part.outcome_share(mask, n))  # fmt: skip
            r = metrics.evaluate(frame, evaluation.n_resamples, evaluation.seed, evaluation.alpha,
                                 weights=s["weight"].to_numpy())  # fmt: skip
            row = {"task": task, "futures": n, "patients": r["n"], "positives": r["positives"]}
            for m in metrics.METRICS:
                row |= {m: r[m]["point"], f"{m}_low": r[m]["low"], f"{m}_high": r[m]["high"]}
            rows.append(row)
            frames[(task, n)] = frame
    return pl.DataFrame(rows), frames


def curve_ns(futures: int) -> list[int]:
    """1, 4, 16, 64, ... up to FUTURES (and FUTURES itself)."""
    ns = [n for n in (1, 4, 16, 64, 256, 1024) if n <= futures]
    return ns if ns[-1] == futures else [*ns, futures]


def stage_metrics(futures: Futures, curve: pl.DataFrame, rmsle: float | None, impossible: pl.DataFrame) -> dict:
    """The stage's DVC metrics: the cost (patients x futures x tokens, seconds), the n curve, plausibility."""
    out: dict[str, Any] = {
        "labels_used": 0, "patients": futures.tokens.shape[0], "futures_per_patient": futures.n,
        "generated_tokens": futures.generated_tokens(), "sampling_seconds": round(futures.seconds, 2),
        "generated_tokens_per_s": futures.generated_tokens() / max(futures.seconds, 1e-9),
        "tokens_per_future": futures.generated_tokens() / max(futures.tokens.shape[0] * futures.n, 1),
        "reached_horizon": futures.reached_horizon(), "code_frequency_rmsle": rmsle,
    }  # fmt: skip
    for r in curve.iter_rows(named=True):
        out.setdefault(r["task"], {})[f"n{r['futures']}"] = {
            m: {"point": r[m], "low": r[f"{m}_low"], "high": r[f"{m}_high"]} for m in ("auprc", "auroc", "brier")
        }
    out["impossible"] = {r["event"]: r["generated_share"] for r in impossible.iter_rows(named=True)}
    return out


def write_outputs(out_dir: str | Path, samples: dict[str, pl.DataFrame], frames: dict) -> None:
    """OUT_DIR/<task>/sample.parquet (the simulated rows and their weights) and futures-<n>.parquet (the
    predictions from the first n futures, meds-evaluation columns)."""
    from claimsutil import metrics

    for task, sample in samples.items():
        folder = Path(out_dir) / task
        folder.mkdir(parents=True, exist_ok=True)
        sample.select("subject_id", "prediction_time", "boolean_value", "weight").write_parquet(
            folder / "sample.parquet"
        )
    for (task, n), frame in frames.items():
        metrics.write_predictions(frame, Path(out_dir) / task / f"futures-{n}.parquet")


def plot_curve(curve: pl.DataFrame, title: str = ""):
    """AUPRC (95% interval) against the number of futures per patient, one line per task."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for task in curve["task"].unique(maintain_order=True).to_list():
        t = curve.filter(pl.col("task") == task)
        ax.errorbar(t["futures"], t["auprc"], yerr=[t["auprc"] - t["auprc_low"], t["auprc_high"] - t["auprc"]],
                    marker="o", ms=3, capsize=2, label=task)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("futures per patient (n)")
    ax.set_ylabel("AUPRC")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
