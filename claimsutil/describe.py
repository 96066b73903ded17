"""Describe a MEDS claims dataset: the tables, figures and metrics of the data report (notebook 00).

Every function streams the shards one at a time and aggregates per shard; a subject lives in one
shard, so per-patient results add up across shards and memory stays bounded by one shard. Results
are small DataFrames or dicts without subject ids. Apply `suppress_small` before a table is shown
or written: reports show any count below the small-cell threshold as "<10".

Conventions of our built-in claims that a user's data may lack (each function degrades to empty
results or fallbacks): ICD10/ diagnoses, YJ/ drugs, GENDER/F|M, HOSPITAL/Hxx, COVERAGE/START|END.
"""

from __future__ import annotations

import bisect
import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from matplotlib.figure import Figure
from tqdm import tqdm

from claimsutil.meds import (
    BIRTH_CODE,
    CODES_FILE,
    DEATH_CODE,
    HOSPITAL_PREFIX,
    SEX_CODES,
    Events,
    coverage_periods,
    family_expr,
    open_events,
    starts_with_any,
    unmatched_coverage_ends,
)
from claimsutil.report import format_cell

DIAGNOSIS_FAMILY = "diagnosis"  # code families (`claimsutil.meds.code_family`)
DRUG_FAMILY = "drug"
UNKNOWN = "unknown"
ALL = "all"
DAYS_PER_YEAR = 365.25
MICROSECONDS_PER_DAY = 86_400_000_000

DEFAULT_AGE_BANDS = (20, 40, 50, 60, 70, 80)  # lower edges; ages below the first form a "<20" band
# name -> code prefixes; a confirmed (non-suspected) record in the reference year makes a case.
DEFAULT_CONDITIONS: dict[str, tuple[str, ...]] = {
    "hypertension": ("ICD10/I10",),
    "type2_diabetes": ("ICD10/E11",),
    "dyslipidaemia": ("ICD10/E78",),
    "ckd": ("ICD10/N18",),
    "heart_failure": ("ICD10/I50",),
    "atrial_fibrillation": ("ICD10/I48",),
    "osteoporosis": ("ICD10/M81",),
    "amlodipine_users": ("YJ/2171022",),
    "pregabalin_users": ("YJ/1190017",),
}
# First-line antihypertensive classes compared across hospitals: class -> ingredient -> YJ prefix.
ANTIHYPERTENSIVE_CLASSES: dict[str, dict[str, str]] = {
    "ccb": {"amlodipine": "YJ/2171022", "nifedipine": "YJ/2171014"},
    "arb": {
        "losartan": "YJ/2149039",
        "candesartan": "YJ/2149040",
        "valsartan": "YJ/2149041",
        "telmisartan": "YJ/2149042",
        "olmesartan": "YJ/2149044",
        "azilsartan": "YJ/2149048",
    },
}

# Shares hidden (by `suppress_small`) wherever a count they are computed from is suppressed.
PREVALENCE_DERIVED = {"prevalence": ("cases", "patients")}
HOSPITAL_DERIVED = {
    "receipts_per_person_year": ("receipts", "patients"),
    "suspected_share": ("suspected_events", "diagnosis_events"),
    "ccb_share": ("first_ccb", "antihypertensive_starters"),
    "arb_share": ("first_arb", "antihypertensive_starters"),
}
SUSPECTED_DERIVED = {
    "suspected_share": ("suspected_events", "events"),
    "never_confirmed_share": ("never_confirmed_pairs", "suspected_pairs"),
}

# Per record, from the columns `_shard_view` adds (computed once per distinct code, not once per record):
VOCABULARY = pl.col("_vocabulary")  # "ICD10/I10" -> "ICD10"; "MEDS_BIRTH" stays whole
FAMILY = pl.col("_family")  # diagnosis, drug or other (`claimsutil.meds.code_family`)
# A filter on one family alone is cheaper as the expression itself (`family_expr()`, evaluated in the scan).


# --- streaming -------------------------------------------------------------------------------


def _shard_view(events: Events, path: Path, family: bool = False) -> pl.LazyFrame:
    """The study's view of one shard (`claimsutil.meds.Events.scan`). FAMILY: with each record's code
    vocabulary and family (`_vocabulary`, `_family`, used as VOCABULARY and FAMILY), joined from a table of
    the shard's distinct codes: string work on a few thousand codes instead of tens of millions of records."""
    lf = events.scan(path)
    if not family:
        return lf
    codes = (
        lf.select(pl.col("code").unique())
        .collect()
        .with_columns(_vocabulary=pl.col("code").str.split("/").list.first(), _family=family_expr())
    )
    return lf.join(codes.lazy(), on="code", how="left", nulls_equal=True, maintain_order="left")


def _per_shard(source: Events | str | Path, shard_fn: Callable[[pl.LazyFrame], pl.LazyFrame],
               family: bool = False) -> pl.DataFrame:  # fmt: skip
    """SHARD_FN applied to the study's view of every shard (`_shard_view`, with FAMILY columns or not),
    collected one shard at a time and stacked."""
    events = open_events(source)
    bar = tqdm(events.paths, desc="shards", unit="shard", disable=None)
    parts = [shard_fn(_shard_view(events, p, family)).collect() for p in bar]
    return pl.concat(parts, how="vertical_relaxed")


def data_end(source: Events | str | Path) -> dt.datetime:
    """The end of the data (exclusive), by the study's one rule (`claimsutil.meds.data_window`)."""
    return open_events(source).window.end


def last_full_year(source: Events | str | Path) -> int:
    """The last calendar year whose December is in the data (the end of the data is on or after 1 January
    of the next year)."""
    return data_end(source).year - 1


# --- coverage --------------------------------------------------------------------------------


