"""A loaded `.lmp` model: the Python face of the C forward pass.

`Model` maps and validates the file (LmpReader), hands the C core the weight slots and forward
features the family table derives from the config (`lmpack.formats.arch`) and the RoPE
frequencies, and runs it: `logits` for a fresh context, `generate` for streamed text. Python
runs once per token (sampling and detokenizing); everything per layer happens in C with the GIL
released.
"""
from __future__ import annotations

import math
import numbers
import os
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from lmpack import _core
from lmpack.errors import LmpackError, brief
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
    if high == low:  # no smoothed band between the divided and the kept frequencies
        return np.where(wavelen > old / low, inv / np.float32(factor), inv).astype(np.float32)
    scaled = np.where(wavelen > old / low, inv / np.float32(factor), inv).astype(np.float32)
    smooth = ((old / wavelen - low) / (high - low)).astype(np.float32)
    smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
    medium = ~(wavelen < old / high) & ~(wavelen > old / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def token_array(ids: Sequence[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    """`ids` as int32, if every one is an integer in [0, vocab_size): no wrapping (2**32 + 1 is
    not 1), no truncating (1.9 is not 1), no parsing ('7' is not 7), no bools."""
    if isinstance(ids, (str, bytes)):
        raise LmpackError("token ids must be integers, got text (encode it with the tokenizer first)")
    try:
        a = np.asarray(ids)
    except (ValueError, TypeError, OverflowError) as e:
        raise LmpackError(f"token ids must be a flat sequence of integers ({e})") from None
    if a.ndim > 1:
        a = a.reshape(-1)
    if a.dtype == object:  # Python ints too large for int64, or mixed types
        if not all(isinstance(i, numbers.Integral) and not isinstance(i, (bool, np.bool_)) for i in a.flat):
            raise LmpackError("token ids must be integers")
        bad = [int(i) for i in a.flat if not 0 <= int(i) < vocab_size]
        if bad:
            raise LmpackError(f"token id {brief(bad[0])} is outside the vocabulary [0, {vocab_size})")
        a = np.array([int(i) for i in a.flat], dtype=np.int64)
    if a.size and a.dtype.kind not in "iu":
        raise LmpackError(f"token ids must be integers, got {a.dtype} values")
    a = a.reshape(-1)
    out = (a < 0) | (a >= vocab_size)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise LmpackError(f"token id {int(a[i])} at index {i} is outside the vocabulary [0, {vocab_size})")
    return np.ascontiguousarray(a, dtype=np.int32)


def run_state_bytes(cfg: ModelConfig, n_ctx: int, threads: int) -> int:
    """Bytes of the KV cache and scratch the C core allocates for `n_ctx` positions (forward.c,
    lmp_state_alloc): sized here so an absurd context fails before anything is allocated."""
    kv_dim, q_dim = cfg.n_kv_heads * cfg.head_dim, cfg.n_heads * cfg.head_dim
    chunk = _core.CHUNK  # tokens per pass (LMP_CHUNK)
    scratch = chunk * (3 * cfg.dim + 2 * q_dim + 2 * cfg.ffn_dim + cfg.head_dim + 2 * max(cfg.dim, q_dim, cfg.ffn_dim))
    return 4 * (2 * cfg.n_layers * n_ctx * kv_dim + threads * _core.ATT_ROWS * n_ctx + scratch)


def physical_memory() -> int | None:
    """This machine's RAM in bytes, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_memory(nbytes: int, what: str) -> None:
    ram = physical_memory()
    if ram is not None and nbytes > ram:
        raise LmpackError(f"{what} needs {nbytes / 1e9:.1f} GB, more than this machine's {ram / 1e9:.1f} GB of memory")
def rope_tables(cfg: ModelConfig) -> np.ndarray:
    """The C core's RoPE tables [n, rotated dims/2]: the model's; then, for families whose sliding
    layers have their own base (Gemma 3), that base unscaled (arch.core_config's layer_rope)."""
    tables = [rope_inv_freq(cfg)]
    if cfg.rope_local_theta is not None:
        tables.append(rope_inv_freq(replace(cfg, rope_theta=cfg.rope_local_theta, rope_scaling=None)))
    return np.ascontiguousarray(np.stack(tables), dtype=np.float32)


# What matmuls with bf16 weights see: exact f32 activations, or (opt-in) activations rounded to bf16.
ACTIVATIONS = ("f32", "bf16")


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
    """A `.lmp` file loaded for inference. Create it with `lmpack.load(path)`.

    One Model has one KV cache. `logits` and every step of a generation take a lock, so threads
    may share a Model and each call computes exactly what it would alone. A generation holds the
    cache from its prompt on; a later `generate`, `logits` or chat turn on the same Model takes it
    over, and the earlier generation, if advanced again, raises LmpackError instead of producing
    text from someone else's context. For several conversations at once, load the file once per
    conversation (the weights are one shared mapping of the file)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, max_context: int | None = None,
                 activations: str = "f32"):
        if activations not in ACTIVATIONS:
            raise LmpackError(f"activations must be one of {', '.join(ACTIVATIONS)}, got {brief(activations)}")
        self._activations = activations
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
        if isinstance(self.n_ctx, bool) or not isinstance(self.n_ctx, int) or self.n_ctx < 1:
            raise LmpackError(f"the context length must be a positive integer, got {brief(max_context)}")
        if self.threads > 1024:
            raise LmpackError(f"threads must be at most 1024, got {self.threads}")
        check_fits_memory(run_state_bytes(cfg, self.n_ctx, self.threads),
                          f"a context of {self.n_ctx} tokens ({cfg.n_layers} layers, {self.threads} threads)")
        self._lock = threading.Lock()
        self._owner: object | None = None  # who the KV cache's contents belong to
        entries = {e.name: (e.offset, e.nbytes, e.dtype, e.shape) for e in self._reader.tensors}
        with np.errstate(all="ignore"):  # non-finite frequencies are refused just below, by the C core
            tables = rope_tables(cfg)
        try:
            self._core = _core.Model(self._reader.buffer, arch.core_config(cfg), arch.core_weights(cfg, entries),
                                     tables, self.n_ctx, self.threads, activations)
        except (ValueError, MemoryError) as e:
            raise LmpackError(f"{self.path}: {e}") from None
        # Sampling defaults from the source's generation_config.json (docs/FORMAT.md, "generation").
        self.generation_defaults = dict(self._reader.generation)
        self.last_stats = GenerationStats()

    # -- the forward pass
    def forward(self, ids: Sequence[int], pos: int, all_logits: bool = False, owner: object = None) -> np.ndarray:
        """Run `ids` at positions pos.. over the cached context; logits of every or the last token.

        `owner` names whose context the cache holds: at pos > 0 it must be the owner of the last
        call (else the cache holds another context and LmpackError is raised); pos 0 starts over
        and makes `owner` the owner. None is raw access: no check, and the cache then belongs to
        no generation."""
        tokens = token_array(ids, self.config.vocab_size)
        if tokens.size == 0:
            raise LmpackError("no token ids given")
        # Checked here too, before the logits buffer is allocated for that many tokens.
        if isinstance(pos, bool) or not isinstance(pos, numbers.Integral) or pos < 0 or pos + tokens.size > self.n_ctx:
            raise LmpackError(f"context full: {pos} + {tokens.size} tokens do not fit in {self.n_ctx}")
        if all_logits:
            check_fits_memory(4 * tokens.size * self.config.vocab_size, f"logits for {tokens.size} tokens")
        out = np.empty((tokens.size if all_logits else 1, self.config.vocab_size), np.float32)
        with self._lock:
            if self._core is None:
                raise LmpackError(f"{self.path}: the model is closed")
            if pos > 0 and owner is not None and self._owner is not owner:
                raise LmpackError("the model's KV cache was taken over by another generate(), logits() or chat "
                                  "turn on the same Model; a Model runs one generation at a time (load the file "
                                  "again for another)")
            try:  # the C core checks the ids (and everything else) before it runs
                self._core.forward(tokens, int(pos), out, all_logits)
            except ValueError as e:
                raise LmpackError(str(e)) from None
            self._owner = owner
        return out

    def owns_cache(self, owner: object) -> bool:
        """True while the KV cache still holds the context `owner` last ran."""
        return owner is not None and self._owner is owner

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """float32 logits (len(ids), vocab) for exactly `ids`, from a fresh context."""
        return self.forward(ids, 0, all_logits=True, owner=object())

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
        if isinstance(prompt, str):
            try:
                prompt.encode("utf-8")
            except UnicodeEncodeError as e:
                raise LmpackError(f"the prompt is not valid UTF-8 text (lone surrogate at character {e.start})") from None
        ids = self.tokenizer.encode(prompt, bos=True) if isinstance(prompt, str) else \
            token_array(prompt, self.config.vocab_size).tolist()
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
                      stop_at_eos: bool = True, generated: list[int] | None = None,
                      owner: object = None) -> Iterator[str]:
        """Feed `ids` at position `pos` (the cache holds positions < pos), then sample up to
        max_tokens. Each sampled id is appended to `generated` (if given) as it is produced; the
        last one is not yet in the cache, so a caller that goes on must feed it first. `owner`
        (default: this generation) is who the cache holds the context of (see `forward`)."""
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, numbers.Integral) or max_tokens < 0:
            raise LmpackError(f"max_tokens must be a non-negative integer, got {brief(max_tokens)}")
        owner = object() if owner is None else owner
        return self._continue(ids, pos, sampler, int(max_tokens), stop_at_eos, generated, owner)

    def _continue(self, ids, pos, sampler, max_tokens, stop_at_eos, generated, owner) -> Iterator[str]:
        stats = self.last_stats = GenerationStats(prompt_tokens=len(ids))
        sampler.see(ids)
        t0 = time.perf_counter()
        logits = self.forward(ids, pos, owner=owner)[-1]
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
                logits = self.forward([token], pos, owner=owner)[-1]
                pos += 1
                stats.decode_steps += 1
            rest = decoder.flush()
            if rest:
                yield rest
        finally:
            stats.generation_seconds = time.perf_counter() - t1

    @property
    def activations(self) -> str:
        """The mode bf16 weights' matmuls run in: "bf16" only where it was asked for and the active
        kernel table has a bf16-activation matmul for this CPU; otherwise "f32", the exact path."""
        core = self._core
        return core.activations if core is not None else self._activations

    def close(self) -> None:
        """Release the KV cache and the file; later calls raise LmpackError."""
        with self._lock:
            self._core = None
        self._reader.close()

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load(path: str | os.PathLike, threads: int | None = None, max_context: int | None = None,
         activations: str = "f32") -> Model:
    """Map and validate a `.lmp` file and prepare it to run on `threads` CPU threads (default: all).

    activations="bf16" is an opt-in speed mode for bf16 weights: their matmuls round each
    activation row to bf16 (nearest even) and use the CPU's bf16 dot product (AVX512-BF16, the
    `avx512` kernels); other weight types, and kernel tables without that matmul, stay exact.
    The default "f32" keeps every activation exact (README, "bf16 activations", gives the error)."""
    return Model(path, threads=threads, max_context=max_context, activations=activations)
