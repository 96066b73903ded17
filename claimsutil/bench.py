"""Benchmarks of the study's heavy steps. They print figures; they assert nothing.

    python -m claimsutil.bench synth [--patients 100000] [--workers 2]

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
    args = parser.parse_args(argv)
    line = {"synth": bench_synth}[args.command](args)
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
