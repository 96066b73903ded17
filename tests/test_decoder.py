"""The decoder-only event model and its sampler: causality, packing, the KV cache, determinism, stopping."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from claimsutil.model import DIAGNOSIS, DRUG, OTHER, PAD_ID, SPECIAL, ClaimsDecoder, ModelConfig, linear_cross_entropy
from claimsutil.train.loop import next_targets

V = 120  # 4 specials, 60 diagnoses, 50 drugs, 6 other codes (time tokens will be "other")


def make_family() -> torch.Tensor:
    family = torch.full((V,), OTHER)
    family[:4] = SPECIAL
    family[4:64] = DIAGNOSIS
    family[64:114] = DRUG
    return family


pytestmark = pytest.mark.usefixtures("one_thread")


def decoder(seed: int = 0) -> ClaimsDecoder:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=V, max_len=64, n_layer=2, n_head=2, n_embd=32, ffn_mult=4, dropout=0.0)
    return ClaimsDecoder(cfg, make_family()).eval()


def codes(length: int, seed: int) -> torch.Tensor:
    return torch.randint(4, V, (length,), generator=torch.Generator().manual_seed(seed))


def left_padded(seqs: list[torch.Tensor]) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.stack([torch.cat([torch.full((width - len(s),), PAD_ID), s]) for s in seqs])


def test_a_token_sees_only_its_past():
    model = decoder()
    tokens = codes(20, 1).unsqueeze(0)
    ages = torch.full((1, 20), 50 * 365.25)
    changed = tokens.clone()
    changed[0, 12:] = codes(8, 2)
    with torch.no_grad():
        a, b = model(tokens, ages)["logits"], model(changed, ages)["logits"]
    torch.testing.assert_close(a[0, :12], b[0, :12], rtol=0, atol=0)
    assert not torch.allclose(a[0, 12:], b[0, 12:])


def test_packed_patients_train_as_if_alone():
    """Two patients in one row (segments) give each the logits it has alone: no attention across patients,
    positions restart."""
    model = decoder()
    p1, p2 = codes(9, 3), codes(13, 4)
    age1, age2 = 40 * 365.25, 70 * 365.25
    row = torch.cat([p1, p2]).unsqueeze(0)
    ages = torch.cat([torch.full((9,), age1), torch.full((13,), age2)]).unsqueeze(0)
    segments = torch.cat([torch.zeros(9, dtype=torch.long), torch.ones(13, dtype=torch.long)]).unsqueeze(0)
    with torch.no_grad():
        packed = model(row, ages, segments)["logits"][0]
        alone1 = model(p1.unsqueeze(0), torch.full((1, 9), age1))["logits"][0]
        alone2 = model(p2.unsqueeze(0), torch.full((1, 13), age2))["logits"][0]
    torch.testing.assert_close(packed[:9], alone1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed[9:], alone2, rtol=1e-5, atol=1e-5)
    targets = torch.cat([row[0, 1:], torch.tensor([-100])]).unsqueeze(0)
    out = model(row, ages, segments, targets=targets)
    assert int(out["n"]) == 21 and torch.isfinite(out["loss"])


def test_kv_cache_equals_full_recomputation():
    """Every step's logits from the cached sampler equal a full forward pass over prompt + the future so far,
    for prompts of different lengths in one left-padded batch."""
    model = decoder()
    prompts = [codes(7, 5), codes(15, 6), codes(3, 7)]
    ages = torch.tensor([30.0, 60.0, 85.0]) * 365.25
    uniforms = torch.rand(3, 12, generator=torch.Generator().manual_seed(8))
    out = model.generate(left_padded(prompts), ages, uniforms, return_logits=True)
    assert out["tokens"].shape == (3, 12) and out["logits"].shape == (3, 12, V)
    for r, prompt in enumerate(prompts):
        seq = torch.cat([prompt, out["tokens"][r]]).unsqueeze(0)
        with torch.no_grad():
            full = model(seq, torch.full(seq.shape, float(ages[r])))["logits"][0]
        steps = full[len(prompt) - 1 : len(prompt) - 1 + 12]  # the logits that predicted each new token
        torch.testing.assert_close(out["logits"][r], steps, rtol=1e-4, atol=1e-4)


def test_same_draws_same_future_whatever_the_batch():
    model = decoder()
    prompts = [codes(7, 9), codes(11, 10)]
    ages = torch.tensor([45.0, 66.0]) * 365.25
    uniforms = torch.rand(2, 10, generator=torch.Generator().manual_seed(11))
    both = model.generate(left_padded(prompts), ages, uniforms)["tokens"]
    again = model.generate(left_padded(prompts), ages, uniforms)["tokens"]
    alone = model.generate(prompts[1].unsqueeze(0), ages[1:], uniforms[1:])["tokens"]
    assert torch.equal(both, again) and torch.equal(both[1], alone[0])
    other = model.generate(left_padded(prompts), ages, torch.rand(2, 10, generator=torch.Generator().manual_seed(12)))
    assert not torch.equal(both, other["tokens"])
    assert (make_family()[both] != SPECIAL).all()  # never a special token


def test_a_future_ends_at_its_horizon_and_pads_after():
    """With ADVANCE (days per token: the time tokens) and LIMIT, a future ends with the token that reaches its
    limit; it is the same future as without a horizon up to there, nothing but padding follows, and no token
    before the last one has reached the limit: a future never crosses its horizon."""
    model = decoder()
    prompts = left_padded([codes(6, 13), codes(9, 14), codes(4, 15)])
    ages = torch.tensor([20000.0, 25000.0, 9000.0])
    uniforms = torch.rand(3, 40, generator=torch.Generator().manual_seed(15))
    advance = torch.zeros(V, dtype=torch.float64)
    advance[114:] = torch.tensor([1.0, 7.0, 30.0, 90.0, 180.0, 365.0], dtype=torch.float64)  # "time" tokens
    limit = torch.tensor([2.0, 8.0, 1e9])
    free = model.generate(prompts, ages, uniforms)["tokens"]
    out = model.generate(prompts, ages, uniforms, advance=advance, limit=limit)
    ended = []
    for r in range(3):
        days = advance[out["tokens"][r]].cumsum(0)
        real = out["tokens"][r] != PAD_ID
        end = int(real.sum())
        assert torch.equal(out["tokens"][r, :end], free[r, :end]) and not real[end:].any()
        assert out["elapsed"][r] == days[end - 1]
        if end < 40:  # ended by its horizon: the last token reached it, none before
            assert days[end - 1] >= limit[r] and (end == 1 or days[end - 2] < limit[r])
        else:  # the token cap came first
            assert days[-2] < limit[r]
        ended.append(end < 40)
    assert ended == [True, True, False]  # the third has no horizon in sight


def test_futures_share_their_prompt():
    """n futures of one prompt (its cache computed once) are the futures of n copies of the prompt."""
    model = decoder()
    prompts = left_padded([codes(6, 21), codes(11, 22)])
    ages = torch.tensor([15000.0, 30000.0])
    uniforms = torch.rand(6, 12, generator=torch.Generator().manual_seed(23))
    shared = model.generate(prompts, ages, uniforms, return_logits=True)
    copies = model.generate(prompts.repeat_interleave(3, 0), ages.repeat_interleave(3), uniforms, return_logits=True)
    assert torch.equal(shared["tokens"], copies["tokens"])
    torch.testing.assert_close(shared["logits"], copies["logits"], rtol=1e-5, atol=1e-5)


def test_blockwise_linear_cross_entropy_equals_the_full_logits():
    """The fused head (blocks of rows, gradients in the forward pass) gives F.cross_entropy's values and
    gradients on the full logits, whatever the block size; without gradients it only scores."""
    g = torch.Generator().manual_seed(0)
    x0, w0 = torch.randn(37, 16, generator=g), torch.randn(V, 16, generator=g) * 0.3
    y = torch.randint(0, V, (37,), generator=g)
    x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
    ref = F.cross_entropy(x @ w.t(), y, reduction="none")
    (ref.sum() * 0.5).backward()
    for block in (1, 8, 37, 256):
        xb, wb = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        total, rows = linear_cross_entropy(xb, wb, y, block)
        (total * 0.5).backward()
        torch.testing.assert_close(rows, ref.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(total, ref.sum().detach(), rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(xb.grad, x.grad, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(wb.grad, w.grad, rtol=1e-5, atol=1e-6)
        assert not rows.requires_grad
    with torch.no_grad():
        total, rows = linear_cross_entropy(x0, w0, y, 8)
    torch.testing.assert_close(rows, ref.detach(), rtol=1e-5, atol=1e-5)


def test_next_token_targets_stay_within_a_patient_and_skip_specials():
    unk = 3
    tokens = torch.tensor([[2, 10, 11, 2, 12, unk, 13, PAD_ID, PAD_ID]])
    segments = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 2, 2]])
    targets = next_targets(tokens, segments, make_family())
    # the last token of a patient, the token before [UNK] (not predicted) and padding have no target
    assert targets.tolist() == [[10, 11, -100, 12, -100, 13, -100, -100, -100]]
