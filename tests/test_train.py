"""Pretraining: packing, schedule, learning, bitwise resume, metrics files and 2-process DDP equivalence."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from conftest import small_world

from claimsutil import tokenize as tok
from claimsutil import train as tr
from claimsutil.batching import PackedRows
from claimsutil.config import ParamsError, PretrainConfig, build_section
from claimsutil.model import PAD_ID, ClaimsDecoder, ClaimsEncoder, ModelConfig, config_for
from claimsutil.timeline import TIME_BINS
from claimsutil.train.__main__ import main as train_cli

ROW_LEN = 128
CONFIG = tr.PretrainConfig(
    seed=3,
    tokens_per_step=2048,
    micro_tokens=512,  # 4 rows per micro-batch: ~4 micro-batches per step, so accumulation is exercised
    max_steps=30,
    lr=3e-3,
    min_lr=3e-4,
    warmup_steps=5,
    eval_every=10,
    eval_tokens=2048,
    checkpoint_every=1000,
    num_threads=1,
    device="cpu",  # bitwise comparisons hold on CPU (CUDA's scatter-adds are not deterministic)
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    world = small_world(tmp_path_factory.mktemp("train"), patients=600, seed=1)
    splits, vocab_size = world["splits"], world["vocab_size"]
    store_dir, splits_path = world["tokens"], world["splits_file"]
    return {
        "dir": store_dir,
        "splits": splits_path,
        "train": splits.filter(pl.col("split") == "train")["subject_id"].to_numpy(),
        "val": splits.filter(pl.col("split") == "validation")["subject_id"].to_numpy(),
        "model": config_for("demo", "xs", vocab_size=vocab_size, max_len=ROW_LEN),
        # the decoder's vocabulary adds the time tokens
        "model_next": config_for("demo", "xs", vocab_size=vocab_size + len(TIME_BINS), max_len=ROW_LEN),
    }


def run(store: dict, out: Path, config: tr.PretrainConfig = CONFIG, **kwargs) -> dict:
    model = store["model_next"] if config.objective == "next" else store["model"]
    return tr.pretrain(store["dir"], store["train"], model, config, out, store["val"], progress=False, **kwargs)


def test_packing_whole_patients_once_per_epoch_little_padding(store):
    s = tok.TokenStore(store["dir"])
    idx = np.searchsorted(s.subjects, np.sort(store["train"]))
    stream = PackedRows(s, idx, ROW_LEN, seed=0)
    for epoch in (0, 1):
        rows = stream.epoch_rows(epoch)
        placed = np.concatenate([np.asarray(r) for r in rows])
        assert np.array_equal(np.sort(placed), np.arange(len(idx)))  # every patient exactly once
        fill = np.array([stream.lengths[r].sum() for r in rows])
        assert fill.max() <= ROW_LEN
        assert 1 - fill.sum() / (len(rows) * ROW_LEN) < 0.10  # padding fraction
    assert stream.epoch_rows(0) != stream.epoch_rows(1)  # a new permutation each epoch...
    assert stream.epoch_rows(0) == PackedRows(s, idx, ROW_LEN, seed=0).epoch_rows(0)  # ...fixed by the seed

    rows = stream.epoch_rows(0)[:6]
    b = stream.tensors(rows)
    for r, row in enumerate(rows):  # each segment is one patient's whole (cut) sequence, in order
        for k, p in enumerate(row):
            tokens, ages, _ = s.sequence(int(idx[p]), max_len=ROW_LEN)
            seg = b["segments"][r] == k
            assert torch.equal(b["tokens"][r][seg], torch.from_numpy(tokens.astype(np.int64)))
            torch.testing.assert_close(b["ages"][r][seg], torch.from_numpy(ages), rtol=0, atol=0, equal_nan=True)
        assert (b["tokens"][r][b["segments"][r] == len(row)] == PAD_ID).all()

    steps, position, seen = [], (0, 0), 0
    while position[0] == 0:
        step_rows, position = stream.next_step(position, 2048)
        assert stream.lengths[np.concatenate(step_rows)].sum() >= 2048
        steps.append(step_rows)
        seen += len(step_rows)
    assert seen >= len(stream.epoch_rows(0))  # the epoch boundary is crossed without losing rows


def test_rows_of_several_widths_hold_every_patient_once_within_their_width(store):
    """width_step packs short patients into short rows: every patient once, each row no fuller than its width,
    widths multiples of the step, and grouping by width loses no row."""
    s = tok.TokenStore(store["dir"])
    idx = np.searchsorted(s.subjects, np.sort(store["train"]))
    stream = PackedRows(s, idx, ROW_LEN, seed=0, width_step=32)
    rows = stream.epoch_rows(0)
    placed = np.concatenate([np.asarray(r) for r in rows])
    assert np.array_equal(np.sort(placed), np.arange(len(idx)))
    widths = np.array([stream.width(r) for r in rows])
    fill = np.array([stream.lengths[r].sum() for r in rows])
    assert (fill <= widths).all() and (widths % 32 == 0).all() and set(widths) == {32, 64, 96, 128}
    groups = stream.groups(rows)
    assert [w for w, _ in groups] == sorted({int(w) for w in widths})
    assert sorted(i for _, members in groups for i in members) == list(range(len(rows)))
    # Fewer slots to attend over than one width for all, with little padding.
    assert (widths * fill).sum() < 0.9 * ROW_LEN * fill.sum() and 1 - fill.sum() / widths.sum() < 0.10
    with pytest.raises(ParamsError, match="width_step"):
        tr.PretrainConfig(width_step=-1)


def test_schedule_warmup_then_cosine_to_min_lr():
    c = replace(CONFIG, max_steps=100, warmup_steps=10, lr=1e-3, min_lr=1e-4)
    lrs = [tr.learning_rate(s, c) for s in range(c.max_steps)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert np.all(np.diff(lrs[:10]) > 0) and np.all(np.diff(lrs[9:]) <= 0)
    assert lrs[-1] == pytest.approx(1e-4)
    mid = 10 + (99 - 10) / 2
    assert tr.learning_rate(int(mid), c) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 44 / 89)) * 9e-4)


@pytest.mark.parametrize("objective", ["masked", "next"])
def test_loss_decreases_and_outputs_are_consistent(store, tmp_path, objective):
    m = run(store, tmp_path, replace(CONFIG, objective=objective), resume=False)
    with open(tmp_path / "loss_curve.csv", newline="") as fh:
        curve = list(csv.DictReader(fh))
    train = [float(r["train_loss"]) for r in curve]
    assert len(curve) == CONFIG.max_steps
    assert np.mean(train[-5:]) < np.mean(train[:5]) - 0.5
    val = [float(r["val_loss_total"]) for r in curve if r["val_loss_total"]]
    assert len(val) == 3 and val[-1] < val[0]

    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    for key in ("parameters", "parameters_non_embedding", "tokens_seen", "training_flops", "wall_time_s",
                "tokens_per_s", "padding_fraction", "steps", "world_size", "final_val_loss"):  # fmt: skip
        assert key in m, key
    assert m["steps"] == CONFIG.max_steps and m["world_size"] == 1
    assert m["parameters"] > m["parameters_non_embedding"] > 0
    # Each step takes whole rows until it has tokens_per_step real tokens: at most one row's worth over.
    assert (
        CONFIG.max_steps * CONFIG.tokens_per_step
        <= m["tokens_seen"]
        < CONFIG.max_steps * (CONFIG.tokens_per_step + ROW_LEN)
    )
    assert 0 <= m["padding_fraction"] < 0.10
    assert m["tokens_processed"] * (1 - m["padding_fraction"]) == pytest.approx(m["tokens_seen"])
    assert m["training_flops"] >= 6 * m["parameters_non_embedding"] * m["tokens_seen"]
    families = {"masked": {"diagnosis", "drug", "age"}, "next": {"diagnosis", "drug", "time", "other"}}[objective]
    assert set(m["final_val_loss"]) == families | {"total"} and m["objective"] == objective
    assert m["final_val_loss"]["total"] == pytest.approx(val[-1])
    s = tok.TokenStore(store["dir"])
    no_age = set(s.subjects[tr.patients_without_age(s)].tolist())  # counted
    assert m["patients_without_age"] == len(no_age & set(store["train"]) | no_age & set(store["val"]))
    assert m["patients_pretrain"] == len(set(store["train"]))  # counted, not dropped
    model = tr.load_pretrained(tmp_path / "model.pt")
    assert type(model) is {"masked": ClaimsEncoder, "next": ClaimsDecoder}[objective]
    assert model.get_num_params(non_embedding=False) == m["parameters"]


@pytest.mark.parametrize("objective", ["masked", "next"])
def test_resume_is_bitwise_identical(store, tmp_path, objective):
    c = replace(CONFIG, max_steps=8, warmup_steps=2, eval_every=3, objective=objective)
    straight = run(store, tmp_path / "straight", c)
    first = run(store, tmp_path / "resumed", c, stop_after=4)
    assert first["stopped"] and not (tmp_path / "resumed" / "model.pt").exists()
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["step"] == 4
    resumed = run(store, tmp_path / "resumed", c)
    assert straight["resumed_from_step"] == 0 and resumed["resumed_from_step"] == 4
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "straight" / "loss_curve.csv").read_text() == (
        tmp_path / "resumed" / "loss_curve.csv"
    ).read_text()
    for key in ("tokens_seen", "tokens_processed", "padding_fraction", "final_val_loss", "final_train_loss"):
        assert straight[key] == resumed[key], key


@pytest.mark.parametrize(("width_step", "objective"), [(0, "masked"), (32, "masked"), (32, "next")])
def test_ddp_two_processes_match_one(store, tmp_path, width_step, objective):
    """Two gloo processes, each half of every step's rows, against one process doing all of them. Same rows,
    same masks (seeded by step, not rank), same global loss normalisation, so only the order of the floating
    point sums differs (each rank accumulates its micro-batches, then the all-reduce adds the two halves):
    ~1e-7 relative per step, which Adam's normalisation can lift to ~1e-6 in the weights after a few steps.
    Tolerance: 1e-4 absolute on weights (~0.02 scale) and 1e-4 relative on losses."""
    args = ["--store", str(store["dir"]), "--splits", str(store["splits"]), "--profile", "demo", "--scale", "xs",
            "--max-len", str(ROW_LEN), "--max-steps", "4", "--warmup-steps", "2", "--tokens-per-step", "2048",
            "--micro-tokens", "512", "--lr", "3e-3", "--eval-every", "2", "--eval-tokens", "1024",
            "--num-threads", "1", "--seed", "5", "--device", "cpu", "--no-progress",
            "--width-step", str(width_step), "--objective", objective]  # fmt: skip
    assert train_cli([*args, "--out", str(tmp_path / "one")]) == 0
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "claimsutil.train",
    ]
    done = subprocess.run([*cmd, *args, "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    double = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert double["world_size"] == 2 and single["world_size"] == 1
    assert single["objective"] == double["objective"] == objective
    assert double["tokens_seen"] == single["tokens_seen"]
    assert double["tokens_processed"] == single["tokens_processed"]
    assert double["final_train_loss"] == pytest.approx(single["final_train_loss"], rel=1e-4)
    for f, v in single["final_val_loss"].items():
        assert double["final_val_loss"][f] == pytest.approx(v, rel=1e-4), f
    a = torch.load(tmp_path / "one" / "model.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "two" / "model.pt", weights_only=False)["model"]
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    print(f"DDP vs single: max |weight difference| = {worst:.2e}")
    assert worst < 1e-4


def test_bad_inputs_are_named(store, tmp_path):
    with pytest.raises(KeyError, match="not in the token store"):
        tr.pretrain(store["dir"], [-1, *store["train"]], store["model"], CONFIG, tmp_path, progress=False)
    with pytest.raises(ValueError, match="overlap"):
        tr.pretrain(store["dir"], store["train"], store["model"], CONFIG, tmp_path, store["train"][:5], progress=False)
    c = replace(CONFIG, max_steps=2, warmup_steps=1)
    run(store, tmp_path / "a", c, stop_after=1)
    with pytest.raises(ValueError, match="another model or pretraining config"):
        run(store, tmp_path / "a", replace(c, lr=1e-2))


def test_token_rule_gives_each_scale_tokens_by_its_size_within_floor_and_cap():
    rule = PretrainConfig(max_steps=0, tokens_per_parameter=20, min_tokens=1_000_000, max_tokens=8_000_000,
                          tokens_per_step=8192)  # fmt: skip
    assert rule.steps_for(100_000) == math.ceil(2_000_000 / 8192)  # 20 x N
    assert rule.steps_for(10_000) == math.ceil(1_000_000 / 8192)  # the floor
    assert rule.steps_for(5_000_000) == math.ceil(8_000_000 / 8192)  # the cap
    assert replace(rule, max_steps=7).steps_for(100_000) == 7  # a fixed max_steps wins
    model = ModelConfig(vocab_size=50, max_len=32, n_layer=2, n_head=2, n_embd=64)
    n = ClaimsEncoder(model, torch.zeros(50, dtype=torch.long)).get_num_params()
    assert tr.with_token_budget(rule, model).max_steps == rule.steps_for(n) == math.ceil(20 * n / 8192)
    with pytest.raises(ParamsError, match="max_steps = -1 must be >= 0"):
        build_section(PretrainConfig, "pretrain", {"max_steps": -1})
    with pytest.raises(ParamsError, match="max_tokens = 5 must be >= min_tokens"):
        build_section(PretrainConfig, "pretrain", {"max_steps": 0, "max_tokens": 5})
    assert build_section(PretrainConfig, "pretrain", {"bf16": "auto"}).bf16 == "auto"
    assert build_section(PretrainConfig, "pretrain", {"bf16": True}).bf16 is True
    with pytest.raises(ParamsError, match=r"bf16 = 'fast' must be a boolean \(true or false\) or one of 'auto'$"):
        build_section(PretrainConfig, "pretrain", {"bf16": "fast"})
    # The command line (what torchrun's processes are given) reads every value back: true, false and auto.
    from claimsutil.train.__main__ import _parser, config_from_args

    base = ["--store", "s", "--splits", "p", "--out", "o", "--scale", "xs"]
    for value in (True, False, "auto"):
        args = _parser().parse_args(base + tr.config_options(replace(CONFIG, bf16=value)))
        assert config_from_args(args) == replace(CONFIG, bf16=value)


def test_forked_processes_are_torchrun_bit_for_bit(store, tmp_path):
    """On CPU the notebook forks its DDP processes instead of starting torchrun (no second Python and torch
    import per process); the computation is the same, so the weights are the same to the bit."""
    c = replace(CONFIG, max_steps=3, warmup_steps=1, eval_every=2, processes=2, objective="next", seed=5)
    model = store["model_next"]
    forked = tr.run_pretraining(store["dir"], store["splits"], tmp_path / "forked", "xs", model, c, progress=False)
    launched = tr.pretrain_processes(store["dir"], store["splits"], tmp_path / "torchrun", "xs", ROW_LEN, c)
    assert forked["world_size"] == launched["world_size"] == 2
    assert forked["final_val_loss"] == launched["final_val_loss"]
    a = torch.load(tmp_path / "forked" / "model.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "torchrun" / "model.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
