"""Report output shared by every stage: the small-cell rule, tables (CSV + Markdown), metrics JSON, figures.

Reports never show subject ids, and any count below the small-cell threshold is shown as "<10" (the usual
rule for claims data). Figures are written as PNG and SVG with fixed metadata, so reruns give the same bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import polars as pl
from matplotlib.figure import Figure


def suppress_small(
    df: pl.DataFrame,
    min_cell: int = 10,
    derived: Mapping[str, Sequence[str]] | None = None,
    keep: Sequence[str] = (),
) -> pl.DataFrame:
    """Integer (count) columns with values below MIN_CELL shown as "<MIN_CELL" (columns become strings).

    DERIVED maps a column computed from counts (a share) to those counts: it is nulled wherever one of
    them is suppressed. KEEP names integer columns that count no people or events (e.g. codes): shown as
    they are (as strings, like every integer column of the result, so `write_table` sees it was checked).
    Refuses a table with a subject_id column.
    """
    if "subject_id" in df.columns:
        raise ValueError("a report table must not hold subject ids")
    counts = [c for c, dtype in df.schema.items() if dtype.is_integer() and c not in keep]
    derived = {
        name: [sources] if isinstance(sources, str) else list(sources) for name, sources in (derived or {}).items()
    }
    for name, sources in derived.items():
        missing = [s for s in [name, *sources] if s not in df.columns or (s != name and s not in counts)]
        if missing:
            raise ValueError(f"derived column {name!r}: {missing} are not count columns of the table")
    marker = f"<{min_cell}"
    return df.with_columns(
        *(
            pl.when(pl.any_horizontal([pl.col(s) < min_cell for s in sources]))
            .then(None)
            .otherwise(pl.col(name))
            .alias(name)
            for name, sources in derived.items()
        ),
        *(
            pl.when(pl.col(c) < min_cell).then(pl.lit(marker)).otherwise(pl.col(c).cast(pl.String)).alias(c)
            for c in counts
        ),
        *(pl.col(c).cast(pl.String) for c, dtype in df.schema.items() if dtype.is_integer() and c in keep),
    )


def format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value).replace("|", "\\|")


def is_numeric_column(column: pl.Series) -> bool:
    """Numbers, or suppressed counts ("12", "<10")."""
    if column.dtype.is_numeric():
        return True
    return column.dtype == pl.String and bool(column.drop_nulls().str.contains(r"^<?\d+$").all())


def markdown_table(df: pl.DataFrame) -> str:
    """DF as a GitHub Markdown table, numeric columns right-aligned."""
    align = ["---:" if is_numeric_column(df[c]) else "---" for c in df.columns]
    lines = ["| " + " | ".join(df.columns) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(format_cell(v) for v in row) + " |" for row in df.iter_rows()]
    return "\n".join(lines) + "\n"


class SmallCellError(ValueError):
    """A report table would show a count below the small-cell threshold."""


def check_small_cells(df: pl.DataFrame, min_cell: int = 10, keep: Sequence[str] = (), what: str = "table") -> None:
    """Refuse DF if an integer column not named in KEEP holds a value from 1 to MIN_CELL - 1: counts must go
    through `suppress_small` (which makes them strings) before a report shows them. KEEP names integer columns
    that count no people or events (layers, runs, codes, epochs)."""
    for column, dtype in df.schema.items():
        if dtype.is_integer() and column not in keep:
            small = df.filter((pl.col(column) > 0) & (pl.col(column) < min_cell))
            if small.height:
                raise SmallCellError(
                    f"{what}: column {column} shows {small.height} count(s) below {min_cell} (e.g. "
                    f"{small[column][0]}); pass the table through report.suppress_small, or name the column in keep "
                    "if it counts no people or events"
                )


def write_table(
    df: pl.DataFrame, path_stem: str | Path, *, min_cell: int = 10, keep: Sequence[str] = ()
) -> pl.DataFrame:
    """Write DF (already suppressed: see `check_small_cells`) as PATH_STEM.csv and PATH_STEM.md; returns DF for
    display."""
    if "subject_id" in df.columns:
        raise ValueError(f"{path_stem}: a report table must not hold subject ids")
    check_small_cells(df, min_cell, keep, what=str(path_stem))
    path_stem = Path(path_stem)
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    df.write_csv(f"{path_stem}.csv", float_precision=6)
    Path(f"{path_stem}.md").write_text(markdown_table(df), encoding="utf-8")
    return df


def write_metrics(metrics: Mapping[str, Any], path: str | Path) -> Path:
    """METRICS as indented, key-sorted JSON (what `dvc metrics show` reads)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(metrics), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def save_figure(fig: Figure, path_stem: str | Path) -> list[Path]:
    """Write FIG as PATH_STEM.png and PATH_STEM.svg (no timestamps, fixed SVG ids: same bytes each run)."""
    path_stem = Path(path_stem)
    path_stem.parent.mkdir(parents=True, exist_ok=True)
    png, svg = Path(f"{path_stem}.png"), Path(f"{path_stem}.svg")
    with matplotlib.rc_context({"svg.hashsalt": "claimsutil"}):
        fig.savefig(png, dpi=150, metadata={"Software": None})
        fig.savefig(svg, metadata={"Date": None})
    return [png, svg]
