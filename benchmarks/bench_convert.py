"""Conversion throughput and peak memory, against a plain copy of the same bytes.

    python benchmarks/models.py tinyllama /tmp/bench/tinyllama-bf16
    python benchmarks/bench_convert.py /tmp/bench/tinyllama-bf16 --dtype bf16 q8_0 --reps 5
    python benchmarks/bench_convert.py /tmp/bench/tinyllama-bf16 --dtype q8_0 --formats lmp gguf \
        --llama-cpp-convert path/to/llama.cpp/convert_hf_to_gguf.py

Each conversion runs in a fresh process (`python -m lmpack convert`) so its peak RSS is its own;
the source is read once beforehand so every run starts with the same warm page cache. `--formats`
picks the output containers (`.lmp`, and GGUF through the same command); `--llama-cpp-convert`
adds llama.cpp's own HF -> GGUF converter for the same dtypes (it is a script in llama.cpp's
repository, not a pip package, so it is timed only when given).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_measured(cmd: list[str]) -> tuple[float, float]:
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("--dtype", nargs="+", default=["bf16", "q8_0"])
    ap.add_argument("--reps", type=int, default=3, help="rounds; medians are reported")
    ap.add_argument("--out-dir", type=Path, default=None)
    ap.add_argument("--formats", nargs="+", default=["lmp"], choices=["lmp", "gguf"])
    ap.add_argument("--llama-cpp-convert", type=Path, default=None,
                    help="llama.cpp's convert_hf_to_gguf.py, to time it on the same source")
    a = ap.parse_args()
    src_bytes = sum(p.stat().st_size for p in a.src.glob("*.safetensors"))
    out_dir = a.out_dir or Path(tempfile.mkdtemp(prefix="lmpack-bench-"))
    for p in a.src.glob("*.safetensors"):  # warm the page cache
        with open(p, "rb") as f:
            while f.read(64 << 20):
                pass
    shards = [str(p) for p in a.src.glob("*.safetensors")]

    def copy(durable: bool) -> float:
        # lmpack fsyncs its output before renaming it into place, so also time a durable copy
        cmd = ["sh", "-c", 'cp "$@" "$0" && sync "$0"/*', str(out_dir), *shards] if durable else \
            ["cp", *shards, str(out_dir)]
        wall, _ = run_measured(cmd)
        for p in a.src.glob("*.safetensors"):
            (out_dir / p.name).unlink()
        return wall

    # The copies and conversions alternate, round by round, so a machine whose speed drifts
    # (shared hosts do) moves both sides of the ratio alike.
    runs = {f"{d} {fmt}": [sys.executable, "-m", "lmpack", "convert", str(a.src), "-o",
                           str(out_dir / f"out-{d}.{fmt}"), "--dtype", d] for d in a.dtype for fmt in a.formats}
    if a.llama_cpp_convert is not None:
        for d in a.dtype:
            runs[f"{d} gguf (llama.cpp)"] = [sys.executable, str(a.llama_cpp_convert), str(a.src), "--outfile",
                                             str(out_dir / f"llama-{d}.gguf"), "--outtype", d]
    times: dict[str, list[float]] = {"copy": [], "copy+sync": [], **{k: [] for k in runs}}
    peak: dict[str, float] = {}
    for _ in range(a.reps):
        times["copy"].append(copy(False))
        times["copy+sync"].append(copy(True))
        for key, cmd in runs.items():
            wall, rss = run_measured(cmd)
            times[key].append(wall)
            peak[key] = max(peak.get(key, 0.0), rss)
            Path(cmd[cmd.index("-o") + 1] if "-o" in cmd else cmd[cmd.index("--outfile") + 1]).unlink()
    med = {k: statistics.median(v) for k, v in times.items()}
    copy_t, sync_t = med["copy"], med["copy+sync"]
    print(f"source: {a.src} ({src_bytes / 1e6:.0f} MB), medians of {a.reps}: plain copy {copy_t:.2f} s "
          f"({src_bytes / copy_t / 1e6:.0f} MB/s), copy + sync {sync_t:.2f} s")
    print(f"{'output':<24} {'seconds':>8} {'MB/s':>7} {'x copy':>7} {'x copy+sync':>12} {'peak RSS MB':>12}")
    for key in runs:
        wall = med[key]
        print(f"{key:<24} {wall:8.2f} {src_bytes / wall / 1e6:7.0f} {wall / copy_t:7.2f} {wall / sync_t:12.2f} "
              f"{peak[key]:12.0f}", flush=True)
    if not a.out_dir:
        shutil.rmtree(out_dir)


if __name__ == "__main__":
    main()
