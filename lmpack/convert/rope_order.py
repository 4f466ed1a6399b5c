"""The two orders of q/k rows within a head, and the row permutations between them.

Hugging Face (and `.lmp`) rotate the pair (i, i + head_dim/2) of each head ("half-split"); Meta,
llama2.c and llama.cpp's `llama` architecture rotate (2i, 2i + 1) ("interleaved"). Converting is a
permutation of the output rows inside each head (docs/FORMAT.md, Tensors).
"""
from __future__ import annotations

import numpy as np


def interleaved_rows(rows: int, n_heads: int) -> np.ndarray:
    """Row order taking half-split q/k rows to interleaved pairs: out[j] = in[perm[j]];
    within a head of size hd, out row 2i + c is in row c*hd/2 + i."""
    hd = rows // n_heads
    return np.arange(rows).reshape(n_heads, 2, hd // 2).transpose(0, 2, 1).reshape(rows)


def half_split_rows(rows: int, n_heads: int) -> np.ndarray:
    """The inverse of `interleaved_rows`: interleaved q/k rows back to half-split order."""
    return np.argsort(interleaved_rows(rows, n_heads))
