"""Command line of the generator, and the study's first stage.

    python -m claimsutil.synth --patients 100000 --seed 7 --out data/meds
    python -m claimsutil.synth --params params.yaml --out data/meds --metrics data/metrics/synthesize.json

With --params, the `synth` section of params.yaml sets every knob (flags given on the command line win),
and `data.source` decides: "synthetic" generates, a directory path validates and imports that MEDS dataset
(`data.on_invalid`: stop on errors, or import a cleaned copy when every error is repairable).
Exit codes: 0 written, 1 the user's dataset has errors, 2 a params or usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

from claimsutil.config import DataParams, ParamsError, SynthParams, build_section, load_params, root_path
from claimsutil.meds import MEDSValidationError, import_dataset
from claimsutil.synth import generate


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m claimsutil.synth", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="MEDS output directory (replaced)")
    p.add_argument("--truth", help="ground-truth directory (default: OUT with '_truth' appended)")
    p.add_argument("--params", help="read defaults from this params.yaml (synth and data sections)")
    p.add_argument("--metrics", help="write a JSON summary of the stage here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    for field in dataclasses.fields(SynthParams):
        if field.name.startswith("truth_"):
            p.add_argument(f"--{field.name.replace('_', '-')}", nargs="+", default=None)
        else:
            p.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out = Path(args.out)
    truth = Path(args.truth) if args.truth else out.with_name(out.name + "_truth")
    try:
        study = load_params(args.params) if args.params else None
        base = dataclasses.asdict(study.synth) if study else {}
        for field in dataclasses.fields(SynthParams):
            value = getattr(args, field.name)
            if value is not None:
                base[field.name] = tuple(value) if field.name.startswith("truth_") else value
        params = build_section(SynthParams, "synth", base)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if study is not None and not study.data.is_synthetic:
        try:
            summary = _import_user_data(study.data, out, truth)
        except (MEDSValidationError, FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    else:
        stats = generate(params, out, truth, progress=not args.no_progress, cohort=study.cohort if study else None)
        summary = {
            "source": "synthetic",
            "patients": stats.patients,
            "events": stats.events,
            "events_per_patient": round(stats.events / stats.patients, 2),
            "shards": stats.shards,
        }
        print(f"wrote {stats.events:,} events for {stats.patients:,} patients in {stats.shards} shard(s) "
              f"to {out} ({stats.events_per_s:,.0f} events/s)")  # fmt: skip
    if args.metrics:
        Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 0


def _import_user_data(data: DataParams, out: Path, truth: Path) -> dict:
    """A user's own MEDS dataset: validated, then copied in as data/meds (a cleaned copy when
    data.on_invalid is "clean" and every error is repairable). There is no ground truth."""
    src = Path(data.source)
    src = src if src.is_absolute() else root_path(src)
    report, cleaned = import_dataset(src, out, on_invalid=data.on_invalid, end=data.end_date,
                                     tail_share=data.end_tail_share)  # fmt: skip
    if truth.exists():
        shutil.rmtree(truth)
    truth.mkdir(parents=True)
    (truth / "generator.json").write_text(
        json.dumps({"source": str(data.source), "note": "user data: no ground truth, no oracle ceiling"}, indent=2)
        + "\n"
    )
    for line in report.lines()[:-1] if report.n_warnings else []:
        print(line)
    if cleaned is not None:
        print("\n".join(["cleaned before import (data.on_invalid: clean):", *cleaned.lines()]))
    print(f"imported {report.n_rows:,} events of {report.n_subjects:,} subjects from {data.source} "
          f"({report.n_warnings} warning(s))")  # fmt: skip
    summary = {
        "source": str(data.source),
        "patients": report.n_subjects,
        "events": report.n_rows,
        "events_per_patient": round(report.n_rows / max(report.n_subjects, 1), 2),
        "shards": report.n_shards,
        "data_end": report.window.end.date().isoformat() if report.window else None,
        "validation_warnings": {k: v for k, v in sorted(report.counts.items()) if v},
    }
    if cleaned is not None:
        summary["cleaned_rows"] = cleaned.totals()
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
