"""Count features: exact counts on hand-built timelines, no leakage, shard invariance, other vocabularies."""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from claimsutil.config import SynthParams
from claimsutil.features import (
    FeatureConfig,
    FeatureVocabulary,
    count_features,
    count_features_with_stats,
    fit_vocabulary,
)
from claimsutil.meds import CERTAINTY_COLUMN, SUSPECTED, shard_paths

T = dt.datetime(2020, 6, 1)  # the usual prediction time
DAY = dt.timedelta(days=1)
US = dt.timedelta(microseconds=1)
AMLODIPINE = "YJ/2171022F1053"

SCHEMA = pa.schema(
    [
        pa.field("subject_id", pa.int64(), nullable=False),
        pa.field("time", pa.timestamp("us")),
        pa.field("code", pa.string(), nullable=False),
        pa.field("numeric_value", pa.float32()),
        pa.field(CERTAINTY_COLUMN, pa.string()),
    ]
)


def rec(sid: int, time: dt.datetime | None, code: str, suspected: bool = False) -> tuple:
    return (sid, time, code, None, SUSPECTED if suspected else None)


RECORDS = [
    # Subject 1: female, H07, exactly 60 years old at T; events on the window boundaries.
    rec(1, None, "GENDER/F"),
    rec(1, None, "HOSPITAL/H07"),
    rec(1, dt.datetime(1960, 6, 1), "MEDS_BIRTH"),
    rec(1, T - 800 * DAY, "COVERAGE/START"),
    rec(1, T - 400 * DAY, "ICD10/I10"),
    rec(1, T - 365 * DAY, "ICD10/I10"),  # in the 365-day window (its lower bound is inclusive)
    rec(1, T - 200 * DAY, "ICD10/E11.9", suspected=True),
    rec(1, T - 90 * DAY, "ICD10/I10"),
    rec(1, T - 31 * DAY, "ICD10/I10"),
    rec(1, T - 30 * DAY, "ICD10/I10"),
    rec(1, T - 10 * DAY, "ICD10/E11.9", suspected=True),
    rec(1, T - 10 * DAY, AMLODIPINE),
    rec(1, T - 5 * DAY, "ICD10/E11.9"),
    rec(1, T - 5 * DAY, AMLODIPINE),
    rec(1, T, "ICD10/I10"),  # at the prediction time: not used
    rec(1, T + DAY, "LATE/CODE"),  # after it: not used, and no column from it
    # Subject 2: male, H01; two label rows (T and T - 60 days).
    rec(2, None, "GENDER/M"),
    rec(2, None, "HOSPITAL/H01"),
    rec(2, dt.datetime(1990, 6, 1), "MEDS_BIRTH"),
    rec(2, T - 100 * DAY, "ICD10/I10"),
    rec(2, T - 50 * DAY, "RARE/X"),
    # Subject 3: no birth, no sex; another static code.
    rec(3, None, "HOSPITAL/H07"),
    rec(3, None, "STATIC/X"),
    rec(3, T - 20 * DAY, "ICD10/I10"),
    # Subject 5: in the data, not in the labels.
    rec(5, None, "GENDER/F"),
    rec(5, T - 20 * DAY, "ONLY/UNLABELLED"),
]

# Rows in a deliberately unsorted order; subject 4 has no records at all.
LABELS = pl.DataFrame(
    {
        "subject_id": [3, 1, 4, 2, 2],
        "prediction_time": [T, T, T, T - 60 * DAY, T],
        "boolean_value": [True, False, False, True, False],
    },
    schema={"subject_id": pl.Int64, "prediction_time": pl.Datetime("us"), "boolean_value": pl.Boolean},
)
ROW = {"s3": 0, "s1": 1, "s4": 2, "s2_early": 3, "s2": 4}


