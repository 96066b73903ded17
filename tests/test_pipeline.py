"""The whole pipeline through `dvc repro` on the tiny profile, in a temporary copy of the project."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from claimsutil import splits as splits_module
from claimsutil.config import load_params
from claimsutil.meds import validate_dataset
from claimsutil.model import SCALES as MODEL_SCALES
from claimsutil.tokenize import TokenStore

pytestmark = pytest.mark.pipeline
SCALES = tuple(MODEL_SCALES["demo"])  # the tiny profile pretrains every demo scale for a few steps
TASKS = ["hypertension", "ckd", "amlodipine", "pregabalin", "pregabalin_diabetes", "ckd_75plus", "amlodipine_on_arb"]


def _run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    run = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert run.returncode == 0, f"{' '.join(cmd)} failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    return run


@pytest.fixture(scope="module")
def tiny_study(tiny_study_run) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """The tiny profile's `dvc repro` in a copy of the project (started in the background after collection:
    tests/conftest.py)."""
    return tiny_study_run


def test_repro_builds_every_output(tiny_study):
    copy, _, first = tiny_study
    stages = ("synthesize", "splits", "describe", "cohort", "tokenize", "baseline", *(f"pretrain@{s}" for s in SCALES),
              *(f"finetune@{s}" for s in SCALES), *(f"pretrain_gen@{s}" for s in SCALES),
              *(f"zeroshot@{s}" for s in SCALES), "transfer", "scaling", "frontpage")  # fmt: skip
    for stage in stages:
        assert f"Running stage '{stage}'" in first.stdout
    report = validate_dataset(copy / "data" / "meds")
    assert report.ok and report.n_subjects == 8000
    summary = json.loads((copy / "data" / "metrics" / "synthesize.json").read_text())
    assert summary["source"] == "synthetic" and summary["patients"] == 8000 and summary["events"] == report.n_rows
    assert (copy / "data" / "meds_truth" / "generator.json").is_file()
    assert (copy / "reports" / "00_data.html").stat().st_size > 50_000
    data = json.loads((copy / "reports" / "data" / "metrics.json").read_text())
    assert data["patients"] == 8000 and data["events"] == report.n_rows
    assert list((copy / "reports" / "data" / "figures").glob("*.png"))
    assert list((copy / "reports" / "data" / "tables").glob("*.md"))
    # Cohorts: the four reference tasks and three population-specific ones, Table 2 and the oracle.
    tasks = TASKS
    for task in tasks:
        labels = pl.read_parquet(copy / "data" / "cohort" / "labels" / f"{task}.parquet")
        assert labels.columns == ["subject_id", "prediction_time", "boolean_value"] and labels.height > 100
    table2 = pl.read_csv(copy / "reports" / "cohort" / "table2_cohorts.csv")
    assert table2["task"].to_list() == tasks
    assert table2.filter(pl.col("task") == "ckd")["population"].to_list() == ["as tasks/aces/ckd.yaml (ACES)"]
    restricted = table2.filter((pl.col("population") != "all") & (pl.col("task") != "ckd"))
    assert restricted["task"].to_list() == tasks[4:]
    excluded = restricted["excluded_outside_population"].cast(pl.Int64, strict=False)
    assert (excluded > 1000).all()  # the small cohorts: most patients are outside the population
    cohort = json.loads((copy / "data" / "metrics" / "cohort.json").read_text())
    assert set(cohort) == {*tasks, "data"} and all(0 < cohort[t]["oracle"]["auprc"]["point"] <= 1 for t in tasks)
    assert cohort["data"]["data_end"] == "2025-01-01" and cohort["data"]["records_after_death"] == 0
    assert (copy / "reports" / "01_cohort.html").is_file()
    # Tokens: every patient in the store, the vocabulary from pretraining patients.
    store = TokenStore(copy / "data" / "tokens")
    assert len(store) == 8000 and store.lengths().min() >= 1
    assert json.loads((copy / "data" / "metrics" / "tokenize.json").read_text())["vocabulary"] == len(
        store.vocab.tokens
    )
    # Baseline: every task and budget, with intervals, and predictions in the meds-evaluation columns.
    baseline = json.loads((copy / "data" / "metrics" / "baseline.json").read_text())
    assert set(baseline) == set(tasks)
    assert all(set(baseline[t]) == {"10", "20", "full"} for t in tasks)
    assert all(
        b["auprc"]["low"] <= b["auprc"]["point"] <= b["auprc"]["high"] for t in tasks for b in baseline[t].values()
    )
    assert (copy / "reports" / "baseline" / "baseline_results.md").is_file()
    # Pretraining: one model per scale, Table 1's columns in each scale's metrics, sizes growing with scale.
    sizes = []
    for scale in SCALES:
        m = json.loads((copy / "data" / "metrics" / f"pretrain-{scale}.json").read_text())
        assert {
            "layers",
            "width",
            "heads",
            "ffn",
            "tokens_seen",
            "training_flops",
            "wall_time_s",
            "final_val_loss",
        } <= set(m)
        assert (copy / "data" / "models" / scale / "model.pt").is_file() and m["steps"] == 3
        sizes.append(m["parameters_non_embedding"])  # embeddings and heads grow with the vocabulary, not the scale
    assert sizes == sorted(sizes) and sizes[-1] > 30 * sizes[0]
    # The generative model: one decoder per scale, its losses beside its frequency baseline; zero-shot futures.
    for scale in SCALES:
        g = json.loads((copy / "data" / "metrics" / f"pretrain_gen-{scale}.json").read_text())
        assert g["objective"] == "next" and g["steps"] == 3
        assert (copy / "data" / "models_gen" / scale / "model.pt").is_file()
        families = {"diagnosis", "drug", "time", "other", "total"}
        assert set(g["final_val_loss"]) == set(g["frequency_baseline"]) == families
        z = json.loads((copy / "data" / "metrics" / f"zeroshot-{scale}.json").read_text())
        assert z["labels_used"] == 0 and z["futures_per_patient"] == 4 and z["generated_tokens"] > 0
        assert set(z["impossible"]) == {"prostate code in a woman", "drug before its launch", "record after death"}
        assert all(set(z[t]) == {"n1", "n4"} for t in tasks[:4]) and not set(tasks[4:]) & set(z)  # zeroshot.tasks
        assert (copy / "reports" / f"08_zeroshot-{scale}.html").is_file()
    assert (copy / "reports" / "pretrain_gen" / "xs" / "time_tokens.md").is_file()


def test_every_declared_output_exists(tiny_study):
    copy, _, _ = tiny_study
    lock = yaml.safe_load((copy / "dvc.lock").read_text())
    declared = [out["path"] for stage in lock["stages"].values() for out in stage.get("outs", [])]
    assert len(declared) > 40
    missing = [p for p in declared if not (copy / p).exists()]
    assert not missing, missing


def test_finetuning_and_the_study_tables(tiny_study):
    copy, _, _ = tiny_study
    tasks = TASKS
    for scale in SCALES:
        m = json.loads((copy / "data" / "metrics" / f"finetune-{scale}.json").read_text())
        assert m["runs"] == len(tasks) * 2 * 2  # tasks x budgets x (pretrained, scratch), one budget seed
        for t in tasks:
            for init in ("pretrained", "scratch"):
                assert set(m[t][init]) == {"10", "20"}
                r = m[t][init]["20"]["auprc"]
                assert 0 <= r["low"] <= r["point"] <= r["high"] <= 1
        assert (copy / "reports" / f"04_finetune-{scale}.html").is_file()
    tables = copy / "reports" / "tables"
    t1 = pl.read_csv(tables / "table1_models.csv")
    assert t1["scale"].to_list() == list(SCALES) and (t1["parameters"].diff().drop_nulls() > 0).all()
    assert pl.read_csv(tables / "table2_cohorts.csv")["task"].to_list() == tasks
    t3 = pl.read_csv(tables / "table3_downstream.csv")
    assert t3.select("task", "budget").rows() == [(t, b) for t in tasks for b in (10, 20)]
    assert {f"pretrained {s}" for s in SCALES} | {f"scratch {s}" for s in SCALES} | {"lightgbm", "oracle"} <= set(
        t3.columns
    )
    assert t3["best"].null_count() == 0
    assert pl.read_csv(tables / "table3_downstream_auroc.csv").height == len(tasks) * 2
    sat = pl.read_csv(tables / "saturation.csv")
    assert sat.height == len(tasks) * 2 and set(sat["saturation_scale"]) <= set(SCALES)
    t1g = pl.read_csv(tables / "table1_generative.csv")
    assert t1g["scale"].to_list() == list(SCALES) and {"val_loss", "baseline", "below_baseline"} <= set(t1g.columns)
    t3z = pl.read_csv(tables / "table3_zeroshot.csv")
    assert t3z["task"].to_list() == tasks[:4] and {f"zero-shot {s}" for s in SCALES} | {"oracle"} <= set(t3z.columns)
    for n in range(1, 8):
        figure = next((copy / "reports" / "figures").glob(f"figure{n}_*.png"))
        assert figure.stat().st_size > 10_000 and figure.with_suffix(".svg").is_file()
    index = (copy / "reports" / "index.html").read_text()
    for link in ("tables/table3_downstream.csv", "figures/figure5_cost_benefit.png", "06_scaling.html",
                 "09_transfer.html", "transfer/figures/kshot.png"):  # fmt: skip
        assert f"'{link}'" in index
    assert "The transfer study: small cohorts and hospitals never seen" in index
    scaling = json.loads((copy / "data" / "metrics" / "scaling.json").read_text())
    assert set(scaling["saturation"]) == set(tasks)


def test_the_front_page_in_a_browser(tiny_study, chromium):
    """reports/index.html opened in headless Chromium: every figure loaded, every link resolves, the headline
    tables are HTML tables, it prints; the screenshot is kept beside the page."""
    from claimsutil import browser

    copy, _, _ = tiny_study
    check = browser.check_page(copy / "reports" / "index.html", copy / "reports" / "frontpage.png")
    pngs = [p for p in (copy / "reports").rglob("*.png") if "notebooks" not in p.parts and p.name != "frontpage.png"]
    assert len(check.images) == len(pngs) >= 20 and not check.broken_images  # every figure, inline
    assert not check.broken_links and len(check.links) > 2 * len(pngs)
    assert check.tables >= 8 and check.pdf_pages >= 5
    shot = copy / "reports" / "frontpage.png"
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (copy / "reports" / "index.html").read_text()
    for heading in ("The reference study", "The generative study", "The transfer study", "The data"):
        assert f"<h2>{heading}" in page
    assert "<dt>Profile</dt><dd>tiny</dd>" in page and "8,000" in page  # the run, at the top


def test_the_meds_split_file_and_the_study_agree(tiny_study):
    copy, _, _ = tiny_study
    meds_file = pl.read_parquet(copy / "data" / "meds" / "metadata" / "subject_splits.parquet")
    study = pl.read_parquet(copy / "data" / "splits" / "splits.parquet")
    assert meds_file.equals(splits_module.meds_subject_splits(study))
    m = json.loads((copy / "data" / "metrics" / "splits.json").read_text())
    assert "subject_splits.parquet" in m["split_source"] and m["subjects_not_in_split_file"] == 0


def test_every_prediction_file_loads_in_meds_evaluation(tiny_study):
    """Every predictions file the study writes passes meds-evaluation's schema, and its metrics agree with ours."""
    import numpy as np
    import pyarrow.parquet as pq
    from meds_evaluation.evaluate import evaluate_binary_classification
    from meds_evaluation.schema import PredictionSchema

    from claimsutil import metrics

    copy, _, _ = tiny_study
    files = [p for p in sorted((copy / "data").rglob("*.parquet"))
             if metrics.PREDICTED_PROBABILITY in pq.read_schema(p).names]  # fmt: skip
    kinds = {p.relative_to(copy / "data").parts[0] for p in files}
    assert {"finetune", "baseline", "zeroshot", "cohort", "transfer"} <= kinds and len(files) > 100
    for path in files:
        table = pq.read_table(path)
        assert table.schema.names == list(metrics.PREDICTION_SCHEMA), path
        PredictionSchema.align(table)  # raises on a missing or mistyped column
    # Their metrics beside ours, unweighted (the study weights subsampled test negatives; theirs cannot), on a
    # fine-tuned model's and a zero-shot model's predictions (ties: probabilities are shares of a few futures).
    futures = load_params(copy / "params.yaml").zeroshot.futures
    for path in (copy / "data/finetune/m/hypertension/pretrained_budget-20_seed-0.parquet",
                 copy / f"data/zeroshot/m/hypertension/futures-{futures}.parquet"):  # fmt: skip
        df = pl.read_parquet(path)
        theirs = evaluate_binary_classification(df)["samples_equally_weighted"]
        y, p = df["boolean_value"].to_numpy(), df[metrics.PREDICTED_PROBABILITY].to_numpy()
        ours = metrics.weighted_scores(y, p, np.ones((1, len(y))))
        assert ours["auprc"][0] == pytest.approx(theirs["average_precision_score"], abs=1e-12)
        assert ours["auroc"][0] == pytest.approx(theirs["roc_auc_score"], abs=1e-12)


