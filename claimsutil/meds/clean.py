"""Repair and import: a copy of a MEDS dataset without the rows the validator names as repairable, and the
import of a user's dataset into the study (validated first, swapped in whole, never half-written).

    python -m claimsutil.meds clean IN OUT       # OUT: IN without the repairable rows, and a report per file

Repairable rows (`claimsutil.meds.validate.REPAIRABLE`), each dropped and counted by reason and file:
events before the subject's MEDS_BIRTH, events after the day of their MEDS_DEATH, events at or after the end
of the data (`claimsutil.meds.data_window`), and exact duplicate rows (the first copy is kept). Every other
column and row is copied unchanged; the metadata folder is copied as it is.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from claimsutil.meds import (
    BIRTH_CODE,
    DEFAULT_TAIL_SHARE,
    DataWindow,
    data_window,
    drop_reason,
    shard_paths,
)
from claimsutil.meds.validate import (
    DEFAULT_MAX_EXAMPLES,
    REPAIRABLE,
    MEDSValidationError,
    ValidationReport,
    error_text,
    validate_dataset,
)


@dataclass
class CleanReport:
    """Rows dropped by `clean_dataset`, per file and reason (every repairable reason listed)."""

    window: DataWindow
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)  # file -> reason -> rows
    rows_in: int = 0
    rows_out: int = 0

    def totals(self) -> dict[str, int]:
        out = dict.fromkeys(REPAIRABLE, 0)
        for counts in self.dropped.values():
            for reason, n in counts.items():
                out[reason] += n
        return out

    def lines(self) -> list[str]:
        lines = [f"{file}: " + ", ".join(f"{n} {reason}" for reason, n in counts.items() if n)
                 for file, counts in self.dropped.items() if any(counts.values())]  # fmt: skip
        totals = ", ".join(f"{n} {reason}" for reason, n in self.totals().items())
        lines.append(
            f"dropped {self.rows_in - self.rows_out} of {self.rows_in} rows ({totals}); {self.window.describe()}"
        )
        return lines


def _repair_reason(df: pl.DataFrame, end: dt.datetime) -> pl.Series:
    """Per row: the first repairable reason that drops it (null: kept)."""
    std = df.select(
        pl.col("subject_id").cast(pl.Int64),
        pl.col("time").cast(pl.Datetime("us")),
        pl.col("code").cast(pl.String),
    )
    birth = pl.col("time").filter(pl.col("code") == BIRTH_CODE).min().over("subject_id")
    duplicate = ~pl.struct(df.columns).is_first_distinct()
    reasons = std.with_columns(dup=df.select(duplicate).to_series()).select(
        pl.when(pl.col("time") < birth)
        .then(pl.lit("before_birth"))
        .otherwise(drop_reason(end))
        .fill_null(pl.when(pl.col("dup")).then(pl.lit("duplicate_rows")))
        .alias("reason")
    )
    return reasons["reason"]


def clean_dataset(src: str | Path, dst: str | Path, *, end: dt.datetime | None = None,
                  tail_share: float = DEFAULT_TAIL_SHARE) -> CleanReport:  # fmt: skip
    """Write DST (replaced): SRC without its repairable rows; return what was dropped, per file and reason."""
    src, dst = Path(src), Path(dst)
    _refuse_overlap(src, dst)
    window = data_window(src, end, tail_share)
    report = CleanReport(window)

    def write_shard(shard: Path, target: Path) -> None:
        rel = shard.relative_to(src).as_posix()
        df = pl.read_parquet(shard, hive_partitioning=False, glob=False)
        reason = _repair_reason(df, window.end)
        counts = dict(reason.drop_nulls().value_counts().iter_rows())
        report.dropped[rel] = {r: int(counts.get(r, 0)) for r in REPAIRABLE}
        kept = df.filter(reason.is_null())
        report.rows_in, report.rows_out = report.rows_in + df.height, report.rows_out + kept.height
        kept.write_parquet(target, compression="zstd")

    _write_copy(src, dst, write_shard, ".cleaning")
    return report


def _write_copy(src: Path, dst: Path, write_shard, suffix: str) -> None:
    """DST (replaced only when complete): WRITE_SHARD(shard, target) for every shard of SRC, and its metadata."""
    staging = dst.with_name(dst.name + suffix)
    _remove(staging)
    try:
        for shard in shard_paths(src):
            target = staging / shard.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_shard(shard, target)
        if (src / "metadata").is_dir():
            shutil.copytree(src / "metadata", staging / "metadata")
        _swap_in(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ---- import --------------------------------------------------------------------------------------


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _refuse_overlap(src: Path, dst: Path) -> None:
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: no such MEDS directory")
    src_abs, dst_abs = src.resolve(), dst.resolve()
    # Replacing DST must never delete the user's data, so the two trees may not overlap.
    if dst_abs.is_relative_to(src_abs) or src_abs.is_relative_to(dst_abs):
        raise ValueError(f"destination {dst} overlaps the source {src}")


def _swap_in(staging: Path, dst: Path) -> None:
    """Replace DST by the complete STAGING folder; DST is never missing or half-written."""
    old = dst.with_name(dst.name + ".previous")
    _remove(old)
    if dst.exists() or dst.is_symlink():
        dst.rename(old)
    staging.rename(dst)
    _remove(old)


def import_dataset(
    src: str | Path,
    dst: str | Path,
    *,
    on_invalid: str = "stop",
    end: dt.datetime | None = None,
    tail_share: float = DEFAULT_TAIL_SHARE,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    progress: bool = False,
) -> tuple[ValidationReport, CleanReport | None]:
    """Validate SRC and copy it to DST (replaced only when the import succeeds). With errors: ON_INVALID
    "stop" raises MEDSValidationError; "clean" imports a cleaned copy when every error is repairable (and the
    copy validates). Returns the report of what was imported and the clean report (None when not cleaned)."""
    src, dst = Path(src), Path(dst)
    _refuse_overlap(src, dst)
    report = validate_dataset(src, max_examples=max_examples, progress=progress, end=end, tail_share=tail_share)
    if report.ok:
        _write_copy(src, dst, shutil.copy2, ".importing")
        return report, None
    if on_invalid != "clean" or not report.repairable:
        hint = ""
        if report.repairable:
            hint = ("\nEvery error is repairable: set data.on_invalid: clean in params.yaml, or run "
                    f"`python -m claimsutil.meds clean {src} <out>` and import the copy.")  # fmt: skip
        raise MEDSValidationError(error_text(src, report) + hint)
    cleaned = dst.with_name(dst.name + ".cleaned")
    clean = clean_dataset(src, cleaned, end=end, tail_share=tail_share)
    after = validate_dataset(cleaned, max_examples=max_examples, end=end, tail_share=tail_share)
    if not after.ok:
        _remove(cleaned)
        raise MEDSValidationError(error_text(src, after) + "\n(after removing the repairable rows)")
    _swap_in(cleaned, dst)
    return after, clean
