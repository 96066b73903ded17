"""Benchmarks of the study's heavy steps. They print figures; they assert nothing.

    python -m claimsutil.bench synth [--patients 100000] [--workers 2]
    python -m claimsutil.bench features [--patients 100000] [--meds DIR]
    python -m claimsutil.bench pretrain [--profile demo --scale xl --seconds 20 --threads 1 --bf16 false
                                         --width-step 0 --micro-tokens 4096 --compile]  (needs the bench extra)
    python -m claimsutil.bench generate [--scale xl --batch 64 --prompt 64 --new 64 --threads 1]  (bench extra)
    python -m claimsutil.bench probe [--scales m,l,xl --seeds 1,2 --steps 600 --tokens-per-step 4096]
    python -m claimsutil.bench scale --patients 100000,500000,2300000 [--profile paper]  (claimsutil.scalebench)
    python -m claimsutil.bench shards --meds DIR [--workers 1,2]  (tokenize's shards over a process pool)
    python -m claimsutil.bench paper [--scales xs,s,m,l,xl --precisions fp32,bf16]      (claimsutil.paperbench)
    python -m claimsutil.bench gpu [--scales xs,s,m,l,xl --steps 10]  (CUDA; without it says so and exits 0)

The last line of each subcommand is machine-readable, e.g. `events_per_s=1234567 peak_rss_mib=812`.
Peak RSS is sampled over the whole process tree (the parent and its worker processes together).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil

from claimsutil import paperbench, scalebench


class PeakRSS:
    """Samples the summed resident memory of this process and its children until stopped."""

    def __init__(self, interval: float = 0.05):
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        me = psutil.Process(os.getpid())
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:  # exited between listing and reading
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._sample())

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def bench_synth(args: argparse.Namespace) -> str:
    from claimsutil.config import SynthParams
    from claimsutil.synth import generate

    params = SynthParams(
        patients=args.patients,
        seed=args.seed,
        block_size=args.block_size,
        shard_size=args.shard_size,
        workers=args.workers,
    )
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="claims-bench-"))
    print(f"generating {params.patients:,} patients with {params.workers} worker(s): "
          f"{dataclasses.asdict(params)}")  # fmt: skip
    try:
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            stats = generate(params, work / "meds", work / "meds_truth", progress=not args.no_progress)
            seconds = time.perf_counter() - t0
        size = sum(p.stat().st_size for p in (work / "meds").rglob("*.parquet"))
        truth = sum(p.stat().st_size for p in (work / "meds_truth").rglob("*.parquet"))
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"events={stats.events:,} events_per_patient={stats.events / stats.patients:.1f} "
        f"shards={stats.shards} seconds={seconds:.1f} patients_per_s={stats.patients / seconds:,.0f}"
    )
    print(f"meds_size_mib={size / 2**20:.1f} truth_size_mib={truth / 2**20:.1f}")  # fmt: skip
    return f"events_per_s={stats.events / seconds:.0f} peak_rss_mib={rss.mib:.0f}"


def stand_in_labels(meds_root: str | Path, outcome_prefix: str = "ICD10/I10"):
    """One label row per subject with timed events: prediction_time = the time of the subject's median event
    (the lower one), boolean_value = any OUTCOME_PREFIX record after it. A stand-in for the cohort module's
    labels, for benchmarks and tests."""
    import polars as pl

    from claimsutil.meds import shard_paths

    parts = []
    for path in shard_paths(meds_root):
        lf = pl.scan_parquet(path, hive_partitioning=False).select("subject_id", "time", "code")
        timed = lf.filter(pl.col("time").is_not_null() & (pl.col("code") != "MEDS_BIRTH"))
        median = timed.group_by("subject_id").agg(
            prediction_time=pl.col("time").sort().get((pl.len() - 1) // 2).cast(pl.Datetime("us"))
        )
        outcome = pl.col("code").str.starts_with(outcome_prefix) & (pl.col("time") > pl.col("prediction_time"))
        labels = (
            timed.join(median, on="subject_id")
            .group_by("subject_id", "prediction_time")
            .agg(boolean_value=outcome.any())
        )
        parts.append(labels.collect())
    return pl.concat(parts).sort("subject_id")


def _prepare_features_input(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """Generate the dataset (unless --meds) and write the stand-in labels; runs in a child process so that
    the memory it leaves behind does not count in the feature benchmark's peak RSS."""
    from claimsutil.config import SynthParams
    from claimsutil.synth import generate

    root = Path(args.meds) if args.meds else work / "meds"
    if not args.meds:
        params = SynthParams(patients=args.patients, seed=args.seed, block_size=args.block_size,
                             shard_size=args.shard_size, workers=args.workers)  # fmt: skip
        print(f"generating {params.patients:,} patients (not timed): {dataclasses.asdict(params)}", flush=True)
        generate(params, root, work / "meds_truth", progress=not args.no_progress)
    stand_in_labels(root).write_parquet(work / "labels.parquet")
    return root, work / "labels.parquet"