def _coverage_periods(lf: pl.LazyFrame, end_of_data: dt.datetime) -> pl.LazyFrame:
    """The study's coverage periods (`claimsutil.meds.coverage_periods`), implied ones included."""
    return coverage_periods(lf, end_of_data)


def _recorded_periods(lf: pl.LazyFrame, end_of_data: dt.datetime) -> pl.LazyFrame:
    """Periods bounded by COVERAGE/START and COVERAGE/END events (not implied from activity)."""
    return coverage_periods(lf, end_of_data).filter(~pl.col("implied"))


def _patient_coverage(periods: pl.LazyFrame) -> pl.LazyFrame:
    """Per subject with coverage: periods, covered days, whether a gap separates two periods."""
    length_days = (pl.col("end") - pl.col("start")).dt.total_microseconds() / MICROSECONDS_PER_DAY
    next_start = pl.col("start").sort().shift(-1)
    return periods.group_by("subject_id").agg(
        periods=pl.len(),
        open_periods=pl.col("open").sum(),
        covered_days=length_days.sum(),
        gap=(next_start > pl.col("end").sort_by("start")).any(),
    )


def coverage_years(source: Events | str | Path) -> pl.DataFrame:
    """Distribution of covered time per patient with coverage events: covered_months, patients."""
    events = open_events(source)
    end_of_data = data_end(events)

    def shard(lf: pl.LazyFrame) -> pl.LazyFrame:
        per_patient = _patient_coverage(_recorded_periods(lf, end_of_data))
        months = (pl.col("covered_days") / (DAYS_PER_YEAR / 12)).floor().cast(pl.Int64)
        return per_patient.group_by(covered_months=months).agg(patients=pl.len())

    parts = _per_shard(events, shard)
    return parts.group_by("covered_months").agg(pl.col("patients").sum()).sort("covered_months")


def coverage_end_reasons(source: Events | str | Path) -> pl.DataFrame:
    """Coverage periods and patients by the reason their COVERAGE/END gives (text_value)."""
    events = open_events(source)
    end_of_data = data_end(events)

    def shard(lf: pl.LazyFrame) -> pl.LazyFrame:
        periods = _recorded_periods(lf, end_of_data)
        reason = pl.when(pl.col("open")).then(pl.lit("open (no END)")).otherwise(pl.col("reason"))
        return periods.group_by(reason=reason.fill_null(UNKNOWN)).agg(
            periods=pl.len(), patients=pl.col("subject_id").n_unique()
        )

    parts = _per_shard(events, shard)
    totals = parts.group_by("reason").agg(pl.col("periods", "patients").sum())
    return totals.sort("periods", "reason", descending=[True, False])


# --- dataset summary -------------------------------------------------------------------------


def events_per_patient(source: Events | str | Path) -> pl.DataFrame:
    """Distribution of events (rows, static ones included) per patient: events, patients."""
    events = open_events(source)

    def shard(lf: pl.LazyFrame) -> pl.LazyFrame:
        per_patient = lf.group_by("subject_id").agg(events=pl.len().cast(pl.Int64))
        return per_patient.group_by("events").agg(patients=pl.len())

    parts = _per_shard(events, shard)
    return parts.group_by("events").agg(pl.col("patients").sum()).sort("events")


def _quantile_from_counts(values: Sequence[float], counts: Sequence[int], q: float) -> float:
    """The Q quantile (linear interpolation, as numpy) of VALUES repeated COUNTS times (sorted)."""
    position = q * (sum(counts) - 1)

    def value_at(rank: int) -> float:
        seen = 0
        for value, count in zip(values, counts, strict=True):
            seen += count
            if rank < seen:
                return float(value)
        raise IndexError(rank)

    low, high = math.floor(position), math.ceil(position)
    return value_at(low) + (position - low) * (value_at(high) - value_at(low))


def _shard_summary(lf: pl.LazyFrame, end_of_data: dt.datetime) -> pl.LazyFrame:
    timed = lf.filter(pl.col("time").is_not_null() & (pl.col("code") != BIRTH_CODE))
    coverage = _patient_coverage(_recorded_periods(lf, end_of_data)).select(
        patients_with_coverage=pl.len(),
        covered_days=pl.col("covered_days").sum(),
        patients_with_gap=pl.col("gap").sum(),
        open_coverage_periods=pl.col("open_periods").sum(),
    )
    return pl.concat(
        [
            lf.select(patients=pl.col("subject_id").n_unique(), events=pl.len()),
            timed.select(first=pl.col("time").min(), last=pl.col("time").max()),
            lf.filter(pl.col("code") == DEATH_CODE).select(deaths=pl.col("subject_id").n_unique()),
            coverage,
            unmatched_coverage_ends(lf),
        ],
        how="horizontal",
    )


def dataset_summary(source: Events | str | Path) -> dict[str, Any]:
    """Patients, events, events per patient, time span, shards, coverage and deaths; the end of the data and
    the records the study leaves out (after death, past the end; not counted in the other figures)."""
    events = open_events(source)
    end_of_data = data_end(events)
    shards = _per_shard(events, lambda lf: _shard_summary(lf, end_of_data))
    totals = shards.select(pl.exclude("first", "last").fill_null(0).sum()).row(0, named=True)
    per_patient = events_per_patient(events)
    values, counts = per_patient["events"].to_list(), per_patient["patients"].to_list()
    return {
        "shards": shards.height,
        "patients": int(totals["patients"]),
        "events": int(totals["events"]),
        "events_per_patient_mean": totals["events"] / totals["patients"],
        "events_per_patient_median": _quantile_from_counts(values, counts, 0.5),
        "events_per_patient_p90": _quantile_from_counts(values, counts, 0.9),
        "first_event_date": shards["first"].min().date().isoformat(),
        "last_event_date": shards["last"].max().date().isoformat(),
        "patients_with_coverage": int(totals["patients_with_coverage"]),
        "person_years": totals["covered_days"] / DAYS_PER_YEAR,
        "patients_with_gap": int(totals["patients_with_gap"]),
        "open_coverage_periods": int(totals["open_coverage_periods"]),
        "unmatched_coverage_ends": int(totals["unmatched_ends"]),
        "deaths": int(totals["deaths"]),
        "data_end": events.window.end.date().isoformat(),
        "events_after_death": events.dropped["after_death"],
        "events_after_data_end": events.dropped["after_data_end"],
    }


