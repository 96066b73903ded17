"""The data stages at N patients: wall seconds and peak memory per stage, and how they grow with N.

    python -m claimsutil.bench scale --patients 100000,500000,2300000 [--profile paper] [--task hypertension]
                                     [--oracle-replicates 20] [--workers 2] [--out DIR] [--keep]

Each stage runs in its own process (spawned, so its peak is its own and not an earlier stage's leftovers) over
the files the previous stages wrote, with the study's own functions and the profile's parameters (the paper
profile by default: every test patient scored, `cohort.test_negatives: null`), `synth.patients` set to N:

    synthesize   the synthetic MEDS dataset and its ground truth (`claimsutil.synth.generate`)
    splits       patient-level splits and the held-out hospitals
    describe     every pass over the events the data report (notebook 00) makes
    cohort       labels, budgets and samples of every task, Table 2, and the oracle on the evaluation sample
    tokenize     vocabulary from the pretraining patients, the token store of every patient, the frequency baseline
    features     count features of one task's labelled patients (vocabulary fitted on its training patients)
    lightgbm     LightGBM on that task's whole training set, early-stopped on the validation sample
    inference    the demo profile's smallest encoder (random weights: the cost is the same) scoring every test
                 patient of the task, as fine-tuning's evaluation does in the paper profile

One line per stage (`stage=... patients=... seconds=... peak_rss_mib=...`), then per stage the growth exponent
b of seconds ~ N^b fitted over the Ns given (1: linear), and a last line `stages=... max_rss_mib=...`. Peak RSS
is sampled over the stage's whole process tree (its worker processes included).

The oracle replays `--oracle-replicates` futures per patient (its cost is linear in them; the line also
gives the seconds projected to the profile's `cohort.oracle_replicates`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

STAGES = ("synthesize", "splits", "describe", "cohort", "tokenize", "features", "lightgbm", "inference")


# ----------------------------------------------------------------------------------------------- params
def scale_params(root: Path, work: Path, profile: str) -> Path:
    """params.yaml of ROOT switched to PROFILE in WORK (`_load` then sets the bench's N, workers and oracle
    replicates). Returns the path of WORK's params.yaml."""
    from claimsutil.config import PARAMS_FILE, PROFILES_DIR, use_profile

    work.mkdir(parents=True, exist_ok=True)
    shutil.copy(root / PARAMS_FILE, work / PARAMS_FILE)
    shutil.copytree(root / PROFILES_DIR, work / PROFILES_DIR, dirs_exist_ok=True)
    use_profile(profile, work)
    return work / PARAMS_FILE


def _load(params_path: Path, patients: int, oracle_replicates: int | None, workers: int):
    from claimsutil.config import load_params

    params = load_params(params_path)
    shard = min(params.synth.shard_size, max(params.synth.block_size, patients // 4 // params.synth.block_size
                                             * params.synth.block_size))  # fmt: skip
    synth = dataclasses.replace(params.synth, patients=patients, workers=workers, shard_size=shard)
    # Label budgets of 100 only: sampling them costs nothing at any N, and the smallest N cannot fill 1,000.
    cohort = dataclasses.replace(params.cohort, workers=workers, budgets=(100,), oracle_replicates=oracle_replicates
                                 or params.cohort.oracle_replicates)  # fmt: skip
    tasks = tuple(dataclasses.replace(t, budgets=(100,)) for t in params.tasks)
    return dataclasses.replace(params, synth=synth, cohort=cohort, tasks=tasks)


# ----------------------------------------------------------------------------------------------- stages
def _events(work: Path, params):
    from claimsutil.meds import Events

    return Events(work / "meds", params.data.end_date, params.data.end_tail_share)


def stage_synthesize(work: Path, params, task: str) -> dict:
    from claimsutil.synth import generate

    stats = generate(params.synth, work / "meds", work / "meds_truth", progress=False)
    return {"events": stats.events, "shards": stats.shards}


