"""CRC-32C (csrc/crc32c.c) against references that share no code with it, on every path.

The module's `_core.crc32c` is checked against a bitwise Python CRC for short inputs and, for
long ones, against a numpy table CRC run over many chunks at once whose chunk CRCs are joined by
polynomial arithmetic written here (crc(A||B) = crc(A) * x^(8|B|) mod P xor crc(B)). A small C
harness includes crc32c.c itself so it can call the table, single-chain and three-lane paths
directly (Python only reaches the one the CPU picks); it runs natively and, for the ARMv8
CRC + PMULL code, cross-compiled under qemu-aarch64 like tests/test_cross_isa.py.
"""
from __future__ import annotations

import platform
import random
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from lmpack import _core

ROOT = Path(__file__).resolve().parents[1]
POLY = 0x82F63B78  # reflected Castagnoli polynomial
LANE_LONG, LANE_SHORT = 8192, 256  # csrc/crc32c.c; the C harness reads its macros directly
# lengths where csrc/crc32c.c changes strategy: lanes start at one short block plus alignment
# slack, long blocks at 3 * LANE_LONG, and mixes of long blocks, short blocks and a tail
BOUNDARIES = [3 * LANE_SHORT, 3 * LANE_SHORT + 8, 6 * LANE_SHORT, 3 * LANE_LONG,
              3 * LANE_LONG + 3 * LANE_SHORT, 6 * LANE_LONG + 9 * LANE_SHORT]


