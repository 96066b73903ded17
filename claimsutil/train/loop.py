"""Masked-code pretraining of the encoder, in one process or many (torchrun), from one entry point.

    metrics = pretrain("data/tokens", train_ids, model_config, PretrainConfig(), "data/models/xs", val_ids)
    torchrun --nproc_per_node=2 -m claimsutil.train --store data/tokens --splits splits.parquet --out DIR ...

The loop lives here; `claimsutil.train.launch` starts it under torchrun and decides whether an existing
checkpoint may be resumed; `python -m claimsutil.train` is the command line torchrun runs.

Batches. Whole patient sequences (cut to max_len, most recent events kept) are packed into rows of
row_len = model max_len tokens (`claimsutil.batching`), over an epoch-seeded permutation of the pretraining
patients. A step takes the next rows until they hold at least tokens_per_step real
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

import csv
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from claimsutil import tokenize as tok
from claimsutil.batching import PackedRows, epoch_order, pack_rows
from claimsutil.config import PretrainConfig, execution_fields
from claimsutil.model import (
    PAD_ID,
    SPECIAL,
    ClaimsDecoder,
    ClaimsEncoder,
    ModelConfig,
    autocast_for,
    masking,
    to_device,
    uses_bf16,
)
from claimsutil.timeline import GEN_FAMILIES, Timeline

__all__ = [
    "FAMILIES",
    "PretrainConfig",
    "RunState",
    "evaluate",
    "learning_rate",
    "load_pretrained",
    "make_optimizer",
    "pretrain",
    "result_config",
    "train_step",
    "validation_batches",
]

FAMILIES = ("diagnosis", "drug", "age")  # the three pretraining losses
MODELS = {"masked": ClaimsEncoder, "next": ClaimsDecoder}  # the model each objective trains


def result_config(config: PretrainConfig) -> dict[str, Any]:
    """CONFIG without its execution fields (device): what a checkpoint must match to be resumed."""
    skip = execution_fields(PretrainConfig)
    return {k: v for k, v in asdict(config).items() if k not in skip}


def learning_rate(step: int, config: PretrainConfig) -> float:
    """LR of optimizer step STEP (0-based): linear warm-up to lr, then cosine down to min_lr at max_steps - 1."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.max_steps - 1 - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.lr - config.min_lr)


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
    # foreach: the same numbers as the per-parameter loop (bitwise on CPU), 20% less optimizer time
    return torch.optim.AdamW(groups, lr=learning_rate(0, config), betas=config.betas, foreach=True)


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


# ------------------------------------------------------------------------------------ the two objectives


