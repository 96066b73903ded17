"""Evaluation for every stage: AUPRC (primary), AUROC and Brier, patient-level bootstrap CIs and paired tests.

Predictions travel between stages as parquet files in the meds-evaluation prediction schema
(`predictions_frame`, `write_predictions`, `read_predictions`); `evaluate` turns one such frame into the JSON
dict a stage writes as its DVC metrics.

The bootstrap is vectorised: a resample is a vector of integer weights per row (how often the row was drawn),
so one sort by score serves every resample, and each metric is a weighted step sum over the distinct scores.
`weighted_scores` computes the metrics under such weights and matches sklearn's `sample_weight` results.

One-class resamples: a resample with no positives (or no negatives) has no AUROC or AUPRC. Such resamples
are redrawn from the same random stream, so every result rests on exactly `n_resamples` two-class resamples
and stays deterministic for a seed; the bootstrap is then conditional on both classes being present, which
matters only when positives are very few. `evaluate` reports how many draws were redrawn
(`one_class_redraws`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

INITS = ("pretrained", "scratch")  # fine-tuned encoders: from the pretrained weights, from a fresh initialisation

METRICS = ("auprc", "auroc", "brier")
CHUNK_ELEMENTS = 2_000_000  # resamples x rows held at once: bounds memory (16 MB per float matrix)

# Prediction files follow meds-evaluation 0.0.6 (`meds_evaluation/schema.py`, `PredictionSchema`): it extends
# meds' LabelSchema (subject_id int64 and prediction_time timestamp[us], both required and non-null;
# boolean_value bool) with predicted_boolean_value (bool) and predicted_boolean_probability, both optional
# but at least one present and not all null. The schema code declares the probability as float32, its README
# as Float64; `PredictionSchema.align` casts float64 to float32, so we keep Float64 (no precision lost here)
# and accept Float32 on read. Extra columns are rejected (`allow_extra_columns = False`, inherited from
# LabelSchema), so prediction files hold exactly these five columns.
SUBJECT_ID = "subject_id"
PREDICTION_TIME = "prediction_time"
BOOLEAN_VALUE = "boolean_value"
PREDICTED_VALUE = "predicted_boolean_value"
PREDICTED_PROBABILITY = "predicted_boolean_probability"
PREDICTION_SCHEMA: dict[str, pl.DataType] = {
    SUBJECT_ID: pl.Int64(),
    PREDICTION_TIME: pl.Datetime("us"),
    BOOLEAN_VALUE: pl.Boolean(),
    PREDICTED_VALUE: pl.Boolean(),
    PREDICTED_PROBABILITY: pl.Float64(),
}
THRESHOLD = 0.5  # predicted_boolean_value = probability >= THRESHOLD


@dataclass(frozen=True)
class Interval:
    """A metric on the full data (`point`) and its percentile bootstrap interval."""

    point: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedResult:
    """metric(a) - metric(b): on the full data (`point`), its bootstrap interval, and a two-sided p-value."""

    point: float
    low: float
    high: float
    p_value: float


# --------------------------------------------------------------------------------------------------
# Input checks: every error names the argument, how many values are bad and one example.


def _labels(y_true: Sequence | np.ndarray, name: str = "y_true") -> np.ndarray:
    """Binary labels (bool or 0/1) as float64 0.0/1.0."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {y.shape}")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be boolean or 0/1, got dtype {y.dtype} (null labels?)")
    bad = np.flatnonzero(~np.isin(y, (0, 1)))
    if bad.size:
        raise ValueError(f"{name} has {bad.size} values that are not 0/1, e.g. {y[bad[0]].item()!r} at row {bad[0]}")
    return y.astype(np.float64)


