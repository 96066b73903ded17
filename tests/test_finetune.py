"""Fine-tuning: samples, packed classification, learning, determinism across worker counts, no leakage."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch

from claimsutil import cohort as co
from claimsutil import finetune as ft
from claimsutil import metrics
from claimsutil import splits as sp
from claimsutil import tokenize as tok
from claimsutil import train as tr
from claimsutil.config import CohortParams, EvaluationParams, FinetuneConfig, SynthParams, build_section
from claimsutil.model import ClaimsEncoder, EncoderClassifier, config_for, uses_bf16
from claimsutil.synth import generate

ROW_LEN = 128
PREDICTION_TIME = dt.datetime(2021, 1, 1)
CONFIG = ft.FinetuneConfig(batch_patients=16, lr=3e-3, max_epochs=4, patience=2, max_len=ROW_LEN, workers=1,
                           device="cpu")  # fmt: skip
EVALUATION = EvaluationParams(n_resamples=50)


def _labels_frame(subjects: np.ndarray, y: np.ndarray) -> pl.DataFrame:
    return pl.DataFrame({"subject_id": subjects, "prediction_time": [PREDICTION_TIME] * len(subjects),
                         "boolean_value": y.astype(bool)}).cast({"prediction_time": pl.Datetime("us")})  # fmt: skip


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A token store, a pretrained xs encoder and a cohort folder for a task with a planted signal: the label
    is whether the patient's history before the prediction time holds the most common drug code."""
    root = tmp_path_factory.mktemp("finetune")
    meds = root / "meds"
    generate(SynthParams(patients=900, seed=5, block_size=300, shard_size=900, workers=1), meds,
             root / "meds_truth", progress=False)  # fmt: skip
    splits = sp.build_splits(meds, CohortParams(held_out_hospitals=0))[0]
    pre_ids = splits.filter(pl.col("split").is_in(["train", "validation"]))["subject_id"].to_numpy()
    vocab = tok.build_vocabulary(meds, pre_ids, tok.TokenizeConfig())
    tok.build_store(meds, vocab, root / "tokens", tok.TokenizeConfig(max_len=ROW_LEN))
    store = tok.TokenStore(root / "tokens")
    subjects = store.subjects
    probe = _labels_frame(subjects, np.zeros(len(subjects)))
    seqs = store.sequences_for(probe, max_len=ROW_LEN)
    drugs = np.flatnonzero(store.vocab.family_ids == 2)
    counts = [sum(int(d in s[0]) for s in seqs) for d in drugs]
    code = int(drugs[int(np.argmax(counts))])
    y = np.array([code in s[0] for s in seqs])
    labels = _labels_frame(subjects, y)
    cohort_dir = root / "cohort"
    for sub in ("labels", "budgets", "evaluation", "validation"):
        (cohort_dir / sub).mkdir(parents=True)
    labels.write_parquet(cohort_dir / "labels" / "planted.parquet")
    split_labels = labels.join(splits, on="subject_id")
    co.evaluation_sample(split_labels.filter(pl.col("split") == "test"), 40, 3, "planted").write_parquet(
        cohort_dir / "evaluation" / "planted.parquet"
    )
    co.early_stopping_sample(split_labels.filter(pl.col("split") == "validation"), 60, 3, "planted").write_parquet(
        cohort_dir / "validation" / "planted.parquet"
    )
    splits.write_parquet(cohort_dir / "splits.parquet")
    params = CohortParams(budgets=(20, 60), budget_seeds=1, seed=3)
    co.sample_budgets(labels, splits, "planted", params).write_parquet(cohort_dir / "budgets" / "planted.parquet")
    model_cfg = config_for("demo", "xs", vocab_size=len(vocab.tokens), max_len=ROW_LEN)
    pre = tr.PretrainConfig(seed=1, tokens_per_step=2048, micro_tokens=1024, max_steps=4, warmup_steps=1,
                            eval_every=4, eval_tokens=1024, checkpoint_every=100, device="cpu")  # fmt: skip
    train_ids = splits.filter(pl.col("split") == "train")["subject_id"].to_numpy()
    tr.pretrain(root / "tokens", train_ids, model_cfg, pre, root / "model", progress=False)
    return {"root": root, "store": root / "tokens", "cohort": cohort_dir, "model": root / "model" / "model.pt",
            "labels": labels, "splits": splits, "prevalence": float(y.mean())}  # fmt: skip


