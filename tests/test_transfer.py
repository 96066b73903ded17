"""The transfer study: held-out hospitals stay out of pretraining, the k-shot samples, the relative gain."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from conftest import small_world

from claimsutil import metrics
from claimsutil import splits as sp
from claimsutil import tokenize as tok
from claimsutil import transfer as tr
from claimsutil.train.launch import split_ids


def test_held_out_hospitals_enter_neither_pretraining_nor_the_vocabulary(tmp_path):
    world = small_world(tmp_path, patients=400, seed=11)
    splits = world["splits"]
    held = splits.filter(pl.col("split") == "held_out_hospital")
    assert held.height > 0 and held["hospital"].n_unique() == 4
    pretraining = {*split_ids(world["splits_file"], "train"), *split_ids(world["splits_file"], "validation")}
    assert pretraining.isdisjoint(held["subject_id"].to_list())
    assert pretraining == set(sp.subject_ids(splits, sp.VOCABULARY_SPLITS).tolist())
    vocab = tok.Vocabulary.load(world["tokens"] / "vocab.json")
    held_tokens = {f"HOSPITAL/{h}" for h in held["hospital"].unique().to_list()}
    hospitals = {t for t in vocab.tokens if t.startswith("HOSPITAL/")}
    assert len(hospitals) >= 20 and hospitals.isdisjoint(held_tokens)
    # The test can fail: with the held-out patients, their hospitals' tokens would enter the vocabulary.
    everyone = tok.build_vocabulary(world["meds"], splits["subject_id"].to_numpy(), vocab.config)
    large = held.group_by("hospital").len().filter(pl.col("len") >= vocab.config.min_count)["hospital"].to_list()
    assert large and {f"HOSPITAL/{h}" for h in large} <= set(everyone.tokens)


def _labels(n: int, positives: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=bool)
    y[rng.choice(n, positives, replace=False)] = True
    return pl.DataFrame({"subject_id": np.arange(1000, 1000 + n), "prediction_time": [None] * n, "boolean_value": y},
                        schema={"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"),
                                "boolean_value": pl.Boolean})  # fmt: skip


def test_pool_and_test_split_by_patient_hash():
    labels = _labels(2000, 300)
    pool, test = tr.pool_and_test(labels, 0.5, seed=3, task="t")
    assert pool.height + test.height == labels.height
    assert set(pool["subject_id"]).isdisjoint(test["subject_id"])
    assert 0.45 < pool.height / labels.height < 0.55
    again, _ = tr.pool_and_test(labels.sample(fraction=1.0, shuffle=True, seed=1), 0.5, seed=3, task="t")
    assert again.equals(pool)  # the order of the labels changes nothing
    other, _ = tr.pool_and_test(labels, 0.5, seed=3, task="u")
    assert not other.equals(pool)  # each task has its own split


def test_feasible_shots_and_balanced_disjoint_draws():
    pool = _labels(400, 40)
    ks, cap = tr.feasible_shots(pool, (16, 32, 64, 128))
    assert (ks, cap) == ([16, 32, 40], 40)  # 40 positives: k = 40 uses them all (20 to train, 20 to stop on)
    assert tr.feasible_shots(_labels(400, 200), (16, 32))[0] == [16, 32]  # enough: nothing added
    assert tr.feasible_shots(_labels(400, 3), (16, 32)) == ([], 2)
    train, val = tr.draw_shots(pool, 40, replicate=0, seed=5, task="t")
    for frame in (train, val):
        assert frame.height == 40 and frame["boolean_value"].sum() == 20
    assert set(train["subject_id"]).isdisjoint(val["subject_id"])
    assert tr.draw_shots(pool, 40, 0, 5, "t")[0].equals(train)
    assert not tr.draw_shots(pool, 40, 1, 5, "t")[0].equals(train)
    with pytest.raises(tr.TransferError, match="k = 64 needs 64 positives"):
        tr.draw_shots(pool, 64, 0, 5, "t")


def test_relative_gain_is_paired_and_relative():
    y = np.array([1, 0, 1, 0, 0, 1, 0, 0, 1, 0] * 20, dtype=bool)
    ids = np.arange(y.size)
    t = np.full(y.size, np.datetime64("2022-01-06", "us"))
    rng = np.random.default_rng(0)
    good = metrics.predictions_frame(ids, t, y, np.clip(y * 0.6 + rng.random(y.size) * 0.5, 0, 1))
    weak = metrics.predictions_frame(ids, t, y, rng.random(y.size))
    rel = metrics.paired_mean_bootstrap([good], [weak], n_resamples=200, seed=1, relative=True)["auprc"]
    diff = metrics.paired_mean_bootstrap([good], [weak], n_resamples=200, seed=1)["auprc"]
    base = metrics.evaluate(weak, n_resamples=10, seed=1)["auprc"]["point"]
    assert rel.point == pytest.approx(diff.point / base)
    assert rel.low > 0 and rel.low < rel.point < rel.high
