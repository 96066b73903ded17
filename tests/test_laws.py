"""The scaling-law machinery: the IsoFLOP plan, both fits on losses drawn from a known law, the bootstrap."""

import dataclasses
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import small_world

from claimsutil import laws

TRUE = laws.LossSurface(E=2.0, A=60.0, B=400.0, alpha=0.35, beta=0.30)


def test_plan_takes_the_sizes_whose_tokens_fit_and_rounds_to_whole_steps():
    sizes = {"a": 10_000, "b": 40_000, "c": 100_000, "d": 400_000}
    plan = laws.plan_grid([1.2e12, 2.4e11], sizes, tokens_per_step=1000, min_tokens=100_000, max_tokens=5_000_000)
    assert [r.budget for r in plan] == sorted(r.budget for r in plan)  # smallest budget first
    small = [r for r in plan if r.budget == 2.4e11]
    assert [r.size for r in small] == ["a", "b", "c", "d"]  # d gets exactly min_tokens: kept
    assert [r.size for r in plan if r.budget == 1.2e12] == ["b", "c", "d"]  # a would get 20M tokens
    for r in plan:
        assert r.tokens % 1000 == 0 and r.tokens == r.steps * 1000
        assert abs(6 * r.parameters * r.tokens / r.budget - 1) < 0.01  # C = 6 N D, up to the rounding to steps


def test_plan_refuses_a_budget_with_fewer_than_three_sizes_and_says_what_each_would_get():
    with pytest.raises(ValueError, match=r"budget 1e\+09 gets 1 model size.*D per size"):
        laws.plan_grid([1e9], {"a": 1_000, "b": 100_000, "c": 1_000_000}, 100, 10_000, 200_000)


def test_vertex_of_an_exact_parabola_in_log_n():
    n = np.array([1e4, 3e4, 1e5, 3e5, 1e6])
    loss = 5.0 + 0.2 * (np.log(n) - np.log(7e4)) ** 2
    v = laws.isoflop_vertex(6e12, n, loss)
    assert v.parameters == pytest.approx(7e4, rel=1e-6)
    assert v.tokens == pytest.approx(6e12 / (6 * 7e4), rel=1e-6)
    assert v.loss == pytest.approx(5.0, abs=1e-9) and v.interior
    assert laws.isoflop_vertex(6e12, n, -loss) is None  # no minimum
    assert laws.isoflop_vertex(6e12, n[:2], loss[:2]) is None  # two sizes cannot show one
    outside = laws.isoflop_vertex(6e12, n[:3], 5.0 + 0.2 * (np.log(n[:3]) - np.log(7e5)) ** 2)
    assert outside.parameters == pytest.approx(7e5, rel=1e-6) and not outside.interior


SIZES = np.geomspace(3e3, 1e6, 7)


def _grid(surface, budgets=(1e11, 1e12, 1e13), sizes=SIZES):
    rows = []
    for c in budgets:
        for n in sizes:
            d = c / (6 * n)
            if 1e4 <= d <= 1e9:
                rows.append({"run": f"{n:.0f}-{c:.0e}", "budget": c, "size": f"{n:.0f}", "parameters": int(n),
                             "tokens": int(d), "loss": float(surface(n, int(d)))})  # fmt: skip
    return pl.DataFrame(rows)


def test_loss_surface_fit_recovers_a_known_law_and_its_compute_optimum():
    runs = _grid(TRUE)
    fit = laws.fit_surface(runs["parameters"], runs["tokens"], runs["loss"])[0][1]
    assert fit.alpha == pytest.approx(TRUE.alpha, abs=0.01) and fit.beta == pytest.approx(TRUE.beta, abs=0.01)
    assert fit.E == pytest.approx(TRUE.E, rel=0.01)
    # the closed form agrees with a brute-force search along C = 6ND
    c = 1e12
    n = np.geomspace(1e2, 1e9, 200_001)
    best = n[np.argmin(TRUE(n, c / (6 * n)))]
    assert float(TRUE.optimal_parameters(c)) == pytest.approx(best, rel=1e-3)
    assert float(fit.optimal_parameters(c)) == pytest.approx(best, rel=0.15)
    assert TRUE.a == pytest.approx(0.30 / 0.65)


