"""Vocabulary, packed token store and the cut at prediction time, for the transformer stages.

Import it as `from claimsutil import tokenize as tok` (the name shadows the stdlib module only as
`claimsutil.tokenize`; nothing in the package imports the stdlib `tokenize`).

    vocab = tok.build_vocabulary("data/meds", pretrain_ids, tok.TokenizeConfig())   # train + validation only
    stats = tok.build_store("data/meds", vocab, "data/tokens", tok.TokenizeConfig())  # every patient
    store = tok.TokenStore("data/tokens")
    tokens, ages, visits = store.sequence(store.index_of(sid), before=prediction_time, max_len=512)

Tokens. One token per MEDS record: the code, with "//suspected" appended when `diagnosis_certainty` is
"suspected" (a suspected diagnosis says something different from a confirmed one). Not tokens: MEDS_BIRTH
(age is an embedding of its own), MEDS_DEATH (an outcome, never an input) and COVERAGE/START|END
(bookkeeping of the observation window); their records are counted in `StoreStats.excluded_records`.
numeric_value and text_value are not used. Codes outside the vocabulary become [UNK] and are counted.

Vocabulary. Special tokens first ([PAD]=0, [MASK]=1, [CLS]=2, [UNK]=3), then every token with at least
`min_count` tokens (after the repeats policy) among the PRETRAINING patients (train + validation: test and
held-out-hospital patients never contribute), sorted by family then token. Family of a token (the model
splits its losses by family), from the prefix before the first "/" (`FAMILY_BY_PREFIX`):

    ICD10, ICD10CM, ICD9, ICD9CM, or any "//suspected" token   diagnosis
    YJ, ATC, RXNORM, NDC                                        drug
    anything else (GENDER/, HOSPITAL/, other vocabularies)      other

Sequence of a patient: [CLS], the static tokens (null time: sex, hospital, ...; by token id), then the
timed tokens in time order (within one timestamp by token id). Events sharing a timestamp form one visit;
visits are numbered 1, 2, ... ([CLS] and static tokens: 0). Age is in days from MEDS_BIRTH (NaN when the
patient has none); [CLS] and static tokens take the age at the first timed token.

Repeated chronic codes. Japanese receipts repeat every active chronic diagnosis on each monthly receipt.
`repeats="keep"` keeps every record; `repeats="first_per_episode"` keeps a token when it first appears or
reappears after a gap, i.e. drops it when the patient's previous visit (the previous distinct timestamp with
tokens) had it too, and keeps one copy of a token within a visit (or among the static rows). The rule only
looks backwards, so cutting at a prediction time after tokenization leaks nothing. Measured with
`compare_repeats` on the synthetic data (SynthParams(patients=5000, seed=1), otherwise defaults: 120 months,
32 hospitals; 2,121,991 records, of which 2,104,558 are tokens under "keep"; counts exclude [CLS]):

    policy              tokens      per patient mean / median / p95    removed    (patient, token) pairs lost
    keep                2,104,558   420.9 / 266.5 / 1342               -          -
    first_per_episode     216,759    43.4 /  39   /   92               89.7 %     0

first_per_episode is the default: 9.7x fewer tokens (the whole history of 100 % of the patients fits in 512
tokens with [CLS], against 69.2 % under "keep"), every (patient, token) pair still present, and the
onsets of each episode (a condition or drug that starts, stops and restarts) are exactly what is kept.

Store layout (`build_store`; `TokenStore` opens it memory-mapped): one packed array per field, patients in
subject_id order, patient i at [offsets[i], offsets[i+1]):

    tokens.npy    int32    token ids
    ages.npy      float32  age in days at the event
    times.npy     int64    microseconds since the epoch; INT64_MIN for [CLS] and static tokens
    visits.npy    int32    visit number within the patient (0 for [CLS] and static tokens)
    offsets.npy   int64    n_subjects + 1
    subjects.npy  int64    sorted subject ids (every patient in the data, any split)
    vocab.json    the vocabulary (as `Vocabulary.save`)
    stats.json    `StoreStats` (counts of everything read, excluded, unknown, removed) and the config

Memory: one shard at a time; each shard's arrays are written as a part, and the parts are copied once into
the final memory-mapped arrays. Same input and config give the same bytes, whatever the sharding.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from numpy.lib.format import open_memmap
from tqdm import tqdm

from claimsutil.config import TokenizeConfig
from claimsutil.meds import (
    BIRTH_CODE,
    BOOKKEEPING_CODES,
    FAMILY_BY_PREFIX,
    SUSPECTED,
    Events,
    code_family,
    open_events,
    scan_shard,
    subject_ranges,
)

__all__ = [
    "FAMILIES",
    "FAMILY_BY_PREFIX",
    "StoreStats",
    "TokenStore",
    "TokenizeConfig",
    "Vocabulary",
    "build_store",
    "build_vocabulary",
    "compare_repeats",
    "token_family",
]

log = logging.getLogger(__name__)

PAD, MASK, CLS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ("[PAD]", "[MASK]", "[CLS]", "[UNK]")
SUSPECTED_SUFFIX = "//" + SUSPECTED
NOT_TOKENS = BOOKKEEPING_CODES  # birth (age is an embedding), death (an outcome), coverage (bookkeeping)
FAMILIES = ("special", "diagnosis", "drug", "other")  # family ids are indices into this tuple
REPEATS_POLICIES = ("keep", "first_per_episode")
TIME_STATIC = np.iinfo(np.int64).min  # times.npy value of [CLS] and static tokens
US_PER_DAY = 86_400_000_000
TOP_UNKNOWN = 20
STORE_FILES = ("tokens", "ages", "times", "visits")  # packed per-token arrays
FORMAT_VERSION = 1
# Subjects read at once: a shard is read one range of its subjects at a time, so the memory of every pass is
# that of SUBJECTS_PER_READ patients (about 1.4 GiB at the synthetic world's 640 records per patient), whatever
# the shard size. Execution only: the outputs are the same bytes for any value.
SUBJECTS_PER_READ = 10_000


STORE_CONFIG_FIELDS = ("min_count", "repeats", "include_static", "max_len")  # what the store's bytes depend on


def store_config(config: TokenizeConfig) -> dict[str, Any]:
    """The config fields a vocabulary and a store are built with (not report-only knobs like repeats_shards)."""
    return {k: getattr(config, k) for k in STORE_CONFIG_FIELDS}


def token_family(token: str) -> str:
    """'special', 'diagnosis', 'drug' or 'other' (see FAMILY_BY_PREFIX)."""
    if token in SPECIAL_TOKENS:
        return "special"
    if token.endswith(SUSPECTED_SUFFIX):
        return "diagnosis"
    return code_family(token)


# --- vocabulary -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Vocabulary:
    """Tokens by id, with their family and their count among the pretraining patients."""

    tokens: tuple[str, ...]
    families: tuple[str, ...]
    counts: tuple[int, ...]
    config: TokenizeConfig = field(default_factory=TokenizeConfig)
    pretrain_subjects: int = 0  # pretraining patients found in the data
    tokens_seen: int = 0  # distinct tokens among them
    rare_tokens: int = 0  # of those, below min_count (they become [UNK])
    rare_token_count: int = 0  # tokens of the rare ones

    def __len__(self) -> int:
        return len(self.tokens)

    @cached_property
    def id_of(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.tokens)}

    @cached_property
    def family_ids(self) -> np.ndarray:
        """int8 family id (index into FAMILIES) per token id: lets the model split its losses by family."""
        return np.array([FAMILIES.index(f) for f in self.families], dtype=np.int8)

    def decode(self, ids: np.ndarray) -> list[str]:
        return [self.tokens[i] for i in np.asarray(ids).tolist()]

    def to_dict(self) -> dict[str, Any]:
        rows = [
            {"token": t, "id": i, "family": f, "count": c}
            for i, (t, f, c) in enumerate(zip(self.tokens, self.families, self.counts, strict=True))
        ]
        return {
            "format": FORMAT_VERSION,
            "config": store_config(self.config),
            "families": list(FAMILIES),
            "family_ids": self.family_ids.tolist(),
            "pretrain_subjects": self.pretrain_subjects,
            "tokens_seen": self.tokens_seen,
            "rare_tokens": self.rare_tokens,
            "rare_token_count": self.rare_token_count,
            "tokens": rows,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Vocabulary:
        rows = sorted(d["tokens"], key=lambda r: r["id"])
        if [r["id"] for r in rows] != list(range(len(rows))):
            raise ValueError("vocabulary: token ids are not 0..n-1")
        return cls(
            tokens=tuple(r["token"] for r in rows),
            families=tuple(r["family"] for r in rows),
            counts=tuple(int(r["count"]) for r in rows),
            config=TokenizeConfig(**d["config"]),
            **{k: int(d[k]) for k in ("pretrain_subjects", "tokens_seen", "rare_tokens", "rare_token_count")},
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


# --- reading one shard --------------------------------------------------------------------------------


@dataclass
class _Shard:
    """One shard's tokens (repeats policy applied, not yet sorted or mapped to ids), births and counts."""

    subjects: np.ndarray  # every subject id in the shard, sorted
    events: pl.DataFrame  # subject_id, time (null = static), token
    births: pl.DataFrame  # subject_id, birth
    records: int
    excluded: dict[str, int]  # code -> records that are not tokens (MEDS_BIRTH, COVERAGE/..., static if off)
    removed: int  # tokens dropped by the repeats policy