# --- codes -----------------------------------------------------------------------------------


def codes_by_family(source: Events | str | Path) -> pl.DataFrame:
    """Per code family (the prefix before the first "/"): distinct codes, events, patients."""
    events = open_events(source)

    def shard(lf: pl.LazyFrame) -> pl.LazyFrame:
        per_code = lf.group_by(family=VOCABULARY, code=pl.col("code")).agg(
            events=pl.len().cast(pl.Int64), patients=pl.col("subject_id").n_unique().cast(pl.Int64)
        )
        # Patients per family cannot be summed over codes; carry them on a null-code row.
        per_family = lf.group_by(family=VOCABULARY).agg(
            code=pl.lit(None, pl.String),
            events=pl.lit(0, pl.Int64),
            patients=pl.col("subject_id").n_unique().cast(pl.Int64),
        )
        return pl.concat([per_code.with_columns(patients=pl.lit(0, pl.Int64)), per_family])

    parts = _per_shard(events, shard, family=True)
    return (
        parts.group_by("family")
        .agg(
            codes=pl.col("code").drop_nulls().n_unique().cast(pl.Int64),
            events=pl.col("events").sum(),
            patients=pl.col("patients").sum(),
        )
        .sort("events", "family", descending=[True, False])
    )


def code_descriptions(root: str | Path) -> pl.DataFrame:
    """code, description from metadata/codes.parquet (empty when the file is absent)."""
    path = Path(root) / CODES_FILE
    if not path.is_file():
        return pl.DataFrame(schema={"code": pl.String, "description": pl.String})
    return pl.read_parquet(path, columns=["code", "description"]).unique("code", keep="first")


def top_codes(source: Events | str | Path, family: str, n: int = 20) -> pl.DataFrame:
    """The N most frequent codes of FAMILY (by events): code, description, events, patients."""
    events = open_events(source)
    top = code_frequencies(events, family).head(n).rename({"records": "events"})
    return top.join(code_descriptions(events.root), on="code", how="left", maintain_order="left").select(
        "code", "description", "events", "patients"
    )


# --- breadth and structure of the codes --------------------------------------------------------

# WHO ICD-10 chapters by their first category (codes sort as strings): the organ systems a reader can see.
ICD10_CHAPTERS: tuple[tuple[str, str, str], ...] = (
    ("A00", "I", "infections"), ("C00", "II", "neoplasms"), ("D50", "III", "blood, immune"),
    ("E00", "IV", "endocrine, metabolic"), ("F00", "V", "mental"), ("G00", "VI", "nervous"), ("H00", "VII", "eye"),
    ("H60", "VIII", "ear"), ("I00", "IX", "circulatory"), ("J00", "X", "respiratory"), ("K00", "XI", "digestive"),
    ("L00", "XII", "skin"), ("M00", "XIII", "musculoskeletal"), ("N00", "XIV", "genitourinary"),
    ("O00", "XV", "pregnancy"), ("P00", "XVI", "perinatal"), ("Q00", "XVII", "congenital"),
    ("R00", "XVIII", "symptoms, findings"), ("S00", "XIX", "injury, poisoning"), ("U00", "XXII", "special"),
    ("V01", "XX", "external causes"), ("Z00", "XXI", "health services"),
)  # fmt: skip
CHAPTER_ORDER = tuple(label for _, label, _ in ICD10_CHAPTERS)


def chapter_expr(code: pl.Expr | None = None) -> pl.Expr:
    """The ICD-10 chapter label ("IX circulatory") of an ICD10/ code; null for other families."""
    code = pl.col("code") if code is None else code
    category = code.str.strip_prefix("ICD10/").str.slice(0, 3).str.to_uppercase()
    expr = pl.when(~code.str.starts_with("ICD10/")).then(pl.lit(None, pl.String))
    for start, number, name in sorted(ICD10_CHAPTERS, reverse=True):
        expr = expr.when(category >= start).then(pl.lit(f"{number} {name}"))
    return expr.otherwise(pl.lit(None, pl.String))


def code_frequencies(source: Events | str | Path, family: str = DIAGNOSIS_FAMILY) -> pl.DataFrame:
    """Every code of FAMILY with its records (suspected ones included) and patients, most frequent first."""

    def shard(lf: pl.LazyFrame) -> pl.LazyFrame:
        return (
            lf.filter(family_expr() == family)
            .group_by("code")
            .agg(records=pl.len().cast(pl.Int64), patients=pl.col("subject_id").n_unique().cast(pl.Int64))
        )

    parts = _per_shard(source, shard)
    return (
        parts.group_by("code")
        .agg(pl.col("records", "patients").sum())
        .sort("records", "code", descending=[True, False])
    )


def zipf_summary(frequencies: pl.DataFrame, min_patients: int = 5, top: int = 50) -> dict[str, float]:
    """How long-tailed the codes are: codes, codes with at least MIN_PATIENTS patients, the share of records
    of the TOP most frequent codes, and the Zipf exponent s of records ~ rank^-s (least squares on log
    records against log rank, over the codes with at least MIN_PATIENTS patients)."""
    import numpy as np

    kept = frequencies.filter(pl.col("patients") >= min_patients)["records"].to_numpy().astype(float)
    records = frequencies["records"].to_numpy().astype(float)
    exponent = float("nan")
    if len(kept) >= 3:
        rank = np.arange(1, len(kept) + 1)
        exponent = float(-np.polyfit(np.log(rank), np.log(kept), 1)[0])
    return {
        "codes": int(len(records)),
        f"codes_with_{min_patients}_patients": int(len(kept)),
        f"top_{top}_share_of_records": float(records[:top].sum() / records.sum()) if len(records) else float("nan"),
        "zipf_exponent": exponent,
    }


