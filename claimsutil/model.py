"""An encoder-only transformer over claims codes, pretrained by masked-code prediction.

One readable file in the style of nanoGPT's model.py. A patient is a row of code tokens, each carrying the
patient's age in days at that receipt. Pretraining hides ~15% of the codes (BERT's 80/10/10 corruption) and
predicts them with two heads, one over the diagnosis codes and one over the drug codes of the vocabulary,
plus a regression on the age at each masked position (the reference study's three losses). The heads see
only the hidden states of the masked positions: a full (B, T, V) logits tensor would be ~7x more head work
and memory for nothing.

Token ids 0-3 are [PAD], [MASK], [CLS], [UNK]; `family` (V,) says what every token is: 0 special,
1 diagnosis, 2 drug, 3 other.

Positions: a learned embedding of each token's index within its patient (restarting at every patient when
rows pack several, so packing changes nothing). Age alone would not do: a [MASK]ed code hides its age
(otherwise the age regression copies its input), and without a position all masked codes of a patient would
be identical inputs, so the model could only guess the bag of masked codes, not which is where. An optional
learned visit embedding (`max_visits` > 0, off in the presets as in the reference) can mark receipts.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

PAD_ID, MASK_ID, CLS_ID, UNK_ID = 0, 1, 2, 3
SPECIAL, DIAGNOSIS, DRUG, OTHER = 0, 1, 2, 3
DAYS_PER_YEAR = 365.25


@dataclass
class ModelConfig:
    vocab_size: int = 250  # tokens, the four specials included
    max_len: int = 256  # longest patient (in tokens) the position embedding covers; rows may pack several
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads; must divide n_embd
    n_embd: int = 128  # width of the residual stream
    ffn_mult: int = 4  # MLP hidden width = ffn_mult * n_embd (4 as in BERT and GPT)
    dropout: float = 0.0  # on attention weights and residual branches; pretraining on plenty of data needs none
    bias: bool = True  # biases in Linears and LayerNorms (BERT keeps them; False is a little faster)
    age_bins: int = 22  # bins of the piecewise-linear age encoding over 0..max_age_years (22 = 5-year bins)
    max_age_years: float = 110.0  # right edge of the last age bin; older ages saturate
    max_visits: int = 0  # > 0: learned visit-number embedding, visits capped at max_visits - 1; 0: none
    age_center_years: float = 55.0  # the age regression predicts (age - center) / scale, in years,
    age_scale_years: float = 32.0  # fixed (the middle and sd of 0..110) so a checkpoint needs no data statistics
    weight_diagnosis: float = 1.0  # weight of the diagnosis cross-entropy in the total loss
    weight_drug: float = 1.0  # weight of the drug cross-entropy in the total loss
    weight_age: float = 1.0  # weight of the age regression (smooth L1, in standardised units) in the total loss


# Five scales per profile, smallest first; the keys are the same in both profiles so the pipeline can loop
# over them. paper: the reference study's 2.2M, 4.7M, 11M, 32M and 101M total parameters at its 1,930-token
# vocabulary (head dims 32-64). demo: 42x apart (16k to 670k at ~250 tokens), yet all five pretrain and
# fine-tune on 2 CPU cores in minutes.
SCALES: dict[str, dict[str, dict[str, int]]] = {
    "paper": {
        "xs": dict(n_layer=8, n_head=4, n_embd=128, ffn_mult=4),
        "s": dict(n_layer=9, n_head=4, n_embd=192, ffn_mult=4),
        "m": dict(n_layer=8, n_head=5, n_embd=320, ffn_mult=4),
        "l": dict(n_layer=10, n_head=8, n_embd=512, ffn_mult=4),
        "xl": dict(n_layer=14, n_head=12, n_embd=768, ffn_mult=4),
    },
    "demo": {
        "xs": dict(n_layer=2, n_head=1, n_embd=16, ffn_mult=4),
        "s": dict(n_layer=2, n_head=2, n_embd=40, ffn_mult=4),
        "m": dict(n_layer=2, n_head=2, n_embd=64, ffn_mult=4),
        "l": dict(n_layer=3, n_head=3, n_embd=96, ffn_mult=4),
        "xl": dict(n_layer=3, n_head=4, n_embd=128, ffn_mult=4),
    },
}


def config_for(profile: str, scale: str, vocab_size: int, max_len: int, **overrides: float) -> ModelConfig:
    """The ModelConfig of a named scale; `overrides` set any other field (dropout, loss weights, ...)."""
    if profile not in SCALES or scale not in SCALES[profile]:
        known = {p: list(s) for p, s in SCALES.items()}
        raise KeyError(f"unknown model scale {profile}/{scale}; known: {known}")
    return ModelConfig(vocab_size=vocab_size, max_len=max_len, **SCALES[profile][scale], **overrides)


class AgeEncoding(nn.Module):
    """Piecewise-linear encoding of age in days (one value in [0, 1] per bin), then a Linear to n_embd."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        edges = torch.linspace(0.0, config.max_age_years * DAYS_PER_YEAR, config.age_bins + 1)
        # Buffers, not constants: they move with .to(device) and are saved with the checkpoint.
        self.register_buffer("left", edges[:-1].clone())
        self.register_buffer("width", edges[1:] - edges[:-1])
        self.proj = nn.Linear(config.age_bins, config.n_embd, bias=config.bias)

    def forward(self, ages: torch.Tensor) -> torch.Tensor:
        # Bins below the age are full (1), bins above empty (0), the bin holding it is filled linearly, so
        # the encoding is continuous in age yet lets the Linear learn a different slope per age band.
        ages = ages.float().unsqueeze(-1)  # (B, T, 1)
        enc = ((ages - self.left) / self.width).clamp(0.0, 1.0)  # (B, T, K)
        # An unknown age (NaN: no birth record in the data) contributes nothing rather than poisoning the row.
        return self.proj(enc.nan_to_num(0.0)).masked_fill(ages.isnan(), 0.0)  # (B, T, C)


