"""Packed rows: whole patient sequences packed into fixed-length rows, for pretraining and fine-tuning.

Packing is greedy first-fit over an order of the patients, looking back over the last PACK_WINDOW open rows
(so it streams in O(patients)). In a row, `segments` numbers the patients; the model restarts positions and
blocks attention at every change, and the padding tail is a segment of its own.
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


def pack_rows(lengths: np.ndarray, order: np.ndarray, row_len: int) -> list[list[int]]:
    """Greedy first-fit: patients (positions into LENGTHS, taken in ORDER) into rows of ROW_LEN tokens, each
    in the first of the last PACK_WINDOW rows with room (else a new row). Rows in creation order."""
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
            free[r] = row_len
        free[r] -= length
    return rows


class PackedRows:
    """The pretraining stream: packed rows of an epoch, steps of rows, and row tensors."""

    def __init__(self, store: tok.TokenStore, indices: np.ndarray, row_len: int, seed: int):
        self.store, self.indices, self.row_len, self.seed = store, np.asarray(indices), row_len, seed
        self.lengths = np.minimum(store.lengths()[self.indices], row_len)  # after the cut to max_len
        self._epoch, self._rows = -1, []

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        if epoch != self._epoch:
            self._epoch = epoch
            self._rows = pack_rows(self.lengths, epoch_order(len(self.indices), self.seed, epoch), self.row_len)
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

    def tensors(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        """tokens, ages, visits, segments (R, row_len); padding is PAD_ID in a segment of its own."""
        return rows_to_tensors(rows, lambda p: self.store.sequence(int(self.indices[p]), max_len=self.row_len),
                               self.row_len)  # fmt: skip


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
