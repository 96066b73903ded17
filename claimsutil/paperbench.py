"""Pretraining and scoring at the reference study's model shapes: tokens/s, memory, MFU and projected hours.

    python -m claimsutil.bench paper [--scales xs,s,m,l,xl] [--precisions fp32,bf16] [--steps 2]
                                     [--tokens-per-step 4096] [--threads 2]          (this machine's CPU)
    python -m claimsutil.bench gpu   [--scales xs,s,m,l,xl] [--precisions bf16] [--steps 10]
                                     [--tokens-per-step 65536]                        (one CUDA GPU)

Each scale of the paper profile (`claimsutil.model.SCALES["paper"]`: 2.2M-101M parameters at the reference
study's 1,930-token vocabulary) runs, in its own spawned process, WARMUP untimed and STEPS timed optimizer
steps of the study's own pretraining step (`train.train_step`: packed rows of max_len 512, masked-code
prediction, AdamW) on a small synthetic token store whose vocabulary is its 1,926 most frequent codes (the
rest [UNK]), so the parameter counts are the paper's. Per scale and precision it prints real tokens/s, seconds
per step, the peak memory (CPU: resident memory of the process; GPU: the most CUDA memory allocated), model
FLOPs utilisation against the same run's best large matmul in that precision, the paper profile's token
budget for that model (`pretrain.tokens_per_parameter` x non-embedding parameters within
[min_tokens, max_tokens]) and the hours it would take at the measured speed beside the reference study's
reported hours, and the same model scoring patients as fine-tuning's evaluation does (patients/s).

`gpu` without CUDA says so and exits 0. On CUDA the attention runs with the flash and memory-efficient SDPA
kernels allowed (the model passes a block-diagonal mask, which the memory-efficient kernel takes; when
neither accepts the inputs the line says so and the default dispatch is timed), bf16 autocast, batches
copied through pinned memory without blocking, and one host sync per step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import shutil
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

PAPER_VOCAB = 1930  # the reference study's vocabulary (its parameter counts are at this size)
# Hours the reference study reports for pretraining its models (Aratake et al. 2026), by our scale name.
REFERENCE_HOURS = {"xs": 14.4, "m": 53.9, "xl": 232.2}
SCALE_NAMES = ("xs", "s", "m", "l", "xl")


# ------------------------------------------------------------------------------------------------ the data
def paper_vocabulary(vocab, size: int):
    """VOCAB cut to its SIZE - 4 most frequent codes (ties by token) and the four specials, in the family order
    `build_vocabulary` uses; every other code becomes [UNK] in a store built with it."""
    from claimsutil import tokenize as tok

    n_special = len(tok.SPECIAL_TOKENS)
    codes = sorted(range(n_special, len(vocab)), key=lambda i: (-vocab.counts[i], vocab.tokens[i]))
    keep = sorted(codes[: max(0, size - n_special)], key=lambda i: (tok.FAMILIES.index(vocab.families[i]),
                                                                   vocab.tokens[i]))  # fmt: skip
    ids = list(range(n_special)) + keep
    return dataclasses.replace(
        vocab,
        tokens=tuple(vocab.tokens[i] for i in ids),
        families=tuple(vocab.families[i] for i in ids),
        counts=tuple(vocab.counts[i] for i in ids),
    )


def prepare_store(work: Path, max_len: int, vocab_size: int, patients: int = 3000) -> Path:
    """A synthetic token store of PATIENTS patients with a VOCAB_SIZE-token vocabulary (not timed)."""
    import polars as pl

    from claimsutil import tokenize as tok
    from claimsutil.config import SynthParams
    from claimsutil.meds import shard_paths
    from claimsutil.synth import generate

    block = min(1000, patients)
    params = SynthParams(patients=patients, seed=1, block_size=block, shard_size=block * math.ceil(patients / block),
                         workers=1)  # fmt: skip
    generate(params, work / "meds", work / "meds_truth", progress=False)
    ids = pl.concat([pl.read_parquet(p, columns=["subject_id"]) for p in shard_paths(work / "meds")])["subject_id"]
    config = tok.TokenizeConfig(max_len=max_len, min_count=1)
    vocab = tok.build_vocabulary(work / "meds", ids.unique().to_numpy(), config)
    if len(vocab) < vocab_size:
        raise ValueError(f"the bench's {patients:,} synthetic patients hold {len(vocab)} tokens, fewer than the "
                         f"{vocab_size} asked for (--vocab)")  # fmt: skip
    tok.build_store(work / "meds", paper_vocabulary(vocab, vocab_size), work / "tokens", config)
    return work / "tokens"


# ------------------------------------------------------------------------------------------------ helpers
def attention_kernels(device):
    """The context the timed steps run in: on CUDA only the flash and memory-efficient SDPA kernels allowed;
    elsewhere nothing."""
    if device.type != "cuda":
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])


def token_budget(pretrain, non_embedding: int) -> int:
    """Real tokens the profile's token rule gives a model of NON_EMBEDDING parameters (whole steps)."""
    return pretrain.steps_for(non_embedding) * pretrain.tokens_per_step


