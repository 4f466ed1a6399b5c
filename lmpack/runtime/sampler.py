"""Choosing the next token from logits: greedy, repetition penalty, temperature, top-k and nucleus
(top-p) sampling, applied in transformers' order; and which options a run uses.

`sampling_options` settles each option from what the user gave, else the model's
generation_config.json defaults embedded in the file, else lmpack's own, and says where each came from.
"""
from __future__ import annotations

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
        if not temperature >= 0:
            raise LmpackError(f"temperature must be >= 0, got {temperature}")
        if not 0 < top_p <= 1:
            raise LmpackError(f"top_p must be in (0, 1], got {top_p}")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
            raise LmpackError(f"top_k must be an integer >= 0, got {top_k}")
        if not repetition_penalty > 0:
            raise LmpackError(f"repetition_penalty must be > 0, got {repetition_penalty}")
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = int(top_k)
        self.repetition_penalty = float(repetition_penalty)
        self._rng = np.random.default_rng(seed)
        self._seen: set[int] = set()

    def see(self, ids: Iterable[int]) -> None:
        """Record tokens of the context (prompt and generated) for the repetition penalty."""
        if self.repetition_penalty != 1:
            self._seen.update(int(i) for i in ids)

    def __call__(self, logits: np.ndarray) -> int:
        if self.repetition_penalty != 1 and self._seen:
            # CTRL's penalty as transformers applies it: a seen token's logit is divided by the
            # penalty when positive, multiplied when negative.
            logits = np.array(logits, dtype=np.float32)
            idx = np.fromiter((i for i in self._seen if 0 <= i < logits.shape[0]), dtype=np.int64)
            v = logits[idx]
            logits[idx] = np.where(v < 0, v * self.repetition_penalty, v / self.repetition_penalty)
        if self.temperature == 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / self.temperature
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
