"""The LightGBM baseline: a small grid, early stopping on the validation rows' AUPRC, deterministic.

    fitted = fit_baseline(X_train, y_train, X_val, y_val, BaselineConfig())
    p = predict(fitted, X_test)                  # probabilities, float64

Every grid point trains up to `n_estimators` rounds and stops when the validation average precision has
not improved for `early_stopping_rounds`; the grid point with the best validation AUPRC (the first one on
ties, in grid order) is kept. LightGBM runs with `deterministic`, `force_row_wise`, a fixed thread count
and seed, so the same inputs give the same predictions bit for bit.

Feature names are not passed to LightGBM (it rejects ':' in names); `feature_importance` maps the
column indices back to the feature vocabulary's names.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
import scipy.sparse as sp
from sklearn.metrics import average_precision_score

from claimsutil import metrics
from claimsutil.config import BaselineConfig, EvaluationParams

__all__ = [
    "BaselineConfig",
    "grid",
    "lightgbm_params",
    "FittedBaseline",
    "GridPoint",
    "feature_importance",
    "fit_baseline",
    "predict",
]

Matrix = sp.spmatrix | sp.sparray | np.ndarray


def grid(config: BaselineConfig) -> list[dict[str, int]]:
    """The grid points of CONFIG, in a fixed order."""
    return [
        {"num_leaves": leaves, "min_child_samples": child}
        for leaves, child in itertools.product(config.num_leaves, config.min_child_samples)
    ]


def lightgbm_params(config: BaselineConfig, point: dict[str, int]) -> dict[str, Any]:
    """LightGBM's parameters at one grid POINT: deterministic, row-wise histograms, fixed threads and seed."""
    return {
        "objective": "binary",
        "metric": "average_precision",
        "learning_rate": config.learning_rate,
        "feature_fraction": config.feature_fraction,
        "bagging_fraction": 1.0,
        "bagging_freq": 0,
        "lambda_l2": config.lambda_l2,
        "num_threads": config.num_threads,
        "seed": config.seed,
        "deterministic": True,
        "force_row_wise": True,
        "verbosity": -1,
        **point,
    }


@dataclass(frozen=True)
class GridPoint:
    params: dict[str, int]  # the grid values of this point
    val_auprc: float  # average precision on the validation rows at the best iteration
    best_iteration: int  # boosting rounds kept


@dataclass(frozen=True)
class FittedBaseline:
    booster: lgb.Booster  # the best grid point's model
    params: dict[str, Any]  # its full LightGBM parameters
    best_iteration: int
    val_auprc: float
    grid: tuple[GridPoint, ...]  # every grid point, in grid order
    n_features: int

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the chosen parameters, best iteration, validation AUPRC, and every grid point's."""
        return {
            "params": dict(self.params),
            "best_iteration": self.best_iteration,
            "val_auprc": self.val_auprc,
            "grid": [asdict(p) for p in self.grid],
            "n_features": self.n_features,
        }


