r"""Command line of the pretraining loop; torchrun runs it once per process.

    torchrun --nproc_per_node=8 -m claimsutil.train --store data/tokens --splits data/splits/splits.parquet \
        --out data/models/xl --profile paper --scale xl --tokens-per-step 65536 --max-steps 20000 --bf16 true

Every field of `claimsutil.config.PretrainConfig` is an option (defaults: the dataclass's); rank 0 prints
the metrics as one JSON line. Exit codes: 0 done, 2 a usage or parameter error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from dataclasses import replace

from claimsutil import tokenize as tok
from claimsutil.config import ParamsError, PretrainConfig, convert
from claimsutil.train.launch import model_config as model_config_for
from claimsutil.train.launch import split_ids
from claimsutil.train.loop import pretrain


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m claimsutil.train", description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="token store folder (tokenize.build_store)")
    ap.add_argument("--splits", required=True, help="splits parquet: subject_id, split (train / validation / ...)")
    ap.add_argument("--out", required=True, help="output folder (checkpoint, model, metrics, loss curve)")
    ap.add_argument("--scale", default="xs", help="a scale preset of the profile (claimsutil.model.SCALES)")
    ap.add_argument("--max-len", type=int, default=None, help="row length = model max_len (default: the store's)")
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    for f in dataclasses.fields(PretrainConfig):
        ap.add_argument("--" + f.name.replace("_", "-"), default=None, help=f"default {f.default!r}")
    return ap


def _value(text: str, hint) -> object:
    """An option's text as the field's type (the same strict conversion as params.yaml)."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        return [float(v) for v in text.split(",")]
    if hint is bool or (origin in (typing.Union, types.UnionType) and bool in typing.get_args(hint)):
        return {"true": True, "false": False}.get(text.lower(), text)  # `bool | "auto"`: "auto" stays text
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    hints = typing.get_type_hints(PretrainConfig)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainConfig)}
    values = {k: convert(_value(v, hints[k]), hints[k], f"--{k.replace('_', '-')}") for k, v in given.items()
              if v is not None}  # fmt: skip
    return PretrainConfig(**values)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = config_from_args(args)
    except ParamsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    store = tok.TokenStore(args.store)
    max_len = args.max_len or store.config.max_len
    model_config = replace(model_config_for(config, args.scale, store), max_len=max_len)
    result = pretrain(args.store, split_ids(args.splits, "train"), model_config, config, args.out,
                      split_ids(args.splits, "validation"), resume=not args.no_resume,
                      progress=not args.no_progress)  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
