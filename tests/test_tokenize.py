"""Tokenization: vocabulary from pretraining patients only, the packed store, repeats, the cut, determinism."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from claimsutil import splits as sp
from claimsutil import tokenize as tok
from claimsutil.config import CohortParams, SynthParams
from claimsutil.meds import shard_paths
from claimsutil.synth import generate

T = dt.datetime(2020, 6, 1)
DAY = dt.timedelta(days=1)
US = dt.timedelta(microseconds=1)
ARRAYS = ("tokens", "ages", "times", "visits", "offsets", "subjects")


def write_shards(root: Path, shards: list[list[tuple]]) -> Path:
    """Rows (subject_id, time or None, code[, suspected]) -> a MEDS data folder, one file per shard."""
    (root / "data").mkdir(parents=True)
    for i, rows in enumerate(shards):
        rows = sorted(rows, key=lambda r: (r[0], r[1] is not None, r[1] or dt.datetime.min))
        pl.DataFrame(
            {
                "subject_id": [r[0] for r in rows],
                "time": [r[1] for r in rows],
                "code": [r[2] for r in rows],
                "numeric_value": [None] * len(rows),
                "diagnosis_certainty": ["suspected" if len(r) > 3 and r[3] else None for r in rows],
            },
            schema={
                "subject_id": pl.Int64,
                "time": pl.Datetime("us"),
                "code": pl.String,
                "numeric_value": pl.Float32,
                "diagnosis_certainty": pl.String,
            },
        ).write_parquet(root / "data" / f"{i}.parquet")
    return root


def month(k: int) -> dt.datetime:
    return dt.datetime(2019, 1, 1) + 30 * k * DAY


# Subjects 1 and 2 pretrain; subject 3 is a test patient with a code nobody else has.
RECORDS = [
    (1, None, "GENDER/F"),
    (1, None, "HOSPITAL/H07"),
    (1, dt.datetime(1960, 1, 1), "MEDS_BIRTH"),
    (1, month(0), "COVERAGE/START"),
    (1, month(1), "ICD10/I10"),
    (1, month(1), "YJ/2171022F1053"),
    (1, month(2), "ICD10/I10"),
    (1, month(2), "ICD10/E11.9", True),
    (1, month(3), "ICD10/I10"),
    (1, month(3), "ICD10/E11.9"),
    (1, month(4), "ICD10/J06.9"),  # a visit without I10: the next I10 starts a new episode
    (1, month(5), "ICD10/I10"),
    (1, month(5), "ICD10/I10"),  # a duplicate within a visit
    (1, T - US, "ICD10/K21.9"),
    (1, T, "ICD10/R51"),  # at the prediction time
    (1, T + DAY, "YJ/1149019F1480"),
    (1, T + 2 * DAY, "MEDS_DEATH"),
    (2, None, "GENDER/M"),
    (2, None, "HOSPITAL/H07"),
    (2, dt.datetime(1970, 1, 1), "MEDS_BIRTH"),
    (2, month(1), "ICD10/I10"),
    (2, month(2), "ICD10/R51"),
    (2, month(3), "ICD10/K21.9"),
    (2, month(3), "YJ/1149019F1480"),
    (2, month(4), "ICD10/J06.9"),
    (3, None, "GENDER/M"),
    (3, dt.datetime(1980, 1, 1), "MEDS_BIRTH"),
    (3, month(1), "ICD10/I10"),
    (3, month(2), "ONLY/TEST"),
    (4, None, "GENDER/F"),  # no birth, no events: [CLS] and static tokens, NaN ages
    (4, month(1), "COVERAGE/START"),
]
ONE = tok.TokenizeConfig(min_count=1, repeats="keep")


@pytest.fixture(scope="module")
def hand(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tok.TokenStore]:
    root = write_shards(tmp_path_factory.mktemp("hand"), [RECORDS])
    vocab = tok.build_vocabulary(root, [1, 2], ONE)
    tok.build_store(root, vocab, root / "tokens", ONE)
    return root, tok.TokenStore(root / "tokens")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pl.DataFrame]:
    out = tmp_path_factory.mktemp("synth") / "meds"
    params = SynthParams(patients=2000, seed=1, block_size=500, shard_size=1000, workers=1)
    generate(params, out, out.with_name("meds_truth"), progress=False)
    splits = sp.build_splits(out, CohortParams())[0]
    return out, splits


def pretrain_ids(splits: pl.DataFrame) -> np.ndarray:
    return splits.filter(pl.col("split").is_in(["train", "validation"]))["subject_id"].to_numpy()


def read_meds(root: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in shard_paths(root)], how="diagonal_relaxed")


def store_frame(store: tok.TokenStore) -> pl.DataFrame:
    """Every token of the store as (subject_id, token, time, visit, position)."""
    lengths = store.lengths()
    return pl.DataFrame(
        {
            "subject_id": np.repeat(store.subjects, lengths),
            "token": np.asarray(store.vocab.tokens, dtype=object)[np.asarray(store.tokens)].tolist(),
            "time_us": np.asarray(store.times_us),
            "visit": np.asarray(store.visits),
        }
    )


# --- vocabulary -------------------------------------------------------------------------------------------


def test_vocabulary_specials_families_and_json_round_trip(tmp_path: Path, hand) -> None:
    store = hand[1]
    vocab = store.vocab
    assert vocab.tokens[:4] == ("[PAD]", "[MASK]", "[CLS]", "[UNK]")
    assert (tok.PAD, tok.MASK, tok.CLS, tok.UNK) == (0, 1, 2, 3)
    family = dict(zip(vocab.tokens, vocab.families, strict=True))
    assert family["[CLS]"] == "special"
    assert family["ICD10/I10"] == family["ICD10/E11.9//suspected"] == "diagnosis"
    assert family["YJ/2171022F1053"] == "drug"
    assert family["GENDER/F"] == family["HOSPITAL/H07"] == "other"
    cases = {"ICD9/401.9": "diagnosis", "ATC/C08CA01": "drug", "RxNorm/197361": "drug", "HR": "other",
             "ADMISSION//CARDIAC": "other", "LAB/X//suspected": "diagnosis", "[MASK]": "special"}  # fmt: skip
    assert {code: tok.token_family(code) for code in cases} == cases
    assert vocab.family_ids.tolist() == [tok.FAMILIES.index(f) for f in vocab.families]
    # Not tokens: birth, death and coverage; sorted by family then token.
    assert not set(vocab.tokens) & {"MEDS_BIRTH", "MEDS_DEATH", "COVERAGE/START", "COVERAGE/END"}
    assert [tok.FAMILIES.index(f) for f in vocab.families] == sorted(tok.FAMILIES.index(f) for f in vocab.families)
    assert vocab.counts[vocab.id_of["ICD10/I10"]] == 6  # subject 1: 5 records, subject 2: 1; subject 3 never
    vocab.save(tmp_path / "v.json")
    assert tok.Vocabulary.load(tmp_path / "v.json") == vocab


def test_vocabulary_only_from_pretraining_patients(hand) -> None:
    _, store = hand
    assert "ONLY/TEST" not in store.vocab.id_of
    tokens, _, _ = store.sequence(store.index_of(3))
    assert store.vocab.decode(tokens) == ["[CLS]", "GENDER/M", "ICD10/I10", "[UNK]"]
    assert store.stats["unknown_tokens"] == 1 and store.stats["unknown_codes"] == {"ONLY/TEST": 1}
    assert store.stats["excluded_records"] == {"COVERAGE/START": 2, "MEDS_BIRTH": 3, "MEDS_DEATH": 1}


def test_patient_without_birth_or_events(hand) -> None:
    _, store = hand
    tokens, ages, visits = store.sequence(store.index_of(4), before=T, max_len=10)
    assert store.vocab.decode(tokens) == ["[CLS]", "GENDER/F"] and visits.tolist() == [0, 0]
    assert np.isnan(ages).all()
    assert store.stats["subjects_without_birth"] == 1 and store.stats["subjects_without_events"] == 1
    assert store.subjects.tolist() == [1, 2, 3, 4] and store.offsets.tolist()[-1] == len(store.tokens)


def test_vocabulary_counts_equal_pretraining_tokens_on_synthetic_data(synth, tmp_path: Path) -> None:
    root, splits = synth
    config = tok.TokenizeConfig(min_count=5)
    vocab = tok.build_vocabulary(root, pretrain_ids(splits), config)
    stats = tok.build_store(root, vocab, tmp_path / "tokens", config)
    store = tok.TokenStore(tmp_path / "tokens")
    assert len(store) == splits.height == stats.subjects  # every patient, any split
    frame = store_frame(store).join(splits, on="subject_id")
    pre = frame.filter(pl.col("split").is_in(["train", "validation"]))
    counts = dict(pre.group_by("token").len().iter_rows())
    assert all(counts[t] == n for t, n in zip(vocab.tokens[4:], vocab.counts[4:], strict=True))
    assert min(vocab.counts[4:]) >= 5
    # Codes seen only among test / held-out patients are [UNK] for them, and counted.
    # Among pretraining patients [UNK] stands only for the rare tokens; the other [UNK] are codes that only
    # test / held-out patients have (the held-out hospitals' HOSPITAL/ codes at least). All are counted.
    unknown = frame.filter(pl.col("token") == "[UNK]")
    assert unknown.height == stats.unknown_tokens
    assert pre.filter(pl.col("token") == "[UNK]").height == vocab.rare_token_count
    held_out = splits.filter(pl.col("split") == "held_out_hospital")["hospital"].unique()
    assert all(f"HOSPITAL/{h}" not in vocab.id_of and stats.unknown_codes[f"HOSPITAL/{h}"] > 0 for h in held_out)
    # Every record is accounted for: tokens = records - not-token records - repeats removed + one [CLS] each.
    excluded = sum(stats.excluded_records.values())
    assert stats.tokens == stats.records - excluded - stats.repeats_removed + stats.subjects


# --- the store ---------------------------------------------------------------------------------------------


def test_round_trip_decodes_to_the_meds_rows(synth, tmp_path: Path) -> None:
    root, _ = synth
    vocab = tok.build_vocabulary(root, read_meds(root)["subject_id"].unique(), ONE)
    tok.build_store(root, vocab, tmp_path / "tokens", ONE)
    store = tok.TokenStore(tmp_path / "tokens")
    got = store_frame(store).filter(pl.col("token") != "[CLS]")
    suffix = pl.when(pl.col("diagnosis_certainty") == "suspected").then(pl.lit("//suspected")).otherwise(pl.lit(""))
    want = (
        read_meds(root)
        .filter(~pl.col("code").is_in(tok.NOT_TOKENS))
        .select("subject_id", token=pl.col("code") + suffix, time_us=pl.col("time").dt.epoch("us"))
        .with_columns(pl.col("time_us").fill_null(tok.TIME_STATIC))
    )
    keys = ["subject_id", "time_us", "token"]
    assert got.select(keys).sort(keys).equals(want.select(keys).sort(keys))
    # Layout: [CLS] first, static tokens next, times non-decreasing, visits = distinct timestamps.
    for i in (0, 1, len(store) // 2, len(store) - 1):
        tokens, ages, visits = store.sequence(i)
        times = store.times(i)
        timed = times > tok.TIME_STATIC
        assert tokens[0] == tok.CLS and timed.tolist() == sorted(timed.tolist())  # static first
        assert np.all(np.diff(times[timed]) >= 0)
        assert np.all(visits[~timed] == 0)
        assert visits[timed].tolist() == (np.unique(times[timed], return_inverse=True)[1] + 1).tolist()
        assert np.all(ages[~timed] == ages[timed][0]) and np.all(np.diff(ages[timed]) >= 0)


def test_ages_in_days_from_birth(hand) -> None:
    _, store = hand
    tokens, ages, visits = store.sequence(store.index_of(2))
    assert store.vocab.decode(tokens)[:4] == ["[CLS]", "GENDER/M", "HOSPITAL/H07", "ICD10/I10"]
    first = (month(1) - dt.datetime(1970, 1, 1)) / DAY
    assert ages[:4].tolist() == [first] * 4
    assert ages[-1] == (month(4) - dt.datetime(1970, 1, 1)) / DAY
    assert visits.tolist() == [0, 0, 0, 1, 2, 3, 3, 4]


# --- repeats ---------------------------------------------------------------------------------------------


def test_first_per_episode_on_hand_built_timeline(tmp_path: Path) -> None:
    root = write_shards(tmp_path, [RECORDS])
    config = tok.TokenizeConfig(min_count=1, repeats="first_per_episode")
    tok.build_store(root, tok.build_vocabulary(root, [1, 2, 3], config), root / "tokens", config)
    store = tok.TokenStore(root / "tokens")
    tokens, _, visits = store.sequence(store.index_of(1))
    assert store.vocab.decode(tokens) == [
        "[CLS]", "GENDER/F", "HOSPITAL/H07",
        "ICD10/I10", "YJ/2171022F1053",  # month 1
        "ICD10/E11.9//suspected",  # month 2: I10 repeats
        "ICD10/E11.9",  # month 3: confirmed is another token than suspected
        "ICD10/J06.9",  # month 4
        "ICD10/I10",  # month 5: back after a gap; its duplicate dropped
        "ICD10/K21.9", "ICD10/R51", "YJ/1149019F1480",
    ]  # fmt: skip
    assert visits.tolist() == [0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8]
    assert store.stats["repeats_removed"] == 3
    with pytest.raises(ValueError, match="repeats"):
        tok.build_store(root, store.vocab, tmp_path / "other", ONE)


def _first_per_episode_by_hand(rows: list[tuple]) -> set[tuple]:
    """The repeats rule read literally: per subject, each visit's distinct tokens minus the previous visit's."""
    by_subject: dict[int, dict] = {}
    for subject, time, token in rows:
        by_subject.setdefault(subject, {}).setdefault(time, set()).add(token)
    kept = set()
    for subject, visits in by_subject.items():
        static = visits.pop(None, set())
        kept |= {(subject, None, token) for token in static}
        previous: set = set()
        for time in sorted(visits):
            kept |= {(subject, time, token) for token in visits[time] - previous}
            previous = visits[time]
    return kept


def test_first_per_episode_matches_the_rule_on_sorted_and_shuffled_shards(synth) -> None:
    root, _ = synth
    config = tok.TokenizeConfig(repeats="keep")
    events = tok._read_shard(tok.open_events(root), shard_paths(root)[0], config).events
    subjects = events["subject_id"].unique().sort()[:300]
    events = events.filter(pl.col("subject_id").is_in(subjects.implode()))
    expected = _first_per_episode_by_hand(events.rows())
    assert 0 < len(expected) < 0.6 * events.height  # the rule removes most records of a claims history
    for frame in (events, events.sample(fraction=1.0, shuffle=True, seed=3)):  # the sorted pass, then the fallback
        got = tok._first_per_episode(frame)
        assert got.height == len(expected) and set(got.rows()) == expected


def test_repeats_policies_on_synthetic_data(synth) -> None:
    root, _ = synth
    result = tok.compare_repeats(root)
    keep, first = result["keep"], result["first_per_episode"]
    assert first["pairs_lost"] == 0 and keep["pairs_lost"] == 0
    assert first["tokens"] < 0.5 * keep["tokens"] and first["removed_share"] > 0.5
    assert first["median"] < keep["median"] and first["p95"] < keep["p95"]
    assert tok.TokenizeConfig().repeats == "first_per_episode"
    assert len(shard_paths(root)) == 2
    one = tok.compare_repeats(root, max_shards=1)
    assert 0.3 * keep["tokens"] < one["keep"]["tokens"] < 0.7 * keep["tokens"]  # only the first of two shards
    assert one["first_per_episode"]["removed_share"] == pytest.approx(first["removed_share"], abs=0.05)


# --- reading -------------------------------------------------------------------------------------------------


def test_frequency_baseline(synth, tmp_path: Path) -> None:
    """Per family: the cross-entropy of the fit patients' code shares on the evaluation patients' tokens."""
    root, splits = synth
    config = tok.TokenizeConfig()
    vocab = tok.build_vocabulary(root, pretrain_ids(splits), config)
    tok.build_store(root, vocab, tmp_path / "tokens", config)
    store = tok.TokenStore(tmp_path / "tokens")
    fit = splits.filter(pl.col("split") == "train")["subject_id"].to_numpy()
    held = splits.filter(pl.col("split") == "validation")["subject_id"].to_numpy()
    baseline = tok.frequency_baseline(store, fit, held)
    frame = store_frame(store).with_columns(family=pl.col("token").map_elements(tok.token_family, pl.String))
    for family in ("diagnosis", "drug"):
        rows = frame.filter(pl.col("family") == family)
        counts = rows.filter(pl.col("subject_id").is_in(fit.tolist()))["token"].value_counts()
        p = dict(zip(counts["token"], counts["count"] / counts["count"].sum(), strict=True))
        tokens = rows.filter(pl.col("subject_id").is_in(held.tolist()))["token"].to_list()
        assert all(t in p for t in tokens)  # every validation token has a training count here
        expected = -np.mean([np.log(p[t]) for t in tokens])
        assert baseline[family]["cross_entropy"] == pytest.approx(expected)
        assert baseline[family]["tokens"] == len(tokens) > 100
    assert 0 < baseline["drug"]["cross_entropy"] < np.log(baseline["drug"]["codes"])  # better than uniform
    tok.write_frequency_baseline(baseline, tmp_path / "tokens")
    summary = tok.store_summary(tmp_path / "tokens")
    assert summary["baseline"] == baseline and summary["lengths"]["max_len"] == config.max_len
    assert tok.store_summary(tmp_path / "nothing") is None


def test_cut_at_prediction_time(hand) -> None:
    _, store = hand
    i = store.index_of(1)
    vocab = store.vocab
    for before in (T, np.datetime64(T, "us"), (T - dt.datetime(1970, 1, 1)) // US):
        tokens, _, _ = store.sequence(i, before=before)
        decoded = vocab.decode(tokens)
        assert decoded[-1] == "ICD10/K21.9"  # one microsecond before: present
        assert "ICD10/R51" not in decoded and "YJ/1149019F1480" not in decoded  # at and after: absent
        assert decoded[:3] == ["[CLS]", "GENDER/F", "HOSPITAL/H07"]
    tokens, _, _ = store.sequence(i, before=T + US)
    assert vocab.decode(tokens)[-1] == "ICD10/R51"
    tokens, _, _ = store.sequence(i, before=dt.datetime(1900, 1, 1))  # before every event: [CLS] + static
    assert vocab.decode(tokens) == ["[CLS]", "GENDER/F", "HOSPITAL/H07"]


def test_max_len_keeps_static_and_the_most_recent_events(hand) -> None:
    _, store = hand
    i = store.index_of(1)
    full, ages, visits = store.sequence(i, before=T)
    tokens, cut_ages, cut_visits = store.sequence(i, before=T, max_len=6)
    assert tokens.tolist() == full[:3].tolist() + full[-3:].tolist()
    assert cut_ages.tolist() == ages[:3].tolist() + ages[-3:].tolist()
    assert cut_visits.tolist() == visits[:3].tolist() + visits[-3:].tolist()
    assert store.sequence(i, max_len=2)[0].tolist() == full[:2].tolist()  # never more than max_len
    assert store.sequence(i, max_len=1000)[0].size == store.lengths()[i]


def test_sequences_for_labels(hand) -> None:
    _, store = hand
    labels = pl.DataFrame(
        {"subject_id": [2, 1], "prediction_time": [month(3), T], "boolean_value": [True, False]},
        schema={"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"), "boolean_value": pl.Boolean},
    )
    seqs = store.sequences_for(labels)
    assert [store.vocab.decode(s[0])[-1] for s in seqs] == ["ICD10/R51", "ICD10/K21.9"]
    assert seqs[1][0].tolist() == store.sequence(store.index_of(1), before=T)[0].tolist()
    missing = pl.concat([labels, labels.with_columns(subject_id=pl.lit(99, pl.Int64))])
    with pytest.raises(KeyError, match="subject_id 99"):
        store.sequences_for(missing)
    with pytest.raises(KeyError, match="99"):
        store.index_of(99)


# --- determinism -------------------------------------------------------------------------------------------


def test_same_bytes_twice_and_whatever_the_sharding(synth, tmp_path: Path) -> None:
    root, splits = synth
    config = tok.TokenizeConfig()
    vocab = tok.build_vocabulary(root, pretrain_ids(splits), config)
    tok.build_store(root, vocab, tmp_path / "a", config)
    tok.build_store(root, vocab, tmp_path / "b", config)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == sorted([*(f"{n}.npy" for n in ARRAYS), "stats.json", "vocab.json"])
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    # The same data in one shard (subjects in reverse shard order) gives the same arrays.
    one = tmp_path / "one"
    (one / "data").mkdir(parents=True)
    pl.concat([pl.read_parquet(p) for p in reversed(shard_paths(root))]).write_parquet(one / "data" / "all.parquet")
    assert tok.build_vocabulary(one, pretrain_ids(splits), config) == vocab
    tok.build_store(one, vocab, tmp_path / "c", config)
    for name in ARRAYS:
        assert (tmp_path / "a" / f"{name}.npy").read_bytes() == (tmp_path / "c" / f"{name}.npy").read_bytes(), name


def test_reading_a_shard_in_subject_ranges_gives_the_same_bytes(synth, tmp_path: Path, monkeypatch) -> None:
    root, splits = synth
    config = tok.TokenizeConfig()
    vocab = tok.build_vocabulary(root, pretrain_ids(splits), config)
    whole = tok.build_store(root, vocab, tmp_path / "whole", config)
    monkeypatch.setattr(tok, "SUBJECTS_PER_READ", 300)
    reads = list(tok._reads(tok.open_events(root)))
    assert len(reads) > 2 * len(shard_paths(root))  # several ranges per shard, each of at most 300 subjects
    assert tok.build_vocabulary(root, pretrain_ids(splits), config) == vocab
    ranged = tok.build_store(root, vocab, tmp_path / "ranged", config)
    assert ranged == whole
    for name in [*(f"{n}.npy" for n in ARRAYS), "stats.json"]:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "ranged" / name).read_bytes(), name
    assert tok.compare_repeats(root, config, max_shards=1) == _repeats_whole(root, config, monkeypatch)


def test_shards_run_by_a_process_pool_give_the_same_bytes(synth, tmp_path: Path) -> None:
    root, splits = synth
    config = tok.TokenizeConfig()
    vocab = tok.build_vocabulary(root, pretrain_ids(splits), config)
    one = tok.build_store(root, vocab, tmp_path / "one", config)
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        two = tok.build_store(root, vocab, tmp_path / "two", config, map_fn=pool.map)
    assert one == two and one.shards == 2
    for name in [*(f"{n}.npy" for n in ARRAYS), "stats.json"]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name


def _repeats_whole(root: Path, config: tok.TokenizeConfig, monkeypatch) -> dict:
    monkeypatch.setattr(tok, "SUBJECTS_PER_READ", 10**9)
    return tok.compare_repeats(root, config, max_shards=1)


def test_a_null_subject_id_is_named_with_its_file_and_row(tmp_path: Path) -> None:
    root = write_shards(tmp_path / "meds", [[(1, month(0), "ICD10/I10"), (2, month(1), "ICD10/E11")]])
    path = root / "data" / "0.parquet"
    frame = pl.read_parquet(path)
    frame.with_columns(
        subject_id=pl.when(pl.int_range(pl.len()) == 1).then(None).otherwise("subject_id")
    ).write_parquet(path)
    with pytest.raises(ValueError, match=r"0\.parquet: 1 null value\(s\) in column subject_id \(first at row 1\)"):
        tok.build_vocabulary(root, [1, 2])


# --- other MEDS datasets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["static_meds", "generated_meds"])
@pytest.mark.parametrize("repeats", tok.REPEATS_POLICIES)
def test_other_meds_datasets(fixture: str, repeats: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    root = request.getfixturevalue(fixture)
    meds = read_meds(root)
    subjects = np.sort(meds["subject_id"].unique().to_numpy())
    config = tok.TokenizeConfig(min_count=1, repeats=repeats)
    vocab = tok.build_vocabulary(root, subjects[: max(1, subjects.size // 2)], config)
    stats = tok.build_store(root, vocab, tmp_path / "tokens", config)
    store = tok.TokenStore(tmp_path / "tokens")
    assert store.subjects.tolist() == subjects.tolist()
    assert stats.records + sum(stats.records_left_out.values()) == meds.height
    assert stats.tokens == stats.records - sum(stats.excluded_records.values()) - stats.repeats_removed + len(store)
    assert np.all(np.asarray(store.tokens)[store.offsets[:-1]] == tok.CLS)
    assert np.all((np.asarray(store.tokens) >= 0) & (np.asarray(store.tokens) < len(vocab)))
    if repeats == "keep":
        assert stats.repeats_removed == 0
    for i in range(len(store)):
        tokens, _, _ = store.sequence(i, max_len=8)
        assert 1 <= tokens.size <= 8