def _distribution(values: pl.DataFrame, column: str) -> dict[str, float]:
    """mean, median and p95 of COLUMN from a (COLUMN, n) value-count table."""
    values = values.group_by(column).agg(pl.col("n").sum()).sort(column)
    v, n = values[column].to_list(), values["n"].to_list()
    if not n:
        return {"mean": float("nan"), "median": float("nan"), "p95": float("nan")}
    mean = sum(a * b for a, b in zip(v, n, strict=True)) / sum(n)
    return {"mean": mean, "median": _quantile_from_counts(v, n, 0.5), "p95": _quantile_from_counts(v, n, 0.95)}


def receipt_contents(source: Events | str | Path) -> pl.DataFrame:
    """Diagnoses and drugs per receipt (a patient's records on one day): family, mean, median, p95."""

    def shard(lf: pl.LazyFrame) -> pl.LazyFrame:
        per = (
            lf.filter(pl.col("time").is_not_null() & FAMILY.is_in([DIAGNOSIS_FAMILY, DRUG_FAMILY]))
            .group_by("subject_id", "time")
            .agg(diagnosis=(FAMILY == DIAGNOSIS_FAMILY).sum(), drug=(FAMILY == DRUG_FAMILY).sum())
        )
        return (
            per.unpivot(["diagnosis", "drug"], variable_name="family", value_name="per_receipt")
            .group_by("family", "per_receipt")
            .agg(n=pl.len())
        )

    parts = _per_shard(source, shard, family=True)
    rows = [
        {"family": f, **_distribution(parts.filter(pl.col("family") == f), "per_receipt")}
        for f in ("diagnosis", "drug")
    ]
    return pl.DataFrame(rows)


def distinct_codes(source: Events | str | Path) -> pl.DataFrame:
    """Distinct diagnosis and drug codes per patient-year (calendar years with a receipt) and per patient
    (the whole history): unit, mean, median, p95."""

    def shard(lf: pl.LazyFrame) -> pl.LazyFrame:
        clinical = lf.filter(pl.col("time").is_not_null() & FAMILY.is_in([DIAGNOSIS_FAMILY, DRUG_FAMILY]))
        per_year = clinical.group_by("subject_id", pl.col("time").dt.year()).agg(k=pl.col("code").n_unique())
        per_patient = clinical.group_by("subject_id").agg(k=pl.col("code").n_unique())
        return pl.concat(
            [
                per_year.group_by("k").agg(n=pl.len()).with_columns(unit=pl.lit("patient-year")),
                per_patient.group_by("k").agg(n=pl.len()).with_columns(unit=pl.lit("patient")),
            ]
        )

    parts = _per_shard(source, shard, family=True)
    return pl.DataFrame(
        [{"unit": u, **_distribution(parts.filter(pl.col("unit") == u), "k")} for u in ("patient-year", "patient")]
    )


def chapter_correlations(source: Events | str | Path) -> pl.DataFrame:
    """Pearson correlations, over patients with a diagnosis, between the numbers of distinct diagnosis codes
    (log(1 + n)) they have in each ICD-10 chapter: chapter, then one column per chapter (chapters without
    codes left out). Codes of one organ system travel together in real claims; independent noise would show
    correlations near zero (all are raised a little by age and by how often a patient sees a doctor)."""
    import numpy as np

    labels = [f"{number} {name}" for _, number, name in ICD10_CHAPTERS]
    column = {label: i for i, label in enumerate(labels)}
    n, s1, s2 = 0, np.zeros(len(labels)), np.zeros((len(labels), len(labels)))
    events = open_events(source)
    for path in tqdm(events.paths, desc="shards", unit="shard", disable=None):
        long = (
            _shard_view(events, path)
            .filter(family_expr() == DIAGNOSIS_FAMILY)
            .with_columns(chapter=chapter_expr())
            .drop_nulls("chapter")
            .group_by("subject_id", "chapter")
            .agg(k=pl.col("code").n_unique())
            .with_columns(row=pl.col("subject_id").rank("dense") - 1)
            .collect()
        )
        if long.is_empty():
            continue
        x = np.zeros((int(long["row"].max()) + 1, len(labels)))
        x[long["row"].to_numpy(), [column[c] for c in long["chapter"].to_list()]] = np.log1p(long["k"].to_numpy())
        n, s1, s2 = n + len(x), s1 + x.sum(axis=0), s2 + x.T @ x
    mean = s1 / max(n, 1)
    cov = s2 / max(n, 1) - np.outer(mean, mean)
    keep = np.nonzero(np.diag(cov) > 1e-12)[0] if n > 1 else np.array([], dtype=int)
    sd = np.sqrt(np.diag(cov)[keep])
    corr = cov[np.ix_(keep, keep)] / np.outer(sd, sd)
    names = [labels[i] for i in keep]
    return pl.DataFrame({"chapter": names, **{name: corr[:, j] for j, name in enumerate(names)}})


def plot_chapter_correlations(corr: pl.DataFrame) -> Figure:
    """Heat map of `chapter_correlations` (the colour scale ends at the largest off-diagonal value)."""
    import matplotlib.pyplot as plt
    import numpy as np

    labels = corr["chapter"].to_list()
    values = corr.drop("chapter").to_numpy()
    fig, ax = plt.subplots(figsize=(8.5, 7.5))
    off_diagonal = values[~np.eye(len(values), dtype=bool)]
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=max(0.3, float(off_diagonal.max(initial=0.0))))
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(image, ax=ax, label="correlation of log(1 + distinct codes) per patient")
    ax.set_title("Which chapters' codes travel together")
    fig.tight_layout()
    return fig