def test_surface_fit_needs_five_runs():
    with pytest.raises(ValueError, match="five or more runs"):
        laws.fit_surface([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4])


def test_allocation_through_vertices_on_a_known_law():
    # vertices on the true law's optimum line give the true exponent a = beta / (alpha + beta)
    vertices = [laws.Vertex(c, float(TRUE.optimal_parameters(c)), float(TRUE.optimal_tokens(c)), 0.0, True)
                for c in (1e11, 1e12, 1e13)]  # fmt: skip
    alloc = laws.fit_allocation(vertices)
    assert alloc.a == pytest.approx(TRUE.a, abs=1e-9) and alloc.b == pytest.approx(1 - TRUE.a, abs=1e-9)
    assert float(alloc.parameters(1e12)) == pytest.approx(float(TRUE.optimal_parameters(1e12)), rel=1e-9)
    assert laws.fit_allocation(vertices[:1]) is None


def _batches(runs: pl.DataFrame, n_batches: int, noise: float, seed: int = 0) -> pl.DataFrame:
    """Per-batch loss sums whose means are the runs' losses split between two families, with batch noise."""
    rng = np.random.default_rng(seed)
    batch_effect = rng.normal(0, noise, n_batches)  # a hard batch is hard for every run
    rows = []
    for r in runs.iter_rows(named=True):
        for b in range(n_batches):
            count = 100 + 10 * b
            for family, share in (("diagnosis", 0.6), ("drug", 0.4)):
                mean = share * r["loss"] + batch_effect[b] + rng.normal(0, noise / 10)
                rows.append({"run": r["run"], "batch": b, "family": family, "sum": mean * count, "count": count})
    return pl.DataFrame(rows)


def test_objective_losses_weights_batches_by_their_counts():
    batches = pl.DataFrame({"run": ["x"] * 4, "batch": [0, 1, 0, 1], "family": ["drug", "drug", "age", "age"],
                            "sum": [10.0, 30.0, 1.0, 1.0], "count": [10, 10, 2, 2]})  # fmt: skip
    assert laws.objective_losses(batches, ("drug",))[0] == pytest.approx(2.0)
    assert laws.objective_losses(batches, ("drug", "age"))[0] == pytest.approx(2.5)
    assert laws.objective_losses(batches, ("drug",), weights=np.array([2.0, 0.0]))[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="'diagnosis' has no evaluation batches"):
        laws.objective_losses(batches, ("diagnosis",))


def test_fit_all_recovers_the_law_with_intervals_that_hold_it():
    runs = _grid(TRUE)
    batches = _batches(runs, n_batches=8, noise=0.002)
    fit = laws.fit_all(runs.drop("loss"), batches, ("diagnosis", "drug"), n_resamples=40, seed=3)
    assert np.allclose(fit.losses, runs["loss"].to_numpy(), atol=0.01)
    assert fit.surface.alpha == pytest.approx(TRUE.alpha, abs=0.05)
    low, high = laws.interval(fit.replicates["alpha"])
    assert low <= fit.surface.alpha <= high and high - low < 0.2
    assert fit.allocation is not None and fit.allocation.a == pytest.approx(TRUE.a, abs=0.1)
    assert fit.failed["isoflop_minimum"] == 0 and fit.failed["allocation"] <= 4 and len(fit.replicates) == 40
    table = laws.optimum_table(fit)
    assert table.height == 3 and table["vertex_inside_sizes_tried"].to_list() == ["yes"] * 3
    same = laws.fit_all(runs.drop("loss"), batches, ("diagnosis", "drug"), n_resamples=40, seed=3)
    assert same.replicates.equals(fit.replicates)  # same seed, same numbers


