"""Scaling laws measured the way the field measures them: IsoFLOP profiles and a parametric loss surface.

A grid of pretraining runs at a few compute budgets C, each budget spent on several model sizes N with
D = C / 6N tokens (C = 6ND, N the non-embedding parameters, as in Kaplan et al. 2020 and Hoffmann et al.
2022; the vocabulary-sized embeddings and output heads are left out of both N and C, see
`ClaimsEncoder.get_num_params`). Every run has its own cosine schedule ending at its last token, and every
model is scored on one common validation sample, batch by batch, so the bootstrap can resample the
evaluation batches as well as the runs.

Two fits, as in Hoffmann et al. 2022 (approaches 2 and 3):

- **IsoFLOP minima** (approach 2): per budget, a parabola of loss against log N; its vertex is that budget's
  compute-optimal N (and D = C / 6N). A power law N_opt = k C^a through the vertices gives the allocation
  exponents a and b = 1 - a.
- **Loss surface** (approach 3): L(N, D) = E + A / N^alpha + B / D^beta, fitted by minimising the Huber
  loss (delta 1e-3) of log-space residuals with L-BFGS from a grid of starting points; the compute-optimal
  N and D for a budget follow in closed form: N_opt = G (C/6)^(beta/(alpha+beta)),
  G = (alpha A / (beta B))^(1/(alpha+beta)).

Intervals come from a bootstrap that resamples the evaluation batches (the same draw for every run: the
runs are scored on the same patients) and the runs within each budget, refitting both approaches each time;
a replicate where a fit has no minimum is counted, never dropped silently.

The training is a parameter (`train_run`): this module fits any objective whose runs report per-batch loss
sums; `claimsutil.laws.train_grid_run` pretrains the run's model by its objective, the masked-code encoder
or the generative decoder (`GridRun.objective`), and both grids of notebook 07 share one pool of processes.

    grid = study_grid(params, store_dir, splits_dir, models_dir)     # encoder grid, sweep, decoder grid
    runs, batches = run_grid(grid.plan + grid.sweep + grid.generative, train_grid_run, grid.context, out)
    fit = fit_all(runs, batches, objective, n_resamples, seed)       # both approaches, with intervals
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

HUBER_DELTA = 1e-3  # Hoffmann et al. 2022, approach 3

# Published values the demo's fit is put beside (see `published_table`): where each number comes from.
PUBLISHED = (
    {"source": "Chinchilla, approach 3 (Hoffmann et al. 2022, eq. 10 and Table 2)", "objective": "next token, text",
     "alpha": 0.34, "beta": 0.28, "a": 0.46, "b": 0.54, "tokens_per_parameter": None},
    {"source": "Chinchilla, approach 2, IsoFLOP profiles (Hoffmann et al. 2022, Table 2)",
     "objective": "next token, text", "alpha": None, "beta": None, "a": 0.49, "b": 0.51, "tokens_per_parameter": None},
    {"source": "Chinchilla, compute-optimal models (Hoffmann et al. 2022, Table 3: 67B parameters, 1.5T tokens)",
     "objective": "next token, text", "alpha": None, "beta": None, "a": None, "b": None, "tokens_per_parameter": 20.0},
    {"source": "Chinchilla replication (Besiroglu et al. 2024, approach 3 refitted)", "objective": "next token, text",
     "alpha": 0.35, "beta": 0.37, "a": 0.51, "b": 0.49, "tokens_per_parameter": 20.0},
    {"source": "CoMET (Waxler et al. 2025): sizes 62M-1B chosen from its own IsoFLOP fits; exponents in its scaling "
               "section, not restated here", "objective": "next event, medical events",
     "alpha": None, "beta": None, "a": None, "b": None, "tokens_per_parameter": None},
)  # fmt: skip


# ------------------------------------------------------------------------------------------------ the grid


@dataclass(frozen=True)
class GridRun:
    """One pretraining run of the grid."""

    budget: float  # training compute C = 6 N D, FLOPs
    size: str  # name of the model size in the ladder
    parameters: int  # N: non-embedding parameters
    tokens: int  # D: training tokens, C / 6N rounded to whole steps
    steps: int  # optimizer steps of tokens_per_step tokens
    tokens_per_step: int = 4096  # real tokens per optimizer step
    warmup_steps: int = -1  # -1: the context's warmup_share of the steps
    lr_scale: float = 1.0  # the size's peak learning rate times this (the learning-rate sweep)
    model_dir: str = ""  # set: score the model already trained there (a pretrain stage's) instead of training
    objective: str = "masked"  # masked: the encoder; next: the generative decoder (`claimsutil.train.loop.MODELS`)

    @property
    def name(self) -> str:
        lr = "" if self.lr_scale == 1.0 else f"-lr{self.lr_scale:g}"
        model = "gen-" if self.objective == "next" else ""
        return f"{model}{self.size}-C{self.budget:.2e}{lr}".replace("+", "")


def plan_grid(budgets, parameters: dict[str, int], tokens_per_step: int, min_tokens: int,
              max_tokens: int) -> list[GridRun]:  # fmt: skip
    """The runs of an IsoFLOP grid: for each budget C, every size of the ladder (PARAMETERS: size -> N)
    whose D = C / 6N lies in [MIN_TOKENS, MAX_TOKENS], D rounded to whole steps. A budget left with fewer
    than three sizes cannot show a minimum: that is an error naming the budget and what it would get."""
    runs = []
    for budget in sorted(budgets):
        chosen = []
        for size, n in sorted(parameters.items(), key=lambda kv: kv[1]):
            tokens = budget / (6 * n)
            if min_tokens <= tokens <= max_tokens:
                steps = max(1, round(tokens / tokens_per_step))
                chosen.append(GridRun(float(budget), size, int(n), steps * tokens_per_step, steps, tokens_per_step))
        if len(chosen) < 3:
            options = {s: f"{budget / (6 * n):,.0f}" for s, n in parameters.items()}
            raise ValueError(f"laws.budgets: budget {budget:.3g} gets {len(chosen)} model size(s) with D = C / 6N in "
                             f"[{min_tokens:,}, {max_tokens:,}] tokens (needs 3 or more; D per size: {options}): "
                             "widen min_tokens / max_tokens or add sizes")  # fmt: skip
        runs.extend(chosen)
    return runs


def run_grid(plan: list[GridRun], train_run: Callable[[GridRun, dict], dict], context: dict, out_dir: str | Path,
             workers: int = 1) -> tuple[pl.DataFrame, pl.DataFrame]:  # fmt: skip
    """Train and score every run of PLAN with TRAIN_RUN(run, CONTEXT) -> {"wall_s", "losses" {family: loss},
    "batches" [{family: (sum, count)}, ...], ...} in WORKERS processes (one thread each; the results do not
    depend on WORKERS). A run whose result file OUT_DIR/runs/<name>.json exists for the same run and context
    is read back rather than retrained. Returns (runs: one row per run, batches: run x batch x family)."""
    out = Path(out_dir) / "runs"
    out.mkdir(parents=True, exist_ok=True)
    # The most expensive first, so the processes finish together (the order never changes a result).
    todo = sorted((r for r in plan if _cached(out, r, context) is None), key=lambda r: -expected_cost(r, context))
    if todo:
        jobs = [(r, train_run, context, str(out)) for r in todo]
        if workers > 1 and len(todo) > 1:
            ctx = __import__("multiprocessing").get_context("spawn")
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
                list(pool.map(_run_one, jobs))
        else:
            for job in jobs:
                _run_one(job)
    results = [_cached(out, r, context) for r in plan]
    runs = pl.DataFrame([
        {"run": r.name, "budget": r.budget, "size": r.size, "parameters": r.parameters, "tokens": r.tokens,
         "steps": r.steps, "lr_scale": r.lr_scale, "tokens_per_parameter": r.tokens / r.parameters,
         "wall_s": res["wall_s"],
         **{f"loss_{f}": v for f, v in res["losses"].items()}}
        for r, res in zip(plan, results, strict=True)
    ])  # fmt: skip
    batches = pl.DataFrame([
        {"run": r.name, "batch": i, "family": f, "sum": float(s), "count": int(c)}
        for r, res in zip(plan, results, strict=True) for i, b in enumerate(res["batches"]) for f, (s, c) in b.items()
    ])  # fmt: skip
    return runs, batches


def expected_cost(run: GridRun, context: dict) -> float:
    """RUN's training multiply-adds, roughly (tokens x per-token work of the blocks, the output heads at the
    share of tokens they score and attention over max_len keys), to order the runs; CONTEXT's `sizes`,
    `vocab_size` and `max_len`. Without them: tokens x N."""
    size = context.get("sizes", {}).get(run.size)
    if not size or "vocab_size" not in context:
        return float(run.tokens * run.parameters)
    width, layers = float(size["n_embd"]), float(size["n_layer"])
    head_share = 1.0 if run.objective == "next" else float(context.get("pretrain", {}).get("mask_rate", 0.15))
    per_token = run.parameters + head_share * context["vocab_size"] * width + 2 * layers * width * context["max_len"]
    return float(run.tokens) * per_token


def _run_one(job: tuple) -> None:
    run, train_run, context, out = job
    started = time.perf_counter()
    result = train_run(run, context)
    result.setdefault("wall_s", time.perf_counter() - started)
    path = Path(out) / f"{run.name}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"run": dataclasses.asdict(run), "context": context, **result}), encoding="utf-8")
    os.replace(tmp, path)


def _cached(out: Path, run: GridRun, context: dict) -> dict | None:
    path = out / f"{run.name}.json"
    if not path.is_file():
        return None
    saved = json.loads(path.read_text(encoding="utf-8"))
    same = saved.get("run") == dataclasses.asdict(run) and saved.get("context") == json.loads(json.dumps(context))
    if same and run.model_dir:  # a model trained elsewhere: the same only while its weights are
        same = saved.get("model_md5") == _md5(Path(run.model_dir) / "model.pt")
    return saved if same else None


def _md5(path: Path) -> str:
    import hashlib

    return hashlib.md5(path.read_bytes()).hexdigest()


def objective_losses(batches: pl.DataFrame, objective: tuple[str, ...], weights: np.ndarray | None = None,
                     runs: list[str] | None = None) -> np.ndarray:  # fmt: skip
    """Each run's loss on the objective (the sum of the mean losses of the OBJECTIVE families, as the
    model's total), from its per-batch sums; WEIGHTS: how many times each batch counts (a bootstrap draw,
    the same for every run). RUNS: the order of the result (default: first appearance)."""
    names = runs or list(dict.fromkeys(batches["run"].to_list()))
    n_batches = int(batches["batch"].max()) + 1
    w = np.ones(n_batches) if weights is None else np.asarray(weights, dtype=np.float64)
    total = np.zeros(len(names))
    index = {r: i for i, r in enumerate(names)}
    for family in objective:
        part = batches.filter((pl.col("family") == family) & pl.col("run").is_in(names))
        if part.is_empty():
            raise ValueError(
                f"objective family '{family}' has no evaluation batches (have {batches['family'].unique().to_list()})"
            )
        rows = np.array([index[r] for r in part["run"]])
        b = part["batch"].to_numpy()
        sums = np.bincount(rows, weights=part["sum"].to_numpy() * w[b], minlength=len(names))
        counts = np.bincount(rows, weights=part["count"].to_numpy() * w[b], minlength=len(names))
        total += sums / np.maximum(counts, 1e-12)
    return total


# ------------------------------------------------------------------------------------------------ fits


@dataclass(frozen=True)
class Vertex:
    """One budget's IsoFLOP minimum (approach 2)."""

    budget: float
    parameters: float  # N at the vertex
    tokens: float  # D = C / 6N
    loss: float  # the parabola's value at the vertex
    interior: bool  # the vertex lies within the sizes tried (else it is an extrapolation)


