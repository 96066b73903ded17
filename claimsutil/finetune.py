"""Fine-tuning the pretrained encoder on the prediction tasks, and the from-scratch control.

For one model scale, every task, label budget and budget seed (`cohort` stage samples, 1:1 balanced) is
trained twice with the same recipe: from the pretrained encoder, and from a fresh initialisation of the same
architecture (the control that shows what pretraining adds). A [CLS] head reads the patient's sequence cut
before the prediction time.

    results = finetune_scale("data/tokens", "data/cohort", "data/models/xs/model.pt", tasks, config, "data/finetune/xs")

Training. Patients of a batch are packed into rows (attention never crosses patients, the model pools each
patient's [CLS]); AdamW at a constant rate, binary cross-entropy, at most `max_epochs` passes over the
budget; after every epoch the model scores a fixed early-stopping sample of validation patients, and the
weights with the best validation AUPRC (the primary metric) are kept; training stops after `patience` epochs
without improvement.

Samples. Every model of the study early-stops on the cohort stage's validation sample and is scored on its
evaluation sample (`claimsutil.cohort.task_samples`): all test positives and `cohort.test_negatives` seeded
test negatives (a case-cohort sample), each sampled negative weighted by (test negatives / sampled
negatives), so weighted AUPRC, AUROC and Brier estimate their whole-test-split values (`cohort.test_negatives:
null` scores every test patient, the paper profile). LightGBM and the oracle are scored on the same patients
with the same weights; every budget seed the cohort stage drew is trained.

Determinism. Every run is seeded by (seed, task, budget, budget seed, init) and runs on one thread, so the
same inputs give the same predictions bit for bit whether runs go through worker processes or not.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from sklearn.metrics import average_precision_score
from torch.nn import functional as F
from tqdm import tqdm

from claimsutil import metrics
from claimsutil import tokenize as tok
from claimsutil.batching import pack_rows, rows_to_tensors
from claimsutil.cohort import read_labels, read_sample
from claimsutil.config import EvaluationParams, FinetuneConfig
from claimsutil.metrics import INITS
from claimsutil.model import ClaimsEncoder, EncoderClassifier, ModelConfig, autocast_for, to_device, uses_bf16
from claimsutil.splits import task_key

# --------------------------------------------------------------------------------------------- samples


# ----------------------------------------------------------------------------------------------- batches


def pack_batch(seqs: list[tok.Sequence], row_len: int) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """SEQS packed into rows of ROW_LEN (first-fit, longest first). Returns the tensors (tokens, ages, visits,
    segments) and, for each [CLS] in row-major order, the index of its patient in SEQS."""
    lengths = np.array([len(s[0]) for s in seqs], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    rows = pack_rows(lengths, order, row_len)
    patient_of_cls = np.array([p for row in rows for p in row], dtype=np.int64)
    batch = rows_to_tensors(rows, seqs.__getitem__, row_len)
    return batch, patient_of_cls


def _logits(model: EncoderClassifier, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    b = to_device(batch, model.head.weight.device)
    return model(b["tokens"], b["ages"], b["visits"], b["segments"])  # (P,)


def device_for(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@torch.no_grad()
def predict_proba(model: EncoderClassifier, seqs: list[tok.Sequence], row_len: int, eval_tokens: int,
                  bf16: bool | str = False) -> np.ndarray:  # fmt: skip
    """Probability of the outcome for each sequence (in the order given); BF16: as `FinetuneConfig.bf16`."""
    model.eval()
    out = np.empty(len(seqs), dtype=np.float64)
    lengths = np.array([len(s[0]) for s in seqs])
    order = np.argsort(-lengths, kind="stable")
    chunk, start = [], 0
    bounds = []
    for i in range(len(order)):  # chunks of about eval_tokens real tokens
        chunk.append(order[i])
        start += lengths[order[i]]
        if start >= eval_tokens or i == len(order) - 1:
            bounds.append(np.array(chunk))
            chunk, start = [], 0
    for idx in bounds:
        batch, cls_patient = pack_batch([seqs[i] for i in idx], row_len)
        with autocast_for(model.head.weight.device, bf16):
            logits = _logits(model, batch)
        out[idx[cls_patient]] = torch.sigmoid(logits.double()).cpu().numpy()
    model.train()
    return out


# ------------------------------------------------------------------------------------------------- a run


@dataclass(frozen=True)
class Run:
    task: str
    budget: str  # "100", "500", ... or "full"
    budget_seed: int
    init: str  # "pretrained" or "scratch"

    @property
    def name(self) -> str:
        return f"{self.init}_budget-{self.budget}_seed-{self.budget_seed}"

    def seed(self, base: int) -> int:
        budget = 0 if self.budget == "full" else int(self.budget)
        state = np.random.SeedSequence([base, task_key(self.task), budget, self.budget_seed, INITS.index(self.init)])
        return int(state.generate_state(1, dtype=np.uint32)[0])


def build_classifier(model_config: ModelConfig, family: torch.Tensor, pretrained: dict | None,
                     config: FinetuneConfig, seed: int) -> EncoderClassifier:  # fmt: skip
    """The classifier of a run: the pretrained encoder's weights (or a fresh init from SEED) and a new head."""
    torch.manual_seed(seed)
    encoder = ClaimsEncoder(model_config, family)
    if pretrained is not None:
        encoder.load_state_dict(pretrained)
    return EncoderClassifier(encoder, dropout=config.dropout, pooling=config.pooling)