def test_an_aces_defined_task_runs_end_to_end(tiny_study):
    """The tiny study's ckd is defined by tasks/aces/ckd.yaml (tests/conftest.py): ACES extracts its labels and
    they go through the same budgets, fine-tuning, baseline, zero-shot and evaluation as every other task."""
    from claimsutil import cohort as co
    from claimsutil.config import TaskSpec
    from claimsutil.meds import Events

    copy, _, _ = tiny_study
    params = load_params(copy / "params.yaml")
    assert {s.name: s.aces for s in params.tasks}["ckd"] == "tasks/aces/ckd.yaml"
    counts = json.loads((copy / "data" / "metrics" / "cohort.json").read_text())
    assert counts["ckd"]["excluded_aces_criteria"] > 0 and counts["hypertension"]["excluded_aces_criteria"] == 0
    labels = pl.read_parquet(copy / "data" / "cohort" / "labels" / "ckd.parquet")
    events = Events(copy / "data" / "meds", params.data.end_date, params.data.end_tail_share)
    builtin = co.build_tasks(events, (TaskSpec("ckd", ("ICD10/N18",)),), params.cohort.seed)["ckd"].labels
    both = labels.join(builtin, on="subject_id", suffix="_builtin")
    assert both.height == labels.height  # the same index draw: every ACES patient is a built-in one
    assert (both["prediction_time"] == both["prediction_time_builtin"]).all()
    assert (both["boolean_value"] == both["boolean_value_builtin"]).all()
    # The one documented difference: an outcome followed by the end of coverage inside the horizon.
    assert builtin.join(labels, on="subject_id", how="anti")["boolean_value"].all()
    for name in ("baseline", *(f"finetune-{s}" for s in SCALES), "scaling"):
        metrics = json.loads((copy / "data" / "metrics" / f"{name}.json").read_text())
        assert "ckd" in (metrics["saturation"] if name == "scaling" else metrics), name


