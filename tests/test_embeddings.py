"""Code embeddings against clinical groupings: labels, vectors from a state dict, k-NN purity and its chance
interval, nearest neighbours, maps."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import pytest
import torch

from claimsutil import embeddings as emb
from claimsutil.model import ClaimsEncoder, ModelConfig
from claimsutil.tokenize import Vocabulary

# A tiny encoder: tokens 4, 6, 9 are diagnoses, 5 and 8 drugs, 7 other.
FAMILY = torch.tensor([0, 0, 0, 0, 1, 2, 1, 3, 2, 1])
TINY = dict(vocab_size=10, max_len=8, n_layer=1, n_head=1, n_embd=8)


def planted(n_per_class: int = 20, noise: float = 0.05, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """3 classes of N_PER_CLASS rows: each row its class centroid plus small Gaussian noise."""
    rng = np.random.default_rng(seed)
    centroids = rng.normal(size=(3, 16))
    labels = np.repeat(np.arange(3), n_per_class)
    return centroids[labels] + noise * rng.normal(size=(len(labels), 16)), [f"class {c}" for c in labels]


# --- labels -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "chapter"),
    [
        ("ICD10/A00.1", "I"),
        ("ICD10/B99", "I"),
        ("ICD10/D48.9", "II"),
        ("ICD10/D50.0", "III"),
        ("ICD10/H59.8", "VII"),
        ("ICD10/H60.0", "VIII"),
        ("ICD10/E11.9//suspected", "IV"),
        ("ICD10CM/I10", "IX"),
        ("ICD10/S72.0", "XIX"),
        ("ICD10/T98.3", "XIX"),
        ("ICD10/U07.1", "XXII"),
        ("ICD10/Z00", "XXI"),
        ("ICD10/D49", None),  # ICD-10-CM only: in no WHO range
        ("ICD10/E1", None),  # not a three-character code
        ("YJ/2171022F1053", None),
        ("HOSPITAL/H01", None),
        ("[CLS]", None),
    ],
)
def test_icd10_chapter_by_code_range(token, chapter):
    assert emb.icd10_chapter(token) == chapter


def test_the_chapters_cover_the_ranges_in_order_without_overlap():
    ranges = sorted((first, last) for first, last, _, _ in emb.ICD10_CHAPTERS)
    assert len(emb.ICD10_CHAPTERS) == 22
    assert all(a_last < b_first for (_, a_last), (b_first, _) in zip(ranges, ranges[1:], strict=False))


def test_atc_class_with_the_real_table():
    table = emb.atc_table()
    assert table.columns == ["prefix", "ingredient", "atc", "use"]
    assert table.filter(pl.col("ingredient") == "amlodipine")["use"].to_list() == ["antihypertensive"]
    assert table["prefix"].dtype == pl.String and (table["prefix"].str.len_chars() == 7).all()
    assert emb.atc_class("YJ/2171022F1053", table) == "C08"  # amlodipine
    assert emb.atc_class("YJ/2171022F1053", table, level=1) == "C"
    assert emb.atc_class("YJ/2171022F1053", table, level=4) == "C08C"
    assert emb.atc_class("YJ/2149044F1032", table) == "C09"  # olmesartan, an ARB
    assert emb.atc_class("YJ/9999999F0000", table) is None  # not in the table
    assert emb.atc_class("YJ/5200092C1025", table) is None  # daikenchuto: in the table, no ATC code
    assert emb.atc_class("ICD10/I10", table) is None
    with pytest.raises(ValueError, match="ATC level 2"):
        emb.atc_class("YJ/2171022F1053", table, level=2)


def test_code_labels_one_row_per_token():
    tokens = ("[PAD]", "[MASK]", "[CLS]", "[UNK]", "ICD10/E11.9", "ICD10/E11.9//suspected", "YJ/2171022F1053",
              "YJ/9999999F0000", "HOSPITAL/H01")  # fmt: skip
    families = ("special",) * 4 + ("diagnosis", "diagnosis", "drug", "drug", "other")
    vocab = Vocabulary(tokens=tokens, families=families, counts=tuple(range(len(tokens))))
    labels = emb.code_labels(vocab, emb.atc_table())
    assert labels.columns == ["id", "token", "family", "count", "chapter", "atc", "ingredient"]
    assert labels["id"].to_list() == list(range(len(tokens))) and labels["count"].to_list() == list(range(9))
    assert labels["chapter"].to_list() == [None] * 4 + ["IV"] + [None] * 4  # the suspected code: not labelled
    assert labels["atc"].to_list() == [None] * 6 + ["C08", None, None]
    assert labels["ingredient"].to_list() == [None] * 6 + ["amlodipine", None, None]
    both = emb.code_labels(vocab, emb.atc_table(), atc_level=1, suspected=True)
    assert both["chapter"][5] == "IV" and both["atc"][6] == "C"


# --- vectors ------------------------------------------------------------------------------------------


def test_code_vectors_map_head_rows_to_their_token_ids():
    torch.manual_seed(0)
    state = ClaimsEncoder(ModelConfig(**TINY), FAMILY).state_dict()
    out = emb.code_vectors(state, 10, "output")
    assert out.shape == (10, 8) and out.dtype == np.float64
    diagnosis, drug = state["diagnosis_head.weight"].double().numpy(), state["drug_head.weight"].double().numpy()
    np.testing.assert_array_equal(out[[4, 6, 9]], diagnosis)  # the diagnosis family in vocabulary order
    np.testing.assert_array_equal(out[[5, 8]], drug)
    assert np.isnan(out[[0, 1, 2, 3, 7]]).all()  # specials and the other token: no head row
    np.testing.assert_array_equal(emb.code_vectors(state, 10), state["wte.weight"].double().numpy())
    with pytest.raises(ValueError, match="'hidden'"):
        emb.code_vectors(state, 10, "hidden")


def test_random_init_state_is_seeded_and_shaped_like_a_real_init():
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    torch.manual_seed(123)
    a = emb.random_init_state(TINY, FAMILY, seed=7)
    assert torch.equal(torch.rand(1), expected_draw)  # the caller's RNG is left where it was
    b = emb.random_init_state(TINY, FAMILY, seed=7)
    c = emb.random_init_state(TINY, FAMILY, seed=8)
    real = ClaimsEncoder(ModelConfig(**TINY), FAMILY).state_dict()
    assert list(a) == list(real) and all(a[k].shape == real[k].shape for k in real)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["wte.weight"], c["wte.weight"])
    assert not torch.equal(a["diagnosis_head.weight"], c["diagnosis_head.weight"])


# --- k-NN purity --------------------------------------------------------------------------------------


def _at(degrees: list[float]) -> np.ndarray:
    return np.array([[np.cos(np.radians(d)), np.sin(np.radians(d))] for d in degrees])


def test_knn_purity_by_hand():
    # Unit vectors at these angles; with k = 2 each row's neighbours are the two closest angles:
    #   0 a: 10 a, 20 b -> 1/2     10 a: 0 a, 20 b -> 1/2     20 b: 10 a, 0 a -> 0
    #  90 b: 100 b, 110 a -> 1/2  100 b: 90 b, 110 a -> 1/2  110 a: 100 b, 90 b -> 0
    # The unlabelled row at 5 degrees would be everyone's neighbour near 0 if it counted.
    vectors = _at([0, 10, 20, 90, 100, 110, 5])
    labels = ["a", "a", "b", "b", "b", "a", None]
    assert emb.knn_purity(vectors, labels, k=2) == pytest.approx(2 / 6)
    assert emb.knn_purity(3.0 * vectors, pl.Series(labels), k=2) == pytest.approx(2 / 6)  # cosine: scale-free
    # k = 1 on the rows at 0 a, 90 b, 100 b: 0 -> 90 (0), 90 -> 100 (1), 100 -> 90 (1).
    assert emb.knn_purity(vectors[[0, 3, 4]], ["a", "b", "b"], k=1) == pytest.approx(2 / 3)


def test_a_class_of_one_scores_zero_and_too_few_rows_raise():
    vectors = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]])
    assert emb.knn_purity(vectors, ["a", "a", "c"], k=1) == pytest.approx(2 / 3)  # "c" has no other member
    with pytest.raises(ValueError, match="2 labelled rows.*k=2 needs at least 3"):
        emb.knn_purity(vectors, ["a", None, "c"], k=2)


def test_planted_classes_are_pure_and_far_above_chance():
    vectors, labels = planted()
    assert emb.knn_purity(vectors, labels) == 1.0
    chance = emb.permutation_interval(vectors, labels, n_permutations=200, seed=0)
    assert chance["n_permutations"] == 200
    assert chance["low"] <= chance["mean"] <= chance["high"] < 0.6  # chance: about 19/59 of neighbours
    assert chance["mean"] == pytest.approx(19 / 59, abs=0.05)


def test_noise_is_inside_the_chance_interval_and_the_interval_is_seeded():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(60, 16))
    labels = np.repeat(["a", "b", "c"], 20).tolist()
    purity = emb.knn_purity(vectors, labels)
    chance = emb.permutation_interval(vectors, labels, seed=3)
    assert chance["low"] <= purity <= chance["high"]
    assert emb.permutation_interval(vectors, labels, seed=3) == chance  # bit for bit
    assert emb.permutation_interval(vectors, labels, seed=4) != chance


def test_purity_table_compares_models_per_grouping():
    vectors, labels = planted(n_per_class=10)
    chapters = labels + [None] * 30
    atc = [None] * 30 + ["C08", "C09", "N02"] * 10  # drugs: labels unrelated to the planted structure
    frame = pl.DataFrame({"chapter": chapters, "atc": atc}, schema={"chapter": pl.String, "atc": pl.String})
    noise = np.random.default_rng(2).normal(size=(60, 16))
    both = np.vstack([vectors, noise[30:]])
    table = emb.purity_table({"pretrained": both, "random init": noise}, frame, k=3, n_permutations=50)
    assert table.columns == ["model", "grouping", "codes", "classes", "k", "purity", "chance_mean", "chance_low",
                             "chance_high", "above_chance"]  # fmt: skip
    assert table["model"].to_list() == ["pretrained"] * 2 + ["random init"] * 2
    assert table["grouping"].to_list() == ["ICD-10 chapter", "ATC class"] * 2
    assert table["codes"].to_list() == [30] * 4 and table["classes"].to_list() == [3] * 4
    assert table["above_chance"].to_list()[0] is True and table["purity"][0] == 1.0
    fig = emb.plot_purity(table)
    assert len(fig.axes) == 2
    plt.close(fig)


# --- neighbours and maps ------------------------------------------------------------------------------


def test_nearest_neighbours_exclude_the_query_and_rank_by_similarity():
    tokens = ["q", "tie low", "far", "tie high", "near", "none"]
    vectors = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.2], [1.0, -1.0], [1.0, 0.1], [np.nan, np.nan]])
    nn = emb.nearest_neighbours(vectors, tokens, ["q"], n=4)
    assert nn["neighbour"].to_list() == ["near", "tie low", "tie high", "far"]  # exact tie: the lower row first
    assert nn["rank"].to_list() == [1, 2, 3, 4]
    assert nn["similarity"].is_sorted(descending=True) and nn["similarity"][1] == nn["similarity"][2]
    restricted = emb.nearest_neighbours(vectors, tokens, ["q", "near"], n=1, restrict=np.array([1, 1, 1, 0, 0, 0]) > 0)
    assert restricted.rows() == [("q", 1, "tie low", pytest.approx(2**-0.5)),
                                 ("near", 1, "q", pytest.approx(1 / np.hypot(1, 0.1)))]  # fmt: skip
    with pytest.raises(KeyError, match="ICD10/X99") as error:
        emb.nearest_neighbours(vectors, tokens, ["q", "ICD10/X99"])
    assert "tie low" not in str(error.value)


def test_pca_map_is_deterministic_and_two_dimensional():
    vectors, labels = planted()
    vectors[5] = np.nan
    coords = emb.pca_map(vectors)
    assert coords.shape == (60, 2)
    assert np.isnan(coords[5]).all() and np.isfinite(np.delete(coords, 5, axis=0)).all()
    np.testing.assert_array_equal(coords, emb.pca_map(vectors.copy()))
    frame = pl.DataFrame({"chapter": labels, "atc": ["C08", "N02"] * 30})
    fig = emb.plot_map(coords, frame, title="planted")
    assert len(fig.axes) == 2 and fig.axes[1].get_title().startswith("Drugs by ATC level-3 class")
    plt.close(fig)
