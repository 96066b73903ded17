"""Count features for the LightGBM baseline: one sparse row per label row, built shard by shard.

    vocab = fit_vocabulary("data/meds", train_labels, FeatureConfig())
    X = count_features("data/meds", labels, vocab)          # scipy.sparse.csr_matrix, float32
    X, stats = count_features_with_stats("data/meds", labels, vocab)

Only events strictly before a row's prediction time are used (`time < prediction_time`); static rows
(null time) are allowed. Records are read through the study's view (`claimsutil.meds.Events`): those after
death or past the end of the data are left out (and counted there). The vocabulary is fitted on the training
rows only, with the same cut.

Columns, in this order (`vocab.names` lists them):

    age                       years from MEDS_BIRTH to the prediction time; NaN when unknown
    sex:<X>                   1 when the subject has GENDER/<X>; all 0 when unknown
    hospital:<X>              1 when the subject has HOSPITAL/<X>
    static:<CODE>             1 when the subject has another static (null-time) code
    events_all, events_<w>d   timed events before the prediction time, every code (in the vocabulary or not)
    days_since_first_event    days from the first timed event to the prediction time; NaN without events
    count_all:<CODE>          per code: records before the prediction time, then one block per window:
    count_<w>d:<CODE>         records with prediction_time - w days <= time < prediction_time
    suspected:<CODE>          per code: records whose diagnosis_certainty is "suspected" (whole history)

MEDS_BIRTH only feeds `age`. Suspected records count in count_* too (confirmed = all - suspected).
Numeric values are not used: these are count features. Codes outside the vocabulary are dropped and
counted (`FeatureStats`); nothing is dropped silently.

Memory: one shard is streamed (polars' streaming engine) into one group per (label row, code), so what is
held is those groups plus the (row, column, value) triplets of the sparse matrix; never the joined records,
never a dense patients x codes frame. Same inputs give the same matrix, whatever the sharding.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from tqdm import tqdm

from claimsutil.config import FeatureConfig
from claimsutil.meds import BIRTH_CODE, HOSPITAL_PREFIX, Events, open_events

__all__ = [
    "FeatureConfig",
    "FeatureStats",
    "FeatureVocabulary",
    "count_features",
    "count_features_with_stats",
    "fit_vocabulary",
]

log = logging.getLogger(__name__)

SEX_PREFIX = "GENDER/"
US_PER_DAY = 86_400_000_000
US_PER_YEAR = 365.25 * US_PER_DAY

# What a record feeds: the kind decides which block of columns it lands in.
BIRTH, SEX, HOSPITAL, STATIC, EVENT = range(5)
_ROW = "__feature_row__"  # label row index; a name no real dataset uses


@dataclass(frozen=True)
class FeatureVocabulary:
    """The columns: codes (sorted) per block, fitted on the training rows; plus what the fit left out."""

    config: FeatureConfig
    sex: tuple[str, ...]  # GENDER/ codes
    hospitals: tuple[str, ...]  # HOSPITAL/ codes
    static: tuple[str, ...]  # other static codes
    codes: tuple[str, ...]  # timed codes with count_all / count_<w>d columns
    suspected: tuple[str, ...]  # codes with a suspected: column
    train_rows: int = 0  # label rows the vocabulary was fitted on
    codes_seen: int = 0  # distinct codes (any kind but MEDS_BIRTH) before the training prediction times
    rare_codes: int = 0  # of those, codes below min_code_patients (no column)
    rare_code_records: int = 0  # training records of the rare codes

    @cached_property
    def names(self) -> tuple[str, ...]:
        windows = ("all", *(f"{w}d" for w in self.config.windows_days))
        return (
            "age",
            *(f"sex:{c.removeprefix(SEX_PREFIX)}" for c in self.sex),
            *(f"hospital:{c.removeprefix(HOSPITAL_PREFIX)}" for c in self.hospitals),
            *(f"static:{c}" for c in self.static),
            *(f"events_{w}" for w in windows),
            "days_since_first_event",
            *(f"count_{w}:{c}" for w in windows for c in self.codes),
            *(f"suspected:{c}" for c in self.suspected),
        )

    @property
    def n_columns(self) -> int:
        return len(self.names)

    @cached_property
    def _offsets(self) -> dict[str, int]:
        sex = 1
        hospital = sex + len(self.sex)
        static = hospital + len(self.hospitals)
        events = static + len(self.static)
        days = events + 1 + len(self.config.windows_days)
        counts = days + 1
        suspected = counts + (1 + len(self.config.windows_days)) * len(self.codes)
        return {"sex": sex, "hospital": hospital, "static": static, "events": events, "days": days,
                "counts": counts, "suspected": suspected}  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description; `from_dict` reads it back."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureVocabulary:
        config = FeatureConfig(**{**d["config"], "windows_days": tuple(d["config"]["windows_days"])})
        blocks = ("sex", "hospitals", "static", "codes", "suspected")
        return cls(
            config=config,
            **{k: tuple(d[k]) for k in blocks},
            **{k: d[k] for k in d if k not in blocks and k != "config"},
        )


@dataclass
class FeatureStats:
    """What `count_features` did with every record it read (before the prediction time)."""

    rows: int = 0  # label rows (matrix rows)
    rows_without_data: int = 0  # label rows whose subject is in no shard: all-zero rows, NaN age
    events_used: int = 0  # timed records counted into count_* columns
    events_dropped: int = 0  # timed records of codes outside the vocabulary (still in events_*)
    static_dropped: int = 0  # static / sex / hospital records of codes outside the vocabulary
    suspected_uncounted: int = 0  # suspected records of codes without a suspected: column
    nonzeros: int = 0
    shards: int = 0
    dropped_codes: dict[str, int] = field(default_factory=dict)  # the most frequent dropped codes -> records

    def summary(self) -> str:
        return (
            f"{self.rows} rows ({self.rows_without_data} without data), {self.events_used} events counted, "
            f"{self.events_dropped} events and {self.static_dropped} static records of codes outside the "
            f"vocabulary dropped, {self.suspected_uncounted} suspected records without a suspected column"
        )


# --- shards and labels ----------------------------------------------------------------------------


def _prepare_labels(labels: pl.DataFrame, what: str) -> pl.DataFrame:
    """subject_id (Int64), prediction_time (Datetime[us]) and the row index; errors name the bad value."""
    if not isinstance(labels, pl.DataFrame):
        raise TypeError(f"{what}: expected a polars DataFrame, got {type(labels).__name__}")
    missing = [c for c in ("subject_id", "prediction_time") if c not in labels.columns]
    if missing:
        raise ValueError(f"{what}: column(s) {missing} missing (found {labels.columns})")
    ptype = labels.schema["prediction_time"]
    if ptype == pl.Date:
        ptime = pl.col("prediction_time").cast(pl.Datetime("us"))
    elif isinstance(ptype, pl.Datetime) and ptype.time_zone is None:
        ptime = pl.col("prediction_time").cast(pl.Datetime("us"))
    else:
        raise ValueError(f"{what}: column prediction_time has type {ptype}; expected a timezone-naive Datetime")
    if not labels.schema["subject_id"].is_integer():
        raise ValueError(f"{what}: column subject_id has type {labels.schema['subject_id']}; expected Int64")
    out = labels.select(pl.col("subject_id").cast(pl.Int64), ptime).with_row_index(_ROW)
    for column in ("subject_id", "prediction_time"):
        nulls = out.filter(pl.col(column).is_null())
        if nulls.height:
            raise ValueError(f"{what}: {nulls.height} null value(s) in column {column} (first at row {nulls[_ROW][0]})")
    return out


def _subject_shards(events: Events) -> pl.DataFrame:
    """subject_id -> shard index; a subject in two shards is an error (MEDS keeps a subject in one)."""
    paths = events.paths
    parts = [
        events.scan(p).select("subject_id").unique().with_columns(shard=pl.lit(i, pl.UInt32))
        for i, p in enumerate(paths)
    ]
    found = pl.concat([part.collect() for part in parts]) if parts else pl.DataFrame()
    dup = found.filter(pl.col("subject_id").is_duplicated()).sort("subject_id", "shard")
    if dup.height:
        sid = dup["subject_id"][0]
        files = [str(paths[i]) for i in dup.filter(pl.col("subject_id") == sid)["shard"]]
        raise ValueError(f"subject_id {sid} appears in several shards ({files}); MEDS keeps a subject in one shard")
    return found


def _labels_by_shard(events: Events, labels: pl.DataFrame) -> tuple[dict[int, pl.DataFrame], int]:
    """The label rows of each shard, and how many rows have no shard at all."""
    placed = labels.join(_subject_shards(events), on="subject_id", how="left")
    without = placed.filter(pl.col("shard").is_null()).height
    groups = placed.drop_nulls("shard").partition_by("shard", as_dict=True, include_key=False)
    return {key[0]: frame for key, frame in groups.items()}, without


def _kind() -> pl.Expr:
    code = pl.col("code")
    return (
        pl.when(code == BIRTH_CODE)
        .then(BIRTH)
        .when(code.str.starts_with(SEX_PREFIX))
        .then(SEX)
        .when(code.str.starts_with(HOSPITAL_PREFIX))
        .then(HOSPITAL)
        .when(pl.col("time").is_null())
        .then(STATIC)
        .otherwise(EVENT)
        .cast(pl.UInt8)
    )


def _shard_groups(events: Events, path: Path, shard_labels: pl.DataFrame, windows: tuple[int, ...]) -> pl.DataFrame:
    """Per (label row, kind, code) of one shard: records, records in each window, suspected records, and
    microseconds from the earliest record to the prediction time. Only records that may be used count:
    static ones, and those strictly before the prediction time. Streamed: the joined records are never
    held in memory at once, only these groups."""
    before = pl.col("prediction_time") - pl.col("time")
    return (
        events.scan(path)
        .select("subject_id", "time", "code", "suspected")
        .join(shard_labels.lazy(), on="subject_id", how="inner")
        .filter(pl.col("time").is_null() | (pl.col("time") < pl.col("prediction_time")))
        .group_by(_ROW, _kind().alias("kind"), "code")
        .agg(
            pl.len().cast(pl.UInt32).alias("n_all"),
            *[(before <= dt.timedelta(days=w)).sum().cast(pl.UInt32).alias(f"n_{w}d") for w in windows],
            n_suspected=pl.col("suspected").sum().cast(pl.UInt32),
            earliest_us=before.dt.total_microseconds().max(),
        )
        .collect(engine="streaming")
    )


def _for_each_shard(
    root: Events | str | Path,
    labels: pl.DataFrame,
    windows: tuple[int, ...],
    fn: Callable[[pl.DataFrame], None],
    progress: bool,
    desc: str,
) -> tuple[int, int]:
    """FN(groups) for every shard holding label rows; returns (shards, label rows in no shard)."""
    events = open_events(root)
    paths = events.paths
    by_shard, without = _labels_by_shard(events, labels)
    bar = tqdm(total=labels.height, desc=desc, unit="row", disable=not progress, smoothing=0.1)
    for i, path in enumerate(paths):
        if i in by_shard:
            fn(_shard_groups(events, path, by_shard[i], windows))
            bar.update(by_shard[i].height)
    bar.update(without)
    bar.close()
    return len(paths), without


# --- vocabulary -------------------------------------------------------------------------------------


def fit_vocabulary(
    meds_root: Events | str | Path,
    train_labels: pl.DataFrame,
    config: FeatureConfig | None = None,
    *,
    progress: bool = False,
) -> FeatureVocabulary:
    """The feature columns, from the training rows' records strictly before their prediction times."""
    config = config or FeatureConfig()
    labels = _prepare_labels(train_labels, "train_labels")
    if labels.height == 0:
        raise ValueError("train_labels: no rows to fit the feature vocabulary on")
    parts: list[pl.DataFrame] = []

    def shard(groups: pl.DataFrame) -> None:
        # One group per (row, code); rows are disjoint across shards, so per-shard row counts add up.
        parts.append(
            groups.filter(pl.col("kind") != BIRTH)
            .group_by("kind", "code")
            .agg(
                rows=pl.len().cast(pl.UInt32),
                records=pl.col("n_all").sum(),
                suspected_rows=(pl.col("n_suspected") > 0).sum().cast(pl.UInt32),
            )
        )

    _for_each_shard(meds_root, labels, (), shard, progress, "vocabulary")
    schema = {"kind": pl.UInt8, "code": pl.String, "rows": pl.UInt32, "records": pl.UInt32, "suspected_rows": pl.UInt32}
    seen = pl.concat(parts, how="vertical_relaxed") if parts else pl.DataFrame(schema=schema)
    seen = seen.group_by("kind", "code").agg(pl.col("rows", "records", "suspected_rows").sum())
    kept = seen.filter(pl.col("rows") >= config.min_code_patients)

    def codes(kind: int) -> tuple[str, ...]:
        return tuple(sorted(c for c in kept.filter(pl.col("kind") == kind)["code"].to_list() if c is not None))

    suspected: tuple[str, ...] = ()
    if config.include_suspected_counts:
        events = seen.filter((pl.col("kind") == EVENT) & (pl.col("suspected_rows") >= config.min_code_patients))
        suspected = tuple(sorted(c for c in events["code"].to_list() if c is not None))
    rare = seen.filter(pl.col("rows") < config.min_code_patients)
    vocab = FeatureVocabulary(
        config=config,
        sex=codes(SEX),
        hospitals=codes(HOSPITAL),
        static=codes(STATIC),
        codes=codes(EVENT),
        suspected=suspected,
        train_rows=labels.height,
        codes_seen=seen.select(pl.col("code").n_unique()).item(),
        rare_codes=rare.select(pl.col("code").n_unique()).item(),
        rare_code_records=int(rare["records"].sum()),
    )
    log.info(
        "feature vocabulary: %d columns from %d training rows; %d of %d codes below %d rows (%d records) left out",
        vocab.n_columns, vocab.train_rows, vocab.rare_codes, vocab.codes_seen, config.min_code_patients,
        vocab.rare_code_records,
    )  # fmt: skip
    return vocab


