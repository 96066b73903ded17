"""params.yaml -> frozen dataclasses, project-root paths, and profile switching.

Every stage reads its parameters through `load_params()`. Each section of params.yaml is one dataclass here,
which holds the section's only defaults; the modules take these dataclasses as their configuration. Loading
is strict: an unknown section or key, a value of the wrong type (`"false"` for a boolean, `365.9` for an
integer), a value out of range, a duplicate key or a YAML syntax error raises `ParamsError`, whose message
names the file, the key path (and line, where YAML gives one) and the value.

Fields whose metadata says `execution` change how a stage runs, never what it computes (worker processes,
devices, progress bars); no stage lists them as DVC params, so changing them reruns nothing.

    python -m claimsutil.config use tiny      # rewrite the profile keys of params.yaml from profiles/tiny.yaml
    python -m claimsutil.config show          # print the parsed parameters
    python -m claimsutil.config check [FILE]  # parse and validate; exit 2 with the error

Exit codes of the command line: 0 fine, 2 a params or usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import math
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PARAMS_FILE = "params.yaml"
PROFILES_DIR = "profiles"
TASK_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # safe as a file name on every platform


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


class ParamsError(ValueError):
    """A value in params.yaml is missing, unknown, mistyped or out of range."""


class _Invalid(ParamsError):
    """Raised by a dataclass check: KEY (relative to the section) = VALUE, and why. `build_section` adds the
    section's path; constructed directly, the message names the dataclass."""

    def __init__(self, owner: str, key: str, value: Any, why: str) -> None:
        self.key, self.value, self.why = key, value, why
        super().__init__(f"{owner}.{key} = {value!r} {why}")


def _require(owner: Any, ok: bool, key: str, why: str) -> None:
    """Fail with KEY's value on OWNER (a dataclass instance) unless OK."""
    if not ok:
        value = owner
        for part in key.split("."):
            value = getattr(value, part, None) if not isinstance(value, dict) else value.get(part)
        owner_name = next((name for name, cls in SECTIONS.items() if cls is type(owner)), type(owner).__name__)
        raise _Invalid(owner_name, key, value, why)


def execution(default: Any, **kwargs: Any) -> Any:
    """A field that changes how a stage runs, never its results: no stage lists it as a DVC param."""
    return field(default=default, metadata={"execution": True}, **kwargs)


def execution_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get("execution")}


def stage_field(default: Any, **kwargs: Any) -> Any:
    """A field the stage sets, never params.yaml (the pretraining objective: each stage trains its own model)."""
    return field(default=default, metadata={"stage": True}, **kwargs)


def stage_fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get("stage")}


# ------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataParams:
    source: str = "synthetic"  # "synthetic" or a path to a MEDS dataset directory (absolute or project-relative)
    end: str | None = None  # end of the data (exclusive, YYYY-MM-DD); null: inferred (`claimsutil.meds.data_window`)
    end_tail_share: float = 0.001  # inferred end: the month by which all but this share of clinical events happened
    on_invalid: Literal["stop", "clean"] = (
        "stop"  # a user dataset with repairable errors: stop, or import a cleaned copy
    )

    def __post_init__(self) -> None:
        _require(self, bool(self.source), "source", "must be 'synthetic' or a directory path")
        if self.end is not None:
            try:
                dt.date.fromisoformat(self.end)
                ok = True
            except ValueError:
                ok = False
            _require(self, ok, "end", "must be a date YYYY-MM-DD or null")
        _require(self, 0 <= self.end_tail_share < 0.5, "end_tail_share", "must be in [0, 0.5)")

    @property
    def is_synthetic(self) -> bool:
        return self.source == "synthetic"

    @property
    def end_date(self) -> dt.datetime | None:
        return None if self.end is None else dt.datetime.combine(dt.date.fromisoformat(self.end), dt.time())


@dataclass(frozen=True)
class SynthParams:
    patients: int = 130000  # patients to generate
    seed: int = 20260401  # root seed; every block derives its own stream from it
    hospitals: int = 32  # hospitals in the database
    start: str = "2015-01-01"  # first month of the database window (a month start)
    months: int = 120  # length of the window in months
    block_size: int = 2500  # patients per random-number stream
    shard_size: int = 32500  # patients per shard; a multiple of block_size
    workers: int = execution(2)  # processes writing shards (never changes the data)
    truth_conditions: tuple[str, ...] = ("hypertension", "ckd")  # hazards kept in the truth file
    truth_drugs: tuple[str, ...] = ("amlodipine", "pregabalin")  # start probabilities kept there

    def __post_init__(self) -> None:
        _require(self, self.patients >= 1, "patients", "must be >= 1")
        _require(self, self.hospitals >= 1, "hospitals", "must be >= 1")
        _require(self, self.months >= 13, "months", "must be >= 13 (one year plus a month)")
        _require(self, self.block_size >= 1, "block_size", "must be >= 1")
        _require(self, self.shard_size >= self.block_size and self.shard_size % self.block_size == 0, "shard_size",
                 f"must be a positive multiple of synth.block_size ({self.block_size})")  # fmt: skip
        _require(self, self.workers >= 1, "workers", "must be >= 1")
        try:
            start = dt.date.fromisoformat(self.start)
        except ValueError:
            start = None
        _require(self, start is not None and start.day == 1, "start", "must be YYYY-MM-01")