def test_scaling_laws_stage_fits_the_grid_and_sweeps_the_learning_rate(tiny_study):
    copy, _, _ = tiny_study
    params = load_params(copy / "params.yaml")
    runs = pl.read_parquet(copy / "data" / "laws" / "runs.parquet")
    decoder = runs.filter(pl.col("run").str.starts_with("gen-"))
    grid = runs.filter(~pl.col("size").str.starts_with("scale-") & ~pl.col("run").str.starts_with("gen-"))
    for runs_of, budgets in ((grid, params.laws.budgets), (decoder, params.laws.gen_budgets)):
        assert sorted(set(runs_of["budget"])) == sorted(budgets)
        assert all(n >= 3 for n in runs_of.group_by("budget").len()["len"])  # every budget shows a profile
        assert ((6 * runs_of["parameters"] * runs_of["tokens"] / runs_of["budget"] - 1).abs() < 0.1).all()  # C = 6ND
    assert set(decoder["size"]) <= set(params.laws.gen_sizes) and decoder["loss_next_token"].is_finite().all()
    laws_dir = copy / "reports" / "laws"
    for name in ("grid", "law_parameters", "compute_optimal", "published_comparison", "study_budgets", "lr_sweep",
                 "grid_generative", "law_parameters_both", "compute_optimal_generative"):  # fmt: skip
        assert (laws_dir / f"{name}.md").is_file() and (laws_dir / f"{name}.csv").is_file(), name
    assert (laws_dir / "isoflop_generative.png").is_file()
    sweep = pl.read_csv(laws_dir / "lr_sweep.csv")
    assert sweep["chosen"].sum() == len(params.laws.lr_sweep_scales) and (sweep["excess_percent"] >= 0).all()
    m = json.loads((copy / "data" / "metrics" / "laws.json").read_text())
    assert m["runs"] == grid.height and m["alpha"] >= 0 and m["beta"] >= 0 and m["frequency_baseline"] > 0
    g = m["generative"]  # the decoder's fit, beside its own frequency baseline (the unigram of the timelines)
    assert g["runs"] == decoder.height and g["budgets"] == len(params.laws.gen_budgets)
    assert g["frequency_baseline"] > decoder["loss_next_token"].min() > 0
    t1 = pl.read_csv(copy / "reports" / "tables" / "table1_models.csv")
    below = t1["baseline_diagnosis"] - t1["val_loss_diagnosis"]
    assert ((t1["below_baseline_diagnosis"] - below).abs() < 1e-5).all()
    assert "07_scaling_laws.html" in (copy / "reports" / "index.html").read_text()