def bench_features(args: argparse.Namespace) -> str:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np
    import polars as pl

    from claimsutil.features import FeatureConfig, count_features_with_stats, fit_vocabulary
    from claimsutil.meds import shard_paths

    work = Path(tempfile.mkdtemp(prefix="claims-bench-"))
    try:
        with ProcessPoolExecutor(1, mp.get_context("spawn")) as pool:
            root, labels_path = pool.submit(_prepare_features_input, args, work).result()
        labels = pl.read_parquet(labels_path)
        train = labels.filter(pl.Series(np.random.default_rng(args.seed).random(labels.height) < args.train_fraction))
        print(f"dataset: {len(shard_paths(root))} shard(s); labels: {labels.height:,} rows, positive rate "
              f"{labels['boolean_value'].mean():.3f}; vocabulary fitted on {train.height:,} rows")  # fmt: skip
        rss_before = psutil.Process(os.getpid()).memory_info().rss / 2**20
        with PeakRSS() as rss:
            t0 = time.perf_counter()
            vocab = fit_vocabulary(root, train, FeatureConfig(), progress=not args.no_progress)
            t1 = time.perf_counter()
            X, stats = count_features_with_stats(root, labels, vocab, progress=not args.no_progress)
            t2 = time.perf_counter()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    matrix_mib = (X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**20
    print(f"vocabulary: {vocab.n_columns:,} columns ({len(vocab.codes):,} codes, {len(vocab.suspected):,} suspected, "
          f"{len(vocab.hospitals)} hospitals); {vocab.rare_codes:,} of {vocab.codes_seen:,} codes below "
          f"{vocab.config.min_code_patients} rows left out ({vocab.rare_code_records:,} records)")  # fmt: skip
    print(f"counting: {stats.summary()}")
    print(f"matrix: rows={X.shape[0]:,} columns={X.shape[1]:,} nonzeros={X.nnz:,} "
          f"nonzeros_per_row={X.nnz / max(X.shape[0], 1):.1f} size_mib={matrix_mib:.1f} dtype={X.dtype}")  # fmt: skip
    print(f"seconds: vocabulary={t1 - t0:.2f} features={t2 - t1:.2f} total={t2 - t0:.2f}")
    print(f"memory: rss_before_mib={rss_before:.0f} peak_rss_mib={rss.mib:.0f} matrix_mib={matrix_mib:.1f} "
          f"matrix_share_of_peak={matrix_mib / rss.mib:.1%}")  # fmt: skip
    return f"patients_per_s={labels.height / (t2 - t0):.0f} peak_rss_mib={rss.mib:.0f}"


# ------------------------------------------------------------------------------------------- pretrain


def bench_shards(args: argparse.Namespace) -> str:
    """The token store of a MEDS dataset built with its shards mapped over a process pool of each worker count:
    seconds, speed-up over one worker and whether the bytes are the same."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    import polars as pl

    from claimsutil import tokenize as tok
    from claimsutil.meds import Events

    events = Events(args.meds)
    workers = [int(w) for w in str(args.workers).split(",")]
    ids = pl.concat([events.scan(p).select("subject_id").unique().collect() for p in events.paths])["subject_id"]
    vocab = tok.build_vocabulary(events, ids.to_numpy(), tok.TokenizeConfig(max_len=args.max_len))
    work = Path(tempfile.mkdtemp(prefix="claims-bench-"))
    print(f"{len(events.paths)} shards, {ids.len():,} patients, vocabulary {len(vocab):,}: {args.meds}", flush=True)
    seconds, stores = {}, {}
    try:
        for w in workers:
            with PeakRSS() as rss, ProcessPoolExecutor(w, mp_context=mp.get_context("spawn")) as pool:
                t0 = time.perf_counter()
                tok.build_store(events, vocab, work / f"w{w}", map_fn=pool.map)
                seconds[w] = time.perf_counter() - t0
            stores[w] = {p.name: p.read_bytes() for p in sorted((work / f"w{w}").glob("*.npy"))}
            same = stores[w] == stores[workers[0]]
            print(f"workers={w} seconds={seconds[w]:.1f} speedup={seconds[workers[0]] / seconds[w]:.2f} "
                  f"peak_rss_mib={rss.mib:.0f} same_bytes={same}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return " ".join(f"speedup_{w}={seconds[workers[0]] / seconds[w]:.2f}" for w in workers[1:]) or "speedup=1.00"


def gemm_peak_flops(n: int = 2048, repeats: int = 5, dtype=None, device=None) -> float:
    """FLOP/s of the best of REPEATS (n x n) @ (n x n) matmuls in DTYPE (float32) on DEVICE (the CPU): the
    practical peak (on CPU at the current torch thread count), the denominator of MFU."""
    import torch

    dtype, device = dtype or torch.float32, device or torch.device("cpu")
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.mm(a, b)  # warm-up: thread pool and kernel selection
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def padding_share(lengths_per_row: list[list[int]], row_len: int | None = None) -> float:
    """Share of processed token slots that are padding: rows of ROW_LEN slots (packed), or, with row_len None,
    each row padded to the longest of the batch (dynamic padding, one patient per row)."""
    real = sum(sum(row) for row in lengths_per_row)
    width = row_len if row_len is not None else max((sum(row) for row in lengths_per_row), default=0)
    slots = width * len(lengths_per_row)
    return 1.0 - real / slots if slots else 0.0


def _prepare_token_store(work: Path, max_len: int):
    """A small synthetic MEDS dataset tokenized into WORK/tokens (not timed)."""
    import polars as pl

    from claimsutil import tokenize as tok
    from claimsutil.config import SynthParams
    from claimsutil.meds import shard_paths
    from claimsutil.synth import generate

    params = SynthParams(patients=3000, seed=1, block_size=1000, shard_size=3000, workers=1)
    generate(params, work / "meds", work / "meds_truth", progress=False)
    ids = pl.concat([pl.read_parquet(p, columns=["subject_id"]) for p in shard_paths(work / "meds")])["subject_id"]
    config = tok.TokenizeConfig(max_len=max_len)
    vocab = tok.build_vocabulary(work / "meds", ids.unique().to_numpy(), config)
    tok.build_store(work / "meds", vocab, work / "tokens", config)
    return tok.TokenStore(work / "tokens")


def _hf_model(config, vocab_size: int):
    """BertForMaskedLM of the same width, depth, heads, FFN, vocabulary and length as our CONFIG."""
    from transformers import BertConfig, BertForMaskedLM

    hf_config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=config.n_embd,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        intermediate_size=config.ffn_mult * config.n_embd,
        max_position_embeddings=config.max_len,
        hidden_dropout_prob=config.dropout,
        attention_probs_dropout_prob=config.dropout,
        pad_token_id=0,
    )
    return BertForMaskedLM(hf_config)


def _hf_optimizer(model, config):
    """AdamW as make_optimizer: decay on matmul weights, none on biases, LayerNorms and embeddings."""
    import torch

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embeddings" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, foreach=True)


def _hf_batch(stream, rows: list[list[int]], family, config, step: int):
    """The step's patients as HF's users feed them: one per row, padded to the longest (dynamic padding),
    labels -100 except at the masked positions."""
    import torch

    from claimsutil.model import PAD_ID, masking
    from claimsutil.train import step_generator

    patients = [p for row in rows for p in row]
    seqs = [stream.store.sequence(int(stream.indices[p]), max_len=stream.row_len)[0] for p in patients]
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.from_numpy(s.astype("int64"))
    corrupted, _, labels = masking(tokens, family, config.mask_rate, step_generator(config.seed, step))
    return {"input_ids": corrupted, "attention_mask": (tokens != PAD_ID).long(), "labels": labels}


def _timed_steps(step_fns: dict, seconds: float, warmup: int) -> dict[str, tuple[int, int, float]]:
    """Runs each of STEP_FNS (each returns the real tokens of its step) WARMUP times untimed, then in turns, one
    step each, until every one has run SECONDS: taking turns gives both the same machine load. {name: (steps,
    real tokens, seconds)}."""
    for fn in step_fns.values():
        for _ in range(warmup):
            fn()
    done = dict.fromkeys(step_fns, (0, 0, 0.0))
    while min(t for _, _, t in done.values()) < seconds:
        for name, fn in step_fns.items():
            t0 = time.perf_counter()
            real = fn()
            steps, total, elapsed = done[name]
            done[name] = (steps + 1, total + real, elapsed + time.perf_counter() - t0)
    return done


def _op_table(step_fn, steps: int = 3, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step_fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def bench_pretrain(args: argparse.Namespace) -> str:
    import numpy as np
    import torch

    from claimsutil.batching import PackedRows
    from claimsutil.model import ClaimsEncoder, config_for
    from claimsutil.train import PretrainConfig, Run, RunState, autocast_for, make_optimizer, train_step
    from claimsutil.train.loop import model_flops_per_token

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="claims-bench-"))
    try:
        print(f"tokenizing 3,000 synthetic patients (not timed), max_len={args.max_len}", flush=True)
        store = _prepare_token_store(work, args.max_len)
        family = torch.as_tensor(store.vocab.family_ids, dtype=torch.long)
        model_config = config_for(args.profile, args.scale, vocab_size=len(family), max_len=args.max_len)
        config = PretrainConfig(
            tokens_per_step=args.tokens_per_step,
            micro_tokens=args.micro_tokens,
            width_step=args.width_step,
            bf16=args.bf16 == "true",
            device="cpu",
        )
        cpu = torch.device("cpu")
        torch.manual_seed(config.seed)
        ours = ClaimsEncoder(model_config, family).train()
        hf = _hf_model(model_config, len(family)).train()
        if args.compile:  # the encoder's fixed-shape part; the masked heads' shapes change every step
            ours.encode = torch.compile(ours.encode)
        opt_ours, opt_hf = make_optimizer(ours, config), _hf_optimizer(hf, config)
        ours_stream = PackedRows(store, np.arange(len(store)), args.max_len, config.seed, config.width_step)
        hf_stream = PackedRows(store, np.arange(len(store)), args.max_len, config.seed, config.width_step)
        state = {"ours": (0, 0), "hf": (0, 0), "step": 0}
        run, run_state = Run(model_config, config, work, 0, 1, cpu), RunState()
        hf_slots = {"real": 0, "processed": 0}

        def step_ours() -> int:
            rows, state["ours"] = ours_stream.next_step(state["ours"], config.tokens_per_step)
            opt_ours.zero_grad(set_to_none=True)
            run_state.step = state["step"]
            train_step(run, ours, None, ours_stream, rows, run_state)
            torch.nn.utils.clip_grad_norm_(ours.parameters(), config.grad_clip)
            opt_ours.step()
            return int(sum(int(ours_stream.lengths[r].sum()) for r in rows))

        def step_hf() -> int:
            # The same rows of the same stream, so the same patients (and real tokens) per step.
            rows, state["hf"] = hf_stream.next_step(state["hf"], config.tokens_per_step)
            batch = _hf_batch(hf_stream, rows, family, config, state["step"])
            opt_hf.zero_grad(set_to_none=True)
            with autocast_for(cpu, config.bf16):
                loss = hf(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(hf.parameters(), config.grad_clip)
            opt_hf.step()
            hf_slots["real"] += int(batch["attention_mask"].sum())
            hf_slots["processed"] += batch["attention_mask"].numel()
            return int(batch["attention_mask"].sum())

        n_ours = ours.get_num_params(non_embedding=False)
        n_hf = sum(p.numel() for p in hf.parameters())
        print(f"model {args.profile}/{args.scale}: n_layer={model_config.n_layer} n_head={model_config.n_head} "
              f"n_embd={model_config.n_embd} vocab={len(family)} max_len={args.max_len}; parameters ours={n_ours:,} "
              f"hf={n_hf:,}; hf attention={hf.config._attn_implementation}; threads={torch.get_num_threads()} "
              f"bf16={config.bf16} tokens_per_step={config.tokens_per_step}")  # fmt: skip
        peak_dtype = torch.bfloat16 if config.bf16 else torch.float32
        peak = gemm_peak_flops(dtype=peak_dtype)  # before and after the timing: the best of both
        results = {}
        for name, (steps, real, seconds) in _timed_steps({"ours": step_ours, "hf": step_hf}, args.seconds,
                                                         args.warmup).items():  # fmt: skip
            results[name] = real / seconds
            print(f"{name}: steps={steps} real_tokens={real:,} seconds={seconds:.1f} real_tokens_per_s="
                  f"{real / seconds:,.0f} s_per_step={seconds / max(steps, 1):.3f}", flush=True)  # fmt: skip
        if args.op_table:
            for name, fn in (("ours", step_ours), ("hf", step_hf)):
                print(f"--- {name}: top ops by self CPU time over 3 steps\n{_op_table(fn)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    counters = run_state.counters
    padding = counters["pad"] / max(counters["processed"], 1)
    hf_padding = 1 - hf_slots["real"] / max(hf_slots["processed"], 1)
    peak = max(peak, gemm_peak_flops(dtype=peak_dtype))
    fpt = model_flops_per_token(ours, counters)
    achieved = fpt * results["ours"]
    print(f"padding: ours={padding:.3f} (packed rows of {args.max_len}, width step {args.width_step}) "
          f"hf={hf_padding:.3f} (padded to the longest)")  # fmt: skip
    print(f"model flops: context={counters['context'] / counters['tokens']:.1f} keys per token (its patient), "
          f"head_share={counters['masked'] / counters['tokens']:.3f}, flops_per_token={fpt:,.0f}")  # fmt: skip
    print(f"gemm_peak_gflops={peak / 1e9:.1f} ({'bf16' if config.bf16 else 'fp32'}, 2048^3) "
          f"ours_achieved_gflops={achieved / 1e9:.2f}")  # fmt: skip
    return f"speedup_vs_hf={results['ours'] / results['hf']:.2f} mfu={achieved / peak:.4f} padding={padding:.4f}"


def bench_generate(args: argparse.Namespace) -> str:
    """Generated tokens/s of our sampler (ClaimsDecoder.generate: KV cache, batched) against HuggingFace
    GPT2LMHeadModel.generate at the same width, depth, heads, FFN, vocabulary, batch, prompt and new tokens,
    both sampling at temperature 1 from the full distribution, taking turns in the same process."""
    import torch

    from claimsutil.model import ClaimsDecoder, config_for

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    family = torch.full((args.vocab,), 3, dtype=torch.long)
    family[:4] = 0  # the four specials
    max_len = args.prompt + args.new
    config = config_for(args.profile, args.scale, vocab_size=args.vocab, max_len=max_len)
    ours = ClaimsDecoder(config, family).eval()
    hf = _hf_decoder(config).eval()
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(4, args.vocab, (args.batch, args.prompt), generator=gen)
    ages = torch.full((args.batch,), 60 * 365.25)

    def run_ours() -> int:
        uniforms = torch.rand(args.batch, args.new, generator=gen)
        return int(ours.generate(prompt, ages, uniforms)["tokens"].numel())

    def run_hf() -> int:
        with torch.no_grad():
            out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=1.0,
                              top_k=0, top_p=1.0, max_new_tokens=args.new, min_new_tokens=args.new,
                              pad_token_id=0, use_cache=True)  # fmt: skip
        return int(out[:, args.prompt :].numel())

    print(f"model {args.profile}/{args.scale}: n_layer={config.n_layer} n_head={config.n_head} n_embd={config.n_embd} "
          f"vocab={args.vocab}; batch={args.batch} prompt={args.prompt} new={args.new} threads={args.threads}; "
          f"parameters ours={ours.get_num_params(False):,} hf={sum(p.numel() for p in hf.parameters()):,}")  # fmt: skip
    results = {}
    for name, (steps, tokens, seconds) in _timed_steps({"ours": run_ours, "hf": run_hf}, args.seconds, 1).items():
        results[name] = tokens / seconds
        print(f"{name}: calls={steps} generated_tokens={tokens:,} seconds={seconds:.1f} "
              f"generated_tokens_per_s={tokens / seconds:,.0f}", flush=True)  # fmt: skip
    return f"speedup_vs_hf={results['ours'] / results['hf']:.2f}"


def _hf_decoder(config):
    """GPT2LMHeadModel of the same width, depth, heads, FFN (exact GELU), vocabulary and length as CONFIG."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_config = GPT2Config(vocab_size=config.vocab_size, n_positions=config.max_len, n_embd=config.n_embd,
                           n_layer=config.n_layer, n_head=config.n_head, n_inner=config.ffn_mult * config.n_embd,
                           activation_function="gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                           tie_word_embeddings=False, pad_token_id=0, bos_token_id=2, eos_token_id=None)  # fmt: skip
    return GPT2LMHeadModel(hf_config)


def probe_evaluate(model_dir: str | Path, store_dir: str, splits_dir: str, eval_tokens: int, seed: int = 0) -> dict:
    """Validation loss per family of the model in MODEL_DIR on one fixed sample (SEED: which validation
    patients, up to EVAL_TOKENS real tokens, and which of their codes are masked), the same for every scale
    and run seed: the seed-to-seed differences are then the training's, not the sample's."""
    import torch

    from claimsutil.model import ClaimsEncoder, ModelConfig
    from claimsutil.splits import read_splits, subject_ids
    from claimsutil.tokenize import TokenStore
    from claimsutil.train.loop import score_on_sample

    saved = torch.load(Path(model_dir) / "model.pt", map_location="cpu", weights_only=False)
    config = ModelConfig(**saved["model_config"])
    store = TokenStore(store_dir)
    model = ClaimsEncoder(config, torch.as_tensor(store.vocab.family_ids))
    model.load_state_dict(saved["model"])
    return score_on_sample(model, store, subject_ids(read_splits(splits_dir), ("validation",)), eval_tokens, seed)


def _probe_run(job: tuple) -> dict:
    """One probe pretraining run (in a worker process, one thread), scored on the common sample."""
    from claimsutil.model import config_for
    from claimsutil.splits import read_splits, subject_ids
    from claimsutil.tokenize import TokenStore
    from claimsutil.train.loop import pretrain

    scale, seed, config, store_dir, splits_dir, out, eval_tokens = job
    store = TokenStore(store_dir)
    splits = read_splits(splits_dir)
    model = config_for(config.profile, scale, vocab_size=len(store.vocab.tokens), max_len=store.config.max_len)
    train, validation = subject_ids(splits, ("train",)), subject_ids(splits, ("validation",))
    result = pretrain(store_dir, train, model, config, out, validation, resume=False, progress=False)
    return result | {"common_sample_loss": probe_evaluate(out, store_dir, splits_dir, eval_tokens)}


def bench_probe(args: argparse.Namespace) -> str:
    """Does the world hold more than a small model can learn? The same token budget for several scales, two
    seeds each: validation loss per family on one common validation sample, the mean per scale and half the
    seed-to-seed difference (the training noise)."""
    from concurrent.futures import ProcessPoolExecutor

    from claimsutil.config import load_params, root_path
    from claimsutil.tokenize import read_frequency_baseline

    params = load_params(root_path(args.params))
    scales, seeds = args.scales.split(","), [int(s) for s in args.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="claimsutil-probe-"))
    jobs = []
    for scale in scales:
        for seed in seeds:
            config = dataclasses.replace(
                params.pretrain_for(scale), **({"lr": args.lr} if args.lr else {}), seed=seed,
                tokens_per_step=args.tokens_per_step,
                micro_tokens=args.tokens_per_step, max_steps=args.steps, processes=1, num_threads=1, device="cpu",
                eval_every=args.steps, checkpoint_every=args.steps, bf16=False,
            )  # fmt: skip
            jobs.append((scale, seed, config, args.store, args.splits, str(work / f"{scale}-{seed}"), args.eval_tokens))
    print(
        f"{len(jobs)} runs of {args.steps} steps x {args.tokens_per_step} tokens, {args.workers} at a time", flush=True
    )
    try:
        with ProcessPoolExecutor(args.workers, mp_context=__import__("multiprocessing").get_context("spawn")) as pool:
            results = list(pool.map(_probe_run, jobs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    baseline = read_frequency_baseline(args.store)
    print("frequency baseline: " + " ".join(f"{f}={v['cross_entropy']:.3f}" for f, v in baseline.items()))
    summary = []
    for scale in scales:
        runs = [r for (s, *_), r in zip(jobs, results, strict=True) if s == scale]
        total = [r["common_sample_loss"]["total"] for r in runs]
        for (s, seed, *_), r in zip(jobs, results, strict=True):
            if s == scale:
                v = r["common_sample_loss"]
                print(f"{scale} seed={seed} params={r['parameters_non_embedding']:,} total={v['total']:.4f} "
                      f"diagnosis={v['diagnosis']:.4f} drug={v['drug']:.4f} wall_s={r['wall_time_s']:.0f}")  # fmt: skip
        summary.append(f"{scale}={sum(total) / len(total):.4f}+-{(max(total) - min(total)) / 2:.4f}")
    return "probe_total_loss " + " ".join(summary)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m claimsutil.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="synthetic claims generation: events/s and peak RSS")
    synth.add_argument("--patients", type=int, default=100_000)
    synth.add_argument("--seed", type=int, default=20260401)
    synth.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    synth.add_argument("--block-size", type=int, default=2500)
    synth.add_argument("--shard-size", type=int, default=25_000)
    synth.add_argument("--out", help="keep the generated data here (default: a temporary folder, deleted)")
    synth.add_argument("--no-progress", action="store_true")
    feats = sub.add_parser("features", help="count features for the baseline: patients/s and peak RSS")
    feats.add_argument("--patients", type=int, default=100_000)
    feats.add_argument("--meds", help="use this MEDS dataset instead of generating one")
    feats.add_argument("--seed", type=int, default=20260401)
    feats.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="generator processes")
    feats.add_argument("--block-size", type=int, default=2500)
    feats.add_argument("--shard-size", type=int, default=10_000)
    feats.add_argument("--train-fraction", type=float, default=0.7, help="label rows the vocabulary is fitted on")
    feats.add_argument("--no-progress", action="store_true")
    pre = sub.add_parser("pretrain", help="pretraining real tokens/s against HF BertForMaskedLM; MFU and padding")
    pre.add_argument("--profile", default="demo", help="model scale presets (model.SCALES)")
    pre.add_argument("--scale", default="xl")
    pre.add_argument("--seconds", type=float, default=20.0, help="timed seconds per model")
    pre.add_argument("--threads", type=int, default=1, help="torch threads (pretraining runs 1 per process)")
    pre.add_argument("--max-len", type=int, default=256, help="model max_len = packed row length")
    pre.add_argument("--tokens-per-step", type=int, default=4096, help="real tokens per optimizer step")
    pre.add_argument("--micro-tokens", type=int, default=4096, help="row slots per micro-batch")
    pre.add_argument("--width-step", type=int, default=0, help="packed row widths in multiples of this (0: max-len)")
    pre.add_argument("--warmup", type=int, default=3, help="untimed steps per model")
    pre.add_argument(
        "--bf16",
        choices=["true", "false"],
        default="false",
        help="bf16 autocast for both models (the study's pretraining runs fp32: params pretrain.bf16)",
    )
    pre.add_argument("--compile", action="store_true", help="torch.compile our encoder (compile time untimed)")
    pre.add_argument("--op-table", action="store_true", help="also print torch.profiler's top ops per model")
    probe = sub.add_parser("probe", help="room to learn: validation loss of several scales on one token budget")
    probe.add_argument("--store", default="data/tokens")
    probe.add_argument("--splits", default="data/splits")
    probe.add_argument("--params", default="params.yaml", help="pretrain and scales sections (learning rates)")
    probe.add_argument("--scales", default="m,l,xl")
    probe.add_argument("--seeds", default="1,2")
    probe.add_argument("--steps", type=int, default=600)
    probe.add_argument("--tokens-per-step", type=int, default=4096)
    probe.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="runs at a time (one thread each)")
    probe.add_argument("--lr", type=float, default=None, help="one peak learning rate, every scale")
    probe.add_argument("--eval-tokens", type=int, default=262_144, help="real tokens of the common validation sample")
    gen = sub.add_parser("generate", help="sampling: generated tokens/s against HF GPT2LMHeadModel.generate")
    gen.add_argument("--profile", default="demo")
    gen.add_argument("--scale", default="xl")
    gen.add_argument("--vocab", type=int, default=8772, help="vocabulary size (the demo world's)")
    gen.add_argument("--batch", type=int, default=64, help="patients sampled together")
    gen.add_argument("--prompt", type=int, default=64, help="prompt tokens per patient")
    gen.add_argument("--new", type=int, default=64, help="new tokens per patient")
    gen.add_argument("--seconds", type=float, default=20.0, help="timed seconds per model")
    gen.add_argument("--threads", type=int, default=1)
    scale = sub.add_parser("scale", help="the data stages at N patients: seconds, peak RSS and growth in N")
    scalebench.add_arguments(scale)
    shards = sub.add_parser("shards", help="tokenize's shards over a process pool: speed-up per worker count")
    shards.add_argument("--meds", required=True, help="a MEDS dataset (e.g. one `bench scale --keep` wrote)")
    shards.add_argument("--workers", default="1,2", help="worker counts, the first is the reference")
    shards.add_argument("--max-len", type=int, default=512)
    paper = sub.add_parser("paper", help="the paper's five model shapes on this CPU: tokens/s, memory, hours")
    paperbench.add_arguments(paper, gpu=False)
    gpu = sub.add_parser("gpu", help="the paper's five model shapes on CUDA: tokens/s, MFU, hours (exits 0 without)")
    paperbench.add_arguments(gpu, gpu=True)
    args = parser.parse_args(argv)
    commands = {"synth": bench_synth, "features": bench_features, "pretrain": bench_pretrain, "probe": bench_probe,
                "generate": bench_generate, "scale": scalebench.bench_scale, "paper": paperbench.bench_paper,
                "gpu": paperbench.bench_gpu, "shards": bench_shards}  # fmt: skip
    line = commands[args.command](args)
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