def _reads(events: Events, progress: bool = False, desc: str = "", max_shards: int | None = None):
    """(shard number, shard path, subject range) of every read: each shard in ranges of SUBJECTS_PER_READ."""
    for i, path in enumerate(tqdm(events.paths[:max_shards], desc=desc, unit="shard", disable=not progress)):
        for subjects in subject_ranges(path, SUBJECTS_PER_READ):
            yield i, path, subjects


def _read_shard(
    events: Events,
    path: Path,
    config: TokenizeConfig,
    only: pl.DataFrame | None = None,
    subjects: tuple[int, int] | None = None,
) -> _Shard:
    """The tokens of shard PATH (of its SUBJECTS range when given), read through the study's view (records
    after death or past the end left out)."""
    df = events.scan(path, subjects).select("subject_id", "time", "code", "suspected")
    if only is not None:
        df = df.join(only.lazy(), on="subject_id", how="semi")
    df = df.collect()
    for column in ("subject_id", "code"):
        if df[column].null_count():  # counted and located in the whole file, the row a user can look up
            rows = scan_shard(path).select(pl.col(column).is_null()).with_row_index("row").filter(pl.col(column))
            nulls = rows.select(n=pl.len(), first=pl.col("row").min()).collect()
            raise ValueError(
                f"{path}: {nulls['n'][0]} null value(s) in column {column} (first at row {nulls['first'][0]})"
            )
    not_token = pl.col("code").is_in(NOT_TOKENS)
    if not config.include_static:
        not_token = not_token | pl.col("time").is_null()
    excluded = dict(df.filter(not_token).group_by("code").len().sort("code").iter_rows())
    births = (
        df.filter(pl.col("code") == BIRTH_CODE)
        .drop_nulls("time")
        .group_by("subject_id")
        .agg(birth=pl.col("time").min())
    )
    token = pl.when(pl.col("suspected")).then(pl.col("code") + SUSPECTED_SUFFIX).otherwise(pl.col("code"))
    events = df.filter(~not_token).select("subject_id", "time", token.alias("token"))
    kept = _first_per_episode(events) if config.repeats == "first_per_episode" else events
    return _Shard(
        subjects=np.sort(df["subject_id"].unique().to_numpy()),
        events=kept,
        births=births,
        records=df.height,
        excluded={str(k): int(v) for k, v in excluded.items()},
        removed=events.height - kept.height,
    )


