"""Starting a pretraining run: the resume policy, the split's patients, torchrun, and the loss-curve figure.

The notebook (one scale) calls `start_run` to decide whether an existing checkpoint may be resumed, then
`run_pretraining`, which runs the loop in this process or, with `pretrain.processes` > 1, under torchrun
(one process per core or GPU) through the command line in `claimsutil.train.__main__`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from claimsutil.config import PretrainConfig
from claimsutil.model import ModelConfig, config_for
from claimsutil.timeline import TIME_BINS
from claimsutil.train.loop import MODELS, pretrain, result_config


def split_ids(splits_path: str | Path, split: str) -> np.ndarray:
    """Subject ids of SPLIT in the study's splits file (pretraining: train; validation loss: validation)."""
    splits = pl.read_parquet(splits_path)
    return splits.filter(pl.col("split") == split)["subject_id"].to_numpy()


def fresh_start_reason(out_dir: str | Path, model_config: ModelConfig, config: PretrainConfig) -> str | None:
    """Why OUT_DIR's checkpoint must not be resumed (None: resume it, or there is none).

    A stage rerun by DVC keeps its outputs (persist), so an interrupted run continues; but a checkpoint of
    another configuration, or of a finished run (the code or data changed since), starts over."""
    path = Path(out_dir) / "checkpoint.pt"
    if not path.is_file():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt["model_config"] != asdict(model_config) or ckpt.get("pretrain_config") != result_config(config):
        return f"{path} was written with another configuration"
    if ckpt["step"] >= config.max_steps:
        return f"{path} is a finished run (its inputs changed since)"
    return None


def start_run(out_dir: str | Path, model_config: ModelConfig, config: PretrainConfig) -> str:
    """Apply the resume policy to OUT_DIR (removed when its checkpoint must not be resumed); say what happens."""
    out_dir = Path(out_dir)
    if reason := fresh_start_reason(out_dir, model_config, config):
        shutil.rmtree(out_dir)
        return f"starting over: {reason}"
    if (out_dir / "checkpoint.pt").is_file():
        return f"resuming from {out_dir / 'checkpoint.pt'}"
    return "starting a new run"