def isoflop_vertex(budget: float, n: np.ndarray, loss: np.ndarray) -> Vertex | None:
    """The vertex of the parabola of LOSS against log N (at least three distinct N); None when the
    parabola opens downwards (no minimum)."""
    x = np.log(np.asarray(n, dtype=np.float64))
    if len(np.unique(x)) < 3:
        return None
    c2, c1, c0 = np.polyfit(x, np.asarray(loss, dtype=np.float64), 2)
    if c2 <= 0:
        return None
    x_star = -c1 / (2 * c2)
    n_star = float(np.exp(np.clip(x_star, -700, 700)))
    if not 0 < n_star < math.inf:  # an almost straight profile: its vertex is nowhere near the sizes tried
        return None
    return Vertex(budget, n_star, budget / (6 * n_star), float(c0 + c1 * x_star + c2 * x_star**2),
                  bool(x.min() <= x_star <= x.max()))  # fmt: skip


@dataclass(frozen=True)
class Allocation:
    """N_opt = k C^a through the IsoFLOP vertices; D_opt = C / 6 N_opt, so b = 1 - a."""

    a: float
    log_k: float

    @property
    def b(self) -> float:
        return 1.0 - self.a

    def parameters(self, budget) -> np.ndarray:
        return np.exp(self.log_k + self.a * np.log(np.asarray(budget, dtype=np.float64)))

    def tokens(self, budget) -> np.ndarray:
        return np.asarray(budget, dtype=np.float64) / (6 * self.parameters(budget))


