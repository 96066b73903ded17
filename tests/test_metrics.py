"""Metrics, bootstrap intervals, paired tests and prediction files, checked against sklearn and known truths."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from scipy.special import expit, logit
from scipy.stats import norm
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from claimsutil import metrics as cm

SKLEARN = {"auprc": average_precision_score, "auroc": roc_auc_score, "brier": brier_score_loss}


def binormal(rng: np.random.Generator, n: int, d: float = 1.0, prevalence: float = 0.3):
    """Labels and calibrated probabilities: score ~ N(d * y, 1), probability = P(y = 1 | score)."""
    y = rng.random(n) < prevalence
    s = rng.normal(d * y, 1.0)
    return y, expit(logit(prevalence) + d * s - d * d / 2)


def binormal_truth(d: float = 1.0, prevalence: float = 0.3) -> dict[str, float]:
    """Population AUROC (closed form), AUPRC and Brier (numerical integration over the score)."""
    t = np.linspace(-12.0, 12.0 + d, 400_001)
    dt = t[1] - t[0]
    recall, fpr = norm.sf(t - d), norm.sf(t)
    precision = prevalence * recall / (prevalence * recall + (1 - prevalence) * fpr)
    prob = expit(logit(prevalence) + d * t - d * d / 2)
    density = prevalence * norm.pdf(t - d) + (1 - prevalence) * norm.pdf(t)
    return {
        "auroc": float(norm.cdf(d / np.sqrt(2))),
        "auprc": float(np.sum(precision * norm.pdf(t - d)) * dt),  # integral of precision d(recall)
        "brier": float(np.sum(density * prob * (1 - prob)) * dt),  # calibrated: E[(y - p)^2] = E[p(1 - p)]
    }


# --------------------------------------------------------------------------------------------------
# score


def test_score_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y, p = binormal(rng, 500)
    result = cm.score(y, p)
    for metric, reference in SKLEARN.items():
        assert result[metric] == pytest.approx(reference(y, p), abs=1e-12)
    assert (result["n"], result["positives"]) == (500, int(y.sum()))
    assert result["prevalence"] == pytest.approx(y.mean())
    assert cm.score(y.astype(int), list(p)) == result  # 0/1 labels and lists work alike


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([0, 0, 0, 0], [0.1, 0.2, 0.3, 0.4], r"single class \(0 positives, 4 negatives\)"),
        ([True] * 3, [0.1, 0.2, 0.3], r"single class \(3 positives, 0 negatives\)"),
        ([0, 1, 0, 1], [0.1, np.nan, 0.3, np.nan], r"y_prob has 2 NaN .* at row 1"),
        ([0, 1, 0, 1], [0.1, None, 0.3, 0.4], r"y_prob has 1 NaN or null"),
        ([0, 1, 0, 1], [0.1, 1.5, -0.2, 0.4], r"y_prob has 2 values outside \[0, 1\], e\.g\. 1\.5 at row 1"),
        ([0, 1, 0], [0.1, 0.2, 0.3, 0.4], r"y_true has 3 rows, y_prob has 4 rows"),
        ([0, 2, 1], [0.1, 0.2, 0.3], r"y_true has 1 values that are not 0/1, e\.g\. 2 at row 1"),
    ],
)
def test_score_rejects_bad_input(y, p, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cm.score(y, p)


# --------------------------------------------------------------------------------------------------
# Vectorised weighted metrics: what every bootstrap resample is computed with


@pytest.mark.parametrize("integer", [True, False])
def test_weighted_scores_equal_sklearn_sample_weight_with_ties(integer: bool) -> None:
    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.25
    p = np.round(np.clip(0.4 + 0.2 * y + rng.normal(0, 0.2, 300), 0, 1), 1)  # 11 distinct values: many ties
    assert len(np.unique(p[y])) < y.sum() and len(np.unique(p[~y])) < (~y).sum()
    weights = rng.integers(0, 4, size=(40, 300)).astype(float)  # zeros included, as in bootstrap counts
    if not integer:
        weights *= rng.random((40, 300))
    result = cm.weighted_scores(y, p, weights)
    for metric, reference in SKLEARN.items():
        expected = [reference(y, p, sample_weight=w) for w in weights]
        np.testing.assert_allclose(result[metric], expected, rtol=1e-12, atol=1e-14)


def test_weighted_scores_rejects_one_class_weights() -> None:
    y, p = np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.8])
    with pytest.raises(ValueError, match="both classes"):
        cm.weighted_scores(y, p, np.array([[1.0, 0.0, 2.0, 0.0]]))


# --------------------------------------------------------------------------------------------------
# bootstrap_ci


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    y, p = binormal(np.random.default_rng(2), 300)
    first = cm.bootstrap_ci(y, p, n_resamples=200, seed=7)
    assert cm.bootstrap_ci(y, p, n_resamples=200, seed=7) == first
    other = cm.bootstrap_ci(y, p, n_resamples=200, seed=8)
    for metric in cm.METRICS:
        assert other[metric].point == first[metric].point  # the point estimate uses no randomness
        assert (other[metric].low, other[metric].high) != (first[metric].low, first[metric].high)
        assert first[metric].low < first[metric].point < first[metric].high


def test_grouped_bootstrap_resamples_whole_patients() -> None:
    """Ten identical rows per patient: resampling patients must equal resampling the patients' single rows."""
    y, p = binormal(np.random.default_rng(3), 120)
    subjects = np.arange(120) * 7 + 1000  # sorted ids, as np.unique orders the patients
    rows = np.repeat(np.arange(120), 10)
    rng = np.random.default_rng(4)
    rows = rows[rng.permutation(rows.size)]  # a patient's rows are scattered through the data
    grouped = cm.bootstrap_ci(y[rows], p[rows], groups=subjects[rows], n_resamples=300, seed=5)
    per_patient = cm.bootstrap_ci(y, p, n_resamples=300, seed=5)
    naive = cm.bootstrap_ci(y[rows], p[rows], n_resamples=300, seed=5)  # treats the 10 copies as independent
    for metric in cm.METRICS:
        assert grouped[metric].low == pytest.approx(per_patient[metric].low, abs=1e-12)
        assert grouped[metric].high == pytest.approx(per_patient[metric].high, abs=1e-12)
        # Row resampling pretends there are 1,200 patients: its interval is about sqrt(10) times too narrow.
        assert naive[metric].high - naive[metric].low < 0.5 * (grouped[metric].high - grouped[metric].low)