@dataclass(frozen=True)
class DescribeParams:
    age_bands: tuple[int, ...] = (20, 40, 50, 60, 70, 80)  # lower edges of the report's age bands (increasing)
    min_cell: int = 10  # counts below this are shown as "<10"
    reference_year: int = 0  # the prevalence tables' year; 0: the last full calendar year of the data
    incidence: dict[str, tuple[str, ...]] = field(default_factory=lambda: {
        "hypertension_I10": ("ICD10/I10",), "ckd_N18": ("ICD10/N18",), "amlodipine": ("YJ/2171022",),
        "pregabalin": ("YJ/1190017",),
    })  # one-year incidence of these outcomes (name: code prefixes) in the data report  # fmt: skip

    def __post_init__(self) -> None:
        bands = self.age_bands
        _require(self, len(bands) >= 1 and all(b >= 0 for b in bands), "age_bands", "must be ages >= 0")
        _require(self, all(a < b for a, b in zip(bands, bands[1:], strict=False)), "age_bands",
                 "must be strictly increasing")  # fmt: skip
        _require(self, self.min_cell >= 1, "min_cell", "must be >= 1")
        _require(self, self.reference_year == 0 or 1900 <= self.reference_year <= 2200, "reference_year",
                 "must be 0 (the last full year) or a calendar year")  # fmt: skip
        _require(self, all(bool(p) for p in self.incidence.values()), "incidence",
                 "must map names to non-empty lists of code prefixes")  # fmt: skip


@dataclass(frozen=True)
class CohortParams:
    seed: int = 17  # index dates, splits and label-budget samples
    min_prior_days: int = 365  # coverage required before the index date (task default)
    horizon_days: int = 365  # outcome window after the index date (task default)
    split: dict[str, float] = field(default_factory=lambda: {"train": 0.70, "validation": 0.15, "test": 0.15})
    held_out_hospitals: int = 4  # whole hospitals kept out of every split (0 when the data has no HOSPITAL/ codes)
    split_source: Literal["dataset", "study"] = "dataset"  # a dataset's own subject_splits.parquet, or the hash rule
    budgets: tuple[int, ...] = (100, 500, 1000)  # labelled patients per balanced sample
    budget_seeds: int = 1  # samples per budget; every model (fine-tuned, from scratch, LightGBM) trains on each
    min_positives: int = 10  # fewer positives than this in any split stops the cohort stage
    test_negatives: int | None = 2000  # the evaluation sample: every test positive and this many test negatives
    validation_patients: int = 300  # the early-stopping sample of every model: up to half validation positives
    oracle_replicates: int = 50  # simulated futures per test patient for the oracle ceiling
    workers: int = execution(2)  # processes replaying the oracle's futures (never changes the results)

    def __post_init__(self) -> None:
        _require(self, set(self.split) == {"train", "validation", "test"}, "split",
                 "must have exactly the keys train, validation, test")  # fmt: skip
        _require(self, abs(sum(self.split.values()) - 1.0) < 1e-9 and min(self.split.values()) > 0, "split",
                 "fractions must be positive and sum to 1")  # fmt: skip
        _require(self, len(self.budgets) >= 1 and all(b >= 2 and b % 2 == 0 for b in self.budgets), "budgets",
                 "must be even numbers >= 2 (sampled 1:1 positive:negative)")  # fmt: skip
        _require(self, len(set(self.budgets)) == len(self.budgets), "budgets", "must be distinct")
        _require(self, self.budget_seeds >= 1, "budget_seeds", "must be >= 1")
        _require(self, self.held_out_hospitals >= 0, "held_out_hospitals", "must be >= 0")
        _require(self, self.split_source in ("dataset", "study"), "split_source", "must be dataset or study")
        _require(self, self.horizon_days >= 1, "horizon_days", "must be >= 1")
        _require(self, self.min_prior_days >= 0, "min_prior_days", "must be >= 0")
        _require(self, self.min_positives >= 1, "min_positives", "must be >= 1")
        _require(self, self.oracle_replicates >= 1, "oracle_replicates", "must be >= 1")
        _require(self, self.workers >= 1, "workers", "must be >= 1")
        _require(self, self.test_negatives is None or self.test_negatives >= 1, "test_negatives",
                 "must be >= 1 or null (every test patient)")  # fmt: skip
        _require(self, self.validation_patients >= 2, "validation_patients", "must be >= 2")


@dataclass(frozen=True)
class Population:
    """Whom a task predicts for (`tasks.<name>.population`), from what is true at the prediction time: every
    condition given must hold. Nothing given: every patient (the reference study's tasks)."""

    prior_codes: tuple[str, ...] = ()  # a confirmed record of one of these code prefixes before the prediction time
    min_age: float | None = None  # age in years at the prediction time: at least this
    max_age: float | None = None  # and below this
    sex: Literal["F", "M"] | None = None  # the patient's GENDER/ code
    hospitals: tuple[str, ...] = ()  # the patient's HOSPITAL/ code is one of these (e.g. HOSPITAL/H03)

    def __post_init__(self) -> None:
        _require(self, all(isinstance(c, str) and c for c in self.prior_codes), "prior_codes",
                 "must be a list of non-empty code prefixes")  # fmt: skip
        _require(self, self.min_age is None or self.min_age >= 0, "min_age", "must be >= 0 or null")
        _require(self, self.max_age is None or self.max_age > (self.min_age or 0), "max_age",
                 "must be above min_age (and 0) or null")  # fmt: skip
        _require(self, all(isinstance(h, str) and h for h in self.hospitals), "hospitals",
                 "must be a list of HOSPITAL/ codes")  # fmt: skip

    @property
    def restricted(self) -> bool:
        return bool(self.prior_codes or self.hospitals) or (self.sex, self.min_age, self.max_age) != (None,) * 3

    def describe(self) -> str:
        """In words, for the reports ("" when unrestricted)."""
        parts = []
        if self.prior_codes:
            more = f" (or {len(self.prior_codes) - 1} more)" if len(self.prior_codes) > 2 else ""
            shown = self.prior_codes[:1] if more else self.prior_codes
            parts.append("a prior record of " + " or ".join(shown) + more)
        if self.min_age is not None or self.max_age is not None:
            low = f"{self.min_age:g}" if self.min_age is not None else "0"
            parts.append(f"aged {low}+" if self.max_age is None else f"aged {low} to under {self.max_age:g}")
        if self.sex is not None:
            parts.append({"F": "women", "M": "men"}[self.sex])
        if self.hospitals:
            parts.append("at " + ", ".join(self.hospitals))
        return "; ".join(parts)