def test_second_repro_does_nothing(tiny_study):
    copy, env, _ = tiny_study
    again = _run([sys.executable, "-m", "dvc", "repro"], copy, env)
    assert "Running stage" not in again.stdout
    plots = _run([sys.executable, "-m", "dvc", "plots", "show", "--json"], copy, env)
    shown_plots = json.loads(plots.stdout)
    assert "reports/baseline/figures/auprc_by_budget.png" in json.dumps(shown_plots)
    metrics = _run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], copy, env)
    shown = json.loads(metrics.stdout)
    files = {f for workspace in shown.values() for f in workspace["data"]}
    expected = {"synthesize", "cohort", "tokenize", "baseline", "scaling", "laws", *(f"pretrain-{s}" for s in SCALES),
                *(f"finetune-{s}" for s in SCALES), *(f"pretrain_gen-{s}" for s in SCALES),
                *(f"zeroshot-{s}" for s in SCALES)}  # fmt: skip
    assert {f"data/metrics/{name}.json" for name in expected} | {"reports/data/metrics.json"} <= files
    git = {**env, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    _run(["git", "add", "-A"], copy, git)
    _run(["git", "commit", "-qm", "study"], copy, git)
    diff = _run([sys.executable, "-m", "dvc", "metrics", "diff", "--json"], copy, env)
    assert json.loads(diff.stdout or "{}") == {}  # nothing changed since the commit


def test_changing_one_scale_reruns_only_that_scale_and_the_analysis(tiny_study):
    copy, env, _ = tiny_study
    params = copy / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(original.replace("  m: {lr: 0.002}", "  m: {lr: 0.0025}"))
        status = json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], copy, env).stdout)
        # finetune@m follows once data/models/m changes; scaling_laws compares every scale's budget with its
        # fit (its grid runs are kept in data/laws and reused: only the fits rerun); transfer reads every scale's
        # code embeddings and transfers m
        assert set(status) == {"pretrain@m", "pretrain_gen@m", "scaling", "scaling_laws", "transfer", "frontpage"}
        params.write_text(original)
        # The same change as a DVC experiment (the README's example): `dvc exp run -S` reruns those stages and
        # what follows (persisted grid runs and papermill stages included) and `dvc exp show` lists its metrics.
        rerun = _run([sys.executable, "-m", "dvc", "exp", "run", "-n", "lr-m", "-S", "scales.m.lr=0.0025"], copy,
                     env).stdout  # fmt: skip
        running = {line.split("'")[1] for line in rerun.splitlines() if line.startswith("Running stage")}
        assert running == {"pretrain@m", "pretrain_gen@m", "finetune@m", "zeroshot@m", "scaling", "scaling_laws",
                           "transfer", "frontpage"}  # fmt: skip
        shown = json.loads(_run([sys.executable, "-m", "dvc", "exp", "show", "--json"], copy, env).stdout)
        base = next(b for b in shown if b.get("experiments"))  # the commit the experiment is based on
        runs = {run["name"]: run for e in base["experiments"] for run in e["revs"]}

        def loss(entry):
            return entry["data"]["metrics"]["data/metrics/pretrain-m.json"]["data"]["final_val_loss"]["total"]

        assert runs["lr-m"]["data"]["params"]["params.yaml"]["data"]["scales"]["m"]["lr"] == 0.0025
        assert base["data"]["params"]["params.yaml"]["data"]["scales"]["m"]["lr"] == 0.002
        assert loss(runs["lr-m"]) > 0 and loss(runs["lr-m"]) != loss(base)  # another run, its own metrics
    finally:
        params.write_text(original)


