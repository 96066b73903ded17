"""Command line of the generator, and the study's first stage.

    python -m claimsutil.synth --patients 100000 --seed 7 --out data/meds
    python -m claimsutil.synth --params params.yaml --out data/meds --metrics data/metrics/synthesize.json

With --params, the `synth` section of params.yaml sets every knob (flags given on the command line win),
and `data.source` decides: "synthetic" generates, a directory path validates and imports that MEDS dataset.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from claimsutil.config import ParamsError, SynthParams, load_params, root_path
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
        params = SynthParams(**base)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if study is not None and not study.data.is_synthetic:
        summary = _import_user_data(study.data.source, out, truth)
    else:
        stats = generate(params, out, truth, progress=not args.no_progress)
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


def _import_user_data(source: str, out: Path, truth: Path) -> dict:
    """A user's own MEDS dataset: validated, then copied in as data/meds. There is no ground truth."""
    from claimsutil.meds import import_dataset

    src = Path(source)
    src = src if src.is_absolute() else root_path(src)
    report = import_dataset(src, out)
    truth.mkdir(parents=True, exist_ok=True)
    (truth / "generator.json").write_text(
        json.dumps({"source": str(source), "note": "user data: no ground truth, no oracle ceiling"}, indent=2) + "\n"
    )
    print(f"imported {report.n_rows:,} events of {report.n_subjects:,} subjects from {source} "
          f"({len(report.warnings)} warning(s))")  # fmt: skip
    return {
        "source": str(source),
        "patients": report.n_subjects,
        "events": report.n_rows,
        "events_per_patient": round(report.n_rows / max(report.n_subjects, 1), 2),
        "shards": report.n_shards,
        "validation_warnings": {k: v for k, v in report.counts.items() if v},
    }


if __name__ == "__main__":
    raise SystemExit(main())