def fit_allocation(vertices: list[Vertex]) -> Allocation | None:
    """The power law through the vertices inside the sizes tried, of two or more budgets (None with fewer:
    a vertex outside the sizes is an extrapolation of a parabola, as Hoffmann et al. keep only bracketed
    minima)."""
    vertices = [v for v in vertices if v.interior]
    if len({v.budget for v in vertices}) < 2:
        return None
    a, log_k = np.polyfit(np.log([v.budget for v in vertices]), np.log([v.parameters for v in vertices]), 1)
    return Allocation(float(a), float(log_k))


@dataclass(frozen=True)
class LossSurface:
    """L(N, D) = E + A / N^alpha + B / D^beta (approach 3)."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def __call__(self, n, d) -> np.ndarray:
        n, d = np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def optimal_parameters(self, budget) -> np.ndarray:
        """The N minimising L on C = 6ND."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        return g * (np.asarray(budget, dtype=np.float64) / 6) ** (self.beta / (self.alpha + self.beta))

    def optimal_tokens(self, budget) -> np.ndarray:
        return np.asarray(budget, dtype=np.float64) / (6 * self.optimal_parameters(budget))

    @property
    def a(self) -> float:
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        return self.alpha / (self.alpha + self.beta)


def _huber(r: np.ndarray, delta: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of residuals R and its derivative."""
    small = np.abs(r) <= delta
    value = np.where(small, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))
    return value, np.where(small, r, delta * np.sign(r))


def _surface_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray, delta: float):
    """Sum of Huber(LSE(a - alpha log N, b - beta log D, e) - log L) and its gradient in (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])  # (3, n)
    top = terms.max(axis=0)
    w = np.exp(terms - top)  # (3, n)
    lse = top + np.log(w.sum(axis=0))
    p = w / w.sum(axis=0)  # d lse / d term
    value, dh = _huber(lse - log_l, delta)
    grad = np.array([(dh * p[0]).sum(), (dh * p[1]).sum(), (dh * p[2]).sum(),
                     -(dh * p[0] * log_n).sum(), -(dh * p[1] * log_d).sum()])  # fmt: skip
    return float(value.sum()), grad


START_GRID = {  # starting points of the L-BFGS fits (Hoffmann et al.'s ranges for the exponents, A and B)
    "alpha": (0.1, 0.3, 0.6, 1.0, 1.5),
    "beta": (0.1, 0.3, 0.6, 1.0, 1.5),
    "e_share": (0.3, 0.6, 0.8, 0.9, 0.97),  # E as a share of the lowest observed loss (losses differ by task)
    "a": (0.0, 5.0, 10.0, 15.0, 20.0),
    "b": (0.0, 5.0, 10.0, 15.0, 20.0),
}


SCREENED = 40  # starts refined with L-BFGS after screening the grid


def _screen(starts: np.ndarray, log_n, log_d, log_l, delta: float) -> np.ndarray:
    """The Huber objective at every start (S, 5) at once."""
    a, b, e, alpha, beta = (starts[:, i : i + 1] for i in range(5))  # (S, 1) each
    lse = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)  # (S, n)
    return _huber(lse - log_l, delta)[0].sum(axis=1)


def fit_surface(n, d, loss, starts: list[np.ndarray] | None = None, delta: float = HUBER_DELTA,
                keep: int = 1) -> list[tuple[float, LossSurface]]:  # fmt: skip
    """Approach 3: the best KEEP fits (objective, surface) from STARTS (default: the full START_GRID), best
    first. Exponents are bounded to [0, 3]; at least five runs are needed."""
    from scipy.optimize import minimize

    log_n, log_d, log_l = (np.log(np.asarray(v, dtype=np.float64)) for v in (n, d, loss))
    if len(log_n) < 5:
        raise ValueError(f"a loss surface has five parameters: needs five or more runs, got {len(log_n)}")
    if starts is None:
        g, lowest = START_GRID, float(np.exp(log_l.min()))
        starts = [np.array([a, b, math.log(share * lowest), al, be]) for al in g["alpha"] for be in g["beta"]
                  for share in g["e_share"] for a in g["a"] for b in g["b"]]  # fmt: skip
    if len(starts) > SCREENED:  # screen the grid in one vectorised pass, refine the most promising starts
        starts = [starts[i] for i in np.argsort(_screen(np.array(starts), log_n, log_d, log_l, delta))[:SCREENED]]
    bounds = [(None, None), (None, None), (None, None), EXPONENT_BOUNDS, EXPONENT_BOUNDS]
    found = []
    for start in starts:
        res = minimize(_surface_objective, start, args=(log_n, log_d, log_l, delta), jac=True, method="L-BFGS-B",
                       bounds=bounds, options={"maxiter": 500})  # fmt: skip
        if np.all(np.isfinite(res.x)):
            found.append((float(res.fun), res.x))
    if not found:
        raise ValueError("no start of the loss-surface fit converged")
    found.sort(key=lambda t: t[0])
    out = []
    for value, (a, b, e, alpha, beta) in found[:keep]:
        out.append(
            (value, LossSurface(float(np.exp(e)), float(np.exp(a)), float(np.exp(b)), float(alpha), float(beta)))
        )
    return out


EXPONENT_BOUNDS = (0.0, 3.0)  # of alpha and beta in the fit


