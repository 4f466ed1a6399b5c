"""Memory read bandwidth at T threads (the roofline's bandwidth bound), via benchmarks/readbw.c,
and one core's compute ceilings (benchmarks/peaks.c).

The C file is compiled on first use with the system compiler and `-O3 -march=native` into a cache
folder and loaded with ctypes. The buffer (default 1 GiB, about ten times this machine's L3) is
read once per repetition; the median GB/s is reported, on 4 KiB pages and on transparent huge
pages, since the page size moves the number.

    python benchmarks/readbw.py --threads 2 --mib 1024 --reps 5
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import statistics
import subprocess
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(name: str) -> ctypes.CDLL:
    """benchmarks/<name>.c compiled with -O3 -march=native into the temp folder (cached by content)."""
    src_path = HERE / f"{name}.c"
    tag = hashlib.sha256(src_path.read_bytes()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"lmpack-{name}-{tag}.so"
    if not out.exists():
        cc = os.environ.get("CC") or (sysconfig.get_config_var("CC") or "cc").split()[0]
        tmp = out.with_suffix(f".{os.getpid()}.so")
        subprocess.run([cc, "-O3", "-march=native", "-shared", "-fPIC", "-pthread", str(src_path), "-o", str(tmp)],
                       check=True)
        os.replace(tmp, out)
    return ctypes.CDLL(str(out))


def _lib() -> ctypes.CDLL:
    lib = build("readbw")
    lib.lmpb_alloc.restype = ctypes.c_void_p
    lib.lmpb_alloc.argtypes = [ctypes.c_size_t, ctypes.c_int]
    lib.lmpb_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.lmpb_read.restype = ctypes.c_double
    lib.lmpb_read.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return lib


def read_bandwidth(threads: int = 2, mib: int = 1024, reps: int = 5, huge: bool = False) -> float:
    """Median GB/s (1e9 bytes/s) of one read pass over a fresh buffer of `mib` MiB."""
    lib = _lib()
    n = mib << 20
    buf = lib.lmpb_alloc(n, int(huge))
    if not buf:
        raise MemoryError(f"cannot map {mib} MiB")
    try:
        lib.lmpb_read(buf, n, threads)  # warm: page tables, frequency
        secs = [lib.lmpb_read(buf, n, threads) for _ in range(reps)]
    finally:
        lib.lmpb_free(buf, n)
    if min(secs) <= 0:
        raise RuntimeError("could not start the reader threads")
    return n / statistics.median(secs) / 1e9


def compute_peaks(n: int = 20_000_000, reps: int = 3) -> dict[str, float]:
    """One core's ceilings in GOP/s of thread CPU time (benchmarks/peaks.c), best of `reps`: f32 FMA
    (AVX2 and AVX-512), int8 VNNI, bf16 dot products (VDPBF16PS), AMX int8 and bf16. A ceiling is
    absent when the CPU, the compiler or the OS does not offer its instructions."""
    runs = [_peaks_once(n) for _ in range(reps)]
    return {k: max(r[k] for r in runs) for k in runs[0]}


def _peaks_once(n: int) -> dict[str, float]:
    lib = build("peaks")
    for f in ("lmpb_peak_fma256", "lmpb_peak_fma", "lmpb_peak_vnni", "lmpb_peak_bf16dp"):
        getattr(lib, f).restype = ctypes.c_double
        getattr(lib, f).argtypes = [ctypes.c_long]
    lib.lmpb_peak_amx.restype = ctypes.c_double
    lib.lmpb_peak_amx.argtypes = [ctypes.c_long, ctypes.c_int]
    found = {"avx2_fma_f32": lib.lmpb_peak_fma256(n), "avx512_fma_f32": lib.lmpb_peak_fma(n),
             "avx512_vnni_int8": lib.lmpb_peak_vnni(n // 2), "avx512_bf16_dot": lib.lmpb_peak_bf16dp(n // 2),
             "amx_int8": lib.lmpb_peak_amx(n // 20, 0), "amx_bf16": lib.lmpb_peak_amx(n // 20, 1)}
    return {k: v / 1e9 for k, v in found.items() if v > 0}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    for huge in (False, True):
        gbs = read_bandwidth(a.threads, a.mib, a.reps, huge)
        print(f"read {a.mib} MiB x{a.threads} threads, {'huge pages' if huge else '4 KiB pages'}: {gbs:.1f} GB/s")
    for k, v in compute_peaks().items():
        print(f"one core, {k}: {v:.0f} GOP/s")
