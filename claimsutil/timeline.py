"""Event timelines for the generative model: the token store's sequences with the passing of time as tokens.

    timeline = Timeline(TokenStore("data/tokens"))
    tokens, ages, visits = timeline.sequence(i, before=prediction_time, max_len=256)

The encoder reads time as ages and visit numbers; a decoder that samples a patient's future must also write
it, so that a sampled future knows when it has reached its horizon. Between two consecutive records of a
patient on different dates, the timeline inserts one time token for the gap, quantised into TIME_BINS (as
ETHOS does, from under a day to over a year; claims are dated to the day, so the first bin is empty on
claims data). A time token carries the date and age of the record it leads to, so cutting a timeline
"strictly before the prediction time" drops the gap into the first record at or after it too.

The time tokens follow the store's vocabulary (ids len(store vocabulary) ... + len(TIME_BINS) - 1) in a
family of their own (TIME_FAMILY, after the store's special / diagnosis / drug / other). The decoder reads
age once: `sequence` gives every token the age at the first record kept.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from claimsutil import tokenize as tok

__all__ = ["GEN_FAMILIES", "TIME_BINS", "TIME_FAMILY", "Timeline", "time_bin", "time_token_table", "unigram_baseline"]

# (lower edge in days, upper edge in days, token, days a sampled future advances by this token)
TIME_BINS: tuple[tuple[float, float, str, float], ...] = (
    (0, 1, "TIME/<1d", 0.5),
    (1, 7, "TIME/1d-1w", 4.0),
    (7, 14, "TIME/1-2w", 10.5),
    (14, 30, "TIME/2w-1m", 22.0),
    (30, 61, "TIME/1-2m", 45.5),
    (61, 91, "TIME/2-3m", 76.0),
    (91, 182, "TIME/3-6m", 136.5),
    (182, 365, "TIME/6m-1y", 273.5),
    (365, math.inf, "TIME/>1y", 547.5),  # advance: 1.5 years
)
_EDGES = np.array([b[0] for b in TIME_BINS[1:]], dtype=np.float64)
TIME_FAMILY = len(tok.FAMILIES)  # the time tokens' family id, after the store's families
# The decoder's losses by the family of the token predicted, with their family ids.
GEN_FAMILIES = {"diagnosis": tok.FAMILIES.index("diagnosis"), "drug": tok.FAMILIES.index("drug"),
                "time": TIME_FAMILY, "other": tok.FAMILIES.index("other")}  # fmt: skip


def time_bin(days: np.ndarray) -> np.ndarray:
    """The TIME_BINS index of gaps of DAYS (>= 0)."""
    return np.searchsorted(_EDGES, np.asarray(days, dtype=np.float64), side="right")


class Timeline:
    """STORE's patients with time tokens between records on different dates (arrays built once, in memory)."""

    def __init__(self, store: tok.TokenStore) -> None:
        self.store = store
        self.base_vocab = len(store.vocab.tokens)
        tokens = np.asarray(store.tokens)
        times = np.asarray(store.times_us)
        ages = np.asarray(store.ages)
        offsets = np.asarray(store.offsets)
        # A gap starts at token j when j and j - 1 are records of the same patient on different dates.
        event = times != tok.TIME_STATIC
        starts = np.zeros(tokens.size, dtype=bool)
        starts[offsets[:-1][offsets[:-1] < tokens.size]] = True
        gap = np.zeros(tokens.size, dtype=bool)
        gap[1:] = event[1:] & event[:-1] & ~starts[1:] & (times[1:] != times[:-1])
        at = np.flatnonzero(gap)
        days = (times[at] - times[at - 1]) / tok.US_PER_DAY
        self.gap_bins = time_bin(days)
        self.tokens = np.insert(tokens.astype(np.int32), at, (self.base_vocab + self.gap_bins).astype(np.int32))
        self.times = np.insert(times, at, times[at])
        self.ages = np.insert(ages, at, ages[at])
        self.offsets = offsets + np.searchsorted(at, offsets, side="left")
        self.gap_patients = np.searchsorted(offsets, at, side="right") - 1  # the patient of each gap

    @property
    def vocab_size(self) -> int:
        return self.base_vocab + len(TIME_BINS)

    @property
    def tokens_list(self) -> list[str]:
        return list(self.store.vocab.tokens) + [b[2] for b in TIME_BINS]

    @property
    def family_ids(self) -> np.ndarray:
        """The family of every token id: the store's, then TIME_FAMILY for the time tokens."""
        return np.r_[self.store.vocab.family_ids, np.full(len(TIME_BINS), TIME_FAMILY)].astype(np.int64)

    def advance_days(self) -> np.ndarray:
        """Days a sampled future advances per token id (0 for every token but the time tokens)."""
        out = np.zeros(self.vocab_size, dtype=np.float64)
        out[self.base_vocab :] = [b[3] for b in TIME_BINS]
        return out

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, i: int, before=None, max_len: int | None = None) -> tok.Sequence:
        """Patient I's (tokens, ages, visits) with time tokens, as `TokenStore.sequence`: only what is strictly
        before BEFORE ([CLS] and static tokens always), the most recent that fit MAX_LEN. A cut never starts
        the records with a time token (a gap from a record left out). Ages: the first kept record's age, on
        every token. Visits: zeros (the decoder has no visit embedding)."""
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        times = self.times[start:end]
        head = int(np.searchsorted(times, tok.TIME_STATIC, side="right"))
        stop = end if before is None else start + int(np.searchsorted(times, tok._as_us(before), side="left"))
        first = start + head
        if max_len is not None:
            if max_len < 1:
                raise ValueError(f"max_len = {max_len}: must be >= 1")
            head = min(head, max_len)
            first = max(first, stop - (max_len - head))
        if first < stop and self.tokens[first] >= self.base_vocab:
            first += 1
        idx = np.r_[start : start + head, first:stop]
        age = self.ages[first] if first < stop else (self.ages[start] if head else np.nan)
        n = idx.size
        return self.tokens[idx].copy(), np.full(n, age, dtype=np.float32), np.zeros(n, dtype=np.int32)

    def last_time(self, i: int, before=None) -> int | None:
        """Microseconds of patient I's last record strictly before BEFORE (None: no record)."""
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        times = self.times[start:end]
        stop = end if before is None else int(np.searchsorted(times, tok._as_us(before), side="left")) + start
        t = self.times[stop - 1] if stop > start else tok.TIME_STATIC
        return None if t == tok.TIME_STATIC else int(t)