def _probabilities(y_prob: Sequence | np.ndarray, name: str = "y_prob") -> np.ndarray:
    """Probabilities as float64, all finite and in [0, 1]."""
    p = np.asarray(y_prob, dtype=np.float64)  # None becomes NaN and is reported as such
    if p.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {p.shape}")
    nan = np.flatnonzero(np.isnan(p))
    if nan.size:
        raise ValueError(f"{name} has {nan.size} NaN or null values (of {p.size}), e.g. at row {nan[0]}")
    out = np.flatnonzero((p < 0) | (p > 1))
    if out.size:
        raise ValueError(f"{name} has {out.size} values outside [0, 1], e.g. {p[out[0]].item()!r} at row {out[0]}")
    return p


def _same_length(**arrays: np.ndarray) -> None:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError("lengths differ: " + ", ".join(f"{k} has {v} rows" for k, v in lengths.items()))
    if not next(iter(lengths.values())):
        raise ValueError("no rows to score")


def _both_classes(y: np.ndarray) -> None:
    positives = int(y.sum())
    if positives in (0, len(y)):
        raise ValueError(
            f"y_true has a single class ({positives} positives, {len(y) - positives} negatives): "
            "AUROC and AUPRC need both"
        )


def _checked(y_true, *probs) -> tuple[np.ndarray, list[np.ndarray]]:
    """Validated labels and probability arrays (the latter named y_prob, prob_a, prob_b in errors)."""
    y = _labels(y_true)
    names = (
        ["y_prob"]
        if len(probs) == 1
        else ["prob_a", "prob_b"]
        if len(probs) == 2
        else [f"run_{i}" for i in range(len(probs))]
    )
    ps = [_probabilities(p, name) for p, name in zip(probs, names, strict=True)]
    _same_length(y_true=y, **dict(zip(names, ps, strict=True)))
    _both_classes(y)
    return y, ps


# --------------------------------------------------------------------------------------------------
# Point estimates and weighted (bootstrap) estimates.


def score(
    y_true: Sequence | np.ndarray, y_prob: Sequence | np.ndarray, weights: Sequence | np.ndarray | None = None
) -> dict[str, float]:
    """AUPRC (average precision), AUROC, Brier score and the sample's size and prevalence.

    WEIGHTS (one per row, e.g. inverse sampling fractions of a case-cohort sample) weight every metric and the
    prevalence; n and positives stay row counts."""
    y, (p,) = _checked(y_true, y_prob)
    w = _row_weights(weights, len(y))
    positives = int(y.sum())
    return {
        "auprc": float(average_precision_score(y, p, sample_weight=w)),
        "auroc": float(roc_auc_score(y, p, sample_weight=w)),
        "brier": float(brier_score_loss(y, p, sample_weight=w)),
        "n": len(y),
        "positives": positives,
        "prevalence": positives / len(y) if w is None else float(w @ y / w.sum()),
    }


def _row_weights(weights: Sequence | np.ndarray | None, n: int) -> np.ndarray | None:
    """Validated row weights (None: unweighted): finite, positive, one per row."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must have one value per row ({n}), got shape {w.shape}")
    bad = ~np.isfinite(w) | (w <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"weights must be finite and positive; row {i} has {w[i]}")
    return w


def _score_blocks(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order by descending score, and the last sorted position of each run of tied scores."""
    order = np.argsort(-p, kind="stable")
    sorted_p = p[order]
    ends = np.flatnonzero(np.r_[sorted_p[1:] != sorted_p[:-1], True])
    return order, ends


