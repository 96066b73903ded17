"""Masked-code pretraining: the loop (`loop`), how a run starts (`launch`), its command line (`__main__`).

from claimsutil import train
metrics = train.pretrain("data/tokens", train_ids, model_config, PretrainConfig(), "data/models/xs", val_ids)
"""

from claimsutil.config import PretrainConfig
from claimsutil.train.launch import (
    config_options,
    fresh_start_reason,
    metrics_frame,
    model_config,
    plot_loss_curve,
    pretrain_processes,
    read_loss_curve,
    run_pretraining,
    sized_run,
    split_ids,
    start_run,
    table1_row,
    with_token_budget,
)
from claimsutil.train.loop import (
    FAMILIES,
    Run,
    RunState,
    autocast_for,
    evaluate,
    family_counts,
    learning_rate,
    load_pretrained,
    make_optimizer,
    masked_step_losses,
    patients_without_age,
    pretrain,
    result_config,
    step_generator,
    train_step,
    validation_batches,
)

__all__ = [
    "FAMILIES",
    "PretrainConfig",
    "Run",
    "RunState",
    "autocast_for",
    "config_options",
    "evaluate",
    "family_counts",
    "fresh_start_reason",
    "learning_rate",
    "load_pretrained",
    "make_optimizer",
    "metrics_frame",
    "model_config",
    "masked_step_losses",
    "patients_without_age",
    "plot_loss_curve",
    "pretrain",
    "pretrain_processes",
    "read_loss_curve",
    "result_config",
    "run_pretraining",
    "sized_run",
    "split_ids",
    "start_run",
    "step_generator",
    "table1_row",
    "train_step",
    "validation_batches",
    "with_token_budget",
]
