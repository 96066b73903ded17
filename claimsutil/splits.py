r"""Patient-level splits of the study: train / validation / test, and whole hospitals held out.

    python -m claimsutil.splits --params params.yaml --meds data/meds --out data/splits \
        --metrics data/metrics/splits.json

Hospitals are held out by a seeded draw (`cohort.held_out_hospitals`, for the transfer experiments; none when
the data has no HOSPITAL/ codes, and the stage says so); every other patient is split by a hash of (seed,
subject id), so a patient's split depends on nothing but the seed and their id. The splits are their own DVC
stage because the transformer stages depend on them and on nothing else of the cohorts: adding a task never
re-pretrains a model. Exit codes: 0 written, 1 the data cannot be split, 2 a params error.

One split, everywhere: the MEDS data's own `metadata/subject_splits.parquet` says the same as the study. The
synthetic world is written with the study's rule (`meds_subject_splits`: train -> `train`, validation ->
`tuning`, test and the held-out hospitals' patients -> `held_out`, so no MEDS tool trains on a patient the study
tests on; the study's `splits.parquet` tells the two kinds of held-out patient apart). A user's dataset that
brings its own split file is split by it (`cohort.split_source: dataset`, the default, since other MEDS tools
will read it): `train`, `tuning` and `held_out` become train, validation and test; the held-out hospitals'
patients are then taken out of whichever split they were in (counted), and subjects the file does not list are
split by the study's rule (counted). `cohort.split_source: study` ignores the file.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import polars as pl

from claimsutil.config import CohortParams, ParamsError, load_params
from claimsutil.meds import SPLITS_FILE as MEDS_SPLITS_FILE
from claimsutil.meds import Events, open_events, subject_hospitals

SPLITS = ("train", "validation", "test", "held_out_hospital")
VOCABULARY_SPLITS = ("train", "validation")  # the pretraining patients: the vocabulary is theirs alone
SPLITS_FILE = "splits.parquet"
SPLIT_SOURCES = ("dataset", "study")
TO_MEDS = {"train": "train", "validation": "tuning", "test": "held_out", "held_out_hospital": "held_out"}
FROM_MEDS = {"train": "train", "tuning": "validation", "held_out": "test"}


class SplitError(ValueError):
    """The data cannot be split as params.yaml asks (e.g. more held-out hospitals than hospitals)."""


def uniform_hash(ids: np.ndarray, *key: int) -> np.ndarray:
    """A uniform [0, 1) number per id, fixed by (key, id): splitmix64, so no sharding or order changes it."""
    x = ids.astype(np.uint64)
    for k in key:
        x = x ^ np.uint64(k & 0xFFFFFFFFFFFFFFFF)
        with np.errstate(over="ignore"):
            x = x + np.uint64(0x9E3779B97F4A7C15)
            x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def task_key(name: str) -> int:
    """A stable integer for a name (seeds per task, per purpose)."""
    return zlib.crc32(name.encode("utf-8"))


def held_out_count(hospitals: pl.DataFrame, params: CohortParams) -> tuple[int, str | None]:
    """How many hospitals are held out, and a note when that differs from params (no HOSPITAL/ codes)."""
    names = hospitals["hospital"].drop_nulls().unique()
    if params.held_out_hospitals and names.len() == 0:
        return 0, (f"the data has no HOSPITAL/ codes: no hospital is held out (cohort.held_out_hospitals = "
                   f"{params.held_out_hospitals} needs them; the transfer study has no patients)")  # fmt: skip
    if params.held_out_hospitals and names.len() <= params.held_out_hospitals:
        raise SplitError(
            f"cohort.held_out_hospitals = {params.held_out_hospitals} but the data has {names.len()} hospital(s); "
            "at least one must remain for training"
        )
    return params.held_out_hospitals, None


def assign_splits(hospitals: pl.DataFrame, params: CohortParams) -> pl.DataFrame:
    """Columns subject_id, hospital, split: whole hospitals held out by a seeded draw, the other patients
    split by a hash of (seed, subject id)."""
    n_held, _ = held_out_count(hospitals, params)
    names = sorted(h for h in hospitals["hospital"].unique().to_list() if h is not None)
    rng = np.random.default_rng([params.seed, task_key("held_out_hospitals")])
    held = sorted(rng.choice(names, size=n_held, replace=False).tolist()) if n_held else []
    u = uniform_hash(hospitals["subject_id"].to_numpy(), params.seed, task_key("split"))
    train, validation = params.split["train"], params.split["validation"]
    split = np.where(u < train, "train", np.where(u < train + validation, "validation", "test"))
    return hospitals.with_columns(
        split=pl.when(pl.col("hospital").is_in(held)).then(pl.lit("held_out_hospital")).otherwise(pl.Series(split))
    )


def build_splits(events: Events | str | Path, params: CohortParams,
                 meds_root: str | Path | None = None) -> tuple[pl.DataFrame, str | None, dict]:  # fmt: skip
    """The splits of every subject in EVENTS, the note of `held_out_count`, and how they were made: from the
    dataset's own split file at MEDS_ROOT (`cohort.split_source: dataset`, when the file exists) or by the
    study's rule. The third value is the stage's metrics about that (`split_source` and counts)."""
    hospitals = subject_hospitals(open_events(events))
    _, note = held_out_count(hospitals, params)
    study = assign_splits(hospitals, params)
    path = Path(meds_root) / MEDS_SPLITS_FILE if meds_root is not None else None
    if params.split_source == "study" or path is None or not path.is_file():
        why = "cohort.split_source: study" if params.split_source == "study" else "the dataset has no split file"
        return study, note, {"split_source": f"the study's hashed rule ({why})"}
    splits, info = from_dataset_splits(study, path)
    return splits, note, info


def from_dataset_splits(study: pl.DataFrame, path: Path) -> tuple[pl.DataFrame, dict]:
    """The study's splits (STUDY: subject_id, hospital, split by the study's rule) replaced by the dataset's
    split file at PATH: MEDS names mapped (`FROM_MEDS`); a name outside them stops with the file, row and value;
    held-out hospitals stay held out whatever the file says; unlisted subjects keep the study's split."""
    given = pl.read_parquet(path, columns=["subject_id", "split"]).with_row_index("row")
    bad = given.filter(~pl.col("split").is_in(list(FROM_MEDS)) | pl.col("subject_id").is_null())
    if bad.height:
        row = bad.row(0, named=True)
        column, value = ("subject_id", None) if row["subject_id"] is None else ("split", row["split"])
        raise SplitError(f"{path}: row {row['row']}, column {column}: {value!r} is not a MEDS split name "
                         f"({', '.join(FROM_MEDS)}); {bad.height:,} row(s) like it. Rename them, or set "
                         "cohort.split_source: study to split by the study's rule")  # fmt: skip
    dup = given.filter(pl.col("subject_id").is_duplicated())
    if dup.height:
        row = dup.row(0, named=True)
        raise SplitError(f"{path}: row {row['row']}, column subject_id: {row['subject_id']} is listed more than "
                         f"once ({dup['subject_id'].n_unique():,} subject(s) so)")  # fmt: skip
    given = given.select("subject_id", meds_split="split", given_split=pl.col("split").replace_strict(FROM_MEDS))
    joined = study.join(given, on="subject_id", how="left")
    held = pl.col("split") == "held_out_hospital"
    out = joined.with_columns(
        split=pl.when(held | pl.col("given_split").is_null()).then(pl.col("split")).otherwise(pl.col("given_split"))
    )
    taken = joined.filter(held & pl.col("given_split").is_not_null()).group_by("meds_split").len().sort("meds_split")
    info = {
        "split_source": "the dataset's metadata/subject_splits.parquet (cohort.split_source: dataset)",
        "subjects_not_in_split_file": int(joined["given_split"].is_null().sum()),
        "held_out_hospital_patients_taken_from": {name: int(n) for name, n in taken.iter_rows()},  # by the file's names
        "split_file_subjects_not_in_data": int(given.join(study, on="subject_id", how="anti").height),
    }
    return out.select(study.columns), info