def time_token_table(timeline: Timeline, indices: np.ndarray | None = None) -> pl.DataFrame:
    """How often each time token occurs (among the patients INDICES; default all): count and share of gaps."""
    bins = timeline.gap_bins
    if indices is not None:
        bins = bins[np.isin(timeline.gap_patients, np.asarray(indices))]
    counts = np.bincount(bins, minlength=len(TIME_BINS))
    return pl.DataFrame(
        {
            "token": [b[2] for b in TIME_BINS],
            "from_days": [float(b[0]) for b in TIME_BINS],
            "to_days": [float(b[1]) for b in TIME_BINS],
            "advance_days": [b[3] for b in TIME_BINS],
            "gaps": counts.astype(np.int64),
            "share": counts / max(int(counts.sum()), 1),
        }
    )


def unigram_baseline(timeline: Timeline, fit_indices: np.ndarray, eval_indices: np.ndarray) -> dict[str, float]:
    """The frequency baseline of next-token prediction: the cross-entropy (nats) on the EVAL_INDICES patients'
    targets (every token after a patient's first, special tokens left out as the decoder leaves them out) of
    a unigram model of the FIT_INDICES patients' targets (add-one smoothed), per family of the target and
    over all ("total"). A decoder that learned only how often each token occurs scores this."""
    lengths = timeline.lengths()
    patient = np.repeat(np.arange(lengths.size), lengths)
    target = np.ones(timeline.tokens.size, dtype=bool)
    target[timeline.offsets[:-1][lengths > 0]] = False  # a patient's first token is no target
    family = timeline.family_ids[timeline.tokens]
    target &= family != tok.FAMILIES.index("special")
    fit = target & np.isin(patient, np.asarray(fit_indices))
    counts = np.bincount(timeline.tokens[fit], minlength=timeline.vocab_size).astype(np.float64) + 1.0
    counts[timeline.family_ids == tok.FAMILIES.index("special")] = 0.0
    logp = np.log(np.where(counts > 0, counts, 1.0) / counts.sum())
    ev = target & np.isin(patient, np.asarray(eval_indices))
    nll, fam = -logp[timeline.tokens[ev]], family[ev]
    out = {name: float(nll[fam == code].mean()) if (fam == code).any() else None for name, code in GEN_FAMILIES.items()}
    return out | {"total": float(nll.mean()) if nll.size else None}
