"""reports/index.html: the study's front page.

What a reader opens first: at the top the profile, the date and the data the study ran on (the built-in
synthetic world or the user's MEDS path, with patient counts); then one section per study (reference,
generative, transfer) and one for the data, each with its findings in sentences, its tables rendered as HTML
(the headline tables open, long ones folded) and every figure inline (the PNG, linking to its SVG), and links
to the executed notebooks that made them. Nothing here computes a result: the sentences come from the
stages' metrics files, the tables from their CSV files, so the page always says what the run wrote.

    python -m claimsutil.frontpage --params params.yaml --reports reports --metrics data/metrics

Every PNG and table under the reports folder appears once: what no section claims is shown under "Other
tables and figures", so a table or figure a stage adds is never left off the page. The page reads on a laptop
screen (wide tables scroll sideways inside their box) and prints to PDF (figures and tables are not split
across pages, the contents bar is not printed).
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from claimsutil import report
from claimsutil.config import ParamsError, StudyParams, load_params

TITLE = "Claims foundation models: how large must the model be?"
FOLD_ROWS = 40  # a headline table with more rows is folded (<details>)
SCREENSHOT = "frontpage.png"  # `python -m claimsutil.browser` saves the page's screenshot here: not a study figure


@dataclass
class Section:
    """One part of the page: its findings, then tables and figures (paths relative to the reports folder,
    globs allowed: every match in name order), then the notebooks that made them."""

    anchor: str
    title: str
    intro: str
    findings: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)  # shown open (folded only when longer than FOLD_ROWS)
    figures: list[str] = field(default_factory=list)
    notebooks: list[str] = field(default_factory=list)
    more_tables: list[str] = field(default_factory=list)  # the stages' supporting tables, folded


# --------------------------------------------------------------------------------------------- the findings


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _missing(stage: str, path: Path) -> str:
    return f"The {stage} stage has not written its findings ({path.name} is missing or holds none)."


def reference_findings(metrics_dir: Path) -> list[str]:
    path = metrics_dir / "scaling.json"
    return list(_read_json(path).get("findings", [])) or [_missing("scaling", path)]


def generative_findings(metrics_dir: Path) -> list[str]:
    """The scaling laws' fits in sentences (laws.json), then the zero-shot comparison (scaling.json)."""
    laws_path = metrics_dir / "laws.json"
    laws = _read_json(laws_path)
    out = []
    for model, fit in (("encoder (masked codes)", laws), ("decoder (next event)", laws.get("generative") or {})):
        if not fit:
            continue
        out.append(law_sentence(model, fit))
    if not out:
        out.append(_missing("scaling_laws", laws_path))
    out += list(_read_json(metrics_dir / "scaling.json").get("zeroshot_findings", []))
    return out


def _interval(fit: dict, key: str) -> str:
    lo_hi = fit.get(f"{key}_interval")
    return f" (95% bootstrap interval {lo_hi[0]:.2f}-{lo_hi[1]:.2f})" if lo_hi else ""


def law_sentence(model: str, fit: dict) -> str:
    """One fit of `claimsutil.laws.summary_metrics` in words: the loss law's exponents with their intervals,
    the compute-optimal exponent where the IsoFLOP profiles give one, and what the fit could not pin down."""
    text = (f"The {model} scaling law, fitted on {fit['runs']} runs at {fit['budgets']} compute budgets: "
            f"loss = E + A/N^α + B/D^β with E = {fit['E']:.3f} (its frequency baseline: "
            f"{fit['frequency_baseline']:.3f}), α = {fit['alpha']:.2f}{_interval(fit, 'alpha')}, "
            f"β = {fit['beta']:.2f}{_interval(fit, 'beta')}.")  # fmt: skip
    if fit.get("a_isoflop") is not None:
        text += f" Compute-optimal parameters grow as C^{fit['a_isoflop']:.2f} (IsoFLOP vertices)."
    elif fit.get("a_surface") is not None:
        text += (f" The IsoFLOP profiles give no compute-optimal exponent ({fit.get('vertices_inside_sizes', 0)}"
                 f" vertices inside the grid's sizes); the loss surface's is C^{fit['a_surface']:.2f}.")  # fmt: skip
    degenerate = fit.get("degenerate_exponents") or []
    if degenerate:
        text += (f" At the bound of the fit, so not measured by this grid: {', '.join(degenerate)} (more sizes or "
                 "budgets would pin it down).")  # fmt: skip
    return text