class SelfAttention(nn.Module):
    """Multi-head attention; the mask keeps padding, other patients and (in the decoder) the future out.

    With a KV cache ((k, v) buffers of shape (B, nh, T_max, hs) and the number of positions already in them),
    the new positions' keys and values are written after those and the queries attend over all of them."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_head must divide n_embd"
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cache: tuple | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k_buf, v_buf, start = cache
            k_buf[:, :, start : start + T] = k
            v_buf[:, :, start : start + T] = v
            k, v = k_buf[:, :, : start + T], v_buf[:, :, : start + T]  # (B, nh, start + T, hs)
        p = self.dropout if self.training else 0.0
        if cache is not None and T == 1:
            # One new query per row (sampling): two small batched matmuls beat the flash kernel's set-up.
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, 1, L)
            y = torch.softmax(att.masked_fill(~mask, -math.inf), dim=-1) @ v  # (B, nh, 1, hs)
        elif q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # On CPU the fp32 attention kernel outruns the bf16 one at these head sizes (bench pretrain), so
            # under bf16 autocast only the Linears run in bf16.
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=p)
            y = y.to(q.dtype)  # (B, nh, T, hs)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))  # (B, T, C)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, config.ffn_mult * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(config.ffn_mult * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gelu(self.c_fc(x))  # (B, T, ffn_mult * C)
        return self.dropout(self.c_proj(x))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm block: trains stably without warm-up tricks at every scale we use."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, cache: tuple | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


def attention_mask(tokens: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, T, T) boolean, True where query i may attend to key j: j is not padding and, when rows pack
    several patients, j belongs to the same patient as i."""
    B, T = tokens.size()
    allowed = (tokens != PAD_ID).unsqueeze(1)  # (B, 1, T) over keys
    if segments is not None:
        allowed = allowed & (segments.unsqueeze(2) == segments.unsqueeze(1))  # (B, T, T)
    # Every query may see itself, so a padding row is never fully masked (an empty softmax would give NaN
    # that then spreads through the backward pass).
    eye = torch.eye(T, dtype=torch.bool, device=tokens.device)  # (T, T)
    return (allowed | eye).unsqueeze(1)  # (B, 1, T, T)