def _weighted_metrics(y: np.ndarray, p: np.ndarray, weights: np.ndarray, blocks=None) -> dict[str, np.ndarray]:
    """Per-row-of-weights AUPRC, AUROC and Brier; weights is (resamples, rows), y and p validated."""
    order, ends = _score_blocks(p) if blocks is None else blocks
    w = weights[:, order]  # (R, n), rows sorted by descending score
    # Cumulative positive / total weight at the end of each tied-score block: one threshold per block, as in
    # sklearn's curves, so ties count half in AUROC and as one step in AUPRC.
    tp = np.cumsum(w * y[order], axis=1)[:, ends]  # (R, K)
    fp = np.cumsum(w, axis=1)[:, ends] - tp  # (R, K)
    pos, neg = tp[:, -1], fp[:, -1]  # (R,)
    d_tp = np.diff(tp, axis=1, prepend=0.0)  # positive weight within each block
    d_fp = np.diff(fp, axis=1, prepend=0.0)
    called = tp + fp
    precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
    # AP = sum over thresholds of (recall step) x precision; AUROC = weighted Mann-Whitney statistic.
    auprc = (d_tp * precision).sum(axis=1) / pos
    auroc = (d_tp * (neg[:, None] - fp + 0.5 * d_fp)).sum(axis=1) / (pos * neg)
    brier = weights @ (y - p) ** 2 / weights.sum(axis=1)
    return {"auprc": auprc, "auroc": auroc, "brier": brier}


