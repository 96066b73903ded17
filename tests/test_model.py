"""The encoder: shapes, masks that really isolate padding and packed patients, masked-code pretraining,
BERT corruption, scale presets and bf16 autocast."""

from __future__ import annotations

import math

import pytest
import torch

from claimsutil.model import (
    CLS_ID,
    DIAGNOSIS,
    DRUG,
    MASK_ID,
    OTHER,
    PAD_ID,
    SCALES,
    SPECIAL,
    ClaimsEncoder,
    EncoderClassifier,
    ModelConfig,
    config_for,
    masking,
    positions_in_patient,
)

V = 120  # 4 specials, 60 diagnoses, 50 drugs, 6 other codes
N_DIAG, N_DRUG = 60, 50


pytestmark = pytest.mark.usefixtures("one_thread")


def make_family(vocab_size: int = V, n_diag: int = N_DIAG, n_drug: int = N_DRUG) -> torch.Tensor:
    family = torch.full((vocab_size,), OTHER)
    family[:4] = SPECIAL
    family[4 : 4 + n_diag] = DIAGNOSIS
    family[4 + n_diag : 4 + n_diag + n_drug] = DRUG
    return family


def small_model(seed: int = 0, **overrides) -> ClaimsEncoder:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, max_len=64, n_layer=2, n_head=2, n_embd=64, ffn_mult=4, dropout=0.0)
    return ClaimsEncoder(ModelConfig(**(cfg | overrides)), make_family()).eval()