def projected_hours(tokens: int, tokens_per_s: float) -> float:
    return tokens / tokens_per_s / 3600 if tokens_per_s > 0 else math.inf


# ------------------------------------------------------------------------------------------------ one scale
def run_scale(job: dict) -> dict:
    """JOB's scale and precision: timed pretraining steps and scoring. Runs in its own process."""
    import torch

    from claimsutil import tokenize as tok
    from claimsutil.batching import PackedRows
    from claimsutil.bench import gemm_peak_flops
    from claimsutil.config import FinetuneConfig, PretrainConfig
    from claimsutil.finetune import build_classifier, predict_proba
    from claimsutil.model import ClaimsEncoder, config_for
    from claimsutil.train import Run, RunState, make_optimizer, train_step
    from claimsutil.train.loop import model_flops_per_token

    device = torch.device(job["device"])
    if device.type == "cpu":
        torch.set_num_threads(job["threads"])
    bf16 = job["precision"] == "bf16"
    store = tok.TokenStore(job["store"])
    family = torch.as_tensor(store.vocab.family_ids, dtype=torch.long)
    max_len = store.config.max_len
    model_config = config_for("paper", job["scale"], vocab_size=len(family), max_len=max_len)
    config = PretrainConfig(profile="paper", tokens_per_step=job["tokens_per_step"], micro_tokens=job["micro_tokens"],
                            width_step=0, bf16=bf16, device=device.type, max_steps=job["warmup"] + job["steps"],
                            processes=1)  # fmt: skip
    torch.manual_seed(config.seed)
    model = ClaimsEncoder(model_config, family).to(device).train()
    optimizer = make_optimizer(model, config)
    stream = PackedRows(store, np.arange(len(store)), max_len, config.seed, config.width_step)
    run, state = Run(model_config, config, Path(job["work"]), 0, 1, device), RunState()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    kernels, kernel_note = attention_kernels, "flash/efficient" if device.type == "cuda" else "default"

    def step() -> None:
        rows, state.position = stream.next_step(state.position, config.tokens_per_step)
        optimizer.zero_grad(set_to_none=True)
        with kernels(device):
            train_step(run, model, None, stream, rows, state)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        state.step += 1

    try:
        step()
    except RuntimeError as e:  # neither fast kernel takes these inputs: time the default dispatch, say so
        if device.type != "cuda":
            raise
        kernels, kernel_note = (lambda _d: nullcontext()), f"default (flash/efficient refused: {str(e)[:80]})"
        step()
    for _ in range(job["warmup"] - 1):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before, position = dict(state.counters), state.position
    t0 = time.perf_counter()
    for _ in range(job["steps"]):
        step()
    sync()
    seconds = time.perf_counter() - t0
    # The host's part of those steps: building their rows' tensors again, alone (the GPU waits for it; a
    # data-loading worker could overlap it).
    t0 = time.perf_counter()
    for _ in range(job["steps"]):
        rows, position = stream.next_step(position, config.tokens_per_step)
        for width, members in stream.groups(rows):
            stream.tensors([rows[i] for i in members], width)
    batch_s = time.perf_counter() - t0
    counters = {k: state.counters[k] - before.get(k, 0) for k in state.counters}
    tokens_per_s = counters["tokens"] / seconds
    flops = model_flops_per_token(model, counters)
    peak_dtype = torch.bfloat16 if bf16 else torch.float32
    peak = gemm_peak_flops(job["gemm_n"], dtype=peak_dtype, device=device)
    out = {
        "parameters": model.get_num_params(non_embedding=False),
        "non_embedding": model.get_num_params(non_embedding=True),
        "vocab": len(family),
        "steps": job["steps"],
        "tokens_per_s": tokens_per_s,
        "step_s": seconds / job["steps"],
        "batch_share": batch_s / seconds,
        "padding": counters["pad"] / max(counters["processed"], 1),
        "mfu": flops * tokens_per_s / peak,
        "peak_tflops": peak / 1e12,
        "attention": kernel_note,
        "gpu_peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
    }
    # Scoring, as fine-tuning's evaluation does: the encoder under a classification head, eval_tokens per pass.
    finetune = FinetuneConfig(max_len=max_len, eval_tokens=job["eval_tokens"], device=device.type, bf16=bf16)
    classifier = build_classifier(model_config, family, model.state_dict(), finetune, 0).to(device)
    seqs = [store.sequence(i, max_len=max_len) for i in range(min(job["infer_patients"], len(store)))]
    with kernels(device):
        predict_proba(classifier, seqs[:64], max_len, finetune.eval_tokens, bf16)  # warm-up
        sync()
        t0 = time.perf_counter()
        predict_proba(classifier, seqs, max_len, finetune.eval_tokens, bf16)
        sync()
    out["infer_patients_per_s"] = len(seqs) / (time.perf_counter() - t0)
    return out