def stage_splits(work: Path, params, task: str) -> dict:
    from claimsutil.splits import SPLITS_FILE, build_splits, split_counts

    splits, _, _ = build_splits(_events(work, params), params.cohort, work / "meds")
    (work / "splits").mkdir(exist_ok=True)
    splits.write_parquet(work / "splits" / SPLITS_FILE)
    return split_counts(splits)


def stage_describe(work: Path, params, task: str) -> dict:
    from claimsutil import describe

    events = _events(work, params)
    summary = describe.dataset_summary(events)
    describe.events_per_patient(events)
    describe.codes_by_family(events)
    describe.top_codes(events, describe.DIAGNOSIS_FAMILY, n=20)
    describe.top_codes(events, describe.DRUG_FAMILY, n=20)
    describe.zipf_summary(describe.code_frequencies(events))
    describe.receipt_contents(events)
    describe.distinct_codes(events)
    describe.chapter_correlations(events)
    year = params.describe.reference_year or describe.last_full_year(events)
    describe.condition_prevalence(events, age_bands=params.describe.age_bands, year=year)
    describe.one_year_incidence(events, params.describe.incidence)
    describe.hospital_profile(events)
    describe.suspected_totals(describe.suspected_by_code(events))
    describe.coverage_end_reasons(events)
    describe.coverage_years(events)
    return {"patients": summary.get("patients")}


def stage_cohort(work: Path, params, task: str) -> dict:
    from claimsutil import cohort, splits
    from claimsutil.synth import oracle

    events = _events(work, params)
    study_splits = splits.read_splits(work / "splits")
    t0 = time.perf_counter()
    cohorts = cohort.build_tasks(events, params.tasks, params.cohort.seed)
    cohort.check_tasks(events, cohorts, study_splits, params.cohort.min_positives)
    budgets = cohort.sample_all_budgets(cohorts, study_splits, params.cohort)
    samples = cohort.task_samples(cohorts, study_splits, params.cohort)
    cohort.write_cohort(work / "cohort", cohorts, study_splits, budgets, samples)
    cohort.table2(cohorts, study_splits)
    labels_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    oracle.score_tasks(work / "meds_truth", cohorts, study_splits, params.cohort, work / "cohort" / "oracle", samples,
                       params.evaluation)  # fmt: skip
    scored = sum(s["evaluation"].height for s in samples.values())
    return {"labels_s": round(labels_s, 1), "oracle_s": round(time.perf_counter() - t0, 1), "oracle_patients": scored,
            "oracle_replicates": params.cohort.oracle_replicates}  # fmt: skip


def stage_tokenize(work: Path, params, task: str) -> dict:
    from claimsutil import splits
    from claimsutil import tokenize as tok

    events = _events(work, params)
    frame = splits.read_splits(work / "splits")
    vocab = tok.build_vocabulary(events, splits.subject_ids(frame, splits.VOCABULARY_SPLITS), params.tokenize)
    stats = tok.build_store(events, vocab, work / "tokens", params.tokenize)
    store = tok.TokenStore(work / "tokens")
    baseline = tok.frequency_baseline(store, splits.subject_ids(frame, ("train",)),
                                      splits.subject_ids(frame, ("validation",)))  # fmt: skip
    tok.write_frequency_baseline(baseline, work / "tokens")
    return {"vocabulary": len(vocab.tokens), "tokens": stats.tokens}


def _task_labels(work: Path, task: str):
    import polars as pl

    from claimsutil import cohort

    labels = cohort.read_labels(work / "cohort", task).filter(pl.col("split").is_in(["train", "validation", "test"]))
    return labels, labels.select("subject_id", "prediction_time", "boolean_value")


def stage_features(work: Path, params, task: str) -> dict:
    import scipy.sparse as sp

    from claimsutil import features
    from claimsutil.meds import open_events

    events = open_events(_events(work, params))
    labels, rows = _task_labels(work, task)
    vocab = features.fit_vocabulary(events, rows.filter(labels["split"] == "train"), params.features)
    X = sp.csr_matrix(features.count_features_with_stats(events, rows, vocab)[0])
    sp.save_npz(work / "features.npz", X)
    rows.with_columns(labels["split"]).write_parquet(work / "feature_rows.parquet")
    train = int((labels["split"] == "train").sum())
    return {"rows": X.shape[0], "columns": X.shape[1], "nonzero": int(X.nnz), "train": train,
            "positives": int(rows["boolean_value"].sum())}  # fmt: skip