def degenerate_exponents(s: LossSurface, replicates: pl.DataFrame | None = None, tolerance: float = 1e-3) -> list[str]:
    """The exponents of S the data do not determine: at a bound of the fit, or (with the bootstrap REPLICATES)
    with a 95% interval that reaches one (alpha at 3: the N term is negligible at every size tried; at 0: it is
    a constant folded into E). Nothing derived from such a surface (compute-optimal sizes, tokens per
    parameter) is an estimate."""
    low, high = EXPONENT_BOUNDS
    bad = []
    for name, value in (("alpha", s.alpha), ("beta", s.beta)):
        ends = [value]
        if replicates is not None and name in replicates.columns:
            ends += [e for e in interval(replicates[name]) if math.isfinite(e)]
        if any(e <= low + tolerance or e >= high - tolerance for e in ends):
            bad.append(name)
    return bad


def fit_caveats(fit: LawFit) -> str:
    """What a reader must know before using the fit's numbers (empty when nothing)."""
    lines = []
    if bad := degenerate_exponents(fit.surface, fit.replicates):
        lines.append(f"- **The loss surface is degenerate**: {', '.join(bad)} at the bound of the fit or with a "
                     "bootstrap interval that reaches it. The data "
                     "do not determine it, so its compute-optimal sizes and tokens per parameter are not "
                     "estimates.")  # fmt: skip
    if not any(v.interior for v in fit.vertices):
        lines.append("- **No IsoFLOP minimum lies inside the sizes tried**: the allocation exponent a cannot be "
                     "measured from these budgets.")  # fmt: skip
    return "\n".join(lines)


def surface_start(s: LossSurface) -> np.ndarray:
    return np.array([math.log(s.A), math.log(s.B), math.log(s.E), s.alpha, s.beta])


# ------------------------------------------------------------------------------------------------ fit + bootstrap


@dataclass
class LawFit:
    """Both approaches on one grid, with bootstrap replicates."""

    objective: str
    budgets: list[float]  # every budget of the grid, smallest first
    vertices: list[Vertex]
    allocation: Allocation | None
    surface: LossSurface
    losses: np.ndarray  # the observed loss of every run (the runs table's order)
    replicates: pl.DataFrame  # one row per bootstrap replicate: the fitted quantities (NaN where a fit failed)
    failed: dict[str, int]  # replicates without an IsoFLOP minimum / allocation, per quantity


def _one_fit(runs: pl.DataFrame, loss: np.ndarray, starts) -> dict[str, Any]:
    vertices = []
    for budget in sorted(set(runs["budget"].to_list())):
        rows = (runs["budget"] == budget).to_numpy()
        v = isoflop_vertex(budget, runs["parameters"].to_numpy()[rows], loss[rows])
        if v is not None:
            vertices.append(v)
    allocation = fit_allocation(vertices)
    fits = fit_surface(runs["parameters"].to_numpy(), runs["tokens"].to_numpy(), loss, starts=starts,
                       keep=3 if starts is None else 1)  # fmt: skip
    return {"vertices": vertices, "allocation": allocation, "surface": fits[0][1], "starts": [f for _, f in fits]}


def fit_all(runs: pl.DataFrame, batches: pl.DataFrame, objective: tuple[str, ...], n_resamples: int,
            seed: int) -> LawFit:  # fmt: skip
    """Both approaches on the observed losses, then N_RESAMPLES bootstrap replicates: the evaluation batches
    resampled (one draw shared by every run) and the runs resampled with replacement within each budget."""
    names = runs["run"].to_list()
    loss = objective_losses(batches, objective, runs=names)
    point = _one_fit(runs, loss, starts=None)
    starts = [surface_start(s) for s in point["starts"]]
    rng = np.random.default_rng(seed)
    n_batches = int(batches["batch"].max()) + 1
    groups = [np.flatnonzero((runs["budget"] == b).to_numpy()) for b in sorted(set(runs["budget"].to_list()))]
    budgets = sorted(set(runs["budget"].to_list()))
    rows, failed = [], {"isoflop_minimum": 0, "allocation": 0}
    for i in range(n_resamples):
        weights = rng.multinomial(n_batches, np.full(n_batches, 1 / n_batches)).astype(np.float64)
        picked = np.concatenate([rng.choice(g, size=len(g), replace=True) for g in groups])
        boot_loss = objective_losses(batches, objective, weights=weights, runs=names)[picked]
        fit = _one_fit(runs[picked], boot_loss, starts=starts)
        row = {"replicate": i}
        s = fit["surface"]
        row |= {"E": s.E, "A": s.A, "B": s.B, "alpha": s.alpha, "beta": s.beta, "a_surface": s.a}
        by_budget = {v.budget: v for v in fit["vertices"]}
        failed["isoflop_minimum"] += len(budgets) - len(by_budget)
        for j, budget in enumerate(budgets):
            v = by_budget.get(budget)
            row[f"n_opt_{j}"] = v.parameters if v else math.nan
            row[f"tokens_per_parameter_{j}"] = v.tokens / v.parameters if v else math.nan
            row[f"surface_tokens_per_parameter_{j}"] = float(s.optimal_tokens(budget) / s.optimal_parameters(budget))
        alloc = fit["allocation"]
        failed["allocation"] += alloc is None
        row["a_isoflop"] = alloc.a if alloc else math.nan
        rows.append(row)
    return LawFit("+".join(objective), budgets, point["vertices"], point["allocation"], point["surface"], loss,
                  pl.DataFrame(rows), failed)  # fmt: skip


