"""The scaling analysis: power laws, saturation by paired bootstrap, Table 3, findings written from numbers."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from claimsutil import metrics, scaling

SCALES = ["xs", "s", "m", "l", "xl"]


def test_power_law_recovers_its_exponent():
    x = np.array([1e4, 1e5, 1e6, 1e7])
    fit = scaling.fit_power_law(x, 5.0 * x**-0.076)
    assert fit.exponent == pytest.approx(0.076, rel=1e-9)
    assert fit.coefficient == pytest.approx(5.0, rel=1e-9)
    assert fit.r2 == pytest.approx(1.0)
    noisy = scaling.fit_power_law(x, 5.0 * x**-0.076 * np.array([1.01, 0.99, 1.01, 0.99]))
    assert 0.05 < noisy.exponent < 0.1 and noisy.r2 < 1
    with pytest.raises(ValueError, match="two points"):
        scaling.fit_power_law([1e4, 1e4], [1.0, 2.0])


def _frames(y: np.ndarray, p: np.ndarray) -> list[pl.DataFrame]:
    n = len(y)
    times = [dt.datetime(2022, 1, 1)] * n
    return [metrics.predictions_frame(np.arange(n), times, y, p)]


def _task(strengths: dict[str, float], lightgbm: float, scratch: float, n: int = 4000, seed: int = 0):
    """Predictions whose quality grows with STRENGTH (signal-to-noise) per scale; weights all 1."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.1
    noise = rng.normal(size=n)
    shared = rng.normal(size=n)

    def model(strength: float) -> np.ndarray:
        z = strength * y + noise * 0.5 + shared * 0.5
        return 1 / (1 + np.exp(-z))

    runs = {}
    for s, k in strengths.items():
        runs[("pretrained", s, "100")] = _frames(y, model(k))
        runs[("scratch", s, "100")] = _frames(y, model(scratch))
    runs[("lightgbm", "", "100")] = _frames(y, model(lightgbm))
    evaluation = runs[("lightgbm", "", "100")][0].select("subject_id", "prediction_time", "boolean_value")
    evaluation = evaluation.with_columns(weight=pl.lit(1.0))
    return scaling.TaskPredictions("t", evaluation, runs)


def test_saturation_is_the_smallest_scale_not_significantly_worse_than_the_best():
    # xs and s clearly worse; m, l, xl the same model quality (identical predictions for l and xl).
    preds = _task({"xs": 0.2, "s": 0.6, "m": 2.0, "l": 2.0, "xl": 2.0}, lightgbm=0.8, scratch=0.4)
    d = scaling.saturation(preds, SCALES, "100", n_resamples=300, seed=1)
    assert d["saturation_scale"] == "m"
    assert d["versus_best"]["xs"]["high"] < 0 and d["versus_best"]["s"]["high"] < 0
    assert d["gain_over_lightgbm"]["low"] > 0 and d["gain_over_scratch"]["low"] > 0
    # Monotone improvement to the top: saturation is the largest scale.
    rising = _task({"xs": 0.2, "s": 0.5, "m": 0.9, "l": 1.4, "xl": 2.5}, lightgbm=3.0, scratch=0.4)
    d2 = scaling.saturation(rising, SCALES, "100", n_resamples=300, seed=1)
    assert d2["best_scale"] == "xl" and d2["saturation_scale"] == "xl"
    assert d2["gain_over_lightgbm"]["high"] < 0  # LightGBM better here, and the numbers say so


def _table1() -> pl.DataFrame:
    return pl.DataFrame({"scale": SCALES, "parameters": [10_000, 40_000, 160_000, 640_000, 2_560_000],
                         "hours": [0.01, 0.02, 0.05, 0.1, 0.3]})  # fmt: skip


