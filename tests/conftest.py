"""Shared fixtures: MEDS datasets built by an external generator (meds-testing-helpers).

They use other code vocabularies and shapes than ours (nested split shards, numeric lab values, duplicate
rows, empty or partial code metadata); the validator, importer and data description must accept them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def small_world(root: Path, patients: int, seed: int, max_len: int | None = None) -> dict:
    """A small built-in world under ROOT as the pipeline lays it out: meds/ (and meds_truth/), splits/splits.parquet
    and tokens/ (the vocabulary of the train and validation patients). Returns the paths, the splits frame and
    the vocabulary size."""
    from claimsutil import splits as sp
    from claimsutil import tokenize as tok
    from claimsutil.config import CohortParams, SynthParams
    from claimsutil.synth import generate

    meds = root / "meds"
    block = patients // 2
    generate(SynthParams(patients=patients, seed=seed, block_size=block, shard_size=patients, workers=1), meds,
             root / "meds_truth", progress=False)  # fmt: skip
    splits = sp.build_splits(meds, CohortParams())[0]
    (root / "splits").mkdir(exist_ok=True)
    splits.write_parquet(root / "splits" / sp.SPLITS_FILE)
    ids = splits.filter(splits["split"].is_in(["train", "validation"]))["subject_id"].to_numpy()
    config = tok.TokenizeConfig() if max_len is None else tok.TokenizeConfig(max_len=max_len)
    vocab = tok.build_vocabulary(meds, ids, config)
    tok.build_store(meds, vocab, root / "tokens", config)
    return {"meds": meds, "splits_dir": root / "splits", "splits_file": root / "splits" / sp.SPLITS_FILE,
            "splits": splits, "tokens": root / "tokens", "vocab_size": len(vocab.tokens)}  # fmt: skip


@pytest.fixture
def one_thread():
    """One torch thread: the machine has 2 cores shared with other work, and oversubscription is 10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def static_meds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's static sample: nested split shards and code metadata covering only some codes."""
    from meds_testing_helpers.dataset import MEDSDataset
    from meds_testing_helpers.static_sample_data import SIMPLE_STATIC_SHARDED_BY_SPLIT

    root = tmp_path_factory.mktemp("static_meds")
    MEDSDataset.from_yaml(SIMPLE_STATIC_SHARDED_BY_SPLIT).write(root)
    return root


@pytest.fixture(scope="session")
def generated_meds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random dataset from the package's generator (exact duplicate rows, empty codes.parquet)."""
    root = tmp_path_factory.mktemp("generated") / "meds"
    # The generator's console script is not on PATH unless the venv is activated; run its entry point.
    script = "from meds_testing_helpers.dataset_generator import main; main()"
    args = ["seed=1", "N_subjects=200", "do_overwrite=False", f"output_dir={root}"]
    result = subprocess.run(
        [sys.executable, "-c", script, *args, "dataset_spec/data_generator=sample"],
        capture_output=True,
        text=True,
        check=False,
        cwd=root.parent,
    )
    assert result.returncode == 0, result.stderr
    return root