@dataclass(frozen=True)
class TaskSpec:
    """A one-year (by default) binary prediction task, declared in params.yaml under `tasks`."""

    name: str
    outcome: tuple[str, ...]  # code prefixes of the outcome, e.g. ("ICD10/I10",)
    horizon_days: int = 365  # outcome window [index, index + horizon)
    min_prior_days: int = 365  # coverage required before the index date
    suspected: Literal["exclude", "include"] = "exclude"  # "include": suspected diagnoses count as outcomes
    washout_suspected: bool = False  # a suspected-only record before the index also excludes the patient
    max_budget: int | None = None  # its label budgets are cohort.budgets up to this (a small population's cap)
    population: Population = field(default_factory=Population)  # whom it predicts for (default: everyone)
    # An ACES task config (YAML, path from the project root, e.g. tasks/aces/ckd.yaml): it defines the labels
    # instead of the rules above (`claimsutil.aces`); `outcome` and `horizon_days` still name the outcome and
    # horizon for zero-shot prediction and the oracle.
    aces: str | None = None
    budgets: tuple[int, ...] = (100, 500, 1000)  # set by the loader: cohort.budgets up to max_budget

    def __post_init__(self) -> None:
        why = "must be letters, digits, '_', '.' or '-' (it names files), starting with a letter or digit"
        _require(self, bool(TASK_NAME.match(self.name)), "name", why)
        _require(self, bool(self.outcome) and all(isinstance(c, str) and c for c in self.outcome), "outcome",
                 "must be a non-empty list of code prefixes")  # fmt: skip
        _require(self, self.horizon_days >= 1, "horizon_days", "must be >= 1")
        _require(self, self.min_prior_days >= 0, "min_prior_days", "must be >= 0")
        _require(self, self.max_budget is None or self.max_budget >= 2, "max_budget", "must be >= 2 or null")
        _require(self, len(self.budgets) >= 1, "max_budget", "leaves none of cohort.budgets (all are above it)")
        if self.aces is not None:
            path = Path(self.aces)
            inside = path.suffix in (".yaml", ".yml") and not path.is_absolute() and ".." not in path.parts
            _require(self, inside, "aces", "must be a .yaml file given from the project root (tasks/aces/ckd.yaml)")


@dataclass(frozen=True)
class TokenizeConfig:
    min_count: int = 5  # a token enters the vocabulary with at least this many tokens among pretraining patients
    repeats: Literal["keep", "first_per_episode"] = "first_per_episode"  # drop a token present on the previous visit
    include_static: bool = True  # static (null-time) codes as tokens after [CLS]
    max_len: int | None = 256  # read-time cap on a sequence (readers only; the store keeps everything)
    repeats_shards: int = 1  # MEDS shards the repeats measurement reads (0: all); a shard holds whole patients

    def __post_init__(self) -> None:
        _require(self, self.min_count >= 1, "min_count", "must be >= 1")
        _require(self, self.max_len is None or self.max_len >= 1, "max_len", "must be >= 1 or null")
        _require(self, self.repeats_shards >= 0, "repeats_shards", "must be >= 0 (0: every shard)")


@dataclass(frozen=True)
class PretrainConfig:
    profile: Literal["demo", "paper"] = "demo"  # scale presets (claimsutil.model.SCALES)
    processes: int = 2  # >1: DDP under torchrun, one process per core (or per GPU)
    seed: int = 29  # model init, epoch permutations, masks and the validation sample
    tokens_per_step: int = 8192  # real (non-pad) tokens per optimizer step: the batch size in tokens
    micro_tokens: int = 4096  # row budget of one micro-batch, in tokens (rows = micro_tokens // row width)
    width_step: int = 0  # > 0: packed rows as wide as they need in multiples of this (less attention); 0: max_len
    max_steps: int = 120  # optimizer steps; the schedule decays to min_lr at the last one; 0: the token rule
    # The token rule (max_steps 0): tokens = tokens_per_parameter x non-embedding parameters, at least
    # min_tokens and at most max_tokens, rounded up to whole steps.
    tokens_per_parameter: float = 20.0
    min_tokens: int = 1_000_000
    max_tokens: int = 10_000_000
    lr: float = 0.002  # peak learning rate, reached at the end of warm-up
    min_lr: float = 0.0002  # learning rate at the last step (cosine decay from lr)
    warmup_steps: int = 12  # linear warm-up from lr / warmup_steps to lr
    weight_decay: float = 0.01  # AdamW, on matmul weights only (no biases, LayerNorms or embeddings)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas (BERT-style 0.98 for large-batch stability)
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    mask_rate: float = 0.15  # share of codes selected for prediction (BERT's 80/10/10 corruption)
    # Set by the stage: masked codes (pretrain@: the encoder) or next token (pretrain_gen@: the decoder).
    objective: Literal["masked", "next"] = stage_field("masked")
    # bf16 autocast of the Linears: true, false, or auto (where the device computes bf16 natively: CUDA with bf16,
    # a CPU with AVX512-BF16 or AMX); the run's metrics record what ran. Either way bitwise-repeatable on a machine.
    bf16: bool | Literal["auto"] = False
    eval_every: int = 40  # steps between validation evaluations (and at the last step)
    eval_tokens: int = 16384  # real tokens in the fixed validation sample (validation-split patients)
    checkpoint_every: int = 40  # steps between checkpoints (and at the last step)
    device: Literal["auto", "cuda", "cpu"] = execution("auto")  # auto: CUDA when available, one GPU per process
    num_threads: int = 1  # torch threads per process (one process per core; results may depend on it)

    def __post_init__(self) -> None:
        for key in ("processes", "tokens_per_step", "micro_tokens", "eval_every", "eval_tokens",
                    "checkpoint_every", "num_threads", "min_tokens"):  # fmt: skip
            _require(self, getattr(self, key) >= 1, key, "must be >= 1")
        _require(self, self.width_step >= 0, "width_step", "must be >= 0 (0: every row max_len wide)")
        _require(self, self.max_steps >= 0, "max_steps", "must be >= 0 (0: steps from the token rule)")
        _require(self, self.tokens_per_parameter > 0, "tokens_per_parameter", "must be > 0")
        _require(self, self.max_tokens >= self.min_tokens, "max_tokens", "must be >= min_tokens")
        _require(self, self.warmup_steps >= 0, "warmup_steps", "must be >= 0")
        _require(self, self.lr > 0 and 0 <= self.min_lr <= self.lr, "min_lr", "must be in [0, lr] (and lr > 0)")
        _require(self, 0 < self.mask_rate < 1, "mask_rate", "must be in (0, 1)")
        _require(self, self.grad_clip >= 0 and self.weight_decay >= 0, "grad_clip", "must be >= 0 (0: off)")
        _require(self, all(0 <= b < 1 for b in self.betas), "betas", "must be two numbers in [0, 1)")

    def steps_for(self, parameters: int) -> int:
        """Optimizer steps of a model with PARAMETERS non-embedding parameters: max_steps, or with max_steps 0
        the token rule (tokens_per_parameter x parameters within [min_tokens, max_tokens], whole steps)."""
        if self.max_steps > 0:
            return self.max_steps
        tokens = min(max(self.tokens_per_parameter * parameters, self.min_tokens), self.max_tokens)
        return max(1, math.ceil(tokens / self.tokens_per_step))


