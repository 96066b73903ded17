"""The scale bench (python -m claimsutil.bench scale): its parameters, growth fit, errors and lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from claimsutil import bench, scalebench

ROOT = Path(__file__).resolve().parents[1]


def test_growth_exponent_recovers_planted_powers():
    ns = [100_000, 500_000, 2_300_000]
    assert scalebench.growth_exponent(ns, [3e-5 * n for n in ns]) == pytest.approx(1.0)
    assert scalebench.growth_exponent(ns, [1e-9 * n**2 for n in ns]) == pytest.approx(2.0)
    assert scalebench.growth_exponent(ns, [1e-3 * n**1.15 for n in ns]) == pytest.approx(1.15)
    assert scalebench.growth_exponent([100_000], [5.0]) is None


def test_params_are_the_profile_at_n_patients(tmp_path):
    path = scalebench.scale_params(ROOT, tmp_path, "paper")
    params = scalebench._load(path, 130_000, 7, 2)
    assert params.profile == "paper" and params.cohort.test_negatives is None  # every test patient scored
    assert params.synth.patients == 130_000 and params.synth.workers == 2 and params.cohort.workers == 2
    assert params.synth.shard_size % params.synth.block_size == 0 and params.synth.shard_size <= 100_000
    assert params.cohort.oracle_replicates == 7
    assert params.cohort.budgets == (100,) and all(t.budgets == (100,) for t in params.tasks)
    # 0: the profile's own replicates
    assert scalebench._load(path, 130_000, 0, 2).cohort.oracle_replicates == 200
    assert (ROOT / "params.yaml").read_text() != path.read_text()  # the project's params.yaml is untouched


def test_a_failing_stage_is_reported_by_name_not_a_traceback(tmp_path):
    path = scalebench.scale_params(ROOT, tmp_path, "tiny")
    result = scalebench.run_stage("splits", tmp_path, path, 2_500, None, 1, "hypertension")  # no data/meds yet
    assert result["ok"] is False and "meds" in result["error"] and result["seconds"] > 0


def test_scale_bench_prints_a_line_per_stage_and_the_growth(tmp_path, capsys):
    argv = ["scale", "--patients", "1000,2000", "--profile", "tiny", "--stages", "synthesize,splits", "--workers",
            "1", "--out", str(tmp_path)]  # fmt: skip
    assert bench.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if line.startswith("stage=")]
    assert [line.split()[0:2] for line in lines] == [
        ["stage=synthesize", "patients=1000"], ["stage=splits", "patients=1000"],
        ["stage=synthesize", "patients=2000"], ["stage=splits", "patients=2000"],
    ]  # fmt: skip
    assert all("error=" not in line and "peak_rss_mib=" in line for line in lines)
    assert any(line.startswith("growth synthesize: seconds ~ N^") for line in out)
    assert out[-1].startswith("stages=synthesize:") and "max_rss_mib=" in out[-1]


def test_unknown_stage_is_an_error():
    with pytest.raises(SystemExit, match="unknown stage"):
        bench.main(["scale", "--stages", "synthesize,tokenise"])