def test_evaluation_sample_keeps_every_positive_and_weights_negatives_back():
    rng = np.random.default_rng(0)
    test = _labels_frame(np.arange(1000), rng.random(1000) < 0.05)
    sample = co.evaluation_sample(test, 100, seed=1, task="t")
    positives = int(test["boolean_value"].sum())
    assert sample.filter(pl.col("boolean_value")).height == positives
    assert sample.filter(~pl.col("boolean_value")).height == 100
    assert sample["weight"].sum() == pytest.approx(1000)  # stands for the whole test split
    assert sample.filter(pl.col("boolean_value"))["weight"].unique().to_list() == [1.0]
    assert sample.equals(co.evaluation_sample(test, 100, seed=1, task="t"))
    assert not sample.equals(co.evaluation_sample(test, 100, seed=2, task="t"))
    everyone = co.evaluation_sample(test, None, seed=1, task="t")
    assert everyone.height == 1000 and everyone["weight"].unique().to_list() == [1.0]


def test_weighted_case_cohort_auprc_estimates_the_full_test_set():
    rng = np.random.default_rng(3)
    n = 40000
    y = rng.random(n) < 0.03
    p = np.clip(0.03 + 0.05 * y + rng.normal(0, 0.03, n), 0, 1)
    test = _labels_frame(np.arange(n), y)
    full = metrics.score(y, p)
    estimates = []
    for seed in range(5):
        sample = co.evaluation_sample(test, 3000, seed=seed, task="t")
        idx = sample["subject_id"].to_numpy()
        estimates.append(metrics.score(y[idx], p[idx], sample["weight"].to_numpy()))
    assert np.mean([e["auprc"] for e in estimates]) == pytest.approx(full["auprc"], rel=0.05)
    assert np.mean([e["prevalence"] for e in estimates]) == pytest.approx(full["prevalence"], rel=1e-9)
    # Unweighted, the enriched sample would overstate AUPRC badly.
    unweighted = metrics.score(y[idx], p[idx])["auprc"]
    assert unweighted > 1.5 * full["auprc"]


def test_early_stopping_sample_is_balanced_and_fixed():
    val = _labels_frame(np.arange(500), np.arange(500) % 10 == 0)  # 50 positives
    sample = co.early_stopping_sample(val, 60, seed=1, task="t")
    assert sample.height == 60 and int(sample["boolean_value"].sum()) == 30
    few = co.early_stopping_sample(val, 200, seed=1, task="t")
    assert int(few["boolean_value"].sum()) == 50 and few.height == 200  # all positives, negatives fill up
    with pytest.raises(ValueError, match="positives and negatives"):
        co.early_stopping_sample(_labels_frame(np.arange(5), np.zeros(5)), 4, seed=1, task="t")


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_packed_rows_give_each_patient_its_own_logit(pooling, study):
    store = tok.TokenStore(study["store"])
    seqs = store.sequences_for(study["labels"].head(40), max_len=ROW_LEN)
    family = torch.as_tensor(store.vocab.family_ids)
    torch.manual_seed(0)
    clf = EncoderClassifier(ClaimsEncoder(config_for("demo", "s", len(family), ROW_LEN), family), 0.0, pooling).eval()
    packed = ft.predict_proba(clf, seqs, ROW_LEN, eval_tokens=10**6)  # several patients per row
    alone = np.array([ft.predict_proba(clf, [s], ROW_LEN, eval_tokens=1)[0] for s in seqs])  # one per row
    np.testing.assert_allclose(packed, alone, rtol=1e-5, atol=1e-6)
    batch, cls_patient = ft.pack_batch(seqs, ROW_LEN)
    assert sorted(cls_patient.tolist()) == list(range(len(seqs)))
    assert batch["tokens"].shape[0] < len(seqs)  # rows really hold several patients


