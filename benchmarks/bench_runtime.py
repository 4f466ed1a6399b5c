"""Prompt and generation speed of `.lmp` files, llama-bench style: pp (prompt tokens/s) and tg
(generated tokens/s), median of several runs, with the kernel path and thread count.

    python benchmarks/bench_runtime.py /tmp/bench/tl-q8.lmp /tmp/bench/tl-bf16.lmp --threads 2

The prompt is random token ids (as llama-bench uses), so the numbers do not depend on a tokenizer.
Generation times single-token forward steps after a short prompt, logits of the last token only.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

import lmpack
from lmpack import _core


def bench_prompt(m, n: int, reps: int) -> float:
    ids = np.random.default_rng(0).integers(3, m.config.vocab_size, n).astype(np.int32)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        m.forward(ids, 0)
        times.append(time.perf_counter() - t)
    return n / statistics.median(times)


def bench_generation(m, n: int, reps: int) -> float:
    rates = []
    for _ in range(reps):
        m.forward([1], 0)
        tok = 3
        t = time.perf_counter()
        for pos in range(1, n + 1):
            logits = m.forward([tok], pos)
            tok = int(np.argmax(logits[-1]))
        rates.append(n / (time.perf_counter() - t))
    return statistics.median(rates)


def weight_bytes(path: Path) -> int:
    from lmpack.formats.lmp import LmpReader

    with LmpReader(path) as r:
        # generation streams every matrix once per token, except the embedding (one row)
        return sum(t.nbytes for t in r.tensors if t.name != "model.embed_tokens.weight" or r.config.tie_embeddings)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--pp", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    print(f"kernels: {_core.kernel_path()}")
    print(f"{'file':<28} {'test':>6} {'tok/s':>9} {'GB/s':>7}")
    for f in a.files:
        m = lmpack.load(f, threads=a.threads, max_context=max(a.pp + [a.tg + 1]))
        for n in a.pp:
            print(f"{f.name:<28} {'pp' + str(n):>6} {bench_prompt(m, n, a.reps):9.1f}", flush=True)
        tps = bench_generation(m, a.tg, a.reps)
        gbs = tps * weight_bytes(f) / 1e9
        print(f"{f.name:<28} {'tg' + str(a.tg):>6} {tps:9.1f} {gbs:7.1f}   ({m.threads} threads)", flush=True)
        m.close()


if __name__ == "__main__":
    main()