SCALE_KEYS = (
    "lr",
    "min_lr",
    "warmup_steps",
    "max_steps",
    "tokens_per_step",
    "micro_tokens",
    "weight_decay",
    "seed",
    "tokens_per_parameter",
    "min_tokens",
    "max_tokens",
    "bf16",
)


@dataclass(frozen=True)
class FeatureConfig:
    windows_days: tuple[int, ...] = (30, 90, 365)  # recent windows, in days before the prediction time
    min_code_patients: int = 5  # a code becomes a column only if at least this many training rows have it
    include_suspected_counts: bool = True  # per-code counts of suspected diagnoses (when the data has them)

    def __post_init__(self) -> None:
        windows = self.windows_days
        _require(self, bool(windows) and all(w >= 1 for w in windows) and len(set(windows)) == len(windows),
                 "windows_days", "must be distinct integers >= 1")  # fmt: skip
        _require(self, self.min_code_patients >= 1, "min_code_patients", "must be >= 1")


@dataclass(frozen=True)
class BaselineConfig:
    seed: int = 23
    num_leaves: tuple[int, ...] = (7, 31)  # grid: leaves per tree
    min_child_samples: tuple[int, ...] = (20,)  # grid: minimum rows in a leaf
    learning_rate: float = 0.05
    feature_fraction: float = 0.8  # columns sampled per tree (seeded); bagging of rows stays off
    lambda_l2: float = 1.0  # L2 penalty on leaf values
    n_estimators: int = 2000  # most boosting rounds per grid point
    early_stopping_rounds: int = 50  # rounds without a better validation AUPRC before stopping
    num_threads: int = 2  # fixed: LightGBM's results may depend on the thread count
    full_training_set: bool = True  # also train on every training patient (natural prevalence)

    def __post_init__(self) -> None:
        for key in ("num_leaves", "min_child_samples"):
            values = getattr(self, key)
            _require(self, bool(values) and all(v >= 1 for v in values), key, "must be one or more integers >= 1")
        for key in ("n_estimators", "early_stopping_rounds", "num_threads"):
            _require(self, getattr(self, key) >= 1, key, "must be >= 1")
        _require(self, 0 < self.feature_fraction <= 1, "feature_fraction", "must be in (0, 1]")
        _require(self, self.learning_rate > 0, "learning_rate", "must be > 0")
        _require(self, self.lambda_l2 >= 0, "lambda_l2", "must be >= 0")


@dataclass(frozen=True)
class FinetuneConfig:
    seed: int = 31  # run seeds (model init of the control, head init, batch order, dropout) and samples
    full_training_set: bool = False  # also fine-tune on every training patient (natural prevalence)
    batch_patients: int = 64  # patients per optimizer step
    lr: float = 0.003  # AdamW learning rate (constant), the same for pretrained and from-scratch runs
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global gradient norm per step
    dropout: float = 0.1  # on the pooled state before the head
    pooling: Literal["mean", "cls"] = "mean"  # the mean of the patient's hidden states, or its [CLS] state
    max_epochs: int = 4  # passes over the labelled patients at most
    patience: int = 2  # epochs without a better validation AUPRC before stopping
    max_len: int = 128  # most recent tokens per patient (at most the model's max_len), also the packed row length
    eval_tokens: int = 16384  # tokens per forward pass when scoring
    workers: int = execution(2)  # processes running runs in parallel (never changes the results)
    device: Literal["auto", "cuda", "cpu"] = execution("auto")  # auto: CUDA when available
    num_threads: int = 1  # torch threads per process
    bf16: bool | Literal["auto"] = False  # bf16 autocast of training and scoring, as `pretrain.bf16`

    def __post_init__(self) -> None:
        for key in ("batch_patients", "max_epochs", "patience", "max_len", "workers", "num_threads", "eval_tokens"):
            _require(self, getattr(self, key) >= 1, key, "must be >= 1")
        _require(self, 0 <= self.dropout < 1, "dropout", "must be in [0, 1)")
        _require(self, self.lr > 0 and self.grad_clip >= 0, "lr", "must be > 0 (and grad_clip >= 0)")


