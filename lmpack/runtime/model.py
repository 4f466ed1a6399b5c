"""A loaded `.lmp` model: the Python face of the C forward pass.

`Model` maps and validates the file (LmpReader), hands the C core the weight slots and forward
features the family table derives from the config (`lmpack.formats.arch`) and the RoPE
frequencies, and runs it: `logits` for a fresh context, `generate` for streamed text. Python
runs once per token (sampling and detokenizing); everything per layer happens in C with the GIL
released.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from lmpack import _core
from lmpack.errors import LmpackError
from lmpack.formats import arch
from lmpack.formats.config import ModelConfig
from lmpack.formats.lmp import LmpReader
from lmpack.runtime.sampler import Sampler, sampling_options
from lmpack.runtime.tokenizer import StreamDecoder, open_tokenizer

DEFAULT_MAX_CONTEXT = 4096  # the KV cache is sized from this, not from a 128k max_position_embeddings


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
    """Per-pair RoPE inverse frequencies in float32, as transformers computes them."""
    d = cfg.rope_dim or cfg.head_dim  # the rotated dims of a head
    exponent = np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / np.float32(d)
    inv = (np.float32(1.0) / (np.float32(cfg.rope_theta) ** exponent)).astype(np.float32)
    rs = cfg.rope_scaling
    if rs is None:
        return inv
    if rs["type"] == "linear":
        return (inv / np.float32(rs["factor"])).astype(np.float32)
    factor, low, high = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
    old = float(rs["original_max_position_embeddings"])
    wavelen = np.float32(2 * math.pi) / inv
    scaled = np.where(wavelen > old / low, inv / np.float32(factor), inv).astype(np.float32)
    smooth = ((old / wavelen - low) / (high - low)).astype(np.float32)
    smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_tables(cfg: ModelConfig) -> np.ndarray:
    """The C core's RoPE tables [n, rotated dims/2]: the model's; then, for families whose sliding
    layers have their own base (Gemma 3), that base unscaled (arch.core_config's layer_rope)."""
    tables = [rope_inv_freq(cfg)]
    if cfg.rope_local_theta is not None:
        tables.append(rope_inv_freq(replace(cfg, rope_theta=cfg.rope_local_theta, rope_scaling=None)))
    return np.ascontiguousarray(np.stack(tables), dtype=np.float32)


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    generation_seconds: float = 0.0
    decode_steps: int = 0  # single-token forward passes (the first token comes from the prompt's logits)
    stopped_by: str = ""  # "eos", "max_tokens" or "context"

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generation_tps(self) -> float:
        return self.decode_steps / self.generation_seconds if self.generation_seconds > 0 else 0.0


class Model:
    """A `.lmp` file loaded for inference. Create it with `lmpack.load(path)`."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, max_context: int | None = None):
        self.path = Path(path)
        self._reader = LmpReader(self.path)
        cfg = self.config = self._reader.config
        try:
            self.tokenizer = open_tokenizer(self._reader.tokenizer_kind, self._reader.tokenizer_bytes, cfg.bos_id,
                                            cfg.eos_ids, cfg.vocab_size, self._reader.tokenizer_fields)
        except LmpackError as e:
            raise LmpackError(f"{self.path}: {e} (lmpack verify checks the file)") from None
        self.threads = default_threads() if threads is None else threads
        if not isinstance(self.threads, int) or self.threads < 1:
            raise LmpackError(f"threads must be a positive integer, got {threads!r}")
        self.n_ctx = min(cfg.max_context, DEFAULT_MAX_CONTEXT) if max_context is None else max_context
        if not isinstance(self.n_ctx, int) or self.n_ctx < 1:
            raise LmpackError(f"the context length must be a positive integer, got {max_context!r}")
        entries = {e.name: (e.offset, e.nbytes, e.dtype, e.shape) for e in self._reader.tensors}
        try:
            self._core = _core.Model(self._reader.buffer, arch.core_config(cfg), arch.core_weights(cfg, entries),
                                     rope_tables(cfg), self.n_ctx, self.threads)
        except (ValueError, MemoryError) as e:
            raise LmpackError(f"{self.path}: {e}") from None
        # Sampling defaults from the source's generation_config.json (docs/FORMAT.md, "generation").
        self.generation_defaults = dict(self._reader.generation)
        self.last_stats = GenerationStats()

    # -- the forward pass
    def forward(self, ids: Sequence[int], pos: int, all_logits: bool = False) -> np.ndarray:
        """Run `ids` at positions pos.. over the cached context; logits of every or the last token."""
        try:
            tokens = np.ascontiguousarray(ids, dtype=np.int32).reshape(-1)
        except (OverflowError, ValueError, TypeError) as e:
            raise LmpackError(f"token ids must be integers in the vocabulary ({e})") from None
        # Checked here too, before the logits buffer is allocated for that many tokens.
        if pos < 0 or pos + tokens.size > self.n_ctx:
            raise LmpackError(f"context full: {pos + tokens.size} tokens do not fit in {self.n_ctx}")
        out = np.empty((tokens.size if all_logits else 1, self.config.vocab_size), np.float32)
        try:  # the C core checks the ids (and everything else) before it runs
            self._core.forward(tokens, pos, out, all_logits)
        except ValueError as e:
            raise LmpackError(str(e)) from None
        return out

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """float32 logits (len(ids), vocab) for exactly `ids`, from a fresh context."""
        return self.forward(ids, 0, all_logits=True)

    # -- text generation
    def generate(self, prompt: str | Sequence[int], max_tokens: int = 256, temperature: float | None = None,
                 top_p: float | None = None, seed: int | None = None, stop_at_eos: bool = True,
                 top_k: int | None = None, repetition_penalty: float | None = None) -> Iterator[str]:
        """Stream text pieces continuing `prompt` (text is encoded with the model's own BOS rule; ids
        are used as given).

        Sampling options left as None take the model's generation_config.json defaults, else
        temperature 0.8, top_p 0.95, no top-k, no repetition penalty (`sampling_options`); greedy at
        temperature 0. Stops at any EOS id, after max_tokens, or when the context is full;
        `last_stats` then holds token counts and timings."""
        ids = self.tokenizer.encode(prompt, bos=True) if isinstance(prompt, str) else [int(i) for i in prompt]
        if not ids:
            raise LmpackError("empty prompt (this model's tokenizer adds no BOS token: give some text)"
                              if isinstance(prompt, str) and prompt == "" else "empty prompt")
        return self.continue_from(ids, 0, self.sampler(temperature, top_p, seed, top_k, repetition_penalty),
                                  max_tokens, stop_at_eos)

    def sampler(self, temperature: float | None = None, top_p: float | None = None, seed: int | None = None,
                top_k: int | None = None, repetition_penalty: float | None = None) -> Sampler:
        """A Sampler with the given options, the model's defaults for the others (see `sampling_options`)."""
        opts, _ = sampling_options(self.generation_defaults, temperature=temperature, top_p=top_p, top_k=top_k,
                                   repetition_penalty=repetition_penalty)
        return Sampler(seed=seed, **opts)

    def continue_from(self, ids: list[int], pos: int, sampler: Sampler, max_tokens: int,
                      stop_at_eos: bool = True, generated: list[int] | None = None) -> Iterator[str]:
        """Feed `ids` at position `pos` (the cache holds positions < pos), then sample up to
        max_tokens. Each sampled id is appended to `generated` (if given) as it is produced; the
        last one is not yet in the cache, so a caller that goes on must feed it first."""
        stats = self.last_stats = GenerationStats(prompt_tokens=len(ids))
        sampler.see(ids)
        t0 = time.perf_counter()
        logits = self.forward(ids, pos)[-1]
        stats.prompt_seconds = time.perf_counter() - t0
        decoder = StreamDecoder(self.tokenizer, ids)
        pos += len(ids)
        t1 = time.perf_counter()
        stats.stopped_by = "max_tokens"
        try:
            for i in range(max_tokens):
                token = sampler(logits)
                sampler.see((token,))
                if generated is not None:
                    generated.append(token)
                if stop_at_eos and token in self.tokenizer.eos_ids:
                    stats.stopped_by = "eos"
                    break
                stats.generated_tokens += 1
                piece = decoder.push(token)
                if piece:
                    yield piece
                if i + 1 == max_tokens:
                    break
                if pos >= self.n_ctx:
                    stats.stopped_by = "context"
                    break
                logits = self.forward([token], pos)[-1]
                pos += 1
                stats.decode_steps += 1
            rest = decoder.flush()
            if rest:
                yield rest
        finally:
            stats.generation_seconds = time.perf_counter() - t1

    def close(self) -> None:
        self._core = None
        self._reader.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load(path: str | os.PathLike, threads: int | None = None, max_context: int | None = None) -> Model:
    """Map and validate a `.lmp` file and prepare it to run on `threads` CPU threads (default: all)."""
    return Model(path, threads=threads, max_context=max_context)
