"""Micro-benchmark of the matmul kernels: GFLOP/s and GB/s per dtype and kernel path, one thread.

Shapes are TinyLlama's (2048x2048 attention, 5632x2048 FFN). GEMV (ntok=1) is the generation
step and should be bound by memory bandwidth (GB/s of weights streamed); GEMM (ntok=64) is the
prompt step and should be bound by arithmetic (GFLOP/s). Times are the calling thread's CPU time
(best of --repeat), so a busy machine inflates them less than wall time would.

    python benchmarks/bench_kernels.py [--paths scalar,avx2,avx512] [--ntok 64] [--repeat 5]

--gemv-rows instead streams one large matrix (--mib, far beyond the L3) through the generation
GEMV on --threads threads, for each row length given, and prints the wall-clock GB/s: the number
the GEMV's prefetch profiles (csrc/tiling.h gemv_ahead) were tuned on. --prefetch names the
profiles to compare (default: the one this CPU's vendor gets); they take turns pass by pass, so a
neighbour's load on a shared machine hits all of them alike, and the best pass of each is kept.

    python benchmarks/bench_kernels.py --gemv-rows 768,2048,5632 --dtypes bf16,q8_0 --threads 2 \
        --prefetch intel,amd,none --repeat 15
"""
import argparse
import threading
import time

import numpy as np

from lmpack import _core

ESIZE = {"f32": 4, "f16": 2, "bf16": 2, "bf16_act": 2, "q8_0": 1 + 2 / 32}
# bf16_act: bf16 weights against activations rounded to bf16 (the opt-in activations="bf16" mode)


