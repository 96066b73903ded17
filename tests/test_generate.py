"""Zero-shot prediction: the simulated sample and its weights, outcome codes, determinism across workers, the
horizon, and the plausibility measures on planted futures."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch
from conftest import small_world

from claimsutil import generate as g
from claimsutil import tokenize as tok
from claimsutil.config import TaskSpec, ZeroShotConfig
from claimsutil.model import PAD_ID, ClaimsDecoder, config_for
from claimsutil.timeline import TIME_BINS, Timeline

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small synthetic world, its token store and timelines, and an untrained decoder saved as model.pt."""
    built = small_world(tmp_path_factory.mktemp("zeroshot"), patients=400, seed=3)
    out = built["meds"]
    timeline = Timeline(tok.TokenStore(built["tokens"]))
    torch.manual_seed(0)
    cfg = config_for("demo", "xs", vocab_size=timeline.vocab_size, max_len=128)
    model = ClaimsDecoder(cfg, torch.as_tensor(timeline.family_ids))
    path = out.with_name("model.pt")
    torch.save({"model": model.state_dict(), "model_config": cfg.__dict__, "objective": "next"}, path)
    # prediction times: a year after each of 40 patients' first record
    rows = []
    for i in range(40):
        t = timeline.times[timeline.offsets[i] : timeline.offsets[i + 1]]
        t = t[t != tok.TIME_STATIC]
        if t.size:
            rows.append((int(timeline.store.subjects[i]), int(t[0]) + 365 * tok.US_PER_DAY, i % 3 == 0))
    sample = pl.DataFrame({"subject_id": [r[0] for r in rows], "prediction_time": [r[1] for r in rows],
                           "boolean_value": [r[2] for r in rows], "weight": [1.0] * len(rows)},
                          schema_overrides={"prediction_time": pl.Datetime("us")})  # fmt: skip
    return {"timeline": timeline, "model": path, "sample": sample}


def test_the_simulated_sample_stands_for_the_evaluation_sample():
    ev = pl.DataFrame({"subject_id": range(100), "prediction_time": [dt.datetime(2020, 1, 1)] * 100,
                       "boolean_value": [i < 10 for i in range(100)],
                       "weight": [1.0] * 10 + [4.5] * 90})  # fmt: skip
    config = ZeroShotConfig(positives=4, negatives=30)
    s = g.zero_shot_sample(ev, config)
    assert s["boolean_value"].sum() == 4 and (~s["boolean_value"]).sum() == 30
    for label in (True, False):  # each class keeps its weighted size
        assert s.filter(pl.col("boolean_value") == label)["weight"].sum() == pytest.approx(
            ev.filter(pl.col("boolean_value") == label)["weight"].sum())  # fmt: skip
    assert s.equals(g.zero_shot_sample(ev, config))  # seeded
    assert g.zero_shot_sample(ev, ZeroShotConfig()).equals(ev.sort("subject_id", "prediction_time"))  # 0: all


def test_outcome_codes_count_suspected_diagnoses_as_the_task_does():
    tokens = ["[PAD]", "ICD10/I10", "ICD10/I10//suspected", "ICD10/I11.9", "YJ/2171022F1", "TIME/1-2w"]
    spec = TaskSpec(name="t", outcome=("ICD10/I10", "YJ/2171022"))
    assert g.outcome_mask(tokens, spec).tolist() == [False, True, False, False, True, False]
    assert g.outcome_mask(tokens, replace(spec, suspected="include")).tolist() == [
        False,
        True,
        True,
        False,
        True,
        False,
    ]