def write_meds(root: Path, records: list[tuple], shards: list[list[int]] | None = None, certainty: bool = True) -> Path:
    """Write RECORDS as MEDS shards (default: subjects 1-2 and 3-5), each sorted by subject then time."""
    shards = shards or [[1, 2], [3, 4, 5]]
    if (root / "data").exists():
        shutil.rmtree(root / "data")
    (root / "data").mkdir(parents=True)
    columns = {"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.String, "numeric_value": pl.Float32,
               CERTAINTY_COLUMN: pl.String}  # fmt: skip
    df = pl.DataFrame(records, schema=columns, orient="row")
    df = df.sort("subject_id", "time", nulls_last=False, maintain_order=True)
    schema = SCHEMA if certainty else SCHEMA.remove(SCHEMA.get_field_index(CERTAINTY_COLUMN))
    for i, subjects in enumerate(shards):
        part = df.filter(pl.col("subject_id").is_in(subjects)).to_arrow().select(schema.names).cast(schema)
        pq.write_table(part, root / "data" / f"shard-{i}.parquet")
    return root


def features_of(X: sp.csr_matrix, vocab: FeatureVocabulary, row: int) -> dict[str, float]:
    """The stored entries of one row, by name (age separately: it may be NaN)."""
    start, end = X.indptr[row], X.indptr[row + 1]
    return {vocab.names[c]: float(v) for c, v in zip(X.indices[start:end], X.data[start:end], strict=True)}


def same_matrix(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and np.array_equal(a.indptr, b.indptr)
        and np.array_equal(a.indices, b.indices)
        and np.array_equal(a.data, b.data, equal_nan=True)
    )


@pytest.fixture()
def meds_root(tmp_path: Path) -> Path:
    return write_meds(tmp_path / "meds", RECORDS)


ALL_ROWS = FeatureConfig(min_code_patients=1)


def test_column_layout(meds_root: Path) -> None:
    vocab = fit_vocabulary(meds_root, LABELS, ALL_ROWS)
    codes = ["COVERAGE/START", "ICD10/E11.9", "ICD10/I10", "RARE/X", AMLODIPINE]
    assert vocab.names == (
        "age",
        "sex:F",
        "sex:M",
        "hospital:H01",
        "hospital:H07",
        "static:STATIC/X",
        "events_all",
        "events_30d",
        "events_90d",
        "events_365d",
        "days_since_first_event",
        *(f"count_{w}:{c}" for w in ("all", "30d", "90d", "365d") for c in codes),
        "suspected:ICD10/E11.9",
    )
    assert (vocab.train_rows, vocab.codes_seen, vocab.rare_codes) == (5, 10, 0)  # no LATE/CODE, ONLY/UNLABELLED
    again = FeatureVocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again == vocab and again.names == vocab.names


