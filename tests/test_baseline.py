"""The LightGBM baseline on synthetic claims: it learns, it is deterministic, it refuses a single class."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
from sklearn.metrics import average_precision_score

from claimsutil.baseline import BaselineConfig, feature_importance, fit_baseline, grid, predict
from claimsutil.bench import stand_in_labels
from claimsutil.config import SynthParams
from claimsutil.features import FeatureConfig, FeatureVocabulary, count_features, fit_vocabulary
from claimsutil.synth import generate

OUTCOME = "ICD10/N18"  # chronic kidney disease after the median event: about a third of the patients


@dataclass
class Split:
    X: sp.csr_matrix
    y: np.ndarray


@dataclass
class Data:
    vocab: FeatureVocabulary
    train: Split
    val: Split
    test: Split


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    work = tmp_path_factory.mktemp("baseline")
    params = SynthParams(patients=3000, seed=5, block_size=500, shard_size=1500, workers=1)
    generate(params, work / "meds", work / "truth", progress=False)
    labels = stand_in_labels(work / "meds", OUTCOME)
    part = (labels["subject_id"] % 10).to_numpy()  # patient-level: 60% train, 20% validation, 20% test
    masks = {"train": part < 6, "val": (part >= 6) & (part < 8), "test": part >= 8}
    vocab = fit_vocabulary(work / "meds", labels.filter(pl.Series(masks["train"])), FeatureConfig())
    X = count_features(work / "meds", labels, vocab)
    y = labels["boolean_value"].to_numpy()
    return Data(vocab, *(Split(X[m], y[m]) for m in masks.values()))


# One OpenMP thread in these fits: the suite runs beside the tiny study, and LightGBM's two spinning threads on a
# shared core made one fit ten times slower (183 s against 20). The tests compare models, not digits.
def test_baseline_beats_the_positive_rate(data: Data) -> None:
    config = BaselineConfig(min_child_samples=(5, 20), num_threads=1)
    fitted = fit_baseline(data.train.X, data.train.y, data.val.X, data.val.y, config)
    assert [p.params for p in fitted.grid] == grid(config) and len(fitted.grid) == 4
    assert fitted.val_auprc == max(p.val_auprc for p in fitted.grid)
    assert json.loads(json.dumps(fitted.summary()))["best_iteration"] == fitted.best_iteration
    assert 1 <= fitted.best_iteration < config.n_estimators  # early stopping stopped it
    p = predict(fitted, data.test.X)
    assert p.shape == (data.test.X.shape[0],) and p.dtype == np.float64 and ((p > 0) & (p < 1)).all()
    rate = data.test.y.mean()
    auprc = average_precision_score(data.test.y, p)
    assert 0.15 < rate < 0.6
    assert auprc > rate + 0.2, (auprc, rate)
    importance = feature_importance(fitted, data.vocab.names)
    assert importance.height > 0 and importance["gain"].is_sorted(descending=True)
    assert set(importance["feature"]) <= set(data.vocab.names)


def test_same_inputs_same_predictions(data: Data) -> None:
    config = BaselineConfig(num_leaves=(15,), min_child_samples=(10,), seed=3, num_threads=1)
    first, second = (fit_baseline(data.train.X, data.train.y, data.val.X, data.val.y, config) for _ in range(2))
    assert first.best_iteration == second.best_iteration and first.val_auprc == second.val_auprc
    assert np.array_equal(predict(first, data.test.X), predict(second, data.test.X))
    assert first.booster.model_to_string() == second.booster.model_to_string()


def test_single_class_is_refused(data: Data) -> None:
    X, y = data.train.X, data.train.y
    n = X.shape[0]
    with pytest.raises(ValueError, match=rf"training set has a single class \(0 positive, {n} negative rows\)"):
        fit_baseline(X, np.zeros(n, bool), data.val.X, data.val.y)
    m = data.val.X.shape[0]
    with pytest.raises(ValueError, match=rf"validation set has a single class \({m} positive, 0 negative rows\)"):
        fit_baseline(X, y, data.val.X, np.ones(m, int))
    with pytest.raises(ValueError, match="labels for"):
        fit_baseline(X, y[:-1], data.val.X, data.val.y)
    with pytest.raises(ValueError, match="0/1 or boolean"):
        fit_baseline(X, np.where(y, 2, 0), data.val.X, data.val.y)
    with pytest.raises(ValueError, match="columns"):
        fit_baseline(X, y, data.val.X[:, :-1], data.val.y)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="num_leaves"):
        BaselineConfig(num_leaves=())
    with pytest.raises(ValueError, match="n_estimators"):
        BaselineConfig(n_estimators=0)
