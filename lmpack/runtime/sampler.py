"""Choosing the next token from logits: greedy, repetition penalty, temperature, top-k and nucleus
(top-p) sampling, applied in transformers' order; and which options a run uses.

`sampling_options` settles each option from what the user gave, else the model's
generation_config.json defaults embedded in the file, else lmpack's own, and says where each came from.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

import numpy as np

from lmpack.errors import LmpackError

BUILTIN = {"temperature": 0.8, "top_p": 0.95, "top_k": 0, "repetition_penalty": 1.0}


def sampling_options(generation: dict[str, Any] | None, **given: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """(options, source of each: "set" | "model" | "default"). `given` values of None are unset.

    A model whose generation_config.json says `do_sample: false` is greedy by default."""
    generation = generation or {}
    opts, source = {}, {}
    for key, fallback in BUILTIN.items():
        if given.get(key) is not None:
            opts[key], source[key] = given[key], "set"
        elif key == "temperature" and generation.get("do_sample") is False:
            opts[key], source[key] = 0.0, "model"
        elif generation.get(key) is not None:
            opts[key], source[key] = generation[key], "model"
        else:
            opts[key], source[key] = fallback, "default"
    return opts, source


def describe(opts: dict[str, Any], source: dict[str, str]) -> str:
    """One line naming the sampling a run uses and where it came from."""
    if opts["temperature"] == 0:
        parts, shown = ["greedy"], ["temperature"]
    else:
        parts, shown = [f"temperature {opts['temperature']:g}", f"top_p {opts['top_p']:g}"], ["temperature", "top_p"]
        if opts["top_k"]:
            parts.append(f"top_k {opts['top_k']}")
            shown.append("top_k")
    if opts["repetition_penalty"] != 1:
        parts.append(f"repetition_penalty {opts['repetition_penalty']:g}")
        shown.append("repetition_penalty")
    from_model = [k for k in shown if source[k] == "model"]
    origin = f" (from the model's generation_config: {', '.join(from_model)})" if from_model else ""
    return "sampling: " + ", ".join(parts) + origin


class Sampler:
    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, top_k: int = 0,
                 repetition_penalty: float = 1.0):
        if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or \
                not math.isfinite(temperature) or temperature < 0:
            raise LmpackError(f"temperature must be a finite number >= 0, got {temperature}")
        if isinstance(top_p, bool) or not isinstance(top_p, numbers.Real) or not 0 < top_p <= 1:
            raise LmpackError(f"top_p must be in (0, 1], got {top_p}")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
            raise LmpackError(f"top_k must be an integer >= 0, got {top_k}")
        if isinstance(repetition_penalty, bool) or not isinstance(repetition_penalty, numbers.Real) or \
                not math.isfinite(repetition_penalty) or not repetition_penalty > 0:
            raise LmpackError(f"repetition_penalty must be a finite number > 0, got {repetition_penalty}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
            raise LmpackError(f"seed must be a non-negative integer, got {seed}")
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.top_k = int(top_k)
        self.repetition_penalty = float(repetition_penalty)
        self._rng = np.random.default_rng(None if seed is None else int(seed))
        self._seen: set[int] = set()

    def see(self, ids: Iterable[int]) -> None:
        """Record tokens of the context (prompt and generated) for the repetition penalty."""
        if self.repetition_penalty != 1:
            self._seen.update(int(i) for i in ids)

    def __call__(self, logits: np.ndarray) -> int:
        if not np.isfinite(logits).all():
            bad = int(np.flatnonzero(~np.isfinite(logits))[0])
            raise LmpackError(f"the model computed a non-finite logit ({logits[bad]} for token {bad}): its weights "
                              f"hold NaN/Inf or overflow float32 (lmpack verify checks the file)")
        if self.repetition_penalty != 1 and self._seen:
            # CTRL's penalty as transformers applies it: a seen token's logit is divided by the
            # penalty when positive, multiplied when negative.
            logits = np.array(logits, dtype=np.float32)
            idx = np.fromiter((i for i in self._seen if 0 <= i < logits.shape[0]), dtype=np.int64)
            v = logits[idx]
            logits[idx] = np.where(v < 0, v * self.repetition_penalty, v / self.repetition_penalty)
        if self.temperature == 0:
            return int(np.argmax(logits))
        # Shift first, then scale: the largest logit becomes 0 and the rest negative, so a tiny
        # temperature sends them to -inf (probability 0) instead of inf - inf = NaN.
        with np.errstate(over="ignore"):
            z = (logits.astype(np.float64) - float(logits.max())) / self.temperature
        if 0 < self.top_k < z.shape[0]:
            kth = np.partition(z, -self.top_k)[-self.top_k]
            z = np.where(z < kth, -np.inf, z)
        p = np.exp(z - z.max())
        p /= p.sum()
        if self.top_p < 1:
            order = np.argsort(-p, kind="stable")
            cum = np.cumsum(p[order])
            keep = order[: int(np.searchsorted(cum, self.top_p)) + 1]
            q = p[keep] / p[keep].sum()
            return int(keep[self._rng.choice(len(keep), p=q)])
        return int(self._rng.choice(len(p), p=p))