def train_classifier(model: EncoderClassifier, train: tuple[list, np.ndarray], val: tuple[list, np.ndarray],
                     config: FinetuneConfig, seed: int) -> dict[str, Any]:  # fmt: skip
    """Fine-tune MODEL in place on TRAIN (sequences, 0/1 labels), early-stopped on VAL's AUPRC; MODEL ends with
    the best epoch's weights. Returns the history."""
    seqs, y = train
    row_len = min(config.max_len, model.encoder.config.max_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best = {"auprc": -1.0, "epoch": 0, "state": None}
    history = []
    model.train()
    for epoch in range(1, config.max_epochs + 1):
        order = np.random.default_rng([seed, epoch]).permutation(len(seqs))
        losses = []
        for start in range(0, len(order), config.batch_patients):
            idx = order[start : start + config.batch_patients]
            batch, cls_patient = pack_batch([seqs[i] for i in idx], row_len)
            target = torch.from_numpy(y[idx[cls_patient]].astype(np.float32)).to(model.head.weight.device)
            with autocast_for(model.head.weight.device, config.bf16):
                logits = _logits(model, batch)
            loss = F.binary_cross_entropy_with_logits(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            losses.append(loss.detach())  # kept on the device: no host sync per batch
        val_probs = predict_proba(model, val[0], row_len, config.eval_tokens, config.bf16)
        val_auprc = float(average_precision_score(val[1], val_probs))
        train_loss = float(np.mean(torch.stack(losses).double().cpu().numpy()))
        history.append({"epoch": epoch, "train_loss": train_loss, "val_auprc": val_auprc})
        if val_auprc > best["auprc"]:
            best = {"auprc": val_auprc, "epoch": epoch, "state": {k: v.clone() for k, v in model.state_dict().items()}}
        elif epoch - best["epoch"] >= config.patience:
            break
    model.load_state_dict(best["state"])
    return {"best_epoch": best["epoch"], "best_val_auprc": best["auprc"], "epochs": len(history), "history": history}


_WORKER: dict[str, Any] = {}


def _init_worker(num_threads: int) -> None:
    torch.set_num_threads(num_threads)


def _pretrained_state(path: str) -> tuple[ModelConfig, torch.Tensor, dict]:
    if _WORKER.get("path") != path:
        obj = torch.load(path, map_location="cpu", weights_only=False)
        _WORKER.update(path=path, config=ModelConfig(**obj["model_config"]), state=obj["model"])
    return _WORKER["config"], _WORKER["state"]["family"], _WORKER["state"]


def run_one(run: Run, data: dict[str, Any], model_path: str, config: FinetuneConfig) -> dict[str, Any]:
    """One run: build, fine-tune, score the evaluation sample. DATA holds the run's train / val / test
    sequences and labels. Returns the test probabilities and the training record."""
    t0 = time.perf_counter()
    model_config, family, state = _pretrained_state(model_path)
    seed = run.seed(config.seed)
    model = build_classifier(model_config, family, state if run.init == "pretrained" else None, config, seed)
    model.to(device_for(config.device))
    record = train_classifier(model, data["train"], data["val"], config, seed)
    probs = predict_proba(model, data["test"], min(config.max_len, model_config.max_len), config.eval_tokens,
                          config.bf16)  # fmt: skip
    precision = "bf16" if uses_bf16(model.head.weight.device, config.bf16) else "fp32"
    record |= {"wall_time_s": time.perf_counter() - t0, "train_patients": len(data["train"][0]), "precision": precision}
    return {"run": run, "probs": probs, "record": record}


def _run_in_worker(args: tuple) -> dict[str, Any]:
    return run_one(*args)


# ----------------------------------------------------------------------------------------------- a scale


def task_data(store: tok.TokenStore, cohort_dir: str | Path, task: str, config: FinetuneConfig,
              max_len: int) -> dict[str, Any]:  # fmt: skip
    """A task's sequences: the early-stopping and evaluation samples and every budget sample's patients."""
    labels = read_labels(cohort_dir, task)
    cut = min(config.max_len, max_len)
    evaluation = read_sample(cohort_dir, task, "evaluation")
    stopping = read_sample(cohort_dir, task, "validation")
    budgets = pl.read_parquet(Path(cohort_dir) / "budgets" / f"{task}.parquet")
    samples = {
        (str(b), int(s)): g.select("subject_id")
        for (b, s), g in budgets.group_by("budget", "seed", maintain_order=True)
    }
    if config.full_training_set:
        samples[("full", 0)] = labels.filter(pl.col("split") == "train").select("subject_id")

    def seqs(frame: pl.DataFrame) -> tuple[list, np.ndarray]:
        return store.sequences_for(frame, max_len=cut), frame["boolean_value"].to_numpy().astype(np.int8)

    train = {key: seqs(ids.join(labels, on="subject_id").sort("subject_id")) for key, ids in samples.items()}
    return {"evaluation": evaluation, "val": seqs(stopping), "test": seqs(evaluation)[0], "train": train,
            "stopping": stopping}  # fmt: skip


def finetune_scale(store_dir: str | Path, cohort_dir: str | Path, model_path: str | Path, tasks: list[str],
                   config: FinetuneConfig, out_dir: str | Path, evaluation: EvaluationParams,
                   progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Every run of every task at one scale. Writes OUT_DIR/<task>/<init>_budget-<B>_seed-<S>.parquet (the
    evaluation sample's predictions, meds-evaluation columns) and OUT_DIR/runs.json; returns {task: {"runs":
    [...], "results": {init: {budget: evaluate_mean on the evaluation sample}}}}."""
    store, out = tok.TokenStore(store_dir), Path(out_dir)
    model_config = ModelConfig(**torch.load(model_path, map_location="cpu", weights_only=False)["model_config"])
    data = {t: task_data(store, cohort_dir, t, config, model_config.max_len) for t in tasks}
    jobs = []
    for t in tasks:
        for (budget, s), train in data[t]["train"].items():
            payload = {"train": train, "val": data[t]["val"], "test": data[t]["test"]}
            jobs += [(Run(t, budget, s, init), payload, str(model_path), config) for init in INITS]
    jobs.sort(key=lambda j: -len(j[1]["train"][0]))  # longest first: workers finish together
    results: dict[str, Any] = {t: {"runs": [], "predictions": {}} for t in tasks}
    bar = tqdm(total=len(jobs), desc="fine-tune", unit="run", disable=not progress)
    if config.workers == 1:
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(config.num_threads)
        try:
            for job in jobs:
                _collect(run_one(*job), data, results, out)
                bar.update(1)
        finally:
            torch.set_num_threads(torch_threads)
    else:
        context = mp.get_context("spawn")
        with ProcessPoolExecutor(config.workers, mp_context=context, initializer=_init_worker,
                                 initargs=(config.num_threads,)) as pool:  # fmt: skip
            for done in pool.map(_run_in_worker, jobs):
                _collect(done, data, results, out)
                bar.update(1)
    bar.close()
    for t in tasks:
        results[t]["results"] = summarise(results[t].pop("predictions"), data[t]["evaluation"], evaluation)
        results[t]["runs"].sort(key=lambda r: (r["init"], _budget_key(r["budget"]), r["budget_seed"]))
    (out / "runs.json").write_text(json.dumps({t: r["runs"] for t, r in results.items()}, indent=1) + "\n")
    return results


def _collect(done: dict, data: dict, results: dict, out: Path) -> None:
    run = done["run"]
    ev = data[run.task]["evaluation"]
    frame = metrics.predictions_frame(ev["subject_id"], ev["prediction_time"], ev["boolean_value"], done["probs"])
    metrics.write_predictions(frame, out / run.task / f"{run.name}.parquet")
    results[run.task]["predictions"].setdefault((run.init, run.budget), []).append(frame)
    record = {k: v for k, v in done["record"].items() if k != "history"}
    results[run.task]["runs"].append(asdict(run) | record | {"history": done["record"]["history"]})


def _budget_key(budget: str) -> tuple[bool, int]:
    return (budget == "full", 0 if budget == "full" else int(budget))


def summarise(predictions: dict[tuple[str, str], list[pl.DataFrame]], sample: pl.DataFrame,
              evaluation: EvaluationParams) -> dict[str, dict[str, dict]]:  # fmt: skip
    """{init: {budget: evaluate_mean over the budget seeds, weighted by the evaluation SAMPLE}}."""
    out: dict[str, dict[str, dict]] = {}
    how = {"n_resamples": evaluation.n_resamples, "seed": evaluation.seed, "alpha": evaluation.alpha}
    for init, budget in sorted(predictions, key=lambda k: (INITS.index(k[0]), _budget_key(k[1]))):
        out.setdefault(init, {})[budget] = metrics.evaluate_mean(predictions[(init, budget)], weights=sample, **how)
    return out


def metrics_summary(results: dict[str, Any], wall_time_s: float) -> dict[str, Any]:
    """The stage's DVC metrics: per task, init and budget the AUPRC and AUROC with their intervals."""
    summary: dict[str, Any] = {"wall_time_s": round(wall_time_s, 1)}
    for task, entry in results.items():
        summary[task] = {
            init: {budget: {m: r[m] for m in ("auprc", "auroc")} for budget, r in by_budget.items()}
            for init, by_budget in entry["results"].items()
        }
    summary["runs"] = sum(len(e["runs"]) for e in results.values())
    summary["precision"] = sorted({r["precision"] for e in results.values() for r in e["runs"]})
    return summary


def results_table(results: dict[str, Any]) -> pl.DataFrame:
    """One row per task x init x budget: AUPRC and AUROC with 95% intervals, runs and mean best epoch."""
    rows = []
    for task, entry in results.items():
        for init, by_budget in entry["results"].items():
            for budget, r in by_budget.items():
                runs = [x for x in entry["runs"] if x["init"] == init and x["budget"] == budget]
                rows.append({
                    "task": task, "init": init, "budget": budget, "runs": len(runs),
                    "auprc": r["auprc"]["point"], "auprc_low": r["auprc"]["low"], "auprc_high": r["auprc"]["high"],
                    "auroc": r["auroc"]["point"], "auroc_low": r["auroc"]["low"], "auroc_high": r["auroc"]["high"],
                    "best_epoch": float(np.mean([x["best_epoch"] for x in runs])),
                    "wall_time_s": float(sum(x["wall_time_s"] for x in runs)),
                })  # fmt: skip
    return pl.DataFrame(rows)


def plot_results(table: pl.DataFrame, title: str = ""):
    """AUPRC against the label budget, one panel per task, pretrained against from scratch, with intervals."""
    import matplotlib.pyplot as plt

    tasks = table["task"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for init, color in zip(INITS, ("tab:blue", "tab:gray"), strict=True):
            t = table.filter((pl.col("task") == task) & (pl.col("init") == init))
            x = np.arange(t.height)
            err = [t["auprc"] - t["auprc_low"], t["auprc_high"] - t["auprc"]]
            ax.errorbar(x, t["auprc"], yerr=err, marker="o", capsize=3, label=init, color=color)
            ax.set_xticks(x, t["budget"].to_list())
        ax.set_title(task)
        ax.set_xlabel("labelled patients")
    axes[0][0].set_ylabel("test AUPRC")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