@dataclass(frozen=True)
class LawsConfig:
    """The scaling-law study (claimsutil.laws): an IsoFLOP grid of pretraining runs and the learning-rate sweep."""

    objective: tuple[str, ...] = ("diagnosis", "drug")  # validation losses summed into the fitted objective
    budgets: tuple[float, ...] = (3e11, 1e12, 3e12)  # training compute C = 6 N D (non-embedding N)
    sizes: dict[str, dict[str, float]] = field(default_factory=dict)  # ladder: name -> n_layer, n_head, n_embd, lr
    min_tokens: int = 300_000  # a budget runs every size whose D = C / 6N lies in [min_tokens, max_tokens]
    max_tokens: int = 6_000_000
    tokens_per_step: int = 4096  # real tokens per optimizer step of a grid run (one process)
    warmup_share: float = 0.05  # warm-up steps as a share of a run's steps
    eval_tokens: int = 131_072  # real tokens of the common validation sample every run is scored on
    n_resamples: int = 200  # bootstrap replicates (each refits both approaches)
    lr_sweep: tuple[float, ...] = (0.5, 1.0, 2.0)  # multipliers of a scale's learning rate
    lr_sweep_scales: tuple[str, ...] = ("xs", "xl")  # scales swept, each on its pretraining token budget
    gen_budgets: tuple[float, ...] = ()  # the generative decoder's grid (next-token objective); () for none
    gen_sizes: tuple[str, ...] = ()  # the sizes of the ladder it may use (the token bounds are the encoder's)
    workers: int = execution(2)  # processes training runs in parallel (one thread each)

    def __post_init__(self) -> None:
        _require(self, len(self.budgets) >= 1 and all(b > 0 for b in self.budgets), "budgets", "must be > 0")
        _require(self, bool(self.objective) and set(self.objective) <= {"diagnosis", "drug", "age"}, "objective",
                 "must list diagnosis, drug and/or age")  # fmt: skip
        for name, size in self.sizes.items():
            ok = set(size) == {"n_layer", "n_head", "n_embd", "lr"} and all(v > 0 for v in size.values())
            ok = ok and all(float(size[k]).is_integer() for k in ("n_layer", "n_head", "n_embd"))
            _require(self, ok and int(size["n_embd"]) % int(size["n_head"]) == 0, f"sizes.{name}",
                     "must set n_layer, n_head, n_embd (a multiple of n_head) and lr, all > 0")  # fmt: skip
        _require(self, 1 <= self.min_tokens <= self.max_tokens, "min_tokens", "must be in [1, max_tokens]")
        for key in ("tokens_per_step", "eval_tokens", "n_resamples", "workers"):
            _require(self, getattr(self, key) >= 1, key, "must be >= 1")
        _require(self, 0 <= self.warmup_share < 1, "warmup_share", "must be in [0, 1)")
        _require(self, all(m > 0 for m in self.lr_sweep), "lr_sweep", "must be multipliers > 0")
        _require(self, all(b > 0 for b in self.gen_budgets), "gen_budgets", "must be > 0")
        unknown = [s for s in self.gen_sizes if s not in self.sizes]
        have = list(self.sizes)
        _require(self, not unknown, "gen_sizes", f"must be sizes of the ladder (not {unknown}; have {have})")
        _require(self, bool(self.gen_sizes) or not self.gen_budgets, "gen_sizes", "must list sizes for gen_budgets")


@dataclass(frozen=True)
class ZeroShotConfig:
    """Zero-shot prediction by the generative model (claimsutil.generate): futures sampled per patient."""

    seed: int = 41  # the draws of every future (fixed per patient, prediction time and future)
    tasks: tuple[str, ...] = ()  # the tasks predicted zero-shot; (): every task
    futures: int = 16  # futures per patient; the n curve reads the first 1, 4, 16, ... of them
    max_new: int = 64  # token cap of a future (the prompt keeps the most recent max_len - max_new tokens)
    temperature: float = 1.0
    positives: int = 0  # per task, evaluation-sample positives simulated (seeded, reweighted); 0: all
    negatives: int = 0  # the same for negatives; 0: all
    batch_futures: int = 512  # futures per sampling batch (batches are fixed by the data, whatever the workers)
    workers: int = execution(2)  # processes sampling batches in parallel (never changes the futures)
    device: Literal["auto", "cuda", "cpu"] = execution("auto")
    num_threads: int = 1  # torch threads per process

    def __post_init__(self) -> None:
        for key in ("futures", "max_new", "batch_futures", "workers", "num_threads"):
            _require(self, getattr(self, key) >= 1, key, "must be >= 1")
        _require(self, self.temperature > 0, "temperature", "must be > 0")
        _require(self, self.positives >= 0 and self.negatives >= 0, "positives", "must be >= 0 (0: all)")