def interval(values, alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of the finite VALUES (NaN, NaN when none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return math.nan, math.nan
    return float(np.quantile(v, alpha / 2)), float(np.quantile(v, 1 - alpha / 2))


# ------------------------------------------------------------------------------------------------ tables


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "-"
    if abs(x) >= 1e4 or (abs(x) < 1e-2 and x != 0):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}" if abs(x) >= 100 else f"{x:.{digits}f}"


def _with_interval(point: float, values, alpha: float) -> str:
    low, high = interval(values, alpha)
    if not np.isfinite(point):
        return "-"
    return f"{_fmt(point)} ({_fmt(low)}-{_fmt(high)})" if np.isfinite(low) else f"{_fmt(point)} (no replicate fit)"


def optimum_table(fit: LawFit, alpha: float = 0.05) -> pl.DataFrame:
    """Per budget: the compute-optimal N and D of each approach, and tokens per parameter at the optimum,
    with bootstrap intervals."""
    rows = []
    by_budget = {v.budget: v for v in fit.vertices}
    for j, budget in enumerate(fit.budgets):
        v = by_budget.get(budget)
        s = fit.surface
        rows.append({
            "budget_flops": f"{budget:.2e}",
            "isoflop_n_opt": _with_interval(v.parameters if v else math.nan, fit.replicates[f"n_opt_{j}"], alpha),
            "isoflop_d_opt": _fmt(v.tokens if v else math.nan),
            "isoflop_tokens_per_parameter": _with_interval(v.tokens / v.parameters if v else math.nan,
                                                           fit.replicates[f"tokens_per_parameter_{j}"], alpha),
            "vertex_inside_sizes_tried": "yes" if v and v.interior else ("no" if v else "no minimum"),
            "surface_n_opt": _fmt(float(s.optimal_parameters(budget))),
            "surface_d_opt": _fmt(float(s.optimal_tokens(budget))),
            "surface_tokens_per_parameter": _with_interval(
                float(s.optimal_tokens(budget) / s.optimal_parameters(budget)),
                fit.replicates[f"surface_tokens_per_parameter_{j}"], alpha),
        })  # fmt: skip
    return pl.DataFrame(rows)


def parameters_table(fit: LawFit, alpha: float = 0.05) -> pl.DataFrame:
    """The fitted constants with bootstrap intervals."""
    s, r = fit.surface, fit.replicates
    rows = [
        ("E (irreducible loss, nats)", s.E, r["E"]), ("A", s.A, r["A"]), ("B", s.B, r["B"]),
        ("alpha (parameters)", s.alpha, r["alpha"]), ("beta (tokens)", s.beta, r["beta"]),
        ("a = beta / (alpha + beta), loss surface", s.a, r["a_surface"]),
        ("a, IsoFLOP vertices", fit.allocation.a if fit.allocation else math.nan, r["a_isoflop"]),
    ]  # fmt: skip
    return pl.DataFrame([{"quantity": q, "estimate (95% interval)": _with_interval(p, v, alpha)} for q, p, v in rows])


def parameters_side_by_side(fits: dict[str, LawFit], alpha: float = 0.05) -> pl.DataFrame:
    """`parameters_table` of each fit (name -> fit), a column each."""
    tables = [parameters_table(f, alpha).rename({"estimate (95% interval)": name}) for name, f in fits.items()]
    return pl.concat([tables[0]] + [t.drop("quantity") for t in tables[1:]], how="horizontal")


def published_table(fits: dict[str, LawFit]) -> pl.DataFrame:
    """This study's exponents and tokens per parameter (at each fit's largest budget) beside the published
    ones."""
    rows = []
    for name, fit in fits.items():
        budget = max(fit.budgets)
        s, bad = fit.surface, degenerate_exponents(fit.surface, fit.replicates)
        source = f"this study, {name} (synthetic world, demo grid)"
        if bad:  # the surface's a, b and optimum are not estimates: show only the allocation measured directly
            source += f"; degenerate fit ({', '.join(bad)} at a bound): only measured values shown"
        a = fit.allocation.a if fit.allocation else (None if bad else s.a)
        ratio = None if bad else float(s.optimal_tokens(budget) / s.optimal_parameters(budget))
        rows.append({"source": source, "objective": fit.objective, "alpha": s.alpha, "beta": s.beta, "a": a,
                     "b": None if a is None else 1 - a, "tokens_per_parameter": ratio})  # fmt: skip
    rows.extend(PUBLISHED)
    return pl.DataFrame(rows, schema={"source": pl.String, "objective": pl.String, "alpha": pl.Float64,
                                      "beta": pl.Float64, "a": pl.Float64, "b": pl.Float64,
                                      "tokens_per_parameter": pl.Float64})  # fmt: skip


# ------------------------------------------------------------------------------------------------ the study's grids

GEN_OBJECTIVE = ("next_token",)  # the decoder's fitted loss: the mean cross-entropy over every next token


def grid_context(store_dir: str, splits_dir: str, sizes: dict[str, dict], pretrain: dict, eval_tokens: int,
                 warmup_share: float, vocab_size: int, max_len: int, generative: dict | None = None
                 ) -> dict:  # fmt: skip
    """What `train_grid_run` needs, as plain JSON (a cached run is reused only for the same context):
    SIZES name -> {n_layer, n_head, n_embd, lr}; PRETRAIN: `pretrain` keys shared by every run; VOCAB_SIZE
    and MAX_LEN: the token store's (the encoder's vocabulary; the decoder's adds the time tokens); GENERATIVE:
    the `generative` section's overrides, which decoder runs take as the pretrain_gen stages do."""
    return {"store_dir": store_dir, "splits_dir": splits_dir, "sizes": sizes, "pretrain": pretrain,
            "eval_tokens": eval_tokens, "warmup_share": warmup_share, "vocab_size": vocab_size,
            "max_len": max_len, "generative": dict(generative or {})}  # fmt: skip


def grid_parameters(sizes: dict[str, dict], vocab_size: int, max_len: int, objective: str = "masked"
                    ) -> dict[str, int]:  # fmt: skip
    """Non-embedding parameters of each size of the ladder, as the encoder (OBJECTIVE masked) or the decoder
    (next, whose vocabulary adds the time tokens)."""
    import torch

    from claimsutil.model import ModelConfig
    from claimsutil.train.launch import vocab_size_for
    from claimsutil.train.loop import MODELS

    vocab_size = vocab_size_for(vocab_size, objective)
    family = torch.zeros(vocab_size, dtype=torch.long)
    return {name: MODELS[objective](ModelConfig(vocab_size=vocab_size, max_len=max_len, **_shape(shape)),
                                    family).get_num_params() for name, shape in sizes.items()}  # fmt: skip


def _shape(size: dict) -> dict[str, int]:
    return {k: int(size[k]) for k in ("n_layer", "n_head", "n_embd")}


@dataclass(frozen=True)
class StudyGrid:
    """What notebook 07 runs: the encoder's IsoFLOP grid, its learning-rate sweep, the generative decoder's
    grid, and the context of every run."""

    plan: list[GridRun]
    sweep: list[GridRun]
    generative: list[GridRun]
    sizes: dict[str, dict]  # every size trained: the ladder and the swept scales (`scale-<name>`)
    context: dict


def study_grid(params, store_dir: str | Path, splits_dir: str | Path, models_dir: str | Path | None = None
               ) -> StudyGrid:  # fmt: skip
    """The grids and the sweep of PARAMS (`laws`, `pretrain`, `scales`) on the token store in STORE_DIR;
    MODELS_DIR: where the pretrain stages' models are (the sweep's chosen-rate points). The decoder's grid
    is `laws.gen_budgets` over the `laws.gen_sizes` of the ladder, with the encoder's token bounds."""
    from claimsutil.config import execution_fields
    from claimsutil.tokenize import TokenStore

    config, store = params.laws, TokenStore(store_dir)
    sizes = {**config.sizes, **sweep_sizes(params)}
    vocab_size, max_len = len(store.vocab.tokens), store.config.max_len
    parameters = grid_parameters(sizes, vocab_size, max_len)
    plan = plan_grid(config.budgets, {k: parameters[k] for k in config.sizes}, config.tokens_per_step,
                     config.min_tokens, config.max_tokens)  # fmt: skip
    generative = []
    if config.gen_budgets:
        gen_parameters = grid_parameters({k: config.sizes[k] for k in config.gen_sizes}, vocab_size, max_len, "next")
        gen_plan = plan_grid(config.gen_budgets, gen_parameters, config.tokens_per_step, config.min_tokens,
                             config.max_tokens)  # fmt: skip
        generative = [dataclasses.replace(r, objective="next") for r in gen_plan]
    shared = {f.name: getattr(params.pretrain, f.name) for f in dataclasses.fields(params.pretrain)
              if f.name not in execution_fields(type(params.pretrain))}  # fmt: skip
    context = grid_context(str(store_dir), str(splits_dir), sizes, shared, config.eval_tokens, config.warmup_share,
                           vocab_size, max_len, params.generative)  # fmt: skip
    sweep = plan_lr_sweep(params, parameters, models_dir)
    return StudyGrid(plan, sweep, generative, sizes, json.loads(json.dumps(context)))


def sweep_sizes(params) -> dict[str, dict]:
    """The swept scales' shapes and chosen learning rates, named `scale-<name>`."""
    from claimsutil.model import SCALES

    out = {}
    for scale in params.laws.lr_sweep_scales:
        if scale not in params.scales:
            raise ValueError(f"laws.lr_sweep_scales: '{scale}' is not under `scales` (have {list(params.scales)})")
        config = params.pretrain_for(scale)
        out[f"scale-{scale}"] = {**SCALES[config.profile][scale], "lr": config.lr}
    return out


def plan_lr_sweep(params, parameters: dict[str, int], models_dir: str | Path | None = None) -> list[GridRun]:
    """The learning-rate sweep: each swept scale on its own pretraining configuration (tokens, batch,
    warm-up), at its chosen rate times each `laws.lr_sweep` multiplier. PARAMETERS: size name -> N.
    MODELS_DIR: the pretrain stages' models, scored for the chosen rate (multiplier 1) instead of training the
    same configuration again (they ran in `pretrain.processes` processes: the same up to summation order)."""
    runs = []
    for scale in params.laws.lr_sweep_scales:
        config, n = params.pretrain_for(scale), parameters[f"scale-{scale}"]
        steps = config.steps_for(n)
        tokens = steps * config.tokens_per_step
        for m in params.laws.lr_sweep:
            trained = str(Path(models_dir) / scale) if m == 1.0 and models_dir else ""
            if trained and not (Path(trained) / "model.pt").is_file():
                raise FileNotFoundError(f"{trained}/model.pt: no pretrained model of scale '{scale}' for the "
                                        "learning-rate sweep (run its pretrain stage first)")  # fmt: skip
            runs.append(GridRun(float(6 * n * tokens), f"scale-{scale}", n, tokens, steps,
                                config.tokens_per_step, config.warmup_steps, float(m), trained))  # fmt: skip
    return runs


def study_scales(params, store_dir: str | Path) -> dict[str, tuple[int, int]]:
    """The study's pretraining scales: name -> (non-embedding parameters, pretraining tokens)."""
    from claimsutil.model import SCALES
    from claimsutil.tokenize import TokenStore

    store, out = TokenStore(store_dir), {}
    vocab_size, max_len = len(store.vocab.tokens), store.config.max_len
    for scale in params.scales:
        config = params.pretrain_for(scale)
        shape = {**SCALES[config.profile][scale], "lr": config.lr}
        n = grid_parameters({scale: shape}, vocab_size, max_len)[scale]
        out[scale] = (n, config.steps_for(n) * config.tokens_per_step)
    return out


def plan_table(plan: list[GridRun]) -> pl.DataFrame:
    """The grid as a table: budget, size, N, D, tokens per parameter, steps."""
    return pl.DataFrame([{"budget_flops": f"{r.budget:.2e}", "size": r.size, "parameters": r.parameters,
                          "tokens": r.tokens, "tokens_per_parameter": round(r.tokens / r.parameters, 1),
                          "steps": r.steps} for r in plan])  # fmt: skip


def fit_metrics(fit: LawFit, runs: pl.DataFrame) -> dict:
    """A fit's numbers for `dvc metrics show`: the constants with intervals, the allocation, what is degenerate."""
    largest = max(fit.budgets)
    s = fit.surface
    return {
        "runs": runs.height, "budgets": len(fit.budgets), "training_minutes": float(runs["wall_s"].sum() / 60),
        "E": s.E, "alpha": s.alpha, "beta": s.beta, "alpha_interval": list(interval(fit.replicates["alpha"])),
        "beta_interval": list(interval(fit.replicates["beta"])),
        "a_isoflop": fit.allocation.a if fit.allocation else None, "a_surface": s.a,
        "tokens_per_parameter_at_largest_budget": None if degenerate_exponents(s, fit.replicates)
        else float(s.optimal_tokens(largest) / s.optimal_parameters(largest)),
        "vertices_inside_sizes": sum(v.interior for v in fit.vertices),
        "degenerate_exponents": degenerate_exponents(s, fit.replicates),
        "bootstrap_without_minimum": fit.failed["isoflop_minimum"],
    }  # fmt: skip


def summary_metrics(fit: LawFit, runs: pl.DataFrame, sweep: pl.DataFrame, baseline: dict, objective,
                    generative: dict | None = None) -> dict:  # fmt: skip
    """What `dvc metrics show` shows of the stage: the encoder's fit, its sweep, and GENERATIVE (the decoder's
    `fit_metrics` and frequency baseline) when there is a decoder grid."""
    return {
        "objective": fit.objective,
        "frequency_baseline": sum(baseline[f]["cross_entropy"] for f in objective if f in baseline),
        **fit_metrics(fit, runs),
        "lr_sweep_excess_percent": dict(sweep.filter(pl.col("chosen")).select("scale", "excess_percent").iter_rows()),
    } | ({"generative": generative} if generative else {})  # fmt: skip


def generative_fit(runs: pl.DataFrame, batches: pl.DataFrame, grid: StudyGrid, n_resamples: int, seed: int
                   ) -> tuple[LawFit, pl.DataFrame] | None:  # fmt: skip
    """The decoder grid's fit (`fit_all` on `GEN_OBJECTIVE`) and its runs; None without a decoder grid."""
    if not grid.generative:
        return None
    names = [r.name for r in grid.generative]
    gen_runs = runs.filter(pl.col("run").is_in(names))
    fit = fit_all(gen_runs, batches.filter(pl.col("run").is_in(names)), GEN_OBJECTIVE, n_resamples, seed)
    return fit, gen_runs


def generative_baseline(store_dir: str | Path, splits_dir: str | Path) -> float:
    """The decoder's frequency baseline on the grid's objective: a unigram of the training patients' timeline
    targets, scored on the validation patients' (as the pretrain_gen stages report it)."""
    from claimsutil.splits import read_splits, subject_ids
    from claimsutil.timeline import Timeline, unigram_baseline
    from claimsutil.tokenize import TokenStore
    from claimsutil.train.loop import store_indices

    store, splits = TokenStore(store_dir), read_splits(splits_dir)
    fit, held = (store_indices(store, subject_ids(splits, (s,))) for s in ("train", "validation"))
    return float(unigram_baseline(Timeline(store), fit, held)["total"])


def study_budgets(fit: LawFit, scales: dict[str, tuple[int, int]]) -> pl.DataFrame:
    """Each of the study's scales (name -> (N, D)) against the fitted law's compute-optimal split of its
    own compute: how many tokens per parameter it gets and the optimum would give."""
    s, rows = fit.surface, []
    for scale, (n, d) in scales.items():
        c = 6.0 * n * d
        n_opt, d_opt = float(s.optimal_parameters(c)), float(s.optimal_tokens(c))
        rows.append({"scale": scale, "parameters": n, "tokens": d, "compute": c, "tokens_per_parameter": d / n,
                     "optimal_parameters": n_opt, "optimal_tokens": d_opt,
                     "optimal_tokens_per_parameter": d_opt / n_opt,
                     "fitted_loss": float(s(n, d)), "fitted_loss_at_optimum": float(s(n_opt, d_opt))})  # fmt: skip
    return pl.DataFrame(rows)


def train_grid_run(run: GridRun, context: dict) -> dict:
    """Pretrain RUN's model (the masked-code encoder, or the decoder by next-token prediction: RUN.objective)
    of RUN's size on RUN's tokens (its own cosine schedule, warm-up a share of its steps), one process and
    one thread, then score it batch by batch on the common validation sample (the same patients, and for
    the encoder the same masks, for every run of the objective)."""
    import tempfile

    import torch

    from claimsutil.config import PretrainConfig
    from claimsutil.model import ModelConfig
    from claimsutil.splits import read_splits, subject_ids
    from claimsutil.tokenize import TokenStore
    from claimsutil.train.launch import vocab_size_for
    from claimsutil.train.loop import pretrain

    torch.set_num_threads(1)
    size = context["sizes"][run.size]
    store = TokenStore(context["store_dir"])
    splits = read_splits(context["splits_dir"])
    vocab_size = vocab_size_for(len(store.vocab.tokens), run.objective)
    model_config = ModelConfig(vocab_size=vocab_size, max_len=store.config.max_len, **_shape(size))
    validation = subject_ids(splits, ("validation",))
    if run.model_dir:
        saved = torch.load(Path(run.model_dir) / "model.pt", map_location="cpu", weights_only=False)
        metrics = json.loads((Path(run.model_dir) / "metrics.json").read_text(encoding="utf-8"))
        return _score(saved, ModelConfig(**saved["model_config"]), store, validation, context, run.objective) | {
            "wall_s": metrics["wall_time_s"],
            "tokens_seen": metrics["tokens_seen"],
            "final_train_loss": metrics["final_train_loss"],
            "model_md5": _md5(Path(run.model_dir) / "model.pt"),
        }
    config = PretrainConfig(**{**context["pretrain"], "betas": tuple(context["pretrain"]["betas"])})
    if run.objective == "next":  # the generative section's overrides (its token bounds do not apply: max_steps)
        config = dataclasses.replace(config, **context.get("generative", {}))
    warmup = run.warmup_steps if run.warmup_steps >= 0 else max(1, round(context["warmup_share"] * run.steps))
    lr = float(size["lr"]) * run.lr_scale
    config = dataclasses.replace(config, lr=lr, min_lr=lr * config.min_lr / config.lr, max_steps=run.steps,
                                 warmup_steps=warmup, tokens_per_step=run.tokens_per_step,
                                 micro_tokens=min(config.micro_tokens, run.tokens_per_step), eval_every=run.steps,
                                 checkpoint_every=run.steps, processes=1, num_threads=1,
                                 objective=run.objective)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="claimsutil-laws-") as tmp:
        metrics = pretrain(context["store_dir"], subject_ids(splits, ("train",)), model_config, config, tmp,
                           validation, resume=False, progress=False)  # fmt: skip
        saved = torch.load(Path(tmp) / "model.pt", map_location="cpu", weights_only=False)
    return _score(saved, model_config, store, validation, context, run.objective) | {
        "wall_s": metrics["wall_time_s"], "tokens_seen": metrics["tokens_seen"],
        "final_train_loss": metrics["final_train_loss"], "precision": metrics["precision"]}  # fmt: skip