def _child(job: dict, result_file: str) -> None:
    try:
        out = run_scale(job)
        Path(result_file).write_text(json.dumps({"ok": True, **out}))
    except Exception as e:  # reported by the parent with the scale's name, never a bare traceback
        Path(result_file).write_text(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))


def run_spawned(job: dict) -> dict:
    """JOB in a spawned process: run_scale's result with "rss_peak_mib" (the process's resident peak)."""
    from claimsutil.bench import PeakRSS

    result_file = Path(job["work"]) / f".{job['scale']}-{job['precision']}.json"
    result_file.unlink(missing_ok=True)
    process = mp.get_context("spawn").Process(target=_child, args=(job, str(result_file)))
    with PeakRSS() as rss:
        process.start()
        process.join()
    if result_file.is_file():
        result = json.loads(result_file.read_text())
    else:
        result = {"ok": False, "error": f"the process exited with code {process.exitcode} (killed?)"}
    return result | {"rss_peak_mib": rss.mib}


# ------------------------------------------------------------------------------------------------ the bench
def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def paper_pretrain_config():
    """The paper profile's pretrain section (its token rule), read from the project's profiles/paper.yaml."""
    from claimsutil.config import load_params, project_root
    from claimsutil.scalebench import scale_params

    with tempfile.TemporaryDirectory(prefix="claims-paper-") as tmp:
        return load_params(scale_params(project_root(), Path(tmp), "paper")).pretrain


def bench_shapes(args: argparse.Namespace, device_name: str) -> str:
    import torch

    from claimsutil.model import native_bf16

    scales = [s.strip() for s in args.scales.split(",") if s.strip()]
    unknown = sorted(set(scales) - set(SCALE_NAMES))
    if unknown:
        raise SystemExit(f"error: unknown scale(s) {unknown}; choose from {', '.join(SCALE_NAMES)}")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if set(precisions) - {"fp32", "bf16"}:
        raise SystemExit(f"error: --precisions takes fp32 and/or bf16 (got {args.precisions!r})")
    device = torch.device(device_name)
    if "bf16" in precisions and not native_bf16(device):
        print(f"bf16: {device_name} has no native bf16 matmuls (emulated bf16 is slower than fp32): skipped")
        precisions = [p for p in precisions if p != "bf16"] or ["fp32"]
    pretrain = paper_pretrain_config()
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="claims-paper-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, str], dict] = {}
    try:
        print(f"tokenizing {args.patients:,} synthetic patients (not timed): max_len {args.max_len}, "
              f"vocabulary {args.vocab}", flush=True)  # fmt: skip
        store = prepare_store(work, args.max_len, args.vocab, args.patients)
        if device.type == "cuda":
            print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
                  f"CUDA {torch.version.cuda}", flush=True)  # fmt: skip
        else:
            print(f"device: cpu, {args.threads} thread(s), torch {torch.__version__}", flush=True)
        for scale in scales:
            for precision in precisions:
                job = {"scale": scale, "precision": precision, "device": device_name, "store": str(store),
                       "work": str(work), "threads": args.threads, "tokens_per_step": args.tokens_per_step,
                       "micro_tokens": min(args.micro_tokens, args.tokens_per_step), "steps": args.steps,
                       "warmup": max(1, args.warmup), "gemm_n": args.gemm_n,
                       "eval_tokens": args.eval_tokens, "infer_patients": args.infer_patients}  # fmt: skip
                r = run_spawned(job)
                results[(scale, precision)] = r
                print(result_line(scale, precision, r, pretrain), flush=True)
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    parts = []
    for scale in scales:
        done = [(p, results[(scale, p)]) for p in precisions if results[(scale, p)]["ok"]]
        if not done:
            parts.append(f"{scale}:failed")
            continue
        p, best = max(done, key=lambda pr: pr[1]["tokens_per_s"])
        hours = projected_hours(token_budget(pretrain, best["non_embedding"]), best["tokens_per_s"])
        parts.append(f"{scale}:{hours:.1f}h({p})")
    return f"device={device_name} projected_hours={','.join(parts)}"


