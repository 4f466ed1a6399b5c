"""`lmpack quantize` (bf16 .lmp -> Q8_0) against llama.cpp's quantizer (bf16 GGUF -> Q8_0) on the
same weights, same thread count, alternating runs, median wall time and peak RSS of each.

    python benchmarks/models.py tinyllama /tmp/bench/tinyllama-bf16
    python benchmarks/bench_quantize.py /tmp/bench/tinyllama-bf16 --threads 2

llama.cpp's side goes through llama-cpp-python (`pip install -e .[bench]`), which exposes
`llama_model_quantize`; both sides run in child processes so their peak RSS is their own.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="an HF folder made by benchmarks/models.py")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lmpack-quant-"))
    lmp, gguf = work / "in-bf16.lmp", work / "in-bf16.gguf"
    subprocess.run([sys.executable, "-m", "lmpack", "convert", str(a.src), "-o", str(lmp)], check=True,
                   stderr=subprocess.DEVNULL)
    subprocess.run([sys.executable, str(HERE / "gguf_export.py"), str(a.src), str(gguf), "--type", "bf16"],
                   check=True, stdout=subprocess.DEVNULL)
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
