"""Choosing the next token from logits: greedy, temperature and nucleus (top-p) sampling."""
from __future__ import annotations

import math
import numbers

import numpy as np

from lmpack.errors import LmpackError


class Sampler:
    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None):
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or \
                not math.isfinite(temperature) or temperature < 0:
            raise LmpackError(f"temperature must be a finite number >= 0, got {temperature}")
        if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1:
            raise LmpackError(f"top_p must be in (0, 1], got {top_p}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise LmpackError(f"seed must be a non-negative integer, got {seed}")
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self._rng = np.random.default_rng(None if seed is None else int(seed))

    def __call__(self, logits: np.ndarray) -> int:
        if not np.isfinite(logits).all():
            bad = int(np.flatnonzero(~np.isfinite(logits))[0])
            raise LmpackError(f"the model computed a non-finite logit ({logits[bad]} for token {bad}): its weights "
                              f"hold NaN/Inf or overflow float32 (lmpack verify checks the file)")
        if self.temperature == 0:
            return int(np.argmax(logits))
        # Shift first, then scale: the largest logit becomes 0 and the rest negative, so a tiny
        # temperature sends them to -inf (probability 0) instead of inf - inf = NaN.
        with np.errstate(over="ignore"):
            z = (logits.astype(np.float64) - float(logits.max())) / self.temperature
        p = np.exp(z)
        p /= p.sum()
        if self.top_p < 1:
            order = np.argsort(-p, kind="stable")
            cum = np.cumsum(p[order])
            keep = order[: int(np.searchsorted(cum, self.top_p)) + 1]
            q = p[keep] / p[keep].sum()
            return int(keep[self._rng.choice(len(keep), p=q)])
        return int(self._rng.choice(len(p), p=p))