def weighted_scores(
    y_true: Sequence | np.ndarray, y_prob: Sequence | np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """AUPRC, AUROC and Brier under each row of `weights` (resamples x rows), as sklearn's sample_weight.

    A bootstrap resample is integer weights (draw counts); each row must give both classes positive weight.
    """
    y, (p,) = _checked(y_true, y_prob)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    if w.shape[1] != len(y) or (w < 0).any():
        raise ValueError(f"weights must be non-negative with {len(y)} columns, got shape {w.shape}")
    if ((w @ y) <= 0).any() or ((w @ (1 - y)) <= 0).any():
        raise ValueError("every row of weights must give positive weight to both classes")
    return _weighted_metrics(y, p, w)


# --------------------------------------------------------------------------------------------------
# Resampling.


def _draw_counts(rng: np.random.Generator, n_draws: int, n_units: int) -> np.ndarray:
    """(n_draws, n_units) draw counts: each row is one bootstrap resample of n_units units with replacement."""
    picks = rng.integers(0, n_units, size=(n_draws, n_units))
    picks += n_units * np.arange(n_draws)[:, None]  # offset per resample so one bincount counts them all
    return np.bincount(picks.ravel(), minlength=n_draws * n_units).reshape(n_draws, n_units)


def _one_class(counts: np.ndarray, has_pos: np.ndarray, has_neg: np.ndarray) -> np.ndarray:
    """Which resamples (rows of draw counts) drew no positive unit or no negative unit."""
    return ((counts @ has_pos) == 0) | ((counts @ has_neg) == 0)


def _two_class_counts(
    rng: np.random.Generator, n_draws: int, has_pos: np.ndarray, has_neg: np.ndarray
) -> tuple[np.ndarray, int]:
    """Draw counts per unit with every one-class resample redrawn; returns (counts, redraws)."""
    counts = _draw_counts(rng, n_draws, len(has_pos))
    bad = np.flatnonzero(_one_class(counts, has_pos, has_neg))
    redraws = 0
    # Ends with probability 1: with both classes in the data, a fresh resample has both with probability at
    # least 1/2 (the worst case is one positive and one negative unit), so redraws average under n_draws.
    while bad.size:
        redraws += bad.size
        counts[bad] = _draw_counts(rng, bad.size, len(has_pos))
        bad = bad[_one_class(counts[bad], has_pos, has_neg)]
    return counts, redraws


def _units(y: np.ndarray, groups) -> np.ndarray | None:
    """Unit (patient) index per row, or None when rows are the units."""
    if groups is None:
        return None
    g = np.asarray(groups)
    if len(g) != len(y):
        raise ValueError(f"lengths differ: y_true has {len(y)} rows, groups has {len(g)}")
    # Nulls arrive as NaN (numeric ids from polars) or None (object arrays); np.unique would merge them.
    if g.dtype.kind == "f":
        missing = np.isnan(g)
    elif g.dtype == object:
        missing = np.array([v is None for v in g], dtype=bool)
    else:
        missing = np.zeros(len(g), dtype=bool)
    if missing.any():
        raise ValueError(f"groups has {int(missing.sum())} null values, e.g. at row {np.flatnonzero(missing)[0]}")
    return np.unique(g, return_inverse=True)[1].ravel()


def _bootstrap(
    y: np.ndarray, probs: list[np.ndarray], groups, n_resamples: int, seed: int, row_weights=None
) -> tuple[list[dict[str, np.ndarray]], int]:
    """Metric values per resample for each probability array, all on the same resamples; plus the redraws."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    unit = _units(y, groups)
    # Per unit: does it hold a positive / a negative row (integers, so the check is a matrix product)
    has_pos = (y if unit is None else np.bincount(unit, weights=y)) > 0
    has_neg = (1 - y if unit is None else np.bincount(unit, weights=1 - y)) > 0
    has_pos, has_neg = has_pos.astype(np.int64), has_neg.astype(np.int64)
    rng = np.random.default_rng(seed)
    blocks = [_score_blocks(p) for p in probs]
    chunk = max(1, CHUNK_ELEMENTS // len(y))  # depends on the data only, so results stay seed-deterministic
    parts: list[list[dict[str, np.ndarray]]] = []
    redraws = 0
    for start in range(0, n_resamples, chunk):
        counts, extra = _two_class_counts(rng, min(chunk, n_resamples - start), has_pos, has_neg)
        redraws += extra
        w = (counts if unit is None else counts[:, unit]).astype(np.float64)  # a patient's rows share its count
        if row_weights is not None:
            w *= row_weights  # a drawn row counts with its sampling weight
        parts.append([_weighted_metrics(y, p, w, b) for p, b in zip(probs, blocks, strict=True)])
    stats = [{m: np.concatenate([part[i][m] for part in parts]) for m in METRICS} for i in range(len(probs))]
    return stats, redraws


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float, float]:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def bootstrap_ci(
    y_true: Sequence | np.ndarray,
    y_prob: Sequence | np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Interval]:
    """Percentile bootstrap intervals for AUPRC, AUROC and Brier.

    With `groups` (subject ids) whole patients are resampled with all their rows; otherwise rows are.
    One-class resamples are redrawn (see the module docstring).
    """
    y, (p,) = _checked(y_true, y_prob)
    point = score(y, p)
    (stats,), _ = _bootstrap(y, [p], groups, n_resamples, seed)
    return {m: Interval(point[m], *_percentiles(stats[m], alpha)) for m in METRICS}


def paired_bootstrap(
    y_true: Sequence | np.ndarray,
    prob_a: Sequence | np.ndarray,
    prob_b: Sequence | np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    weights: Sequence | np.ndarray | None = None,
) -> dict[str, PairedResult]:
    """Difference a - b of each metric on the same resamples (same patients), with a two-sided p-value.
    WEIGHTS: row weights, as in `score`.

    p = 2 * min(share of differences <= 0, share >= 0), clipped to [1 / (n_resamples + 1), 1]. For Brier
    lower is better, so a better model a has a negative difference there.
    """
    y, (a, b) = _checked(y_true, prob_a, prob_b)
    w = _row_weights(weights, len(y))
    point_a, point_b = score(y, a, w), score(y, b, w)
    (stats_a, stats_b), _ = _bootstrap(y, [a, b], groups, n_resamples, seed, w)
    results = {}
    for m in METRICS:
        diff = stats_a[m] - stats_b[m]
        p_value = 2 * min(np.mean(diff <= 0), np.mean(diff >= 0))
        p_value = float(np.clip(p_value, 1 / (n_resamples + 1), 1.0))
        results[m] = PairedResult(point_a[m] - point_b[m], *_percentiles(diff, alpha), p_value)
    return results


# --------------------------------------------------------------------------------------------------
# Prediction frames and files (meds-evaluation schema).


def predictions_frame(
    subject_id: Sequence | np.ndarray | pl.Series,
    prediction_time: Sequence | np.ndarray | pl.Series,
    boolean_value: Sequence | np.ndarray | pl.Series,
    probability: Sequence | np.ndarray | pl.Series,
) -> pl.DataFrame:
    """A predictions frame in the meds-evaluation columns; predicted_boolean_value is probability >= 0.5."""
    y = _labels(boolean_value, "boolean_value")
    p = _probabilities(probability, "probability")
    subjects = pl.Series(SUBJECT_ID, subject_id).cast(pl.Int64, strict=True)
    times = pl.Series(PREDICTION_TIME, prediction_time).cast(pl.Datetime("us"), strict=True)
    _same_length(subject_id=subjects, prediction_time=times, boolean_value=y, probability=p)
    frame = pl.DataFrame(
        [
            subjects,
            times,
            pl.Series(BOOLEAN_VALUE, y.astype(bool)),
            pl.Series(PREDICTED_VALUE, p >= THRESHOLD),
            pl.Series(PREDICTED_PROBABILITY, p),
        ]
    )
    return _validated(frame, "predictions_frame")


def _validated(df: pl.DataFrame, source: str) -> pl.DataFrame:
    """DF with the prediction columns in order, probability as Float64; errors name SOURCE and the column."""
    missing = [c for c in PREDICTION_SCHEMA if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; found {df.columns}")
    extra = [c for c in df.columns if c not in PREDICTION_SCHEMA]
    if extra:
        raise ValueError(f"{source}: unexpected column(s) {extra}; the meds-evaluation schema allows no extras")
    for column, dtype in PREDICTION_SCHEMA.items():
        found = df.schema[column]
        allowed = (dtype, pl.Float32()) if column == PREDICTED_PROBABILITY else (dtype,)
        if found not in allowed:
            raise ValueError(f"{source}: column {column} has type {found}, expected {dtype}")
        nulls = df[column].null_count()
        if nulls:
            raise ValueError(f"{source}: column {column} has {nulls} null values")
    df = df.select(list(PREDICTION_SCHEMA)).with_columns(pl.col(PREDICTED_PROBABILITY).cast(pl.Float64))
    _probabilities(df[PREDICTED_PROBABILITY].to_numpy(), f"{source}: column {PREDICTED_PROBABILITY}")
    return df


def write_predictions(df: pl.DataFrame, path: str | Path) -> Path:
    """Validate DF and write it as parquet at PATH (parent folders created)."""
    path = Path(path)
    df = _validated(df, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(path)
    return path


def read_predictions(path: str | Path) -> pl.DataFrame:
    """Read and validate a predictions parquet file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no predictions file")
    try:
        df = pl.read_parquet(path)
    except Exception as error:  # polars raises several types; all mean the file is not usable parquet
        raise ValueError(f"{path}: not a readable parquet file ({error})") from error
    return _validated(df, str(path))


def evaluate(
    predictions: pl.DataFrame, n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05, weights=None
) -> dict:
    """A stage's metrics JSON: each metric's point/low/high (patient-level bootstrap) and the sample's size.
    WEIGHTS: one per prediction row (see `score`)."""
    df = _validated(predictions, "predictions")
    y, (p,) = _checked(df[BOOLEAN_VALUE].to_numpy(), df[PREDICTED_PROBABILITY].to_numpy())
    w = _row_weights(weights, len(y))
    point = score(y, p, w)
    (stats,), redraws = _bootstrap(y, [p], df[SUBJECT_ID].to_numpy(), n_resamples, seed, w)
    intervals = {m: Interval(point[m], *_percentiles(stats[m], alpha)) for m in METRICS}
    return {
        **{m: asdict(interval) for m, interval in intervals.items()},
        "n": point["n"],
        "positives": point["positives"],
        "prevalence": point["prevalence"],
        "n_subjects": int(df[SUBJECT_ID].n_unique()),
        "n_resamples": n_resamples,
        "seed": seed,
        "alpha": alpha,
        "resampling": "subject",  # whole patients are resampled
        "weighted": w is not None,
        "one_class_redraws": redraws,
    }


def metrics_table(results: dict[str, dict], label: str = "model") -> pl.DataFrame:
    """One row per entry of RESULTS (name -> `evaluate` output): n, positives, prevalence, and each metric
    with its interval as `auprc`, `auprc_low`, `auprc_high`, ..."""
    rows = []
    for name, result in results.items():
        row = {label: name, "n": int(result["n"]), "positives": int(result["positives"])}
        row["prevalence"] = float(result["prevalence"])
        for m in METRICS:
            row |= {m: result[m]["point"], f"{m}_low": result[m]["low"], f"{m}_high": result[m]["high"]}
        rows.append(row)
    return pl.DataFrame(rows)


def evaluate_mean(
    predictions: Sequence[pl.DataFrame],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    weights: pl.DataFrame | None = None,
) -> dict:
    """Like `evaluate`, for the mean over several runs (e.g. label-budget seeds) scored on the same patients.
    WEIGHTS: a frame of subject_id, prediction_time and weight covering exactly the predicted rows.

    Every run is scored on the same bootstrap resamples and the metrics are averaged per resample, so the
    interval reflects the test patients' sampling around the seed-averaged metric. Also returns each run's
    point estimate (`runs`).
    """
    if not predictions:
        raise ValueError("evaluate_mean needs at least one predictions frame")
    frames = [_validated(p, f"predictions[{i}]").sort(SUBJECT_ID, "prediction_time") for i, p in enumerate(predictions)]
    keys = frames[0].select(SUBJECT_ID, "prediction_time", BOOLEAN_VALUE)
    for i, f in enumerate(frames[1:], start=1):
        if not f.select(SUBJECT_ID, "prediction_time", BOOLEAN_VALUE).equals(keys):
            raise ValueError(f"predictions[{i}] scores other patients or labels than predictions[0]")
    y, probs = _checked(keys[BOOLEAN_VALUE].to_numpy(), *(f[PREDICTED_PROBABILITY].to_numpy() for f in frames))
    w = None if weights is None else row_weights_for(keys, weights)
    points = [score(y, p, w) for p in probs]
    stats, redraws = _bootstrap(y, probs, keys[SUBJECT_ID].to_numpy(), n_resamples, seed, w)
    out = {}
    for m in METRICS:
        mean_point = float(np.mean([pt[m] for pt in points]))
        out[m] = asdict(Interval(mean_point, *_percentiles(np.mean([s[m] for s in stats], axis=0), alpha)))
    return {
        **out,
        "runs": [{m: pt[m] for m in METRICS} for pt in points],
        "n": points[0]["n"],
        "positives": points[0]["positives"],
        "prevalence": points[0]["prevalence"],
        "n_resamples": n_resamples,
        "seed": seed,
        "alpha": alpha,
        "weighted": w is not None,
        "one_class_redraws": redraws,
    }


def restrict(predictions: pl.DataFrame, sample: pl.DataFrame, source: str = "predictions") -> pl.DataFrame:
    """The rows of PREDICTIONS for the patients of SAMPLE (subject_id, prediction_time); every one of them must
    have a prediction (an error names SOURCE)."""
    keys = [SUBJECT_ID, PREDICTION_TIME]
    kept = predictions.join(sample.select(keys), on=keys, how="semi")
    if kept.height != sample.height:
        raise ValueError(
            f"{source}: {sample.height - kept.height} patient(s) of the evaluation sample have no prediction"
        )
    return kept


def evaluate_on_sample(predictions: pl.DataFrame, sample: pl.DataFrame, n_resamples: int = 1000, seed: int = 0,
                       alpha: float = 0.05) -> dict:  # fmt: skip
    """`evaluate` on the weighted evaluation SAMPLE (subject_id, prediction_time, weight): the one number every
    model of the study is given."""
    rows = restrict(predictions, sample)
    return evaluate(rows, n_resamples, seed, alpha, weights=row_weights_for(rows, sample))


def sample_gap_table(results: dict[str, tuple[dict, dict]], label: str = "task") -> pl.DataFrame:
    """How far the weighted evaluation sample's AUPRC is from the whole test split's: one row per entry of
    RESULTS (name -> (`evaluate` on the sample, `evaluate` on the whole split)), with the sample's 95% interval
    and whether the whole split's value falls inside it."""
    rows = []
    for name, (sample, whole) in results.items():
        a, w = sample["auprc"], whole["auprc"]
        rows.append({label: name, "auprc_sample": a["point"], "auprc_sample_low": a["low"],
                     "auprc_sample_high": a["high"], "auprc_whole_split": w["point"],
                     "gap": a["point"] - w["point"], "interval_half_width": (a["high"] - a["low"]) / 2,
                     "whole_inside_interval": a["low"] <= w["point"] <= a["high"]})  # fmt: skip
    return pl.DataFrame(rows)


def row_weights_for(rows: pl.DataFrame, weights: pl.DataFrame) -> np.ndarray:
    """The weight of each of ROWS (subject_id, prediction_time), from WEIGHTS (subject_id, prediction_time,
    weight); a row without a weight is an error naming it."""
    keys = [SUBJECT_ID, PREDICTION_TIME]
    joined = rows.select(keys).with_row_index("_row").join(weights.select(*keys, "weight"), on=keys, how="left")
    joined = joined.sort("_row")
    missing = joined.filter(pl.col("weight").is_null())
    if missing.height:
        raise ValueError(
            f"{missing.height} prediction row(s) have no weight (e.g. subject_id {missing[SUBJECT_ID][0]})"
        )
    if joined.height != rows.height:
        raise ValueError("weights hold duplicate (subject_id, prediction_time) rows")
    return _row_weights(joined["weight"].to_numpy(), rows.height)


def paired_mean_bootstrap(
    frames_a: Sequence[pl.DataFrame],
    frames_b: Sequence[pl.DataFrame],
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    weights: pl.DataFrame | None = None,
    relative: bool = False,
) -> dict[str, PairedResult]:
    """`paired_bootstrap` for seed-averaged models: the mean metric of A's runs minus the mean of B's runs, all
    scored on the same patient resamples. Every frame must hold the same (subject, time, label) rows.
    RELATIVE: that difference divided by B's mean (a relative gain), per resample and at the point."""
    frames = [_validated(f, f"predictions[{i}]").sort(SUBJECT_ID, PREDICTION_TIME)
              for i, f in enumerate([*frames_a, *frames_b])]  # fmt: skip
    if not frames_a or not frames_b:
        raise ValueError("paired_mean_bootstrap needs at least one run on each side")
    keys = frames[0].select(SUBJECT_ID, PREDICTION_TIME, BOOLEAN_VALUE)
    for i, f in enumerate(frames[1:], start=1):
        if not f.select(SUBJECT_ID, PREDICTION_TIME, BOOLEAN_VALUE).equals(keys):
            raise ValueError(f"predictions[{i}] scores other patients or labels than predictions[0]")
    y, probs = _checked(keys[BOOLEAN_VALUE].to_numpy(), *(f[PREDICTED_PROBABILITY].to_numpy() for f in frames))
    w = None if weights is None else row_weights_for(keys, weights)
    stats, _ = _bootstrap(y, probs, keys[SUBJECT_ID].to_numpy(), n_resamples, seed, w)
    points = [score(y, p, w) for p in probs]
    n_a = len(frames_a)
    results = {}
    for m in METRICS:
        a, b = np.mean([s[m] for s in stats[:n_a]], axis=0), np.mean([s[m] for s in stats[n_a:]], axis=0)
        diff = (a - b) / b if relative else a - b
        pa, pb = np.mean([p[m] for p in points[:n_a]]), np.mean([p[m] for p in points[n_a:]])
        point = float((pa - pb) / pb if relative else pa - pb)
        p_value = float(np.clip(2 * min(np.mean(diff <= 0), np.mean(diff >= 0)), 1 / (n_resamples + 1), 1.0))
        results[m] = PairedResult(point, *_percentiles(diff, alpha), p_value)
    return results
