"""What pretraining learned about medical codes: the encoder's code embeddings against clinical groupings.

A pretrained `ClaimsEncoder` holds two vectors per code: its input embedding (a row of `wte`) and, for
diagnosis and drug codes, its output vector (its row of `diagnosis_head` or `drug_head`, the vector the
masked-code prediction scores hidden states against). If pretraining learned medicine, codes of one clinical
group should lie near each other: diagnoses of one ICD-10 chapter, drugs of one ATC class.

    vocab = tok.Vocabulary.load("data/tokens/vocab.json")
    saved = torch.load("data/models/xs/model.pt", map_location="cpu", weights_only=False)
    labels = code_labels(vocab, atc_table())
    random = random_init_state(saved["model_config"], saved["model"]["family"], seed=0)
    vectors = {"xs pretrained": code_vectors(saved["model"], len(vocab)),
               "xs random init": code_vectors(random, len(vocab))}
    table = purity_table(vectors, labels)   # k-NN purity per model and grouping, with the chance interval

Labels. `icd10_chapter` maps an `ICD10/` (or `ICD10CM/`) token to its WHO chapter by the first three
characters of the code (`ICD10_CHAPTERS`; a code outside every WHO range, such as ICD-10-CM's D49, gets
none). `atc_class` maps a `YJ/` token to the ATC code of its ingredient (the first 7 characters of the YJ
code, looked up in `claimsutil/data/yj_drugs.csv`), truncated to a level. Suspected diagnoses are labelled
only on request (`code_labels(suspected=True)`): they are other tokens than the confirmed codes, and their
neighbours (the confirmed code) would inflate the score.

k-NN purity. Among the labelled codes only, each code's k nearest other codes by cosine similarity (ties go to
the lower row), and the share of them with the code's own label; purity is the mean over codes. A code whose
label has no other member counts with purity 0 (it cannot have a neighbour of its class), so purity depends
on the class sizes: it is read against chance, the same score with the labels shuffled among the same codes
(`permutation_interval`, neighbours computed once), and against the control that shows what pretraining
adds: the same architecture at its random initialisation (`random_init_state`).

Maps. `pca_map` projects the L2-normalised vectors on their first two principal components; `plot_map` draws
diagnoses by chapter and drugs by ATC class side by side.

Everything is deterministic: the same inputs and seed give the same numbers bit for bit.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import torch
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.preprocessing import normalize

from claimsutil.model import DIAGNOSIS, DRUG, ClaimsEncoder, ModelConfig
from claimsutil.tokenize import SUSPECTED_SUFFIX, Vocabulary

__all__ = [
    "ATC_GROUPS",
    "GROUPINGS",
    "ICD10_CHAPTERS",
    "atc_class",
    "atc_table",
    "code_labels",
    "code_vectors",
    "icd10_chapter",
    "knn_purity",
    "nearest_neighbours",
    "pca_map",
    "permutation_interval",
    "plot_map",
    "plot_purity",
    "purity_table",
    "random_init_state",
]

# WHO ICD-10 chapters: (first, last three-character code, roman numeral, short title).
ICD10_CHAPTERS: tuple[tuple[str, str, str, str], ...] = (
    ("A00", "B99", "I", "Infectious"),
    ("C00", "D48", "II", "Neoplasms"),
    ("D50", "D89", "III", "Blood"),
    ("E00", "E90", "IV", "Endocrine, metabolic"),
    ("F00", "F99", "V", "Mental"),
    ("G00", "G99", "VI", "Nervous"),
    ("H00", "H59", "VII", "Eye"),
    ("H60", "H95", "VIII", "Ear"),
    ("I00", "I99", "IX", "Circulatory"),
    ("J00", "J99", "X", "Respiratory"),
    ("K00", "K99", "XI", "Digestive"),
    ("L00", "L99", "XII", "Skin"),
    ("M00", "M99", "XIII", "Musculoskeletal"),
    ("N00", "N99", "XIV", "Genitourinary"),
    ("O00", "O99", "XV", "Pregnancy"),
    ("P00", "P99", "XVI", "Perinatal"),
    ("Q00", "Q99", "XVII", "Congenital"),
    ("R00", "R99", "XVIII", "Symptoms, signs"),
    ("S00", "T98", "XIX", "Injury"),
    ("V01", "Y98", "XX", "External causes"),
    ("Z00", "Z99", "XXI", "Health status"),
    ("U00", "U99", "XXII", "Special purposes"),
)
CHAPTER_TITLES = {roman: title for _, _, roman, title in ICD10_CHAPTERS}
# The ATC's anatomical main groups (level 1), for legends.
ATC_GROUPS = {
    "A": "Alimentary, metabolism",
    "B": "Blood",
    "C": "Cardiovascular",
    "D": "Dermatologicals",
    "G": "Genito-urinary, sex hormones",
    "H": "Systemic hormones",
    "J": "Anti-infectives",
    "L": "Antineoplastic, immunomodulating",
    "M": "Musculo-skeletal",
    "N": "Nervous system",
    "P": "Antiparasitic",
    "R": "Respiratory",
    "S": "Sensory organs",
    "V": "Various",
}
ATC_LEVELS = (1, 3, 4, 5, 7)  # characters of an ATC code at its levels 1-5 (C, C08, C08C, C08CA, C08CA01)
ICD10_PREFIXES = ("ICD10/", "ICD10CM/")
YJ_PREFIX = "YJ/"
YJ_INGREDIENT_LENGTH = 7
GROUPINGS = (("ICD-10 chapter", "chapter"), ("ATC class", "atc"))  # purity_table's groupings and label columns
DEFAULT_ATC_TABLE = Path(__file__).resolve().parent / "data" / "yj_drugs.csv"
_THREE_CHARACTER_CODE = re.compile(r"[A-Z][0-9]{2}")
_BLOCK_ROWS = 1024  # rows of the similarity matrix held at once when finding neighbours


# --- labels -------------------------------------------------------------------------------------------


def icd10_chapter(token: str) -> str | None:
    """The WHO chapter's roman numeral of an `ICD10/` or `ICD10CM/` token ("//suspected" stripped), else None
    (other tokens, and codes in no chapter's range)."""
    prefix = next((p for p in ICD10_PREFIXES if token.startswith(p)), None)
    if prefix is None:
        return None
    code = token.removesuffix(SUSPECTED_SUFFIX)[len(prefix) :].upper()
    if not _THREE_CHARACTER_CODE.match(code):
        return None
    head = code[:3]
    return next((roman for first, last, roman, _ in ICD10_CHAPTERS if first <= head <= last), None)


def atc_table(path: str | Path | None = None) -> pl.DataFrame:
    """The YJ ingredient table (default: the package's `data/yj_drugs.csv`) as prefix (7 digits, a string),
    ingredient, atc (null where the ingredient has no ATC code) and use (its therapeutic group, e.g.
    antihypertensive; null when the table has no `group` column)."""
    raw = pl.read_csv(DEFAULT_ATC_TABLE if path is None else path, infer_schema=False)
    use = pl.col("group") if "group" in raw.columns else pl.lit(None, pl.String)
    return raw.select(
        prefix=pl.col("yj_ingredient_prefix").str.strip_chars(),
        ingredient=pl.col("ingredient"),
        atc=pl.col("atc").str.strip_chars().replace("", None),
        use=use,
    )


def _drug_prefix(token: str) -> str | None:
    """The 7-character ingredient prefix of a `YJ/` token, else None."""
    if not token.startswith(YJ_PREFIX) or len(token) < len(YJ_PREFIX) + YJ_INGREDIENT_LENGTH:
        return None
    return token[len(YJ_PREFIX) : len(YJ_PREFIX) + YJ_INGREDIENT_LENGTH]


def _ingredients(table: pl.DataFrame) -> dict[str, tuple[str, str | None]]:
    """prefix -> (ingredient, atc) of an `atc_table`."""
    return {p: (i, a) for p, i, a in table.select("prefix", "ingredient", "atc").iter_rows()}


def _truncate_atc(atc: str | None, level: int) -> str | None:
    if level not in ATC_LEVELS:
        raise ValueError(f"ATC level {level}: want the characters of an ATC level, one of {ATC_LEVELS}")
    return atc[:level] if atc is not None and len(atc) >= level else None


def atc_class(token: str, table: pl.DataFrame, level: int = 3) -> str | None:
    """The ATC class of a `YJ/` token's ingredient: its ATC code's first LEVEL characters (1: "C", 3: "C08",
    4: "C08C", 5: "C08CA", 7: "C08CA01"). None for other tokens, ingredients not in TABLE (an `atc_table`) or
    without an ATC code, and codes that stop above LEVEL."""
    prefix = _drug_prefix(token)
    found = _ingredients(table).get(prefix) if prefix is not None else None
    return _truncate_atc(found[1] if found else None, level)


def code_labels(vocab: Vocabulary, table: pl.DataFrame, atc_level: int = 3, suspected: bool = False) -> pl.DataFrame:
    """One row per token id: id, token, family, count, chapter (`icd10_chapter`; null for suspected diagnoses
    unless SUSPECTED), atc (`atc_class` at ATC_LEVEL) and ingredient (drugs in TABLE, else null)."""
    ingredients = _ingredients(table)
    found = [ingredients.get(p) if (p := _drug_prefix(t)) is not None else None for t in vocab.tokens]
    chapters = [icd10_chapter(t) if suspected or not t.endswith(SUSPECTED_SUFFIX) else None for t in vocab.tokens]
    return pl.DataFrame(
        {
            "id": np.arange(len(vocab), dtype=np.int64),
            "token": list(vocab.tokens),
            "family": list(vocab.families),
            "count": list(vocab.counts),
            "chapter": chapters,
            "atc": [_truncate_atc(f[1] if f else None, atc_level) for f in found],
            "ingredient": [f[0] if f else None for f in found],
        },
        schema_overrides={"chapter": pl.String, "atc": pl.String, "ingredient": pl.String, "count": pl.Int64},
    )


# --- vectors ------------------------------------------------------------------------------------------


def _numpy(t: torch.Tensor) -> np.ndarray:
    return torch.as_tensor(t).detach().to(device="cpu", dtype=torch.float64).numpy()


def code_vectors(state: dict, vocab_size: int, which: str = "input") -> np.ndarray:
    """(vocab_size, width) float64 vectors of the tokens from an encoder's state dict. "input": the token
    embedding (`wte`); "output": each diagnosis and drug token's row of its family's head (rows are the
    family's tokens in vocabulary order), NaN for tokens without one (specials and other tokens)."""
    if which == "input":
        wte = _numpy(state["wte.weight"])
        if wte.shape[0] < vocab_size:
            raise ValueError(f"wte has {wte.shape[0]} rows, fewer than vocab_size={vocab_size}")
        return wte[:vocab_size].copy()
    if which != "output":
        raise ValueError(f"which={which!r}: want 'input' (token embedding) or 'output' (family heads)")
    if "diagnosis_head.weight" not in state or "drug_head.weight" not in state:
        raise ValueError("which='output': the state has no diagnosis_head and drug_head (not a ClaimsEncoder)")
    family = torch.as_tensor(state["family"]).cpu().numpy()
    width = state["diagnosis_head.weight"].shape[1]
    out = np.full((len(family), width), np.nan)
    for code, head in ((DIAGNOSIS, "diagnosis_head"), (DRUG, "drug_head")):
        out[np.flatnonzero(family == code)] = _numpy(state[f"{head}.weight"])
    if len(out) < vocab_size:
        raise ValueError(f"the state's family covers {len(out)} tokens, fewer than vocab_size={vocab_size}")
    return out[:vocab_size]


def random_init_state(model_config: dict, family: torch.Tensor | np.ndarray, seed: int) -> dict:
    """The state dict of a fresh `ClaimsEncoder(ModelConfig(**model_config), family)` initialised after
    `torch.manual_seed(seed)`: the same-shape, random-init control. The caller's torch RNG state is kept."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ClaimsEncoder(ModelConfig(**model_config), torch.as_tensor(family))
    return {name: t.detach().clone() for name, t in model.state_dict().items()}


# --- k-NN purity --------------------------------------------------------------------------------------


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero: cosine 0 to everything)."""
    return normalize(np.asarray(vectors, dtype=np.float64))


def _top_k(neg: np.ndarray, k: int) -> np.ndarray:
    """Per row of NEG, the positions of its k smallest values in ascending order, ties to the lower position:
    `np.argsort(neg, axis=1, kind="stable")[:, :k]`, by a partition and a sort of the few values at or below
    each row's k-th (a full sort of every row is most of the cost on a large vocabulary)."""
    k = min(k, neg.shape[1])
    kth = np.partition(neg, k - 1, axis=1)[:, k - 1 : k]
    out = np.empty((neg.shape[0], k), dtype=np.int64)
    for i, row in enumerate(neg <= kth):
        at = np.flatnonzero(row)
        out[i] = at[np.lexsort((at, neg[i, at]))][:k]
    return out


def _ranked(unit: np.ndarray, rows: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each of ROWS (indices into UNIT), the k most cosine-similar CANDIDATES (a boolean mask) other than
    itself, most similar first, ties to the lower index: (indices (len(rows), k), similarities)."""
    pool = np.flatnonzero(candidates)
    index, similarity = [], []
    for start in range(0, len(rows), _BLOCK_ROWS):
        block = rows[start : start + _BLOCK_ROWS]
        sim = unit[block] @ unit[pool].T  # (b, pool)
        sim[pool[None, :] == block[:, None]] = -np.inf  # never itself
        order = _top_k(-sim, k)  # ties to the lower index (pool order)
        index.append(pool[order])
        similarity.append(np.take_along_axis(sim, order, axis=1))
    return np.concatenate(index), np.concatenate(similarity)


def _labelled(vectors: np.ndarray, labels: np.ndarray | list | pl.Series, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(neighbours (n, k) as positions among the n labelled rows, class codes (n,)) for k-NN purity."""
    vectors = np.asarray(vectors, dtype=np.float64)
    values = labels.to_list() if isinstance(labels, pl.Series) else list(labels)
    if vectors.ndim != 2 or len(values) != len(vectors):
        raise ValueError(f"vectors {vectors.shape} and {len(values)} labels: want (n, width) and n labels")
    if k < 1:
        raise ValueError(f"k={k}: want at least 1 neighbour")
    keep = np.array([v is not None and v == v for v in values], dtype=bool)  # v == v: not a float NaN
    if int(keep.sum()) < k + 1:
        raise ValueError(f"{int(keep.sum())} labelled rows: k-NN purity with k={k} needs at least {k + 1}")
    if not np.isfinite(vectors[keep]).all():
        raise ValueError("some labelled rows have non-finite vectors (a code without an output vector?)")
    _, codes = np.unique(np.asarray([v for v, kept in zip(values, keep, strict=True) if kept]), return_inverse=True)
    unit = _unit_rows(vectors[keep])
    neighbours, _ = _ranked(unit, np.arange(len(unit)), np.ones(len(unit), dtype=bool), k)
    return neighbours, codes.ravel()


def _purity(neighbours: np.ndarray, codes: np.ndarray) -> float:
    return float((codes[neighbours] == codes[:, None]).mean())


def _chance(neighbours: np.ndarray, codes: np.ndarray, n_permutations: int, seed: int, alpha: float) -> dict:
    if n_permutations < 1 or not 0 < alpha < 1:
        raise ValueError(f"n_permutations={n_permutations}, alpha={alpha}: want at least 1 and 0 < alpha < 1")
    rng = np.random.default_rng(seed)
    values = np.array([_purity(neighbours, rng.permutation(codes)) for _ in range(n_permutations)])
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return {"mean": float(values.mean()), "low": float(low), "high": float(high), "n_permutations": n_permutations}


def knn_purity(vectors: np.ndarray, labels: np.ndarray | list | pl.Series, k: int = 5) -> float:
    """Mean over the labelled rows (label not None, null or NaN) of the share of their k nearest other labelled rows
    (cosine; ties to the lower row) that share their label. A row whose label has no other member scores 0.
    ValueError when fewer than k + 1 rows are labelled."""
    return _purity(*_labelled(vectors, labels, k))


def permutation_interval(
    vectors: np.ndarray,
    labels: np.ndarray | list | pl.Series,
    k: int = 5,
    n_permutations: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """k-NN purity by chance: the labels shuffled among the labelled rows (numpy's Generator seeded by SEED),
    neighbours unchanged. {"mean", "low", "high" (the alpha/2 and 1 - alpha/2 quantiles), "n_permutations"}."""
    return _chance(*_labelled(vectors, labels, k), n_permutations, seed, alpha)


def purity_table(
    vectors_by_model: dict[str, np.ndarray],
    labels: pl.DataFrame,
    k: int = 5,
    n_permutations: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    groupings: Sequence[tuple[str, str]] = GROUPINGS,
) -> pl.DataFrame:
    """k-NN purity per model (VECTORS_BY_MODEL: name -> (vocab, width) vectors, rows as LABELS' rows) and
    grouping (ICD-10 chapter: LABELS' column chapter; ATC class: column atc), with the permutation interval:
    model, grouping, codes, classes, k, purity, chance_mean, chance_low, chance_high, above_chance."""
    rows = []
    for model, vectors in vectors_by_model.items():
        for grouping, column in groupings:
            neighbours, codes = _labelled(vectors, labels[column], k)
            chance = _chance(neighbours, codes, n_permutations, seed, alpha)
            purity = _purity(neighbours, codes)
            rows.append(
                {
                    "model": model,
                    "grouping": grouping,
                    "codes": len(codes),
                    "classes": int(codes.max()) + 1,
                    "k": k,
                    "purity": purity,
                    "chance_mean": chance["mean"],
                    "chance_low": chance["low"],
                    "chance_high": chance["high"],
                    "above_chance": purity > chance["high"],
                }
            )
    return pl.DataFrame(rows)


def nearest_neighbours(
    vectors: np.ndarray,
    tokens: Sequence[str],
    queries: Sequence[str],
    n: int = 5,
    restrict: np.ndarray | None = None,
) -> pl.DataFrame:
    """Each query token's N most cosine-similar other tokens among RESTRICT (a boolean mask over the rows;
    default every row with a finite vector), most similar first: query, rank (1 = nearest), neighbour,
    similarity. KeyError naming the queries that are not in TOKENS."""
    vectors = np.asarray(vectors, dtype=np.float64)
    ids = {t: i for i, t in enumerate(tokens)}
    missing = [q for q in queries if q not in ids]
    if missing:
        raise KeyError(f"not among the tokens: {', '.join(missing)}")
    finite = np.isfinite(vectors).all(axis=1)
    candidates = finite if restrict is None else finite & np.asarray(restrict, dtype=bool)
    rows = np.array([ids[q] for q in queries], dtype=np.int64)
    if not finite[rows].all():
        raise ValueError(f"no finite vector for: {', '.join(q for q in queries if not finite[ids[q]])}")
    unit = _unit_rows(np.where(finite[:, None], vectors, 0.0))
    index, similarity = _ranked(unit, rows, candidates, n)
    out = [  # fewer than N candidates: the query itself comes last at -inf and is dropped
        {"query": q, "rank": r + 1, "neighbour": tokens[j], "similarity": float(s)}
        for q, idx, sims in zip(queries, index, similarity, strict=True)
        for r, (j, s) in enumerate(zip(idx, sims, strict=True))
        if np.isfinite(s)
    ]
    schema = {"query": pl.String, "rank": pl.Int64, "neighbour": pl.String, "similarity": pl.Float64}
    return pl.DataFrame(out, schema=schema)


# --- maps ---------------------------------------------------------------------------------------------


def pca_map(vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """(n, 2) coordinates on the first two principal components of the L2-normalised vectors (full SVD:
    deterministic, signs fixed by scikit-learn); rows with non-finite vectors get NaN."""
    vectors = np.asarray(vectors, dtype=np.float64)
    finite = np.isfinite(vectors).all(axis=1)
    coords = np.full((len(vectors), 2), np.nan)
    coords[finite] = PCA(n_components=2, svd_solver="full", random_state=seed).fit_transform(
        _unit_rows(vectors[finite])
    )
    return coords


def _legend_classes(classes: list[str], top: int) -> list[str]:
    """The TOP most frequent classes, most frequent first (ties by name)."""
    counts = Counter(classes)
    return sorted(counts, key=lambda c: (-counts[c], c))[:top]


def _scatter_classes(ax, coords: np.ndarray, classes: list[str], names: dict[str, str], top: int) -> None:
    """Points coloured by class: the TOP most frequent in colour (legend), the others grey."""
    import matplotlib.pyplot as plt

    shown = _legend_classes(classes, top)
    values = np.asarray(classes, dtype=object)
    rest = ~np.isin(values, shown)
    if rest.any():
        ax.scatter(*coords[rest].T, s=6, color="0.8", lw=0, label=f"other ({int(rest.sum())})")
    colors = plt.get_cmap("tab20" if len(shown) > 10 else "tab10")
    for i, c in enumerate(shown):
        rows = values == c
        label = f"{c} {names.get(c, '')}".strip() + f" ({int(rows.sum())})"
        ax.scatter(*coords[rows].T, s=8, color=colors(i), lw=0, label=label)
    ax.legend(fontsize=6, markerscale=1.5, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    ax.set(xlabel="PC 1", ylabel="PC 2")


def plot_map(coords: np.ndarray, labels: pl.DataFrame, title: str = "", top: int = 10) -> Figure:
    """Two panels of a `pca_map`: diagnosis codes coloured by ICD-10 chapter, drug codes by ATC class (the
    level of LABELS' atc column), the TOP most frequent classes of each in the legend, the others grey."""
    import matplotlib.pyplot as plt

    coords = np.asarray(coords, dtype=np.float64)
    if coords.shape != (labels.height, 2):
        raise ValueError(f"coords {coords.shape} for {labels.height} label rows: want ({labels.height}, 2)")
    finite = np.isfinite(coords).all(axis=1)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    atc = labels["atc"].drop_nulls()
    level = int(atc.str.len_chars().max()) if atc.len() else 0
    panels = (
        ("chapter", CHAPTER_TITLES, "Diagnoses by ICD-10 chapter"),
        ("atc", ATC_GROUPS if level == 1 else {}, f"Drugs by ATC level-{level} class"),  # level as in `atc_class`
    )
    for ax, (column, names, panel_title) in zip(axes, panels, strict=True):
        rows = labels[column].is_not_null().to_numpy() & finite
        classes = labels[column].filter(pl.Series(rows)).to_list()
        if classes:
            _scatter_classes(ax, coords[rows], classes, names, top)
        ax.set_title(f"{panel_title} ({len(classes)} codes)", fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_purity(table: pl.DataFrame) -> Figure:
    """k-NN purity per model (bars), one panel per grouping (and per min_count, for `purity_by_frequency`), with
    the permutation interval of chance (the black bar from chance_low to chance_high, its mean marked)."""
    import matplotlib.pyplot as plt

    keys = ["min_count", "grouping"] if "min_count" in table.columns else ["grouping"]
    panels = table.select(keys).unique(maintain_order=True).rows()
    cols = len(table["grouping"].unique())
    rows = -(-len(panels) // cols)
    width = max(2.8, 0.32 * table["model"].n_unique())
    fig, axes = plt.subplots(rows, cols, figsize=(0.9 + width * cols, 3.4 * rows), squeeze=False)
    top = max(0.3, float(table["purity"].max()) * 1.15, float(table["chance_high"].max()) * 1.15)
    for ax, panel in zip(axes.flat, panels, strict=False):
        t = table.filter(*(pl.col(key) == value for key, value in zip(keys, panel, strict=True)))
        x = np.arange(t.height)
        colors = ["tab:gray" if "random" in m else "tab:blue" for m in t["model"].to_list()]
        ax.bar(x, t["purity"].to_numpy(), color=colors, width=0.6, label="k-NN purity")
        mean = t["chance_mean"].to_numpy()
        err = [mean - t["chance_low"].to_numpy(), t["chance_high"].to_numpy() - mean]
        ax.errorbar(x, mean, yerr=err, fmt="_", color="black", capsize=4, ms=10, label="chance (permutations)")
        ax.set_xticks(x, t["model"].to_list(), rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0, top)
        seen = f", codes seen >= {panel[0]:,}x" if len(keys) == 2 and panel[0] else ""
        ax.set_title(f"{t['grouping'][0]} (k = {t['k'][0]}, {t['codes'][0]:,} codes{seen})", fontsize=9)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("share of neighbours in the same class")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


# --- the study ----------------------------------------------------------------------------------------


def resolve_queries(labels: pl.DataFrame, prefixes: Sequence[str]) -> tuple[list[str], list[str]]:
    """Each code prefix's most frequent confirmed token (ties: the first in the vocabulary), and the prefixes
    that match no token (a user's data may hold other codes: they are reported, never an error)."""
    found, missing = [], []
    for prefix in prefixes:
        hits = labels.filter(pl.col("token").str.starts_with(prefix) & ~pl.col("token").str.ends_with(SUSPECTED_SUFFIX))
        if hits.height == 0:
            missing.append(prefix)
        else:
            found.append(hits.sort(["count", "id"], descending=[True, False])["token"][0])
    return found, missing


def study_vectors(models: dict[str, str | Path], vocab_size: int, seed: int) -> dict[str, np.ndarray]:
    """Per scale (MODELS: scale -> model.pt) the pretrained encoder's input and output code vectors and those of
    the same architecture at a random initialisation (seeded by SEED): "<scale> pretrained, input", ..."""
    out = {}
    for scale, path in models.items():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        random = random_init_state(saved["model_config"], saved["model"]["family"], seed)
        for init, state in (("pretrained", saved["model"]), ("random init", random)):
            for which in ("input", "output") if init == "pretrained" else ("input",):  # random: both are noise
                out[f"{scale} {init}, {which}"] = code_vectors(state, vocab_size, which)
    return out


def purity_by_frequency(
    vectors_by_model: dict[str, np.ndarray],
    labels: pl.DataFrame,
    min_counts: Sequence[int],
    k: int = 5,
    n_permutations: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> pl.DataFrame:
    """`purity_table` among the codes seen at least each of MIN_COUNTS times among the pretraining patients
    (LABELS' count; 0: every labelled code), stacked with a column min_count: a code seen a handful of times
    keeps an embedding near its initialisation, and rare codes are most of a claims vocabulary."""
    tables = []
    for min_count in min_counts:
        rare = pl.col("count") < min_count
        kept = labels.with_columns(pl.when(rare).then(None).otherwise(pl.col(c)).alias(c) for c in ("chapter", "atc"))
        enough = [(g, c) for g, c in GROUPINGS if kept[c].drop_nulls().len() > k]  # k + 1 codes at least
        if enough:
            table = purity_table(vectors_by_model, kept, k, n_permutations, seed, alpha, enough)
            tables.append(table.select(pl.lit(min_count, pl.Int64).alias("min_count"), pl.all()))
    if not tables:
        raise ValueError(f"no grouping has more than k = {k} labelled codes at any of min_counts {list(min_counts)}")
    return pl.concat(tables)


def neighbour_table(vectors: np.ndarray, labels: pl.DataFrame, queries: Sequence[str], n: int = 5,
                    min_count: int = 0) -> pl.DataFrame:  # fmt: skip
    """`nearest_neighbours` of QUERIES among diagnosis and drug codes (suspected ones left out) seen at least
    MIN_COUNT times, each neighbour with its ingredient, ICD-10 chapter or ATC class and therapeutic use
    (`atc_table`), and whether it shares the query's class (same_group) and use (same_use: a drug of the
    query drug's group, e.g. another antihypertensive)."""
    codes = labels["family"].is_in(["diagnosis", "drug"]) & ~labels["token"].str.ends_with(SUSPECTED_SUFFIX)
    codes = codes & (labels["count"] >= min_count)
    table = nearest_neighbours(vectors, labels["token"].to_list(), queries, n, restrict=codes.to_numpy())
    uses = dict(atc_table().select("ingredient", "use").iter_rows())
    group = labels.select("token", "ingredient", group=pl.coalesce("chapter", "atc")).with_columns(
        use=pl.col("ingredient").replace_strict(uses, default=None, return_dtype=pl.String)
    )
    table = table.join(group.rename({"token": "neighbour"}), on="neighbour", how="left")
    query = group.select(query="token", query_ingredient="ingredient", query_group="group", query_use="use")
    table = table.join(query, on="query", how="left")
    return table.with_columns(
        same_group=(pl.col("group") == pl.col("query_group")).fill_null(False),
        same_use=(pl.col("use") == pl.col("query_use")).fill_null(False),
    ).select("query", "query_ingredient", "query_group", "rank", "neighbour", "ingredient", "group", "use",
             "same_group", "same_use", "similarity")  # fmt: skip


def findings(purity: pl.DataFrame, neighbours: pl.DataFrame, scales: Sequence[str]) -> list[str]:
    """What pretraining learned about codes, in sentences generated from the numbers (PURITY:
    `purity_by_frequency`)."""
    out = []
    for (min_count, grouping), g in purity.group_by("min_count", "grouping", maintain_order=True):
        parts = []
        for scale in scales:
            mine = g.filter(pl.col("model") == f"{scale} pretrained, input")
            base = g.filter(pl.col("model") == f"{scale} random init, input")
            if mine.height and base.height:
                parts.append(f"{scale} {mine['purity'][0]:.0%} (random init {base['purity'][0]:.0%})")
        pretrained = g.filter(pl.col("model").str.contains("pretrained"))
        which = "every labelled code" if min_count == 0 else f"codes seen at least {min_count:,} times"
        out.append(
            f"By {grouping}, among {which} ({g['codes'][0]:,} codes in {g['classes'][0]} classes): the share of a "
            f"code's {g['k'][0]} nearest input embeddings in its own class is " + ", ".join(parts)
            + f"; chance {g['chance_low'].min():.0%}-{g['chance_high'].max():.0%}. Pretrained vectors (input and "
            f"output) above chance: {int(pretrained['above_chance'].sum())} of {pretrained.height}."
        )  # fmt: skip
    if neighbours.height:
        share = neighbours.group_by("query", maintain_order=True).agg(
            pl.col("query_ingredient").first(), pl.col("same_group").sum(), pl.col("same_use").sum(), pl.len(),
            drugs=pl.col("ingredient").drop_nulls().str.join(", "),
        )  # fmt: skip
        described = "; ".join(
            f"{r['query_ingredient'] or r['query']}: {r['same_group']}/{r['len']} in its class"
            + (f", {r['same_use']} of its use ({r['drugs'] or 'no drug'})" if r["query_ingredient"] else "")
            for r in share.iter_rows(named=True)
        )
        out.append(f"The {neighbours['rank'].max()} nearest codes of ten a clinician would pick: {described}.")
    return out
