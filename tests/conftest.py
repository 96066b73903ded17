"""Shared fixtures: MEDS datasets built by an external generator (meds-testing-helpers).

They use other code vocabularies and shapes than ours (nested split shards, numeric lab values, duplicate
rows, empty or partial code metadata); the validator, importer and data description must accept them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_STUDY = pytest.StashKey[dict]()


# --- the tiny-profile study, run in the background -------------------------------------------------------
# `dvc repro` of the tiny profile takes minutes on one core while most other tests use one: it starts as soon
# as the tests are collected (when any test marked `pipeline` is among them) in a copy of the project, and the
# pipeline tests wait for it through the `tiny_study_run` fixture.


def project_files() -> list[str]:
    """Tracked files plus new ones git does not ignore: what a fresh clone of this work tree holds."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


CKD_BUILTIN = "  ckd:\n    outcome: [ICD10/N18]\n"
CKD_ACES = "    aces: tasks/aces/ckd.yaml\n"


def _ensure_aces() -> None:
    """The ACES environment (`make aces`; `make test` builds it first): built here when pytest runs alone."""
    from claimsutil import aces

    try:
        aces.aces_cli()
    except aces.AcesError:
        subprocess.run(["make", "--no-print-directory", "aces"], cwd=ROOT, capture_output=True, check=True)


def _start_tiny_study() -> dict:
    from claimsutil.config import use_profile

    copy = Path(tempfile.mkdtemp(prefix="claims-tiny-study-"))
    for name in project_files():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["CLAIMSUTIL_ROOT"] = str(copy)  # the notebooks must resolve paths inside the copy
    env["DVC_NO_ANALYTICS"] = "1"
    subprocess.run(["git", "init", "-q"], cwd=copy, env=env, check=True)
    use_profile("tiny", copy)
    # One task defined by an ACES config (tasks/aces/ckd.yaml instead of the built-in rules), end to end.
    params = copy / "params.yaml"
    text = params.read_text(encoding="utf-8")
    assert CKD_BUILTIN in text, "params.yaml's ckd task changed: update tests/conftest.py"
    params.write_text(text.replace(CKD_BUILTIN, CKD_BUILTIN + CKD_ACES), encoding="utf-8")
    _ensure_aces()
    out, err = open(copy.with_name(copy.name + ".out"), "w+"), open(copy.with_name(copy.name + ".err"), "w+")
    process = subprocess.Popen([sys.executable, "-m", "dvc", "repro"], cwd=copy, env=env, stdout=out, stderr=err,
                               text=True, start_new_session=True)  # fmt: skip
    return {"copy": copy, "env": env, "process": process, "stdout": out, "stderr": err}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The pipeline tests last: every other test runs while the tiny study runs in the background (those after
    tests/test_pipeline.py in name order used to wait for it)."""
    items.sort(key=lambda item: item.get_closest_marker("pipeline") is not None)  # stable: name order otherwise


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly or not any(i.get_closest_marker("pipeline") for i in session.items):
        return
    session.config.stash[TINY_STUDY] = _start_tiny_study()


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(TINY_STUDY, None)
    if run is None:
        return
    if run["process"].poll() is None:  # the session ended first (-x, a keyboard interrupt): stop the study
        os.killpg(run["process"].pid, signal.SIGTERM)
        run["process"].wait()
    for f in (run["stdout"], run["stderr"]):
        f.close()
        Path(f.name).unlink(missing_ok=True)
    shutil.rmtree(run["copy"], ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_study_run(request: pytest.FixtureRequest) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """(copy, env, the finished `dvc repro`) of the tiny study started after collection."""
    run = request.config.stash.get(TINY_STUDY, None)
    if run is None:  # a pipeline test requested outside a collection that started it
        run = request.config.stash[TINY_STUDY] = _start_tiny_study()
    code = run["process"].wait()
    outputs = []
    for f in (run["stdout"], run["stderr"]):
        f.seek(0)
        outputs.append(f.read())
    done = subprocess.CompletedProcess(run["process"].args, code, *outputs)
    assert code == 0, f"dvc repro failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return run["copy"], run["env"], done


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
def chromium() -> None:
    """Headless Chromium for the browser checks (claimsutil.browser): skipped, saying what to install, where it
    is missing; under .ci/run, which installs it, a missing browser fails instead."""
    from claimsutil import browser

    try:
        browser.find_browser()
    except browser.BrowserMissing as e:
        if os.environ.get("CLAIMSUTIL_REQUIRE_BROWSER"):
            pytest.fail(str(e))
        pytest.skip(f"the browser check needs Chromium: {e}")


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