def _status(copy: Path, env: dict) -> set[str]:
    return set(json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], copy, env).stdout))


def test_what_a_change_reruns(tiny_study):
    """Adding a task reruns only what reads tasks; an execution knob reruns nothing; a module reruns the stages
    that import it (shown by `dvc status`, which lists the stages whose own deps or params changed)."""
    copy, env, _ = tiny_study
    params, oracle, config = copy / "params.yaml", copy / "claimsutil/synth/oracle.py", copy / "claimsutil/config.py"
    originals = {p: p.read_text() for p in (params, oracle, config)}
    finetunes = {f"{stage}@{s}" for s in SCALES for stage in ("finetune", "zeroshot")}  # both read `tasks`
    before = _status(copy, env)  # what earlier tests left out of date (their changes are undone)
    try:
        params.write_text(originals[params].replace("tasks:\n", "tasks:\n  asthma:\n    outcome: [ICD10/J45]\n", 1))
        assert _status(copy, env) == before | {"cohort", "baseline", "scaling", "transfer", *finetunes}
        params.write_text(
            originals[params].replace("  workers: 2                # execution", "  workers: 1  # execution")
        )
        assert _status(copy, env) == before  # finetune.workers never changes a result
        params.write_text(originals[params])
        oracle.write_text(originals[oracle] + "\n# a change\n")
        # its descendants follow when data/cohort changes; zeroshot reads the launch dates of claimsutil.synth
        assert _status(copy, env) == before | {"cohort", *(f"zeroshot@{s}" for s in SCALES)}
        oracle.write_text(originals[oracle])
        config.write_text(originals[config] + "\n# a change\n")
        stages = yaml.safe_load((copy / "dvc.lock").read_text())["stages"]
        assert _status(copy, env) == set(stages)  # every stage reads params through config.py
    finally:
        for path, text in originals.items():
            path.write_text(text)
    assert _status(copy, env) == before


