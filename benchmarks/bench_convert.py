"""Conversion throughput and peak memory, against a plain copy of the same bytes.

    python benchmarks/models.py tinyllama /tmp/bench/tinyllama-bf16
    python benchmarks/bench_convert.py /tmp/bench/tinyllama-bf16 --dtype bf16 q8_0 --reps 5

Each conversion runs in a fresh process (`python -m lmpack convert`) so its peak RSS is its own;
the source is read once beforehand so every run starts with the same warm page cache.
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
    times: dict[str, list[float]] = {"copy": [], "copy+sync": [], **{d: [] for d in a.dtype}}
    peak: dict[str, float] = {}
    for _ in range(a.reps):
        times["copy"].append(copy(False))
        times["copy+sync"].append(copy(True))
        for dtype in a.dtype:
            out = out_dir / f"out-{dtype}.lmp"
            wall, rss = run_measured([sys.executable, "-m", "lmpack", "convert", str(a.src), "-o", str(out),
                                      "--dtype", dtype])
            times[dtype].append(wall)
            peak[dtype] = max(peak.get(dtype, 0.0), rss)
            out.unlink()
    med = {k: statistics.median(v) for k, v in times.items()}
    copy_t, sync_t = med["copy"], med["copy+sync"]
    print(f"source: {a.src} ({src_bytes / 1e6:.0f} MB), medians of {a.reps}: plain copy {copy_t:.2f} s "
          f"({src_bytes / copy_t / 1e6:.0f} MB/s), copy + sync {sync_t:.2f} s")
    print(f"{'dtype':<6} {'seconds':>8} {'MB/s':>7} {'x copy':>7} {'x copy+sync':>12} {'peak RSS MB':>12}")
    for dtype in a.dtype:
        wall = med[dtype]
        print(f"{dtype:<6} {wall:8.2f} {src_bytes / wall / 1e6:7.0f} {wall / copy_t:7.2f} {wall / sync_t:12.2f} "
              f"{peak[dtype]:12.0f}", flush=True)
    if not a.out_dir:
        shutil.rmtree(out_dir)


if __name__ == "__main__":
    main()