def test_exact_counts(meds_root: Path) -> None:
    vocab = fit_vocabulary(meds_root, LABELS, ALL_ROWS)
    X, stats = count_features_with_stats(meds_root, LABELS, vocab)
    assert X.shape == (5, vocab.n_columns) and X.dtype == np.float32 and isinstance(X, sp.csr_matrix)

    s1 = features_of(X, vocab, ROW["s1"])
    assert s1.pop("age") == pytest.approx(60.0, abs=1e-5)  # 21915 days / 365.25
    assert s1 == {
        "sex:F": 1,
        "hospital:H07": 1,
        "events_all": 11,  # MEDS_BIRTH and the records at / after T are not events here
        "events_30d": 5,
        "events_90d": 7,
        "events_365d": 9,
        "days_since_first_event": 800,
        "count_all:COVERAGE/START": 1,
        "count_all:ICD10/I10": 5,
        "count_30d:ICD10/I10": 1,
        "count_90d:ICD10/I10": 3,
        "count_365d:ICD10/I10": 4,
        "count_all:ICD10/E11.9": 3,  # suspected records count here too
        "count_30d:ICD10/E11.9": 2,
        "count_90d:ICD10/E11.9": 2,
        "count_365d:ICD10/E11.9": 3,
        "suspected:ICD10/E11.9": 2,
        f"count_all:{AMLODIPINE}": 2,
        f"count_30d:{AMLODIPINE}": 2,
        f"count_90d:{AMLODIPINE}": 2,
        f"count_365d:{AMLODIPINE}": 2,
    }

    s2 = features_of(X, vocab, ROW["s2"])
    age_2 = (T - dt.datetime(1990, 6, 1)).days / 365.25
    assert s2.pop("age") == pytest.approx(age_2, rel=1e-6)
    assert s2 == {
        "sex:M": 1,
        "hospital:H01": 1,
        "events_all": 2,
        "events_90d": 1,
        "events_365d": 2,
        "days_since_first_event": 100,
        "count_all:ICD10/I10": 1,
        "count_365d:ICD10/I10": 1,
        "count_all:RARE/X": 1,
        "count_90d:RARE/X": 1,
        "count_365d:RARE/X": 1,
    }
    s2_early = features_of(X, vocab, ROW["s2_early"])  # 60 days earlier: RARE/X (T - 50 days) is in its future
    assert s2_early.pop("age") == pytest.approx(age_2 - 60 / 365.25, rel=1e-6)
    assert s2_early == {
        "sex:M": 1,
        "hospital:H01": 1,
        "events_all": 1,
        "events_90d": 1,
        "events_365d": 1,
        "days_since_first_event": 40,
        "count_all:ICD10/I10": 1,
        "count_90d:ICD10/I10": 1,
        "count_365d:ICD10/I10": 1,
    }

    s3 = features_of(X, vocab, ROW["s3"])  # no birth: NaN age (stored, so LightGBM sees it as missing); no sex
    assert math.isnan(s3.pop("age"))
    assert s3 == {
        "hospital:H07": 1,
        "static:STATIC/X": 1,
        "events_all": 1,
        "events_30d": 1,
        "events_90d": 1,
        "events_365d": 1,
        "days_since_first_event": 20,
        "count_all:ICD10/I10": 1,
        "count_30d:ICD10/I10": 1,
        "count_90d:ICD10/I10": 1,
        "count_365d:ICD10/I10": 1,
    }

    s4 = features_of(X, vocab, ROW["s4"])  # no records at all
    assert math.isnan(s4.pop("age")) and math.isnan(s4.pop("days_since_first_event")) and s4 == {}
    assert (stats.rows, stats.rows_without_data, stats.shards) == (5, 1, 2)
    assert (stats.events_used, stats.events_dropped, stats.static_dropped, stats.suspected_uncounted) == (15, 0, 0, 0)


def test_rare_and_unknown_codes_are_dropped_and_counted(meds_root: Path) -> None:
    vocab = fit_vocabulary(meds_root, LABELS, FeatureConfig(min_code_patients=2))
    # Rows having each code: I10 4, GENDER/M 2, H01 2, H07 2; the rest 1 (below the threshold).
    assert (vocab.sex, vocab.hospitals, vocab.static) == (("GENDER/M",), ("HOSPITAL/H01", "HOSPITAL/H07"), ())
    assert (vocab.codes, vocab.suspected) == (("ICD10/I10",), ())
    assert (vocab.codes_seen, vocab.rare_codes, vocab.rare_code_records) == (10, 6, 9)
    X, stats = count_features_with_stats(meds_root, LABELS, vocab)
    # Dropped: E11.9 x3, amlodipine x2, COVERAGE/START, RARE/X (row s2 only); static GENDER/F, STATIC/X.
    assert (stats.events_used, stats.events_dropped, stats.static_dropped) == (8, 7, 2)
    assert stats.suspected_uncounted == 2
    assert stats.dropped_codes == {"ICD10/E11.9": 3, AMLODIPINE: 2, "COVERAGE/START": 1, "GENDER/F": 1,
                                   "RARE/X": 1, "STATIC/X": 1}  # fmt: skip
    s1 = features_of(X, vocab, ROW["s1"])
    assert s1["events_all"] == 11  # totals still count every event, in the vocabulary or not
    assert "sex:F" not in vocab.names and s1["count_all:ICD10/I10"] == 5


def test_vocabulary_uses_training_rows_before_prediction_time_only(meds_root: Path) -> None:
    vocab = fit_vocabulary(meds_root, LABELS.filter(pl.col("subject_id") == 1), ALL_ROWS)
    assert vocab.codes == ("COVERAGE/START", "ICD10/E11.9", "ICD10/I10", AMLODIPINE)  # no LATE/CODE, no RARE/X
    assert (vocab.sex, vocab.hospitals, vocab.train_rows) == (("GENDER/F",), ("HOSPITAL/H07",), 1)
    X, stats = count_features_with_stats(meds_root, LABELS, vocab)
    assert stats.events_dropped == 1 and stats.dropped_codes["RARE/X"] == 1
    assert stats.static_dropped == 5  # GENDER/M and HOSPITAL/H01 in both rows of subject 2, STATIC/X
    assert features_of(X, vocab, ROW["s2"])["count_all:ICD10/I10"] == 1