# --- prevalence ------------------------------------------------------------------------------


def age_band_labels(age_bands: Sequence[int]) -> list[str]:
    """Labels for lower edges (20, 40, 50) -> ["<20", "20-39", "40-49", "50+"] ("<20" only if edge > 0)."""
    edges = sorted(age_bands)
    labels = [f"<{edges[0]}"] if edges[0] > 0 else []
    labels += [f"{low}-{high - 1}" for low, high in zip(edges, edges[1:], strict=False)]
    return [*labels, f"{edges[-1]}+"]


def _age_band(age: pl.Expr, age_bands: Sequence[int]) -> pl.Expr:
    edges = sorted(age_bands)
    labels = age_band_labels(edges)
    band = pl.when(age.is_null()).then(pl.lit(UNKNOWN))
    for edge, label in zip(reversed(edges), reversed(labels), strict=False):
        band = band.when(age >= edge).then(pl.lit(label))
    return band.otherwise(pl.lit(labels[0]))


def _age_on(day: dt.date, birth: pl.Expr) -> pl.Expr:
    """Completed years of age on DAY."""
    birthday_ahead = (birth.dt.month() > day.month) | ((birth.dt.month() == day.month) & (birth.dt.day() > day.day))
    return pl.lit(day.year) - birth.dt.year().cast(pl.Int32) - birthday_ahead.cast(pl.Int32)


def _year_population(lf: pl.LazyFrame, year: int, end_of_data: dt.datetime) -> pl.LazyFrame:
    """Subjects covered and alive on 1 July of YEAR (coverage by the study's rule: a subject without coverage
    events is covered from their first to the day after their last clinical event)."""
    mid = dt.datetime(year, 7, 1)
    periods = _coverage_periods(lf, end_of_data)
    covered = periods.filter((pl.col("start") <= mid) & (pl.col("end") > mid)).select("subject_id")
    dead = lf.filter((pl.col("code") == DEATH_CODE) & (pl.col("time") < mid)).select("subject_id")
    return covered.unique().join(dead, on="subject_id", how="anti")


def _shard_prevalence(
    lf: pl.LazyFrame,
    conditions: Mapping[str, Sequence[str]],
    age_bands: Sequence[int],
    year: int,
    end_of_data: dt.datetime,
) -> pl.LazyFrame:
    """Per age band x sex: patients in the population and cases of each condition (one column each)."""
    birth = lf.filter(pl.col("code") == BIRTH_CODE).group_by("subject_id").agg(birth=pl.col("time").min())
    sex = (
        lf.filter(pl.col("code").is_in(list(SEX_CODES)))
        .group_by("subject_id")
        .agg(sex=pl.col("code").min().replace_strict(SEX_CODES))
    )
    records = lf.filter((pl.col("time").dt.year() == year) & ~pl.col("suspected"))
    cases = records.group_by("subject_id").agg(
        *(starts_with_any(prefixes).any().alias(name) for name, prefixes in conditions.items())
    )
    patients = (
        _year_population(lf, year, end_of_data)
        .join(birth, on="subject_id", how="left")
        .join(sex, on="subject_id", how="left")
        .join(cases, on="subject_id", how="left")
    )
    age = _age_on(dt.date(year, 7, 1), pl.col("birth"))
    return patients.group_by(age_band=_age_band(age, age_bands), sex=pl.col("sex").fill_null(UNKNOWN)).agg(
        *(pl.col(name).fill_null(False).sum().cast(pl.Int64) for name in conditions),
        patients=pl.len().cast(pl.Int64),
    )


def condition_prevalence(
    source: Events | str | Path,
    conditions: Mapping[str, Sequence[str]] = DEFAULT_CONDITIONS,
    age_bands: Sequence[int] = DEFAULT_AGE_BANDS,
    year: int = 0,
) -> pl.DataFrame:
    """Share of patients covered and alive on 1 July of YEAR with a confirmed record of each condition.

    Age is age on 1 July; YEAR 0 means `last_full_year`. One row per condition x age band x sex,
    with "all" margins: condition, age_band, sex, patients, cases, prevalence (null when no patients).
    """
    events = open_events(source)
    year = year or last_full_year(events)
    end_of_data = data_end(events)
    cells = _per_shard(events, lambda lf: _shard_prevalence(lf, conditions, age_bands, year, end_of_data))
    counts = ["patients", *conditions]
    by_cell = cells.group_by("age_band", "sex").agg(pl.col(counts).sum())
    margins = [
        by_cell,
        by_cell.group_by("sex").agg(pl.col(counts).sum()).with_columns(age_band=pl.lit(ALL)),
        by_cell.group_by("age_band").agg(pl.col(counts).sum()).with_columns(sex=pl.lit(ALL)),
        by_cell.select(pl.col(counts).sum()).with_columns(age_band=pl.lit(ALL), sex=pl.lit(ALL)),
    ]
    table = pl.concat(margins, how="diagonal").unpivot(
        on=list(conditions),
        index=["age_band", "sex", "patients"],
        variable_name="condition",
        value_name="cases",
    )
    band_order = pl.Enum([*age_band_labels(age_bands), UNKNOWN, ALL])
    sex_order = pl.Enum(["F", "M", UNKNOWN, ALL])
    return (
        table.with_columns(
            prevalence=pl.when(pl.col("patients") > 0).then(pl.col("cases") / pl.col("patients")),
        )
        .sort(
            pl.col("condition").cast(pl.Enum(list(conditions))),
            pl.col("age_band").cast(band_order),
            pl.col("sex").cast(sex_order),
        )
        .select("condition", "age_band", "sex", "patients", pl.col("cases").cast(pl.Int64), "prevalence")
    )