def crc_bitwise(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (POLY if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


TABLE = [crc_bitwise(bytes([i]), 0xFFFFFFFF) ^ 0xFFFFFFFF for i in range(256)]


def crc_table(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def mulmod(a: int, b: int) -> int:
    """a * b mod P for bit-reflected 32-bit polynomials (bit 31 is x^0)."""
    r = 0
    for i in range(32):
        if b & (0x80000000 >> i):
            r ^= a
        a = (a >> 1) ^ (POLY if a & 1 else 0)  # a *= x
    return r


def x_pow_8n(n: int) -> int:
    """x^(8n) mod P, by square-and-multiply."""
    result, base = 0x80000000, 0x80000000
    for _ in range(8):
        base = (base >> 1) ^ (POLY if base & 1 else 0)
    while n:
        if n & 1:
            result = mulmod(result, base)
        base = mulmod(base, base)
        n >>= 1
    return result


def crc_numpy(data, crc: int = 0, chunk: int = 1024) -> int:
    """Table CRC over all chunks at once (one numpy step per byte column), chunks joined here."""
    a = np.frombuffer(data, np.uint8)
    m = len(a) // chunk
    if m:
        table = np.array(TABLE, np.uint32)
        cols = a[:m * chunk].reshape(m, chunk).T.copy()
        state = np.full(m, 0xFFFFFFFF, np.uint32)
        for col in cols:
            state = table[(state ^ col) & 0xFF] ^ (state >> 8)
        k = x_pow_8n(chunk)
        for c in (state ^ np.uint32(0xFFFFFFFF)).tolist():
            crc = mulmod(crc, k) ^ c
    return crc_table(a[m * chunk:].tobytes(), crc)


def test_references_agree():
    assert crc_bitwise(b"123456789") == 0xE3069283
    blob = random.Random(1).randbytes(5000)
    assert crc_table(blob) == crc_bitwise(blob)
    assert crc_numpy(blob, 0x1234, chunk=64) == crc_bitwise(blob, 0x1234)
    assert mulmod(crc_table(blob[:3000]), x_pow_8n(2000)) ^ crc_table(blob[3000:]) == crc_table(blob)


def test_check_value_empty_and_bad_seed():
    assert _core.crc32c(b"123456789") == 0xE3069283
    assert _core.crc32c(b"") == 0
    assert _core.crc32c(b"", 0xDEADBEEF) == 0xDEADBEEF
    with pytest.raises(ValueError, match="32 bits"):
        _core.crc32c(b"x", 1 << 32)


def test_short_lengths_every_offset():
    buf = random.Random(2).randbytes(128)
    mv = memoryview(buf)
    for off in range(8):  # bytes data is 8-byte aligned, so off walks every misalignment
        for n in range(101):
            chunk = mv[off:off + n]
            assert _core.crc32c(chunk) == crc_bitwise(chunk), (off, n)
            assert _core.crc32c(chunk, 0x9ABCDEF0) == crc_bitwise(chunk, 0x9ABCDEF0), (off, n)


def test_lengths_around_lane_boundaries():
    rng = random.Random(3)
    buf = rng.randbytes(max(BOUNDARIES) + 64)
    mv = memoryview(buf)
    for base in BOUNDARIES:
        for d in (-9, -8, -1, 0, 1, 7, 8, 15):
            for off in (0, 1, 5):
                chunk = mv[off:off + base + d]
                seed = rng.getrandbits(32)
                assert _core.crc32c(chunk, seed) == crc_numpy(chunk, seed, chunk=256), (base, d, off)


def test_several_megabytes_unaligned():
    buf = np.random.default_rng(4).integers(0, 256, (6 << 20) + 100, dtype=np.uint8).tobytes()
    for off, n in ((0, 6 << 20), (3, (6 << 20) + 77)):
        chunk = memoryview(buf)[off:off + n]
        assert _core.crc32c(chunk) == crc_numpy(chunk), (off, n)


def test_chaining_splits_anywhere():
    rng = random.Random(5)
    buf = rng.randbytes(1 << 20)
    whole = _core.crc32c(buf)
    splits = [1, 7, 3 * LANE_SHORT + 3, 3 * LANE_LONG - 1, 3 * LANE_LONG + 5, len(buf) - 9]
    splits += [rng.randrange(len(buf)) for _ in range(20)]
    for s in splits:
        assert _core.crc32c(buf[s:], _core.crc32c(buf[:s])) == whole, s
    crc, pos = 0, 0
    while pos < len(buf):  # many uneven pieces, each continuing the last
        step = rng.choice([1, 13, 700, 5000, 30000, 100000])
        crc = _core.crc32c(buf[pos:pos + step], crc)
        pos += step
    assert crc == whole


def test_buffer_kinds_and_threads():
    arr = np.random.default_rng(6).integers(0, 256, 3 << 20, dtype=np.uint8)
    ref = _core.crc32c(arr.tobytes())
    assert _core.crc32c(arr) == ref and _core.crc32c(bytearray(arr.tobytes())) == ref
    assert _core.crc32c(arr.view(np.float32)) == ref
    results = []  # large buffers run without the GIL: concurrent calls must not interfere
    threads = [threading.Thread(target=lambda: results.append(_core.crc32c(arr))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [ref] * 4


HARNESS = r"""
#define _POSIX_C_SOURCE 200809L
#include "crc32c.c"
#include <stdio.h>
#include <stdlib.h>

static int checks, failed;
#define CHECK(cond, ...) do { checks++; if (!(cond)) { failed++; printf("FAIL " __VA_ARGS__); \
    printf("\n"); } } while (0)

static uint32_t bitwise(uint32_t c, const uint8_t *p, size_t n) {  /* raw register, no ~ */
    while (n--) { c ^= *p++; for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u))); }
    return c;
}
static uint32_t xpow(unsigned k) {  /* x^k mod P, reflected */
    uint32_t c = 0x80000000u;
    while (k--) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
    return c;
}
static uint64_t rng = 0x9E3779B97F4A7C15u;
static uint64_t next(void) {
    uint64_t z = (rng += 0x9E3779B97F4A7C15u);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

int main(void) {
    CHECK(K_LONG_1 == xpow(8 * LANE_LONG - 33) && K_LONG_2 == xpow(16 * LANE_LONG - 33), "long constants");
    CHECK(K_SHORT_1 == xpow(8 * LANE_SHORT - 33) && K_SHORT_2 == xpow(16 * LANE_SHORT - 33), "short constants");
    CHECK(lmp_crc32c(0, "123456789", 9) == 0xE3069283u, "check value");
    int hw = 0, mul = 0;
#ifdef LMP_CRC32C_HW
    hw = crc32c_hw_available();
    mul = hw && crc32c_mul_available();
#endif
    printf("paths: table%s%s\n", hw ? " hw" : "", mul ? " lanes" : "");

    size_t big = (5u << 20) + 13, cap = big + 16;
    uint8_t *buf = malloc(cap);
    if (!buf) return 2;
    for (size_t i = 0; i < cap; i++) buf[i] = (uint8_t)next();
    size_t lens[400], nl = 0;
    for (size_t n = 0; n <= 100; n++) lens[nl++] = n;
    size_t bases[] = {3 * LANE_SHORT, 3 * LANE_SHORT + 8, 6 * LANE_SHORT, 3 * LANE_LONG,
                      3 * LANE_LONG + 3 * LANE_SHORT, 6 * LANE_LONG + 9 * LANE_SHORT};
    for (size_t b = 0; b < sizeof bases / sizeof bases[0]; b++)
        for (size_t n = bases[b] - 17; n <= bases[b] + 17; n++) lens[nl++] = n;
    lens[nl++] = big;
    for (size_t i = 0; i < nl; i++) {
        size_t n = lens[i];
        for (size_t off = 0; off < 8; off++) {
            const uint8_t *p = buf + off;
            uint32_t seed = (uint32_t)next();
            uint32_t ref = crc32c_sw(seed, p, n);
            if (n <= 4096) CHECK(bitwise(seed, p, n) == ref, "table n=%zu off=%zu", n, off);
            CHECK(crc32c_raw(seed, p, n) == ref, "dispatch n=%zu off=%zu", n, off);
#ifdef LMP_CRC32C_HW
            if (hw) CHECK(crc32c_hw(seed, p, n) == ref, "hw n=%zu off=%zu", n, off);
            if (mul) CHECK(crc32c_lanes(seed, p, n) == ref, "lanes n=%zu off=%zu", n, off);
#endif
        }
    }
    printf("%d checks, %d failed\n", checks, failed);
    free(buf);
    return failed != 0;
}
"""


def run_harness(cc: str, tmp_path: Path, runner: list[str]) -> str:
    src = tmp_path / "crc_harness.c"
    src.write_text(HARNESS)
    exe = tmp_path / "crc_harness"
    cmd = [cc, "-std=c11", "-O2", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror", "-DLMP_CRC32C_NO_PYTHON",
           "-I", str(ROOT / "csrc"), str(src), "-o", str(exe)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip().endswith(" 0 failed"), p.stdout
    return p.stdout


def test_c_paths_native(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        pytest.skip("no C compiler")
    out = run_harness(cc, tmp_path, [])
    if platform.machine() in ("x86_64", "AMD64"):
        flags = Path("/proc/cpuinfo").read_text().split()
        want = "paths: table" + (" hw" if "sse4_2" in flags else "")
        want += " lanes" if "sse4_2" in flags and "pclmulqdq" in flags else ""
        assert want + "\n" in out, out


def test_c_paths_aarch64_under_qemu(tmp_path):
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if platform.machine() == "aarch64":
        pytest.skip("native aarch64: test_c_paths_native runs the ARM code directly")
    if not cc or not qemu:
        pytest.skip("needs gcc-aarch64-linux-gnu and qemu-user")
    out = run_harness(cc, tmp_path, [qemu, "-cpu", "max", "-L", "/usr/aarch64-linux-gnu"])
    assert "paths: table hw lanes\n" in out, out  # -cpu max has the CRC and PMULL extensions