def test_no_leakage(meds_root: Path, tmp_path: Path) -> None:
    vocab = fit_vocabulary(meds_root, LABELS, ALL_ROWS)
    X = count_features(meds_root, LABELS, vocab)
    future = [
        rec(1, T, "ICD10/I10"),
        rec(1, T, "NEW/AT_T"),
        rec(1, T + US, "ICD10/E11.9", suspected=True),
        rec(1, T + 30 * DAY, AMLODIPINE),
        rec(1, T + DAY, "MEDS_DEATH"),
        rec(3, T, "ICD10/I10"),
        rec(3, T + 365 * DAY, "NEW/LATER"),
        rec(2, T - 60 * DAY, "ICD10/N18.9"),  # at the early row's prediction time: before the later row's
    ]
    planted = write_meds(tmp_path / "planted", RECORDS + future)
    assert fit_vocabulary(planted, LABELS.filter(pl.col("subject_id") != 2), ALL_ROWS) == fit_vocabulary(
        meds_root, LABELS.filter(pl.col("subject_id") != 2), ALL_ROWS
    )
    Y = count_features(planted, LABELS, vocab)
    early, late = ROW["s2_early"], ROW["s2"]
    keep = np.setdiff1d(np.arange(X.shape[0]), [late])
    assert same_matrix(X[keep], Y[keep])  # N18.9 is not in the vocabulary; only row s2 saw a new event
    assert features_of(Y, vocab, late)["events_all"] == features_of(X, vocab, late)["events_all"] + 1
    assert features_of(Y, vocab, early) == features_of(X, vocab, early)

    # One microsecond before the prediction time is history.
    just_before = write_meds(tmp_path / "before", RECORDS + [rec(1, T - US, "ICD10/I10")])
    Z = count_features(just_before, LABELS, vocab)
    s1_old, s1_new = features_of(X, vocab, ROW["s1"]), features_of(Z, vocab, ROW["s1"])
    diff = {name for name in s1_old.keys() | s1_new.keys() if s1_old.get(name) != s1_new.get(name)}
    assert diff == {"events_all", "events_30d", "events_90d", "events_365d"} | {
        f"count_{w}:ICD10/I10" for w in ("all", "30d", "90d", "365d")
    }
    assert s1_new["count_30d:ICD10/I10"] == s1_old["count_30d:ICD10/I10"] + 1
    assert same_matrix(Z[[0, 2, 3, 4]], X[[0, 2, 3, 4]])


def test_shard_count_invariance(meds_root: Path, tmp_path: Path) -> None:
    one = write_meds(tmp_path / "one", RECORDS, shards=[[1, 2, 3, 4, 5]])
    three = write_meds(tmp_path / "three", RECORDS, shards=[[1], [2, 3], [5]])
    vocabs = [fit_vocabulary(root, LABELS, ALL_ROWS) for root in (meds_root, one, three)]
    assert vocabs[0] == vocabs[1] == vocabs[2]
    matrices = [count_features(root, LABELS, vocabs[0]) for root in (meds_root, one, three, meds_root)]
    assert all(same_matrix(matrices[0], m) for m in matrices[1:])  # the last one: a rerun, for determinism


