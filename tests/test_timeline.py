"""Timelines for the generative model: time tokens between records, cuts, and the frequency baseline."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import numpy as np
import pytest

from claimsutil import tokenize as tok
from claimsutil.timeline import TIME_BINS, TIME_FAMILY, Timeline, time_bin, time_token_table, unigram_baseline

DAY = tok.US_PER_DAY
T0 = tok._as_us(dt.datetime(2020, 1, 1))
S = tok.TIME_STATIC
# ids: 0-3 specials, 4 GENDER/F (other), 5-9 diagnoses, 10-11 drugs
FAMILIES = np.array([0, 0, 0, 0, 3, 1, 1, 1, 1, 1, 2, 2], dtype=np.int8)
CLS, SEX = 2, 4


def fake_store() -> SimpleNamespace:
    """Patient 0: [CLS], sex, three records on day 0, one on day 3, two on day 40. Patient 1: [CLS], sex,
    records on day 0 and day 400. Patient 2: [CLS] and sex only."""
    p0 = ([CLS, SEX, 5, 6, 10, 7, 8, 11], [S, S, 0, 0, 0, 3, 40, 40])
    p1 = ([CLS, SEX, 9, 5], [S, S, 0, 400])
    p2 = ([CLS, SEX], [S, S])
    tokens, times, ages, offsets = [], [], [], [0]
    for (t, d), age in zip((p0, p1, p2), (20_000.0, 30_000.0, 25_000.0), strict=True):
        tokens += t
        times += [S if x == S else T0 + x * DAY for x in d]
        ages += [age if x == S else age + x for x in d]
        offsets.append(len(tokens))
    vocab = SimpleNamespace(tokens=[f"T{i}" for i in range(len(FAMILIES))], family_ids=FAMILIES)
    return SimpleNamespace(tokens=np.array(tokens, dtype=np.int32), times_us=np.array(times, dtype=np.int64),
                           ages=np.array(ages, dtype=np.float32), offsets=np.array(offsets), vocab=vocab)  # fmt: skip


def test_bins_cover_every_gap_once():
    edges = [b[0] for b in TIME_BINS] + [TIME_BINS[-1][1]]
    assert edges[0] == 0 and edges[-1] == np.inf and all(a < b for a, b in zip(edges, edges[1:], strict=False))
    days = np.array([0.0, 0.5, 1, 6.9, 7, 13, 14, 30, 61, 91, 182, 364.9, 365, 5000])
    assert time_bin(days).tolist() == [0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 7, 7, 8, 8]
    assert all(lo <= adv < hi for lo, hi, _, adv in TIME_BINS)  # a bin's advance lies inside it


def test_a_time_token_sits_between_records_on_different_dates():
    t = Timeline(fake_store())
    V = len(FAMILIES)
    week, months, year = (V + int(time_bin(np.array([d]))[0]) for d in (3, 37, 400))
    assert t.sequence(0)[0].tolist() == [CLS, SEX, 5, 6, 10, week, 7, months, 8, 11]
    assert t.sequence(1)[0].tolist() == [CLS, SEX, 9, year, 5]
    assert t.sequence(2)[0].tolist() == [CLS, SEX]
    assert t.lengths().tolist() == [10, 5, 2] and t.vocab_size == V + len(TIME_BINS)
    assert t.family_ids.tolist() == FAMILIES.tolist() + [TIME_FAMILY] * len(TIME_BINS)
    table = time_token_table(t)
    assert table["gaps"].sum() == 3 and table.filter(table["token"] == "TIME/>1y")["gaps"].item() == 1
    assert time_token_table(t, np.array([0]))["gaps"].sum() == 2


def test_cuts_keep_the_past_and_never_start_with_a_gap():
    t = Timeline(fake_store())
    # strictly before day 40: the gap into day 40 goes with it
    tokens, ages, visits = t.sequence(0, before=dt.datetime(2020, 2, 10))
    assert tokens.tolist() == [CLS, SEX, 5, 6, 10, len(FAMILIES) + 1, 7]
    assert np.all(ages == 20_000.0) and np.all(visits == 0)  # the first record's age on every token
    assert t.last_time(0, dt.datetime(2020, 2, 10)) == T0 + 3 * DAY and t.last_time(2) is None
    # the most recent 3 of the records would start with the gap before day 40: it is dropped
    tokens, ages, _ = t.sequence(0, max_len=5)
    assert tokens.tolist() == [CLS, SEX, 8, 11] and np.all(ages == 20_040.0)
    tokens, ages, _ = t.sequence(1, before=dt.datetime(2019, 1, 1))
    assert tokens.tolist() == [CLS, SEX] and np.all(ages == 30_000.0)


def test_unigram_baseline_is_the_cross_entropy_of_token_frequencies():
    t = Timeline(fake_store())
    out = unigram_baseline(t, np.array([0, 1]), np.array([1]))
    # targets of patient 0 and 1 (all but each first token): counts + 1 over the non-special tokens
    fitted = np.concatenate([t.sequence(0)[0][1:], t.sequence(1)[0][1:]])
    counts = np.bincount(fitted, minlength=t.vocab_size) + 1.0
    counts[:4] = 0
    p = counts / counts.sum()
    targets = t.sequence(1)[0][1:]  # SEX, 9, >1y, 5
    assert out["total"] == pytest.approx(float(-np.log(p[targets]).mean()))
    assert out["diagnosis"] == pytest.approx(float(-np.log(p[[9, 5]]).mean()))
    assert out["time"] == pytest.approx(float(-np.log(p[targets[2]])))
    assert out["drug"] is None  # patient 1 has no drug
