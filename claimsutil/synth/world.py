"""The fixed parts of a synthetic database: the code vocabulary, the catalogue as arrays, the hospitals.

A `World` depends only on the parameters and the seed, so every worker process rebuilds the same one
and any block of patients can be simulated independently of the others.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from claimsutil.config import SynthParams
from claimsutil.meds import COVERAGE_END, COVERAGE_START
from claimsutil.synth import catalog as cat
from claimsutil.synth import tail

STATIC_CODES = ("MEDS_BIRTH", "MEDS_DEATH", "GENDER/F", "GENDER/M", COVERAGE_START, COVERAGE_END)
END_REASONS = ("", "insurance_change", "death", "data_cutoff")  # text_value of COVERAGE/END
INSURANCE_CHANGE, DEATH, DATA_CUTOFF = 1, 2, 3


def seed_sequence(seed: int, *key: int) -> np.random.SeedSequence:
    """Independent streams: (0,) for the world, (1, block) for each block of patients."""
    return np.random.SeedSequence(seed, spawn_key=key)


def hospital_code(h: int) -> str:
    return f"HOSPITAL/H{h + 1:02d}"


@dataclass
class Hospitals:
    """Per-hospital habits, drawn once per seed."""

    weight: np.ndarray  # (H,) share of patients
    age_shift: np.ndarray  # (H,) years added to the patient age mix
    visit: np.ndarray  # (H,) log multiplier of visits without chronic treatment
    rx_days: np.ndarray  # (H,) days' supply of chronic prescriptions (28, 30, 56)
    chronic_visit: np.ndarray  # (H,) monthly visit probability of patients on chronic drugs
    suspect: np.ndarray  # (H,) multiplier of suspected-diagnosis coding
    detect: np.ndarray  # (H,) multiplier of diagnostic intensity
    habit: dict[str, np.ndarray]  # habit -> (H,) multiplier
    class_pref: np.ndarray  # (H, n_classes) log preference for a drug class
    drug_pref: np.ndarray  # (H, n_drugs) log preference for an ingredient
    specificity: np.ndarray  # (H,) share of doctors who write the specific subcategory (N18.3, K25.0, ...)
    product: np.ndarray  # (H, n_drugs) the product the hospital stocks of each ingredient (index into products)


class World:
    """Vocabulary, catalogue arrays and hospitals for one (params, seed)."""

    def __init__(self, params: SynthParams):
        self.params = params
        self.start = dt.date.fromisoformat(params.start)
        self.drug_names = tuple(cat.drugs())
        self.drug_index = {d: i for i, d in enumerate(self.drug_names)}
        self.classes = tuple(sorted(set(cat.DRUG_CLASS.values())))
        self.codes = self._vocabulary()
        self.code_index = {c: i for i, c in enumerate(self.codes)}
        self.hospitals = self._draw_hospitals(np.random.default_rng(seed_sequence(params.seed, 0)))
        self.tail = tail.build_tables(self.code_index, self.drug_index)
        # (H, n_drugs): vocabulary index of the product each hospital prescribes for each ingredient.
        product_codes = [[self.code(c) for c in cat.drugs()[d].codes] for d in self.drug_names]
        self.drug_code = np.array(
            [[product_codes[d][self.hospitals.product[h, d]] for d in range(len(self.drug_names))]
             for h in range(params.hospitals)]
        )  # fmt: skip
        for name in (*params.truth_conditions,):
            if name not in cat.CONDITION_NAMES:
                raise ValueError(f"synth.truth_conditions: unknown condition '{name}'; known: {cat.CONDITION_NAMES}")
        for name in params.truth_drugs:
            if name not in self.drug_index:
                raise ValueError(f"synth.truth_drugs: unknown drug '{name}'; known: {self.drug_names}")

    def _vocabulary(self) -> tuple[str, ...]:
        codes = list(STATIC_CODES)
        codes += [hospital_code(h) for h in range(self.params.hospitals)]
        codes += [f"ICD10/{c.icd}" for c in cat.CONDITIONS]
        codes += [f"ICD10/{s}" for c in cat.CONDITIONS for s in (*c.stages, *([c.later_icd] if c.later_icd else []))]
        codes += [f"ICD10/{a.icd}" for a in cat.ACUTES]
        codes += list(tail.tail_codes())
        codes += [code for d in self.drug_names for code in cat.drugs()[d].codes]
        if len(set(codes)) != len(codes):
            raise AssertionError("the catalogue reuses a code; every condition and episode needs its own")
        return tuple(codes)

    def code(self, name: str) -> int:
        return self.code_index[name]

    @cached_property
    def month_days(self) -> np.ndarray:
        """Day number (days since 1970-01-01) of the first day of each month, months 0..T (T = window end)."""
        first = np.datetime64(self.start.isoformat(), "M")
        months = first + np.arange(self.params.months + 1)
        return months.astype("datetime64[D]").astype(np.int64)

    @cached_property
    def launch_month(self) -> np.ndarray:
        """(n_drugs,) first month index an ingredient may be chosen (launches inside the window)."""
        out = np.zeros(len(self.drug_names), dtype=np.int64)
        for name, day in cat.LAUNCH.items():
            out[self.drug_index[name]] = (day.year - self.start.year) * 12 + day.month - self.start.month
        return out

    def drug_class_index(self, drug: str) -> int:
        cls = cat.DRUG_CLASS.get(drug)
        return self.classes.index(cls) if cls else -1

    def _draw_hospitals(self, rng: np.random.Generator) -> Hospitals:
        H, s = self.params.hospitals, cat.HospitalSpread()
        size = rng.lognormal(0.0, s.size, H)
        rx_days = rng.choice(np.array([28, 30, 56]), size=H, p=[0.45, 0.25, 0.30])
        chronic_visit = np.where(rx_days == 56, 0.52, 0.88) * rng.uniform(0.92, 1.05, H)
        habit = {k: rng.lognormal(0.0, s.habit, H) for k in ("antibiotics", "rebamipide", "gabapentinoid")}
        age_shift, visit = rng.normal(0.0, s.age_shift, H), rng.normal(0.0, s.visit, H)
        suspect, detect = rng.lognormal(0.0, s.suspect, H), rng.lognormal(0.0, s.detect, H)
        class_pref = rng.normal(0.0, s.class_pref, (H, len(self.classes)))
        drug_pref = rng.normal(0.0, s.drug_pref, (H, len(self.drug_names)))
        specificity = 1.0 / (1.0 + np.exp(-rng.normal(s.specificity_logit, s.specificity, H)))
        n_products = np.array([len(cat.drugs()[d].products) for d in self.drug_names])
        product = np.floor(rng.random((H, len(self.drug_names))) * n_products).astype(np.int64)
        return Hospitals(
            weight=size / size.sum(),
            age_shift=age_shift,
            visit=visit,
            rx_days=rx_days.astype(np.float32),
            chronic_visit=np.clip(chronic_visit, 0.3, 0.97),
            suspect=suspect,
            detect=detect,
            habit=habit,
            class_pref=class_pref,
            drug_pref=drug_pref,
            specificity=specificity,
            product=product,
        )