def test_shard_count_invariance_on_synthetic_claims(tmp_path: Path) -> None:
    from claimsutil.bench import stand_in_labels
    from claimsutil.synth import generate

    roots = []
    for shard_size in (200, 600):  # 3 shards vs 1; the generator writes the same records either way
        root = tmp_path / f"meds-{shard_size}"
        generate(SynthParams(patients=600, seed=11, block_size=200, shard_size=shard_size, workers=1), root,
                 tmp_path / f"truth-{shard_size}", progress=False)  # fmt: skip
        roots.append(root)
    assert [len(shard_paths(r)) for r in roots] == [3, 1]
    labels = stand_in_labels(roots[0])
    train = labels.filter(pl.col("subject_id") % 10 < 7)
    vocab = fit_vocabulary(roots[0], train, FeatureConfig())
    assert vocab == fit_vocabulary(roots[1], train, FeatureConfig())
    assert vocab.suspected and vocab.hospitals and vocab.sex == ("GENDER/F", "GENDER/M")
    (X, sx), (Y, sy) = (count_features_with_stats(r, labels, vocab) for r in roots)
    assert same_matrix(X, Y) and sx.events_dropped == sy.events_dropped and sx.shards == 3
    assert X.shape == (labels.height, vocab.n_columns) and X.nnz == sx.nonzeros


def test_dataset_without_certainty_column(tmp_path: Path) -> None:
    root = write_meds(tmp_path / "meds", RECORDS, certainty=False)
    vocab = fit_vocabulary(root, LABELS, ALL_ROWS)
    assert vocab.suspected == () and not any(n.startswith("suspected:") for n in vocab.names)
    assert features_of(count_features(root, LABELS, vocab), vocab, ROW["s1"])["count_all:ICD10/E11.9"] == 3


def test_other_vocabularies(static_meds: Path) -> None:
    """The meds-testing-helpers sample: lab codes with values, EYE_COLOR static codes, no GENDER/HOSPITAL."""
    events = pl.concat([pl.read_parquet(p) for p in shard_paths(static_meds)])
    labels = (
        events.filter(pl.col("time").is_not_null())
        .group_by("subject_id")
        .agg(prediction_time=pl.col("time").max(), boolean_value=pl.lit(True))
        .sort("subject_id")
    )
    vocab = fit_vocabulary(static_meds, labels, ALL_ROWS)
    assert vocab.sex == () and vocab.hospitals == () and vocab.suspected == ()
    assert "static:HEIGHT" in vocab.names and "count_all:HR" in vocab.names
    X, stats = count_features_with_stats(static_meds, labels, vocab)
    assert stats.rows_without_data == 0 and stats.events_dropped == 0
    first = labels.row(0, named=True)
    hr_before = events.filter(
        (pl.col("subject_id") == first["subject_id"])
        & (pl.col("code") == "HR")
        & (pl.col("time") < first["prediction_time"])
    ).height
    row = features_of(X, vocab, 0)
    assert row["count_all:HR"] == hr_before and 0 < row["age"] < 120 and row["static:HEIGHT"] == 1


def test_bad_labels_and_config(meds_root: Path) -> None:
    vocab = fit_vocabulary(meds_root, LABELS, ALL_ROWS)
    with pytest.raises(ValueError, match=r"column\(s\) \['prediction_time'\] missing"):
        count_features(meds_root, LABELS.drop("prediction_time"), vocab)
    with pytest.raises(ValueError, match="1 null value.*prediction_time.*row 2"):
        count_features(meds_root, LABELS.with_columns(pl.when(pl.col("subject_id") == 4).then(None)
                                                      .otherwise(pl.col("prediction_time")).alias("prediction_time")),
                       vocab)  # fmt: skip
    with pytest.raises(ValueError, match="timezone-naive"):
        count_features(meds_root, LABELS.with_columns(pl.col("prediction_time").dt.replace_time_zone("UTC")), vocab)
    with pytest.raises(ValueError, match="windows_days"):
        FeatureConfig(windows_days=(30, 0))
    with pytest.raises(ValueError, match="min_code_patients"):
        FeatureConfig(min_code_patients=0)


def test_subject_in_two_shards_is_an_error(tmp_path: Path) -> None:
    root = write_meds(tmp_path / "meds", RECORDS, shards=[[1, 2], [2, 3, 5]])
    with pytest.raises(ValueError, match=r"subject_id 2 appears in several shards .*shard-0.*shard-1"):
        fit_vocabulary(root, LABELS, ALL_ROWS)
    with pytest.raises(ValueError, match="no rows"):
        fit_vocabulary(root, LABELS.head(0), ALL_ROWS)