def test_finetune_scale_learns_and_is_the_same_with_workers(study, tmp_path):
    one = ft.finetune_scale(study["store"], study["cohort"], study["model"], ["planted"], CONFIG, tmp_path / "one",
                            EVALUATION, progress=False)  # fmt: skip
    two = ft.finetune_scale(study["store"], study["cohort"], study["model"], ["planted"],
                            replace(CONFIG, workers=2), tmp_path / "two", EVALUATION, progress=False)  # fmt: skip
    assert two["planted"]["results"] == one["planted"]["results"]
    files = sorted(p.name for p in (tmp_path / "one" / "planted").glob("*.parquet"))
    assert files == sorted(f"{i}_budget-{b}_seed-0.parquet" for i in ft.INITS for b in (20, 60))
    for name in files:
        a, b = (
            pl.read_parquet(tmp_path / "one" / "planted" / name),
            pl.read_parquet(tmp_path / "two" / "planted" / name),
        )
        assert a.equals(b), name  # bit for bit, whichever process ran it
    sample = co.read_sample(study["cohort"], "planted", "evaluation")
    assert pl.read_parquet(tmp_path / "one" / "planted" / files[0])["subject_id"].equals(sample["subject_id"])
    test = study["labels"].join(study["splits"].filter(pl.col("split") == "test"), on="subject_id")
    assert sample.filter(pl.col("boolean_value")).height == int(test["boolean_value"].sum())
    assert sample["weight"].sum() == pytest.approx(test.height)
    result = one["planted"]["results"]
    assert set(result) == set(ft.INITS) and set(result["scratch"]) == {"20", "60"}
    assert result["pretrained"]["60"]["weighted"] is True
    # The planted code is in the input: with 60 labels the model finds it well above the prevalence.
    best = max(result[i]["60"]["auprc"]["point"] for i in ft.INITS)
    assert best > study["prevalence"] + 0.2
    assert max(result[i]["60"]["auroc"]["point"] for i in ft.INITS) > 0.75
    runs = one["planted"]["runs"]
    assert len(runs) == 4 and all(1 <= r["best_epoch"] <= r["epochs"] <= CONFIG.max_epochs for r in runs)
    summary = ft.metrics_summary(one, 1.0)
    assert summary["runs"] == 4 and set(summary["planted"]["scratch"]["20"]) == {"auprc", "auroc"}
    assert summary["precision"] == ["fp32"]  # CONFIG: bf16 false


def test_bf16_fine_tuning_learns_repeats_and_says_so(study, tmp_path, monkeypatch):
    """bf16 autocast (forced: this CPU may lack native bf16) learns the planted code as fp32 does, gives the same
    numbers twice, and the runs record it; "auto" on a CPU without native bf16 stays fp32."""
    config = replace(CONFIG, bf16=True)
    runs = [ft.finetune_scale(study["store"], study["cohort"], study["model"], ["planted"], config,
                              tmp_path / name, EVALUATION, progress=False) for name in ("a", "b")]  # fmt: skip
    assert runs[0]["planted"]["results"] == runs[1]["planted"]["results"]
    result = runs[0]["planted"]["results"]
    assert max(result[i]["60"]["auprc"]["point"] for i in ft.INITS) > study["prevalence"] + 0.2
    assert ft.metrics_summary(runs[0], 1.0)["precision"] == ["bf16"]
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not uses_bf16(torch.device("cpu"), "auto") and uses_bf16(torch.device("cpu"), True)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert uses_bf16(torch.device("cpu"), "auto") and not uses_bf16(torch.device("cpu"), False)


def test_pretrained_runs_start_from_the_pretrained_weights(study):
    obj = torch.load(study["model"], weights_only=False)
    from claimsutil.model import ModelConfig

    cfg = ModelConfig(**obj["model_config"])
    pre = ft.build_classifier(cfg, obj["model"]["family"], obj["model"], CONFIG, seed=1)
    scratch = ft.build_classifier(cfg, obj["model"]["family"], None, CONFIG, seed=1)
    w = "h.0.attn.c_attn.weight"
    assert torch.equal(pre.encoder.state_dict()[w], obj["model"][w])
    assert not torch.equal(scratch.encoder.state_dict()[w], obj["model"][w])


def test_inputs_stop_before_the_prediction_time(study):
    store = tok.TokenStore(study["store"])
    data = ft.task_data(store, study["cohort"], "planted", CONFIG, ROW_LEN)
    cut = np.datetime64(PREDICTION_TIME, "us").astype(np.int64)
    ev = data["evaluation"]
    checked = 0
    for (tokens, _, _), sid in zip(data["test"], ev["subject_id"], strict=True):
        times = store.times(store.index_of(sid))
        assert len(tokens) == min(int((times < cut).sum()), ROW_LEN)  # the past only, the most recent max_len
        checked += int((times >= cut).any())
    assert checked > 0  # some test patients do have records after the prediction time, and none got in
    budgets = pl.read_parquet(study["cohort"] / "budgets" / "planted.parquet")
    assert not set(budgets["subject_id"]) & set(ev["subject_id"])  # labelled training patients are not scored
    assert not set(budgets["subject_id"]) & set(data["stopping"]["subject_id"])


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match="finetune.max_epochs"):
        FinetuneConfig(max_epochs=0)
    with pytest.raises(ValueError, match=r"cohort.test_negatives = 'all' must be an integer or null"):
        build_section(CohortParams, "cohort", {"test_negatives": "all"})
    assert build_section(CohortParams, "cohort", {"test_negatives": None}).test_negatives is None
