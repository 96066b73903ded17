"""The transfer study (Claim-PT): pretrain once, fine-tune on k patients at hospitals never seen.

The splits stage holds whole hospitals out (`cohort.held_out_hospitals`): their patients are in no split, so
they never enter pretraining, the vocabulary (built from train and validation patients) or any fine-tuning of
the reference study. Here, per task (`transfer.tasks`, default every task):

1. The held-out hospitals' labelled patients are split by a hash of (seed, task, subject id) into a k-shot
   pool (`transfer.pool_share`) and a test set. The test sample is every test positive and
   `transfer.test_negatives` seeded negatives, weighted to stand for the whole test set
   (`claimsutil.cohort.evaluation_sample`).
2. For each k of `transfer.shots` (k labelled patients, 1:1) that the pool can fill, and as many as exist
   when it cannot fill the largest, `transfer.replicates` seeded draws of k training patients and, disjoint
   from them, k validation patients to early-stop on (EHRSHOT's k-shot protocol: a user with k labels at a new
   hospital has no other labelled patients).
3. On each draw: the pretrained encoder of `transfer.scale` fine-tuned (the `finetune` recipe with passes
   enough for `transfer.min_steps` steps: `kshot_config`), the same architecture from a fresh initialisation,
   and LightGBM on count features (the `baseline` recipe with `transfer.min_child_samples`; its feature
   columns are the codes of the pools' patients, no labels used).
4. The source model: the encoder fine-tuned at the pretraining hospitals on the task's largest label budget
   (exactly the finetune stage's run: same seed, sample and recipe, so the same weights) applied unchanged.

Every model is scored on the same test sample with the same bootstrap resamples (`evaluation`); a k's result
is the mean over its replicates, its interval the test patients' sampling around that mean
(`metrics.evaluate_mean`). Relative gains (pretrained over scratch and over LightGBM) are paired bootstraps
of (A - B) / B, beside Claim-PT's reported "more than 10%".

    results = run_transfer(store_dir, cohort_dir, meds_dir, models_dir, params, out_dir)
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from tqdm import tqdm

from claimsutil import metrics
from claimsutil import tokenize as tok
from claimsutil.cohort import evaluation_sample, read_labels, read_sample
from claimsutil.config import StudyParams
from claimsutil.finetune import Run, _init_worker, _run_in_worker, run_one
from claimsutil.splits import task_key, uniform_hash

ARMS = ("pretrained", "scratch", "lightgbm")  # trained on the k patients
SOURCE = "source"  # fine-tuned at the pretraining hospitals, applied unchanged
CLAIM_PT_GAIN = 0.10  # Claim-PT (2022): "more than 10%" relative improvement over task-specific models
HELD_OUT = "held_out_hospital"


class TransferError(ValueError):
    """The transfer study cannot run as asked (no held-out hospitals, a task without held-out positives)."""


# ---------------------------------------------------------------------------------------------- samples
def pool_and_test(labels: pl.DataFrame, pool_share: float, seed: int, task: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The held-out hospitals' labelled patients (LABELS) split into the k-shot pool and the test set by a hash
    of (seed, task, subject id): a patient's side depends on nothing else. Both sorted by subject_id."""
    labels = labels.select("subject_id", "prediction_time", "boolean_value").sort("subject_id")
    u = uniform_hash(labels["subject_id"].to_numpy(), seed, task_key(task), task_key("transfer_pool"))
    in_pool = pl.Series(u < pool_share)
    return labels.filter(in_pool), labels.filter(~in_pool)


