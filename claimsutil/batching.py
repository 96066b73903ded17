"""Packed rows: whole patient sequences packed into fixed-length rows, for pretraining and fine-tuning.

Packing is greedy first-fit over an order of the patients, looking back over the last PACK_WINDOW open rows
(so it streams in O(patients)). In a row, `segments` numbers the patients; the model restarts positions and
blocks attention at every change, and the padding tail is a segment of its own.

Rows may come in several widths (`width_step` > 0: multiples of it up to row_len): a new row is as wide as
its first patient needs, rounded up to the step, and later patients fill any open row with room. Attention
costs each token the width of its row, and most patients are short (the demo's median is 62 tokens of 256),
so short rows spend less on keys a token may not attend to; a step's rows then run in groups of one width.
"""

from __future__ import annotations

import numpy as np
import torch

from claimsutil import tokenize as tok
from claimsutil.model import PAD_ID

PACK_WINDOW = 512  # open rows first-fit looks back over; more packs tighter, fewer packs faster


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of the N pretraining patients for EPOCH: fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def row_width(real: int, row_len: int, width_step: int = 0) -> int:
    """The width of a row holding REAL tokens: row_len, or with WIDTH_STEP > 0 REAL rounded up to a multiple
    of it (at most row_len)."""
    if width_step <= 0:
        return row_len
    return min(row_len, -(-max(real, 1) // width_step) * width_step)


def pack_rows(lengths: np.ndarray, order: np.ndarray, row_len: int, width_step: int = 0) -> list[list[int]]:
    """Greedy first-fit: patients (positions into LENGTHS, taken in ORDER) into rows, each in the first of the
    last PACK_WINDOW rows with room (else a new row, as wide as `row_width` gives for the patient). Rows in
    creation order. A row's width is `row_width` of its real tokens: the width it was created with."""
    if lengths.size and int(lengths.max()) > row_len:
        raise ValueError(f"a sequence of {int(lengths.max())} tokens does not fit a row of {row_len}")
    rows: list[list[int]] = []
    free = np.zeros(len(order) + 1, dtype=np.int64)  # room left in each row
    for p in order:
        length = int(lengths[p])
        lo = max(0, len(rows) - PACK_WINDOW)
        fits = np.flatnonzero(free[lo : len(rows)] >= length)
        if fits.size:
            r = lo + int(fits[0])
            rows[r].append(int(p))
        else:
            r = len(rows)
            rows.append([int(p)])
            free[r] = row_width(length, row_len, width_step)
        free[r] -= length
    return rows


class PackedRows:
    """The pretraining stream: packed rows of an epoch, steps of rows, and row tensors."""

    def __init__(self, store: tok.TokenStore, indices: np.ndarray, row_len: int, seed: int, width_step: int = 0):
        self.store, self.indices, self.row_len, self.seed = store, np.asarray(indices), row_len, seed
        self.width_step = width_step
        self.lengths = np.minimum(store.lengths()[self.indices], row_len)  # after the cut to max_len
        self._epoch, self._rows = -1, []

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        if epoch != self._epoch:
            self._epoch = epoch
            order = epoch_order(len(self.indices), self.seed, epoch)
            self._rows = pack_rows(self.lengths, order, self.row_len, self.width_step)
        return self._rows

    def next_step(self, position: tuple[int, int], tokens_per_step: int) -> tuple[list[list[int]], tuple[int, int]]:
        """Rows from POSITION (epoch, row) until they hold >= tokens_per_step real tokens; the new position."""
        epoch, cursor = position
        rows, real = [], 0
        while real < tokens_per_step:
            epoch_rows = self.epoch_rows(epoch)
            if cursor >= len(epoch_rows):
                epoch, cursor = epoch + 1, 0
                continue
            rows.append(epoch_rows[cursor])
            real += int(self.lengths[epoch_rows[cursor]].sum())
            cursor += 1
        return rows, (epoch, cursor)

    def width(self, row: list[int]) -> int:
        """The width of ROW: the narrowest that holds its patients (the width it was packed into)."""
        return row_width(int(self.lengths[row].sum()), self.row_len, self.width_step)

    def groups(self, rows: list[list[int]]) -> list[tuple[int, list[int]]]:
        """ROWS by width, narrowest first: [(width, positions in ROWS)], each group in the rows' order."""
        by_width: dict[int, list[int]] = {}
        for i, row in enumerate(rows):
            by_width.setdefault(self.width(row), []).append(i)
        return sorted(by_width.items())

    def tensors(self, rows: list[list[int]], width: int | None = None) -> dict[str, torch.Tensor]:
        """tokens, ages, visits, segments (R, WIDTH; default row_len); padding is PAD_ID in a segment of its own."""
        return rows_to_tensors(rows, lambda p: self.store.sequence(int(self.indices[p]), max_len=self.row_len),
                               width or self.row_len)  # fmt: skip


def rows_to_tensors(rows: list[list[int]], sequence, row_len: int) -> dict[str, torch.Tensor]:
    """tokens, ages, visits, segments (R, ROW_LEN) of packed ROWS (lists of patients; SEQUENCE(patient) gives
    its tokens, ages and visits). Segments number the patients within a row; padding is PAD_ID in a segment of
    its own."""
    R = len(rows)
    tokens = np.full((R, row_len), PAD_ID, dtype=np.int64)
    ages = np.zeros((R, row_len), dtype=np.float32)
    visits = np.zeros((R, row_len), dtype=np.int64)
    segments = np.zeros((R, row_len), dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for s, p in enumerate(row):
            t, a, v = sequence(p)
            n = len(t)
            tokens[r, at : at + n], ages[r, at : at + n], visits[r, at : at + n] = t, a, v
            segments[r, at : at + n] = s
            at += n
        segments[r, at:] = len(row)
    arrays = {"tokens": tokens, "ages": ages, "visits": visits, "segments": segments}
    return {k: torch.from_numpy(v) for k, v in arrays.items()}