def _score(saved: dict, model_config, store, validation, context: dict, objective: str = "masked") -> dict:
    """A saved model's losses on the common validation sample, overall and per batch; a decoder's batches
    also hold "next_token", every next token (the family `GEN_OBJECTIVE` fits)."""
    from claimsutil.train.loop import MODELS, score_on_sample

    model = MODELS[objective](model_config, saved["model"]["family"].cpu())  # each token's family, as trained
    model.load_state_dict(saved["model"])
    per_batch: list = []
    losses = score_on_sample(model, store, validation, context["eval_tokens"], per_batch=per_batch)
    if objective == "next":
        every = GEN_OBJECTIVE[0]
        per_batch = [b | {every: (sum(s for s, _ in b.values()), sum(n for _, n in b.values()))} for b in per_batch]
        losses[every] = losses["total"]
    return {"losses": losses, "batches": per_batch}


# ------------------------------------------------------------------------------------------------ figures


def plot_laws(runs: pl.DataFrame, fit: LawFit):
    """Three panels: IsoFLOP profiles (loss against N per budget, the parabolas and their vertices); the
    loss-compute frontier (every run, the best run per budget, the fitted surface along its compute-optimal
    line); the fitted surface against the observed losses."""
    import matplotlib.pyplot as plt

    fig, (iso, frontier, check) = plt.subplots(1, 3, figsize=(13, 3.8))
    n, d, c = (runs[k].to_numpy().astype(float) for k in ("parameters", "tokens", "budget"))
    colors = plt.get_cmap("viridis")(np.linspace(0.1, 0.85, len(fit.budgets)))
    vertices = {v.budget: v for v in fit.vertices}
    for budget, color in zip(fit.budgets, colors, strict=True):
        rows = c == budget
        iso.plot(n[rows], fit.losses[rows], "o", color=color, label=f"C = {budget:.1e}")
        if (v := vertices.get(budget)) is not None:
            x = np.log(n[rows])
            grid = np.linspace(x.min(), x.max(), 50)
            iso.plot(np.exp(grid), np.polyval(np.polyfit(x, fit.losses[rows], 2), grid), "-", color=color, lw=1)
            iso.plot(v.parameters, v.loss, "*", color=color, ms=12, mec="k")
    iso.set_xscale("log")
    iso.set(xlabel="non-embedding parameters N", ylabel=f"validation loss ({fit.objective}, nats)",
            title="IsoFLOP profiles (star: vertex)")  # fmt: skip
    iso.legend(fontsize=7)
    frontier.plot(c, fit.losses, "o", color="0.75", label="runs")
    best = [min(fit.losses[c == b]) for b in fit.budgets]
    frontier.plot(fit.budgets, best, "o-", color="tab:blue", label="best run per budget")
    grid = np.geomspace(min(fit.budgets) / 3, max(fit.budgets) * 10, 60)
    s = fit.surface
    frontier.plot(grid, s(s.optimal_parameters(grid), s.optimal_tokens(grid)), "--", color="tab:red",
                  label="fitted L at the compute optimum")  # fmt: skip
    frontier.set_xscale("log")
    frontier.set(
        xlabel="training compute C = 6ND (FLOPs)", ylabel="validation loss (nats)", title="Loss-compute frontier"
    )
    frontier.legend(fontsize=7)
    fitted = s(n, d)
    check.plot(fit.losses, fitted, "o", color="tab:blue")
    lo, hi = min(fit.losses.min(), fitted.min()), max(fit.losses.max(), fitted.max())
    check.plot([lo, hi], [lo, hi], "k:", lw=1)
    check.set(xlabel="observed loss", ylabel="fitted L(N, D)",
              title=f"Fit: E={s.E:.2f}, alpha={s.alpha:.2f}, beta={s.beta:.2f}")  # fmt: skip
    fig.tight_layout()
    return fig