def make(dtype, rows, cols, rng):
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    if dtype == "f32":
        return w, None
    if dtype == "f16":
        return w.astype(np.float16), None
    if dtype in ("bf16", "bf16_act"):
        return (w.view(np.uint32) >> 16).astype(np.uint16), None
    q = np.empty(rows * cols, np.int8)
    d = np.empty(rows * cols // 32, np.uint16)
    _core.quantize_q8_0(w, "f32", q, d)
    return q, d


def time_matmul(dtype, w, ws, rows, cols, ntok, repeat, rng):
    x = rng.standard_normal((ntok, cols)).astype(np.float32)
    y = np.empty((ntok, rows), np.float32)
    if dtype == "q8_0":
        xq = np.empty(ntok * cols, np.int8)
        xd = np.empty(ntok * cols // 32, np.float32)
        _core._quantize_act_q8(x, xq, xd)
        args = (dtype, w, ws, rows, cols, xq, xd, ntok, y, 0, rows)
    elif dtype == "bf16_act":
        args = (dtype, w, None, rows, cols, (x.view(np.uint32) >> 16).astype(np.uint16), None, ntok, y, 0, rows)
    else:
        args = (dtype, w, None, rows, cols, x, None, ntok, y, 0, rows)
    _core._matmul(*args)  # warm up: page in the weights
    best = float("inf")
    for _ in range(repeat):
        t0 = time.thread_time()
        _core._matmul(*args)
        best = min(best, time.thread_time() - t0)
    return best


def gemv_bandwidth(dtype, cols, mib, threads, repeat, rng, profiles):
    """Wall-clock GB/s of one-token matmuls over a mib-MiB matrix, rows split across threads: the
    best of `repeat` passes per prefetch profile, the profiles alternating pass by pass."""
    rows = int(mib * 2**20 / (ESIZE[dtype] * cols))
    w, ws = make(dtype, rows, cols, rng)
    x = rng.standard_normal(cols).astype(np.float32)
    y = np.empty(rows, np.float32)
    if dtype == "q8_0":
        xq, xd = np.empty(cols, np.int8), np.empty(cols // 32, np.float32)
        _core._quantize_act_q8(x, xq, xd)
        x, xs = xq, xd
    elif dtype == "bf16_act":
        x, xs = (x.view(np.uint32) >> 16).astype(np.uint16), None
    else:
        xs = None
    bounds = [rows * i // threads for i in range(threads + 1)]

    def part(i):
        _core._matmul(dtype, w, ws, rows, cols, x, xs, 1, y, bounds[i], bounds[i + 1])

    best = {p: float("inf") for p in profiles}
    before = _core._gemv_prefetch()
    try:
        for rep in range(repeat + 1):  # the first round pages the matrix in
            for p in profiles:
                _core._gemv_prefetch(p)
                workers = [threading.Thread(target=part, args=(i,)) for i in range(threads)]
                t0 = time.perf_counter()
                for t in workers:
                    t.start()
                for t in workers:
                    t.join()
                if rep:
                    best[p] = min(best[p], time.perf_counter() - t0)
    finally:
        _core._gemv_prefetch(before)
    nbytes = w.nbytes + (ws.nbytes if ws is not None else 0)
    return {p: nbytes / t / 1e9 for p, t in best.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", default=",".join(_core.kernel_paths()), help="kernel paths to time")
    ap.add_argument("--dtypes", default="f32,f16,bf16,q8_0", help="weight dtypes to time (bf16_act: bf16 weights, "
                    "activations rounded to bf16)")
    ap.add_argument("--ntok", type=int, default=64, help="tokens of the GEMM case")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per case (best is kept)")
    ap.add_argument("--shapes", default="2048x2048,5632x2048", help="rows x cols of the weights")
    ap.add_argument("--gemv-rows", help="comma-separated row lengths: time the GEMV's streaming instead")
    ap.add_argument("--threads", type=int, default=2, help="threads of the --gemv-rows runs")
    ap.add_argument("--mib", type=float, default=200, help="matrix size of the --gemv-rows runs")
    ap.add_argument("--prefetch", default=_core._gemv_prefetch(),
                    help="GEMV prefetch profiles of the --gemv-rows runs, compared pass by pass (intel, amd, amd-8rows, none)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    before = _core.kernel_path()
    before_pf = _core._gemv_prefetch()
    if args.gemv_rows:
        profiles = args.prefetch.split(",")
        for p in profiles:
            _core._gemv_prefetch(p)  # ValueError now rather than after the first matrix
        _core._gemv_prefetch(before_pf)
        print(f"{'path':7} {'dtype':5} {'cols':>6} {'threads':>7} {'prefetch':>10} {'GB/s':>6}")
        try:
            for path in args.paths.split(","):
                _core.set_kernel_path(path)
                for dtype in args.dtypes.split(","):
                    for cols in map(int, args.gemv_rows.split(",")):
                        gbs = gemv_bandwidth(dtype, cols, args.mib, args.threads, args.repeat, rng, profiles)
                        for p in profiles:
                            print(f"{path:7} {dtype:5} {cols:6d} {args.threads:7d} {p:>10} {gbs[p]:6.1f}", flush=True)
        finally:
            _core.set_kernel_path(before)
        return
    print(f"{'path':7} {'dtype':5} {'shape':10} {'ntok':>4} {'ms':>9} {'GFLOP/s':>8} {'GB/s':>7}")
    try:
        for shape in args.shapes.split(","):
            rows, cols = map(int, shape.split("x"))
            for dtype in args.dtypes.split(","):
                w, ws = make(dtype, rows, cols, rng)
                for path in args.paths.split(","):
                    _core.set_kernel_path(path)
                    if dtype == "bf16_act" and not _core._has_bf16_act():
                        continue  # this table (or CPU) has no bf16-activation matmul
                    for ntok in (1, args.ntok):
                        # The scalar path is slow; keep its GEMM short.
                        rep = 1 if path == "scalar" and ntok > 1 else args.repeat
                        t = time_matmul(dtype, w, ws, rows, cols, ntok, rep, rng)
                        flops = 2.0 * rows * cols * ntok
                        nbytes = rows * cols * ESIZE[dtype] + ntok * cols * 4
                        print(f"{path:7} {dtype:5} {shape:10} {ntok:4d} {t * 1e3:9.3f} "
                              f"{flops / t / 1e9:8.1f} {nbytes / t / 1e9:7.1f}", flush=True)
    finally:
        _core.set_kernel_path(before)


if __name__ == "__main__":
    main()