@dataclass(frozen=True)
class TransferConfig:
    """The transfer study (claimsutil.transfer): k-shot fine-tuning at the held-out hospitals."""

    scale: str = "m"  # the pretrained encoder transferred (a key of `scales`)
    tasks: tuple[str, ...] = ()  # the tasks transferred; (): every task
    shots: tuple[int, ...] = (16, 32, 64, 128, 256, 512)  # k: labelled patients (1:1), and as many again to stop on
    replicates: int = 5  # draws of the k patients per k
    pool_share: float = 0.5  # share of the held-out hospitals' patients the k are drawn from (the rest: the test)
    test_negatives: int | None = 1000  # test sample: every test positive and this many negatives (weighted); null: all
    # Fine-tuning on k patients: the `finetune` recipe, with passes enough for min_steps optimizer steps (at least
    # finetune.max_epochs, at most max_epochs), stopped after `patience` passes without a better AUPRC on the k
    # validation patients.
    min_steps: int = 16
    max_epochs: int = 20
    patience: int = 3
    min_child_samples: int = 5  # LightGBM on k patients (the `baseline` recipe otherwise; 20 cannot split 16)
    knn: int = 5  # neighbours of the code-embedding purity
    permutations: int = 200  # label permutations of its chance interval
    frequent_codes: int = 1000  # purity again among codes seen this often (and the neighbours' candidates)
    # Codes whose nearest neighbours the report lists (prefixes; each one's most frequent code): amlodipine,
    # olmesartan, metformin, pregabalin, atorvastatin, hypertension, type 2 diabetes, CKD, atrial fibrillation,
    # asthma.
    query_codes: tuple[str, ...] = ("YJ/2171022", "YJ/2149044", "YJ/3962002", "YJ/1190017", "YJ/2189015",
                                    "ICD10/I10", "ICD10/E11", "ICD10/N18", "ICD10/I48", "ICD10/J45")  # fmt: skip
    seed: int = 43  # the draws of the k patients and the runs' seeds
    workers: int = execution(2)  # processes running runs in parallel (never changes the results)

    def __post_init__(self) -> None:
        _require(self, len(self.shots) >= 1 and all(k >= 4 and k % 2 == 0 for k in self.shots), "shots",
                 "must be even numbers >= 4 (k / 2 positives and k / 2 negatives)")  # fmt: skip
        _require(self, list(self.shots) == sorted(set(self.shots)), "shots", "must be distinct and ascending")
        _require(self, 0 < self.pool_share < 1, "pool_share", "must be in (0, 1)")
        _require(self, self.test_negatives is None or self.test_negatives >= 1, "test_negatives",
                 "must be >= 1 or null")  # fmt: skip
        counts = ("replicates", "min_steps", "max_epochs", "patience", "min_child_samples", "knn", "permutations",
                  "frequent_codes")  # fmt: skip
        for key in (*counts, "workers"):
            _require(self, getattr(self, key) >= 1, key, "must be >= 1")


@dataclass(frozen=True)
class EvaluationParams:
    """How every stage scores a model: the same resamples of the same patients, so one model, task and budget
    gets one number (and one interval) wherever it is reported."""

    seed: int = 37  # bootstrap seed (every model is scored on the same resamples)
    n_resamples: int = 1000  # bootstrap resamples for intervals and paired tests
    alpha: float = 0.05  # intervals are 1 - alpha; a scale is worse than the best when its interval excludes 0

    def __post_init__(self) -> None:
        _require(self, self.n_resamples >= 1, "n_resamples", "must be >= 1")
        _require(self, 0 < self.alpha < 1, "alpha", "must be in (0, 1)")


SECTIONS: dict[str, type] = {
    "data": DataParams,
    "synth": SynthParams,
    "describe": DescribeParams,
    "cohort": CohortParams,
    "tokenize": TokenizeConfig,
    "pretrain": PretrainConfig,
    "features": FeatureConfig,
    "baseline": BaselineConfig,
    "finetune": FinetuneConfig,
    "laws": LawsConfig,
    "zeroshot": ZeroShotConfig,
    "transfer": TransferConfig,
    "evaluation": EvaluationParams,
}
TOP_LEVEL = ("profile", *SECTIONS, "scales", "generative", "tasks")