def positions_in_patient(tokens: torch.Tensor, segments: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) index of each token within its patient: 0, 1, ... restarting wherever `segments` changes."""
    B, T = tokens.size()
    idx = torch.arange(T, device=tokens.device).expand(B, T)  # (B, T)
    if segments is None:
        return idx
    starts = torch.ones_like(segments, dtype=torch.bool)  # (B, T)
    starts[:, 1:] = segments[:, 1:] != segments[:, :-1]
    return idx - torch.where(starts, idx, 0).cummax(dim=1).values  # (B, T)


def _init_module(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)


def init_weights(model: nn.Module, n_layer: int) -> None:
    """GPT-2's initialisation: Linears and Embeddings N(0, 0.02), biases 0, and the projections into the
    residual stream scaled by 1 / sqrt(2 n_layer), which keeps its variance from growing with depth."""
    model.apply(_init_module)  # children before parents, as nn.Module.apply visits them
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * n_layer))


class ClaimsEncoder(nn.Module):
    def __init__(self, config: ModelConfig, family: torch.Tensor):
        super().__init__()
        family = torch.as_tensor(family, dtype=torch.long, device="cpu")
        assert family.shape == (config.vocab_size,), f"family has shape {tuple(family.shape)}, want (vocab_size,)"
        self.config = config
        # Each token's index inside its family's head (-1 for specials and "other"): targets are remapped
        # through it, so the heads are exactly as wide as their families.
        index = torch.full_like(family, -1)
        for code in (DIAGNOSIS, DRUG):
            members = (family == code).nonzero().squeeze(1)
            index[members] = torch.arange(len(members))
        self.register_buffer("family", family.clone())
        self.register_buffer("family_index", index)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.max_len, config.n_embd)
        self.age_encoding = AgeEncoding(config)
        self.wve = nn.Embedding(config.max_visits, config.n_embd) if config.max_visits > 0 else None
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.diagnosis_head = nn.Linear(config.n_embd, int((family == DIAGNOSIS).sum()), bias=config.bias)
        self.drug_head = nn.Linear(config.n_embd, int((family == DRUG).sum()), bias=config.bias)
        self.age_head = nn.Linear(config.n_embd, 1, bias=config.bias)
        init_weights(self, config.n_layer)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameters; non_embedding leaves out the token, position, age and visit embeddings and the
        vocabulary-sized output heads (the usual count for scaling laws, as in Kaplan et al. 2020, whose output
        projection is the tied embedding: these grow with the vocabulary and length, not with the model; on a
        claims vocabulary of thousands of codes they would otherwise be most of a small model)."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.wte.weight.numel() + self.wpe.weight.numel()
            n_params -= sum(p.numel() for p in self.age_encoding.parameters())
            n_params -= self.wve.weight.numel() if self.wve is not None else 0
            n_params -= self.head_params()
        return n_params

    def encode(
        self,
        tokens: torch.Tensor,
        ages: torch.Tensor,
        visits: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Hidden states (B, T, C) after the final LayerNorm."""
        pos = positions_in_patient(tokens, segments)  # (B, T)
        assert int(pos.max()) < self.config.max_len, f"a patient longer than max_len={self.config.max_len} tokens"
        age = self.age_encoding(ages)  # (B, T, C)
        # A [MASK]ed code hides its age too, otherwise the age regression would copy its input. The 10% of
        # selected codes left in place or swapped keep their age, so nothing tells them apart from the rest.
        age = age.masked_fill((tokens == MASK_ID).unsqueeze(-1), 0.0)  # (B, T, C)
        x = self.wte(tokens) + self.wpe(pos) + age  # (B, T, C)
        if self.wve is not None and visits is not None:
            x = x + self.wve(visits.clamp(0, self.config.max_visits - 1))  # (B, T, C)
        x = self.drop(x)  # (B, T, C)
        mask = attention_mask(tokens, segments)  # (B, 1, T, T)
        for block in self.h:
            x = block(x, mask)  # (B, T, C)
        return self.ln_f(x)  # (B, T, C)

    def forward(
        self,
        tokens: torch.Tensor,
        ages: torch.Tensor,
        visits: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
        mlm_positions: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        return_logits: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Without mlm_positions: {"hidden": (B, T, C)}. With mlm_positions ((B, T) bool, from `masking`) and
        targets ((B, T) original token ids): the pretraining losses, computed at the masked positions only.
        `ages` must be the true ages: the age regression's targets are read from it."""
        x = self.encode(tokens, ages, visits, segments)  # (B, T, C)
        if mlm_positions is None:
            return {"hidden": x}
        assert targets is not None, "targets are needed with mlm_positions"
        # Gather first, project second: N masked rows instead of B * T.
        return self.masked_losses(x[mlm_positions], targets[mlm_positions], ages[mlm_positions], return_logits)

    def masked_losses(
        self, x: torch.Tensor, targets: torch.Tensor, ages: torch.Tensor, return_logits: bool = False
    ) -> dict[str, torch.Tensor]:
        """Losses from the N masked rows: x (N, C), targets (N,) token ids, ages (N,) days."""
        cfg, out = self.config, {}
        fam = self.family[targets]  # (N,)
        for name, code, head in (("diagnosis", DIAGNOSIS, self.diagnosis_head), ("drug", DRUG, self.drug_head)):
            rows = fam == code  # (N,) a code loss only sees the codes of its family
            logits = head(x[rows]).float()  # (n, V_family)
            y = self.family_index[targets[rows]]  # (n,) targets in the family's own index space
            n = rows.sum()
            # Sum over a clamped count, not mean: a batch with no code of this family gives 0, not NaN.
            out[f"loss_{name}"] = F.cross_entropy(logits, y, reduction="sum") / n.clamp(min=1)
            out[f"n_{name}"] = n
            if return_logits:
                out[f"logits_{name}"] = logits
        z = (ages.float() / DAYS_PER_YEAR - cfg.age_center_years) / cfg.age_scale_years  # (N,)
        pred = self.age_head(x).squeeze(-1).float()  # (N,)
        known = ~z.isnan()  # no age target where the birth date is unknown
        # Smooth L1 (Huber, beta 1 sd): quadratic near the truth, linear for the rare wrong birth date.
        loss = F.smooth_l1_loss(pred[known], z[known], reduction="sum")
        out["loss_age"] = loss / max(int(known.sum()), 1)
        out["n_age"] = known.sum()
        if return_logits:
            out["age_pred"] = pred
        out["loss"] = (
            cfg.weight_diagnosis * out["loss_diagnosis"]
            + cfg.weight_drug * out["loss_drug"]
            + cfg.weight_age * out["loss_age"]
        )
        return out

    def flops_per_token(self, context: float | None = None, head_share: float = 1.0) -> float:
        """Training FLOPs per real token (forward + backward), counted as the model needs them (PaLM's model
        FLOPs, not what padding or packing adds): 6 x the non-embedding parameters and the age encoding's
        Linear, which run at every token; 6 x the output heads times HEAD_SHARE, the share of tokens they run
        at (the masked ones, ~mask_rate); and 12 L C CONTEXT for the attention scores, CONTEXT being the mean
        number of keys a token attends to (its own patient's tokens: sum of squared lengths over the sum of
        lengths; default max_len)."""
        cfg = self.config
        T = cfg.max_len if context is None else context
        every_token = self.get_num_params() + self.age_encoding.proj.weight.numel()
        return 6 * (every_token + head_share * self.head_params()) + 12 * cfg.n_layer * cfg.n_embd * T

    def head_params(self) -> int:
        """Parameters of the vocabulary-sized output heads (diagnosis and drug)."""
        return sum(p.numel() for h in (self.diagnosis_head, self.drug_head) for p in h.parameters())

    def estimate_mfu(
        self, tokens_per_iter: int, dt: float, context: float | None = None, head_share: float = 1.0,
        peak_flops: float = 312e12,
    ) -> float:  # fmt: skip
        """Model FLOPs utilisation: achieved model FLOP/s (`flops_per_token`) over the device's peak (default
        A100 bf16, 312 TFLOP/s; H100 SXM dense bf16 is ~989e12)."""
        return self.flops_per_token(context, head_share) * tokens_per_iter / dt / peak_flops


class EncoderClassifier(nn.Module):
    """Fine-tuning: each patient's [CLS] hidden state -> dropout -> Linear -> one logit per patient.

    Rows may pack several patients (`segments`, as in pretraining); every patient's sequence starts with
    [CLS], so the logits come out in row-major order of the [CLS] tokens: one per row when rows hold one
    patient each."""

    def __init__(self, encoder: ClaimsEncoder, dropout: float | None = None, pooling: str = "cls"):
        super().__init__()
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.drop = nn.Dropout(encoder.config.dropout if dropout is None else dropout)
        self.head = nn.Linear(encoder.config.n_embd, 1)
        torch.nn.init.normal_(self.head.weight, mean=0.0, std=0.02)
        torch.nn.init.zeros_(self.head.bias)

    def forward(
        self,
        tokens: torch.Tensor,
        ages: torch.Tensor,
        visits: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.encoder.encode(tokens, ages, visits, segments)  # (B, T, C)
        is_cls = tokens == CLS_ID  # (B, T)
        if self.pooling == "cls":
            pooled = x[is_cls]  # (P, C) one per patient, row-major
        else:
            # Mean over each patient's tokens: patient p owns the tokens from its [CLS] to the next one.
            patient = is_cls.flatten().cumsum(0) - 1  # (B*T,)
            real = (tokens != PAD_ID).flatten()  # (B*T,)
            P = int(is_cls.sum())
            sums = x.new_zeros(P, x.size(-1)).index_add_(0, patient[real], x.flatten(0, 1)[real])  # (P, C)
            counts = torch.bincount(patient[real], minlength=P).clamp(min=1).unsqueeze(1)  # (P, 1)
            pooled = sums / counts  # (P, C)
        return self.head(self.drop(pooled)).squeeze(-1)  # (P,)


def masking(
    tokens: torch.Tensor,
    family: torch.Tensor,
    rate: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT's corruption: select each non-special token with probability `rate`; of those, 80% become [MASK],
    10% a random non-special token, 10% stay. Returns (corrupted (B, T), positions (B, T) bool, targets (B, T)
    with the original ids at selected positions and -100 elsewhere). Draws come only from `generator`, so a
    seeded generator gives the same masks on every run."""
    family = family.to(tokens.device)
    eligible = family[tokens] != SPECIAL  # (B, T) never PAD, CLS, MASK or UNK
    u = torch.rand(tokens.shape, generator=generator, device=tokens.device)  # (B, T)
    positions = eligible & (u < rate)  # (B, T)
    # A second uniform splits the selected positions; with one draw each the split is exact in expectation.
    v = torch.rand(tokens.shape, generator=generator, device=tokens.device)  # (B, T)
    ids = (family != SPECIAL).nonzero().squeeze(1)  # (V_eligible,)
    pick = torch.randint(len(ids), tokens.shape, generator=generator, device=tokens.device)  # (B, T)
    corrupted = torch.where(positions & (v < 0.8), MASK_ID, tokens)  # (B, T)
    corrupted = torch.where(positions & (v >= 0.8) & (v < 0.9), ids[pick], corrupted)  # (B, T)
    targets = torch.where(positions, tokens, -100)  # (B, T)
    return corrupted, positions, targets


def native_bf16(device: torch.device) -> bool:
    """Whether DEVICE computes bf16 matmuls natively: CUDA with bf16, a CPU with AVX512-BF16 or AMX (elsewhere
    bf16 is emulated, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def uses_bf16(device: torch.device, bf16: bool | str) -> bool:
    """The precision a run takes: BF16 true, false or "auto" (bf16 where `native_bf16`)."""
    if bf16 == "auto":
        return native_bf16(device)
    return bool(bf16) and (device.type != "cuda" or torch.cuda.is_bf16_supported())


def autocast_for(device: torch.device, bf16: bool | str):
    """bf16 autocast on DEVICE when `uses_bf16`, else nothing."""
    if not uses_bf16(device, bf16):
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """BATCH's tensors on DEVICE. To a GPU through pinned memory with non-blocking copies, so the copy runs
    while the GPU still works on what was queued before it; elsewhere `.to` (a no-op on the CPU)."""
    if device.type != "cuda":
        return {k: v.to(device) for k, v in batch.items()}
    return {k: v if v.device == device else v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum over rows of cross_entropy(x @ weight.T, y), with its gradients computed in the forward pass, a block
    of rows at a time: the (rows, V) logits of a block stay in cache and are never stored, and softmax is
    taken once (log_softmax's forward and backward passes over the whole (n, V) matrix were most of a small
    decoder's step). Also returns each row's cross-entropy (no gradient flows through it)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, block: int):
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf, wf = x.float(), weight.float()  # fp32 logits and softmax, also under bf16 autocast
            grads = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
            ce = torch.empty(xf.size(0), device=x.device)  # (n,)
            grad_x = torch.empty_like(xf) if grads else None  # (n, C)
            grad_w = torch.zeros_like(wf) if grads else None  # (V, C)
            for a in range(0, xf.size(0), block):
                xb, yb = xf[a : a + block], y[a : a + block]  # (b, C), (b,)
                logits = xb @ wf.t()  # (b, V)
                target = logits.gather(1, yb.unsqueeze(1)).squeeze(1)  # (b,)
                top = logits.amax(dim=1, keepdim=True)  # (b, 1)
                e = logits.sub_(top).exp_()  # (b, V) in place of the logits
                total = e.sum(dim=1, keepdim=True)  # (b, 1)
                ce[a : a + block] = (top + total.log()).squeeze(1) - target  # log-sum-exp - target logit
                if grads:
                    p = e.div_(total)  # (b, V) softmax
                    p[torch.arange(yb.numel(), device=x.device), yb] -= 1.0  # d ce / d logits
                    grad_x[a : a + block] = p @ wf  # (b, C)
                    grad_w.addmm_(p.t(), xb)  # (V, C)
        ctx.mark_non_differentiable(ce)
        ctx.save_for_backward(grad_x, grad_w)
        ctx.dtypes = (x.dtype, weight.dtype)
        return ce.sum(), ce

    @staticmethod
    def backward(ctx, grad_sum: torch.Tensor, _grad_rows):
        grad_x, grad_w = ctx.saved_tensors
        gx = (grad_x * grad_sum).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        gw = (grad_w * grad_sum).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return gx, gw, None, None


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, block: int = 128):
    """(sum of the rows' cross-entropies of logits x @ weight.T against y, each row's cross-entropy): x (n, C),
    weight (V, C), y (n,). Only the sum carries a gradient; the same values and gradients as F.cross_entropy
    on the full logits, in a fraction of the memory traffic."""
    return _LinearCrossEntropy.apply(x, weight, y, block)


class ClaimsDecoder(nn.Module):
    """Decoder-only event model (as CoMET): the encoder's embeddings and blocks under causal attention, trained
    to predict each next token over the whole vocabulary, so it can sample a patient's future.

    Inputs as the encoder's: tokens (B, T), ages (B, T) and segments when rows pack several patients. The
    decoder reads age once, at the start: each patient's `ages` are its age at its first token, repeated along
    its tokens; the passing of time is itself tokens (time between visits), which the model generates."""

    def __init__(self, config: ModelConfig, family: torch.Tensor):
        super().__init__()
        family = torch.as_tensor(family, dtype=torch.long, device="cpu")
        assert family.shape == (config.vocab_size,), f"family has shape {tuple(family.shape)}, want (vocab_size,)"
        self.config = config
        self.register_buffer("family", family.clone())
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.max_len, config.n_embd)
        self.age_encoding = AgeEncoding(config)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        init_weights(self, config.n_layer)

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameters; non_embedding leaves out the token, position and age embeddings and the output head, as
        `ClaimsEncoder.get_num_params` does."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.wte.weight.numel() + self.wpe.weight.numel() + self.lm_head.weight.numel()
            n_params -= sum(p.numel() for p in self.age_encoding.parameters())
        return n_params

    def head_params(self) -> int:
        """Parameters of the vocabulary-sized output head."""
        return self.lm_head.weight.numel()

    # Model FLOPs as the encoder counts them; the head runs at every token with a next token (HEAD_SHARE ~1).
    flops_per_token = ClaimsEncoder.flops_per_token

    def _embed(self, tokens: torch.Tensor, ages: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        assert int(pos.max()) < self.config.max_len, f"a patient longer than max_len={self.config.max_len} tokens"
        return self.drop(self.wte(tokens) + self.wpe(pos) + self.age_encoding(ages))  # (B, T, C)

    def forward(
        self,
        tokens: torch.Tensor,
        ages: torch.Tensor,
        segments: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """{"logits": (B, T, V)}. With TARGETS ((B, T) next-token ids, -100 where there is none) the head runs
        only where there is a target: {"ce": (n,) each target's cross-entropy (no gradient), "targets": (n,) their
        ids, "loss_sum" and "loss" (the sum and the mean, with gradients), "n"}."""
        pos = positions_in_patient(tokens, segments)  # (B, T)
        T = tokens.size(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()  # (T, T)
        mask = attention_mask(tokens, segments) & causal  # (B, 1, T, T)
        x = self._embed(tokens, ages, pos)
        for block in self.h:
            x = block(x, mask)  # (B, T, C)
        x = self.ln_f(x)  # (B, T, C)
        if targets is None:
            return {"logits": self.lm_head(x).float()}  # (B, T, V)
        keep = targets >= 0  # (B, T)
        y = targets[keep]  # (n,)
        # Gather first, project second: n rows, not B * T (padding and each patient's last token have no target).
        total, ce = linear_cross_entropy(x[keep], self.lm_head.weight, y)  # (), (n,)
        n = y.numel()
        return {"ce": ce, "targets": y, "loss_sum": total, "loss": total / max(n, 1), "n": torch.tensor(n)}

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        ages: torch.Tensor,
        uniforms: torch.Tensor,
        temperature: float = 1.0,
        advance: torch.Tensor | None = None,
        limit: torch.Tensor | None = None,
        return_logits: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Sample futures after each row of PROMPT ((P, T0) one patient per row, left-padded with PAD_ID), with a
        KV cache. AGES (P,): each patient's age at its first token, in days.

        UNIFORMS (P * n, n_new) in [0, 1): n futures per prompt (rows p * n ... p * n + n - 1 continue prompt p,
        whose keys and values are computed once and shared), one draw per future and step (inverse-CDF
        sampling), so a future depends only on its own prompt and draws, never on the batch it is sampled in.
        Special tokens are never sampled.

        The horizon: ADVANCE (V,) days each token moves time on (the time tokens; 0 for codes) and LIMIT (P * n,)
        days per future. A future is complete with the token that takes its elapsed time to LIMIT or beyond;
        what follows is PAD_ID, finished futures leave the batch, and the loop ends when every future is
        complete or after n_new tokens. Returns {"tokens": (P * n, n_new), "elapsed": (P * n,) days at the end}
        and, with RETURN_LOGITS, "logits" (P * n, n_new, V), each step's logits before sampling (0 once done)."""
        self.eval()
        P, T0 = prompt.shape
        B, n_new = uniforms.shape
        assert B % P == 0, f"uniforms has {B} rows, not a multiple of the {P} prompts"
        n = B // P
        total = T0 + n_new
        cfg, dev = self.config, prompt.device
        longest = int((prompt != PAD_ID).sum(1).max())
        assert longest + n_new <= cfg.max_len, f"a prompt of {longest} plus {n_new} new tokens > max_len={cfg.max_len}"
        valid = torch.zeros(P, total, dtype=torch.bool, device=dev)
        valid[:, :T0] = prompt != PAD_ID
        pos = (valid[:, :T0].long().cumsum(1) - 1).clamp(min=0)  # (P, T0) positions from each row's first token
        row_ages = ages.float().unsqueeze(1)  # (P, 1)
        specials = (self.family == SPECIAL).nonzero().squeeze(1).to(dev)  # never sampled
        # The prompts in one pass: causal within each, padding keys masked (every query sees itself).
        shape = (P, cfg.n_head, total, cfg.n_embd // cfg.n_head)
        buffers = [(torch.zeros(shape, device=dev), torch.zeros(shape, device=dev)) for _ in self.h]
        causal = torch.ones(T0, T0, dtype=torch.bool, device=dev).tril()
        eye = torch.eye(T0, dtype=torch.bool, device=dev)
        mask = ((valid[:, None, :T0] & causal) | eye).unsqueeze(1)  # (P, 1, T0, T0)
        x = self._embed(prompt, row_ages.expand(P, T0), pos)
        for block, (k, v) in zip(self.h, buffers, strict=True):
            x = block(x, mask, (k, v, 0))
        last = self.lm_head(self.ln_f(x[:, -1])).float()  # (P, V)
        # n futures per prompt: the prompt's cache, ages, positions and last logits repeated.
        if n > 1:
            buffers = [(k.repeat_interleave(n, 0), v.repeat_interleave(n, 0)) for k, v in buffers]
            valid, row_ages, last = (
                valid.repeat_interleave(n, 0),
                row_ages.repeat_interleave(n, 0),
                last.repeat_interleave(n, 0),
            )
        next_pos = pos[:, -1].repeat_interleave(n) + 1  # (B,)
        age_emb = self.age_encoding(row_ages)  # (B, 1, C): each future's age, encoded once
        rows = torch.arange(B, device=dev)  # the futures still running, by their row in the output
        out_tokens = torch.full((B, n_new), PAD_ID, dtype=torch.long, device=dev)
        out_logits = torch.zeros(B, n_new, cfg.vocab_size, device=dev) if return_logits else None
        elapsed = torch.zeros(B, dtype=torch.float64, device=dev)
        if advance is not None:
            advance = advance.to(device=dev, dtype=torch.float64)
            limit = limit.to(device=dev, dtype=torch.float64)
        u_all = uniforms.to(device=dev)
        alive = torch.ones(B, dtype=torch.bool, device=dev)  # per row of the batch: its future is not complete
        for step in range(n_new):
            if return_logits:
                out_logits[rows, step] = last * alive.unsqueeze(1)
            z = last if temperature == 1.0 else last / temperature  # (b, V)
            z[:, specials] = -math.inf  # never a special token
            cdf = torch.softmax(z, dim=-1).cumsum_(-1)  # (b, V) the CDF (softmax: one fused pass)
            u = u_all[rows, step : step + 1].to(cdf.dtype) * cdf[:, -1:]  # (b, 1)
            new = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=cfg.vocab_size - 1)  # (b,)
            out_tokens[rows, step] = torch.where(alive, new, PAD_ID)
            if advance is not None:
                elapsed[rows] += torch.where(alive, advance[new], 0.0)
                alive = alive & (elapsed[rows] < limit[rows])
            if step == n_new - 1 or not bool(alive.any()):
                break
            # Complete futures leave the batch once they are half of it (copying the cache costs steps).
            if int((~alive).sum()) * 2 >= alive.numel():
                keep = alive.nonzero().squeeze(1)
                rows, new, next_pos, age_emb, valid = rows[keep], new[keep], next_pos[keep], age_emb[keep], valid[keep]
                buffers, alive = [(k[keep], v[keep]) for k, v in buffers], alive[keep]
            at = T0 + step
            valid[:, at] = True
            mask = valid[:, None, None, : at + 1]  # (b, 1, 1, at + 1)
            x = self.wte(new.unsqueeze(1)) + self.wpe(next_pos.unsqueeze(1)) + age_emb  # `_embed`, age encoded once
            for block, (k, v) in zip(self.h, buffers, strict=True):
                x = block(x, mask, (k, v, at))
            last = self.lm_head(self.ln_f(x[:, -1])).float()
            next_pos = next_pos + 1
        result = {"tokens": out_tokens, "elapsed": elapsed}
        if return_logits:
            result["logits"] = out_logits
        return result