def test_findings_follow_the_numbers_not_the_reference_study():
    disease = {"task": "htn", "budget": "1000", "best_scale": "s", "saturation_scale": "xs",
               "auprc": dict.fromkeys(SCALES, 0.2),
               "gain_over_lightgbm": {"difference": -0.01, "low": -0.03, "high": 0.01},
               "gain_over_scratch": {"difference": 0.05, "low": 0.02, "high": 0.08}}  # fmt: skip
    drug = disease | {"task": "aml", "best_scale": "xl", "saturation_scale": "l"}
    text = scaling.findings([disease, drug], _table1(), {"htn": "disease", "aml": "drug"})
    assert "Unlike the reference study" in text[-1] and "drug tasks saturate at larger scales" in text[-1]
    assert "not significantly different from LightGBM" in text[0]
    assert "better than the same architecture trained from scratch" in text[0]
    assert "saves 1,044 s" in text[0]  # (0.3 - 0.01) h
    flipped = scaling.findings([disease | {"saturation_scale": "xl"}, drug | {"saturation_scale": "s"}], _table1(),
                               {"htn": "disease", "aml": "drug"})  # fmt: skip
    assert flipped[-1].startswith("As in the reference study")
    assert "no pretraining time is saved" in flipped[0]


def test_table3_marks_the_best_trained_model_and_never_the_oracle():
    rows = []
    for model, scale, auprc in [("pretrained", "xs", 0.10), ("pretrained", "s", 0.30), ("scratch", "xs", 0.05),
                                ("scratch", "s", 0.08), ("lightgbm", "", 0.20), ("oracle", "", 0.90)]:  # fmt: skip
        rows.append({"task": "t", "model": model, "scale": scale, "budget": "" if model == "oracle" else "100",
                     "runs": 1, "scored_patients": 500, "scored_positives": 20, "auprc": auprc,
                     "auprc_low": auprc - 0.05, "auprc_high": auprc + 0.05})  # fmt: skip
    t3 = scaling.table3(pl.DataFrame(rows), ["xs", "s"], ["100"])
    assert t3.height == 1 and t3["best"][0] == "pretrained s"
    assert t3["pretrained s"][0].startswith("**0.300")
    assert t3["oracle"][0] == "0.900 (0.850-0.950)"
    assert not t3["lightgbm"][0].startswith("**")


def test_task_kind():
    assert scaling.task_kind(("ICD10/I10",)) == "disease"
    assert scaling.task_kind(("YJ/2171022",)) == "drug"
    assert scaling.task_kind(("ICD10/I10", "YJ/2171022")) == "other"


def test_table1_puts_the_frequency_baseline_beside_each_loss_and_the_distance_below_it():
    metrics = {"parameters": 100, "parameters_non_embedding": 10, "layers": 1, "width": 8, "heads": 1, "ffn": 32,
               "tokens_seen": 1000, "training_flops": 1e9, "wall_time_s": 36.0,
               "final_val_loss": {"total": 9.0, "diagnosis": 5.0, "drug": 4.0, "age": 0.01}}  # fmt: skip
    baseline = {"diagnosis": 5.8, "drug": 3.9}
    t1 = scaling.table1({"xs": metrics}, baseline)
    assert t1["baseline_diagnosis"][0] == 5.8 and t1["below_baseline_diagnosis"][0] == pytest.approx(0.8)
    assert t1["below_baseline_drug"][0] == pytest.approx(-0.1)  # above the baseline: negative, shown as it is
    assert "baseline_drug" not in scaling.table1({"xs": metrics}).columns
    bigger = metrics | {"parameters_non_embedding": 40, "training_flops": 4e9}
    fig, _ = scaling.plot_pretraining(scaling.table1({"xs": metrics, "s": bigger}, baseline))
    assert len(fig.axes) == 3


def test_frequency_baseline_is_read_from_the_tokenize_metrics(tmp_path):
    (tmp_path / "tokenize.json").write_text('{"frequency_baseline_drug": 4.2, "vocabulary": 9}')
    assert scaling.read_frequency_baseline(tmp_path) == {"drug": 4.2}
    with pytest.raises(FileNotFoundError, match="run the tokenize stage"):
        scaling.read_frequency_baseline(tmp_path / "nowhere")
