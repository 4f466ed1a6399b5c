"""Micro-benchmark of the matmul kernels: GFLOP/s and GB/s per dtype and kernel path, one thread.

Shapes are TinyLlama's (2048x2048 attention, 5632x2048 FFN). GEMV (ntok=1) is the generation
step and should be bound by memory bandwidth (GB/s of weights streamed); GEMM (ntok=64) is the
prompt step and should be bound by arithmetic (GFLOP/s). Times are the calling thread's CPU time
(best of --repeat), so a busy machine inflates them less than wall time would.

    python benchmarks/bench_kernels.py [--paths scalar,avx2,avx512] [--ntok 64] [--repeat 5]
"""
import argparse
import time

import numpy as np

from lmpack import _core

ESIZE = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 1 + 2 / 32}


def make(dtype, rows, cols, rng):
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    if dtype == "f32":
        return w, None
    if dtype == "f16":
        return w.astype(np.float16), None
    if dtype == "bf16":
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
    else:
        args = (dtype, w, None, rows, cols, x, None, ntok, y, 0, rows)
    _core._matmul(*args)  # warm up: page in the weights
    best = float("inf")
    for _ in range(repeat):
        t0 = time.thread_time()
        _core._matmul(*args)
        best = min(best, time.thread_time() - t0)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paths", default=",".join(_core.kernel_paths()), help="kernel paths to time")
    ap.add_argument("--dtypes", default="f32,f16,bf16,q8_0", help="weight dtypes to time")
    ap.add_argument("--ntok", type=int, default=64, help="tokens of the GEMM case")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per case (best is kept)")
    ap.add_argument("--shapes", default="2048x2048,5632x2048", help="rows x cols of the weights")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    before = _core.kernel_path()
    print(f"{'path':7} {'dtype':5} {'shape':10} {'ntok':>4} {'ms':>9} {'GFLOP/s':>8} {'GB/s':>7}")
    try:
        for shape in args.shapes.split(","):
            rows, cols = map(int, shape.split("x"))
            for dtype in args.dtypes.split(","):
                w, ws = make(dtype, rows, cols, rng)
                for path in args.paths.split(","):
                    _core.set_kernel_path(path)
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