def test_bootstrap_rejects_bad_groups() -> None:
    y, p = binormal(np.random.default_rng(12), 50)
    with pytest.raises(ValueError, match="y_true has 50 rows, groups has 49"):
        cm.bootstrap_ci(y, p, groups=np.arange(49), n_resamples=10)
    groups = np.arange(50.0)
    groups[[3, 7]] = np.nan  # what a polars Int64 column with nulls becomes in numpy
    with pytest.raises(ValueError, match="groups has 2 null values, e.g. at row 3"):
        cm.bootstrap_ci(y, p, groups=groups, n_resamples=10)
    with pytest.raises(ValueError, match="groups has 1 null values, e.g. at row 0"):
        cm.bootstrap_ci(y, p, groups=[None] + ["a"] * 49, n_resamples=10)


def test_bootstrap_ci_covers_the_true_value() -> None:
    """95% intervals on 200 simulated datasets from a model with known AUROC, AUPRC and Brier."""
    truth = binormal_truth()
    y, p = binormal(np.random.default_rng(6), 200_000)
    for metric, value in truth.items():  # the integrals are right: a huge sample agrees
        assert cm.score(y, p)[metric] == pytest.approx(value, abs=0.005)
    rng = np.random.default_rng(2024)
    covered = dict.fromkeys(truth, 0)
    for repetition in range(200):
        y, p = binormal(rng, 400)
        intervals = cm.bootstrap_ci(y, p, n_resamples=500, seed=repetition)
        for metric, value in truth.items():
            covered[metric] += intervals[metric].low <= value <= intervals[metric].high
    for metric, hits in covered.items():
        assert 180 <= hits <= 198, f"{metric}: {hits}/200 intervals cover the truth"


def test_one_class_resamples_are_redrawn_and_counted() -> None:
    """One positive among 30 rows: about 36% of resamples miss it; each is redrawn, none is dropped."""
    y = np.zeros(30, dtype=bool)
    y[4] = True
    p = np.linspace(0.05, 0.95, 30)
    frame = cm.predictions_frame(np.arange(30), [datetime(2020, 1, 1)] * 30, y, p)
    result = cm.evaluate(frame, n_resamples=1000, seed=0)
    # Expected redraws: 1000 * q / (1 - q) with q = (29/30)^30 = 0.362, i.e. about 570.
    assert 450 < result["one_class_redraws"] < 700
    assert result["n_resamples"] == 1000
    assert 0 < result["auroc"]["low"] <= result["auroc"]["high"] <= 1
    assert cm.evaluate(frame, n_resamples=1000, seed=0) == result


# --------------------------------------------------------------------------------------------------
# paired_bootstrap


