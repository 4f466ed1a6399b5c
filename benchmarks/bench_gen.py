"""Generation speed of kernel tables and GEMV prefetch profiles, compared step by step in one
process: the way to tell a few percent apart on a machine others share.

Run by run comparisons (bench_runtime.py, bench_llamacpp.py) time whole generations one after the
other, so a neighbour's burst lands on one variant and not the other; on a shared 2-core machine
that noise (tens of percent) swamps the differences between GEMV variants (a few percent). Here
every variant (a kernel table x a prefetch profile) generates the same short run of single-token
steps, the variants take turns every round, in rotating order, and every step is timed on its own:
a burst then spreads over all variants, and the fast quantiles of the step times (the steps nobody
disturbed) compare what each variant can do. A step recomputes position p from the same token, so
every variant does identical work (the same attention lengths, the same K/V rows rewritten).

Reported per file and variant: tokens/s at the fastest step, the 10th and 25th percentile and the
median step time, and the GB/s of the 10th percentile (every matrix's bytes but the embedding
table's, which one step reads a row of), beside the read bandwidth at the same thread count
(benchmarks/readbw.py, 4 KiB pages, before and after) and the load average.

    python benchmarks/bench_gen.py /work/bench-models/tl-bf16.lmp --threads 2 --tables avx512,avx2 \\
        --prefetch amd,none --rounds 20
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS threads would spin beside ours
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the sibling scripts, and lmpack when not installed

import readbw  # noqa: E402
from bench_runtime import weight_bytes  # noqa: E402

import lmpack  # noqa: E402
from lmpack import _core  # noqa: E402


def quantile(v: list[float], f: float) -> float:
    s = sorted(v)
    return s[int(f * (len(s) - 1))]


def step_times(m, variants: list[tuple[str, str]], steps: int, rounds: int) -> dict:
    """Seconds of each single-token step, per variant, the variants taking turns each round."""
    times = {v: [] for v in variants}
    m.forward(np.array([1], np.int32), 0)
    for r in range(rounds):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            _core.set_kernel_path(v[0])
            _core._gemv_prefetch(v[1])
            for pos in range(1, steps + 1):
                tok = np.array([3 + pos], np.int32)
                t = time.perf_counter()
                m.forward(tok, pos)
                times[v].append(time.perf_counter() - t)
    return times


def bandwidth(a) -> str:
    if a.bw_mib <= 0:
        return "-"
    return f"{readbw.read_bandwidth(a.threads, a.bw_mib, 3):.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tables", default=_core.kernel_path(), help="comma-separated kernel tables")
    ap.add_argument("--prefetch", default=_core._gemv_prefetch(),
                    help="comma-separated GEMV prefetch profiles (intel, amd, amd-8rows, none)")
    ap.add_argument("--steps", type=int, default=16, help="single-token steps per variant per round")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--bw-mib", type=int, default=512, help="read-bandwidth buffer; 0 leaves it out")
    a = ap.parse_args()
    if a.steps < 1 or a.rounds < 1 or a.threads < 1:
        ap.error("--steps, --rounds and --threads must be at least 1")
    variants = [(t, p) for t in a.tables.split(",") for p in a.prefetch.split(",")]
    table0, prefetch0 = _core.kernel_path(), _core._gemv_prefetch()
    try:
        for t, p in variants:  # refuse unknown names before any model is loaded
            _core.set_kernel_path(t)
            _core._gemv_prefetch(p)
    except ValueError as e:
        sys.exit(f"error: {e}")
    finally:
        _core.set_kernel_path(table0)
        _core._gemv_prefetch(prefetch0)
    print(f"threads {a.threads}, {a.steps} steps x {a.rounds} rounds per variant; "
          f"load {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'file':<16} {'table':<7} {'prefetch':<10} {'best':>7} {'p10':>7} {'p25':>7} {'median':>7}"
          f"  {'GB/s@p10':>8}  readbw before/after")
    try:
        for f in a.files:
            nbytes = weight_bytes(f)
            m = lmpack.load(f, threads=a.threads, max_context=a.steps + 1)
            before = bandwidth(a)
            times = step_times(m, variants, a.steps, a.rounds)
            after = bandwidth(a)
            m.close()
            for (t, p), v in times.items():
                p10 = quantile(v, 0.1)
                print(f"{f.name:<16} {t:<7} {p:<10} {1 / min(v):7.2f} {1 / p10:7.2f} {1 / quantile(v, 0.25):7.2f} "
                      f"{1 / statistics.median(v):7.2f}  {nbytes / p10 / 1e9:8.1f}  {before} / {after}", flush=True)
    finally:
        _core.set_kernel_path(table0)
        _core._gemv_prefetch(prefetch0)
    print(f"load {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
