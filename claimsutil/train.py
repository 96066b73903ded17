"""Masked-code pretraining of the encoder, in one process or many (torchrun), from one entry point.

    metrics = pretrain("data/tokens", train_ids, model_config, PretrainConfig(), "data/models/xs", val_ids)
    torchrun --nproc_per_node=2 -m claimsutil.train --store data/tokens --splits splits.parquet --out DIR ...

Batches. Whole patient sequences (cut to max_len, most recent events kept) are packed into rows of
row_len = model max_len tokens; `segments` numbers the patients within a row (the model restarts positions
and blocks attention at every change; the padding tail is a segment of its own). Packing is greedy first-fit
over an epoch-seeded permutation of the pretraining patients, looking back over the last PACK_WINDOW open
rows (so it streams in O(patients)). A step takes the next rows until they hold at least tokens_per_step real
tokens; an epoch that runs out continues with the next epoch's rows. Each rank takes a contiguous, disjoint
shard of the step's rows and splits it into micro-batches of micro_tokens // row_len rows.

Masks. Drawn for the whole step from a generator seeded by (seed, step), the same on every rank and for any
world size, so a 2-process run sees exactly the masks of a 1-process run (the rank only picks the shard).

Loss. The step's loss is the mean over ALL masked positions of the step (per family, then weighted as in the
model): each micro-batch's family mean is re-weighted by its share of the step's masked codes, and each rank's
loss is multiplied by world_size because DDP averages gradients. So the gradient is the same whatever the
micro-batching or the number of processes, up to the order of floating-point sums.

Patients without an age (no MEDS_BIRTH: NaN ages) train like the others: the model gives an unknown age no
embedding and no age target. They are counted in the metrics (patients_without_age).

Reproducibility. The model is initialised from torch.manual_seed(seed); the data position, the optimizer,
the step (the schedule is a function of it), the RNG states and the loss history are checkpointed, so a
resumed run ends with bit-identical weights and losses on CPU (same threads).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from claimsutil import tokenize as tok
from claimsutil.model import PAD_ID, ClaimsEncoder, ModelConfig, config_for, masking

PACK_WINDOW = 512  # open rows first-fit looks back over; more packs tighter, fewer packs faster
FAMILIES = ("diagnosis", "drug", "age")  # the three pretraining losses


@dataclass(frozen=True)
class PretrainConfig:
    seed: int = 0  # model init, epoch permutations, masks and the validation sample
    tokens_per_step: int = 4096  # real (non-pad) tokens per optimizer step: the batch size in tokens
    micro_tokens: int = 2048  # row budget of one micro-batch, in tokens (rows = micro_tokens // row_len)
    max_steps: int = 200  # optimizer steps; the schedule decays to min_lr at the last one
    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    min_lr: float = 1e-4  # learning rate at the last step (cosine decay from lr)
    warmup_steps: int = 20  # linear warm-up from lr / warmup_steps to lr
    weight_decay: float = 0.01  # AdamW, on matmul weights only (no biases, LayerNorms or embeddings)
    betas: tuple[float, float] = (0.9, 0.98)  # AdamW betas (BERT-style 0.98 for large-batch stability)
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    mask_rate: float = 0.15  # share of codes selected for prediction (BERT's 80/10/10 corruption)
    bf16: bool = False  # autocast to bfloat16 (CPU or CUDA, where supported); off for bitwise CPU tests
    eval_every: int = 50  # steps between validation evaluations (and at the last step)
    eval_tokens: int = 8192  # real tokens in the fixed validation sample
    checkpoint_every: int = 100  # steps between checkpoints (and at the last step)
    device: str = "auto"  # "auto" (CUDA when available, one GPU per process), "cuda" or "cpu"
    num_threads: int = 1  # torch threads per process: 1 (one process per core under torchrun; 2 threads on
    # 2 shared cores measured 7x slower than 1)


def learning_rate(step: int, config: PretrainConfig) -> float:
    """LR of optimizer step STEP (0-based): linear warm-up to lr, then cosine down to min_lr at max_steps - 1."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.max_steps - 1 - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