def test_same_seed_same_futures_whatever_the_workers_and_never_past_the_horizon(world):
    config = ZeroShotConfig(futures=4, max_new=24, batch_futures=32, workers=1)
    one = g.simulate(world["model"], world["timeline"], world["sample"], 60, config)
    two = g.simulate(world["model"], world["timeline"], world["sample"], 60, replace(config, workers=2))
    assert np.array_equal(one.tokens, two.tokens)
    assert one.tokens.shape == (world["sample"].height, 4, 24)
    other = g.simulate(world["model"], world["timeline"], world["sample"], 60, replace(config, seed=1))
    assert not np.array_equal(one.tokens, other.tokens)
    # every record of a future is dated before its limit; only the time token that reaches it is past it
    real = one.tokens != PAD_ID
    assert np.array_equal(one.in_horizon(), real)
    ends = one.advance[one.tokens].sum(axis=2)
    stopped = real.sum(axis=2) < 24
    assert (ends[stopped] >= np.repeat(one.limit[:, None], 4, axis=1)[stopped]).all()
    assert ((one.offset >= 0) & (one.limit == one.offset + 60)).all()


def test_outcome_share_and_plausibility_on_planted_futures(world):
    timeline = world["timeline"]
    names = timeline.tokens_list
    V = timeline.vocab_size
    week, year = V - len(TIME_BINS) + 2, V - len(TIME_BINS) + 8  # TIME/1-2w (10.5 days), TIME/>1y
    code, drug = names.index("ICD10/I10"), next(i for i, t in enumerate(names) if t.startswith("YJ/"))
    prostate = names.index("ICD10/N40") if "ICD10/N40" in names else None
    tokens = np.zeros((2, 2, 6), dtype=np.int32)
    tokens[0, 0, :4] = [code, week, drug, year]  # the code before the horizon
    tokens[0, 1, :3] = [week, week, year]  # no code
    tokens[1, 0, :3] = [week, code, year]
    tokens[1, 1, :2] = [year, code]  # the code after the crossing time token: the future ended before it
    tokens[1, 1, 1] = PAD_ID
    sample = pl.DataFrame({"subject_id": [1, 2], "prediction_time": [dt.datetime(2020, 1, 1)] * 2,
                           "boolean_value": [True, False], "weight": [1.0, 2.0]})  # fmt: skip
    start = np.full(2, tok._as_us(dt.datetime(2020, 1, 1)))
    f = g.Futures(sample, tokens, start, np.zeros(2), np.full(2, 365.0), np.full(2, 50 * 365.25),
                  np.array([False, True]), timeline.advance_days(), 1.0)  # fmt: skip
    mask = np.zeros(V, dtype=bool)
    mask[code] = True
    assert f.outcome_share(mask).tolist() == [0.5, 0.5] and f.outcome_share(mask, 1).tolist() == [1.0, 1.0]
    assert f.generated_tokens() == 4 + 3 + 3 + 1 and f.reached_horizon() == 1.0
    # a drug launched after the future's dates, a death on day 5: planted impossible records
    launches = {drug: tok._as_us(dt.datetime(2021, 1, 1))}
    deaths = {2: tok._as_us(dt.datetime(2020, 1, 5, 13))}
    real = [(np.array([code]), np.array([start[0]])), (np.array([], dtype=np.int64), np.array([], dtype=np.int64))]
    table = g.impossible_events(timeline, f, real, deaths, launches)
    rows = {r["event"]: r for r in table.iter_rows(named=True)}
    assert rows["drug before its launch"]["generated_impossible"] == 1
    # patient 2's records: the code on day 10.5 of future 0 is after its death (day 4); none else
    assert (
        rows["record after death"]["generated_records"] == 1 and rows["record after death"]["generated_impossible"] == 1
    )
    assert rows["prostate code in a woman"]["generated_impossible"] == 0
    if prostate is not None:
        f.tokens[1, 0, 1] = prostate
        again = {r["event"]: r for r in g.impossible_events(timeline, f, real, deaths, launches).iter_rows(named=True)}
        assert again["prostate code in a woman"]["generated_impossible"] == 1
    freq, rmsle = g.code_frequencies(timeline, f, real)
    assert rmsle is not None and freq.filter(pl.col("code") == "ICD10/I10")["real_per_1000"].item() == pytest.approx(
        1000 / 3
    )
