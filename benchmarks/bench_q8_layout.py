"""Q8_0 on-disk layout: lmpack's planes against ggml-style interleaved 34-byte blocks, measured.

Drives benchmarks/q8_layout.c (compiled on first use with the system compiler, `-O3
-march=native`, into a cache folder, loaded with ctypes): the same int8 GEMV/GEMM kernels as
lmpack's AVX-512 VNNI and AVX2 paths, once over planes (int8 quants [rows, cols], then fp16
scales [rows, cols/32]) and once over interleaved blocks [fp16 d | 32 int8]. Both give
bit-identical outputs, checked before timing.

Cases: TinyLlama shapes, GEMV (1 token) and GEMM (16, 64 tokens), 1 and 2 threads. "stream"
sweeps copies of the matrix totalling about --stream-mib, well past the last-level cache like a
model's layers (--gemm-mib for the GEMM cases, which are compute-bound and long); "hot" repeats
one GEMV matrix, cache-resident where it fits (matrices up to --hot-max-mib).

The machine is shared and noisy, so the two layouts are timed alternately (which goes first flips
every repetition), each timing is about --target-ms long, and the table shows the median and
interquartile range of GB/s (weight bytes) and the median GOP/s, all on the slowest thread's CPU
time (wall time here mostly measures the scheduler's share of two cores among many processes),
and the median of the paired speed ratios interleaved/planes (>1: interleaved is faster) on CPU
time and on wall time.

    python benchmarks/bench_q8_layout.py [--isa avx512,avx2] [--threads 1,2] [--ntok 1,16,64]
                                         [--reps 9] [--json out.json]
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import math
import os
import statistics
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).with_name("q8_layout.c")
LAYOUTS = {"planes": 0, "interleaved": 1}
ISAS = {"avx512": 0, "avx2": 1}
SHAPES = "2048x2048,5632x2048,2048x5632,32000x2048"


def _lib() -> ctypes.CDLL:
    src = SRC.read_bytes()
    tag = hashlib.sha256(src).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"lmpack-q8layout-{tag}.so"
    if not out.exists():
        cc = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "cc").split()[0]
        tmp = out.with_suffix(f".{os.getpid()}.so")
        subprocess.run([cc, "-O3", "-march=native", "-std=c11", "-shared", "-fPIC", "-pthread",
                        str(SRC), "-o", str(tmp), "-lm"], check=True)
        os.replace(tmp, out)
    lib = ctypes.CDLL(str(out))
    lib.lq_make.restype = ctypes.c_void_p
    lib.lq_make.argtypes = [ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                            ctypes.c_uint64]
    lib.lq_free.argtypes = [ctypes.c_void_p]
    lib.lq_isa_supported.argtypes = [ctypes.c_int]
    lib.lq_run.restype = ctypes.c_double
    lib.lq_run.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                           ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_double)]
    lib.lq_check.restype = ctypes.c_double
    lib.lq_check.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    return lib


def straddle_fraction(rows: int, cols: int) -> float:
    """Share of interleaved blocks whose 32 quants cross a 64-byte line (tensor 64-byte aligned).

    Block k's quants start at 34*k + 2; those offsets mod 64 repeat every 32 blocks. Planes never
    straddle: a block's quants start at a multiple of 32 inside a 64-aligned plane."""
    n = rows * cols // 32
    def split(k: int) -> bool:
        return (34 * k + 2) % 64 + 32 > 64
    per_period = sum(split(k) for k in range(32))
    return (n // 32 * per_period + sum(split(k) for k in range(n % 32))) / n


def _q(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * p
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_case(lib, bench, isa, ntok, threads, copies, reps, target_ms):
    """Alternating timings of both layouts; returns {layout: [(wall, cpu)]} and passes per timing."""
    cpu = ctypes.c_double()

    def once(layout, passes):
        wall = lib.lq_run(bench, LAYOUTS[layout], ISAS[isa], ntok, threads, copies, passes,
                          ctypes.byref(cpu))
        if wall < 0:
            raise RuntimeError(f"lq_run failed ({isa}, {layout}, ntok={ntok}, threads={threads})")
        return wall, cpu.value

    # warm both layouts (page tables, clocks), then size a timing to about target_ms
    probe = min(once("planes", 1)[0], once("interleaved", 1)[0], once("planes", 1)[0])
    passes = max(1, round(target_ms / 1e3 / probe))
    times = {name: [] for name in LAYOUTS}
    for r in range(reps):
        order = ("planes", "interleaved") if r % 2 == 0 else ("interleaved", "planes")
        for layout in order:
            times[layout].append(once(layout, passes))
    return times, passes


def summarize(times, work_bytes, ops):
    """Medians and IQR on the slowest thread's CPU time (wall time on this shared machine mostly
    measures the scheduler's share); paired ratios on both clocks."""
    row = {}
    for layout, ts in times.items():
        cpus = [c for _, c in ts]
        med = statistics.median(cpus)
        row[layout] = {
            "ms": med * 1e3,
            "gbs": work_bytes / med / 1e9,
            "gops": ops / med / 1e9,
            "gbs_iqr": [work_bytes / _q(cpus, 0.75) / 1e9, work_bytes / _q(cpus, 0.25) / 1e9],
            "wall_gbs": work_bytes / statistics.median(w for w, _ in ts) / 1e9,
            "walls": [w for w, _ in ts],
            "cpus": cpus,
        }
    p, i = times["planes"], times["interleaved"]
    row["ratio_wall"] = statistics.median(a[0] / b[0] for a, b in zip(p, i))
    row["ratio_cpu"] = statistics.median(a[1] / b[1] for a, b in zip(p, i))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=SHAPES, help="rows x cols of the weight matrices")
    ap.add_argument("--isa", default="avx512,avx2", help="kernel families to time")
    ap.add_argument("--threads", default="1,2", help="thread counts")
    ap.add_argument("--ntok", default="1,16,64", help="tokens per product (1 = GEMV)")
    ap.add_argument("--reps", type=int, default=9, help="timed repetitions per layout and case")
    ap.add_argument("--target-ms", type=float, default=40.0, help="length of one timing")
    ap.add_argument("--stream-mib", type=int, default=320, help="working set of the stream mode")
    ap.add_argument("--gemm-mib", type=int, default=128,
                    help="working set of GEMM cases (compute-bound, so smaller keeps them short)")
    ap.add_argument("--hot-max-mib", type=int, default=16,
                    help="GEMV hot mode only for matrices up to this size")
    ap.add_argument("--huge", action="store_true", help="transparent huge pages (default 4 KiB)")
    ap.add_argument("--json", type=Path, help="also write every timing here")
    args = ap.parse_args()

    lib = _lib()
    isas = [s for s in args.isa.split(",") if s]
    for isa in isas:
        if isa not in ISAS:
            raise SystemExit(f"unknown --isa {isa!r}; choose from {', '.join(ISAS)}")
        if not lib.lq_isa_supported(ISAS[isa]):
            raise SystemExit(f"this CPU/compiler has no {isa} kernels")
    ntoks = [int(t) for t in args.ntok.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} cpus={os.cpu_count()} reps={args.reps} "
          f"target={args.target_ms:g}ms stream={args.stream_mib}MiB pages={'huge' if args.huge else '4K'}")
    print("# interleaved blocks whose quants straddle a 64-byte line: "
          + ", ".join(f"{s}: {straddle_fraction(*map(int, s.split('x'))):.0%}"
                      for s in args.shapes.split(",")) + " (planes: 0%)")
    hdr = (f"{'isa':6} {'thr':>3} {'ntok':>4} {'mode':6} {'shape':10} {'passes':>6} | "
           f"{'planes GB/s':>11} {'(IQR)':13} {'GOP/s':>6} | {'inter GB/s':>10} {'(IQR)':13} "
           f"{'GOP/s':>6} | {'I/P cpu':>7} {'I/P wall':>8}")
    print(hdr)
    results = []
    for shape in args.shapes.split(","):
        rows, cols = map(int, shape.split("x"))
        mat = rows * cols * 34 // 32  # bytes of weights either way (padding aside)
        copies = max(1, math.ceil(args.stream_mib * 2**20 / mat))
        bench = lib.lq_make(rows, cols, copies, max(ntoks + [3]), int(args.huge), 12345)
        if not bench:
            raise SystemExit(f"cannot build {shape} x{copies} (cols % 64, rows % 4, memory)")
        try:
            for isa in isas:
                err = lib.lq_check(bench, ISAS[isa], 3)
                if err == -2:
                    raise SystemExit(f"{isa} {shape}: planes and interleaved outputs differ")
                if not 0 <= err < 1e-5:
                    raise SystemExit(f"{isa} {shape}: error {err:g} against the f64 reference")
            for isa in isas:
                for thr in threads:
                    for ntok in ntoks:
                        gemm_copies = max(1, math.ceil(args.gemm_mib * 2**20 / mat))
                        modes = [("stream", copies if ntok == 1 else min(copies, gemm_copies))]
                        if ntok == 1 and mat <= args.hot_max_mib * 2**20:
                            modes.append(("hot", 1))
                        for mode, ncop in modes:
                            times, passes = run_case(lib, bench, isa, ntok, thr, ncop, args.reps,
                                                     args.target_ms)
                            work = mat * ncop * passes
                            ops = 2.0 * rows * cols * ntok * ncop * passes
                            row = summarize(times, work, ops)
                            p, i = row["planes"], row["interleaved"]
                            print(f"{isa:6} {thr:3d} {ntok:4d} {mode:6} {shape:10} {passes:6d} | "
                                  f"{p['gbs']:11.1f} ({p['gbs_iqr'][0]:5.1f}-{p['gbs_iqr'][1]:5.1f}) "
                                  f"{p['gops']:6.0f} | {i['gbs']:10.1f} "
                                  f"({i['gbs_iqr'][0]:5.1f}-{i['gbs_iqr'][1]:5.1f}) {i['gops']:6.0f} | "
                                  f"{row['ratio_cpu']:7.3f} {row['ratio_wall']:8.3f}", flush=True)
                            results.append({"isa": isa, "threads": thr, "ntok": ntok, "mode": mode,
                                            "shape": shape, "copies": ncop, "passes": passes,
                                            "weight_bytes": work, "ops": ops, **row})
        finally:
            lib.lq_free(bench)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
