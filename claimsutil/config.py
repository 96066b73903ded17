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
class CohortParams:
    seed: int = 17  # index dates, splits and label-budget samples
    min_prior_days: int = 365  # coverage required before the index date (task default)
    horizon_days: int = 365  # outcome window after the index date (task default)
    split: dict = dataclasses.field(default_factory=lambda: {"train": 0.70, "validation": 0.15, "test": 0.15})
    held_out_hospitals: int = 4  # whole hospitals kept out of every split (transfer experiments)
    budgets: tuple[int, ...] = (100, 500, 1000)  # labelled patients per balanced sample
    budget_seeds: int = 3  # samples per budget
    min_positives: int = 10  # fewer positives than this in any split stops the cohort stage
    oracle_replicates: int = 200  # simulated futures per test patient for the oracle ceiling

    def __post_init__(self) -> None:
        _require(set(self.split) == {"train", "validation", "test"}, "cohort.split", self.split,
                 "must have exactly the keys train, validation, test")  # fmt: skip
        _require(abs(sum(self.split.values()) - 1.0) < 1e-9 and min(self.split.values()) > 0, "cohort.split",
                 self.split, "fractions must be positive and sum to 1")  # fmt: skip
        _require(all(b >= 2 and b % 2 == 0 for b in self.budgets), "cohort.budgets", self.budgets,
                 "must be even numbers (sampled 1:1 positive:negative)")  # fmt: skip
        _require(self.budget_seeds >= 1, "cohort.budget_seeds", self.budget_seeds, "must be >= 1")
        _require(self.held_out_hospitals >= 0, "cohort.held_out_hospitals", self.held_out_hospitals, "must be >= 0")
        _require(self.horizon_days >= 1, "cohort.horizon_days", self.horizon_days, "must be >= 1")
        _require(self.min_prior_days >= 0, "cohort.min_prior_days", self.min_prior_days, "must be >= 0")


@dataclass(frozen=True)
class TaskSpec:
    """A one-year (by default) binary prediction task, declared in params.yaml under `tasks`."""

    name: str
    outcome: tuple[str, ...]  # code prefixes of the outcome, e.g. ("ICD10/I10",)
    horizon_days: int  # outcome window [index, index + horizon)
    min_prior_days: int  # coverage required before the index date
    suspected: str = "exclude"  # "exclude": only confirmed diagnoses are outcomes; "include": suspected too
    washout_suspected: bool = False  # a suspected-only record before the index also excludes the patient

    def __post_init__(self) -> None:
        key = f"tasks.{self.name}"
        _require(bool(self.outcome) and all(isinstance(c, str) and c for c in self.outcome), f"{key}.outcome",
                 self.outcome, "must be a non-empty list of code prefixes")  # fmt: skip
        _require(self.suspected in ("exclude", "include"), f"{key}.suspected", self.suspected,
                 "must be 'exclude' or 'include'")  # fmt: skip
        _require(self.horizon_days >= 1, f"{key}.horizon_days", self.horizon_days, "must be >= 1")
        _require(self.min_prior_days >= 0, f"{key}.min_prior_days", self.min_prior_days, "must be >= 0")


@dataclass(frozen=True)
class StudyParams:
    profile: str
    data: DataParams
    synth: SynthParams
    describe: DescribeParams
    cohort: CohortParams = dataclasses.field(default_factory=lambda: CohortParams())
    tasks: tuple[TaskSpec, ...] = ()
    tokenize: dict = dataclasses.field(default_factory=dict)  # claimsutil.tokenize.tokenize_config() reads it
    pretrain: dict = dataclasses.field(default_factory=dict)  # claimsutil.train.pretrain_config() reads it
    scales: dict = dataclasses.field(default_factory=dict)  # scale name -> overrides of `pretrain`
    features: dict = dataclasses.field(default_factory=dict)  # claimsutil.features.feature_config() reads it
    baseline: dict = dataclasses.field(default_factory=dict)  # claimsutil.baseline.baseline_params() reads it
    finetune: dict = dataclasses.field(default_factory=dict)  # claimsutil.finetune.finetune_config() reads it
    scaling: dict = dataclasses.field(default_factory=dict)  # notebook 06: seed, n_resamples, alpha

    def task(self, name: str) -> TaskSpec:
        for spec in self.tasks:
            if spec.name == name:
                return spec
        raise ParamsError(f"{PARAMS_FILE}: no task '{name}' under `tasks` (have {[t.name for t in self.tasks]})")


class ParamsError(ValueError):
    """A value in params.yaml is missing, unknown or out of range."""


def _require(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ParamsError(f"{PARAMS_FILE}: {key} = {value!r} {why}")


def build_section(cls: type, section: str, raw: Any) -> Any:
    """A params.yaml section as dataclass CLS: unknown keys and mistyped values fail with the key and value."""
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
        if fields[name].default_factory is not dataclasses.MISSING:
            default = fields[name].default_factory()
        if isinstance(default, dict):
            if not isinstance(value, dict):
                raise ParamsError(f"{PARAMS_FILE}: {section}.{name} = {value!r} must be a mapping")
        elif isinstance(default, tuple):
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
    cohort = build_section(CohortParams, "cohort", raw.get("cohort"))
    return StudyParams(
        profile=str(raw.get("profile", "custom")),
        data=build_section(DataParams, "data", raw.get("data")),
        synth=build_section(SynthParams, "synth", raw.get("synth")),
        describe=build_section(DescribeParams, "describe", raw.get("describe")),
        cohort=cohort,
        tasks=_tasks(raw.get("tasks"), cohort),
        tokenize=dict(raw.get("tokenize") or {}),
        pretrain=dict(raw.get("pretrain") or {}),
        scales={str(k): dict(v or {}) for k, v in (raw.get("scales") or {}).items()},
        features=dict(raw.get("features") or {}),
        baseline=dict(raw.get("baseline") or {}),
        finetune=dict(raw.get("finetune") or {}),
        scaling=dict(raw.get("scaling") or {}),
    )


def _tasks(raw: Any, cohort: CohortParams) -> tuple[TaskSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ParamsError(f"{PARAMS_FILE}: tasks must be a mapping of task name -> settings, got {raw!r}")
    allowed = {"outcome", "horizon_days", "min_prior_days", "suspected", "washout_suspected"}
    specs = []
    for name, body in raw.items():
        if not isinstance(body, dict) or "outcome" not in body:
            raise ParamsError(f"{PARAMS_FILE}: tasks.{name} needs an `outcome` list of code prefixes, got {body!r}")
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise ParamsError(f"{PARAMS_FILE}: unknown key(s) {unknown} in tasks.{name} (allowed: {sorted(allowed)})")
        outcome = body["outcome"]
        specs.append(
            TaskSpec(
                name=str(name),
                outcome=tuple(outcome) if isinstance(outcome, list | tuple) else (outcome,),
                horizon_days=int(body.get("horizon_days", cohort.horizon_days)),
                min_prior_days=int(body.get("min_prior_days", cohort.min_prior_days)),
                suspected=str(body.get("suspected", "exclude")),
                washout_suspected=bool(body.get("washout_suspected", False)),
            )
        )
    return tuple(specs)


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
                if isinstance(value, list) and isinstance(target.get(key), list):
                    target[key][:] = value  # in place: keeps the list's flow style and its comment
                else:
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