# --- the matrix -------------------------------------------------------------------------------------


class _Triplets:
    """(row, column, value) parts of the sparse matrix, gathered shard by shard."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.vals: list[np.ndarray] = []

    def add(self, rows: pl.Series | np.ndarray, cols: pl.Series | np.ndarray, vals: pl.Series | np.ndarray) -> None:
        vals = np.asarray(vals, dtype=np.float32)
        keep = vals != 0  # NaN != 0: a missing age is stored explicitly, so LightGBM sees it as missing
        self.rows.append(np.asarray(rows, dtype=np.int64)[keep])
        self.cols.append(np.asarray(cols, dtype=np.int64)[keep])
        self.vals.append(vals[keep])

    def to_csr(self, shape: tuple[int, int]) -> sp.csr_matrix:
        rows = np.concatenate(self.rows) if self.rows else np.zeros(0, np.int64)
        cols = np.concatenate(self.cols) if self.cols else np.zeros(0, np.int64)
        vals = np.concatenate(self.vals) if self.vals else np.zeros(0, np.float32)
        self.rows, self.cols, self.vals = [], [], []
        order = np.lexsort((cols, rows))  # a canonical order, whatever order the shards came in
        rows, cols, vals = rows[order], cols[order], vals[order]
        if rows.size > 1 and np.any((np.diff(rows) == 0) & (np.diff(cols) == 0)):
            raise RuntimeError("count_features built a (row, column) entry twice; this is a bug")
        index = np.int32 if max(rows.size, shape[1]) < 2**31 else np.int64
        indptr = np.zeros(shape[0] + 1, dtype=index)
        np.cumsum(np.bincount(rows, minlength=shape[0]), out=indptr[1:])
        return sp.csr_matrix((vals, cols.astype(index), indptr), shape=shape)


class _Counter:
    """Turns one shard's records into triplets, following the vocabulary's column layout."""

    def __init__(self, vocab: FeatureVocabulary, n_rows: int, stats: FeatureStats) -> None:
        self.vocab, self.stats, self.out = vocab, stats, _Triplets()
        off = vocab._offsets
        self.windows = vocab.config.windows_days
        self.static_cols = pl.DataFrame(
            {
                "kind": [SEX] * len(vocab.sex) + [HOSPITAL] * len(vocab.hospitals) + [STATIC] * len(vocab.static),
                "code": [*vocab.sex, *vocab.hospitals, *vocab.static],
                "col": range(off["sex"], off["events"]),
            },
            schema={"kind": pl.UInt8, "code": pl.String, "col": pl.Int64},
        )
        self.code_index = pl.DataFrame(
            {"code": vocab.codes, "k": range(len(vocab.codes))}, schema={"code": pl.String, "k": pl.Int64}
        )
        self.suspected_cols = pl.DataFrame(
            {"code": vocab.suspected, "scol": range(off["suspected"], off["suspected"] + len(vocab.suspected))},
            schema={"code": pl.String, "scol": pl.Int64},
        )
        self.age = np.full(n_rows, np.nan, dtype=np.float32)
        self.days = np.full(n_rows, np.nan, dtype=np.float32)
        self.dropped: dict[str, int] = {}

    def __call__(self, groups: pl.DataFrame) -> None:
        self._age(groups.filter((pl.col("kind") == BIRTH) & pl.col("earliest_us").is_not_null()))
        self._static(groups.filter(pl.col("kind").is_in([SEX, HOSPITAL, STATIC])))
        events = groups.filter(pl.col("kind") == EVENT)
        self._totals(events)
        self._codes(events)

    def _age(self, births: pl.DataFrame) -> None:
        first = births.group_by(_ROW).agg(pl.col("earliest_us").max())  # the earliest MEDS_BIRTH record
        self.age[first[_ROW].to_numpy()] = first["earliest_us"].to_numpy() / US_PER_YEAR

    def _static(self, static: pl.DataFrame) -> None:
        present = static.join(self.static_cols, on=["kind", "code"], how="left")
        dropped = present.filter(pl.col("col").is_null())
        self.stats.static_dropped += int(dropped["n_all"].sum())
        self._note_dropped(dropped)
        present = present.drop_nulls("col")
        self.out.add(present[_ROW], present["col"], np.ones(present.height, np.float32))

    def _totals(self, events: pl.DataFrame) -> None:
        off = self.vocab._offsets["events"]
        names = ["n_all", *(f"n_{w}d" for w in self.windows)]
        totals = events.group_by(_ROW).agg(pl.col(names).sum(), pl.col("earliest_us").max())
        for j, name in enumerate(names):
            self.out.add(totals[_ROW], np.full(totals.height, off + j), totals[name])
        self.days[totals[_ROW].to_numpy()] = totals["earliest_us"].to_numpy() / US_PER_DAY

    def _codes(self, events: pl.DataFrame) -> None:
        per_code = events.join(self.code_index, on="code", how="left").join(self.suspected_cols, on="code", how="left")
        dropped = per_code.filter(pl.col("k").is_null())
        self.stats.events_dropped += int(dropped["n_all"].sum())
        self._note_dropped(dropped)
        self.stats.suspected_uncounted += int(per_code.filter(pl.col("scol").is_null())["n_suspected"].sum())
        counted = per_code.drop_nulls("k")
        self.stats.events_used += int(counted["n_all"].sum())
        base, n_codes = self.vocab._offsets["counts"], len(self.vocab.codes)
        k = counted["k"].to_numpy()
        for j, name in enumerate(["n_all", *(f"n_{w}d" for w in self.windows)]):
            self.out.add(counted[_ROW], base + j * n_codes + k, counted[name])
        susp = per_code.drop_nulls("scol")
        self.out.add(susp[_ROW], susp["scol"], susp["n_suspected"])

    def _note_dropped(self, dropped: pl.DataFrame) -> None:
        for code, n in dropped.group_by("code").agg(pl.col("n_all").sum()).iter_rows():
            self.dropped[code] = self.dropped.get(code, 0) + int(n)

    def finish(self, n_rows: int) -> sp.csr_matrix:
        rows = np.arange(n_rows)
        self.out.add(rows, np.zeros(n_rows, np.int64), self.age)
        self.out.add(rows, np.full(n_rows, self.vocab._offsets["days"]), self.days)
        return self.out.to_csr((n_rows, self.vocab.n_columns))


def count_features_with_stats(
    meds_root: Events | str | Path, labels: pl.DataFrame, vocab: FeatureVocabulary, *, progress: bool = False
) -> tuple[sp.csr_matrix, FeatureStats]:
    """The feature matrix (rows in the order of LABELS, float32) and what was counted and dropped."""
    prepared = _prepare_labels(labels, "labels")
    stats = FeatureStats(rows=prepared.height)
    counter = _Counter(vocab, prepared.height, stats)
    windows = vocab.config.windows_days
    stats.shards, stats.rows_without_data = _for_each_shard(meds_root, prepared, windows, counter, progress, "features")
    matrix = counter.finish(prepared.height)
    stats.nonzeros = matrix.nnz
    top = sorted(counter.dropped.items(), key=lambda kv: (-kv[1], str(kv[0])))[:20]
    stats.dropped_codes = {str(code): n for code, n in top}
    return matrix, stats


def count_features(
    meds_root: Events | str | Path, labels: pl.DataFrame, vocab: FeatureVocabulary, *, progress: bool = False
) -> sp.csr_matrix:
    """The feature matrix; the counts of dropped records are logged (use `count_features_with_stats` to keep them)."""
    matrix, stats = count_features_with_stats(meds_root, labels, vocab, progress=progress)
    log.info("count_features: %s", stats.summary())
    if stats.rows_without_data:
        log.warning("count_features: %d label rows have no records in %s", stats.rows_without_data, meds_root)
    return matrix
