"""Benchmarks of the study's heavy steps. They print figures; they assert nothing.

    python -m claimsutil.bench synth [--patients 100000] [--workers 2]
    python -m claimsutil.bench features [--patients 100000] [--meds DIR]

The last line of each subcommand is machine-readable, e.g. `events_per_s=1234567 peak_rss_mib=812`.
Peak RSS is sampled over the whole process tree (the parent and its worker processes together).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil


class PeakRSS:
    """Samples the summed resident memory of this process and its children until stopped."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process(os.getpid())
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:  # exited between listing and reading
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def bench_synth(args: argparse.Namespace) -> str:
    from claimsutil.config import SynthParams
    from claimsutil.synth import generate

    params = SynthParams(
        patients=args.patients,
        seed=args.seed,
        block_size=args.block_size,
        shard_size=args.shard_size,
        workers=args.workers,
    )
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="claims-bench-"))
    print(f"generating {params.patients:,} patients with {params.workers} worker(s): "
          f"{dataclasses.asdict(params)}")  # fmt: skip
    try:
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            stats = generate(params, work / "meds", work / "meds_truth", progress=not args.no_progress)
            seconds = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (work / "meds").rglob("*.parquet"))
        truth = sum(p.stat().st_size for p in (work / "meds_truth").rglob("*.parquet"))
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"events={stats.events:,} events_per_patient={stats.events / stats.patients:.1f} "
        f"shards={stats.shards} seconds={seconds:.1f} patients_per_s={stats.patients / seconds:,.0f}"
    )
    print(f"meds_size_mib={size / 2**20:.1f} truth_size_mib={truth / 2**20:.1f}")  # fmt: skip
    return f"events_per_s={stats.events / seconds:.0f} peak_rss_mib={rss.mib:.0f}"


def stand_in_labels(meds_root: str | Path, outcome_prefix: str = "ICD10/I10"):
    """One label row per subject with timed events: prediction_time = the time of the subject's median event
    (the lower one), boolean_value = any OUTCOME_PREFIX record after it. A stand-in for the cohort module's
    labels, for benchmarks and tests."""
    import polars as pl

    from claimsutil.meds import shard_paths

    parts = []
    for path in shard_paths(meds_root):
        lf = pl.scan_parquet(path, hive_partitioning=False).select("subject_id", "time", "code")
        timed = lf.filter(pl.col("time").is_not_null() & (pl.col("code") != "MEDS_BIRTH"))
        median = timed.group_by("subject_id").agg(
            prediction_time=pl.col("time").sort().get((pl.len() - 1) // 2).cast(pl.Datetime("us"))
        )
        outcome = pl.col("code").str.starts_with(outcome_prefix) & (pl.col("time") > pl.col("prediction_time"))
        labels = (
            timed.join(median, on="subject_id")
            .group_by("subject_id", "prediction_time")
            .agg(boolean_value=outcome.any())
        )
        parts.append(labels.collect())
    return pl.concat(parts).sort("subject_id")


def _prepare_features_input(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """Generate the dataset (unless --meds) and write the stand-in labels; runs in a child process so that
    the memory it leaves behind does not count in the feature benchmark's peak RSS."""
    from claimsutil.config import SynthParams
    from claimsutil.synth import generate

    root = Path(args.meds) if args.meds else work / "meds"
    if not args.meds:
        params = SynthParams(patients=args.patients, seed=args.seed, block_size=args.block_size,
                             shard_size=args.shard_size, workers=args.workers)  # fmt: skip
        print(f"generating {params.patients:,} patients (not timed): {dataclasses.asdict(params)}", flush=True)
        generate(params, root, work / "meds_truth", progress=not args.no_progress)
    stand_in_labels(root).write_parquet(work / "labels.parquet")
    return root, work / "labels.parquet"


def bench_features(args: argparse.Namespace) -> str:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np
    import polars as pl

    from claimsutil.features import FeatureConfig, count_features_with_stats, fit_vocabulary
    from claimsutil.meds import shard_paths

    work = Path(tempfile.mkdtemp(prefix="claims-bench-"))
    try:
        with ProcessPoolExecutor(1, mp.get_context("spawn")) as pool:
            root, labels_path = pool.submit(_prepare_features_input, args, work).result()
        labels = pl.read_parquet(labels_path)
        train = labels.filter(pl.Series(np.random.default_rng(args.seed).random(labels.height) < args.train_fraction))
        print(f"dataset: {len(shard_paths(root))} shard(s); labels: {labels.height:,} rows, positive rate "
              f"{labels['boolean_value'].mean():.3f}; vocabulary fitted on {train.height:,} rows")  # fmt: skip
        rss_before = psutil.Process(os.getpid()).memory_info().rss / 2**20
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            vocab = fit_vocabulary(root, train, FeatureConfig(), progress=not args.no_progress)
            t1 = time.perf_counter()
            X, stats = count_features_with_stats(root, labels, vocab, progress=not args.no_progress)
            t2 = time.perf_counter()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    matrix_mib = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**20
    print(f"vocabulary: {vocab.n_columns:,} columns ({len(vocab.codes):,} codes, {len(vocab.suspected):,} suspected, "
          f"{len(vocab.hospitals)} hospitals); {vocab.rare_codes:,} of {vocab.codes_seen:,} codes below "
          f"{vocab.config.min_code_patients} rows left out ({vocab.rare_code_records:,} records)")  # fmt: skip
    print(f"counting: {stats.summary()}")
    print(f"matrix: rows={X.shape[0]:,} columns={X.shape[1]:,} nonzeros={X.nnz:,} "
          f"nonzeros_per_row={X.nnz / max(X.shape[0], 1):.1f} size_mib={matrix_mib:.1f} dtype={X.dtype}")  # fmt: skip
    print(f"seconds: vocabulary={t1 - t0:.2f} features={t2 - t1:.2f} total={t2 - t0:.2f}")
    print(f"memory: rss_before_mib={rss_before:.0f} peak_rss_mib={rss.mib:.0f} matrix_mib={matrix_mib:.1f} "
          f"matrix_share_of_peak={matrix_mib / rss.mib:.1%}")  # fmt: skip
    return f"patients_per_s={labels.height / (t2 - t0):.0f} peak_rss_mib={rss.mib:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m claimsutil.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="synthetic claims generation: events/s and peak RSS")
    synth.add_argument("--patients", type=int, default=100_000)
    synth.add_argument("--seed", type=int, default=20260401)
    synth.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    synth.add_argument("--block-size", type=int, default=2500)
    synth.add_argument("--shard-size", type=int, default=25_000)
    synth.add_argument("--out", help="keep the generated data here (default: a temporary folder, deleted)")
    synth.add_argument("--no-progress", action="store_true")
    feats = sub.add_parser("features", help="count features for the baseline: patients/s and peak RSS")
    feats.add_argument("--patients", type=int, default=100_000)
    feats.add_argument("--meds", help="use this MEDS dataset instead of generating one")
    feats.add_argument("--seed", type=int, default=20260401)
    feats.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="generator processes")
    feats.add_argument("--block-size", type=int, default=2500)
    feats.add_argument("--shard-size", type=int, default=10_000)
    feats.add_argument("--train-fraction", type=float, default=0.7, help="label rows the vocabulary is fitted on")
    feats.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    line = {"synth": bench_synth, "features": bench_features}[args.command](args)
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