def plot_lr_sweep(sweep: pl.DataFrame):
    """Validation loss against the learning rate, one line per scale."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    for scale in sweep["scale"].unique(maintain_order=True):
        part = sweep.filter(pl.col("scale") == scale).sort("lr")
        ax.plot(part["lr"], part["loss"], "o-", label=scale)
        chosen = part.filter(pl.col("chosen"))
        ax.plot(chosen["lr"], chosen["loss"], "s", mfc="none", mec="k", ms=10)
    ax.set_xscale("log")
    ax.set(xlabel="peak learning rate", ylabel="validation loss (nats)", title="Learning-rate sweep (square: chosen)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def lr_sweep_table(runs: pl.DataFrame, losses: np.ndarray, sizes: dict[str, dict]) -> pl.DataFrame:
    """Per swept scale and rate: the loss and its excess over the scale's best rate, in percent."""
    df = runs.select("size", "lr_scale", "tokens").with_columns(
        scale=pl.col("size"),
        lr=pl.struct("size", "lr_scale").map_elements(lambda r: float(sizes[r["size"]]["lr"]) * r["lr_scale"],
                                                      return_dtype=pl.Float64),
        loss=pl.Series(losses),
        chosen=pl.col("lr_scale") == 1.0,
    )  # fmt: skip
    best = pl.col("loss").min().over("scale")
    return df.with_columns(excess_percent=100 * (pl.col("loss") - best) / best).select(
        "scale", "lr", "tokens", "loss", "excess_percent", "chosen"
    )


def lr_sweep_verdict(sweep: pl.DataFrame, tolerance_percent: float = 1.0) -> str:
    """One line per swept scale: how far the chosen rate's loss is above the best swept rate's."""
    lines = []
    for r in sweep.filter(pl.col("chosen")).iter_rows(named=True):
        within = "within" if r["excess_percent"] <= tolerance_percent else "NOT within"
        lines.append(f"- **{r['scale']}**: the chosen rate {r['lr']:g} ends {r['excess_percent']:.2f}% above the best "
                     f"swept rate's loss ({within} {tolerance_percent:g}%).")  # fmt: skip
    return "\n".join(lines)