def _shard_incidence(
    lf: pl.LazyFrame, outcomes: Mapping[str, Sequence[str]], year: int, end_of_data: dt.datetime
) -> pl.LazyFrame:
    """Per outcome: adults (20+ on 1 January) covered without a break from 1 January of YEAR-1 to the end
    of YEAR, with no confirmed record before YEAR (at_risk), and those with a first one in YEAR (cases)."""
    y0, y1 = dt.datetime(year, 1, 1), dt.datetime(year + 1, 1, 1)
    periods = _coverage_periods(lf, end_of_data)
    covered = periods.filter((pl.col("start") <= dt.datetime(year - 1, 1, 1)) & (pl.col("end") >= y1))
    birth = lf.filter(pl.col("code") == BIRTH_CODE).group_by("subject_id").agg(birth=pl.col("time").min())
    adults = (
        covered.select("subject_id")
        .unique()
        .join(birth, on="subject_id")
        .filter(_age_on(y0.date(), pl.col("birth")) >= 20)
    )
    confirmed = lf.filter(~pl.col("suspected") & pl.col("time").is_not_null())
    firsts = confirmed.group_by("subject_id").agg(
        *(pl.col("time").filter(starts_with_any(p)).min().alias(name) for name, p in outcomes.items())
    )
    people = adults.join(firsts, on="subject_id", how="left")
    return people.select(
        *(
            expr
            for name in outcomes
            for expr in (
                (pl.col(name).is_null() | (pl.col(name) >= y0)).sum().cast(pl.Int64).alias(f"{name}:at_risk"),
                pl.col(name).is_between(y0, y1, closed="left").sum().cast(pl.Int64).alias(f"{name}:cases"),
            )
        )
    )


def one_year_incidence(
    source: Events | str | Path, outcomes: Mapping[str, Sequence[str]], years: Sequence[int] = ()
) -> pl.DataFrame:
    """One-year incidence of a first confirmed record, pooled over YEARS (default: the last three full years
    that have a full year of coverage before them): outcome, at_risk, cases, incidence."""
    events = open_events(source)
    end_of_data = data_end(events)
    years = list(years) or [last_full_year(events) - i for i in range(3)]
    parts = _per_shard(events, lambda lf: pl.concat([_shard_incidence(lf, outcomes, y, end_of_data) for y in years]))
    totals = parts.sum()
    rows = [
        {"outcome": name, "at_risk": totals[f"{name}:at_risk"].item(), "cases": totals[f"{name}:cases"].item()}
        for name in outcomes
    ]
    table = pl.DataFrame(rows, schema={"outcome": pl.String, "at_risk": pl.Int64, "cases": pl.Int64})
    return table.with_columns(incidence=pl.when(pl.col("at_risk") > 0).then(pl.col("cases") / pl.col("at_risk")))


INCIDENCE_DERIVED = {"incidence": ("cases", "at_risk")}


def prevalence_by_band(prevalence: pl.DataFrame, sex: str = ALL) -> pl.DataFrame:
    """PREVALENCE (long, as from `condition_prevalence`, suppressed or not) for one SEX as a wide table:
    one row per condition, one column per age band, values in percent (1 decimal)."""
    rows = prevalence.filter(pl.col("sex") == sex).with_columns(percent=(100 * pl.col("prevalence")).round(1))
    bands = rows["age_band"].unique(maintain_order=True).to_list()
    wide = rows.pivot(on="age_band", index="condition", values="percent")
    return wide.select("condition", *bands)


# --- hospitals -------------------------------------------------------------------------------