def _first_per_episode(events: pl.DataFrame) -> pl.DataFrame:
    """One copy per (subject, time, token); then drop a timed token that the previous visit had too.

    Row order is not kept (every reader groups or sorts). MEDS shards are sorted by subject and time, which
    makes this a linear pass plus one sort of integer keys; unsorted input is sorted first."""
    static = events.filter(pl.col("time").is_null()).unique()
    timed = events.drop_nulls("time")
    if timed.height == 0:
        return pl.concat([static, timed])

    def subject_and_time(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s, t = frame["subject_id"].to_numpy(), frame["time"].dt.epoch("us").to_numpy()
        return s, t, s[1:] == s[:-1]

    s, t, same_subject = subject_and_time(timed)
    if not np.all((s[1:] > s[:-1]) | (same_subject & (t[1:] >= t[:-1]))):
        timed = timed.sort("subject_id", "time")
        s, t, same_subject = subject_and_time(timed)
    n = s.size
    # Visit number: +1 at each new (subject, time), +2 at each new subject, so that "the previous visit" of a
    # subject's first visit is nobody's visit.
    new_visit = np.ones(n, bool)
    new_visit[1:] = ~same_subject | (t[1:] != t[:-1])
    new_subject = np.ones(n, bool)
    new_subject[1:] = ~same_subject
    visit = np.cumsum(new_visit, dtype=np.int64) + np.cumsum(new_subject, dtype=np.int64)
    token = timed["token"].cast(pl.Categorical).to_physical().to_numpy().astype(np.int64)
    span = int(token.max()) + 1
    key = visit * span + token  # (visit, token), ordered by visit
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    first = np.ones(n, bool)
    first[1:] = sorted_key[1:] != sorted_key[:-1]
    unique = sorted_key[first]
    previous = unique - span  # the same token at the visit before
    found = np.minimum(np.searchsorted(unique, previous), unique.size - 1)
    kept_sorted = first.copy()
    kept_sorted[first] = unique[found] != previous
    keep = np.zeros(n, bool)
    keep[order[kept_sorted]] = True
    return pl.concat([static, timed.filter(keep)])


# --- vocabulary -------------------------------------------------------------------------------------


def build_vocabulary(
    meds_root: Events | str | Path, pretrain_ids: Any, config: TokenizeConfig | None = None, *, progress: bool = False
) -> Vocabulary:
    """Count tokens over the pretraining patients (PRETRAIN_IDS: train + validation subject ids) only."""
    config = config or TokenizeConfig()
    events = open_events(meds_root)
    ids = pl.DataFrame({"subject_id": np.unique(np.asarray(pretrain_ids, dtype=np.int64))})
    if ids.height == 0:
        raise ValueError("build_vocabulary: no pretraining subject ids")
    counts: Counter[str] = Counter()
    found = 0
    for _, path, subjects in _reads(events, progress, "vocabulary"):
        shard = _read_shard(events, path, config, only=ids, subjects=subjects)
        found += shard.subjects.size
        counts.update(dict(shard.events.group_by("token").len().iter_rows()))
    if found == 0:
        raise ValueError(f"build_vocabulary: none of the {ids.height} pretraining subjects is in {events.root}")
    kept = [t for t, n in counts.items() if n >= config.min_count and t not in SPECIAL_TOKENS]
    kept.sort(key=lambda t: (FAMILIES.index(token_family(t)), t))
    rare = [n for t, n in counts.items() if n < config.min_count]
    vocab = Vocabulary(
        tokens=(*SPECIAL_TOKENS, *kept),
        families=(*(["special"] * len(SPECIAL_TOKENS)), *(token_family(t) for t in kept)),
        counts=(*([0] * len(SPECIAL_TOKENS)), *(counts[t] for t in kept)),
        config=config,
        pretrain_subjects=found,
        tokens_seen=len(counts),
        rare_tokens=len(rare),
        rare_token_count=sum(rare),
    )
    log.info(
        "vocabulary: %d tokens from %d pretraining patients; %d of %d tokens below min_count %d (%d tokens)",
        len(vocab), found, vocab.rare_tokens, vocab.tokens_seen, config.min_count, vocab.rare_token_count,
    )  # fmt: skip
    return vocab


# --- the store ---------------------------------------------------------------------------------------


@dataclass
class StoreStats:
    """What `build_store` read, wrote, excluded, replaced by [UNK] and removed as repeats."""

    subjects: int = 0
    tokens: int = 0  # every token written, [CLS] included
    shards: int = 0
    records: int = 0  # MEDS records read (the study's view)
    records_left_out: dict[str, int] = field(default_factory=dict)  # after death / past the end of the data
    data_end: str = ""  # the end of the data (exclusive; `claimsutil.meds.data_window`)
    excluded_records: dict[str, int] = field(default_factory=dict)  # code -> records that are not tokens
    repeats_removed: int = 0  # tokens dropped by the repeats policy
    unknown_tokens: int = 0  # tokens written as [UNK]
    unknown_codes: dict[str, int] = field(default_factory=dict)  # the most frequent unknown tokens -> count
    subjects_without_birth: int = 0  # their ages are NaN
    subjects_without_events: int = 0  # sequences of [CLS] and static tokens only
    length_mean: float = 0.0
    length_median: float = 0.0
    length_p95: float = 0.0
    share_longer_than_max_len: float = 0.0  # patients whose whole history exceeds config.max_len
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _shard_arrays(shard: _Shard, vocab_frame: pl.DataFrame) -> tuple[dict[str, np.ndarray], pl.DataFrame]:
    """The packed arrays of one shard (subjects in sorted order, [CLS] first) and its unknown tokens."""
    ev = shard.events.join(vocab_frame, on="token", how="left", maintain_order="left")
    unknown = ev.filter(pl.col("id").is_null()).group_by("token").len()
    ev = ev.with_columns(pl.col("id").fill_null(UNK)).join(shard.births, on="subject_id", how="left")
    ev = ev.sort("subject_id", pl.col("time").is_not_null(), "time", "id", maintain_order=True)
    times = ev["time"].dt.epoch("us")
    ev = ev.with_columns(
        t=times.fill_null(TIME_STATIC),
        age=((pl.col("time") - pl.col("birth")).dt.total_microseconds() / US_PER_DAY).cast(pl.Float32),
        visit=pl.when(pl.col("time").is_null())
        .then(0)
        .otherwise(pl.col("time").rank("dense").over("subject_id"))
        .cast(pl.Int32),
    )
    first_age = ev.drop_nulls("time").group_by("subject_id").agg(first=pl.col("age").sort_by("time").first())
    subjects = pl.DataFrame({"subject_id": shard.subjects})
    per_subject = subjects.join(ev.group_by("subject_id").len(), on="subject_id", how="left").join(
        first_age, on="subject_id", how="left", maintain_order="left"
    )
    n_events = per_subject["len"].fill_null(0).to_numpy().astype(np.int64)
    start_age = per_subject["first"].to_numpy().astype(np.float32)  # NaN where none
    lengths = n_events + 1
    offsets = np.zeros(lengths.size + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    is_cls = np.zeros(offsets[-1], bool)
    is_cls[offsets[:-1]] = True
    static = ev["time"].is_null().to_numpy()
    ev_age = ev["age"].to_numpy(allow_copy=True).astype(np.float32)
    ev_age = np.where(static, np.repeat(start_age, n_events), ev_age)
    arrays = {
        "tokens": (CLS, ev["id"].to_numpy().astype(np.int32)),
        "ages": (start_age, ev_age.astype(np.float32)),
        "times": (TIME_STATIC, ev["t"].to_numpy().astype(np.int64)),
        "visits": (0, ev["visit"].to_numpy().astype(np.int32)),
    }
    out = {}
    for name, (cls_value, values) in arrays.items():
        packed = np.empty(offsets[-1], dtype=values.dtype)
        packed[is_cls] = cls_value
        packed[~is_cls] = values
        out[name] = packed
    out["lengths"] = lengths
    return out, unknown


def _place(parts: list[tuple[np.ndarray, Path]], out_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Copy the per-shard parts into the final arrays, patients in subject_id order."""
    subjects = np.concatenate([s for s, _ in parts]) if parts else np.zeros(0, np.int64)
    lengths = np.concatenate([np.load(p / "lengths.npy") for _, p in parts]) if parts else np.zeros(0, np.int64)
    values, counts = np.unique(subjects, return_counts=True)
    if values.size != subjects.size:
        dup = values[np.flatnonzero(counts > 1)[0]]
        raise ValueError(f"subject_id {dup} appears in several shards; MEDS keeps a subject in one shard")
    order = np.argsort(subjects, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    offsets = np.zeros(subjects.size + 1, np.int64)
    np.cumsum(lengths[order], out=offsets[1:])
    total = int(offsets[-1])
    dtypes = {"tokens": np.int32, "ages": np.float32, "times": np.int64, "visits": np.int32}
    for name, dtype in dtypes.items():
        open_memmap(out_dir / f"{name}.npy", mode="w+", dtype=dtype, shape=(total,)).flush()  # sized, zeroed
    first = 0
    for shard_subjects, part in parts:
        n = shard_subjects.size
        part_lengths = lengths[first : first + n]
        starts = offsets[rank[first : first + n]]
        part_offsets = np.concatenate([[0], np.cumsum(part_lengths)])
        dest = np.repeat(starts - part_offsets[:-1], part_lengths) + np.arange(part_offsets[-1])
        for name in dtypes:  # mapped for one part at a time: the store's pages never all count in this process
            final = np.load(out_dir / f"{name}.npy", mmap_mode="r+")
            final[dest] = np.load(part / f"{name}.npy")
            final.flush()
            del final
        first += n
    return subjects[order], offsets


@dataclass(frozen=True)
class ShardJob:
    """One shard's share of `build_store`, self-contained and picklable: what a worker of any engine needs."""

    events: Events
    path: Path
    number: int
    config: TokenizeConfig
    vocab_frame: pl.DataFrame
    parts_dir: Path


@dataclass
class ShardResult:
    parts: list[tuple[np.ndarray, Path]]  # (subjects, folder) per subject range, in order
    records: int = 0
    removed: int = 0
    excluded: Counter = field(default_factory=Counter)
    unknown: Counter = field(default_factory=Counter)
    without_birth: int = 0
    without_events: int = 0


def tokenize_shard(job: ShardJob) -> ShardResult:
    """Tokenize one shard (a range of SUBJECTS_PER_READ subjects at a time) into parts under JOB.parts_dir.
    Independent of every other shard: `build_store` maps it over the shard list with any map."""
    result = ShardResult(parts=[])
    for k, subjects in enumerate(subject_ranges(job.path, SUBJECTS_PER_READ)):
        shard = _read_shard(job.events, job.path, job.config, subjects=subjects)
        arrays, unk = _shard_arrays(shard, job.vocab_frame)
        part = job.parts_dir / f"{job.number:05d}-{k:05d}"
        part.mkdir()
        for name, values in arrays.items():
            np.save(part / f"{name}.npy", values)
        result.parts.append((shard.subjects, part))
        result.records += shard.records
        result.removed += shard.removed
        result.excluded.update(shard.excluded)
        result.unknown.update(dict(unk.iter_rows()))
        result.without_birth += int(shard.subjects.size - shard.births.height)
        result.without_events += int(np.sum(arrays["visits"][np.cumsum(arrays["lengths"]) - 1] == 0))
    return result


def build_store(
    meds_root: Events | str | Path,
    vocab: Vocabulary,
    out_dir: str | Path,
    config: TokenizeConfig | None = None,
    *,
    progress: bool = False,
    map_fn: Callable = map,
) -> StoreStats:
    """Tokenize every patient of MEDS_ROOT into OUT_DIR (replaced); see the module docstring for the layout.

    MAP_FN(tokenize_shard, jobs) runs the shards' jobs and yields their results in order: the built-in `map`
    (one process), a `concurrent.futures` executor's `map`, or a cluster's (Dask: `lambda f, jobs:
    client.gather(client.map(f, list(jobs)))`); every worker must see OUT_DIR. The bytes are the same whatever
    runs them."""
    config = config or vocab.config
    events = open_events(meds_root)
    for name in ("repeats", "include_static"):
        if getattr(config, name) != getattr(vocab.config, name):
            raise ValueError(
                f"build_store: config.{name} = {getattr(config, name)!r} but the vocabulary was counted with "
                f"{getattr(vocab.config, name)!r}; use the same tokenize config for both"
            )
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    parts_dir = out_dir / "_parts"
    parts_dir.mkdir(parents=True)
    vocab_frame = pl.DataFrame(
        {"token": list(vocab.tokens), "id": np.arange(len(vocab), dtype=np.int32)},
        schema={"token": pl.String, "id": pl.Int32},
    )
    stats = StoreStats(config=store_config(config))
    excluded: Counter[str] = Counter()
    unknown: Counter[str] = Counter()
    parts: list[tuple[np.ndarray, Path]] = []
    paths = events.paths
    events.dropped  # noqa: B018 - the view's per-shard counts, computed once here rather than in every worker
    jobs = [ShardJob(events, path, i, config, vocab_frame, parts_dir) for i, path in enumerate(paths)]
    results = map_fn(tokenize_shard, jobs)
    for result in tqdm(results, total=len(jobs), desc="tokenize", unit="shard", disable=not progress):
        parts.extend(result.parts)
        stats.records += result.records
        stats.repeats_removed += result.removed
        excluded.update(result.excluded)
        unknown.update(result.unknown)
        stats.subjects_without_birth += result.without_birth
        stats.subjects_without_events += result.without_events
    subjects, offsets = _place(parts, out_dir)
    shutil.rmtree(parts_dir)
    np.save(out_dir / "subjects.npy", subjects)
    np.save(out_dir / "offsets.npy", offsets)
    vocab.save(out_dir / "vocab.json")
    lengths = np.diff(offsets)
    stats.subjects, stats.tokens, stats.shards = int(subjects.size), int(offsets[-1]), len(paths)
    stats.excluded_records = dict(sorted(excluded.items()))
    stats.records_left_out = events.dropped
    stats.data_end = events.window.end.date().isoformat()
    stats.unknown_tokens = int(sum(unknown.values()))
    stats.unknown_codes = dict(sorted(unknown.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_UNKNOWN])
    if lengths.size:
        stats.length_mean = float(lengths.mean())
        stats.length_median = float(np.median(lengths))
        stats.length_p95 = float(np.percentile(lengths, 95))
        if config.max_len is not None:
            stats.share_longer_than_max_len = float((lengths > config.max_len).mean())
    text = json.dumps(stats.to_dict(), indent=1, sort_keys=True, ensure_ascii=False)
    (out_dir / "stats.json").write_text(text + "\n", encoding="utf-8")
    log.info(
        "token store: %d patients, %d tokens (%d [UNK]), %d repeats removed",
        stats.subjects, stats.tokens, stats.unknown_tokens, stats.repeats_removed,
    )  # fmt: skip
    return stats


# --- reading the store --------------------------------------------------------------------------------


def _as_us(t: dt.datetime | np.datetime64 | int) -> int:
    if isinstance(t, dt.datetime):
        if t.tzinfo is not None:
            raise ValueError(f"prediction time {t} has a timezone; MEDS times are timezone-naive")
        return (t - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
    if isinstance(t, np.datetime64):
        return int(t.astype("datetime64[us]").astype(np.int64))
    return int(t)


Sequence = tuple[np.ndarray, np.ndarray, np.ndarray]  # tokens (int32), ages (float32), visits (int32)


class TokenStore:
    """The packed arrays of `build_store`, memory-mapped; patient i is the i-th subject id in sorted order."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not (self.directory / "offsets.npy").is_file():
            raise FileNotFoundError(f"{self.directory}: not a token store (no offsets.npy)")
        self.tokens = np.load(self.directory / "tokens.npy", mmap_mode="r")
        self.ages = np.load(self.directory / "ages.npy", mmap_mode="r")
        self.times_us = np.load(self.directory / "times.npy", mmap_mode="r")
        self.visits = np.load(self.directory / "visits.npy", mmap_mode="r")
        self.offsets = np.load(self.directory / "offsets.npy")
        self.subjects = np.load(self.directory / "subjects.npy")
        self.vocab = Vocabulary.load(self.directory / "vocab.json")
        self.stats = json.loads((self.directory / "stats.json").read_text(encoding="utf-8"))
        self.config = TokenizeConfig(**self.stats["config"])

    def __len__(self) -> int:
        return int(self.subjects.size)

    def index_of(self, subject_id: int) -> int:
        i = int(np.searchsorted(self.subjects, subject_id))
        if i == self.subjects.size or self.subjects[i] != subject_id:
            raise KeyError(f"subject_id {subject_id} is not in the token store {self.directory}")
        return i

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def times(self, i: int) -> np.ndarray:
        """Microseconds since the epoch per token of patient I (INT64_MIN for [CLS] and static tokens)."""
        return np.asarray(self.times_us[self.offsets[i] : self.offsets[i + 1]])

    def sequence(
        self, i: int, before: dt.datetime | np.datetime64 | int | None = None, max_len: int | None = None
    ) -> Sequence:
        """Patient I's (tokens, ages, visits). BEFORE: only events strictly before it ([CLS] and static tokens
        always). MAX_LEN: [CLS] and static tokens, then the most recent events that fit."""
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        times = self.times_us[start:end]
        head = int(np.searchsorted(times, TIME_STATIC, side="right"))  # [CLS] + static: INT64_MIN, sorted first
        stop = end if before is None else start + int(np.searchsorted(times, _as_us(before), side="left"))
        first = start + head
        if max_len is not None:
            if max_len < 1:
                raise ValueError(f"max_len = {max_len}: must be >= 1")
            head = min(head, max_len)
            first = max(first, stop - (max_len - head))
        idx = np.r_[start : start + head, first:stop]
        return (np.asarray(self.tokens[idx]), np.asarray(self.ages[idx]), np.asarray(self.visits[idx]))

    def sequences_for(self, labels: pl.DataFrame, *, max_len: int | None = None) -> list[Sequence]:
        """One sequence per label row (in label order), cut before its prediction_time and to MAX_LEN (None:
        the store's config.max_len). Every label subject must be in the store (an error names one)."""
        max_len = self.config.max_len if max_len is None else max_len
        sids = labels["subject_id"].cast(pl.Int64).to_numpy()
        times = labels["prediction_time"].cast(pl.Datetime("us")).dt.epoch("us").to_numpy()
        idx = np.searchsorted(self.subjects, sids)
        found = idx < self.subjects.size
        found[found] = self.subjects[idx[found]] == sids[found]
        if not found.all():
            missing = sids[~found]
            raise KeyError(
                f"{np.unique(missing).size} label subject(s) are not in the token store {self.directory} "
                f"(e.g. subject_id {missing[0]})"
            )
        return [self.sequence(int(i), before=int(t), max_len=max_len) for i, t in zip(idx, times, strict=True)]


# --- the repeats measurement ----------------------------------------------------------------------------


def compare_repeats(
    meds_root: Events | str | Path, config: TokenizeConfig | None = None, max_shards: int | None = None
) -> dict[str, dict[str, float]]:
    """Per repeats policy: tokens (without [CLS]), per-patient mean / median / p95, share removed relative to
    "keep", and (patient, token) pairs present under "keep" but absent under the policy. MAX_SHARDS: measure
    on the first shards only (every shard holds whole patients, so the shares are estimates of the whole)."""
    config = config or TokenizeConfig()
    per_policy: dict[str, list[np.ndarray]] = {p: [] for p in REPEATS_POLICIES}
    pairs: dict[str, int] = dict.fromkeys(REPEATS_POLICIES, 0)
    events = open_events(meds_root)
    for _, path, subjects in _reads(events, max_shards=max_shards):
        for policy in REPEATS_POLICIES:
            shard = _read_shard(events, path, replace(config, repeats=policy), subjects=subjects)
            n = pl.DataFrame({"subject_id": shard.subjects}).join(
                shard.events.group_by("subject_id").len(), on="subject_id", how="left"
            )
            per_policy[policy].append(n["len"].fill_null(0).to_numpy())
            pairs[policy] += shard.events.select("subject_id", "token").unique().height
    keep_total = int(sum(a.sum() for a in per_policy["keep"]))
    out = {}
    for policy, arrays in per_policy.items():
        n = np.concatenate(arrays)
        out[policy] = {
            "tokens": int(n.sum()),
            "mean": float(n.mean()),
            "median": float(np.median(n)),
            "p95": float(np.percentile(n, 95)),
            "removed_share": 1 - int(n.sum()) / keep_total if keep_total else 0.0,
            "pairs_lost": pairs["keep"] - pairs[policy],
        }
    return out


def repeats_table(repeats: dict[str, dict[str, float]]) -> pl.DataFrame:
    """`compare_repeats` as a table: one row per policy."""
    return pl.DataFrame([{"policy": policy, **numbers} for policy, numbers in repeats.items()])


def vocabulary_families(vocab: Vocabulary) -> pl.DataFrame:
    """Tokens per family of the vocabulary: family, tokens."""
    families = pl.DataFrame({"family": list(vocab.families)}).group_by("family").agg(tokens=pl.len().cast(pl.Int64))
    return families.sort("family")


def stage_metrics(
    vocab: Vocabulary, stats: StoreStats, config: TokenizeConfig, repeats: dict, baseline: dict | None = None
) -> dict[str, Any]:
    """The tokenize stage's metrics JSON: vocabulary, tokens, [UNK], repeats and lengths, records left out,
    and the frequency baseline per family."""
    return {
        **{f"vocabulary_{family}": int(sum(f == family for f in vocab.families)) for family in ("diagnosis", "drug")},
        **{f"frequency_baseline_{family}": v["cross_entropy"] for family, v in (baseline or {}).items()},
        "vocabulary": len(vocab.tokens),
        "patients": stats.subjects,
        "tokens": stats.tokens,
        "unknown_tokens": stats.unknown_tokens,
        "repeats_removed": stats.repeats_removed,
        "length_mean": stats.length_mean,
        "length_median": stats.length_median,
        "length_p95": stats.length_p95,
        "share_longer_than_max_len": stats.share_longer_than_max_len,
        "repeats_removed_share": repeats[config.repeats]["removed_share"],
        **{f"records_{reason}": n for reason, n in stats.records_left_out.items()},
    }


def frequency_baseline(store: TokenStore, fit_ids: np.ndarray, eval_ids: np.ndarray) -> dict[str, dict[str, float]]:
    """The loss a model that knows only code frequencies gets, per family (diagnosis, drug): the cross-entropy
    (nats) on the tokens of EVAL_IDS patients of p(token | family) = its share of the family's tokens among
    FIT_IDS patients. Pretraining predicts a masked code within its family's head from every token uniformly,
    so this is the number its per-family validation loss must beat. Tokens the fit patients never show count
    once (never the case for a store whose vocabulary came from them)."""
    families, V = store.vocab.family_ids, len(store.vocab)
    members = [np.isin(store.subjects, np.asarray(ids)) for ids in (fit_ids, eval_ids)]
    lengths = store.lengths()
    counts = [np.zeros(V, np.int64) for _ in members]
    for a in range(0, len(store), SUBJECTS_PER_READ * 10):  # a block of patients at a time: memory of one block
        b = min(a + SUBJECTS_PER_READ * 10, len(store))
        tokens = np.asarray(store.tokens[store.offsets[a] : store.offsets[b]])
        for count, member in zip(counts, members, strict=True):
            count += np.bincount(tokens[np.repeat(member[a:b], lengths[a:b])], minlength=V)
    out = {}
    for family in ("diagnosis", "drug"):
        code = FAMILIES.index(family)
        counts_fit, counts_eval = (np.where(families == code, c, 0) for c in counts)
        fitted = np.where(families == code, np.maximum(counts_fit, 1), 0).astype(float)
        p = fitted / fitted.sum() if fitted.sum() else fitted
        seen = counts_eval > 0
        n = int(counts_eval.sum())
        ce = float(-(counts_eval[seen] * np.log(p[seen])).sum() / n) if n else float("nan")
        out[family] = {"cross_entropy": ce, "perplexity": float(np.exp(ce)), "tokens": n,
                       "codes": int((families == code).sum())}  # fmt: skip
    return out


FREQUENCY_BASELINE_FILE = "frequency_baseline.json"


def write_frequency_baseline(baseline: dict[str, dict[str, float]], store_dir: str | Path) -> Path:
    """Keep `frequency_baseline` beside the store it was computed on (read back by the data report and by
    the pretraining tables)."""
    path = Path(store_dir) / FREQUENCY_BASELINE_FILE
    path.write_text(json.dumps(baseline, indent=2) + "\n", encoding="utf-8")
    return path


def read_frequency_baseline(store_dir: str | Path) -> dict[str, dict[str, float]]:
    path = Path(store_dir) / FREQUENCY_BASELINE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no frequency baseline (the tokenize stage writes it)")
    return json.loads(path.read_text(encoding="utf-8"))


def store_summary(store_dir: str | Path) -> dict[str, Any] | None:
    """What the data report shows of a token store: vocabulary by family, tokens per patient and the
    frequency baseline; None where there is no store yet (a dataset described before it is tokenized)."""
    if not (Path(store_dir) / "offsets.npy").is_file():
        return None
    store = TokenStore(store_dir)
    lengths = {k: store.stats[k] for k in ("length_mean", "length_median", "length_p95", "share_longer_than_max_len")}
    baseline = read_frequency_baseline(store_dir) if (Path(store_dir) / FREQUENCY_BASELINE_FILE).is_file() else {}
    return {"vocabulary": vocabulary_families(store.vocab), "lengths": lengths | {"max_len": store.config.max_len},
            "baseline": baseline}  # fmt: skip


def frequency_baseline_table(baseline: dict[str, dict[str, float]]) -> pl.DataFrame:
    """`frequency_baseline` as a table: family, codes, tokens, cross_entropy, perplexity."""
    rows = [{"family": f, "codes": v["codes"], "tokens": v["tokens"], "cross_entropy": v["cross_entropy"],
             "perplexity": v["perplexity"]} for f, v in baseline.items()]  # fmt: skip
    return pl.DataFrame(rows)


def plot_lengths(lengths: np.ndarray, max_len: int | None = None):
    """Histogram of sequence lengths (tokens per patient), with the model's max_len marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(lengths, bins=60, color="tab:blue")
    if max_len:
        ax.axvline(max_len, color="black", ls="--", label=f"max_len = {max_len}")
        ax.legend()
    ax.set_xlabel("tokens per patient")
    ax.set_ylabel("patients")
    fig.tight_layout()
    return fig