def test_a_minimum_outside_the_sizes_tried_is_flagged_and_concave_profiles_are_counted():
    data_bound = laws.LossSurface(E=2.0, A=1e-9, B=400.0, alpha=0.35, beta=0.30)  # parameters never help
    runs = _grid(data_bound)
    fit = laws.fit_all(runs.drop("loss"), _batches(runs, 6, 0.002), ("diagnosis", "drug"), n_resamples=5, seed=1)
    assert "yes" not in laws.optimum_table(fit)["vertex_inside_sizes_tried"].to_list()  # extrapolations, said so
    concave = runs.with_columns(loss=5.0 - 0.05 * (pl.col("parameters").log() - 10.0) ** 2)
    fit = laws.fit_all(concave.drop("loss"), _batches(concave, 6, 0.0), ("diagnosis", "drug"), n_resamples=4, seed=1)
    assert fit.vertices == [] and fit.allocation is None
    assert fit.failed == {"isoflop_minimum": 4 * 3, "allocation": 4}
    assert math.isnan(laws.interval(fit.replicates["a_isoflop"])[0])
    assert laws.optimum_table(fit)["vertex_inside_sizes_tried"].to_list() == ["no minimum"] * 3


def test_published_table_puts_this_fit_beside_the_published_values():
    runs = _grid(TRUE)
    fit = laws.fit_all(runs.drop("loss"), _batches(runs, 6, 0.001), ("diagnosis", "drug"), n_resamples=5, seed=1)
    table = laws.published_table({"encoder": fit})
    assert table["source"][0].startswith("this study, encoder")
    s, top = fit.surface, max(fit.budgets)  # tokens per parameter at the fit's own largest budget
    assert table["tokens_per_parameter"][0] == pytest.approx(float(s.optimal_tokens(top) / s.optimal_parameters(top)))
    assert any("Hoffmann" in s for s in table["source"]) and any("CoMET" in s for s in table["source"])


CALLS: list[str] = []


def _fake_run(run: laws.GridRun, context: dict) -> dict:
    CALLS.append(run.name)
    result = {"wall_s": 1.0, "losses": {"drug": float(run.parameters)}, "batches": [{"drug": (run.parameters, 1)}]}
    if run.model_dir:
        result["model_md5"] = laws._md5(Path(run.model_dir) / "model.pt")
    return result


