"""The paper-shape benches (bench paper / bench gpu) and the CUDA branches of the training code, on the CPU:
every CUDA branch is taken only where CUDA is, and the GPU bench's path runs end to end on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from claimsutil import bench, finetune, paperbench
from claimsutil import tokenize as tok
from claimsutil.config import PretrainConfig
from claimsutil.model import ClaimsEncoder, config_for, to_device
from claimsutil.train import launch, loop

# The reference study's total parameters per scale (Aratake et al. 2026), at its 1,930-token vocabulary; the
# presets are within 10% (its exact head layout is not published: l is 33.8M here).
PAPER_PARAMETERS = {"xs": 2.2e6, "s": 4.7e6, "m": 11e6, "l": 32e6, "xl": 101e6}


@pytest.fixture
def no_cuda_calls(monkeypatch):
    """Every CUDA-only call fails the test."""

    def forbidden(name: str):
        def call(*args, **kwargs):  # one function per name: torch's tracing rules key on the object
            raise AssertionError(f"torch {name} called on the CPU path")

        return call

    for name in ("synchronize", "set_device", "reset_peak_memory_stats", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, forbidden(name))
    monkeypatch.setattr(torch.Tensor, "pin_memory", forbidden("pin_memory"))


@pytest.fixture(scope="module")
def small_store(tmp_path_factory) -> Path:
    return paperbench.prepare_store(tmp_path_factory.mktemp("paper"), max_len=128, vocab_size=300, patients=400)


def test_paper_presets_have_the_reference_parameter_counts():
    codes = paperbench.PAPER_VOCAB - 4  # every code predicted by the diagnosis or the drug head
    family = torch.tensor([0] * 4 + [1] * (codes // 2) + [2] * (codes - codes // 2))
    for scale, reference in PAPER_PARAMETERS.items():
        model = ClaimsEncoder(config_for("paper", scale, paperbench.PAPER_VOCAB, 512), family)
        assert model.get_num_params(non_embedding=False) == pytest.approx(reference, rel=0.1), scale


def test_paper_vocabulary_keeps_the_most_frequent_codes(small_store):
    store = tok.TokenStore(small_store)
    vocab = store.vocab
    assert len(vocab) == 300 and vocab.tokens[:4] == tok.SPECIAL_TOKENS
    full = tok.build_vocabulary(small_store.parent / "meds", store.subjects, tok.TokenizeConfig(min_count=1))
    cut = min(vocab.counts[4:])
    dropped = set(full.tokens) - set(vocab.tokens)
    assert dropped and all(full.counts[full.id_of[t]] <= cut for t in dropped)
    assert int((np.asarray(store.tokens) == tok.UNK).sum()) > 0  # the dropped codes are [UNK] in the store
    families = [tok.FAMILIES.index(f) for f in vocab.families]
    assert families == sorted(families)  # in build_vocabulary's family order


def test_token_budget_and_projection_follow_the_paper_profile():
    pretrain = paperbench.paper_pretrain_config()
    assert pretrain.min_tokens == 262_144_000 and pretrain.tokens_per_step == 65_536
    assert paperbench.token_budget(pretrain, 1_000_000) == pretrain.min_tokens  # 20 x 1M is below the floor
    assert paperbench.token_budget(pretrain, 50_000_000) == 15_259 * 65_536  # 20 tokens per parameter, whole steps
    assert paperbench.projected_hours(3_600_000, 1000.0) == pytest.approx(1.0)


def test_the_gpu_bench_without_cuda_says_so_and_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(paperbench, "cuda_available", lambda: False)
    assert bench.main(["gpu"]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device" in out and out.strip().splitlines()[-1] == "device=none cuda=unavailable"


def test_the_gpu_bench_path_runs_on_the_cpu_without_cuda_calls(small_store, tmp_path, no_cuda_calls):
    job = {"scale": "xs", "precision": "fp32", "device": "cpu", "store": str(small_store), "work": str(tmp_path),
           "threads": 1, "tokens_per_step": 512, "micro_tokens": 256, "steps": 2, "warmup": 1, "gemm_n": 128,
           "eval_tokens": 2048, "infer_patients": 64}  # fmt: skip
    r = paperbench.run_scale(job)
    assert r["tokens_per_s"] > 0 and r["steps"] == 2 and 0 < r["mfu"] < 1 and r["infer_patients_per_s"] > 0
    assert r["attention"] == "default" and r["gpu_peak_mib"] is None and 0 <= r["batch_share"] < 1
    assert r["vocab"] == 300


def test_bench_gpu_on_cpu_prints_a_line_per_scale(tmp_path, capsys):
    argv = ["gpu", "--device", "cpu", "--scales", "xs", "--precisions", "fp32", "--steps", "1", "--warmup", "1",
            "--tokens-per-step", "512", "--micro-tokens", "256", "--max-len", "128", "--vocab", "300", "--patients",
            "400", "--gemm-n", "128", "--eval-tokens", "2048", "--infer-patients", "64", "--threads", "1",
            "--out", str(tmp_path)]  # fmt: skip
    assert bench.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(line for line in out if line.startswith("scale=xs"))
    assert "error=" not in line and "projected_h=" in line and "reference_h=14.4" in line
    assert out[-1].startswith("device=cpu projected_hours=xs:") and out[-1].endswith("h(fp32)")


def test_unknown_scale_or_precision_is_an_error():
    with pytest.raises(SystemExit, match="unknown scale"):
        bench.main(["paper", "--scales", "xs,xxl"])
    with pytest.raises(SystemExit, match="fp32 and/or bf16"):
        bench.main(["paper", "--precisions", "fp16"])


# --- CUDA branches, decided without a GPU ----------------------------------------------------------------


def test_setup_picks_cuda_only_where_cuda_is(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", calls.append)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loop._setup_distributed("auto")[2] == torch.device("cpu") and calls == []
    assert finetune.device_for("auto") == torch.device("cpu")
    assert launch._forks_on_cpu(PretrainConfig(device="auto", num_threads=1))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert loop._setup_distributed("auto")[2] == torch.device("cuda", 0)
    assert calls == [torch.device("cuda", 0)]  # the GPU is set before any process group starts
    assert loop._setup_distributed("cpu")[2] == torch.device("cpu") and len(calls) == 1
    assert finetune.device_for("auto") == torch.device("cuda")
    assert not launch._forks_on_cpu(PretrainConfig(device="auto", num_threads=1))  # CUDA cannot be forked into


def test_batches_go_to_a_gpu_pinned_and_non_blocking(monkeypatch, no_cuda_calls):
    batch = {"tokens": torch.arange(6).view(2, 3), "ages": torch.zeros(2, 3)}
    moved = to_device(batch, torch.device("cpu"))
    assert all(moved[k] is batch[k] for k in batch)  # the CPU path: the same tensors, nothing pinned
    log = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: log.append("pin") or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: log.append((str(a[0]), k)) or self)
    to_device(batch, torch.device("cuda", 0))
    assert log == ["pin", ("cuda:0", {"non_blocking": True})] * 2


def test_attention_kernels_on_cuda_allow_only_flash_and_efficient():
    assert torch.backends.cuda.math_sdp_enabled()
    with paperbench.attention_kernels(torch.device("cuda")):
        assert not torch.backends.cuda.math_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.math_sdp_enabled()
    with paperbench.attention_kernels(torch.device("cpu")):
        assert torch.backends.cuda.math_sdp_enabled()
