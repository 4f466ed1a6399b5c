"""`lmpack quantize` (bf16 .lmp -> Q8_0) against llama.cpp's quantizer (bf16 GGUF -> Q8_0) on the
same weights, same thread count, alternating runs, median wall time and peak RSS of each.

    python benchmarks/models.py tinyllama /tmp/bench/tinyllama-bf16
    python benchmarks/bench_quantize.py /tmp/bench/tinyllama-bf16 --threads 2

llama.cpp's side goes through llama-cpp-python (`pip install -e .[bench]`), which exposes
`llama_model_quantize`; both sides run in child processes so their peak RSS is their own.

    python benchmarks/bench_quantize.py --micro

measures only the C quantizer instead: one thread, each SIMD kernel table and source type, on
a (32768, 2048) array of normal values (bf16 bit patterns, f16, f32), best of --reps (the
scalar reference table, some 50x slower, is left out).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

LLAMA_QUANTIZE = """
import sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = 7  # LLAMA_FTYPE_MOSTLY_Q8_0
p.nthread = int(sys.argv[3])
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))
"""


def measured(cmd: list[str]) -> tuple[float, float]:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return time.perf_counter() - t, usage.ru_maxrss / 1024


def micro(reps: int) -> None:
    import numpy as np

    from lmpack import _core

    x32 = np.random.default_rng(0).standard_normal((32768, 2048), dtype=np.float32)
    sources = {"bf16": (x32.view(np.uint32) >> 16).astype(np.uint16),
               "f16": x32.astype(np.float16).view(np.uint16), "f32": x32}
    q = np.empty(x32.shape, np.int8)
    d = np.empty((x32.shape[0], x32.shape[1] // 32), np.uint16)
    before = _core.kernel_path()
    print(f"quantize_q8_0, 1 thread, {x32.shape[0]}x{x32.shape[1]} values, best of {reps}")
    print(f"{'table':<8}{'source':<8}{'GB/s in':>9}{'Gvalues/s':>11}")
    for path in _core.kernel_paths():
        if path == "scalar":
            continue
        _core.set_kernel_path(path)
        for name, src in sources.items():
            best = float("inf")
            for _ in range(reps):
                t = time.perf_counter()
                _core.quantize_q8_0(src, name, q, d, threads=1)
                best = min(best, time.perf_counter() - t)
            print(f"{path:<8}{name:<8}{src.nbytes / best / 1e9:9.2f}{src.size / best / 1e9:11.2f}")
    _core.set_kernel_path(before)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, nargs="?", help="an HF folder made by benchmarks/models.py")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--micro", action="store_true", help="time only the C quantizer, per thread and table")
    a = ap.parse_args()
    if a.micro:
        micro(max(a.reps, 5))
        return
    if a.src is None:
        ap.error("give a source folder, or --micro")
    work = Path(tempfile.mkdtemp(prefix="lmpack-quant-"))
    lmp, gguf = work / "in-bf16.lmp", work / "in-bf16.gguf"
    subprocess.run([sys.executable, "-m", "lmpack", "convert", str(a.src), "-o", str(lmp)], check=True,
                   stderr=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "lmpack", "convert", str(a.src), "-o", str(gguf), "--dtype", "bf16"],
                   check=True, stderr=subprocess.DEVNULL)
    runs = {"lmpack": [], "llama.cpp": []}
    for rep in range(a.reps):
        order = ["lmpack", "llama.cpp"] if rep % 2 == 0 else ["llama.cpp", "lmpack"]
        for who in order:
            if who == "lmpack":
                cmd = [sys.executable, "-m", "lmpack", "quantize", str(lmp), "-o", str(work / "out.lmp"),
                       "--threads", str(a.threads)]
            else:
                cmd = [sys.executable, "-c", LLAMA_QUANTIZE, str(gguf), str(work / "out.gguf"), str(a.threads)]
            runs[who].append(measured(cmd))
    print(f"bf16 -> Q8_0 of {a.src.name} ({lmp.stat().st_size / 1e6:.0f} MB), {a.threads} threads, median of {a.reps}")
    for who, r in runs.items():
        print(f"{who:<10} {statistics.median(t for t, _ in r):6.2f} s   peak RSS {max(m for _, m in r):6.0f} MB")
    lm = statistics.median(t for t, _ in runs["lmpack"])
    ll = statistics.median(t for t, _ in runs["llama.cpp"])
    print(f"lmpack is {ll / lm:.2f}x as fast")
    for f in work.iterdir():
        f.unlink()
    work.rmdir()


if __name__ == "__main__":
    main()