def patient(length: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One patient: [CLS] then codes (no specials), ages rising from 40 years in days."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(4, V, (length - 1,), generator=g)
    tokens = torch.cat([torch.tensor([CLS_ID]), codes])  # (L,)
    ages = 40 * 365.25 + torch.arange(length, dtype=torch.float32) * 30  # (L,)
    return tokens, ages


def batch(B: int, T: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """B patients of random lengths padded to T."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.full((B, T), PAD_ID)
    ages = torch.zeros(B, T)
    for b in range(B):
        n = int(torch.randint(T // 2, T + 1, (1,), generator=g))
        tokens[b, :n], ages[b, :n] = patient(n, seed * 1000 + b)
    return tokens, ages


def test_shapes_and_losses_at_initialisation():
    model = small_model()
    tokens, ages = batch(16, 48)
    assert model(tokens, ages)["hidden"].shape == (16, 48, 64)
    corrupted, positions, targets = masking(tokens, model.family, generator=torch.Generator().manual_seed(1))
    out = model(corrupted, ages, mlm_positions=positions, targets=targets, return_logits=True)
    n_diag, n_drug = int(out["n_diagnosis"]), int(out["n_drug"])
    assert out["logits_diagnosis"].shape == (n_diag, N_DIAG)
    assert out["logits_drug"].shape == (n_drug, N_DRUG)
    assert out["age_pred"].shape == (int(positions.sum()),)
    # Masked "other" codes count for age but for neither code loss.
    n_other = int((model.family[targets[positions]] == OTHER).sum())
    assert n_other > 0 and n_diag + n_drug + n_other == int(out["n_age"]) == int(positions.sum())
    # An untrained model is close to uniform over each family's codes.
    assert out["loss_diagnosis"].item() == pytest.approx(math.log(N_DIAG), rel=0.1)
    assert out["loss_drug"].item() == pytest.approx(math.log(N_DRUG), rel=0.1)
    total = out["loss_diagnosis"] + out["loss_drug"] + out["loss_age"]
    assert out["loss"].item() == pytest.approx(total.item())


def test_heads_see_only_masked_rows():
    model = small_model()
    tokens, ages = batch(8, 40)
    corrupted, positions, targets = masking(tokens, model.family, generator=torch.Generator().manual_seed(2))
    rows = {}
    for name in ("diagnosis_head", "drug_head", "age_head"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: rows.__setitem__(name, i[0].shape))
    model(corrupted, ages, mlm_positions=positions, targets=targets)
    fam = model.family[targets[positions]]
    assert rows["diagnosis_head"] == (int((fam == DIAGNOSIS).sum()), 64)
    assert rows["drug_head"] == (int((fam == DRUG).sum()), 64)
    assert rows["age_head"] == (int(positions.sum()), 64)
    assert int(positions.sum()) < tokens.numel() // 4  # far fewer rows than B * T


def test_padding_does_not_change_real_tokens():
    model = small_model()
    tokens, ages = patient(20, seed=3)
    short = model(tokens[None], ages[None])["hidden"][0]  # (20, C)
    padded_tokens = torch.cat([tokens, torch.full((25,), PAD_ID)])[None]
    padded_ages = torch.cat([ages, torch.zeros(25)])[None]
    long = model(padded_tokens, padded_ages)["hidden"][0]  # (45, C)
    assert torch.isfinite(long).all()
    torch.testing.assert_close(long[:20], short, atol=1e-5, rtol=1e-5)


def test_packed_patients_are_isolated():
    model = small_model(max_visits=50)
    (t1, a1), (t2, a2) = patient(13, seed=4), patient(17, seed=5)
    v1, v2 = torch.arange(13) // 3, torch.arange(17) // 3
    alone1 = model(t1[None], a1[None], visits=v1[None])["hidden"][0]
    alone2 = model(t2[None], a2[None], visits=v2[None])["hidden"][0]
    tokens = torch.cat([t1, t2, torch.full((4,), PAD_ID)])[None]
    ages = torch.cat([a1, a2, torch.zeros(4)])[None]
    visits = torch.cat([v1, v2, torch.zeros(4, dtype=torch.long)])[None]
    segments = torch.cat([torch.zeros(13), torch.ones(17), torch.full((4,), 2)]).long()[None]
    packed = model(tokens, ages, visits=visits, segments=segments)["hidden"][0]
    torch.testing.assert_close(packed[:13], alone1, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[13:30], alone2, atol=1e-5, rtol=1e-5)
    assert positions_in_patient(tokens, segments)[0, [0, 12, 13, 29, 30]].tolist() == [0, 12, 0, 16, 0]
    # Without segments the second patient does see the first: the mask is what isolates them.
    mixed = model(tokens, ages, visits=visits)["hidden"][0]
    assert not torch.allclose(mixed[13:30], alone2, atol=1e-3)


def test_masked_codes_hide_their_age():
    model = small_model()
    tokens, ages = patient(20, seed=6)
    tokens[5] = MASK_ID
    moved = ages.clone()
    moved[5] += 3000.0  # the regression target must not leak through the input
    same = [model(tokens[None], a[None])["hidden"] for a in (ages, moved)]
    torch.testing.assert_close(same[0], same[1])
    moved[6] += 3000.0  # a visible age does reach the model
    assert not torch.allclose(model(tokens[None], moved[None])["hidden"], same[0])


def test_masking_rate_split_and_determinism():
    family = make_family()
    tokens, _ = batch(256, 128, seed=7)
    eligible = family[tokens] != SPECIAL
    corrupted, positions, targets = masking(tokens, family, generator=torch.Generator().manual_seed(11))
    assert not positions[tokens == PAD_ID].any() and not positions[tokens == CLS_ID].any()
    assert (positions & ~eligible).sum() == 0
    assert positions.sum() / eligible.sum() == pytest.approx(0.15, abs=0.01)
    sel = positions.sum().item()
    masked = (corrupted[positions] == MASK_ID).sum().item() / sel
    kept = (corrupted[positions] == tokens[positions]).sum().item() / sel
    assert masked == pytest.approx(0.8, abs=0.02)
    # Random replacements sometimes draw the original code (1 in 116), so "kept" is a little over 10%.
    assert kept == pytest.approx(0.1 + 0.1 / 116, abs=0.02)
    assert (family[corrupted[positions]] != SPECIAL).sum().item() / sel == pytest.approx(0.2, abs=0.02)
    assert torch.equal(corrupted[~positions], tokens[~positions])
    assert torch.equal(targets[positions], tokens[positions]) and (targets[~positions] == -100).all()
    again = masking(tokens, family, generator=torch.Generator().manual_seed(11))
    assert all(torch.equal(x, y) for x, y in zip((corrupted, positions, targets), again, strict=True))
    other = masking(tokens, family, generator=torch.Generator().manual_seed(12))
    assert not torch.equal(positions, other[1])


def test_overfits_one_batch():
    model = small_model(seed=1).train()
    tokens, ages = batch(8, 32, seed=9)
    corrupted, positions, targets = masking(tokens, model.family, rate=0.3, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(150):
        loss = model(corrupted, ages, mlm_positions=positions, targets=targets)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_classifier_and_bf16_autocast():
    model = small_model()
    tokens, ages = batch(6, 24)
    clf = EncoderClassifier(model).eval()
    assert clf(tokens, ages).shape == (6,)
    corrupted, positions, targets = masking(tokens, model.family, generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(corrupted, ages, mlm_positions=positions, targets=targets)
        logit = clf(tokens, ages)
    assert torch.isfinite(out["loss"]) and out["loss"].dtype == torch.float32
    assert out["loss_diagnosis"].item() == pytest.approx(math.log(N_DIAG), rel=0.1)
    assert torch.isfinite(logit).all()


def count_params(profile: str, scale: str, vocab_size: int) -> tuple[int, int]:
    family = make_family(vocab_size, n_diag=(vocab_size - 4) * 6 // 10, n_drug=(vocab_size - 4) * 4 // 10)
    with torch.device("meta"):  # no memory, no init time: the 101M model is only counted
        model = ClaimsEncoder(config_for(profile, scale, vocab_size, max_len=512), family)
    return model.get_num_params(non_embedding=False), model.get_num_params(non_embedding=True)


def test_paper_presets_match_the_reference_sizes():
    targets = {"xs": 2.2e6, "s": 4.7e6, "m": 11e6, "l": 32e6, "xl": 101e6}
    assert list(SCALES["paper"]) == list(targets)
    for scale, target in targets.items():
        total, non_embedding = count_params("paper", scale, 1930)
        assert total == pytest.approx(target, rel=0.1), scale
        assert non_embedding < total
        spec = SCALES["paper"][scale]
        assert 32 <= spec["n_embd"] // spec["n_head"] <= 64 and spec["n_embd"] % spec["n_head"] == 0


def test_demo_presets_span_thirty_fold():
    totals = [count_params("demo", scale, 250)[0] for scale in SCALES["demo"]]
    assert totals == sorted(totals) and totals[-1] / totals[0] >= 30
    # Without the vocabulary-sized embeddings and heads the span holds at any vocabulary (9,181 on the demo data).
    blocks = [count_params("demo", scale, 9181)[1] for scale in SCALES["demo"]]
    assert blocks == sorted(blocks) and blocks[-1] / blocks[0] >= 30
    assert list(SCALES["demo"]) == list(SCALES["paper"])
    with pytest.raises(KeyError, match="unknown model scale"):
        config_for("demo", "huge", 250, 256)


def test_flops_and_mfu():
    """Model FLOPs: the block and age-encoding matmuls at every token, the heads at their share of tokens,
    attention over the keys a token may see."""
    model = small_model()
    cfg = model.config
    every = model.get_num_params() + cfg.age_bins * cfg.n_embd
    assert model.flops_per_token() == 6 * (every + model.head_params()) + 12 * cfg.n_layer * cfg.n_embd * 64
    assert model.flops_per_token(20.0, 0.15) == 6 * (every + 0.15 * model.head_params()) + (
        12 * cfg.n_layer * cfg.n_embd * 20.0
    )
    assert model.estimate_mfu(tokens_per_iter=1000, dt=1.0, context=32, peak_flops=1e12) == pytest.approx(
        model.flops_per_token(32) * 1000 / 1e12
    )


def test_a_rows_width_changes_nothing_for_its_patients():
    """Rows packed narrower (width_step) give their patients the same hidden states as full-width rows: the
    padding tail is a segment no patient attends to."""
    model = small_model()
    (t1, a1), (t2, a2) = patient(12, 1), patient(9, 2)
    tokens = torch.cat([t1, t2])
    ages = torch.cat([a1, a2])
    segments = torch.cat([torch.zeros(12, dtype=torch.long), torch.ones(9, dtype=torch.long)])
    hidden = {}
    for width in (21, 32, 64):
        pad = width - len(tokens)
        row_t = torch.cat([tokens, torch.full((pad,), PAD_ID)]).unsqueeze(0)
        row_a = torch.cat([ages, torch.zeros(pad)]).unsqueeze(0)
        row_s = torch.cat([segments, torch.full((pad,), 2)]).unsqueeze(0)
        with torch.no_grad():
            hidden[width] = model.encode(row_t, row_a, None, row_s)[0, : len(tokens)]
    torch.testing.assert_close(hidden[21], hidden[64], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hidden[32], hidden[64], rtol=1e-5, atol=1e-5)


def test_bf16_autocast_on_cpu_keeps_attention_in_fp32():
    """Under CPU bf16 autocast the Linears run in bf16 and attention in fp32 (faster there): the output is bf16
    where the block returns it and close to the fp32 model's."""
    model = small_model()
    (t1, a1) = patient(20, 3)
    ref = model.encode(t1.unsqueeze(0), a1.unsqueeze(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model.encode(t1.unsqueeze(0), a1.unsqueeze(0))
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), ref, rtol=0.1, atol=0.1)


def test_unknown_ages_are_ignored_not_propagated():
    """A patient without a birth record (NaN ages) trains like the others: finite losses, no age target."""
    torch.manual_seed(0)
    family = torch.tensor([0, 0, 0, 0] + [1] * 10 + [2] * 10)
    model = ClaimsEncoder(config_for("demo", "xs", vocab_size=24, max_len=16), family)
    tokens = torch.randint(4, 24, (2, 16))
    ages = torch.full((2, 16), 20000.0)
    ages[1] = float("nan")
    positions = torch.zeros(2, 16, dtype=torch.bool)
    positions[:, 3] = True
    targets = torch.where(positions, tokens, torch.full_like(tokens, -100))
    masked = tokens.masked_fill(positions, 1)
    out = model(masked, ages, mlm_positions=positions, targets=targets)
    assert torch.isfinite(out["loss"]) and int(out["n_age"]) == 1
    assert torch.isfinite(model.encode(masked, ages)).all()