def test_run_grid_reuses_finished_runs_until_the_run_its_context_or_the_scored_model_changes(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model.pt").write_bytes(b"weights")
    plan = [laws.GridRun(1e9, "a", 10, 100, 1), laws.GridRun(1e9, "b", 20, 50, 1, model_dir=str(tmp_path / "model"))]
    CALLS.clear()
    runs, batches = laws.run_grid(plan, _fake_run, {"x": 1}, tmp_path / "out")
    assert runs["loss_drug"].to_list() == [10.0, 20.0] and batches.height == 2 and len(CALLS) == 2
    laws.run_grid(plan, _fake_run, {"x": 1}, tmp_path / "out")
    assert len(CALLS) == 2  # nothing retrained
    (tmp_path / "model" / "model.pt").write_bytes(b"retrained")
    laws.run_grid(plan, _fake_run, {"x": 1}, tmp_path / "out")
    assert CALLS[2:] == [plan[1].name]  # only the scored model whose weights changed
    laws.run_grid(plan, _fake_run, {"x": 2}, tmp_path / "out")
    assert len(CALLS) == 5  # another context: everything again


def test_an_exponent_at_its_bound_is_called_degenerate_and_its_optimum_is_not_reported():
    stuck = laws.LossSurface(E=1.2, A=1.9e4, B=22.0, alpha=3.0, beta=0.07)
    assert laws.degenerate_exponents(stuck) == ["alpha"] and laws.degenerate_exponents(TRUE) == []
    # Inside the bounds, but its bootstrap interval reaches one: not determined either.
    loose = laws.LossSurface(E=1.2, A=1.9e4, B=22.0, alpha=2.45, beta=0.07)
    replicates = pl.DataFrame({"alpha": [2.4, 2.6, 3.0, 3.0, 2.9], "beta": [0.06, 0.07, 0.08, 0.07, 0.07]})
    assert laws.degenerate_exponents(loose) == [] and laws.degenerate_exponents(loose, replicates) == ["alpha"]
    runs = _grid(TRUE)
    fit = laws.fit_all(runs.drop("loss"), _batches(runs, 6, 0.001), ("diagnosis", "drug"), n_resamples=3, seed=1)
    assert laws.fit_caveats(fit) == ""
    fit.surface, fit.allocation, fit.vertices = stuck, None, []
    assert "degenerate" in laws.fit_caveats(fit) and "No IsoFLOP minimum" in laws.fit_caveats(fit)
    row = laws.published_table({"encoder": fit}).row(0, named=True)
    assert "degenerate fit (alpha at a bound)" in row["source"]
    assert row["tokens_per_parameter"] is None and row["a"] is None and row["alpha"] == 3.0


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A small synthetic world's token store and splits, as the scaling-law stage reads them."""
    world = small_world(tmp_path_factory.mktemp("laws"), patients=300, seed=5, max_len=128)
    return {"store": str(world["tokens"]), "splits": str(world["splits_dir"])}


def _context(small_store: dict) -> dict:
    from claimsutil.config import PretrainConfig
    from claimsutil.tokenize import TokenStore

    sizes = {"w16": {"n_layer": 1, "n_head": 1, "n_embd": 16, "lr": 0.01}}
    shared = dataclasses.asdict(PretrainConfig(bf16=True))
    pretrain = {k: v for k, v in shared.items() if k not in ("device", "processes")}
    store = TokenStore(small_store["store"])
    return laws.grid_context(small_store["store"], small_store["splits"], sizes, pretrain, 2048, 0.1,
                             len(store.vocab.tokens), store.config.max_len, {"bf16": False})  # fmt: skip


@pytest.mark.usefixtures("one_thread")
def test_grid_runs_train_the_decoder_by_next_token_and_score_every_next_token(small_store):
    context = _context(small_store)
    n = laws.grid_parameters(context["sizes"], context["vocab_size"], context["max_len"], "next")["w16"]
    run = laws.GridRun(6.0 * n * 3 * 1024, "w16", n, 3 * 1024, 3, tokens_per_step=1024, objective="next")
    assert run.name.startswith("gen-w16-C")
    result = laws.train_grid_run(run, context)
    for batch in result["batches"]:  # every next token: the sums and counts of its families
        assert set(batch) == {"diagnosis", "drug", "time", "other", "next_token"}
        assert batch["next_token"][1] == sum(c for f, (_, c) in batch.items() if f != "next_token") > 0
    total = sum(b["next_token"][0] for b in result["batches"]) / sum(b["next_token"][1] for b in result["batches"])
    assert result["losses"]["next_token"] == pytest.approx(total) and result["losses"]["total"] == pytest.approx(total)
    assert laws.train_grid_run(run, context)["batches"] == result["batches"]  # same run, same numbers
    encoder = laws.train_grid_run(dataclasses.replace(run, objective="masked"), context)
    assert "time" not in encoder["batches"][0] and "next_token" not in encoder["batches"][0]
    # Decoder runs take the generative section's overrides, as the pretrain_gen stages do (here: fp32).
    assert result["precision"] == "fp32" and encoder["precision"] == "bf16"
    # The decoder scores its whole vocabulary at every token: it costs more than the encoder at the same N and D.
    assert laws.expected_cost(run, context) > laws.expected_cost(dataclasses.replace(run, objective="masked"), context)


def test_generative_grid_sizes_must_be_on_the_ladder():
    from claimsutil.config import LawsConfig

    ladder = {"w16": {"n_layer": 2, "n_head": 1, "n_embd": 16, "lr": 0.01}}
    with pytest.raises(ValueError, match="gen_sizes"):
        LawsConfig(sizes=ladder, gen_budgets=(1e9,), gen_sizes=("w99",))
    with pytest.raises(ValueError, match="gen_sizes"):
        LawsConfig(sizes=ladder, gen_budgets=(1e9,))
    assert LawsConfig(sizes=ladder, gen_budgets=(1e9,), gen_sizes=("w16",)).gen_sizes == ("w16",)