def _labels(y: Any, what: str, n_rows: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n_rows:
        raise ValueError(f"{what}: {y.shape[0] if y.ndim else 0} labels for {n_rows} feature rows")
    if y.dtype != bool:
        bad = ~np.isin(y, (0, 1))
        if bad.any():
            raise ValueError(
                f"{what}: labels must be 0/1 or boolean; found {y[bad][0]!r} at row {np.flatnonzero(bad)[0]}"
            )
    y = y.astype(np.float64)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError(
            f"{what} has a single class ({positives} positive, {negatives} negative rows); "
            "the baseline needs both classes in the training and the validation rows"
        )
    return y


def _fit_point(
    X_train: Matrix,
    y_train: np.ndarray,
    X_val: Matrix,
    y_val: np.ndarray,
    params: dict[str, Any],
    config: BaselineConfig,
) -> lgb.Booster:
    # A fresh Dataset per point: its binning depends on min_child_samples (min_data_in_leaf).
    train = lgb.Dataset(X_train, label=y_train, params=params, free_raw_data=False)
    val = lgb.Dataset(X_val, label=y_val, reference=train, params=params, free_raw_data=False)
    stop = lgb.early_stopping(config.early_stopping_rounds, first_metric_only=True, verbose=False)
    return lgb.train(params, train, num_boost_round=config.n_estimators, valid_sets=[val], callbacks=[stop])


def fit_baseline(
    X_train: Matrix, y_train: Any, X_val: Matrix, y_val: Any, config: BaselineConfig | None = None
) -> FittedBaseline:
    """Train every grid point with early stopping; keep the one with the best validation AUPRC."""
    config = config or BaselineConfig()
    if X_train.shape[1] != X_val.shape[1]:
        raise ValueError(f"training rows have {X_train.shape[1]} columns, validation rows {X_val.shape[1]}")
    y_train = _labels(y_train, "training set", X_train.shape[0])
    y_val = _labels(y_val, "validation set", X_val.shape[0])
    best: tuple[float, lgb.Booster, dict[str, Any]] | None = None
    points = []
    for point in grid(config):
        params = lightgbm_params(config, point)
        booster = _fit_point(X_train, y_train, X_val, y_val, params, config)
        iteration = booster.best_iteration or booster.current_iteration()
        auprc = float(average_precision_score(y_val, booster.predict(X_val, num_iteration=iteration)))
        points.append(GridPoint(point, auprc, iteration))
        if best is None or auprc > best[0]:
            best = (auprc, booster, params)
    assert best is not None  # the grid has at least one point (checked by BaselineConfig)
    auprc, booster, params = best
    return FittedBaseline(booster, params, booster.best_iteration or booster.current_iteration(), auprc,
                          tuple(points), X_train.shape[1])  # fmt: skip


def predict(fitted: FittedBaseline, X: Matrix) -> np.ndarray:
    """Predicted probabilities of the positive class (float64), one per row of X."""
    if X.shape[1] != fitted.n_features:
        raise ValueError(f"X has {X.shape[1]} columns; the baseline was trained on {fitted.n_features}")
    return np.asarray(fitted.booster.predict(X, num_iteration=fitted.best_iteration), dtype=np.float64)


def feature_importance(fitted: FittedBaseline, names: tuple[str, ...] | list[str]) -> pl.DataFrame:
    """Total gain and split count per feature (non-zero ones only), largest gain first."""
    if len(names) != fitted.n_features:
        raise ValueError(f"{len(names)} names for {fitted.n_features} features")
    gain = fitted.booster.feature_importance("gain", iteration=fitted.best_iteration)
    splits = fitted.booster.feature_importance("split", iteration=fitted.best_iteration)
    return (
        pl.DataFrame({"feature": list(names), "gain": gain.astype(np.float64), "splits": splits.astype(np.int64)})
        .filter(pl.col("splits") > 0)
        .sort(["gain", "feature"], descending=[True, False])
    )


# ---------------------------------------------------------------------------------------------- the stage
def _rows(labels: pl.DataFrame, X: sp.csr_matrix, ids) -> tuple[sp.csr_matrix, np.ndarray, pl.DataFrame]:
    position = {s: i for i, s in enumerate(labels["subject_id"].to_list())}
    idx = np.array([position[s] for s in ids], dtype=np.int64)
    subset = labels[idx]
    return X[idx], subset["boolean_value"].to_numpy().astype(np.int8), subset


def run_task(meds_root, cohort_dir, task: str, features_cfg, config: BaselineConfig, out_dir,
             evaluation: EvaluationParams) -> dict:  # fmt: skip
    """Fit the baseline for every label budget and seed of TASK (and the full training set), early-stopping on
    the cohort's validation sample, predict the whole test split and write the predictions. Returns
    {"results": {budget: evaluate_mean on the evaluation sample}, "whole_test_split": {budget: the same on every
    test patient, the sample's check}, "features": the feature statistics}."""
    from claimsutil import cohort, features
    from claimsutil.meds import open_events

    meds_root = open_events(meds_root)  # one window for both passes
    labels = cohort.read_labels(cohort_dir, task).filter(pl.col("split").is_in(["train", "validation", "test"]))
    label_cols = labels.select("subject_id", "prediction_time", "boolean_value")
    vocab = features.fit_vocabulary(meds_root, label_cols.filter(labels["split"] == "train"), features_cfg)
    X, stats = features.count_features_with_stats(meds_root, label_cols, vocab)
    split_ids = {s: labels.filter(pl.col("split") == s)["subject_id"] for s in ("train", "validation", "test")}
    X_val, y_val, _ = _rows(label_cols, X, cohort.read_sample(cohort_dir, task, "validation")["subject_id"])
    X_test, _, test = _rows(label_cols, X, split_ids["test"])
    sample = cohort.read_sample(cohort_dir, task, "evaluation")
    budgets = pl.read_parquet(Path(cohort_dir) / "budgets" / f"{task}.parquet")
    samples = {
        (str(b), int(s)): g["subject_id"] for (b, s), g in budgets.group_by("budget", "seed", maintain_order=True)
    }
    if config.full_training_set:
        samples[("full", 0)] = split_ids["train"]
    out = Path(out_dir) / task
    results, runs = {}, {}
    for (budget, seed), ids in sorted(samples.items(), key=lambda kv: (kv[0][0] == "full", kv[0])):
        X_train, y_train, _ = _rows(label_cols, X, ids)
        fitted = fit_baseline(X_train, y_train, X_val, y_val, replace(config, seed=config.seed + seed))
        frame = metrics.predictions_frame(
            test["subject_id"], test["prediction_time"], test["boolean_value"], predict(fitted, X_test)
        )
        metrics.write_predictions(frame, out / f"budget-{budget}_seed-{seed}.parquet")
        runs.setdefault(budget, []).append(frame)
    how = {"n_resamples": evaluation.n_resamples, "seed": evaluation.seed, "alpha": evaluation.alpha}
    whole = {}
    for budget in sorted(runs, key=lambda b: (b == "full", int(b) if b != "full" else 0)):
        on_sample = [metrics.restrict(f, sample, f"LightGBM {task} {budget}") for f in runs[budget]]
        results[budget] = metrics.evaluate_mean(on_sample, weights=sample, **how)
        whole[budget] = metrics.evaluate_mean(runs[budget], **how)
    features_stats = {**stats.__dict__, "columns": vocab.n_columns}
    return {"results": results, "whole_test_split": whole, "features": features_stats}


def read_oracle(cohort_metrics_file: str | Path) -> dict[str, dict]:
    """The oracle's metrics per task from the cohort stage's metrics JSON ({} without ground truth)."""
    entries = json.loads(Path(cohort_metrics_file).read_text(encoding="utf-8"))
    return {t: m["oracle"] for t, m in entries.items() if isinstance(m, dict) and "oracle" in m}


def results_table(results: dict[str, dict], oracle: dict[str, dict] | None = None) -> pl.DataFrame:
    """One row per task x budget: AUPRC / AUROC / Brier with 95% intervals on the evaluation sample (its
    patients and positives; the prevalence weighted back to the whole test split), the oracle's AUPRC."""
    rows = []
    for task, by_budget in results.items():
        for budget, r in by_budget["results"].items():
            row = {"task": task, "budget": budget, "runs": len(r["runs"]), "scored_patients": r["n"],
                   "scored_positives": r["positives"], "prevalence": r["prevalence"]}  # fmt: skip
            for m in ("auprc", "auroc", "brier"):
                row |= {m: r[m]["point"], f"{m}_low": r[m]["low"], f"{m}_high": r[m]["high"]}
            if oracle and task in oracle:
                row |= {"oracle_auprc": oracle[task]["auprc"]["point"], "oracle_auroc": oracle[task]["auroc"]["point"]}
            rows.append(row)
    return pl.DataFrame(rows)


def sample_check(results: dict[str, dict]) -> pl.DataFrame:
    """LightGBM's AUPRC on the weighted evaluation sample against the whole test split, per task x budget
    (`claimsutil.metrics.sample_gap_table`): how well the sample every model is scored on stands for the split."""
    pairs = {(task, budget): (r, entry["whole_test_split"][budget])
             for task, entry in results.items() for budget, r in entry["results"].items()}  # fmt: skip
    table = metrics.sample_gap_table({f"{t}\t{b}": v for (t, b), v in pairs.items()}, label="key")
    return table.with_columns(pl.col("key").str.split("\t").list.to_struct(fields=["task", "budget"])).unnest("key")


def plot_results(table: pl.DataFrame):
    """AUPRC against the label budget, one panel per task, with 95% intervals, the test prevalence and the
    oracle as reference lines."""
    import matplotlib.pyplot as plt

    tasks = table["task"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        t = table.filter(pl.col("task") == task)
        x = np.arange(t.height)
        err = np.vstack([t["auprc"] - t["auprc_low"], t["auprc_high"] - t["auprc"]])
        ax.errorbar(x, t["auprc"], yerr=err, fmt="o-", capsize=3, label="LightGBM")
        ax.axhline(t["prevalence"][0], color="grey", ls=":", label="positive rate")
        if "oracle_auprc" in t.columns and t["oracle_auprc"][0] is not None:
            ax.axhline(t["oracle_auprc"][0], color="black", ls="--", label="oracle")
        ax.set_xticks(x, t["budget"].to_list())
        ax.set_title(task)
        ax.set_xlabel("labelled patients")
        ax.set_ylim(0, 1)
    axes[0][0].set_ylabel("test AUPRC")
    axes[0][-1].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def metrics_summary(results: dict[str, dict]) -> dict:
    """The stage's DVC metrics: per task and budget the point and interval of each metric."""
    keep = ("auprc", "auroc", "brier")
    return {
        task: {budget: {m: r[m] for m in keep} for budget, r in entry["results"].items()}
        for task, entry in results.items()
    }