def stage_lightgbm(work: Path, params, task: str) -> dict:
    import polars as pl
    import scipy.sparse as sp

    from claimsutil import baseline, cohort

    X = sp.load_npz(work / "features.npz").tocsr()
    rows = pl.read_parquet(work / "feature_rows.parquet").with_row_index("row")
    train = rows.filter(pl.col("split") == "train")
    val = rows.join(cohort.read_sample(work / "cohort", task, "validation").select("subject_id"), on="subject_id")
    test = rows.filter(pl.col("split") == "test")
    config = dataclasses.replace(params.baseline, num_leaves=params.baseline.num_leaves[:1])
    fitted = baseline.fit_baseline(X[train["row"].to_numpy()], train["boolean_value"].to_numpy(),
                                   X[val["row"].to_numpy()], val["boolean_value"].to_numpy(), config)  # fmt: skip
    baseline.predict(fitted, X[test["row"].to_numpy()])
    # Early stopping decides the rounds: more patients may support more trees (each round is linear in N).
    rounds = fitted.booster.current_iteration()
    return {"train_patients": train.height, "test_patients": test.height, "rounds": rounds,
            "best_iteration": fitted.best_iteration}  # fmt: skip


def stage_inference(work: Path, params, task: str) -> dict:
    import polars as pl
    import torch

    from claimsutil import cohort
    from claimsutil import tokenize as tok
    from claimsutil.finetune import build_classifier, predict_proba
    from claimsutil.model import config_for

    torch.set_num_threads(params.cohort.workers)  # the bench's --workers, as threads of one process
    store = tok.TokenStore(work / "tokens")
    test = cohort.read_labels(work / "cohort", task).filter(pl.col("split") == "test")
    max_len = min(params.finetune.max_len, store.config.max_len)
    model_config = config_for("demo", "xs", vocab_size=len(store.vocab.tokens), max_len=store.config.max_len)
    model = build_classifier(model_config, torch.as_tensor(store.vocab.family_ids), None, params.finetune, 0)
    t0 = time.perf_counter()
    seqs = store.sequences_for(test.select("subject_id", "prediction_time", "boolean_value"), max_len=max_len)
    read_s = time.perf_counter() - t0
    probs = predict_proba(model, seqs, max_len, params.finetune.eval_tokens, params.finetune.bf16)
    return {"test_patients": len(probs), "sequences_s": round(read_s, 1)}


STAGE_FUNCTIONS = {name: globals()[f"stage_{name}"] for name in STAGES}


def _child(name: str, work: str, params_path: str, patients: int, oracle_replicates: int | None, workers: int,
           task: str, result_file: str) -> None:  # fmt: skip
    try:
        params = _load(Path(params_path), patients, oracle_replicates, workers)
        out = STAGE_FUNCTIONS[name](Path(work), params, task)
        Path(result_file).write_text(json.dumps({"ok": True, "detail": out}, default=str))
    except Exception as e:  # reported by the parent with the stage's name, never a bare traceback
        Path(result_file).write_text(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))


def run_stage(name: str, work: Path, params_path: Path, patients: int, oracle_replicates: int | None, workers: int,
              task: str) -> dict:  # fmt: skip
    """One stage in a spawned process: {"seconds", "peak_rss_mib", "ok", "detail" or "error"}."""
    from claimsutil.bench import PeakRSS

    result_file = work / f".{name}.json"
    result_file.unlink(missing_ok=True)
    process = mp.get_context("spawn").Process(
        target=_child,
        args=(name, str(work), str(params_path), patients, oracle_replicates, workers, task, str(result_file)),
    )
    with PeakRSS() as rss:
        t0 = time.perf_counter()
        process.start()
        process.join()
        seconds = time.perf_counter() - t0
    if result_file.is_file():
        result = json.loads(result_file.read_text())
    else:
        result = {"ok": False, "error": f"the stage's process exited with code {process.exitcode} (killed?)"}
    return {"seconds": seconds, "peak_rss_mib": rss.mib} | result


