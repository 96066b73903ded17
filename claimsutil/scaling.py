"""The scaling analysis: the study's tables, figures, power-law fits and saturation decisions.

Every downstream model is scored on the same test patients with the same weights (the cohort stage's
evaluation sample, `claimsutil.cohort.task_samples`): each scale pretrained and from scratch, LightGBM and the
oracle ceiling, each with the same resamples (params.yaml `evaluation`), so a model, task and budget gets the
same number here as in its own stage's report. A label budget's result is the mean over its budget seeds,
with a 95% interval from a patient-level bootstrap shared by all models, so differences between models are
paired.

Saturation is a test, not a judgement: for a task and label budget, the saturation scale is the smallest
pretrained scale whose AUPRC is not significantly worse than the best scale's (the 95% paired-bootstrap
interval of "scale minus best" reaches zero). The hours saved are the pretraining wall time of the largest
scale minus that of the saturation scale.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from claimsutil import metrics
from claimsutil.cohort import read_sample
from claimsutil.meds import code_family
from claimsutil.metrics import INITS

MODEL_ORDER = ("pretrained", "scratch", "lightgbm", "oracle")


# ------------------------------------------------------------------------------------------------ Table 1


def read_pretrain_metrics(metrics_dir: str | Path, scales: list[str], stage: str = "pretrain") -> dict[str, dict]:
    """{scale: the STAGE's metrics JSON (pretrain, or pretrain_gen for the generative model)}; a missing file is
    an error naming it."""
    out = {}
    for scale in scales:
        path = Path(metrics_dir) / f"{stage}-{scale}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no pretraining metrics for scale '{scale}' (run the {stage} stage)")
        out[scale] = json.loads(path.read_text(encoding="utf-8"))
    return out


TABLE1_NOT_COUNTS = ("parameters", "non_embedding", "layers", "width", "heads", "ffn", "tokens")  # model shapes


def read_frequency_baseline(metrics_dir: str | Path) -> dict[str, float]:
    """{family: unigram cross-entropy} from the tokenize stage's metrics ({} when it has none)."""
    path = Path(metrics_dir) / "tokenize.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tokenize metrics (run the tokenize stage)")
    prefix = "frequency_baseline_"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    return {k[len(prefix) :]: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def table1(pretrain: dict[str, dict], baseline: dict[str, float] | None = None) -> pl.DataFrame:
    """Model configurations: one row per scale, smallest first. BASELINE (the tokenize stage's frequency
    baseline per family): each family's unigram cross-entropy beside the scale's loss, and how far below
    it the scale ends (positive: the model has learned more than code frequencies)."""
    rows = []
    for scale, m in pretrain.items():
        val = m.get("final_val_loss") or {}
        rows.append({
            "scale": scale, "parameters": m["parameters"], "non_embedding": m["parameters_non_embedding"],
            "layers": m["layers"], "width": m["width"], "heads": m["heads"], "ffn": m["ffn"],
            "tokens": m["tokens_seen"], "flops": float(m["training_flops"]), "wall_time_s": m["wall_time_s"],
            "hours": m["wall_time_s"] / 3600, "val_loss": val.get("total"), "val_loss_diagnosis": val.get("diagnosis"),
            "val_loss_drug": val.get("drug"), "val_loss_age": val.get("age"),
        })  # fmt: skip
        for family in ("diagnosis", "drug"):
            if baseline and family in baseline and val.get(family) is not None:
                ce = baseline[family]
                rows[-1] |= {f"baseline_{family}": ce, f"below_baseline_{family}": ce - val[family]}
    return pl.DataFrame(rows)


def table1_generative(pretrain_gen: dict[str, dict]) -> pl.DataFrame:
    """Table 1's generative rows: the decoder at each scale, its next-token loss (all targets, and by the family
    of the token predicted) beside the frequency baseline of its stage (a unigram model of the pretraining
    patients' timelines), and how far below the baseline it ends."""
    rows = []
    for scale, m in pretrain_gen.items():
        val, base = m.get("final_val_loss") or {}, m.get("frequency_baseline") or {}
        row = {
            "scale": scale, "parameters": m["parameters"], "non_embedding": m["parameters_non_embedding"],
            "layers": m["layers"], "width": m["width"], "heads": m["heads"], "ffn": m["ffn"],
            "tokens": m["tokens_seen"], "flops": float(m["training_flops"]), "wall_time_s": m["wall_time_s"],
            "hours": m["wall_time_s"] / 3600, "val_loss": val.get("total"), "baseline": base.get("total"),
        }  # fmt: skip
        row["below_baseline"] = (
            None if None in (row["val_loss"], row["baseline"]) else row["baseline"] - row["val_loss"]
        )
        for family in ("diagnosis", "drug", "time"):
            row[f"val_loss_{family}"], row[f"baseline_{family}"] = val.get(family), base.get(family)
        rows.append(row)
    return pl.DataFrame(rows)


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * x ** -exponent, fitted by least squares on log y against log x."""

    coefficient: float
    exponent: float
    r2: float

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.coefficient * np.asarray(x, dtype=np.float64) ** -self.exponent


def fit_power_law(x, y) -> PowerLaw:
    """The power law through (X, Y); needs at least two points with distinct positive x and positive y."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2 or np.unique(x[ok]).size < 2:
        raise ValueError(f"a power law needs two points with distinct positive x and positive y, got x={x}, y={y}")
    lx, ly = np.log(x[ok]), np.log(y[ok])
    slope, intercept = np.polyfit(lx, ly, 1)
    residual = ly - (intercept + slope * lx)
    total = ((ly - ly.mean()) ** 2).sum()
    r2 = float(1 - (residual**2).sum() / total) if total > 0 else 1.0
    return PowerLaw(float(math.exp(intercept)), float(-slope), r2)


# ------------------------------------------------------------------------------------------- predictions


@dataclass
class TaskPredictions:
    """Every model's test predictions for one task, restricted to the evaluation sample."""

    task: str
    evaluation: pl.DataFrame  # subject_id, prediction_time, boolean_value, weight
    runs: dict[tuple[str, str, str], list[pl.DataFrame]]  # (model, scale or "", budget) -> one frame per seed


def load_task(task: str, scales: list[str], budgets: list[str], cohort_dir: str | Path, finetune_dir: str | Path,
              baseline_dir: str | Path) -> TaskPredictions:  # fmt: skip
    """Read a task's predictions on its evaluation sample (`claimsutil.cohort.task_samples`): every scale x init
    x budget x budget seed of fine-tuning, LightGBM's runs of the same budgets and seeds, and the oracle
    (COHORT_DIR/oracle, when there is ground truth)."""
    cohort_dir, finetune_dir, baseline_dir = Path(cohort_dir), Path(finetune_dir), Path(baseline_dir)
    evaluation = read_sample(cohort_dir, task, "evaluation")
    seeds = pl.read_parquet(cohort_dir / "budgets" / f"{task}.parquet")["seed"].n_unique()
    runs: dict[tuple[str, str, str], list[pl.DataFrame]] = {}

    def on_sample(files: list[Path]) -> list[pl.DataFrame]:
        return [metrics.restrict(metrics.read_predictions(f), evaluation, str(f)) for f in files]

    for scale in scales:
        for init in INITS:
            for budget in budgets:
                n = seeds if budget != "full" else 1
                runs[(init, scale, budget)] = on_sample(
                    [finetune_dir / scale / task / f"{init}_budget-{budget}_seed-{s}.parquet" for s in range(n)]
                )
    for budget in budgets:
        n = seeds if budget != "full" else 1
        runs[("lightgbm", "", budget)] = on_sample([baseline_dir / task / f"budget-{budget}_seed-{s}.parquet"
                                                    for s in range(n)])  # fmt: skip
    if (cohort_dir / "oracle" / f"{task}.parquet").is_file():
        runs[("oracle", "", "")] = on_sample([cohort_dir / "oracle" / f"{task}.parquet"])
    return TaskPredictions(task, evaluation, runs)


# ------------------------------------------------------------------------------------------------ Table 3


def downstream(preds: TaskPredictions, n_resamples: int, seed: int) -> pl.DataFrame:
    """One row per model of the task (model, scale, budget): AUPRC, AUROC and Brier with 95% intervals."""
    rows = []
    for (model, scale, budget), frames in preds.runs.items():
        r = metrics.evaluate_mean(frames, n_resamples=n_resamples, seed=seed, weights=preds.evaluation)
        row = {"task": preds.task, "model": model, "scale": scale, "budget": budget, "runs": len(frames),
               "scored_patients": r["n"], "scored_positives": r["positives"]}  # fmt: skip
        for m in metrics.METRICS:
            row |= {m: r[m]["point"], f"{m}_low": r[m]["low"], f"{m}_high": r[m]["high"]}
        rows.append(row)
    return pl.DataFrame(rows)


def downstream_all(preds: dict[str, TaskPredictions], n_resamples: int, seed: int) -> pl.DataFrame:
    """`downstream` of every task, stacked (the long form behind Table 3)."""
    return pl.concat([downstream(p, n_resamples, seed) for p in preds.values()])


def read_cohort_table(path: str | Path, min_cell: int) -> pl.DataFrame:
    """Table 2 as the cohort stage wrote it (CSV), with the small-cell rule applied again."""
    from claimsutil.report import suppress_small

    return suppress_small(pl.read_csv(path, infer_schema_length=None), min_cell)


def _cell(point: float, low: float, high: float) -> str:
    return f"{point:.3f} ({low:.3f}-{high:.3f})"


def table3(results: pl.DataFrame, scales: list[str], budgets: list[str], metric: str = "auprc") -> pl.DataFrame:
    """Per task x budget: METRIC with its interval for each pretrained scale, each from-scratch scale,
    LightGBM and the oracle; the best trained model of the row (oracle excluded: a ceiling) marked with **."""
    columns = [("pretrained", s) for s in scales] + [("scratch", s) for s in scales] + [("lightgbm", "")]
    rows = []
    for task in results["task"].unique(maintain_order=True).to_list():
        t = results.filter(pl.col("task") == task)
        oracle = t.filter(pl.col("model") == "oracle")
        for budget in budgets:
            cells, values = {}, {}
            for model, scale in columns:
                r = t.filter((pl.col("model") == model) & (pl.col("scale") == scale) & (pl.col("budget") == budget))
                name = f"{model} {scale}".strip()
                if r.height:
                    values[name] = r[metric][0]
                    cells[name] = _cell(r[metric][0], r[f"{metric}_low"][0], r[f"{metric}_high"][0])
            if not values:  # a task without this budget (its max_budget)
                continue
            # Brier: lower is better
            best = (min if metric == "brier" else max)(values, key=values.get)
            if best is not None:
                cells[best] = f"**{cells[best]}**"
            first = t.filter(pl.col("budget") == budget)
            row = {"task": task, "budget": budget}
            for column in ("scored_patients", "scored_positives"):
                row[column] = first[column][0] if first.height else None
            row |= cells
            row["oracle"] = (
                _cell(oracle[metric][0], oracle[f"{metric}_low"][0], oracle[f"{metric}_high"][0])
                if oracle.height
                else "-"
            )
            row["best"] = best
            rows.append(row)
    return pl.DataFrame(rows)


# ------------------------------------------------------------------------------------ zero-shot (Table 3z)


@dataclass
class ZeroShotPredictions:
    """A task's zero-shot predictions: the simulated (sub)sample of its evaluation sample, with its weights, and
    per scale and n the predictions from the first n futures (`claimsutil.generate`)."""

    task: str
    sample: pl.DataFrame  # subject_id, prediction_time, boolean_value, weight
    runs: dict[tuple[str, int], pl.DataFrame]  # (scale, n) -> predictions


def load_zeroshot(task: str, scales: list[str], zeroshot_dir: str | Path) -> ZeroShotPredictions:
    """The zeroshot stage's files of TASK at every scale (the sample is the same at every scale: an error
    says so if not)."""
    root = Path(zeroshot_dir)
    sample, runs = None, {}
    for scale in scales:
        folder = root / scale / task
        if not (folder / "sample.parquet").is_file():
            raise FileNotFoundError(f"{folder}: no zero-shot predictions for task '{task}' (run zeroshot@{scale})")
        this = pl.read_parquet(folder / "sample.parquet")
        if sample is not None and not this.equals(sample):
            raise ValueError(f"{folder}: another zero-shot sample than the other scales' (rerun every zeroshot stage)")
        sample = this
        for f in sorted(folder.glob("futures-*.parquet")):
            runs[(scale, int(f.stem.split("-")[1]))] = metrics.read_predictions(f)
    return ZeroShotPredictions(task, sample, runs)


def zeroshot_comparison(zs: ZeroShotPredictions, preds: TaskPredictions, budgets: list[str], n_resamples: int,
                        seed: int) -> pl.DataFrame:  # fmt: skip
    """Every model of the task on the zero-shot sample (its patients and weights, so every row is paired): the
    zero-shot model at each scale and n, the fine-tuned encoder at each scale and budget, LightGBM at each
    budget and the oracle. One row per model: AUPRC, AUROC and Brier with 95% intervals."""
    rows = []

    def add(model: str, scale: str, budget: str, frames: list[pl.DataFrame], futures: int | None = None) -> None:
        on = [metrics.restrict(f, zs.sample, f"{model} {scale} {budget}") for f in frames]
        r = metrics.evaluate_mean(on, n_resamples=n_resamples, seed=seed, weights=zs.sample)
        row = {"task": zs.task, "model": model, "scale": scale, "budget": budget, "futures": futures,
               "scored_patients": r["n"], "scored_positives": r["positives"]}  # fmt: skip
        for m in metrics.METRICS:
            row |= {m: r[m]["point"], f"{m}_low": r[m]["low"], f"{m}_high": r[m]["high"]}
        rows.append(row)

    for (scale, n), frame in sorted(zs.runs.items(), key=lambda kv: kv[0][1]):
        add("zeroshot", scale, "0", [frame], n)
    for (model, scale, budget), frames in preds.runs.items():
        if model in ("pretrained", "lightgbm", "oracle") and (model == "oracle" or budget in budgets):
            add(model, scale, budget, frames)
    return pl.DataFrame(rows, schema_overrides={"futures": pl.Int64})


def zeroshot_all(zs: dict[str, ZeroShotPredictions], preds: dict[str, TaskPredictions], budgets: list[str],
                 n_resamples: int, seed: int) -> pl.DataFrame:  # fmt: skip
    """`zeroshot_comparison` of every task, stacked."""
    return pl.concat([zeroshot_comparison(zs[t], preds[t], budgets, n_resamples, seed) for t in zs])


def zeroshot_findings(comparison: pl.DataFrame, budgets: list[str], futures: int) -> list[str]:
    """One sentence per task: the zero-shot model's best scale against the fine-tuned encoder with the fewest
    labels and LightGBM with as many, on the same patients (AUPRC, 95% intervals)."""
    out, fewest = [], budgets[0]
    for task in comparison["task"].unique(maintain_order=True).to_list():
        t = comparison.filter(pl.col("task") == task)
        z = t.filter((pl.col("model") == "zeroshot") & (pl.col("futures") == futures)).sort("auprc", descending=True)
        f = t.filter((pl.col("model") == "pretrained") & (pl.col("budget") == fewest)).sort("auprc", descending=True)
        g = t.filter((pl.col("model") == "lightgbm") & (pl.col("budget") == fewest))
        if not (z.height and f.height and g.height):
            continue
        zr, fr, gr = z.row(0, named=True), f.row(0, named=True), g.row(0, named=True)
        out.append(
            f"{task}: with no labels, the generative model ({zr['scale']}, {futures} futures a patient) reaches AUPRC "
            f"{_cell(zr['auprc'], zr['auprc_low'], zr['auprc_high'])}, against "
            f"{_cell(fr['auprc'], fr['auprc_low'], fr['auprc_high'])} for the encoder fine-tuned on {fewest} labels "
            f"({fr['scale']}) and {_cell(gr['auprc'], gr['auprc_low'], gr['auprc_high'])} for LightGBM on as many "
            f"(the same {zr['scored_patients']:,} patients)."
        )
    return out


def table3_zeroshot(comparison: pl.DataFrame, scales: list[str], budgets: list[str], futures: int,
                    metric: str = "auprc") -> pl.DataFrame:  # fmt: skip
    """Per task, on its zero-shot sample: the zero-shot model at each scale (FUTURES futures a patient, no
    labels), the fine-tuned encoder at its best scale for each label budget, LightGBM at each budget, and the
    oracle; METRIC with its 95% interval."""
    rows = []
    for task in comparison["task"].unique(maintain_order=True).to_list():
        t = comparison.filter(pl.col("task") == task)
        first = t.row(0, named=True)
        row = {"task": task, "scored_patients": first["scored_patients"], "scored_positives": first["scored_positives"]}
        for scale in scales:
            r = t.filter((pl.col("model") == "zeroshot") & (pl.col("scale") == scale) & (pl.col("futures") == futures))
            row[f"zero-shot {scale}"] = (
                _cell(r[metric][0], r[f"{metric}_low"][0], r[f"{metric}_high"][0]) if r.height else "-"
            )
        for budget in budgets:
            r = t.filter((pl.col("model") == "pretrained") & (pl.col("budget") == budget)).sort(metric, descending=True)
            if r.height:
                row[f"fine-tuned @{budget}"] = (
                    f"{_cell(r[metric][0], r[f'{metric}_low'][0], r[f'{metric}_high'][0])} {r['scale'][0]}"
                )
        for budget in budgets:
            r = t.filter((pl.col("model") == "lightgbm") & (pl.col("budget") == budget))
            if r.height:
                row[f"LightGBM @{budget}"] = _cell(r[metric][0], r[f"{metric}_low"][0], r[f"{metric}_high"][0])
        r = t.filter(pl.col("model") == "oracle")
        row["oracle"] = _cell(r[metric][0], r[f"{metric}_low"][0], r[f"{metric}_high"][0]) if r.height else "-"
        rows.append(row)
    return pl.DataFrame(rows)


def plot_zeroshot(comparison: pl.DataFrame, params: dict[str, float], budgets: list[str], futures: int):
    """Figure 6: per task, AUPRC on its zero-shot sample against model size: the zero-shot model (FUTURES
    futures a patient, no labels; 95% band), the fine-tuned encoder at each label budget, LightGBM at each
    budget (dashed) and the oracle (black)."""
    import matplotlib.pyplot as plt

    tasks = comparison["task"].unique(maintain_order=True).to_list()
    cols = min(2, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes.flat, tasks, strict=False):
        t = comparison.filter(pl.col("task") == task)
        z = t.filter((pl.col("model") == "zeroshot") & (pl.col("futures") == futures))
        z = z.with_columns(x=pl.col("scale").replace_strict(params, default=None)).sort("x")
        ax.fill_between(z["x"], z["auprc_low"], z["auprc_high"], color="tab:purple", alpha=0.15)
        ax.plot(z["x"], z["auprc"], "s-", color="tab:purple", lw=2, label=f"zero-shot, n={futures}")
        for i, budget in enumerate(budgets):
            c = colors[i % len(colors)]
            f = t.filter((pl.col("model") == "pretrained") & (pl.col("budget") == budget))
            f = f.with_columns(x=pl.col("scale").replace_strict(params, default=None)).sort("x")
            ax.plot(f["x"], f["auprc"], "o-", color=c, ms=3, label=f"fine-tuned, {budget}")
            g = t.filter((pl.col("model") == "lightgbm") & (pl.col("budget") == budget))
            if g.height:
                ax.axhline(g["auprc"][0], color=c, ls="--", lw=1)
        o = t.filter(pl.col("model") == "oracle")
        if o.height:
            ax.axhline(o["auprc"][0], color="black", lw=1.2, label="oracle")
        _scale_ticks(ax, params)
        ax.set_title(task)
        ax.set_xlabel("parameters")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.set_visible(False)
    axes[0][0].set_ylabel("AUPRC (zero-shot sample)")
    axes[0][0].legend(fontsize=7, title="LightGBM: dashed", title_fontsize=7)
    fig.tight_layout()
    return fig


def plot_zeroshot_futures(comparison: pl.DataFrame, scales: list[str]):
    """Figure 7: zero-shot AUPRC against the number of futures per patient, one panel per task, one line per
    scale."""
    import matplotlib.pyplot as plt

    tasks = comparison["task"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.4 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for scale in scales:
            z = comparison.filter(
                (pl.col("task") == task) & (pl.col("model") == "zeroshot") & (pl.col("scale") == scale)
            )
            z = z.sort("futures")
            ax.plot(z["futures"], z["auprc"], "o-", ms=3, label=scale)
        ax.set_xscale("log", base=2)
        ax.set_title(task)
        ax.set_xlabel("futures per patient")
    axes[0][0].set_ylabel("zero-shot AUPRC")
    axes[0][0].legend(fontsize=7, title="scale", title_fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------- saturation


def saturation(preds: TaskPredictions, scales: list[str], budget: str, n_resamples: int, seed: int,
               alpha: float = 0.05) -> dict[str, Any]:  # fmt: skip
    """The smallest pretrained scale not significantly worse than the best one (paired bootstrap on the same
    test patients), with its gains over LightGBM and over the same scale from scratch."""
    w = preds.evaluation
    points = {s: float(np.mean([metrics.score(f["boolean_value"].to_numpy(), f["predicted_boolean_probability"]
                                              .to_numpy(), metrics.row_weights_for(f, w))["auprc"]
                                for f in preds.runs[("pretrained", s, budget)]])) for s in scales}  # fmt: skip
    best = max(scales, key=lambda s: points[s])
    comparisons = {}
    chosen = best
    for s in scales:
        if s == best:
            comparisons[s] = {"difference": 0.0, "low": 0.0, "high": 0.0, "p_value": 1.0}
            continue
        runs_s, runs_best = preds.runs[("pretrained", s, budget)], preds.runs[("pretrained", best, budget)]
        d = metrics.paired_mean_bootstrap(runs_s, runs_best, n_resamples, seed, alpha, w)["auprc"]
        comparisons[s] = {"difference": d.point, "low": d.low, "high": d.high, "p_value": d.p_value}
    for s in scales:  # smallest first
        if comparisons[s]["high"] >= 0:
            chosen = s
            break

    def gain(other: tuple[str, str, str]) -> dict[str, float] | None:
        if other not in preds.runs:
            return None
        d = metrics.paired_mean_bootstrap(preds.runs[("pretrained", chosen, budget)], preds.runs[other],
                                          n_resamples, seed, alpha, w)["auprc"]  # fmt: skip
        return {"difference": d.point, "low": d.low, "high": d.high, "p_value": d.p_value}

    return {
        "task": preds.task, "budget": budget, "best_scale": best, "saturation_scale": chosen,
        "auprc": points, "versus_best": comparisons,
        "gain_over_lightgbm": gain(("lightgbm", "", budget)),
        "gain_over_scratch": gain(("scratch", chosen, budget)),
    }  # fmt: skip


def saturation_table(decisions: list[dict], table1_df: pl.DataFrame) -> pl.DataFrame:
    """One row per task x budget: best and saturation scales, AUPRC gains with intervals, hours saved."""
    hours = dict(zip(table1_df["scale"], table1_df["hours"], strict=True))
    largest = table1_df["scale"][-1]
    rows = []
    for d in decisions:
        lg, sc = d["gain_over_lightgbm"], d["gain_over_scratch"]
        rows.append({
            "task": d["task"], "budget": d["budget"], "best_scale": d["best_scale"],
            "saturation_scale": d["saturation_scale"], "auprc": d["auprc"][d["saturation_scale"]],
            "gain_over_lightgbm": lg["difference"] if lg else None, "gain_over_lightgbm_low": lg["low"] if lg else None,
            "gain_over_lightgbm_high": lg["high"] if lg else None,
            "gain_over_scratch": sc["difference"] if sc else None, "gain_over_scratch_low": sc["low"] if sc else None,
            "gain_over_scratch_high": sc["high"] if sc else None,
            "pretraining_hours": hours[d["saturation_scale"]],
            "hours_saved": hours[largest] - hours[d["saturation_scale"]],
        })  # fmt: skip
    return pl.DataFrame(rows)


def _signed(d: dict[str, float]) -> str:
    return f"{d['difference']:+.3f} (95% CI {d['low']:+.3f} to {d['high']:+.3f})"


def _verdict(d: dict[str, float] | None, what: str) -> str:
    if d is None:
        return f"no {what} to compare with"
    if d["low"] > 0:
        return f"better than {what} by {_signed(d)}"
    if d["high"] < 0:
        return f"worse than {what} by {_signed(d)}"
    return f"not significantly different from {what} ({_signed(d)})"


def findings(decisions: list[dict], table1_df: pl.DataFrame, task_kinds: dict[str, str],
             reference: dict[str, str] | None = None) -> list[str]:  # fmt: skip
    """Sentences stating, per task, the saturation scale, the gains and the hours saved, written from the
    numbers, then whether the reference study's pattern (disease tasks saturate later than drug tasks) holds."""
    hours = dict(zip(table1_df["scale"], table1_df["hours"], strict=True))
    params = dict(zip(table1_df["scale"], table1_df["parameters"], strict=True))
    scales = table1_df["scale"].to_list()
    largest = scales[-1]
    out = []
    for d in decisions:
        s = d["saturation_scale"]
        saved = hours[largest] - hours[s]
        share = saved / hours[largest] if hours[largest] > 0 else 0.0
        text = (
            f"{d['task']} ({task_kinds.get(d['task'], 'other')} task, {d['budget']} labelled patients): the best "
            f"pretrained scale is {d['best_scale']} (AUPRC {d['auprc'][d['best_scale']]:.3f}); the smallest scale "
            f"not significantly worse is {s} ({params[s]:,} parameters, AUPRC {d['auprc'][s]:.3f}). At {s}, the "
            f"fine-tuned model is {_verdict(d['gain_over_lightgbm'], 'LightGBM')} and "
            f"{_verdict(d['gain_over_scratch'], 'the same architecture trained from scratch')}. "
        )
        if s == largest:
            text += f"More parameters kept paying up to the largest scale ({largest}): no pretraining time is saved."
        else:
            text += (f"Stopping at {s} saves {saved * 3600:,.0f} s of pretraining ({share:.0%} of the largest "
                     f"scale's {hours[largest] * 3600:,.0f} s).")  # fmt: skip
        out.append(text)
    rank = {s: i for i, s in enumerate(scales)}
    by_kind: dict[str, list[int]] = {}
    for d in decisions:
        by_kind.setdefault(task_kinds.get(d["task"], "other"), []).append(rank[d["saturation_scale"]])
    if "disease" in by_kind and "drug" in by_kind:
        dis, drug = np.mean(by_kind["disease"]), np.mean(by_kind["drug"])
        if dis > drug:
            out.append("As in the reference study, the disease tasks saturate at larger scales than the drug tasks "
                       f"(mean scale rank {dis:.1f} against {drug:.1f}, 0 = {scales[0]}).")  # fmt: skip
        elif dis == drug:
            out.append("Unlike the reference study, disease and drug tasks saturate at the same scales here "
                       f"(mean scale rank {dis:.1f}).")  # fmt: skip
        else:
            out.append("Unlike the reference study, the drug tasks saturate at larger scales than the disease tasks "
                       f"here (mean scale rank {drug:.1f} against {dis:.1f}, 0 = {scales[0]}).")  # fmt: skip
    return out


def budget_labels(budgets: tuple[int, ...], full_training_set: bool) -> list[str]:
    """The label budgets as the prediction files name them ("100", ..., and "full" for the training set)."""
    return [str(b) for b in budgets] + (["full"] if full_training_set else [])


def study_budget_labels(params) -> tuple[list[str], dict[str, list[str]]]:
    """The label budgets of the study (`cohort.budgets`, and "full" with finetune.full_training_set) and of each
    task (its own, up to `max_budget`), as the prediction files name them."""
    full = params.finetune.full_training_set
    return budget_labels(params.cohort.budgets, full), {s.name: budget_labels(s.budgets, full) for s in params.tasks}


def headline_budget(budgets: list[str]) -> str:
    """The budget of the headline: the largest balanced one (not the full training set)."""
    return budgets[-2] if budgets[-1] == "full" and len(budgets) > 1 else budgets[-1]


def task_kinds(tasks) -> dict[str, str]:
    """Task name -> "disease" or "drug" (`task_kind` of its outcome codes)."""
    return {spec.name: task_kind(spec.outcome) for spec in tasks}


def summary_metrics(fits: dict, decisions: list[dict], sat: pl.DataFrame, budget: str | dict[str, str]) -> dict:
    """The scaling stage's metrics JSON: the power-law exponents and, at the headline BUDGET (one for every
    task, or task -> its own), each task's saturation, gain over LightGBM and pretraining hours saved."""

    def headline(task: str) -> str:
        return budget[task] if isinstance(budget, dict) else budget

    rows = {r["task"]: r for r in sat.iter_rows(named=True) if r["budget"] == headline(r["task"])}
    return {
        "power_law_exponent": {k: f.exponent for k, f in fits.items()},
        "saturation": {
            d["task"]: {"budget": d["budget"], "scale": d["saturation_scale"], "best": d["best_scale"]}
            for d in decisions
            if d["budget"] == headline(d["task"])
        },  # fmt: skip
        "gain_over_lightgbm": {t: r["gain_over_lightgbm"] for t, r in rows.items()},
        "hours_saved": {t: r["hours_saved"] for t, r in rows.items()},
    }


def task_kind(outcome: tuple[str, ...]) -> str:
    """ "disease" when every outcome prefix is a diagnosis code, "drug" when every one is a drug code (code
    families of `claimsutil.meds.code_family`)."""
    families = {code_family(o) for o in outcome}
    if families == {"diagnosis"}:
        return "disease"
    if families == {"drug"}:
        return "drug"
    return "other"


# ------------------------------------------------------------------------------------------------ figures


def plot_pipeline():
    """Figure 1: claims -> token sequence -> pretraining -> fine-tuning -> evaluation."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    steps = [
        ("MEDS claims", "monthly receipts:\nICD-10, YJ drugs,\ncoverage, hospital"),
        ("Token sequence", "[CLS] sex hospital\ncodes in time order\n+ age in days"),
        ("Pretraining", "masked codes:\ndiagnosis + drug CE\n+ age regression\n5 scales"),
        ("Fine-tuning", "100 / 500 / 1,000\nlabels (1:1), early\nstop on val AUPRC\n+ from scratch"),
        ("Evaluation", "test AUPRC, AUROC\nbootstrap CIs vs\nLightGBM, oracle;\nsaturation test"),
    ]
    fig, ax = plt.subplots(figsize=(11, 2.6))
    ax.set_xlim(0, len(steps) * 2.2)
    ax.set_ylim(0, 2.4)
    ax.axis("off")
    for i, (title, body) in enumerate(steps):
        x = i * 2.2 + 0.1
        ax.add_patch(FancyBboxPatch((x, 0.15), 1.8, 2.0, boxstyle="round,pad=0.05", fc="#e8f0fb", ec="#3465a4"))
        ax.text(x + 0.9, 1.9, title, ha="center", va="center", fontsize=10, fontweight="bold")
        ax.text(x + 0.9, 0.95, body, ha="center", va="center", fontsize=8)
        if i < len(steps) - 1:
            ax.annotate("", xy=(x + 2.15, 1.15), xytext=(x + 1.92, 1.15), arrowprops=dict(arrowstyle="->", lw=1.5))
    fig.tight_layout()
    return fig


def plot_pretraining(t1: pl.DataFrame):
    """Figure 2: final validation loss against parameters and against training FLOPs, log-log, with fits;
    and, where Table 1 has the frequency baseline, each family's loss against parameters beside it."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    with_baseline = "baseline_diagnosis" in t1.columns
    fig, axes = plt.subplots(1, 3 if with_baseline else 2, figsize=(13.5 if with_baseline else 9, 3.6))
    if with_baseline:
        _plot_against_baseline(axes[2], t1)
    fits = {}
    for ax, column, label in zip(axes[:2], ("non_embedding", "flops"), ("non-embedding parameters", "training FLOPs"),
                                 strict=True):  # fmt: skip
        x, y = t1[column].to_numpy().astype(float), t1["val_loss"].to_numpy().astype(float)
        ax.loglog(x, y, "o", color="tab:blue")
        for xi, yi, s in zip(x, y, t1["scale"], strict=True):
            ax.annotate(s, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        try:
            fit = fit_power_law(x, y)
            grid = np.geomspace(x.min(), x.max(), 50)
            ax.loglog(grid, fit(grid), "--", color="tab:red",
                      label=f"L = {fit.coefficient:.3g} x^-{fit.exponent:.3f} (R² {fit.r2:.2f})")  # fmt: skip
            ax.legend(fontsize=8)
            fits[column] = fit
        except ValueError:
            pass
        ax.set_xlabel(label)
        ax.set_ylabel("validation loss (total)")
        ax.xaxis.set_minor_formatter(NullFormatter())  # a short range: minor labels would overlap
        ax.yaxis.set_major_formatter(FormatStrFormatter("%.2f"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter("%.2f"))
    fig.tight_layout()
    return fig, fits


def _plot_against_baseline(ax, t1: pl.DataFrame) -> None:
    """Each family's validation loss against parameters, the frequency baseline as a line, the distance below
    it written at every scale."""
    x = t1["non_embedding"].to_numpy().astype(float)
    for family, color in (("diagnosis", "tab:blue"), ("drug", "tab:orange")):
        y, base = t1[f"val_loss_{family}"].to_numpy().astype(float), float(t1[f"baseline_{family}"][0])
        ax.plot(x, y, "o-", color=color, label=f"{family}")
        ax.axhline(base, color=color, ls="--", lw=1, label=f"{family} frequency baseline {base:.3f}")
        for xi, yi in zip(x, y, strict=True):
            ax.annotate(f"{base - yi:+.2f}", (xi, yi), textcoords="offset points", xytext=(0, -11), fontsize=7,
                        ha="center", color=color)  # fmt: skip
    ax.set_xscale("log")
    ax.set(xlabel="non-embedding parameters", ylabel="validation cross-entropy (nats)",
           title="Below the frequency baseline by")  # fmt: skip
    ax.legend(fontsize=7)


def plot_tasks(results: pl.DataFrame, t1: pl.DataFrame, tasks: list[str], budgets: list[str], title: str):
    """Figures 3 and 4: test AUPRC against parameters (log x), one panel per task, one line per budget,
    from-scratch dotted, LightGBM per budget and the oracle as horizontal lines."""
    import matplotlib.pyplot as plt

    params = dict(zip(t1["scale"], t1["parameters"], strict=True))
    if not tasks:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"{title}: no task of this kind in params.yaml", ha="center", va="center")
        return fig
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.6), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, task in zip(axes[0], tasks, strict=True):
        t = results.filter(pl.col("task") == task)
        for i, budget in enumerate(budgets):
            c = colors[i % len(colors)]
            for init, style in (("pretrained", "o-"), ("scratch", "x:")):
                r = t.filter((pl.col("model") == init) & (pl.col("budget") == budget))
                r = r.with_columns(p=pl.col("scale").replace_strict(params, default=None)).sort("p")
                err = [r["auprc"] - r["auprc_low"], r["auprc_high"] - r["auprc"]]
                label = f"{budget} labels" if init == "pretrained" else None
                ax.errorbar(r["p"], r["auprc"], yerr=err if init == "pretrained" else None, fmt=style, color=c,
                            capsize=2, label=label, alpha=1.0 if init == "pretrained" else 0.6)  # fmt: skip
            lg = t.filter((pl.col("model") == "lightgbm") & (pl.col("budget") == budget))
            if lg.height:
                ax.axhline(lg["auprc"][0], color=c, ls="--", lw=1)
        oracle = t.filter(pl.col("model") == "oracle")
        if oracle.height:
            ax.axhline(oracle["auprc"][0], color="black", lw=1.2, label="oracle")
        _scale_ticks(ax, params)
        ax.set_title(task)
        ax.set_xlabel("parameters")
    axes[0][0].set_ylabel("test AUPRC")
    axes[0][0].legend(fontsize=7, title="pretrained (o-), scratch (x:),\nLightGBM (--)", title_fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_cost_benefit(results: pl.DataFrame, t1: pl.DataFrame, sat: pl.DataFrame, budget: str):
    """Figure 5: AUPRC against pretraining hours per task at BUDGET, the saturation scale marked and the hours
    saved against the largest scale written beside it."""
    import matplotlib.pyplot as plt

    hours = dict(zip(t1["scale"], t1["hours"], strict=True))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, row in enumerate(sat.filter(pl.col("budget") == budget).iter_rows(named=True)):
        r = results.filter((pl.col("task") == row["task"]) & (pl.col("model") == "pretrained") &
                           (pl.col("budget") == budget))  # fmt: skip
        r = r.with_columns(h=pl.col("scale").replace_strict(hours, default=None)).sort("h")
        c = colors[i % len(colors)]
        ax.plot(r["h"], r["auprc"], "o-", color=c, label=row["task"])
        s = row["saturation_scale"]
        ax.plot(hours[s], row["auprc"], "*", ms=16, color=c, mec="black")
        ax.annotate(f"{s}: saves {row['hours_saved'] * 3600:,.0f} s", (hours[s], row["auprc"]),
                    textcoords="offset points", xytext=(6, -12), fontsize=8, color=c)  # fmt: skip
    _scale_ticks(ax, hours, lambda h: f"{h * 3600:,.0f} s" if h < 1 else f"{h:,.1f} h")
    ax.set_xlabel("pretraining wall time (log)")
    ax.set_ylabel(f"test AUPRC ({budget} labels)")
    ax.legend(fontsize=8, title="★ saturation scale", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def _scale_ticks(ax, values: dict[str, float], fmt=None) -> None:
    """Log x axis with one labelled tick per scale (its name and value) and no minor tick labels."""
    from matplotlib.ticker import NullFormatter

    fmt = fmt or _short_number
    ax.set_xscale("log")
    xs = [v for v in values.values() if v and v > 0]
    ax.set_xticks(xs, [f"{name}\n{fmt(v)}" for name, v in values.items() if v and v > 0], fontsize=7)
    ax.xaxis.set_minor_formatter(NullFormatter())


def _short_number(x: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= size:
            return f"{x / size:.3g}{unit}"
    return f"{x:.3g}"