# --------------------------------------------------------------------------------------------- packing


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of the N pretraining patients for EPOCH: fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def pack_rows(lengths: np.ndarray, order: np.ndarray, row_len: int) -> list[list[int]]:
    """Greedy first-fit: patients (positions into LENGTHS, taken in ORDER) into rows of ROW_LEN tokens, each
    in the first of the last PACK_WINDOW rows with room (else a new row). Rows in creation order."""
    if lengths.size and int(lengths.max()) > row_len:
        raise ValueError(f"a sequence of {int(lengths.max())} tokens does not fit a row of {row_len}")
    rows: list[list[int]] = []
    free = np.zeros(len(order) + 1, dtype=np.int64)  # room left in each row
    for p in order:
        length = int(lengths[p])
        lo = max(0, len(rows) - PACK_WINDOW)
        fits = np.flatnonzero(free[lo : len(rows)] >= length)
        if fits.size:
            r = lo + int(fits[0])
            rows[r].append(int(p))
        else:
            r = len(rows)
            rows.append([int(p)])
            free[r] = row_len
        free[r] -= length
    return rows


class PackedRows:
    """The pretraining stream: packed rows of an epoch, steps of rows, and row tensors."""

    def __init__(self, store: tok.TokenStore, indices: np.ndarray, row_len: int, seed: int):
        self.store, self.indices, self.row_len, self.seed = store, np.asarray(indices), row_len, seed
        self.lengths = np.minimum(store.lengths()[self.indices], row_len)  # after the cut to max_len
        self._epoch, self._rows = -1, []

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        if epoch != self._epoch:
            self._epoch = epoch
            self._rows = pack_rows(self.lengths, epoch_order(len(self.indices), self.seed, epoch), self.row_len)
        return self._rows

    def next_step(self, position: tuple[int, int], tokens_per_step: int) -> tuple[list[list[int]], tuple[int, int]]:
        """Rows from POSITION (epoch, row) until they hold >= tokens_per_step real tokens; the new position."""
        epoch, cursor = position
        rows, real = [], 0
        while real < tokens_per_step:
            epoch_rows = self.epoch_rows(epoch)
            if cursor >= len(epoch_rows):
                epoch, cursor = epoch + 1, 0
                continue
            rows.append(epoch_rows[cursor])
            real += int(self.lengths[epoch_rows[cursor]].sum())
            cursor += 1
        return rows, (epoch, cursor)

    def tensors(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """tokens, ages, visits, segments (R, row_len); padding is PAD_ID in a segment of its own."""
        return rows_to_tensors(rows, lambda p: self.store.sequence(int(self.indices[p]), max_len=self.row_len),
                               self.row_len)  # fmt: skip


def rows_to_tensors(rows: list[list[int]], sequence, row_len: int) -> dict[str, torch.Tensor]:
    """tokens, ages, visits, segments (R, ROW_LEN) of packed ROWS (lists of patients; SEQUENCE(patient) gives
    its tokens, ages and visits). Segments number the patients within a row; padding is PAD_ID in a segment of
    its own."""
    R = len(rows)
    tokens = np.full((R, row_len), PAD_ID, dtype=np.int64)
    ages = np.zeros((R, row_len), dtype=np.float32)
    visits = np.zeros((R, row_len), dtype=np.int64)
    segments = np.zeros((R, row_len), dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for s, p in enumerate(row):
            t, a, v = sequence(p)
            n = len(t)
            tokens[r, at : at + n], ages[r, at : at + n], visits[r, at : at + n] = t, a, v
            segments[r, at : at + n] = s
            at += n
        segments[r, at:] = len(row)
    arrays = {"tokens": tokens, "ages": ages, "visits": visits, "segments": segments}
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


# ----------------------------------------------------------------------------------------- the model


def step_generator(seed: int, step: int) -> torch.Generator:
    """The mask generator of STEP: fixed by (seed, step), the same on every rank."""
    state = np.random.SeedSequence([seed, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def make_optimizer(model: ClaimsEncoder, config: PretrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the Linear weights of the blocks and heads only."""
    no_decay_modules = ("wte.", "wpe.", "wve.", "age_encoding.")  # embeddings (the age encoding is a lookup)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.dim() >= 2 and not name.startswith(no_decay_modules):
            decay.append(p)
        else:
            no_decay.append(p)  # biases, LayerNorm weights, embeddings
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate(0, config), betas=config.betas, foreach=False)


def autocast_for(device: torch.device, bf16: bool):
    if not bf16:
        return nullcontext()
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def masked_step_losses(model, batch: dict[str, torch.Tensor], corrupted, positions, targets, totals, device):
    """The micro-batch's share of the step loss: each family mean times its share of the step's masked codes.
    Returns (weighted total, {family: share}) as tensors."""
    out = model(
        corrupted.to(device),
        batch["ages"].to(device),
        batch["visits"].to(device),
        batch["segments"].to(device),
        mlm_positions=positions.to(device),
        targets=targets.clamp(min=0).to(device),
    )
    cfg = model.module.config if hasattr(model, "module") else model.config
    weights = {"diagnosis": cfg.weight_diagnosis, "drug": cfg.weight_drug, "age": cfg.weight_age}
    shares = {f: out[f"loss_{f}"] * out[f"n_{f}"] / max(totals[f], 1) for f in FAMILIES}
    return sum(weights[f] * shares[f] for f in FAMILIES), shares


def family_counts(model_family: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor) -> dict[str, int]:
    fam = model_family[targets[positions]]
    return {"diagnosis": int((fam == 1).sum()), "drug": int((fam == 2).sum()), "age": int(positions.sum())}


@torch.no_grad()
def evaluate(model: ClaimsEncoder, batches: list[dict[str, torch.Tensor]], device, bf16: bool) -> dict[str, float]:
    """Validation loss per family (mean over all masked codes of the sample) and the weighted total."""
    model.eval()
    sums = dict.fromkeys(FAMILIES, 0.0)
    counts = dict.fromkeys(FAMILIES, 0)
    for b in batches:
        with autocast_for(device, bf16):
            out = model(
                b["corrupted"].to(device),
                b["ages"].to(device),
                b["visits"].to(device),
                b["segments"].to(device),
                mlm_positions=b["positions"].to(device),
                targets=b["targets"].clamp(min=0).to(device),
            )
        for f in FAMILIES:
            sums[f] += float(out[f"loss_{f}"]) * int(out[f"n_{f}"])
            counts[f] += int(out[f"n_{f}"])
    model.train()
    losses = {f: sums[f] / max(counts[f], 1) for f in FAMILIES}
    cfg = model.config
    losses["total"] = (
        cfg.weight_diagnosis * losses["diagnosis"] + cfg.weight_drug * losses["drug"] + cfg.weight_age * losses["age"]
    )
    return losses


def validation_batches(
    store: tok.TokenStore, indices: np.ndarray, model: ClaimsEncoder, row_len: int, config: PretrainConfig
) -> list[dict[str, torch.Tensor]]:
    """A fixed validation sample: seeded patients up to eval_tokens real tokens, packed, masked once."""
    stream = PackedRows(store, indices, row_len, config.seed)
    order = epoch_order(len(indices), config.seed, -1 % 2**32)
    take = np.cumsum(stream.lengths[order]) <= config.eval_tokens
    take[0] = True
    rows = pack_rows(stream.lengths, order[take], row_len)
    micro_rows = max(1, config.micro_tokens // row_len)
    gen = step_generator(config.seed, -1 % 2**32)
    batches = []
    for i in range(0, len(rows), micro_rows):
        b = stream.tensors(rows[i : i + micro_rows])
        b["corrupted"], b["positions"], b["targets"] = masking(b["tokens"], model.family, config.mask_rate, gen)
        batches.append(b)
    return batches


# ------------------------------------------------------------------------------------------- the loop


def _setup_distributed(device_name: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world_size, device, whether we started the process group). "auto": one GPU per local process
    when there are enough, else the CPU (gloo)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if device_name == "auto":
        enough = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
        device_name = "cuda" if enough else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    started = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_name == "cuda" else "gloo")
        started = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if device_name == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local), started
    return rank, world, torch.device("cpu"), started


def _store_indices(store: tok.TokenStore, ids) -> np.ndarray:
    ids = np.asarray(ids, dtype=np.int64)
    idx = np.searchsorted(store.subjects, ids)
    ok = idx < store.subjects.size
    ok[ok] = store.subjects[idx[ok]] == ids[ok]
    if not ok.all():
        raise KeyError(f"{int((~ok).sum())} id(s) are not in the token store {store.directory} (e.g. {ids[~ok][0]})")
    return np.sort(idx)


def patients_without_age(store: tok.TokenStore) -> np.ndarray:
    """Store indices of patients with a NaN age (no MEDS_BIRTH): the age embedding and regression need one."""
    nan_at = np.flatnonzero(np.isnan(np.asarray(store.ages)))
    return np.unique(np.searchsorted(store.offsets, nan_at, side="right") - 1)


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _split_even(n: int, parts: int) -> list[range]:
    bounds = np.linspace(0, n, parts + 1).round().astype(int) if n else np.zeros(parts + 1, dtype=int)
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _train_step(model, ddp, stream, rows, step, config, world, rank, device, counters) -> dict[str, float]:
    """One optimizer step's forward/backward over this rank's micro-batches; returns the step's losses."""
    base = ddp if ddp is not None else model
    full = stream.tensors(rows)
    corrupted, positions, targets = masking(
        full["tokens"], model.family, config.mask_rate, step_generator(config.seed, step)
    )
    totals = family_counts(model.family, targets.clamp(min=0), positions)
    micro_rows = max(1, config.micro_tokens // stream.row_len)
    shards = _split_even(len(rows), world)
    n_micro = max(1, math.ceil(max(len(s) for s in shards) / micro_rows))
    mine = shards[rank]
    logged = torch.zeros(len(FAMILIES) + 1, dtype=torch.float64)
    for k, part in enumerate(_split_even(len(mine), n_micro)):
        sel = torch.tensor([mine.start + i for i in part], dtype=torch.long)
        if len(sel) == 0:  # an idle slot: one padding row keeps DDP's collective calls in step across ranks
            batch = {key: torch.zeros((1, stream.row_len), dtype=v.dtype) for key, v in full.items()}
            c, p, t = batch["tokens"], torch.zeros((1, stream.row_len), dtype=torch.bool), batch["tokens"]
            counters["pad"] += stream.row_len
            counters["processed"] += stream.row_len
        else:
            batch = {key: v[sel] for key, v in full.items()}
            c, p, t = corrupted[sel], positions[sel], targets[sel]
        sync = k == n_micro - 1 or ddp is None
        with nullcontext() if sync else ddp.no_sync():  # only the last micro-batch all-reduces gradients
            with autocast_for(device, config.bf16):
                loss, shares = masked_step_losses(base, batch, c, p, t, totals, device)
            (loss * world).backward()  # x world: DDP averages over ranks, the step loss is a global mean
        logged += torch.tensor(
            [float(loss.detach())] + [float(shares[f].detach()) for f in FAMILIES], dtype=torch.float64
        )
    for r in mine:
        real = int(stream.lengths[rows[r]].sum())
        counters["pad"] += stream.row_len - real
        counters["processed"] += stream.row_len
    if world > 1:
        dist.all_reduce(logged)
    counters["tokens"] += int(sum(int(stream.lengths[row].sum()) for row in rows))
    return {"train_loss": float(logged[0])} | {f"train_loss_{f}": float(logged[i + 1]) for i, f in enumerate(FAMILIES)}


def pretrain(
    store_dir: str | Path,
    pretrain_ids,
    model_config: ModelConfig,
    config: PretrainConfig,
    out_dir: str | Path,
    val_ids=None,
    resume: bool = True,
    progress: bool = True,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Pretrain a ClaimsEncoder on the store's PRETRAIN_IDS (subject ids); see the module docstring.

    Writes OUT_DIR/checkpoint.pt, model.pt, metrics.json and loss_curve.csv (rank 0 only) and returns the
    metrics. STOP_AFTER: stop (with a checkpoint) after that many steps, as an interruption would; the
    schedule still follows max_steps and no final files are written."""
    rank, world, device, started = _setup_distributed(config.device)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    try:
        return _pretrain(
            store_dir, pretrain_ids, model_config, config, Path(out_dir), val_ids, resume, progress, stop_after,
            rank, world, device,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads_before)
        if started:
            dist.destroy_process_group()


def _pretrain(store_dir, pretrain_ids, model_config, config, out_dir, val_ids, resume, progress, stop_after,
              rank, world, device) -> dict[str, Any]:  # fmt: skip
    store = tok.TokenStore(store_dir)
    family = torch.as_tensor(store.vocab.family_ids, dtype=torch.long)
    if model_config.vocab_size != len(family):
        raise ValueError(f"model vocab_size {model_config.vocab_size} != {len(family)} tokens in {store_dir}")
    train_idx = _store_indices(store, pretrain_ids)
    val_idx = _store_indices(store, val_ids) if val_ids is not None and len(val_ids) else None
    if val_idx is not None and np.intersect1d(train_idx, val_idx).size:
        raise ValueError("validation patients overlap the pretraining patients")
    # Counted, not dropped: the model ignores unknown (NaN) ages.
    no_age = patients_without_age(store)
    dropped = int(np.isin(train_idx, no_age).sum()) + (
        int(np.isin(val_idx, no_age).sum()) if val_idx is not None else 0
    )
    row_len = model_config.max_len
    torch.manual_seed(config.seed)
    model = ClaimsEncoder(model_config, family).to(device)
    optimizer = make_optimizer(model, config)
    stream = PackedRows(store, train_idx, row_len, config.seed)
    val_batches = validation_batches(store, val_idx, model, row_len, config) if val_idx is not None else []
    state = {"step": 0, "position": (0, 0), "history": [], "wall": 0.0}
    counters = {"tokens": 0, "processed": 0, "pad": 0}
    ckpt_path = out_dir / "checkpoint.pt"
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt["model_config"] != asdict(model_config) or ckpt["pretrain_config"] != asdict(config):
            raise ValueError(f"{ckpt_path} was written with another model or pretraining config")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state = {k: ckpt[k] for k in state}
        state["position"] = tuple(state["position"])
        counters = dict(ckpt["counters"][rank]) if world == ckpt["world_size"] else ckpt["counters"][0]
        torch.set_rng_state(ckpt["rng_cpu"].cpu())
        if device.type == "cuda" and ckpt.get("rng_cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng_cuda"].cpu())
    ddp = None
    if world > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    model.train()
    bar = tqdm(
        total=config.max_steps, initial=state["step"], desc="pretrain", unit="step", disable=not progress or rank != 0
    )
    end = config.max_steps if stop_after is None else min(config.max_steps, stop_after)
    t0, tokens0, resumed_from = time.perf_counter(), counters["tokens"], state["step"]
    while state["step"] < end:
        step = state["step"]
        lr = learning_rate(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows, state["position"] = stream.next_step(state["position"], config.tokens_per_step)
        optimizer.zero_grad(set_to_none=True)
        losses = _train_step(model, ddp, stream, rows, step, config, world, rank, device, counters)
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        state["step"] = step + 1
        record = {"step": step + 1, "lr": lr} | losses
        if val_batches and rank == 0 and (state["step"] % config.eval_every == 0 or state["step"] == config.max_steps):
            record |= {f"val_loss_{k}": v for k, v in evaluate(model, val_batches, device, config.bf16).items()}
        state["history"].append(record)
        elapsed = time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(
            loss=f"{losses['train_loss']:.3f}", tok_s=f"{(counters['tokens'] - tokens0) / max(elapsed, 1e-9):.0f}"
        )
        if state["step"] % config.checkpoint_every == 0 or state["step"] == end:
            _checkpoint(
                ckpt_path, model, optimizer, state, counters, model_config, config, rank, world, device, elapsed
            )
    bar.close()
    state["wall"] += time.perf_counter() - t0
    if state["step"] < config.max_steps:
        return {"steps": state["step"], "stopped": True}
    metrics = _metrics(model, state, counters, config, world, row_len)
    metrics["patients_pretrain"], metrics["patients_without_age"] = len(train_idx), dropped
    metrics["resumed_from_step"] = resumed_from
    if rank == 0:
        _write_outputs(out_dir, model, model_config, config, state["history"], metrics)
    if world > 1:
        dist.barrier()
    return metrics


def _checkpoint(path, model, optimizer, state, counters, model_config, config, rank, world, device, elapsed) -> None:
    all_counters = [counters]
    if world > 1:
        all_counters = [None] * world
        dist.all_gather_object(all_counters, counters)
    if rank == 0:
        ckpt = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": state["step"],
            "position": state["position"],
            "history": state["history"],
            "wall": state["wall"] + elapsed,
            "counters": all_counters,
            "world_size": world,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
            "model_config": asdict(model_config),
            "pretrain_config": asdict(config),
        }
        _save_atomic(ckpt, path)
    if world > 1:
        dist.barrier()


def _metrics(model, state, counters, config, world, row_len) -> dict[str, Any]:
    totals = dict(counters)
    if world > 1:  # pad and processed are per rank; tokens are counted for the whole step on every rank
        t = torch.tensor([counters["pad"], counters["processed"]], dtype=torch.float64)
        dist.all_reduce(t)
        totals["pad"], totals["processed"] = int(t[0]), int(t[1])
    last_val = next((h for h in reversed(state["history"]) if "val_loss_total" in h), {})
    return {
        "parameters": model.get_num_params(non_embedding=False),
        "parameters_non_embedding": model.get_num_params(non_embedding=True),
        "tokens_seen": totals["tokens"],
        "tokens_processed": totals["processed"],
        "padding_fraction": totals["pad"] / max(totals["processed"], 1),
        "training_flops": model.flops_per_token(row_len) * totals["tokens"],
        "wall_time_s": state["wall"],
        "tokens_per_s": totals["tokens"] / max(state["wall"], 1e-9),
        "steps": state["step"],
        "tokens_per_step": config.tokens_per_step,
        "world_size": world,
        "final_train_loss": state["history"][-1]["train_loss"] if state["history"] else None,
        "final_val_loss": {f: last_val.get(f"val_loss_{f}") for f in (*FAMILIES, "total")},
    }


def _write_outputs(out_dir: Path, model, model_config, config, history, metrics) -> None:
    model_obj = {"model": model.state_dict(), "model_config": asdict(model_config), "pretrain_config": asdict(config)}
    _save_atomic(model_obj, out_dir / "model.pt")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    columns = ["step", "lr", "train_loss"] + [f"val_loss_{f}" for f in (*FAMILIES, "total")]
    with open(out_dir / "loss_curve.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def load_pretrained(path: str | Path, map_location: str | torch.device = "cpu") -> ClaimsEncoder:
    """The ClaimsEncoder saved as model.pt by `pretrain`."""
    obj = torch.load(path, map_location=map_location, weights_only=False)
    state = obj["model"]
    model = ClaimsEncoder(ModelConfig(**obj["model_config"]), state["family"].cpu())
    model.load_state_dict(state)
    return model


# ------------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import polars as pl

    d = PretrainConfig()
    ap = argparse.ArgumentParser(prog="python -m claimsutil.train", description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="token store folder (tokenize.build_store)")
    ap.add_argument("--splits", required=True, help="splits parquet: subject_id, split (train / validation / ...)")
    ap.add_argument("--out", required=True, help="output folder (checkpoint, model, metrics, loss curve)")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--scale", default="xs")
    ap.add_argument("--max-len", type=int, default=None, help="row length = model max_len (default: the store's)")
    for field in ("seed", "tokens_per_step", "micro_tokens", "max_steps", "warmup_steps", "eval_every",
                  "eval_tokens", "checkpoint_every", "num_threads"):  # fmt: skip
        ap.add_argument("--" + field.replace("_", "-"), type=int, default=getattr(d, field))
    for field in ("lr", "min_lr", "weight_decay", "grad_clip", "mask_rate"):
        ap.add_argument("--" + field.replace("_", "-"), type=float, default=getattr(d, field))
    ap.add_argument("--bf16", choices=["true", "false"], default=str(d.bf16).lower())
    ap.add_argument("--device", choices=["auto", "cuda", "cpu"], default=d.device)
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    splits = pl.read_parquet(args.splits)
    train_ids = splits.filter(pl.col("split") == "train")["subject_id"].to_numpy()
    val_ids = splits.filter(pl.col("split") == "validation")["subject_id"].to_numpy()
    store = tok.TokenStore(args.store)
    max_len = args.max_len or store.config.max_len
    model_config = config_for(args.profile, args.scale, vocab_size=len(store.vocab.tokens), max_len=max_len)
    fields = {k: getattr(args, k) for k in asdict(d) if k not in ("betas", "bf16", "device")}
    config = PretrainConfig(**fields, bf16=args.bf16 == "true", device=args.device)
    return pretrain(args.store, train_ids, model_config, config, args.out, val_ids,
                    resume=not args.no_resume, progress=not args.no_progress)  # fmt: skip


if __name__ == "__main__":
    result = main()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))


def pretrain_config(raw: dict) -> PretrainConfig:
    """A PretrainConfig from params.yaml values (the `pretrain` section merged with a scale's overrides).
    `profile` and `processes` are read by the notebook, not by the loop."""
    from claimsutil.config import build_section

    raw = {k: v for k, v in raw.items() if k not in ("profile", "processes")}
    if "betas" in raw:
        raw["betas"] = tuple(raw["betas"])
    return build_section(PretrainConfig, "pretrain", raw)


def pretrain_processes(
    processes: int,
    store_dir: str | Path,
    splits_path: str | Path,
    out_dir: str | Path,
    profile: str,
    scale: str,
    max_len: int,
    config: PretrainConfig,
) -> dict[str, Any]:
    """`pretrain` in PROCESSES processes under torchrun (DDP: gloo on CPU, NCCL with one GPU each), the
    command-line entry point with CONFIG spelled out as options; returns rank 0's metrics. The result is
    deterministic for a number of processes, and within floating-point summation order of one process."""
    import subprocess
    import sys

    if config.betas != PretrainConfig.betas:
        raise ValueError(f"betas {config.betas}: the command line has the default {PretrainConfig.betas} only")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
           "-m", "claimsutil.train", "--store", str(store_dir), "--splits", str(splits_path), "--out", str(out_dir),
           "--profile", profile, "--scale", scale, "--max-len", str(max_len), "--no-progress"]  # fmt: skip
    for field, value in asdict(config).items():
        if field == "betas":
            continue
        cmd += ["--" + field.replace("_", "-"), str(value).lower() if isinstance(value, bool) else str(value)]
    env = dict(os.environ, OMP_NUM_THREADS=str(config.num_threads))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun pretraining failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fresh_start_reason(out_dir: str | Path, model_config: ModelConfig, config: PretrainConfig) -> str | None:
    """Why OUT_DIR's checkpoint must not be resumed (None: resume it, or there is none).

    A stage rerun by DVC keeps its outputs (persist), so an interrupted run continues; but a checkpoint of
    another configuration, or of a finished run (the code or data changed since), starts over."""
    path = Path(out_dir) / "checkpoint.pt"
    if not path.is_file():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt["model_config"] != asdict(model_config) or ckpt["pretrain_config"] != asdict(config):
        return f"{path} was written with another configuration"
    if ckpt["step"] >= config.max_steps:
        return f"{path} is a finished run (its inputs changed since)"
    return None


def plot_loss_curve(curve, title: str = ""):
    """Training loss per step and the validation losses per family where they were evaluated."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(curve["step"], curve["train_loss"], label="train (total)", color="tab:blue", alpha=0.7)
    for column in [c for c in curve.columns if c.startswith("val_")]:
        points = curve.select("step", column).drop_nulls()
        if points.height:
            ax.plot(points["step"], points[column], "o-", label=column.replace("_", " "), ms=3)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