def feasible_shots(pool: pl.DataFrame, shots: tuple[int, ...]) -> tuple[list[int], int]:
    """The k the pool can fill (k / 2 positives and negatives to train on, as many again to stop on), and the
    largest even k it can: added as "as many as exist" when it is short of the largest k asked for."""
    positives = int(pool["boolean_value"].sum())
    cap = 2 * (min(positives, pool.height - positives) // 2)
    ks = [k for k in shots if k <= cap]
    if cap < shots[-1] and cap >= 4 and cap not in ks:
        ks.append(cap)
    return ks, cap


def draw_shots(pool: pl.DataFrame, k: int, replicate: int, seed: int, task: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A seeded draw of k training patients (k / 2 positives, k / 2 negatives) and k disjoint validation
    patients of the same make-up from POOL. Each sorted by subject_id."""
    pos = pool.filter(pl.col("boolean_value"))
    neg = pool.filter(~pl.col("boolean_value"))
    half = k // 2
    if pos.height < k or neg.height < k:
        raise TransferError(f"task '{task}': k = {k} needs {k} positives and {k} negatives in the pool, which has "
                            f"{pos.height} and {neg.height}")  # fmt: skip
    rng = np.random.default_rng([seed, task_key(task), k, replicate])
    p, n = rng.permutation(pos.height), rng.permutation(neg.height)
    train = pl.concat([pos[np.sort(p[:half])], neg[np.sort(n[:half])]]).sort("subject_id")
    val = pl.concat([pos[np.sort(p[half:k])], neg[np.sort(n[half:k])]]).sort("subject_id")
    return train, val


@dataclass
class TaskPlan:
    """One task's transfer samples."""

    task: str
    pool: pl.DataFrame
    test: pl.DataFrame  # the weighted test sample
    shots: list[int]
    cap: int
    draws: dict[tuple[int, int], tuple[pl.DataFrame, pl.DataFrame]]  # (k, replicate) -> (train, validation)
    source_budget: int

    def counts(self) -> dict[str, int]:
        return {"pool_patients": self.pool.height, "pool_positives": int(self.pool["boolean_value"].sum()),
                "test_patients": int(self.test["weight"].sum().__round__()),
                "test_positives": int(self.test["boolean_value"].sum()), "scored_patients": self.test.height,
                "largest_k": self.cap}  # fmt: skip


def plan_task(cohort_dir: str | Path, task: str, params: StudyParams) -> TaskPlan:
    """The pool, the test sample and every draw of TASK."""
    config = params.transfer
    labels = read_labels(cohort_dir, task, HELD_OUT)
    if labels.height == 0:
        raise TransferError(f"task '{task}': no labelled patient at the held-out hospitals (cohort.held_out_hospitals"
                            f" = {params.cohort.held_out_hospitals})")  # fmt: skip
    pool, test = pool_and_test(labels, config.pool_share, config.seed, task)
    if test["boolean_value"].n_unique() < 2:
        raise TransferError(f"task '{task}': the {test.height} held-out-hospital test patients hold "
                            f"{int(test['boolean_value'].sum())} positives: nothing to score")  # fmt: skip
    shots, cap = feasible_shots(pool, config.shots)
    draws = {(k, r): draw_shots(pool, k, r, config.seed, task) for k in shots for r in range(config.replicates)}
    sample = evaluation_sample(test, config.test_negatives, config.seed, task)
    return TaskPlan(task, pool, sample, shots, cap, draws, max(params.task(task).budgets))


# ---------------------------------------------------------------------------------------------- runs
def _seqs(store: tok.TokenStore, frame: pl.DataFrame, cut: int) -> tuple[list, np.ndarray]:
    return store.sequences_for(frame, max_len=cut), frame["boolean_value"].to_numpy().astype(np.int8)


def kshot_config(params: StudyParams, k: int):
    """The fine-tuning recipe on k patients: `finetune`, with the passes that make `transfer.min_steps` optimizer
    steps (at least finetune.max_epochs, at most transfer.max_epochs) and `transfer.patience`."""
    config = params.transfer
    steps_per_epoch = -(-k // params.finetune.batch_patients)
    epochs = min(config.max_epochs, max(params.finetune.max_epochs, -(-config.min_steps // steps_per_epoch)))
    return replace(params.finetune, seed=config.seed, max_epochs=epochs, patience=config.patience, workers=1)


def neural_jobs(plans: dict[str, TaskPlan], store: tok.TokenStore, cohort_dir: str | Path, model_path: str,
                params: StudyParams) -> list[tuple]:  # fmt: skip
    """Every fine-tuning job: the k-shot runs of both inits, and each task's source model (whose test is the
    held-out sample followed by the pretraining hospitals' evaluation sample, to check it is the finetune
    stage's model)."""
    max_len = torch.load(model_path, map_location="cpu", weights_only=False)["model_config"]["max_len"]
    cut = min(params.finetune.max_len, max_len)
    jobs = []
    for task, plan in plans.items():
        test = store.sequences_for(plan.test, max_len=cut)
        for (k, r), (train, val) in plan.draws.items():
            payload = {"train": _seqs(store, train, cut), "val": _seqs(store, val, cut), "test": test}
            config = kshot_config(params, k)
            jobs += [(Run(task, str(k), r, init), payload, model_path, config) for init in ARMS[:2]]
        budgets = pl.read_parquet(Path(cohort_dir) / "budgets" / f"{task}.parquet")
        ids = budgets.filter((pl.col("budget") == plan.source_budget) & (pl.col("seed") == 0)).select("subject_id")
        train = ids.join(read_labels(cohort_dir, task), on="subject_id").sort("subject_id")
        evaluation = read_sample(cohort_dir, task, "evaluation")
        stopping = read_sample(cohort_dir, task, "validation")
        payload = {"train": _seqs(store, train, cut), "val": _seqs(store, stopping, cut), "source": True,
                   "test": test + store.sequences_for(evaluation, max_len=cut)}  # fmt: skip
        jobs.append((Run(task, str(plan.source_budget), 0, "pretrained"), payload, model_path,
                     replace(params.finetune, workers=1)))  # fmt: skip
    jobs.sort(key=lambda j: -len(j[1]["train"][0]))  # longest first: the workers finish together
    return jobs


def lightgbm_runs(plans: dict[str, TaskPlan], meds_dir: str | Path, params: StudyParams) -> dict[tuple, np.ndarray]:
    """LightGBM on every draw: (task, k, replicate) -> probabilities on the test sample. Feature columns are
    the codes of the pools' patients (no labels used)."""
    from claimsutil import baseline, features
    from claimsutil.meds import open_events

    events = open_events(meds_dir)
    config = replace(params.baseline, min_child_samples=(params.transfer.min_child_samples,))
    if not plans:
        return {}
    # Two passes over the data for every task at once: the columns from every pool's rows, then every row's counts.
    keys = ["task", "subject_id", "prediction_time"]
    pools = pl.concat(
        [p.pool.select(pl.lit(t).alias("task"), "subject_id", "prediction_time") for t, p in plans.items()]
    )
    tests = [p.test.select(pl.lit(t).alias("task"), "subject_id", "prediction_time") for t, p in plans.items()]
    rows = pl.concat([pools, *tests]).unique(keys, maintain_order=True)
    vocab = features.fit_vocabulary(events, pools, params.features)
    X = features.count_features(events, rows, vocab)
    at = {key: i for i, key in enumerate(rows.select(keys).iter_rows())}
    out = {}
    for task, plan in plans.items():
        # The task's own columns: those non-zero in at least min_code_patients of its pool's rows.
        in_pool = np.array([at[key] for key in pools.filter(pl.col("task") == task).iter_rows()])
        used = np.flatnonzero(np.asarray((X[in_pool] != 0).sum(axis=0)).ravel() >= params.features.min_code_patients)

        def pick(frame: pl.DataFrame):
            ids = frame.select(pl.lit(task).alias("task"), "subject_id", "prediction_time").iter_rows()  # noqa: B023
            return X[np.array([at[key] for key in ids])][:, used]  # noqa: B023

        X_test = pick(plan.test)
        for (k, r), (train, val) in plan.draws.items():
            seeded = replace(config, seed=config.seed + r)
            y_train, y_val = train["boolean_value"].to_numpy(), val["boolean_value"].to_numpy()
            fitted = baseline.fit_baseline(pick(train), y_train, pick(val), y_val, seeded)
            out[(task, k, r)] = baseline.predict(fitted, X_test)
    return out


def run_transfer(store_dir: str | Path, cohort_dir: str | Path, meds_dir: str | Path, model_path: str | Path,
                 params: StudyParams, out_dir: str | Path, finetune_dir: str | Path | None = None,
                 progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Every run of the transfer study. Writes OUT_DIR/<task>/<arm>_k-<k>_rep-<r>.parquet and source.parquet
    (the test sample's predictions, meds-evaluation columns), test.parquet (the weighted test sample),
    shots.parquet (every draw's patients) and runs.json. FINETUNE_DIR: the finetune stage's folder of this
    scale, to check the source model against. Returns {"plans", "predictions": {task: {(arm, k): [frames]}},
    "source_check": {task: largest |difference| from the finetune stage's predictions, or None}, "runs",
    "skipped": {task: why it could not be transferred}, "wall_time_s"}."""
    t0 = time.perf_counter()
    plans, skipped = {}, {}
    for task in list(params.transfer.tasks) or [t.name for t in params.tasks]:
        try:
            plans[task] = plan_task(cohort_dir, task, params)
        except TransferError as e:  # counted and reported: a small population may have no held-out positive
            skipped[task] = str(e)
    tasks = list(plans)
    store, out = tok.TokenStore(store_dir), Path(out_dir)
    jobs = neural_jobs(plans, store, cohort_dir, str(model_path), params)
    done = []
    bar = tqdm(total=len(jobs), desc="transfer", unit="run", disable=not progress)
    if params.transfer.workers == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(params.finetune.num_threads)
        try:
            for job in jobs:
                done.append(run_one(*job))
                bar.update(1)
        finally:
            torch.set_num_threads(threads)
    else:
        context = mp.get_context("spawn")
        with ProcessPoolExecutor(params.transfer.workers, mp_context=context, initializer=_init_worker,
                                 initargs=(params.finetune.num_threads,)) as pool:  # fmt: skip
            for result in pool.map(_run_in_worker, jobs):
                done.append(result)
                bar.update(1)
    bar.close()
    predictions: dict[str, dict[tuple[str, int | None], list[pl.DataFrame]]] = {t: {} for t in tasks}
    runs, source_check = [], {}
    for job, result in zip(jobs, done, strict=True):
        run, plan = result["run"], plans[result["run"].task]
        n = plan.test.height
        frame = _frame(plan.test, result["probs"][:n])
        record = {k: v for k, v in result["record"].items() if k != "history"}
        if job[1].get("source"):
            predictions[run.task][(SOURCE, None)] = [frame]
            metrics.write_predictions(frame, out / run.task / f"{SOURCE}.parquet")
            source_check[run.task] = _source_gap(result["probs"][n:], cohort_dir, run, finetune_dir)
            runs.append({"task": run.task, "arm": SOURCE, "k": None, "replicate": None, **record})
            continue
        k = int(run.budget)
        predictions[run.task].setdefault((run.init, k), []).append(frame)
        metrics.write_predictions(frame, out / run.task / f"{run.init}_k-{k}_rep-{run.budget_seed}.parquet")
        runs.append({"task": run.task, "arm": run.init, "k": k, "replicate": run.budget_seed, **record})
    for (task, k, r), probs in sorted(lightgbm_runs(plans, meds_dir, params).items()):
        frame = _frame(plans[task].test, probs)
        predictions[task].setdefault(("lightgbm", k), []).append(frame)
        metrics.write_predictions(frame, out / task / f"lightgbm_k-{k}_rep-{r}.parquet")
    for task, plan in plans.items():
        plan.test.write_parquet(out / task / "test.parquet")
        shots = [
            d.select("subject_id").with_columns(k=pl.lit(k), replicate=pl.lit(r), role=pl.lit(role))
            for (k, r), pair in plan.draws.items()
            for role, d in zip(("train", "validation"), pair, strict=True)
        ]
        if shots:
            pl.concat(shots).write_parquet(out / task / "shots.parquet")
    runs.sort(key=lambda r: (r["task"], r["arm"], r["k"] or 0, r["replicate"] or 0))
    (out / "runs.json").write_text(json.dumps(runs, indent=1) + "\n", encoding="utf-8")
    return {"plans": plans, "predictions": predictions, "source_check": source_check, "runs": runs,
            "skipped": skipped, "wall_time_s": time.perf_counter() - t0}  # fmt: skip


def _frame(sample: pl.DataFrame, probs: np.ndarray) -> pl.DataFrame:
    return metrics.predictions_frame(sample["subject_id"], sample["prediction_time"], sample["boolean_value"], probs)


def _source_gap(probs: np.ndarray, cohort_dir: str | Path, run: Run, finetune_dir: str | Path | None) -> float | None:
    """Largest |difference| between the source model's predictions on the pretraining hospitals' evaluation
    sample and the finetune stage's file of the same run (None when that file is not at hand)."""
    path = Path(finetune_dir or "/nonexistent") / run.task / f"{run.name}.parquet"
    if finetune_dir is None or not path.is_file():
        return None
    theirs = metrics.read_predictions(path).sort("subject_id")
    ours = read_sample(cohort_dir, run.task, "evaluation").sort("subject_id")
    if theirs["subject_id"].to_list() != ours["subject_id"].to_list():
        return None
    return float(np.max(np.abs(theirs["predicted_boolean_probability"].to_numpy() - probs)))


# ---------------------------------------------------------------------------------------------- results
def kshot_table(results: dict[str, Any], evaluation) -> pl.DataFrame:
    """One row per task x arm x k (the source model once per task, k null): AUPRC and AUROC of the mean over
    replicates with 95% intervals (the test patients' sampling), the replicates' range, and the test sample."""
    how = {"n_resamples": evaluation.n_resamples, "seed": evaluation.seed, "alpha": evaluation.alpha}
    rows = []
    for task, by_arm in results["predictions"].items():
        test = results["plans"][task].test
        for (arm, k), frames in sorted(by_arm.items(), key=lambda kv: (_arm_order(kv[0][0]), kv[0][1] or 0)):
            r = metrics.evaluate_mean(frames, weights=test, **how)
            runs = [x["auprc"] for x in r["runs"]]
            rows.append({"task": task, "arm": arm, "k": k, "replicates": len(frames),
                         "auprc": r["auprc"]["point"], "auprc_low": r["auprc"]["low"], "auprc_high": r["auprc"]["high"],
                         "auprc_min": min(runs), "auprc_max": max(runs), "auroc": r["auroc"]["point"],
                         "auroc_low": r["auroc"]["low"], "auroc_high": r["auroc"]["high"],
                         "scored_patients": r["n"], "scored_positives": r["positives"]})  # fmt: skip
    return pl.DataFrame(rows, schema_overrides={"k": pl.Int64})


def _arm_order(arm: str) -> int:
    return (*ARMS, SOURCE).index(arm)


def gains_table(results: dict[str, Any], evaluation) -> pl.DataFrame:
    """One row per task x k x comparison: the relative AUPRC gain (A - B) / B of the fine-tuned pretrained
    encoder over the same architecture from scratch and over LightGBM, and of the source model (applied
    unchanged) over the k-shot pretrained encoder; paired bootstrap intervals, p-value, and whether the gain
    clears Claim-PT's 10%."""
    how = {"n_resamples": evaluation.n_resamples, "seed": evaluation.seed, "alpha": evaluation.alpha}
    rows = []
    for task, by_arm in results["predictions"].items():
        test = results["plans"][task].test
        for k in results["plans"][task].shots:
            mine = by_arm[("pretrained", k)]
            pairs = [("pretrained", "scratch", mine, by_arm[("scratch", k)]),
                     ("pretrained", "lightgbm", mine, by_arm[("lightgbm", k)])]  # fmt: skip
            if (SOURCE, None) in by_arm:
                pairs.append((SOURCE, "pretrained", by_arm[(SOURCE, None)], mine))
            for a, b, fa, fb in pairs:
                g = metrics.paired_mean_bootstrap(fa, fb, weights=test, relative=True, **how)["auprc"]
                rows.append({"task": task, "k": k, "model": a, "over": b, "relative_gain": g.point,
                             "low": g.low, "high": g.high, "p_value": g.p_value,
                             "above_claim_pt": g.point > CLAIM_PT_GAIN})  # fmt: skip
    return pl.DataFrame(rows)


def gains_wide(gains: pl.DataFrame) -> pl.DataFrame:
    """The relative-gain table as the report shows it: per task and k, the gain over scratch and over LightGBM
    with intervals, beside Claim-PT's "more than 10%"."""
    cell = pl.format("{}% ({}% to {}%)", *((pl.col(c) * 100).round(1) for c in ("relative_gain", "low", "high")))
    mine = gains.filter(pl.col("model") == "pretrained").with_columns(cell=cell)
    wide = mine.pivot(on="over", index=["task", "k"], values="cell").rename(
        {"scratch": "gain over scratch", "lightgbm": "gain over LightGBM"}
    )
    return wide.with_columns(pl.lit("> 10%").alias("Claim-PT (2022)"))


def plot_kshot(table: pl.DataFrame, title: str = ""):
    """The k-shot figure (EHRSHOT style): test AUPRC against k (log scale) with 95% bands, one panel per task:
    the pretrained encoder fine-tuned on k, the same architecture from scratch, LightGBM, and the source model
    applied unchanged (dashed)."""
    import matplotlib.pyplot as plt

    tasks = table["task"].unique(maintain_order=True).to_list()
    cols = min(4, len(tasks))
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 3.0 * rows), squeeze=False)
    colors = {"pretrained": "tab:blue", "scratch": "tab:gray", "lightgbm": "tab:orange", SOURCE: "tab:green"}
    labels = {"pretrained": "pretrained, fine-tuned on k", "scratch": "from scratch on k",
              "lightgbm": "LightGBM on k", SOURCE: "source model, unchanged"}  # fmt: skip
    for ax, task in zip(axes.flat, tasks, strict=False):
        t = table.filter(pl.col("task") == task)
        for arm in ARMS:
            a = t.filter(pl.col("arm") == arm).sort("k")
            ax.plot(a["k"], a["auprc"], "o-", ms=3, color=colors[arm], label=labels[arm])
            ax.fill_between(a["k"], a["auprc_low"], a["auprc_high"], color=colors[arm], alpha=0.15, lw=0)
        src = t.filter(pl.col("arm") == SOURCE)
        if src.height:
            ax.axhline(src["auprc"][0], color=colors[SOURCE], ls="--", lw=1.2, label=labels[SOURCE])
            ax.axhspan(src["auprc_low"][0], src["auprc_high"][0], color=colors[SOURCE], alpha=0.08, lw=0)
        if t.filter(pl.col("arm") != SOURCE).height:
            ax.set_xscale("log", base=2)
        else:
            ax.text(0.5, 0.5, "too few held-out\npositives for k = 4", transform=ax.transAxes, ha="center", fontsize=8)
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("k labelled patients (held-out hospitals)", fontsize=8)
    for ax in axes.flat[len(tasks) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("test AUPRC")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def counts_table(results: dict[str, Any]) -> pl.DataFrame:
    """Per task: the held-out hospitals' pool and test sample, the k run and the largest k the pool allows."""
    rows = []
    for task, plan in results["plans"].items():
        rows.append({"task": task, **plan.counts(), "shots": " ".join(map(str, plan.shots)),
                     "source_budget": plan.source_budget, "skipped": None})  # fmt: skip
    rows += [{"task": task, "skipped": why} for task, why in results.get("skipped", {}).items()]
    return pl.DataFrame(rows)


def findings(table: pl.DataFrame, gains: pl.DataFrame, skipped: dict[str, str] | None = None) -> list[str]:
    """The transfer study's findings in sentences generated from the numbers (SKIPPED: tasks it could not run)."""
    out = [f"{task}: not transferred ({why})." for task, why in (skipped or {}).items()]
    for task in table["task"].unique(maintain_order=True).to_list():
        g = gains.filter((pl.col("task") == task) & (pl.col("model") == "pretrained"))
        if g.height == 0:
            out.append(f"{task}: the held-out hospitals' pool is too small for any k; only the source model is scored.")
            continue
        ks = sorted(set(g["k"].to_list()))
        parts = []
        for other, name in (("scratch", "the same model from scratch"), ("lightgbm", "LightGBM")):
            o = g.filter(pl.col("over") == other).sort("k")
            wins = o.filter(pl.col("low") > 0)["k"].to_list()
            losses = o.filter(pl.col("high") < 0)["k"].to_list()
            big = o.filter(pl.col("above_claim_pt"))["k"].to_list()
            parts.append(f"over {name} the gain is {_pct(o['relative_gain'].min())} to {_pct(o['relative_gain'].max())}"
                         f" (interval above 0 at k = {_ks(wins)}; below 0 at k = {_ks(losses)}; above Claim-PT's 10% "
                         f"at k = {_ks(big)})")  # fmt: skip
        src = table.filter((pl.col("task") == task) & (pl.col("arm") == SOURCE))
        best = table.filter((pl.col("task") == task) & (pl.col("arm") == "pretrained") & (pl.col("k") == ks[-1]))
        tail = ""
        if src.height and best.height:
            tail = (f" The source model, fine-tuned at the pretraining hospitals and applied unchanged, scores "
                    f"{src['auprc'][0]:.3f} against {best['auprc'][0]:.3f} for k = {ks[-1]} local "
                    "patients.")  # fmt: skip
        out.append(f"{task} (k = {', '.join(map(str, ks))}): " + "; ".join(parts) + "." + tail)
    return out


def _pct(x: float) -> str:
    return f"{100 * x:+.0f}%"


def _ks(ks: list[int]) -> str:
    return ", ".join(map(str, ks)) if ks else "none"


def metrics_summary(table: pl.DataFrame, gains: pl.DataFrame, counts: pl.DataFrame, source_check: dict,
                    wall_time_s: float) -> dict[str, Any]:  # fmt: skip
    """The stage's DVC metrics: per task, the counts, every arm's AUPRC per k, the gains over scratch and over
    LightGBM per k, and the source model's AUPRC and its check against the finetune stage."""
    out: dict[str, Any] = {"wall_time_s": round(wall_time_s, 1)}
    for row in counts.iter_rows(named=True):
        task = row.pop("task")
        if row.get("skipped"):
            out[task] = {"skipped": row["skipped"]}
            continue
        t = table.filter(pl.col("task") == task)
        entry: dict[str, Any] = {**row}
        for arm in ARMS:
            entry[arm] = {
                str(r["k"]): round(r["auprc"], 4) for r in t.filter(pl.col("arm") == arm).iter_rows(named=True)
            }
        src = t.filter(pl.col("arm") == SOURCE)
        if src.height:
            entry[SOURCE] = round(src["auprc"][0], 4)
            entry["source_max_abs_diff_from_finetune"] = source_check.get(task)
        g = gains.filter((pl.col("task") == task) & (pl.col("model") == "pretrained"))
        for other in ("scratch", "lightgbm"):
            rows = g.filter(pl.col("over") == other).iter_rows(named=True)
            entry[f"gain_over_{other}"] = {str(r["k"]): round(r["relative_gain"], 4) for r in rows}
        out[task] = entry
    return out