def growth_exponent(patients: list[int], seconds: list[float]) -> float | None:
    """b of seconds ~ a * N^b, least squares on log-log (None with fewer than two Ns)."""
    if len(patients) < 2:
        return None
    x, y = np.log(np.asarray(patients, dtype=float)), np.log(np.maximum(np.asarray(seconds, dtype=float), 1e-3))
    return float(np.polyfit(x, y, 1)[0])


def bench_scale(args: argparse.Namespace) -> str:
    from claimsutil.config import project_root

    ns = sorted(int(float(n)) for n in str(args.patients).split(","))
    root = Path(args.root) if args.root else project_root()
    stages = [s for s in STAGES if s in set(args.stages.split(","))] if args.stages else list(STAGES)
    unknown = set(args.stages.split(",")) - set(STAGES) if args.stages else set()
    if unknown:
        raise SystemExit(f"error: unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    base = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="claims-scale-"))
    table: dict[str, dict[int, dict]] = {s: {} for s in stages}
    max_rss = 0.0
    try:
        for n in ns:
            work = base / f"patients-{n}"
            params_path = scale_params(root, work, args.profile)
            print(f"# {n:,} patients, profile {args.profile}, {args.workers} worker(s), task {args.task}: {work}",
                  flush=True)  # fmt: skip
            for name in stages:
                r = run_stage(name, work, params_path, n, args.oracle_replicates, args.workers, args.task)
                table[name][n] = r
                max_rss = max(max_rss, r["peak_rss_mib"])
                detail = " ".join(f"{k}={v}" for k, v in (r.get("detail") or {}).items())
                status = "" if r["ok"] else f" error={r['error']!r}"
                print(f"stage={name} patients={n} seconds={r['seconds']:.1f} peak_rss_mib={r['peak_rss_mib']:.0f}"
                      f"{status} {detail}".rstrip(), flush=True)  # fmt: skip
                if name == "cohort" and r["ok"]:
                    from claimsutil.config import load_params

                    full = load_params(params_path).cohort.oracle_replicates
                    d = r["detail"]
                    projected = d["labels_s"] + d["oracle_s"] * full / max(1, d["oracle_replicates"])
                    print(f"  cohort at the profile's {full} oracle replicates: about {projected:.0f} s (projected)")
                if not r["ok"]:  # the later stages read this one's files
                    break
            if not args.keep and n != ns[-1]:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if not args.keep and not args.out:
            shutil.rmtree(base, ignore_errors=True)
    parts = []
    for name in stages:
        done = [(n, r["seconds"]) for n, r in table[name].items() if r["ok"]]
        b = growth_exponent([n for n, _ in done], [s for _, s in done])
        if b is not None:
            print(f"growth {name}: seconds ~ N^{b:.2f} over N = {', '.join(f'{n:,}' for n, _ in done)}")
        last = table[name].get(ns[-1])
        if last:
            parts.append(f"{name}:{last['seconds']:.0f}s" + ("" if last["ok"] else "(failed)"))
    return f"stages={','.join(parts)} max_rss_mib={max_rss:.0f}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patients", default="100000", help="N, or several: 100000,500000,2300000")
    parser.add_argument("--profile", default="paper", help="the params profile the stages run with")
    parser.add_argument("--task", default="hypertension", help="the task of features, lightgbm and inference")
    parser.add_argument("--oracle-replicates", type=int, default=20,
                        help="futures per patient the oracle replays (0: the profile's)")  # fmt: skip
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="the stages' worker processes")
    parser.add_argument("--stages", default=None, help=f"a comma list of: {', '.join(STAGES)} (default: all)")
    parser.add_argument("--root", default=None, help="the project whose params.yaml and profiles/ are used")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one, deleted)")
    parser.add_argument("--keep", action="store_true", help="keep every N's data")


if __name__ == "__main__":  # pragma: no cover - run through `python -m claimsutil.bench scale`
    raise SystemExit("run: python -m claimsutil.bench scale --patients N")
