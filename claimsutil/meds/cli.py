"""Command line: check and repair MEDS datasets.

    python -m claimsutil.meds validate DIR [--max-examples N] [--end YYYY-MM-DD]
    python -m claimsutil.meds clean IN OUT [--end YYYY-MM-DD]

`validate` prints every problem example (file, row, column, value), a line per check with more occurrences
than examples, and a summary. `clean` writes OUT without the repairable rows (before birth, after death,
past the end of the data, exact duplicates) and prints what it dropped per file and reason, then validates
OUT. Exit codes: 0 valid (warnings allowed), 1 the dataset has errors, 2 a usage error, 3 an internal error.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from claimsutil.meds import DEFAULT_TAIL_SHARE
from claimsutil.meds.clean import clean_dataset
from claimsutil.meds.validate import DEFAULT_MAX_EXAMPLES, validate_dataset


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _date(text: str) -> dt.datetime:
    try:
        return dt.datetime.combine(dt.date.fromisoformat(text), dt.time())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 0.5), got {text!r}") from None
    if not 0 <= value < 0.5:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 0.5), got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m claimsutil.meds", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="check a MEDS dataset; exit 1 if it has errors")
    validate.add_argument("dir", type=Path, help="MEDS root (holds data/ and metadata/)")
    validate.add_argument("--max-examples", type=_non_negative, default=DEFAULT_MAX_EXAMPLES,
                          help="examples kept per check and file (all occurrences are counted)")  # fmt: skip
    clean = commands.add_parser("clean", help="copy a MEDS dataset without its repairable rows")
    clean.add_argument("src", type=Path, help="MEDS root to repair (left unchanged)")
    clean.add_argument("dst", type=Path, help="where the repaired copy goes (replaced)")
    for sub in (validate, clean):
        sub.add_argument("--end", type=_date, default=None, help="end of the data (default: inferred, as the study)")
        why = "inferred end: after the month by which all but this share of clinical events happened"
        sub.add_argument("--end-tail-share", type=_share, default=DEFAULT_TAIL_SHARE, help=why)
    return parser


def _validate(args: argparse.Namespace) -> int:
    report = validate_dataset(args.dir, max_examples=args.max_examples, progress=sys.stderr.isatty(),
                              end=args.end, tail_share=args.end_tail_share)  # fmt: skip
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _clean(args: argparse.Namespace) -> int:
    report = clean_dataset(args.src, args.dst, end=args.end, tail_share=args.end_tail_share)
    print("\n".join(report.lines()))
    after = validate_dataset(args.dst, end=args.end, tail_share=args.end_tail_share)
    print(f"{args.dst}: " + ("valid" if after.ok else "still has errors") + f" ({after.summary()})")
    if not after.ok:
        print("\n".join(str(p) for p in after.errors))
    return 0 if after.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    root = args.dir if args.command == "validate" else args.src
    if not root.is_dir():
        parser.error(f"{root}: not a directory")
    try:
        return _validate(args) if args.command == "validate" else _clean(args)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1 if args.command == "clean" else 2
    except Exception as e:  # noqa: BLE001 - a bug: say so in one line rather than a traceback
        print(f"internal error (a bug in claimsutil.meds; please report it): {type(e).__name__}: {e}", file=sys.stderr)
        return 3