def run_pretraining(
    store_dir: str | Path,
    splits_path: str | Path,
    out_dir: str | Path,
    scale: str,
    model_config: ModelConfig,
    config: PretrainConfig,
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain SCALE on the train split (validation loss on the validation split), in `config.processes`
    processes; returns the metrics."""
    train_ids, val_ids = split_ids(splits_path, "train"), split_ids(splits_path, "validation")
    if config.processes > 1 and _forks_on_cpu(config):
        return forked_processes(store_dir, train_ids, val_ids, out_dir, model_config, config)
    if config.processes > 1:
        return pretrain_processes(store_dir, splits_path, out_dir, scale, model_config.max_len, config)
    return pretrain(store_dir, train_ids, model_config, config, out_dir, val_ids, progress=progress)


def _forks_on_cpu(config: PretrainConfig) -> bool:
    """Whether the processes may be forked from this one: on CPU (CUDA cannot be forked into), one thread each
    (an OpenMP pool the parent started is not fork-safe), where the OS forks."""
    cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    return cpu and config.num_threads == 1 and "fork" in mp.get_all_start_methods()


def forked_processes(store_dir: str | Path, train_ids: np.ndarray, val_ids: np.ndarray, out_dir: str | Path,
                     model_config: ModelConfig, config: PretrainConfig) -> dict[str, Any]:  # fmt: skip
    """`pretrain` in config.processes processes forked from this one (DDP over gloo, as torchrun would start
    it, without starting Python and importing torch again in every process: ~8 s a stage); returns the
    metrics rank 0 wrote. The same computation as under torchrun, so the same result."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("fork")
    args = (store_dir, train_ids, val_ids, out_dir, model_config, config)
    workers = [context.Process(target=_forked_rank, args=(rank, config.processes, port, *args))
               for rank in range(config.processes)]  # fmt: skip
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    failed = [(rank, w.exitcode) for rank, w in enumerate(workers) if w.exitcode != 0]
    if failed:
        raise RuntimeError(f"pretraining failed in process(es) {failed} (rank, exit code); the traceback is above")
    path = Path(out_dir) / "metrics.json"
    return json.loads(path.read_text(encoding="utf-8"))


def _forked_rank(rank: int, world: int, port: int, *args) -> None:
    ranks = {"RANK": rank, "LOCAL_RANK": rank, "WORLD_SIZE": world, "LOCAL_WORLD_SIZE": world}
    os.environ.update({k: str(v) for k, v in ranks.items()} | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    store_dir, train_ids, val_ids, out_dir, model_config, config = args
    code = 0
    try:
        pretrain(store_dir, train_ids, model_config, config, out_dir, val_ids, progress=False)
    except BaseException:  # the parent reports the exit code; the traceback goes to this process's stderr
        traceback.print_exc()
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)  # never the parent's exit handlers (a notebook kernel's) in a forked child


def config_options(config: PretrainConfig) -> list[str]:
    """CONFIG spelled out as the command line's options (every field)."""
    options = []
    for name, value in asdict(config).items():
        text = ",".join(str(v) for v in value) if isinstance(value, tuple) else str(value)
        options += ["--" + name.replace("_", "-"), text.lower() if isinstance(value, bool) else text]
    return options


def pretrain_processes(store_dir: str | Path, splits_path: str | Path, out_dir: str | Path, scale: str, max_len: int,
                       config: PretrainConfig) -> dict[str, Any]:  # fmt: skip
    """`pretrain` in config.processes processes under torchrun (DDP: gloo on CPU, NCCL with one GPU each),
    the command-line entry point with CONFIG spelled out as options; returns rank 0's metrics. The result is
    deterministic for a number of processes, and within floating-point summation order of one process."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={config.processes}",
           "-m", "claimsutil.train", "--store", str(store_dir), "--splits", str(splits_path), "--out", str(out_dir),
           "--scale", scale, "--max-len", str(max_len), "--no-progress", *config_options(config)]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(config.num_threads))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun pretraining failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def model_config(config: PretrainConfig, scale: str, store) -> ModelConfig:
    """The model of SCALE in config.profile's presets, sized to the token store (vocabulary, max_len); the
    decoder's vocabulary adds the time tokens (`claimsutil.timeline`)."""
    return config_for(config.profile, scale, vocab_size=vocab_size_for(len(store.vocab.tokens), config.objective),
                      max_len=store.config.max_len)  # fmt: skip


def vocab_size_for(store_vocab: int, objective: str) -> int:
    """The model's vocabulary for OBJECTIVE on a store of STORE_VOCAB tokens: the decoder's adds the time tokens."""
    return store_vocab + (len(TIME_BINS) if objective == "next" else 0)


def with_token_budget(config: PretrainConfig, model: ModelConfig) -> PretrainConfig:
    """CONFIG with max_steps resolved: the token rule applied to MODEL's non-embedding parameters (see
    `PretrainConfig.steps_for`); a config with max_steps > 0 is returned as it is."""
    n = MODELS[config.objective](model, torch.zeros(model.vocab_size, dtype=torch.long)).get_num_params()
    return replace(config, max_steps=config.steps_for(n))


def sized_run(config: PretrainConfig, scale: str, store) -> tuple[ModelConfig, PretrainConfig]:
    """The model of SCALE sized to the store, and CONFIG with that model's token budget."""
    model = model_config(config, scale, store)
    return model, with_token_budget(config, model)


def read_loss_curve(out_dir: str | Path) -> pl.DataFrame:
    """The run's loss curve (step, lr, train_loss, val_loss_*)."""
    return pl.read_csv(Path(out_dir) / "loss_curve.csv")


def metrics_frame(metrics: dict[str, Any]) -> pl.DataFrame:
    """The scalar metrics of a run as a one-row table."""
    return pl.DataFrame([{k: v for k, v in metrics.items() if not isinstance(v, dict | list)}])


def table1_row(scale: str, model_config: ModelConfig, result: dict[str, Any]) -> dict[str, Any]:
    """The stage's metrics: Table 1's columns of one scale (shape, tokens, FLOPs, time, losses)."""
    shape = {"layers": model_config.n_layer, "width": model_config.n_embd, "heads": model_config.n_head,
             "ffn": model_config.ffn_mult * model_config.n_embd}  # fmt: skip
    return {"scale": scale, **shape, **result}


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


__all__ = [
    "config_options",
    "metrics_frame",
    "model_config",
    "read_loss_curve",
    "fresh_start_reason",
    "plot_loss_curve",
    "pretrain_processes",
    "run_pretraining",
    "split_ids",
    "start_run",
    "table1_row",
]