def meds_subject_splits(splits: pl.DataFrame) -> pl.DataFrame:
    """The study's splits as MEDS writes them (subject_id int64, split string; `TO_MEDS`), sorted by subject."""
    return splits.select(pl.col("subject_id").cast(pl.Int64), pl.col("split").replace_strict(TO_MEDS)).sort(
        "subject_id"
    )


def read_splits(directory: str | Path) -> pl.DataFrame:
    """The splits written by the stage: subject_id, hospital, split."""
    path = Path(directory) / SPLITS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no splits (the `splits` stage writes them)")
    return pl.read_parquet(path)


def subject_ids(splits: pl.DataFrame, names: tuple[str, ...]):
    """Subject ids (numpy) of the patients in the splits NAMES."""
    return splits.filter(pl.col("split").is_in(list(names)))["subject_id"].to_numpy()


def split_table(splits: pl.DataFrame) -> pl.DataFrame:
    """Patients per split (a report table: apply the small-cell rule before showing it)."""
    return pl.DataFrame({"split": list(SPLITS), "patients": list(split_counts(splits).values())},
                        schema={"split": pl.String, "patients": pl.Int64})  # fmt: skip


def split_counts(splits: pl.DataFrame) -> dict[str, int]:
    counts = dict(splits.group_by("split").len().iter_rows())
    return {s: int(counts.get(s, 0)) for s in SPLITS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m claimsutil.splits", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=None, help="params.yaml (the cohort and data sections)")
    ap.add_argument("--meds", required=True, help="MEDS root")
    ap.add_argument("--out", required=True, help="output folder (splits.parquet)")
    ap.add_argument("--metrics", default=None, help="JSON summary of the stage")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
        events = Events(args.meds, params.data.end_date, params.data.end_tail_share)
        splits, note, source = build_splits(events, params.cohort, args.meds)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (SplitError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits.write_parquet(out / SPLITS_FILE)
    summary = {"patients": splits.height, **split_counts(splits), "held_out_hospitals": sorted(
        splits.filter(pl.col("split") == "held_out_hospital")["hospital"].unique().to_list())}  # fmt: skip
    summary |= source
    if note:
        summary["note"] = note
        print(f"note: {note}")
    if args.metrics:
        Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out / SPLITS_FILE}: " + ", ".join(f"{k} {v:,}" for k, v in split_counts(splits).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