def test_paired_bootstrap_identical_models() -> None:
    y, p = binormal(np.random.default_rng(8), 300)
    for result in cm.paired_bootstrap(y, p, p.copy(), n_resamples=200).values():
        assert (result.point, result.low, result.high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_detects_a_better_model_and_is_antisymmetric() -> None:
    rng = np.random.default_rng(9)
    y, good = binormal(rng, 600, d=1.5)
    worse = np.clip(good + rng.normal(0, 0.25, good.size), 0, 1)  # same model plus noise
    groups = np.arange(600) // 2  # two rows per patient
    ab = cm.paired_bootstrap(y, good, worse, groups=groups, n_resamples=1000, seed=1)
    ba = cm.paired_bootstrap(y, worse, good, groups=groups, n_resamples=1000, seed=1)
    for metric in ("auprc", "auroc"):
        assert ab[metric].p_value < 0.01 and ab[metric].low > 0
    assert ab["brier"].p_value < 0.01 and ab["brier"].high < 0  # lower Brier is better
    for metric in cm.METRICS:
        assert ba[metric].point == pytest.approx(-ab[metric].point, abs=1e-15)
        assert ba[metric].low == pytest.approx(-ab[metric].high, abs=1e-12)
        assert ba[metric].high == pytest.approx(-ab[metric].low, abs=1e-12)
        assert ba[metric].p_value == ab[metric].p_value


def test_paired_bootstrap_without_a_real_difference_is_not_significant() -> None:
    rng = np.random.default_rng(10)
    y, base = binormal(rng, 400)
    a = np.clip(base + rng.normal(0, 0.05, base.size), 0, 1)
    b = np.clip(base + rng.normal(0, 0.05, base.size), 0, 1)
    result = cm.paired_bootstrap(y, a, b, n_resamples=500)
    for metric in cm.METRICS:
        assert result[metric].low < 0 < result[metric].high
        assert result[metric].p_value > 0.05


# --------------------------------------------------------------------------------------------------
# Prediction frames, files and evaluate


def example_frame(n: int = 200, seed: int = 11) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    y, p = binormal(rng, n)
    times = [datetime(2021, 4, 1) + timedelta(days=int(d)) for d in rng.integers(0, 365, n)]
    return cm.predictions_frame(rng.integers(1, n // 2, n), times, y, p)


def test_predictions_frame_has_the_meds_evaluation_schema() -> None:
    frame = cm.predictions_frame([3, 1], [datetime(2020, 1, 1), datetime(2020, 6, 1)], [True, False], [0.5, 0.49])
    assert frame.schema == pl.Schema(
        {
            "subject_id": pl.Int64,
            "prediction_time": pl.Datetime("us"),
            "boolean_value": pl.Boolean,
            "predicted_boolean_value": pl.Boolean,
            "predicted_boolean_probability": pl.Float64,
        }
    )
    assert frame["predicted_boolean_value"].to_list() == [True, False]  # threshold 0.5, inclusive
    with pytest.raises(ValueError, match=r"probability has 1 values outside \[0, 1\]"):
        cm.predictions_frame([1, 2], [datetime(2020, 1, 1)] * 2, [True, False], [0.5, 1.2])


def test_write_read_round_trip(tmp_path) -> None:
    frame = example_frame()
    path = cm.write_predictions(frame, tmp_path / "preds" / "test.parquet")
    assert cm.read_predictions(path).equals(frame)
    # A float32 probability (the dtype meds-evaluation's schema code declares) is read and widened.
    frame.with_columns(pl.col("predicted_boolean_probability").cast(pl.Float32)).write_parquet(tmp_path / "f32.parquet")
    assert cm.read_predictions(tmp_path / "f32.parquet").schema == frame.schema


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop("boolean_value"), r"missing column\(s\) \['boolean_value'\]"),
        (lambda f: f.with_columns(pl.col("subject_id").cast(pl.Utf8)), r"column subject_id has type String"),
        (lambda f: f.with_columns(split=pl.lit("test")), r"unexpected column\(s\) \['split'\]"),
        (
            lambda f: f.with_columns(
                boolean_value=pl.when(pl.col("subject_id") == f["subject_id"][0])
                .then(None)
                .otherwise(pl.col("boolean_value"))
            ),
            r"column boolean_value has \d+ null values",
        ),
        (
            lambda f: f.with_columns(predicted_boolean_probability=pl.col("predicted_boolean_probability") + 1),
            r"column predicted_boolean_probability has \d+ values outside \[0, 1\]",
        ),
    ],
)
def test_read_predictions_rejects_bad_files(tmp_path, change, message: str) -> None:
    path = tmp_path / "bad.parquet"
    change(example_frame()).write_parquet(path)
    with pytest.raises(ValueError, match=f"{path}: {message}"):
        cm.read_predictions(path)