def transfer_findings(metrics_dir: Path) -> list[str]:
    path = metrics_dir / "transfer.json"
    return list(_read_json(path).get("findings", [])) or [_missing("transfer", path)]


def data_findings(metrics_dir: Path) -> list[str]:
    synth, splits, tok = (_read_json(metrics_dir / f"{n}.json") for n in ("synthesize", "splits", "tokenize"))
    out = []
    if synth:
        out.append(f"{synth['patients']:,} patients, {synth['events']:,} events "
                   f"({synth['events_per_patient']:.1f} per patient) in {synth['shards']} MEDS shards.")  # fmt: skip
    if splits:
        held = ", ".join(splits.get("held_out_hospitals") or []) or "none"
        out.append(f"Splits by patient: {splits['train']:,} train, {splits['validation']:,} validation, "
                   f"{splits['test']:,} test; {splits['held_out_hospital']:,} patients of the held-out hospitals "
                   f"({held}) are kept for the transfer study.")  # fmt: skip
    if tok:
        out.append(f"Token store: {tok['tokens']:,} tokens, a vocabulary of {tok['vocabulary']:,} codes, median "
                   f"sequence {tok['length_median']:,.0f} tokens (95th percentile "
                   f"{tok['length_p95']:,.0f}).")  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------- the page


def sections(params: StudyParams, metrics_dir: Path) -> list[Section]:
    scales = list(params.scales)
    per_scale = lambda prefix: [f"{prefix}-{s}.html" for s in scales]  # noqa: E731
    # fmt: off
    return [
        Section("reference", "The reference study: does a pretrained encoder pay, and at what size?",
                "Masked-code pretraining at every scale, fine-tuned with each label budget, against the same "
                "architecture trained from scratch, LightGBM and the oracle ceiling; saturation is the smallest "
                "scale not significantly worse than the best (paired bootstrap on the same test patients).",
                reference_findings(metrics_dir),
                ["tables/saturation.csv", "tables/table1_models.csv", "tables/table2_cohorts.csv",
                 "tables/table3_downstream.csv", "tables/table3_downstream_auroc.csv"],
                ["figures/figure1_*.png", "figures/figure2_*.png", "figures/figure3_*.png", "figures/figure4_*.png",
                 "figures/figure5_*.png", "pretrain/**/*.png", "finetune/**/*.png", "baseline/**/*.png"],
                [*per_scale("03_pretrain"), *per_scale("04_finetune"), "05_baseline.html", "06_scaling.html"],
                ["tables/downstream_all_models.csv", "pretrain/**/*.csv", "finetune/**/*.csv", "baseline/**/*.csv"]),
        Section("generative", "The generative study: scaling laws and zero-shot prediction",
                "A decoder-only event model at the same scales; scaling laws fitted on an IsoFLOP grid; zero-shot "
                "prediction as the share of simulated futures holding the outcome.",
                generative_findings(metrics_dir),
                ["tables/table1_generative.csv", "tables/table3_zeroshot.csv", "laws/law_parameters_both.csv",
                 "laws/compute_optimal.csv", "laws/published_comparison.csv"],
                ["figures/figure6_*.png", "figures/figure7_*.png", "laws/**/*.png", "pretrain_gen/**/*.png",
                 "zeroshot/**/*.png"],
                [*per_scale("03b_pretrain_gen"), "07_scaling_laws.html", *per_scale("08_zeroshot")],
                ["laws/**/*.csv", "tables/zeroshot_all_models.csv", "pretrain_gen/**/*.csv", "zeroshot/**/*.csv"]),
        Section("transfer", "The transfer study: small cohorts and hospitals never seen",
                f"The {params.transfer.scale} encoder fine-tuned on k patients of hospitals held out of "
                "pretraining, against the same model from scratch and LightGBM; what pretraining taught the code "
                "embeddings.",
                transfer_findings(metrics_dir), ["transfer/relative_gains_table.csv", "transfer/embedding_purity.csv"],
                ["transfer/**/*.png"], ["09_transfer.html"], ["transfer/**/*.csv"]),
        Section("data", "The data, the cohorts and the tokens",
                "What the study ran on: the MEDS data described, each task's cohort (Table 2 with its exclusions) "
                "and the token store the transformers read.",
                data_findings(metrics_dir), ["data/tables/summary.csv", "cohort/table2_cohorts.csv"],
                ["data/**/*.png", "cohort/**/*.png", "tokenize/**/*.png"],
                ["00_data.html", "01_cohort.html", "02_tokenize.html"],
                ["data/**/*.csv", "cohort/**/*.csv", "tokenize/**/*.csv"]),
    ]
    # fmt: on