@dataclass(frozen=True)
class StudyParams:
    profile: str = "custom"
    data: DataParams = field(default_factory=DataParams)
    synth: SynthParams = field(default_factory=SynthParams)
    describe: DescribeParams = field(default_factory=DescribeParams)
    cohort: CohortParams = field(default_factory=CohortParams)
    tasks: tuple[TaskSpec, ...] = ()
    tokenize: TokenizeConfig = field(default_factory=TokenizeConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    scales: dict[str, dict[str, Any]] = field(default_factory=dict)  # scale name -> overrides of `pretrain`
    generative: dict[str, Any] = field(default_factory=dict)  # the decoder's overrides, after the scale's
    features: FeatureConfig = field(default_factory=FeatureConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    laws: LawsConfig = field(default_factory=LawsConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    evaluation: EvaluationParams = field(default_factory=EvaluationParams)

    def task(self, name: str) -> TaskSpec:
        for spec in self.tasks:
            if spec.name == name:
                return spec
        raise ParamsError(f"{PARAMS_FILE}: no task '{name}' under `tasks` (have {[t.name for t in self.tasks]})")

    def zeroshot_tasks(self) -> tuple[TaskSpec, ...]:
        """The tasks predicted zero-shot (`zeroshot.tasks`; every task when empty)."""
        return tuple(s for s in self.tasks if not self.zeroshot.tasks or s.name in self.zeroshot.tasks)

    def pretrain_for(self, scale: str) -> PretrainConfig:
        """The `pretrain` section with the overrides of `scales.<scale>`."""
        if scale not in self.scales:
            raise ParamsError(f"{PARAMS_FILE}: scale '{scale}' is not under `scales` (have {list(self.scales)})")
        return dataclasses.replace(self.pretrain, **self.scales[scale])

    def pretrain_gen_for(self, scale: str) -> PretrainConfig:
        """The generative model's pretraining at SCALE: `pretrain_for(scale)`, then the overrides of the
        `generative` section, with the next-token objective."""
        return dataclasses.replace(self.pretrain_for(scale), **self.generative, objective="next")


# ------------------------------------------------------------------------------------------- loading


def _type_name(hint: Any) -> str:
    if hint in (int, float, str, bool):
        return {int: "an integer", float: "a number", str: "a string", bool: "a boolean (true or false)"}[hint]
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(hint) if a is not type(None)]
        null = " or null" if type(None) in typing.get_args(hint) else ""
        return " or ".join(_type_name(a) for a in parts) + null
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} values"
    if origin is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def convert(value: Any, hint: Any, key: str) -> Any:
    """VALUE as type HINT, strictly: booleans must be YAML booleans, integers integers (no 365.9, no true)."""
    origin = typing.get_origin(hint)

    def fail() -> typing.NoReturn:
        raise ParamsError(f"{PARAMS_FILE}: {key} = {value!r} must be {_type_name(hint)}")

    if hint is bool:
        return value if isinstance(value, bool) else fail()
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else fail()
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            fail()
        return float(value)
    if hint is str:
        if isinstance(value, dt.date):  # YAML reads an unquoted 2024-07-01 as a date
            return value.isoformat()
        return value if isinstance(value, str) else fail()
    if hint is Any:
        return value
    if origin is Literal:
        return value if value in typing.get_args(hint) and isinstance(value, str) else fail()
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None if type(None) in typing.get_args(hint) else fail()
        for inner in [a for a in typing.get_args(hint) if a is not type(None)]:
            try:
                return convert(value, inner, key)
            except ParamsError:
                pass
        fail()
    if origin is tuple:
        if not isinstance(value, list | tuple):
            fail()
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            fail()
        return tuple(convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            fail()
        key_type, value_type = typing.get_args(hint)
        return {convert(k, key_type, key): convert(v, value_type, f"{key}.{k}") for k, v in value.items()}
    raise TypeError(f"convert: unsupported type {hint!r} for {key}")


def build_section(cls: type, section: str, raw: Any, extra: dict[str, Any] | None = None) -> Any:
    """A params.yaml section as dataclass CLS: unknown keys, mistyped values and values out of range fail
    with the key path and the value. EXTRA: fields set by the caller (not read from the file)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{PARAMS_FILE}: {section} = {raw!r} must be a mapping of keys to values")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in (extra or {}) and f.name not in stage_fields(cls)]
    unknown = sorted(str(k) for k in set(raw) - set(names))
    if unknown:
        raise ParamsError(f"{PARAMS_FILE}: unknown key(s) {unknown} in section '{section}' (known: {names})")
    kwargs = {name: convert(value, hints[name], f"{section}.{name}") for name, value in raw.items()}
    try:
        return cls(**kwargs, **(extra or {}))
    except _Invalid as e:
        raise ParamsError(f"{PARAMS_FILE}: {section}.{e.key} = {e.value!r} {e.why}") from None
    except TypeError as e:  # a required field is missing
        raise ParamsError(f"{PARAMS_FILE}: section '{section}': {e}") from None


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses duplicate keys (PyYAML lets the last one win silently)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            first = seen[key].start_mark
            raise ParamsError(
                f"{loader.name}: line {key_node.start_mark.line + 1}, column {key_node.start_mark.column + 1}: "
                f"duplicate key '{key}' (first at line {first.line + 1}); YAML would silently keep the last"
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)
# Dates stay strings (each field checks its own format): YAML would turn 2024-07-01 into a date, and an
# impossible date such as 2024-13-01 into an error that names no key.
_StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file strictly; syntax errors and duplicate keys are ParamsErrors with line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not UTF-8 text ({e})") from None
    loader = _StrictLoader(text)
    loader.name = str(path)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ParamsError(f"{path}: {where}invalid YAML: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: invalid YAML: {e}") from None
    finally:
        loader.dispose()


def load_params(path: str | Path | None = None) -> StudyParams:
    """Parse params.yaml (the project's, unless a path is given) into frozen dataclasses."""
    path = Path(path) if path is not None else root_path(PARAMS_FILE)
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in set(raw) - set(TOP_LEVEL))
    if unknown:
        raise ParamsError(f"{PARAMS_FILE}: unknown section(s) {unknown} (known: {list(TOP_LEVEL)})")
    profile = raw.get("profile", "custom")
    if not isinstance(profile, str):
        raise ParamsError(f"{PARAMS_FILE}: profile = {profile!r} must be a string")
    sections = {name: build_section(cls, name, raw.get(name)) for name, cls in SECTIONS.items()}
    params = StudyParams(
        profile=profile,
        tasks=_tasks(raw.get("tasks"), sections["cohort"]),
        scales=_scales(raw.get("scales"), sections["pretrain"]),
        generative=_pretrain_overrides(raw.get("generative"), "generative", sections["pretrain"]),
        **sections,
    )
    transfer, names = params.transfer, [s.name for s in params.tasks]
    for key, chosen in (("transfer.tasks", transfer.tasks), ("zeroshot.tasks", params.zeroshot.tasks)):
        unknown = [t for t in chosen if t not in names]
        if unknown:
            raise ParamsError(f"{PARAMS_FILE}: {key} = {list(chosen)}: {unknown} not under `tasks` (have {names})")
    if transfer.scale not in params.scales:
        raise ParamsError(f"{PARAMS_FILE}: transfer.scale = {transfer.scale!r} is not under `scales` "
                          f"(have {list(params.scales)})")  # fmt: skip
    return params


# What the built-in definition reads and an ACES task's config defines instead (`tasks.<name>.aces`).
ACES_DEFINES = frozenset({"min_prior_days", "suspected", "washout_suspected", "population"})


def _tasks(raw: Any, cohort: CohortParams) -> tuple[TaskSpec, ...]:
    if not isinstance(raw, dict) or not raw:
        raise ParamsError(f"{PARAMS_FILE}: tasks = {raw!r} must map at least one task name to its settings")
    defaults = {"horizon_days": cohort.horizon_days, "min_prior_days": cohort.min_prior_days}
    specs = []
    for name, body in raw.items():
        if not isinstance(name, str):
            raise ParamsError(f"{PARAMS_FILE}: task name {name!r} must be a string")
        if not isinstance(body, dict) or "outcome" not in body:
            raise ParamsError(f"{PARAMS_FILE}: tasks.{name} = {body!r} needs an `outcome` list of code prefixes")
        body = dict(body)
        ignored = sorted(ACES_DEFINES & set(body)) if body.get("aces") is not None else []
        if ignored:
            raise ParamsError(f"{PARAMS_FILE}: tasks.{name} sets {ignored}, which an ACES task does not use: its "
                              f"config {body['aces']!r} defines them (remove them or write them there)")  # fmt: skip
        if isinstance(body["outcome"], str):
            body["outcome"] = [body["outcome"]]
        population = build_section(Population, f"tasks.{name}.population", body.pop("population", None))
        cap = body.get("max_budget")
        budgets = tuple(b for b in cohort.budgets if not isinstance(cap, int) or isinstance(cap, bool) or b <= cap)
        extra = {"name": name, "population": population, "budgets": budgets}
        specs.append(build_section(TaskSpec, f"tasks.{name}", {**defaults, **body}, extra=extra))
    return tuple(specs)


def _scales(raw: Any, pretrain: PretrainConfig) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict) or not raw:
        raise ParamsError(f"{PARAMS_FILE}: scales = {raw!r} must map at least one scale name to its overrides")
    out = {}
    for name, body in raw.items():
        key = f"scales.{name}"
        if not isinstance(name, str) or not TASK_NAME.match(name):
            raise ParamsError(f"{PARAMS_FILE}: scale name {name!r} must be letters, digits, '_', '.' or '-'")
        out[name] = _pretrain_overrides(body, key, pretrain)
    return out


def _pretrain_overrides(body: Any, key: str, pretrain: PretrainConfig) -> dict[str, Any]:
    """BODY (the mapping at KEY: a scale, or the generative section) as checked overrides of `pretrain`."""
    hints = typing.get_type_hints(PretrainConfig)
    body = {} if body is None else body
    if not isinstance(body, dict):
        raise ParamsError(f"{PARAMS_FILE}: {key} = {body!r} must be a mapping of `pretrain` keys to values")
    unknown = sorted(set(body) - set(SCALE_KEYS))
    if unknown:
        raise ParamsError(f"{PARAMS_FILE}: unknown key(s) {unknown} in {key} (it may set {list(SCALE_KEYS)})")
    overrides = {k: convert(v, hints[k], f"{key}.{k}") for k, v in body.items()}
    try:
        dataclasses.replace(pretrain, **overrides)
    except _Invalid as e:
        raise ParamsError(f"{PARAMS_FILE}: {key}.{e.key} = {e.value!r} {e.why}") from None
    return overrides


# ------------------------------------------------------------------------------------------- profiles


def profile_names(root: Path | None = None) -> list[str]:
    root = root or project_root()
    return sorted(p.stem for p in (root / PROFILES_DIR).glob("*.yaml"))


REPLACED_WHOLE = ("laws.sizes",)  # values a profile replaces as a whole (its model ladder), never key by key


def _replace_mapping(mapping: Any, value: dict) -> None:
    """Replace the entries of a round-trip MAPPING in place (its key's comment stays), each entry written on
    one line, as params.yaml writes the ladder."""
    from ruamel.yaml.comments import CommentedMap

    for key in list(mapping):
        del mapping[key]
    for key, entry in value.items():
        if isinstance(entry, dict):
            entry = CommentedMap(entry)
            entry.fa.set_flow_style()
        mapping[key] = entry


def use_profile(name: str, root: Path | None = None) -> list[str]:
    """Overwrite the keys that profiles/NAME.yaml sets in params.yaml; returns the dotted keys changed.

    Comments and every key the profile does not mention are kept (ruamel round-trip).
    """
    from ruamel.yaml import YAML

    root = root or project_root()
    overlay_path = root / PROFILES_DIR / f"{name}.yaml"
    if not overlay_path.is_file():
        raise ParamsError(f"unknown profile '{name}': choose one of {profile_names(root)}")
    read_yaml(overlay_path)  # strict: duplicate keys and syntax errors name the line
    rt = YAML()
    rt.preserve_quotes = True
    overlay = rt.load(overlay_path.read_text(encoding="utf-8")) or {}  # round-trip: 3.0e+11 stays 3.0e+11
    # Write null as `null`, as params.yaml spells it (ruamel would leave the value empty).
    rt.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    params_path = root / PARAMS_FILE
    doc = rt.load(params_path.read_text(encoding="utf-8"))
    changed: list[str] = []

    def merge(target: Any, patch: dict, prefix: str) -> None:
        for key, value in patch.items():
            dotted = f"{prefix}{key}"
            if dotted in REPLACED_WHOLE:  # a mapping of the profile's own entries, not keys to patch
                if target.get(key) != value:
                    changed.append(dotted)
                    _replace_mapping(target[key], value)
            elif isinstance(value, dict):
                if key not in target or not isinstance(target[key], dict):
                    raise ParamsError(f"{overlay_path.name}: {dotted} is not a section of {PARAMS_FILE}")
                merge(target[key], value, dotted + ".")
            else:
                if target.get(key) != value:
                    changed.append(dotted)
                if isinstance(value, list) and isinstance(target.get(key), list):
                    # In place: keeps the list's comment. An empty list reads back with no style (written `[]`),
                    # so it is refilled in flow style, as params.yaml spells every short list.
                    flow = target[key].fa.flow_style() or not target[key]
                    target[key][:] = value
                    if flow:
                        target[key].fa.set_flow_style()
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
    check = sub.add_parser("check", help="parse and validate a params file")
    check.add_argument("file", nargs="?", default=None)
    args = parser.parse_args(argv)
    try:
        if args.command == "use":
            changed = use_profile(args.profile)
            print(f"params.yaml now uses profile '{args.profile}' ({len(changed)} value(s) changed)")
        elif args.command == "check":
            params = load_params(args.file)
            print(f"{args.file or PARAMS_FILE}: valid (profile {params.profile}, {len(params.tasks)} task(s))")
        else:
            print(yaml.safe_dump(dataclasses.asdict(load_params()), sort_keys=False))
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