def test_evaluate_writes_json_ready_patient_level_metrics() -> None:
    frame = example_frame(400)
    result = cm.evaluate(frame, n_resamples=300, seed=3)
    assert json.loads(json.dumps(result)) == result
    y, p = frame["boolean_value"].to_numpy(), frame["predicted_boolean_probability"].to_numpy()
    intervals = cm.bootstrap_ci(y, p, groups=frame["subject_id"].to_numpy(), n_resamples=300, seed=3)
    for metric in cm.METRICS:
        assert result[metric] == asdict(intervals[metric])
    assert (result["n"], result["positives"]) == (400, int(y.sum()))
    assert result["n_subjects"] == frame["subject_id"].n_unique() < 400  # several rows per patient
    assert (result["n_resamples"], result["seed"], result["prevalence"]) == (300, 3, y.mean())


def test_evaluate_mean_of_one_run_is_evaluate():
    rng = np.random.default_rng(3)
    n = 600
    y = rng.random(n) < 0.2
    when = [datetime(2021, 5, 1)] * n
    one = cm.predictions_frame(np.arange(n), when, y, np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1))
    mean = cm.evaluate_mean([one], n_resamples=300, seed=4)
    single = cm.evaluate(one, n_resamples=300, seed=4)
    for m in ("auprc", "auroc", "brier"):
        assert mean[m] == single[m]


def test_evaluate_mean_averages_runs_on_the_same_patients():
    rng = np.random.default_rng(5)
    n = 800
    y = rng.random(n) < 0.15
    when = [datetime(2021, 5, 1)] * n
    signal = [np.clip(k * 0.2 * y + 0.6 * rng.random(n), 0, 1) for k in (1, 2, 3)]
    runs = [cm.predictions_frame(np.arange(n), when, y, p) for p in signal]
    result = cm.evaluate_mean(runs, n_resamples=300, seed=1)
    assert result["auprc"]["point"] == pytest.approx(np.mean([r["auprc"] for r in result["runs"]]))
    assert result["auprc"]["low"] < result["auprc"]["point"] < result["auprc"]["high"]
    assert [r["auprc"] for r in result["runs"]] == sorted(r["auprc"] for r in result["runs"])  # stronger signal
    other = cm.predictions_frame(np.arange(1, n + 1), when, y, runs[0]["predicted_boolean_probability"])
    with pytest.raises(ValueError, match=r"predictions\[1\] scores other patients"):
        cm.evaluate_mean([runs[0], other])


def test_weights_match_sklearn_and_ones_change_nothing():
    rng = np.random.default_rng(11)
    y = rng.random(400) < 0.2
    p = rng.random(400) * 0.5 + 0.3 * y
    w = np.where(y, 1.0, 4.0)
    s = cm.score(y, p, w)
    assert s["auprc"] == pytest.approx(average_precision_score(y, p, sample_weight=w))
    assert s["auroc"] == pytest.approx(roc_auc_score(y, p, sample_weight=w))
    assert s["prevalence"] == pytest.approx((w * y).sum() / w.sum())
    frame = cm.predictions_frame(np.arange(400), [datetime(2022, 1, 1)] * 400, y, p)
    plain = cm.evaluate(frame, n_resamples=200, seed=3)
    ones = cm.evaluate(frame, n_resamples=200, seed=3, weights=np.ones(400))
    for m in cm.METRICS:
        assert ones[m] == pytest.approx(plain[m])
    weighted = cm.evaluate(frame, n_resamples=200, seed=3, weights=w)
    assert weighted["weighted"] and weighted["auprc"]["point"] == pytest.approx(s["auprc"])
    assert weighted["auprc"]["low"] < weighted["auprc"]["point"] < weighted["auprc"]["high"]
    with pytest.raises(ValueError, match="row 3 has -1"):
        cm.score(y, p, np.r_[np.ones(3), -1.0, np.ones(396)])


def test_paired_mean_bootstrap_and_weight_frames():
    rng = np.random.default_rng(5)
    n = 600
    y = rng.random(n) < 0.15
    good = 1 / (1 + np.exp(-(2.0 * y + rng.normal(size=n))))
    bad = 1 / (1 + np.exp(-(0.3 * y + rng.normal(size=n))))
    t = [datetime(2022, 1, 1)] * n
    fa, fb = cm.predictions_frame(np.arange(n), t, y, good), cm.predictions_frame(np.arange(n), t, y, bad)
    same = cm.paired_mean_bootstrap([fa], [fa], n_resamples=200, seed=1)["auprc"]
    assert same.point == 0 and same.low == 0 and same.high == 0
    diff = cm.paired_mean_bootstrap([fa, fa], [fb], n_resamples=200, seed=1)["auprc"]
    single = cm.paired_bootstrap(y, good, bad, groups=np.arange(n), n_resamples=200, seed=1)["auprc"]
    assert diff.point == pytest.approx(single.point) and diff.low > 0
    weights = fa.select("subject_id", "prediction_time").with_columns(weight=pl.lit(2.0))
    assert cm.row_weights_for(fa, weights).tolist() == [2.0] * n
    with pytest.raises(ValueError, match="no weight"):
        cm.row_weights_for(fa, weights.head(10))