def _expand(root: Path, patterns: list[str], claimed: set[str]) -> list[str]:
    out = []
    for pattern in patterns:
        for path in sorted(root.glob(pattern)):
            rel = path.relative_to(root).as_posix()
            if rel.startswith("notebooks/") or rel == SCREENSHOT or rel in claimed:
                continue
            claimed.add(rel)
            out.append(rel)
    return out


def table_html(root: Path, rel: str, title: str, fold_over: int = -1) -> str:
    """A CSV table as an HTML table (cells formatted as in its Markdown file, numbers right-aligned), with links
    to its CSV and Markdown files; with more than FOLD_OVER rows (default: always) it goes in a closed <details>
    whose summary says how many rows it has."""
    path = root / rel
    try:
        df = pl.read_csv(path, infer_schema_length=None)
    except (pl.exceptions.PolarsError, OSError) as e:
        return f"<p class='error'>{html.escape(rel)} could not be read: {html.escape(str(e))}</p>"
    numeric = [report.is_numeric_column(df[c]) for c in df.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    rows = []
    for row in df.iter_rows():
        cells = "".join(f"<td{' class=num' if num else ''}>{html.escape(report.format_cell(v))}</td>"
                        for v, num in zip(row, numeric, strict=True))  # fmt: skip
        rows.append(f"<tr>{cells}</tr>")
    md = Path(rel).with_suffix(".md").as_posix()
    links = f"<a href='{_href(rel)}'>CSV</a>" + (f" · <a href='{_href(md)}'>Markdown</a>" if (root / md).is_file()
                                                else "")  # fmt: skip
    table = f"<div class='table'><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    caption = f"<h4>{html.escape(title)} <span class='links'>({links})</span></h4>"
    if df.height > fold_over:
        return (f"<details><summary>{html.escape(title)}: {df.height:,} rows, {df.width} columns "
                f"<span class='links'>({links})</span></summary>{table}</details>")  # fmt: skip
    return caption + table


def _href(rel: str) -> str:
    from urllib.parse import quote

    return html.escape(quote(rel))


def figure_html(root: Path, rel: str) -> str:
    svg = Path(rel).with_suffix(".svg").as_posix()
    img = f"<img src='{_href(rel)}' alt='{html.escape(Path(rel).stem)}' loading='eager'>"
    link = f"<a href='{_href(svg)}'>{img}</a>" if (root / svg).is_file() else img
    source = f"<a href='{_href(svg)}'>SVG</a>" if (root / svg).is_file() else f"<a href='{_href(rel)}'>PNG</a>"
    return f"<figure>{link}<figcaption>{html.escape(rel)} ({source})</figcaption></figure>"


STYLE = """
:root { --fg: #1d1d1f; --muted: #5f6368; --rule: #d9dce0; --accent: #1a5fb4; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       max-width: 76rem; margin: 0 auto; padding: 0 1.5rem 3rem; }
header { border-bottom: 2px solid var(--fg); margin-bottom: 1rem; }
h1 { font-size: 1.7rem; margin: 1.2rem 0 .4rem; }
h2 { font-size: 1.35rem; margin-top: 2.4rem; border-bottom: 1px solid var(--rule); padding-bottom: .2rem; }
h3 { font-size: 1.1rem; margin-top: 1.6rem; }
h4 { font-size: .95rem; margin: 1.2rem 0 .3rem; }
a { color: var(--accent); }
dl.run { display: grid; grid-template-columns: max-content 1fr; gap: .1rem 1rem; margin: .6rem 0 1rem; }
dl.run dt { color: var(--muted); }
dl.run dd { margin: 0; }
nav { position: sticky; top: 0; background: #fff; padding: .4rem 0; border-bottom: 1px solid var(--rule);
      font-size: .9rem; z-index: 1; }
nav a { margin-right: 1rem; }
.intro { color: var(--muted); }
ul.findings li { margin-bottom: .4rem; }
.links { font-weight: normal; font-size: .85rem; }
div.table { overflow-x: auto; max-width: 100%; border: 1px solid var(--rule); margin-bottom: .8rem; }
table { border-collapse: collapse; font-size: .82rem; font-variant-numeric: tabular-nums; }
th, td { padding: .2rem .5rem; border-bottom: 1px solid var(--rule); text-align: left; white-space: nowrap; }
th { background: #f4f5f7; position: sticky; top: 0; }
td.num { text-align: right; }
details { margin: .8rem 0; }
summary { cursor: pointer; font-weight: 600; font-size: .95rem; }
figure { margin: 1.2rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--rule); }
figcaption { font-size: .85rem; color: var(--muted); }
ul.notebooks { columns: 3 14rem; font-size: .9rem; }
.error { color: #b00020; }
@media print {
  body { max-width: none; padding: 0; font-size: 10pt; }
  nav { display: none; }
  h2 { break-before: page; }
  figure, div.table, h4 { break-inside: avoid; }
  h4 { break-after: avoid; }
  details > *:not(summary) { display: block; }
  div.table { overflow: visible; border: none; }
  table { font-size: 7.5pt; }
  th, td { white-space: normal; }
}
"""


def run_facts(params: StudyParams, metrics_dir: Path, date: dt.date) -> list[tuple[str, str]]:
    synth, splits = _read_json(metrics_dir / "synthesize.json"), _read_json(metrics_dir / "splits.json")
    source = params.data.source
    data = ("the built-in synthetic Japanese claims world (seed " f"{params.synth.seed})" if source == "synthetic"
            else f"the user's MEDS dataset at {source}")  # fmt: skip
    patients = f"{synth['patients']:,}" if synth else "not yet written"
    if splits:
        patients += (f" (train {splits['train']:,}, validation {splits['validation']:,}, test {splits['test']:,}, "
                     f"held-out hospitals {splits['held_out_hospital']:,})")  # fmt: skip
        if splits.get("split_source"):
            patients += f"; splits: {splits['split_source']}"
    return [("Profile", params.profile), ("Date", date.isoformat()), ("Data", data), ("Patients", patients),
            ("Scales", ", ".join(params.scales)), ("Tasks", ", ".join(s.name for s in params.tasks))]  # fmt: skip


def write_front_page(reports_dir: str | Path, params: StudyParams, metrics_dir: str | Path,
                     date: dt.date | None = None) -> Path:  # fmt: skip
    """Write REPORTS_DIR/index.html from the reports the stages wrote and their METRICS_DIR files."""
    root, metrics_dir = Path(reports_dir), Path(metrics_dir)
    date = date or dt.datetime.now(dt.UTC).date()
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>{html.escape(TITLE)}</title><style>{STYLE}</style></head><body>",
             f"<header><h1>{html.escape(TITLE)}</h1><dl class='run'>"]  # fmt: skip
    for key, value in run_facts(params, metrics_dir, date):
        parts.append(f"<dt>{html.escape(key)}</dt><dd>{html.escape(value)}</dd>")
    parts.append("</dl></header>")
    chosen = sections(params, metrics_dir)
    claimed: set[str] = set()
    expanded = [(s, _expand(root, s.tables, claimed), _expand(root, s.figures, claimed)) for s in chosen]
    more = {s.anchor: _expand(root, s.more_tables, claimed) for s in chosen}
    other_tables = _expand(root, ["**/*.csv"], claimed)
    other_figures = _expand(root, ["**/*.png"], claimed)
    nav = [f"<a href='#{s.anchor}'>{html.escape(s.title.split(':')[0])}</a>" for s in chosen]
    if other_tables or other_figures:
        nav.append("<a href='#other'>Other tables and figures</a>")
    nav.append("<a href='#notebooks'>Notebooks</a>")
    parts.append(f"<nav>{''.join(nav)}</nav>")
    for section, tables, figures in expanded:
        parts.append(f"<section id='{section.anchor}'><h2>{html.escape(section.title)}</h2>")
        parts.append(f"<p class='intro'>{html.escape(section.intro)}</p>")
        notebooks = section.notebooks
        parts.append("<p class='links'>Made by: " + ", ".join(
            f"<a href='{_href(n)}'>{html.escape(n[:-5])}</a>" for n in notebooks) + "</p>")  # fmt: skip
        parts.append("<h3>Findings</h3><ul class='findings'>")
        parts += [f"<li>{html.escape(s)}</li>" for s in section.findings]
        parts.append("</ul>")
        if tables:
            parts.append("<h3>Tables</h3>")
            for rel in tables:
                parts.append(table_html(root, rel, _title(rel), FOLD_ROWS))
        if figures:
            parts.append("<h3>Figures</h3>")
            parts += [figure_html(root, rel) for rel in figures]
        if more[section.anchor]:
            parts.append("<h3>More tables</h3><p class='intro'>Each stage's supporting tables (click to open).</p>")
            parts += [table_html(root, rel, _title(rel)) for rel in more[section.anchor]]
        parts.append("</section>")
    if other_tables or other_figures:
        parts.append("<section id='other'><h2>Other tables and figures</h2>")
        parts += [table_html(root, rel, _title(rel)) for rel in other_tables]
        parts += [figure_html(root, rel) for rel in other_figures]
        parts.append("</section>")
    parts.append("<section id='notebooks'><h2>Notebooks</h2><p class='intro'>Every executed notebook, in "
                 "pipeline order (HTML exports; the executed .ipynb files are under notebooks/).</p>"
                 "<ul class='notebooks'>")  # fmt: skip
    parts += [f"<li><a href='{_href(n)}'>{html.escape(n[:-5])}</a></li>" for n in notebook_reports(params)]
    parts.append("</ul></section></body></html>")
    path = root / "index.html"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def _title(rel: str) -> str:
    """tables/table3_downstream.csv -> 'table3 downstream' (folder kept where it tells which study)."""
    p = Path(rel)
    folder = p.parent.as_posix()
    name = p.stem.replace("_", " ")
    return name if folder in ("tables", "figures") else f"{name} ({folder})"


def notebook_reports(params: StudyParams) -> list[str]:
    """The HTML export of every notebook the pipeline runs, in pipeline order."""
    prefixes = ("03_pretrain", "03b_pretrain_gen", "04_finetune", "08_zeroshot")
    per_scale = [f"{prefix}-{s}.html" for prefix in prefixes for s in params.scales]
    return ["00_data.html", "01_cohort.html", "02_tokenize.html", *per_scale, "05_baseline.html", "06_scaling.html",
            "07_scaling_laws.html", "09_transfer.html"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m claimsutil.frontpage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--reports", default="reports", help="the reports folder (index.html is written there)")
    parser.add_argument("--metrics", default="data/metrics", help="the stages' metrics files")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    path = write_front_page(args.reports, params, args.metrics)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