def test_reports_never_show_small_counts(tiny_study):
    """Every table the study writes under reports/ applies the small-cell rule: no count of 1 to 9 in a
    column that counts patients, events or cases."""
    copy, _, _ = tiny_study
    not_counts = re.compile(r"^(budget|seed|scale|futures|layers|width|heads|ffn|epochs?|best_epoch|runs|codes|shards|"
                            r"steps|"
                            r"year|reference_year|age_band|min_cell|k|rank|id|horizon_days|min_prior_days|covered_months|"
                            r"world_size|tokens_per_step|parameters.*|.*_days|.*_s|.*_share|.*_rate|.*auprc.*|.*auroc.*|"
                            r".*brier.*|.*loss.*|prevalence|incidence|.*_hours|.*flops.*|n_hospitals|vocabulary|tokens|"
                            r"mean|median|p95|removed_share|pairs_lost|replicates|largest_k|source_budget|min_count|"
                            r"classes)$")  # fmt: skip
    offenders = []
    for path in sorted((copy / "reports").rglob("*.csv")):
        table = pl.read_csv(path, infer_schema_length=None)
        for column, dtype in table.schema.items():
            if dtype.is_integer() and not not_counts.match(column):
                small = table.filter((pl.col(column) > 0) & (pl.col(column) < 10))
                if small.height:
                    offenders.append(f"{path.relative_to(copy)}: {column} = {small[column][0]}")
    assert not offenders, offenders