def _first_antihypertensive(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Per subject with a CCB or ARB record: whether the first such receipt holds a CCB, an ARB (or both)."""
    prefixes = {cls: list(drugs.values()) for cls, drugs in ANTIHYPERTENSIVE_CLASSES.items()}
    drugs = lf.filter(starts_with_any(prefixes["ccb"] + prefixes["arb"]) & pl.col("time").is_not_null())
    first = drugs.filter(pl.col("time") == pl.col("time").min().over("subject_id"))
    return first.group_by("subject_id").agg(
        first_ccb=starts_with_any(prefixes["ccb"]).any(), first_arb=starts_with_any(prefixes["arb"]).any()
    )


def _patient_activity(lf: pl.LazyFrame, end_of_data: dt.datetime) -> pl.LazyFrame:
    """Per subject: hospital, covered days, receipts, diagnosis and suspected events, first CCB/ARB."""
    hospital = (
        lf.filter(pl.col("code").str.starts_with(HOSPITAL_PREFIX))
        .group_by("subject_id")
        .agg(hospital=pl.col("code").min().str.strip_prefix(HOSPITAL_PREFIX))
    )
    is_receipt_event = FAMILY.is_in([DIAGNOSIS_FAMILY, DRUG_FAMILY]) & pl.col("time").is_not_null()
    receipts = lf.filter(is_receipt_event).group_by("subject_id").agg(receipts=pl.col("time").n_unique())
    diagnoses = (
        lf.filter(FAMILY == DIAGNOSIS_FAMILY)
        .group_by("subject_id")
        .agg(diagnosis_events=pl.len(), suspected_events=pl.col("suspected").sum())
    )
    coverage = _patient_coverage(_coverage_periods(lf, end_of_data)).select("subject_id", "covered_days")
    activity = lf.select("subject_id").unique()
    for part in (hospital, receipts, diagnoses, coverage, _first_antihypertensive(lf)):
        activity = activity.join(part, on="subject_id", how="left")
    return activity


def hospital_profile(source: Events | str | Path) -> pl.DataFrame:
    """Per hospital: patients, person-years covered, receipts per person-year, share of diagnosis events
    that are suspected, and the shares of first CCB/ARB prescriptions that are a CCB or an ARB.

    A receipt is a distinct subject x timestamp with a diagnosis or drug event. A patient with several
    HOSPITAL codes belongs to the first (sorted); one with none to "unknown". Empty when the data has
    no HOSPITAL codes.
    """
    events = open_events(source)
    end_of_data = data_end(events)
    counts = ["receipts", "diagnosis_events", "suspected_events", "first_ccb", "first_arb"]

    def shard(lf: pl.LazyFrame) -> pl.LazyFrame:
        activity = _patient_activity(lf, end_of_data)
        return activity.group_by(pl.col("hospital").fill_null(UNKNOWN)).agg(
            *(pl.col(c).fill_null(0).sum().cast(pl.Int64) for c in counts),
            patients=pl.len().cast(pl.Int64),
            covered_days=pl.col("covered_days").fill_null(0.0).sum(),
            antihypertensive_starters=(pl.col("first_ccb") | pl.col("first_arb")).sum().cast(pl.Int64),
        )

    totals = _per_shard(events, shard, family=True).group_by("hospital").agg(pl.all().sum())
    person_years = pl.col("covered_days") / DAYS_PER_YEAR
    starters = pl.col("antihypertensive_starters")
    profile = totals.sort(pl.col("hospital") == UNKNOWN, "hospital").select(
        "hospital",
        "patients",
        person_years.alias("person_years"),
        "receipts",
        pl.when(person_years > 0).then(pl.col("receipts") / person_years).alias("receipts_per_person_year"),
        "diagnosis_events",
        "suspected_events",
        _share(pl.col("suspected_events"), pl.col("diagnosis_events")).alias("suspected_share"),
        "antihypertensive_starters",
        "first_ccb",
        "first_arb",
        _share(pl.col("first_ccb"), starters).alias("ccb_share"),
        _share(pl.col("first_arb"), starters).alias("arb_share"),
    )
    return profile.clear() if profile.filter(pl.col("hospital") != UNKNOWN).is_empty() else profile


def _share(part: pl.Expr, whole: pl.Expr) -> pl.Expr:
    return pl.when(whole > 0).then(part / whole)


# --- suspected diagnoses -----------------------------------------------------------------------


def suspected_by_code(source: Events | str | Path) -> pl.DataFrame:
    """Per diagnosis code: events, suspected events, patient x code pairs with a suspected record, and
    those never followed (strictly later) by a confirmed record of the same code. Most suspected first.
    """
    events = open_events(source)

    def shard(lf: pl.LazyFrame) -> pl.LazyFrame:
        diagnoses = lf.filter(family_expr() == DIAGNOSIS_FAMILY)
        pairs = diagnoses.group_by("subject_id", "code").agg(
            events=pl.len().cast(pl.Int64),
            suspected_events=pl.col("suspected").sum().cast(pl.Int64),
            first_suspected=pl.col("time").filter(pl.col("suspected")).min(),
            last_confirmed=pl.col("time").filter(~pl.col("suspected")).max(),
        )
        suspected_pair = pl.col("suspected_events") > 0
        never_confirmed = suspected_pair & (
            pl.col("last_confirmed").is_null()
            | (pl.col("last_confirmed") <= pl.col("first_suspected")).fill_null(False)
        )
        return pairs.group_by("code").agg(
            pl.col("events", "suspected_events").sum(),
            suspected_pairs=suspected_pair.sum().cast(pl.Int64),
            never_confirmed_pairs=never_confirmed.sum().cast(pl.Int64),
        )

    totals = _per_shard(events, shard).group_by("code").agg(pl.all().sum())
    return (
        totals.join(code_descriptions(events.root), on="code", how="left")
        .with_columns(
            suspected_share=_share(pl.col("suspected_events"), pl.col("events")),
            never_confirmed_share=_share(pl.col("never_confirmed_pairs"), pl.col("suspected_pairs")),
        )
        .sort("suspected_events", "code", descending=[True, False])
        .select(
            "code",
            "description",
            "events",
            "suspected_events",
            "suspected_share",
            "suspected_pairs",
            "never_confirmed_pairs",
            "never_confirmed_share",
        )
    )


def top_suspected_codes(by_code: pl.DataFrame, n: int = 20) -> pl.DataFrame:
    """The N codes of `suspected_by_code` with the most suspected events (codes never suspected left out)."""
    return by_code.filter(pl.col("suspected_events") > 0).head(n)


def suspected_totals(by_code: pl.DataFrame) -> dict[str, Any]:
    """Overall figures from `suspected_by_code`: events, suspected share, never-confirmed share."""
    sums = by_code.select(pl.col("events", "suspected_events", "suspected_pairs", "never_confirmed_pairs").sum()).row(
        0, named=True
    )
    events, pairs = sums["events"], sums["suspected_pairs"]
    return {
        "diagnosis_events": int(events),
        "suspected_events": int(sums["suspected_events"]),
        "suspected_share": sums["suspected_events"] / events if events else None,
        "suspected_pairs": int(pairs),
        "never_confirmed_pairs": int(sums["never_confirmed_pairs"]),
        "never_confirmed_share": sums["never_confirmed_pairs"] / pairs if pairs else None,
    }


def suspected_summary(source: Events | str | Path) -> dict[str, Any]:
    """`suspected_totals` of `suspected_by_code(events)`."""
    events = open_events(source)
    return suspected_totals(suspected_by_code(events))


# --- small cells and output files --------------------------------------------------------------


def summary_table(summary: Mapping[str, Any], min_cell: int = 10, keep: Sequence[str] = ("shards",)) -> pl.DataFrame:
    """A dict of figures as a two-column table (metric, value), integers below MIN_CELL as "<MIN_CELL"."""

    def shown(key: str, value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool) and key not in keep and value < min_cell:
            return f"<{min_cell}"
        return format_cell(value)

    return pl.DataFrame(
        {"metric": list(summary), "value": [shown(k, v) for k, v in summary.items()]},
        schema={"metric": pl.String, "value": pl.String},
    )


def data_metrics(
    summary: Mapping[str, Any],
    suspected: Mapping[str, Any],
    hospitals: pl.DataFrame,
    prevalence: pl.DataFrame,
) -> dict[str, Any]:
    """The numbers the data stage reports to DVC (numeric only)."""
    overall = prevalence.filter((pl.col("age_band") == ALL) & (pl.col("sex") == ALL))
    return {
        **{
            key: summary[key] for key in ("patients", "events", "shards", "person_years", "deaths", "patients_with_gap")
        },
        "events_per_patient_median": summary["events_per_patient_median"],
        "suspected_share": suspected["suspected_share"],
        "never_confirmed_share": suspected["never_confirmed_share"],
        "n_hospitals": hospitals.filter(pl.col("hospital") != UNKNOWN).height,
        **{f"prevalence_{c}": p for c, p in overall.select("condition", "prevalence").iter_rows()},
    }


# --- figures -----------------------------------------------------------------------------------


def plot_prevalence(prevalence: pl.DataFrame, sexes: Sequence[str] = ("F", "M")) -> Figure:
    """One panel per condition: prevalence (%) by age band, a line per sex."""
    conditions = prevalence["condition"].unique(maintain_order=True).to_list()
    bands = [b for b in prevalence["age_band"].unique(maintain_order=True) if b not in (ALL, UNKNOWN)]
    ncols = min(3, max(1, len(conditions)))
    nrows = max(1, math.ceil(len(conditions) / ncols))
    fig = Figure(figsize=(4 * ncols, 3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    for ax, condition in zip(axes.flat, conditions, strict=False):
        rows = prevalence.filter(pl.col("condition") == condition)
        for sex in sexes:
            by_band = dict(rows.filter(pl.col("sex") == sex).select("age_band", "prevalence").iter_rows())
            values = [100 * by_band[b] if by_band.get(b) is not None else math.nan for b in bands]
            ax.plot(bands, values, marker="o", label=sex)
        ax.set_title(condition.replace("_", " "))
        ax.set_ylim(bottom=0)
        ax.tick_params(axis="x", labelrotation=45)
    for ax in axes.flat[len(conditions) :]:
        ax.set_visible(False)
    axes[0, 0].legend(title="sex")
    fig.supylabel("prevalence (%)")
    fig.supxlabel("age band")
    return fig


def plot_hospital_profile(profile: pl.DataFrame, min_cell: int = 10) -> Figure:
    """Left: CCB share of first CCB/ARB prescriptions per hospital. Right: receipts per person-year
    against the suspected share, sized by patients. Hospitals with fewer than MIN_CELL patients (or,
    on the left, fewer than MIN_CELL CCB/ARB starters) are left out.
    """
    hospitals = profile.filter((pl.col("hospital") != UNKNOWN) & (pl.col("patients") >= min_cell))
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2)
    starters = hospitals.filter(pl.col("antihypertensive_starters") >= min_cell).sort("ccb_share", "hospital")
    left.bar(starters["hospital"].to_list(), (100 * starters["ccb_share"]).to_list(), color="tab:blue")
    left.set_ylabel("first CCB/ARB prescription that is a CCB (%)")
    left.set_ylim(0, 100)
    left.tick_params(axis="x", labelrotation=90)
    left.set_title("first-line antihypertensive by hospital")
    sizes = (20 + 200 * hospitals["patients"] / max(1, hospitals["patients"].max() or 1)).to_list()
    right.scatter(
        hospitals["receipts_per_person_year"].fill_null(math.nan).to_list(),
        (100 * hospitals["suspected_share"].fill_null(math.nan)).to_list(),
        s=sizes,
        alpha=0.6,
    )
    right.set_xlabel("receipts per person-year")
    right.set_ylabel("suspected diagnosis events (%)")
    right.set_title("hospitals (size = patients)")
    return fig


def _histogram_bars(
    ax: Any, values: Sequence[float], weights: Sequence[int], edges: Sequence[float], min_cell: int
) -> None:
    """Bars of the weighted counts of VALUES in EDGES; bins holding fewer than MIN_CELL are not drawn."""
    counts = [0] * (len(edges) - 1)
    for value, weight in zip(values, weights, strict=True):
        index = min(max(bisect.bisect_right(edges, value) - 1, 0), len(counts) - 1)
        counts[index] += weight
    shown = [i for i, count in enumerate(counts) if count >= min_cell]
    ax.bar(
        [edges[i] for i in shown],
        [counts[i] for i in shown],
        width=[edges[i + 1] - edges[i] for i in shown],
        align="edge",
        color="tab:gray",
        edgecolor="white",
    )


def plot_events_per_patient(distribution: pl.DataFrame, min_cell: int = 10) -> Figure:
    """Histogram of events per patient (log-spaced bins) from `events_per_patient`; bins with fewer
    than MIN_CELL patients are not drawn."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    events = distribution["events"].to_list()
    high = max(events, default=1)
    edges = sorted({round(10 ** (i * math.log10(high + 1) / 30)) for i in range(31)} | {high + 1})
    _histogram_bars(ax, events, distribution["patients"].to_list(), edges, min_cell)
    ax.set_xscale("log")
    ax.set_xlabel("events per patient")
    ax.set_ylabel("patients")
    return fig


def plot_coverage_years(distribution: pl.DataFrame, min_cell: int = 10) -> Figure:
    """Histogram of covered years per patient (half-year bins) from `coverage_years`; bins with fewer
    than MIN_CELL patients are not drawn."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    years = (distribution["covered_months"] / 12).to_list()
    edges = [i / 2 for i in range(math.ceil(max(years, default=1) * 2) + 2)]
    _histogram_bars(ax, years, distribution["patients"].to_list(), edges, min_cell)
    ax.set_xlabel("years covered (sum of coverage periods)")
    ax.set_ylabel("patients")
    return fig