def result_line(scale: str, precision: str, r: dict, pretrain) -> str:
    if not r["ok"]:
        return f"scale={scale} precision={precision} error={r['error']!r}"
    budget = token_budget(pretrain, r["non_embedding"])
    hours = projected_hours(budget, r["tokens_per_s"])
    memory = r["gpu_peak_mib"] if r["gpu_peak_mib"] is not None else r["rss_peak_mib"]
    reference = f" reference_h={REFERENCE_HOURS[scale]}" if scale in REFERENCE_HOURS else ""
    return (f"scale={scale} precision={precision} parameters={r['parameters']:,} non_embedding={r['non_embedding']:,} "
            f"tokens_per_s={r['tokens_per_s']:,.0f} step_s={r['step_s']:.3f} peak_mib={memory:,.0f} "
            f"mfu={r['mfu']:.3f} matmul_peak_tflops={r['peak_tflops']:.2f} padding={r['padding']:.3f} "
            f"host_batch_share={r['batch_share']:.3f} attention={r['attention']!r} budget_tokens={budget:,} "
            f"projected_h={hours:,.1f}{reference} infer_patients_per_s={r['infer_patients_per_s']:,.0f}")  # fmt: skip


def bench_paper(args: argparse.Namespace) -> str:
    """`bench paper`: the paper shapes on this machine's CPU."""
    return bench_shapes(args, "cpu")


def bench_gpu(args: argparse.Namespace) -> str:
    """`bench gpu`: the paper shapes on CUDA; without CUDA it says so (exit 0). --device cpu runs the same
    path on the CPU (what the tests do)."""
    if args.device == "cuda" and not cuda_available():
        print("no CUDA device: torch.cuda.is_available() is False (torch "
              f"{__import__('torch').__version__}); run this bench on a machine with an NVIDIA GPU")  # fmt: skip
        return "device=none cuda=unavailable"
    return bench_shapes(args, args.device)


def add_arguments(parser: argparse.ArgumentParser, gpu: bool) -> None:
    parser.add_argument("--scales", default=",".join(SCALE_NAMES), help="paper scales, smallest first")
    parser.add_argument("--precisions", default="bf16" if gpu else "fp32,bf16", help="fp32 and/or bf16")
    parser.add_argument("--steps", type=int, default=10 if gpu else 2, help="timed optimizer steps per scale")
    parser.add_argument("--warmup", type=int, default=3 if gpu else 1, help="untimed steps before them")
    parser.add_argument("--tokens-per-step", type=int, default=65536 if gpu else 4096,
                        help="real tokens per optimizer step (the paper profile: 65536)")  # fmt: skip
    parser.add_argument("--micro-tokens", type=int, default=16384 if gpu else 4096, help="row slots per micro-batch")
    parser.add_argument("--max-len", type=int, default=512, help="the paper profile's max_len")
    parser.add_argument("--vocab", type=int, default=PAPER_VOCAB, help="vocabulary size (the reference study's)")
    parser.add_argument("--patients", type=int, default=3000, help="synthetic patients of the bench's store")
    parser.add_argument("--eval-tokens", type=int, default=65536 if gpu else 16384, help="tokens per scoring pass")
    parser.add_argument("--infer-patients", type=int, default=2048 if gpu else 256, help="patients scored per scale")
    parser.add_argument("--gemm-n", type=int, default=8192 if gpu else 2048, help="matmul size of the peak")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (CPU)")
    parser.add_argument("--out", default=None, help="work folder (default: a temporary one, deleted)")
    if gpu:
        parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                            help="cpu: the same path on the CPU (tests)")  # fmt: skip
