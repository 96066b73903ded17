"""The non-HuggingFace parts of the pretraining benchmark (transformers is not in the test environment)."""

import numpy as np
import pytest
import torch

from claimsutil.batching import pack_rows
from claimsutil.bench import gemm_peak_flops, padding_share


def test_gemm_peak_is_a_positive_rate_counting_2n3_flops(monkeypatch):
    times = iter([0.0, 0.5, 10.0, 10.25, 20.0, 21.0])  # three matmuls of 0.5 s, 0.25 s and 1 s
    monkeypatch.setattr("claimsutil.bench.time.perf_counter", lambda: next(times))
    assert gemm_peak_flops(n=64, repeats=3) == pytest.approx(2 * 64**3 / 0.25)  # the best one


def test_gemm_peak_measures_this_machine():
    peak = gemm_peak_flops(n=128, repeats=2)
    assert np.isfinite(peak) and peak > 1e6
    assert gemm_peak_flops(n=128, repeats=1, dtype=torch.bfloat16) > 0


def test_padding_share_of_packed_rows():
    lengths = np.array([100, 156, 50, 30, 256])
    rows = pack_rows(lengths, np.arange(5), row_len=256)
    assert sorted(sorted(r) for r in rows) == [[0, 1], [2, 3], [4]]
    share = padding_share([[int(lengths[p]) for p in r] for r in rows], row_len=256)
    assert share == pytest.approx(1 - 592 / (3 * 256))


def test_padding_share_of_dynamic_padding_pads_to_the_longest():
    # One patient per row, padded to the longest: 3 rows of 10 slots, 16 real tokens.
    assert padding_share([[10], [4], [2]]) == pytest.approx(1 - 16 / 30)
    assert padding_share([]) == 0.0
    assert padding_share([[5], [5]]) == 0.0


def test_bench_shards_prints_the_speedup_and_the_same_bytes(generated_meds, capsys):
    from claimsutil import bench

    assert bench.main(["shards", "--meds", str(generated_meds), "--workers", "1,2", "--max-len", "64"]) == 0
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if line.startswith("workers=")]
    assert [line.split()[0] for line in lines] == ["workers=1", "workers=2"]
    assert all("same_bytes=True" in line for line in lines) and "speedup=1.00" in lines[0]
    assert out[-1].startswith("speedup_2=")