def test_user_meds_source_goes_through_the_same_path(tiny_study, tmp_path):
    """data.source = a directory: validated and imported instead of generated; broken data stops the stage."""
    copy, env, _ = tiny_study
    user = tmp_path / "my_meds"
    shutil.copytree(copy / "data" / "meds", user)
    params = copy / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(original.replace("source: synthetic", f"source: {user}"))
        run = _run([sys.executable, "-m", "dvc", "repro", "synthesize"], copy, env)
        assert "imported" in run.stdout
        summary = json.loads((copy / "data" / "metrics" / "synthesize.json").read_text())
        assert summary["source"] == str(user) and summary["patients"] == 8000
        (user / "data" / "shard-00000.parquet").write_bytes(b"not parquet")
        broken = subprocess.run(
            [sys.executable, "-m", "dvc", "repro", "-f", "synthesize"],
            cwd=copy,
            env=env,
            capture_output=True,
            text=True,
        )
        assert broken.returncode != 0
        assert "shard-00000.parquet" in broken.stdout + broken.stderr
    finally:
        params.write_text(original)


def test_transfer_stage_writes_the_kshot_study_and_the_embedding_analysis(tiny_study):
    copy, _, _ = tiny_study
    params = load_params(copy / "params.yaml")
    out, reports = copy / "data" / "transfer", copy / "reports" / "transfer"
    m = json.loads((copy / "data" / "metrics" / "transfer.json").read_text())
    transferred = [t for t in TASKS if not m[t]["skipped"]]  # the reason a task was not transferred, or None
    assert transferred and any(m[t]["shots"] for t in transferred)  # the tiny pools: k = 4 for some tasks
    for task in transferred:
        test = pl.read_parquet(out / task / "test.parquet")
        splits = pl.read_parquet(copy / "data" / "cohort" / "splits.parquet")
        assert set(test.join(splits, on="subject_id")["split"]) == {"held_out_hospital"}
        # The source model is the finetune stage's run (its predictions differ only by the rows they were batched with)
        assert (out / task / "source.parquet").is_file() and m[task]["source_max_abs_diff_from_finetune"] < 1e-9
        for k in map(int, m[task]["shots"].split()):
            for arm in ("pretrained", "scratch", "lightgbm"):
                for r in range(params.transfer.replicates):
                    assert (out / task / f"{arm}_k-{k}_rep-{r}.parquet").is_file()
    kshot = pl.read_csv(reports / "kshot_results.csv")
    assert set(kshot["arm"]) == {"pretrained", "scratch", "lightgbm", "source"}
    gains = pl.read_csv(reports / "relative_gains.csv")
    assert set(gains["over"]) >= {"scratch", "lightgbm"} and (gains["low"] <= gains["high"]).all()
    purity = pl.read_csv(reports / "embedding_purity.csv")
    every = purity.filter(pl.col("min_count") == 0)  # and again among frequent codes, where there are enough
    assert every.height == len(SCALES) * 3 * 2  # scales x (pretrained input, output, random input) x groupings
    assert ((purity["chance_low"] <= purity["chance_mean"]) & (purity["chance_mean"] <= purity["chance_high"])).all()
    assert pl.read_csv(reports / "nearest_neighbours.csv")["query"].n_unique() >= 5
    for figure in ("kshot", "embedding_purity", "embedding_map"):
        assert (reports / "figures" / f"{figure}.png").stat().st_size > 10_000
    assert (copy / "reports" / "09_transfer.html").is_file() and m["findings"]