class Masked:
    """Masked-code prediction (the encoder): per step, masks drawn for the whole step; losses per family."""

    families = FAMILIES

    def __init__(self, model, config: PretrainConfig):
        self.family, self.rate = model.family, config.mask_rate

    def prepare(self, full: dict[str, torch.Tensor], gen: torch.Generator) -> dict[str, torch.Tensor]:
        corrupted, positions, targets = masking(full["tokens"], self.family, self.rate, gen)
        return {"corrupted": corrupted, "positions": positions, "targets": targets}

    def counts(self, extra: dict[str, torch.Tensor]) -> dict[str, int]:
        return family_counts(self.family, extra["targets"].clamp(min=0), extra["positions"])

    def targets(self, counts: dict[str, int]) -> int:
        return counts["age"]  # every masked position

    def idle(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        t = batch["tokens"]
        return {"corrupted": t, "positions": torch.zeros_like(t, dtype=torch.bool), "targets": t}

    def outputs(self, model, batch, extra, device) -> dict[str, torch.Tensor]:
        return model(
            extra["corrupted"].to(device),
            batch["ages"].to(device),
            batch["visits"].to(device),
            batch["segments"].to(device),
            mlm_positions=extra["positions"].to(device),
            targets=extra["targets"].clamp(min=0).to(device),
        )

    def loss(self, model, batch, extra, totals, device):
        """The micro-batch's share of the step loss: each family mean times its share of the step's masked
        codes. Returns (weighted total, {family: share}) as tensors."""
        return masked_step_losses(model, batch, extra["corrupted"], extra["positions"], extra["targets"], totals,
                                  device)  # fmt: skip

    def total(self, model, losses: dict[str, float], counts: dict[str, int] | None = None) -> float:
        cfg = model.config
        weights = {"diagnosis": cfg.weight_diagnosis, "drug": cfg.weight_drug, "age": cfg.weight_age}
        return sum(weights[f] * losses[f] for f in FAMILIES)


class NextToken:
    """Next-token prediction (the decoder): every token of a patient predicts the one after it."""

    families = tuple(GEN_FAMILIES)  # the loss by the family of the token predicted

    def __init__(self, model, config: PretrainConfig):
        self.family = model.family

    def prepare(self, full: dict[str, torch.Tensor], gen: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        return {"targets": next_targets(full["tokens"], full["segments"], self.family)}

    def counts(self, extra: dict[str, torch.Tensor]) -> dict[str, int]:
        t = extra["targets"]
        fam = self.family[t.clamp(min=0)].masked_fill(t < 0, -1)
        return {f: int((fam == i).sum()) for f, i in GEN_FAMILIES.items()}

    def targets(self, counts: dict[str, int]) -> int:
        return sum(counts.values())

    def idle(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"targets": torch.full_like(batch["tokens"], -100)}

    def per_target(self, model, batch, extra, device) -> dict[str, torch.Tensor]:
        """The decoder's outputs at every target of the batch, with "family" (n,) the target's family id."""
        out = model(batch["tokens"].to(device), batch["ages"].to(device), batch["segments"].to(device),
                    targets=extra["targets"].to(device))  # fmt: skip
        return out | {"family": self.family.to(device)[out["targets"]]}

    def loss(self, model, batch, extra, totals, device):
        """The micro-batch's share of the step loss: its summed cross-entropy over the step's targets."""
        out = self.per_target(model, batch, extra, device)
        ce, fam = out["ce"], out["family"]
        shares = {f: ce[fam == i].sum() / max(totals[f], 1) for f, i in GEN_FAMILIES.items()}
        return out["loss_sum"] / max(self.targets(totals), 1), shares

    def outputs(self, model, batch, extra, device) -> dict[str, torch.Tensor]:
        out = self.per_target(model, batch, extra, device)
        ce, fam = out["ce"], out["family"]
        out = {}
        for f, i in GEN_FAMILIES.items():
            rows = fam == i
            out[f"n_{f}"] = rows.sum()
            out[f"loss_{f}"] = ce[rows].sum() / rows.sum().clamp(min=1)
        return out

    def total(self, model, losses: dict[str, float], counts: dict[str, int] | None = None) -> float:
        """The mean over every target: the families' losses weighted by their COUNTS."""
        n = sum(counts.values()) if counts else 0
        return sum(losses[f] * counts[f] for f in self.families) / n if n else float("nan")


def next_targets(tokens: torch.Tensor, segments: torch.Tensor, family: torch.Tensor) -> torch.Tensor:
    """(B, T) the next token of the same patient at each position, -100 where there is none (its last token,
    padding) or it is a special token ([UNK]: the decoder never predicts what the vocabulary does not hold)."""
    targets = torch.full_like(tokens, -100)
    nxt = tokens[:, 1:]
    same = (segments[:, 1:] == segments[:, :-1]) & (tokens[:, :-1] != PAD_ID) & (family[nxt] != SPECIAL)
    targets[:, :-1] = torch.where(same, nxt, -100)
    return targets


def objective_for(model, config: PretrainConfig | None = None) -> Masked | NextToken:
    """The objective MODEL trains on: next token for a ClaimsDecoder, masked codes for a ClaimsEncoder."""
    config = PretrainConfig() if config is None else config
    return NextToken(model, config) if isinstance(model, ClaimsDecoder) else Masked(model, config)


@torch.no_grad()
def evaluate(
    model, batches: list[dict[str, torch.Tensor]], device, bf16: bool, per_batch: list | None = None
) -> dict[str, float]:
    """Validation loss per family (mean over all the sample's targets: masked codes for the encoder, next tokens
    for the decoder) and the total (the encoder's weighted sum; the decoder's mean over every target).
    PER_BATCH: a list that receives, per batch, {family: (loss sum, targets)} (for a bootstrap)."""
    model.eval()
    objective = objective_for(model)
    sums = dict.fromkeys(objective.families, 0.0)
    counts = dict.fromkeys(objective.families, 0)
    for b in batches:
        with autocast_for(device, bf16):
            out = objective.outputs(model, b, b, device)
        this = {f: (float(out[f"loss_{f}"]) * int(out[f"n_{f}"]), int(out[f"n_{f}"])) for f in objective.families}
        for f, (s, n) in this.items():
            sums[f] += s
            counts[f] += n
        if per_batch is not None:
            per_batch.append(this)
    model.train()
    losses = {f: sums[f] / max(counts[f], 1) for f in objective.families}
    losses["total"] = objective.total(model, losses, counts)
    return losses


def score_on_sample(
    model, store: tok.TokenStore, ids, eval_tokens: int, seed: int = 0, per_batch: list | None = None
) -> dict[str, float]:
    """MODEL's validation losses on a fixed sample of the patients IDS (SEED: which patients, up to EVAL_TOKENS
    real tokens, and which of their codes are masked): the same sample for every model scored with the same
    arguments, so differences between models are the models'. PER_BATCH: as in `evaluate`. A decoder is
    scored on the same patients' timelines."""
    sample = PretrainConfig(seed=seed, eval_tokens=eval_tokens)
    source = Timeline(store) if isinstance(model, ClaimsDecoder) else store
    batches = validation_batches(source, store_indices(store, ids), model, model.config.max_len, sample)
    return evaluate(model, batches, "cpu", False, per_batch=per_batch)


def validation_batches(
    source, indices: np.ndarray, model, row_len: int, config: PretrainConfig
) -> list[dict[str, torch.Tensor]]:
    """A fixed validation sample: seeded patients up to eval_tokens real tokens, packed, masked once (the
    encoder) or with their next-token targets (the decoder). SOURCE: the token store, or its Timeline."""
    stream = PackedRows(source, indices, row_len, config.seed, config.width_step)
    order = epoch_order(len(indices), config.seed, -1 % 2**32)
    take = np.cumsum(stream.lengths[order]) <= config.eval_tokens
    take[0] = True
    rows = pack_rows(stream.lengths, order[take], row_len, config.width_step)
    gen = step_generator(config.seed, -1 % 2**32)
    objective = objective_for(model, config)
    batches = []
    for width, members in stream.groups(rows):
        micro_rows = max(1, config.micro_tokens // width)
        for i in range(0, len(members), micro_rows):
            b = stream.tensors([rows[m] for m in members[i : i + micro_rows]], width)
            batches.append(b | objective.prepare(b, gen))
    return batches


# ------------------------------------------------------------------------------------------- the loop


@dataclass
class RunState:
    """Everything a checkpoint restores besides the weights, the optimizer and the RNG."""

    step: int = 0  # optimizer steps done
    position: tuple[int, int] = (0, 0)  # (epoch, row) of the next row in the packed stream
    history: list[dict[str, float]] = field(default_factory=list)  # one record per step (losses, lr)
    wall: float = 0.0  # seconds of training before this process started
    counters: dict[str, int] = field(
        default_factory=lambda: {"tokens": 0, "processed": 0, "pad": 0, "masked": 0, "context": 0}
    )


@dataclass(frozen=True)
class Run:
    """One process's view of a run: what it trains, where it writes, and its place among the processes."""

    model_config: ModelConfig
    config: PretrainConfig
    out_dir: Path
    rank: int
    world: int
    device: torch.device

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "checkpoint.pt"


def _setup_distributed(device_name: str) -> tuple[int, int, torch.device, bool]:
    """(rank, world_size, device, whether we started the process group). "auto": one GPU per local process
    when there are enough, else the CPU (gloo)."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if device_name == "auto":
        enough = torch.cuda.is_available() and torch.cuda.device_count() >= local_world
        device_name = "cuda" if enough else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cpu")
    if device_name == "cuda":
        # The process's GPU is set before the process group starts, so NCCL binds each rank to its own GPU.
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    started = False
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
        started = True
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return rank, world, device, started


def store_indices(store: tok.TokenStore, ids) -> np.ndarray:
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


def train_step(run: Run, model, ddp, stream: PackedRows, rows: list[list[int]], state: RunState):
    """One optimizer step's forward/backward over this rank's micro-batches (gradients accumulated, no
    optimizer step); counts tokens into STATE.counters and returns the step's losses."""
    config, world, rank, counters = run.config, run.world, run.rank, state.counters
    base = ddp if ddp is not None else model
    objective = objective_for(model, config)
    # The step's rows by width, each group masked in turn from one generator: every rank draws the same masks.
    gen = step_generator(config.seed, state.step)
    groups = []
    for width, members in stream.groups(rows):
        full = stream.tensors([rows[i] for i in members], width)
        groups.append((width, members, full, objective.prepare(full, gen)))
    totals = dict.fromkeys(objective.families, 0)
    for *_, extra in groups:
        for f, n in objective.counts(extra).items():
            totals[f] += n
    # Each rank takes its shard of every group, in micro-batches of micro_tokens // width rows; every rank
    # runs the same number of micro-batches (an idle slot is one padding row) so DDP's collectives line up.
    plan = []
    for width, members, full, extra in groups:
        shards = _split_even(len(members), world)
        micro_rows = max(1, config.micro_tokens // width)
        n_micro = max(1, math.ceil(max(len(s) for s in shards) / micro_rows))
        mine = shards[rank]
        for part in _split_even(len(mine), n_micro):
            plan.append((width, full, extra, [mine.start + i for i in part]))
            for i in part:
                real = int(stream.lengths[rows[members[mine.start + i]]].sum())
                counters["pad"] += width - real
                counters["processed"] += width
    families = objective.families
    # On a GPU each group goes over once (pinned, non-blocking) and its micro-batches are sliced there; the
    # losses are summed on the device and read once per step, so no micro-batch waits on the host.
    on_device = {id(full): (to_device(full, run.device), to_device(extra, run.device)) for _, full, extra, _ in plan}
    logged = torch.zeros(len(families) + 1, dtype=torch.float64, device=run.device)
    for k, (width, full, _, part) in enumerate(plan):
        if not part:  # an idle slot
            batch = {key: torch.zeros((1, width), dtype=v.dtype, device=run.device) for key, v in full.items()}
            sel_extra = objective.idle(batch)
            counters["pad"] += width
            counters["processed"] += width
        else:
            sel = torch.tensor(part, dtype=torch.long).to(run.device)
            full_d, extra_d = on_device[id(full)]
            batch = {key: v[sel] for key, v in full_d.items()}
            sel_extra = {key: v[sel] for key, v in extra_d.items()}
        sync = k == len(plan) - 1 or ddp is None
        with nullcontext() if sync else ddp.no_sync():  # only the last micro-batch all-reduces gradients
            with autocast_for(run.device, config.bf16):
                loss, shares = objective.loss(base, batch, sel_extra, totals, run.device)
            (loss * world).backward()  # x world: DDP averages over ranks, the step loss is a global mean
        logged += torch.stack([t.detach().double() for t in (loss, *(shares[f] for f in families))])
    if world > 1:
        dist.all_reduce(logged)
    logged = logged.cpu()
    counters["tokens"] += int(sum(int(stream.lengths[row].sum()) for row in rows))
    # Positions the output heads run at: every masked position (encoder), every next-token target (decoder).
    counters["masked"] = counters.get("masked", 0) + objective.targets(totals)
    # Keys the model may attend to, summed over tokens: each patient's length squared (model FLOPs' context).
    counters["context"] = counters.get("context", 0) + int(sum(int((stream.lengths[row] ** 2).sum()) for row in rows))
    return {"train_loss": float(logged[0])} | {f"train_loss_{f}": float(logged[i + 1]) for i, f in enumerate(families)}


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
    run = Run(model_config, config, Path(out_dir), rank, world, device)
    try:
        return _pretrain(run, store_dir, pretrain_ids, val_ids, resume=resume, progress=progress, stop_after=stop_after)
    finally:
        torch.set_num_threads(threads_before)
        if started:
            dist.destroy_process_group()


def _resume(run: Run, model: ClaimsEncoder, optimizer) -> RunState:
    """The state of RUN's checkpoint, loaded into MODEL and OPTIMIZER (a fresh state when there is none)."""
    if not run.checkpoint_path.is_file():
        return RunState()
    ckpt = torch.load(run.checkpoint_path, map_location=run.device, weights_only=False)
    if ckpt["model_config"] != asdict(run.model_config) or ckpt["pretrain_config"] != result_config(run.config):
        raise ValueError(f"{run.checkpoint_path} was written with another model or pretraining config")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    counters = dict(ckpt["counters"][run.rank]) if run.world == ckpt["world_size"] else ckpt["counters"][0]
    torch.set_rng_state(ckpt["rng_cpu"].cpu())
    if run.device.type == "cuda" and ckpt.get("rng_cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng_cuda"].cpu())
    return RunState(ckpt["step"], tuple(ckpt["position"]), ckpt["history"], ckpt["wall"], counters)


def _pretrain(run: Run, store_dir, pretrain_ids, val_ids, *, resume: bool, progress: bool, stop_after) -> dict:
    config = run.config
    store = tok.TokenStore(store_dir)
    source = Timeline(store) if config.objective == "next" else store  # the decoder reads timelines
    family = torch.as_tensor(source.family_ids if config.objective == "next" else store.vocab.family_ids,
                             dtype=torch.long)  # fmt: skip
    if run.model_config.vocab_size != len(family):
        raise ValueError(f"model vocab_size {run.model_config.vocab_size} != {len(family)} tokens in {store_dir}")
    train_idx = store_indices(store, pretrain_ids)
    val_idx = store_indices(store, val_ids) if val_ids is not None and len(val_ids) else None
    if val_idx is not None and np.intersect1d(train_idx, val_idx).size:
        raise ValueError("validation patients overlap the pretraining patients")
    # Counted, not dropped: the model ignores unknown (NaN) ages.
    no_age = patients_without_age(store)
    without_age = int(np.isin(train_idx, no_age).sum()) + (
        int(np.isin(val_idx, no_age).sum()) if val_idx is not None else 0
    )
    row_len = run.model_config.max_len
    torch.manual_seed(config.seed)
    model = MODELS[config.objective](run.model_config, family).to(run.device)
    optimizer = make_optimizer(model, config)
    stream = PackedRows(source, train_idx, row_len, config.seed, config.width_step)
    val_batches = validation_batches(source, val_idx, model, row_len, config) if val_idx is not None else []
    state = _resume(run, model, optimizer) if resume else RunState()
    ddp = None
    if run.world > 1:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if run.rank == 0:
        run.out_dir.mkdir(parents=True, exist_ok=True)
    model.train()
    bar = tqdm(total=config.max_steps, initial=state.step, desc="pretrain", unit="step",
               disable=not progress or run.rank != 0)  # fmt: skip
    end = config.max_steps if stop_after is None else min(config.max_steps, stop_after)
    t0, tokens0, resumed_from = time.perf_counter(), state.counters["tokens"], state.step
    while state.step < end:
        lr = learning_rate(state.step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rows, next_position = stream.next_step(state.position, config.tokens_per_step)
        optimizer.zero_grad(set_to_none=True)
        losses = train_step(run, model, ddp, stream, rows, state)
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        state.step, state.position = state.step + 1, next_position
        record = {"step": state.step, "lr": lr} | losses
        due = state.step % config.eval_every == 0 or state.step == config.max_steps
        if val_batches and run.rank == 0 and due:
            record |= {f"val_loss_{k}": v for k, v in evaluate(model, val_batches, run.device, config.bf16).items()}
        state.history.append(record)
        elapsed = time.perf_counter() - t0
        bar.update(1)
        tokens_per_s = (state.counters["tokens"] - tokens0) / max(elapsed, 1e-9)
        bar.set_postfix(loss=f"{losses['train_loss']:.3f}", tok_s=f"{tokens_per_s:.0f}")
        if state.step % config.checkpoint_every == 0 or state.step == end:
            _checkpoint(run, model, optimizer, state, elapsed)
    bar.close()
    state.wall += time.perf_counter() - t0
    if state.step < config.max_steps:
        return {"steps": state.step, "stopped": True}
    metrics = _metrics(run, model, state)
    metrics["patients_pretrain"], metrics["patients_without_age"] = len(train_idx), without_age
    metrics["resumed_from_step"] = resumed_from
    if run.rank == 0:
        _write_outputs(run, model, state.history, metrics)
    if run.world > 1:
        dist.barrier()
    return metrics


def _checkpoint(run: Run, model: ClaimsEncoder, optimizer, state: RunState, elapsed: float) -> None:
    all_counters = [state.counters]
    if run.world > 1:
        all_counters = [None] * run.world
        dist.all_gather_object(all_counters, state.counters)
    if run.rank == 0:
        ckpt = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": state.step,
            "position": state.position,
            "history": state.history,
            "wall": state.wall + elapsed,
            "counters": all_counters,
            "world_size": run.world,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state() if run.device.type == "cuda" else None,
            "model_config": asdict(run.model_config),
            "pretrain_config": result_config(run.config),
        }
        _save_atomic(ckpt, run.checkpoint_path)
    if run.world > 1:
        dist.barrier()


def _metrics(run: Run, model: ClaimsEncoder, state: RunState) -> dict[str, Any]:
    totals = dict(state.counters)
    if run.world > 1:  # pad and processed are per rank; tokens are counted for the whole step on every rank
        t = torch.tensor([totals["pad"], totals["processed"]], dtype=torch.float64, device=run.device)
        dist.all_reduce(t)  # on the run's device: NCCL reduces only GPU tensors
        t = t.cpu()
        totals["pad"], totals["processed"] = int(t[0]), int(t[1])
    last_val = next((h for h in reversed(state.history) if "val_loss_total" in h), {})
    return {
        "parameters": model.get_num_params(non_embedding=False),
        "parameters_non_embedding": model.get_num_params(non_embedding=True),
        "tokens_seen": totals["tokens"],
        "tokens_processed": totals["processed"],
        "padding_fraction": totals["pad"] / max(totals["processed"], 1),
        "training_flops": model_flops_per_token(model, totals) * totals["tokens"],
        "wall_time_s": state.wall,
        "tokens_per_s": totals["tokens"] / max(state.wall, 1e-9),
        "steps": state.step,
        "tokens_per_step": run.config.tokens_per_step,
        "world_size": run.world,
        "precision": "bf16" if uses_bf16(run.device, run.config.bf16) else "fp32",
        "final_train_loss": state.history[-1]["train_loss"] if state.history else None,
        "objective": run.config.objective,
        "final_val_loss": {
            f: last_val.get(f"val_loss_{f}") for f in (*objective_for(model, run.config).families, "total")
        },  # fmt: skip
    }


def model_flops_per_token(model: ClaimsEncoder, counters: dict[str, int]) -> float:
    """`ClaimsEncoder.flops_per_token` at the context and head share the run's COUNTERS measured."""
    tokens = max(counters["tokens"], 1)
    context = counters.get("context", 0) / tokens or None
    return model.flops_per_token(context, counters.get("masked", 0) / tokens if context else 1.0)


def _write_outputs(run: Run, model: ClaimsEncoder, history: list[dict], metrics: dict) -> None:
    model_obj = {"model": model.state_dict(), "model_config": asdict(run.model_config),
                 "pretrain_config": result_config(run.config), "objective": run.config.objective}  # fmt: skip
    _save_atomic(model_obj, run.out_dir / "model.pt")
    (run.out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    families = objective_for(model, run.config).families
    columns = ["step", "lr", "train_loss"] + [f"val_loss_{f}" for f in (*families, "total")]
    with open(run.out_dir / "loss_curve.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def load_pretrained(path: str | Path, map_location: str | torch.device = "cpu") -> ClaimsEncoder | ClaimsDecoder:
    """The model saved as model.pt by `pretrain`: a ClaimsEncoder, or a ClaimsDecoder (objective "next")."""
    obj = torch.load(path, map_location=map_location, weights_only=False)
    state = obj["model"]
    model = MODELS[obj.get("objective", "masked")](ModelConfig(**obj["model_config"]), state["family"].cpu())
    model.load_state_dict(state)
    return model
