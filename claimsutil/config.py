"""params.yaml -> frozen dataclasses, project-root paths, and profile switching.

Every stage reads its parameters through `load_params()`, so a typo in params.yaml fails loudly with the
file, key and value instead of silently falling back to a default.

    python -m claimsutil.config use tiny      # rewrite the profile keys of params.yaml from profiles/tiny.yaml
    python -m claimsutil.config show          # print the parsed parameters
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PARAMS_FILE = "params.yaml"
PROFILES_DIR = "profiles"


def project_root() -> Path:
    """The directory holding params.yaml and dvc.yaml.

    Found from $CLAIMSUTIL_ROOT, else upwards from this package (an editable install), else upwards from
    the working directory. Never the working directory itself by accident: papermill runs notebooks from
    notebooks/, DVC from the root, and both must resolve the same paths.
    """
    if env := os.environ.get("CLAIMSUTIL_ROOT"):
        return Path(env).resolve()
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for candidate in (start, *start.parents):
            if (candidate / PARAMS_FILE).is_file() and (candidate / "dvc.yaml").is_file():
                return candidate
    raise FileNotFoundError(
        "cannot find the project root (a directory with params.yaml and dvc.yaml); set CLAIMSUTIL_ROOT"
    )


def root_path(*parts: str | Path) -> Path:
    """A path inside the project, resolved from the project root."""
    return project_root().joinpath(*parts)


@dataclass(frozen=True)
class DataParams:
    source: str = "synthetic"  # "synthetic" or a path to a MEDS dataset directory

    @property
    def is_synthetic(self) -> bool:
        return self.source == "synthetic"


@dataclass(frozen=True)
class SynthParams:
    patients: int = 20000  # patients to generate
    seed: int = 20260401  # root seed; every block derives its own stream from it
    hospitals: int = 32  # hospitals in the database
    start: str = "2015-01-01"  # first month of the database window (a month start)
    months: int = 120  # length of the window in months
    block_size: int = 1000  # patients per random-number stream
    shard_size: int = 5000  # patients per shard; a multiple of block_size
    workers: int = 2  # processes writing shards (never changes the data)
    truth_conditions: tuple[str, ...] = ("hypertension", "ckd")  # hazards kept in the truth file
    truth_drugs: tuple[str, ...] = ("amlodipine", "pregabalin")  # start probabilities kept there

    def __post_init__(self) -> None:
        _require(self.patients >= 1, "synth.patients", self.patients, "must be >= 1")
        _require(self.hospitals >= 1, "synth.hospitals", self.hospitals, "must be >= 1")
        _require(self.months >= 13, "synth.months", self.months, "must be >= 13 (one year plus a month)")
        _require(self.block_size >= 1, "synth.block_size", self.block_size, "must be >= 1")
        _require(
            self.shard_size >= self.block_size and self.shard_size % self.block_size == 0,
            "synth.shard_size",
            self.shard_size,
            f"must be a positive multiple of synth.block_size ({self.block_size})",
        )
        _require(self.workers >= 1, "synth.workers", self.workers, "must be >= 1")
        try:
            start = dt.date.fromisoformat(self.start)
        except ValueError:
            start = None
        _require(start is not None and start.day == 1, "synth.start", self.start, "must be YYYY-MM-01")


@dataclass(frozen=True)
class DescribeParams:
    age_bands: tuple[int, ...] = (20, 40, 50, 60, 70, 80)  # lower edges of the report's age bands
    min_cell: int = 10  # counts below this are shown as "<10"


@dataclass(frozen=True)
class StudyParams:
    profile: str
    data: DataParams
    synth: SynthParams
    describe: DescribeParams


class ParamsError(ValueError):
    """A value in params.yaml is missing, unknown or out of range."""


def _require(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ParamsError(f"{PARAMS_FILE}: {key} = {value!r} {why}")


def _build(cls: type, section: str, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{PARAMS_FILE}: {section} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(f"{PARAMS_FILE}: unknown key(s) {unknown} in section '{section}'")
    kwargs = {}
    for name, value in raw.items():
        default = fields[name].default
        if isinstance(default, tuple):
            if not isinstance(value, list | tuple):
                raise ParamsError(f"{PARAMS_FILE}: {section}.{name} = {value!r} must be a list")
            value = tuple(value)
        elif isinstance(default, bool | int | str) and not isinstance(value, type(default)):
            raise ParamsError(f"{PARAMS_FILE}: {section}.{name} = {value!r} must be of type {type(default).__name__}")
        kwargs[name] = value
    return cls(**kwargs)


def load_params(path: str | Path | None = None) -> StudyParams:
    """Parse params.yaml (the project's, unless a path is given) into frozen dataclasses."""
    path = Path(path) if path is not None else root_path(PARAMS_FILE)
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f) or {}
    return StudyParams(
        profile=str(raw.get("profile", "custom")),
        data=_build(DataParams, "data", raw.get("data")),
        synth=_build(SynthParams, "synth", raw.get("synth")),
        describe=_build(DescribeParams, "describe", raw.get("describe")),
    )


def profile_names(root: Path | None = None) -> list[str]:
    root = root or project_root()
    return sorted(p.stem for p in (root / PROFILES_DIR).glob("*.yaml"))


def use_profile(name: str, root: Path | None = None) -> list[str]:
    """Overwrite the keys that profiles/NAME.yaml sets in params.yaml; returns the dotted keys changed.

    Comments and every key the profile does not mention are kept (ruamel round-trip).
    """
    from ruamel.yaml import YAML

    root = root or project_root()
    overlay_path = root / PROFILES_DIR / f"{name}.yaml"
    if not overlay_path.is_file():
        raise ParamsError(f"unknown profile '{name}': choose one of {profile_names(root)}")
    overlay = yaml.safe_load(overlay_path.read_text(encoding="utf-8")) or {}
    rt = YAML()
    rt.preserve_quotes = True
    params_path = root / PARAMS_FILE
    doc = rt.load(params_path.read_text(encoding="utf-8"))
    changed: list[str] = []

    def merge(target: Any, patch: dict, prefix: str) -> None:
        for key, value in patch.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                if key not in target or not isinstance(target[key], dict):
                    raise ParamsError(f"{overlay_path.name}: {dotted} is not a section of {PARAMS_FILE}")
                merge(target[key], value, dotted + ".")
            else:
                if target.get(key) != value:
                    changed.append(dotted)
                target[key] = value

    merge(doc, overlay, "")
    with open(params_path, "w", encoding="utf-8") as f:
        rt.dump(doc, f)
    load_params(params_path)  # fail now, not in a stage, if the result is invalid
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m claimsutil.config", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    use = sub.add_parser("use", help="switch params.yaml to a profile")
    use.add_argument("profile")
    sub.add_parser("show", help="print the parsed parameters")
    args = parser.parse_args(argv)
    try:
        if args.command == "use":
            changed = use_profile(args.profile)
            print(f"params.yaml now uses profile '{args.profile}' ({len(changed)} value(s) changed)")
        else:
            print(yaml.safe_dump(dataclasses.asdict(load_params()), sort_keys=False))
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
