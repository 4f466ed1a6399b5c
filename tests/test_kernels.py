"""Every kernel table entry on every path this CPU can run, against float64 numpy and the scalar table.

Float matmuls must sit within a rounding bound of the float64 product; the q8_0 integer dot must be
exact on every path; and the determinism contract must hold: an output depends only on (row,
token, cols), not on the batch size or on how the rows are split across calls.
"""

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kernel_tables import PREFETCH_PROFILES, using_kernels  # tests/ is on sys.path

from lmpack import _core

PATHS = _core.kernel_paths()
U = 2.0**-24  # f32 unit roundoff


@pytest.fixture(params=PATHS)
def path(request):
    with using_kernels(request.param):
        yield request.param


def make_weight(dtype, rows, cols, rng):
    """(buffer, scales or None, float64 dequantized values)."""
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    if dtype == "f32":
        return w, None, w.astype(np.float64)
    if dtype == "f16":
        h = w.astype(np.float16)
        return h, None, h.astype(np.float64)
    if dtype == "bf16":
        bits = (w.view(np.uint32) >> 16).astype(np.uint16)
        return bits, None, (bits.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    q = np.empty(rows * cols, np.int8)
    d = np.empty(rows * cols // 32, np.uint16)
    _core.quantize_q8_0(w, "f32", q, d)
    deq = q.reshape(-1, 32).astype(np.float64) * d.view(np.float16).astype(np.float64)[:, None]
    return q, d, deq.reshape(rows, cols)


def quantize_act(x):
    q = np.empty(x.size, np.int8)
    d = np.empty(x.size // 32, np.float32)
    _core._quantize_act_q8(np.ascontiguousarray(x, np.float32), q, d)
    return q.reshape(x.shape), d.reshape(x.shape[0], -1)


def matmul(dtype, w, ws, rows, cols, x, ntok, r0=0, r1=None, fill=np.nan):
    """Y[ntok, rows] from the active table; x is f32 [ntok, cols], quantized here for q8_0."""
    r1 = rows if r1 is None else r1
    y = np.full((ntok, rows), fill, np.float32)
    if dtype == "q8_0":
        xq, xd = x
        _core._matmul(dtype, w, ws, rows, cols, xq, xd, ntok, y, r0, r1)
    else:
        _core._matmul(dtype, w, None, rows, cols, x, None, ntok, y, r0, r1)
    return y


SHAPES = [(1, 32), (5, 96), (13, 4096 + 32), (9, 64), (33, 160)]
ODD_COLS = [(3, 7), (6, 33), (11, 100), (4, 1)]


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("rows,cols", SHAPES + ODD_COLS)
@pytest.mark.parametrize("ntok", [1, 2, 7])
def test_float_matmul_matches_float64(path, dtype, rows, cols, ntok):
    rng = np.random.default_rng(rows * 1000 + cols + ntok)
    w, _, w64 = make_weight(dtype, rows, cols, rng)
    x = rng.standard_normal((ntok, cols)).astype(np.float32)
    y = matmul(dtype, w, None, rows, cols, x, ntok)
    ref = x.astype(np.float64) @ w64.T
    bound = (cols / 8 + 10) * U * (np.abs(x.astype(np.float64)) @ np.abs(w64).T)
    assert np.all(np.abs(y - ref) <= bound), np.max(np.abs(y - ref) / bound)


@pytest.mark.parametrize("rows,cols", SHAPES)
@pytest.mark.parametrize("ntok", [1, 2, 7])
def test_q8_0_matmul_matches_float64(path, rows, cols, ntok):
    rng = np.random.default_rng(rows * 77 + cols + ntok)
    wq, wd, _ = make_weight("q8_0", rows, cols, rng)
    x = rng.standard_normal((ntok, cols)).astype(np.float32)
    xq, xd = quantize_act(x)
    y = matmul("q8_0", wq, wd, rows, cols, (xq, xd), ntok)
    # Exact per-block integer dots, scaled in float64.
    wi = wq.reshape(rows, cols // 32, 32).astype(np.int64)
    xi = xq.reshape(ntok, cols // 32, 32).astype(np.int64)
    isum = np.einsum("rbk,tbk->trb", wi, xi)
    scale = wd.view(np.float16).astype(np.float64).reshape(rows, -1)[None] * xd.astype(np.float64)[:, None]
    terms = isum * scale
    ref = terms.sum(-1)
    bound = (cols / 32 + 12) * 2 * U * np.abs(terms).sum(-1)
    assert np.all(np.abs(y - ref) <= bound), np.max(np.abs(y - ref) / bound)


@pytest.mark.parametrize("cols", [32, 64, 96, 4096 + 32])
def test_q8_0_integer_dot_exact_on_every_path(cols):
    """Unit scales turn the output into the bare int8 dot, which every path must get exactly."""
    rng = np.random.default_rng(cols)
    rows, ntok = 7, 5
    wq = rng.integers(-7, 8, rows * cols).astype(np.int8)  # small: sums stay exact in f32
    wq[:32] = rng.choice([-127, 127], 32)                   # and the extremes are exercised
    wd = np.full(rows * cols // 32, 0x3C00, np.uint16)      # fp16 1.0
    xq = rng.integers(-7, 8, (ntok, cols)).astype(np.int8)
    xq[0, :32] = rng.choice([-127, 127], 32)
    xd = np.ones((ntok, cols // 32), np.float32)
    want = xq.astype(np.int64) @ wq.reshape(rows, cols).astype(np.int64).T
    for p in PATHS:
        with using_kernels(p):
            y = matmul("q8_0", wq, wd, rows, cols, (xq, xd), ntok)
            np.testing.assert_array_equal(y, want.astype(np.float32), err_msg=p)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("rows,cols", [(13, 4096 + 32), (10, 96), (7, 32)])
def test_simd_paths_close_to_scalar(dtype, rows, cols):
    rng = np.random.default_rng(5)
    w, ws, _ = make_weight(dtype, rows, cols, rng)
    x = rng.standard_normal((7, cols)).astype(np.float32)
    arg = quantize_act(x) if dtype == "q8_0" else x
    with using_kernels("scalar"):
        ref = matmul(dtype, w, ws, rows, cols, arg, 7)
    for p in PATHS[1:]:
        with using_kernels(p):
            y = matmul(dtype, w, ws, rows, cols, arg, 7)
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max(), err_msg=p)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("rows,cols", [(13, 4096 + 32), (11, 96), (9, 100)])
def test_determinism_contract(path, dtype, rows, cols):
    if dtype == "q8_0" and cols % 32:
        pytest.skip("q8_0 needs cols % 32 == 0")
    rng = np.random.default_rng(rows + cols)
    w, ws, _ = make_weight(dtype, rows, cols, rng)
    ntok = 7
    x = rng.standard_normal((ntok, cols)).astype(np.float32)
    xa = quantize_act(x) if dtype == "q8_0" else x
    full = matmul(dtype, w, ws, rows, cols, xa, ntok)
    assert not np.isnan(full).any()
    # One token at a time (the generation path) gives the same bits as the batch; on amx a single
    # token is the AVX-512 GEMV by design (kernels.h), so there it equals that table's bits
    # instead, and the batch up to f32 rounding.
    for t in range(ntok):
        one = (xa[0][t:t + 1], xa[1][t:t + 1]) if dtype == "q8_0" else x[t:t + 1]
        got = matmul(dtype, w, ws, rows, cols, one, 1)[0]
        if path == "amx":
            with using_kernels("avx512"):
                np.testing.assert_array_equal(got, matmul(dtype, w, ws, rows, cols, one, 1)[0])
            np.testing.assert_allclose(got, full[t], rtol=1e-5, atol=1e-5 * np.abs(full).max())
        else:
            np.testing.assert_array_equal(got, full[t])
    # Any split of the rows across calls (threads) gives the same bits, and writes only its rows.
    for splits in ([0, 1, rows], [0, 5, 6, rows], [0, 3, 10, rows], list(range(rows + 1))):
        splits = sorted({s for s in splits if s <= rows})
        y = np.full((ntok, rows), np.nan, np.float32)
        for a, b in zip(splits, splits[1:]):
            part = matmul(dtype, w, ws, rows, cols, xa, ntok, a, b)
            assert np.isnan(part[:, :a]).all() and np.isnan(part[:, b:]).all()
            y[:, a:b] = part[:, a:b]
        np.testing.assert_array_equal(y, full)
    # A token in a different batch position (other tile neighbours) keeps its bits.
    perm = rng.permutation(ntok)
    xp = (xa[0][perm], xa[1][perm]) if dtype == "q8_0" else x[perm]
    np.testing.assert_array_equal(matmul(dtype, w, ws, rows, cols, xp, ntok), full[perm])


def test_quantize_act_q8_same_on_every_path_and_follows_the_rule():
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((3, 4096)) * rng.choice([1e-30, 1e-3, 1.0, 1e6], (3, 4096))).astype(np.float32)
    x[0, :32] = 0.0
    x[1, 32:64] = np.r_[127.0, np.arange(31) - 15.5]  # exact ties
    with using_kernels("scalar"):
        q0, d0 = quantize_act(x)
    blocks = x.reshape(-1, 32)
    d = np.abs(blocks).max(1) / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)
    v = blocks * inv[:, None]
    frac = np.abs(v) - np.floor(np.abs(v))  # exact in f32
    want = np.where(frac >= 0.5, np.sign(v) * np.ceil(np.abs(v)), np.sign(v) * np.floor(np.abs(v)))
    np.testing.assert_array_equal(d0.ravel(), d)
    np.testing.assert_array_equal(q0.reshape(-1, 32), want.astype(np.int8))
    for p in PATHS:
        with using_kernels(p):
            q, dd = quantize_act(x)
            np.testing.assert_array_equal(q, q0, err_msg=p)
            np.testing.assert_array_equal(dd, d0, err_msg=p)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_quantize_act_q8_non_finite_block_gives_nan_scale(path, bad):
    x = np.ones((1, 96), np.float32)
    x[0, 40] = bad
    q, d = quantize_act(x)
    assert np.isnan(d[0, 1]) and not np.isnan(d[0, [0, 2]]).any()
    assert (q[0, 32:64] == 0).all() and (q[0, :32] == 127).all()


@pytest.mark.parametrize("n", [1, 7, 16, 33, 100, 1000, 4096 + 5])
def test_dot_and_axpy(path, n):
    rng = np.random.default_rng(n)
    a = rng.standard_normal(n).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    got = _core._dot_f32(a, b)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert abs(got - ref) <= (n / 8 + 10) * U * (np.abs(a) @ np.abs(b))
    y = rng.standard_normal(n).astype(np.float32)
    y0 = y.copy()
    _core._axpy_f32(0.75, a, y)
    np.testing.assert_allclose(y, y0 + np.float32(0.75) * a, rtol=2 * U * 4, atol=1e-6)


def test_argument_errors():
    w = np.zeros(4 * 64, np.float32)
    x = np.zeros(64, np.float32)
    y = np.zeros(4, np.float32)
    ok = ("f32", w, None, 4, 64, x, None, 1, y, 0, 4)
    _core._matmul(*ok)

    def bad(i, v, match):
        args = list(ok)
        args[i] = v
        with pytest.raises(ValueError, match=match):
            _core._matmul(*args)

    bad(0, "f64", "unknown dtype")
    bad(1, np.zeros(4 * 63, np.float32), "w has")
    bad(5, np.zeros(65, np.float32), "x has")
    bad(8, np.zeros(5, np.float32), "y has")
    with pytest.raises(ValueError, match="r0 <= r1"):
        _core._matmul(*ok[:9], 3, 2)
    bad(10, 5, "r1 <= rows")
    bad(9, -1, "0 <= r0")
    bad(3, 0, "positive")
    bad(2, np.zeros(8, np.uint16), "scales")
    q8 = ("q8_0", np.zeros(4 * 48, np.int8), np.zeros(4 * 48 // 32, np.uint16), 4, 48,
          np.zeros(48, np.int8), np.zeros(1, np.float32), 1, y, 0, 4)
    with pytest.raises(ValueError, match="cols % 32"):
        _core._matmul(*q8)
    with pytest.raises(ValueError, match="w_scales has"):
        _core._matmul("q8_0", np.zeros(4 * 64, np.int8), np.zeros(7, np.uint16), 4, 64,
                      np.zeros(64, np.int8), np.zeros(2, np.float32), 1, y, 0, 4)
    with pytest.raises(ValueError, match="multiple of 32"):
        _core._quantize_act_q8(np.zeros(40, np.float32), np.zeros(40, np.int8), np.zeros(1, np.float32))
    with pytest.raises(ValueError, match="b has"):
        _core._dot_f32(np.zeros(4, np.float32), np.zeros(5, np.float32))
    with pytest.raises((BufferError, TypeError)):
        _core._axpy_f32(1.0, np.zeros(4, np.float32), bytes(16))


@pytest.mark.parametrize("name", PATHS)
def test_env_var_forces_a_path(name):
    import os
    import subprocess
    import sys

    code = "from lmpack import _core; print(_core.kernel_path())"
    env = dict(os.environ, LMPACK_KERNELS=name)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == name


def test_env_var_naming_an_unrunnable_path_warns_and_falls_back():
    import os
    import subprocess
    import sys

    code = "from lmpack import _core; print(_core.kernel_path())"
    env = dict(os.environ, LMPACK_KERNELS="avx9000")
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == PATHS[-1]
    assert "LMPACK_KERNELS=avx9000 is not a kernel path this CPU can run" in out.stderr


@pytest.mark.parametrize("table", ["avx2", "avx512"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("rows,cols,ntok", [(70, 4096 + 32, 41), (13, 70000, 9)])
def test_float_prompt_blocks_give_every_output_its_chain(table, dtype, rows, cols, ntok):
    """Prompts walk blocks of rows x tokens sized for L2 (tiling.h FBLOCK_*). At 4128 columns and
    41 tokens both tables cut the rows and the tokens into several blocks, the last ones ragged
    down to a partial tile; at 70000 columns a block is one tile (the sizes round to 0 and clamp).
    Every output must still be written, with the bits of the one-token GEMV (which never blocks)."""
    if table not in PATHS:
        pytest.skip(f"no {table} on this CPU")
    rng = np.random.default_rng(11)
    w, _, _ = make_weight(dtype, rows, cols, rng)
    x = rng.standard_normal((ntok, cols)).astype(np.float32)
    with using_kernels(table):
        full = matmul(dtype, w, None, rows, cols, x, ntok)
        for t in range(ntok):
            np.testing.assert_array_equal(matmul(dtype, w, None, rows, cols, x[t:t + 1], 1)[0], full[t])


@pytest.mark.parametrize("table", ["avx2", "avx512"])
@pytest.mark.parametrize("rows,cols,ntok", [(45, 96, 1), (45, 96, 13), (33, 2080, 7), (7, 32, 2), (70, 1056, 1),
                                            (17, 1024, 3), (9, 4096, 5), (64, 64, 4), (23, 160, 33), (1, 32, 6)])
def test_simd_q8_0_matmul_bit_identical_to_scalar(table, rows, cols, ntok):
    """The AVX2 and AVX-512 q8_0 matmuls keep the scalar chain (exact block sums, then one rounded
    multiply and add per block, in order), so prompts and generation give the reference's bits,
    whatever rows a thread gets (1, 2 or 3 uneven parts, cut inside the 8- and 32-row panels)."""
    if table not in PATHS:
        pytest.skip(f"no {table} on this CPU")
    rng = np.random.default_rng(rows + cols + ntok)
    w, ws, _ = make_weight("q8_0", rows, cols, rng)
    arg = quantize_act(rng.standard_normal((ntok, cols)).astype(np.float32))
    with using_kernels("scalar"):
        ref = matmul("q8_0", w, ws, rows, cols, arg, ntok)
    with using_kernels(table):
        for parts in (1, 2, 3):
            cuts = [0] + [rows * i // parts + (i % 2) * (rows > 8) * 3 for i in range(1, parts)] + [rows]
            cuts = sorted(min(max(c, 0), rows) for c in cuts)
            y = np.full((ntok, rows), np.nan, np.float32)
            for a, b in zip(cuts, cuts[1:]):
                part = matmul("q8_0", w, ws, rows, cols, arg, ntok, a, b)
                y[:, a:b] = part[:, a:b]
            np.testing.assert_array_equal(y, ref, err_msg=f"{parts} parts at {cuts}")


@pytest.mark.parametrize("n", [1, 15, 16, 17, 1000])
def test_silu_mul_close_to_float64_on_every_path(path, n):
    """The SwiGLU gate entry (or the scalar loop standing in for it) against float64, specials included."""
    rng = np.random.default_rng(n)
    g = (rng.standard_normal(n) * 6).astype(np.float32)
    g[: min(n, 4)] = np.array([0.0, -200.0, 100.0, np.inf], np.float32)[: min(n, 4)]
    u = rng.standard_normal(n).astype(np.float32)
    g64 = g.astype(np.float64)
    with np.errstate(over="ignore"):
        want = g64 / (1.0 + np.exp(-g64)) * u
    got = g.copy()
    _core._silu_mul_f32(got, u)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-30)


@pytest.fixture
def prefetch_restored():
    before = _core._gemv_prefetch()
    yield
    _core._gemv_prefetch(before)


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("rows,cols", [(21, 96), (19, 4096 + 32), (37, 2080), (21, 100), (19, 4096 + 40),
                                       (11, 7), (13, 1)])
def test_gemv_same_bits_under_every_prefetch_profile(path, prefetch_restored, dtype, rows, cols):
    # The profiles move prefetches (short rows, long rows, none at all), and "amd" runs the avx512
    # table's float GEMVs one row at a time: the one-token results, whole or split at an odd row,
    # must not change by a bit, with column tails (100, 4136) and rows shorter than a vector (7, 1).
    if dtype == "q8_0" and cols % 32:
        pytest.skip("q8_0 needs cols % 32 == 0")
    rng = np.random.default_rng(rows * cols)
    w, ws, _ = make_weight(dtype, rows, cols, rng)
    x = rng.standard_normal((1, cols)).astype(np.float32)
    xin = quantize_act(x) if dtype == "q8_0" else x
    got = {}
    for name in PREFETCH_PROFILES:
        assert _core._gemv_prefetch(name) == name
        y = matmul(dtype, w, ws, rows, cols, xin, 1)
        y[:, :11] = matmul(dtype, w, ws, rows, cols, xin, 1, 0, 11)[:, :11]
        got[name] = y
    assert np.isfinite(got["none"]).all()
    for name in PREFETCH_PROFILES:
        np.testing.assert_array_equal(got[name], got["none"])


def test_gemv_prefetch_profile_follows_the_cpu_vendor():
    info = Path("/proc/cpuinfo")
    if platform.machine().lower() not in ("x86_64", "amd64") or not info.exists():
        pytest.skip("the vendor is read from Linux's /proc/cpuinfo on x86-64")
    vendors = {line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
               if line.startswith("vendor_id")}
    assert len(vendors) == 1
    expected = "amd" if vendors & {"AuthenticAMD", "HygonGenuine"} else "intel"
    # a fresh interpreter resolves the profile itself, from cpuid
    out = subprocess.run([sys.executable, "-c", "from lmpack import _core; print(_core._gemv_prefetch())"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == expected


def test_gemv_prefetch_hook_rejects_unknown_names(prefetch_restored):
    before = _core._gemv_prefetch()
    with pytest.raises(ValueError, match="unknown GEMV prefetch profile 'fastest' \\((.+)\\)") as e:
        _core._gemv_prefetch("fastest")
    assert e.value.args[0].split("(")[1].rstrip(")").split(", ") == PREFETCH_PROFILES
    assert _core._gemv_prefetch() == before


# ---- attention ------------------------------------------------------------------------------

def attend(q, k, v, nh, ntok, npos0, hd, ld, scale, per_query):
    """(ran, out): the table's block attention on contiguous q [ntok, nh*hd] as one block or query by query."""
    out = np.full((ntok, nh * hd), np.nan, np.float32)
    return _core._attend_f32(q, k, v, nh, ntok, npos0, hd, ld, scale, out, per_query), out


def attention_float64(q, k, v, nh, ntok, npos0, hd, ld, scale):
    rows = npos0 + ntok - 1
    K = np.stack([k[p * ld:p * ld + hd] for p in range(rows)]).astype(np.float64)
    V = np.stack([v[p * ld:p * ld + hd] for p in range(rows)]).astype(np.float64)
    out = np.empty((ntok, nh * hd))
    for t in range(ntok):
        n = npos0 + t
        for j in range(nh):
            s = K[:n] @ q[t, j * hd:(j + 1) * hd].astype(np.float64) * scale
            w = np.exp(s - s.max())
            out[t, j * hd:(j + 1) * hd] = (w / w.sum()) @ V[:n]
    return out


# head widths: odd, below one vector, whole AVX2/AVX-512 vectors, a tail, the widest fused, past it
ATT_HD = [1, 7, 16, 24, 33, 64, 72, 100, 128, 130]


@pytest.mark.parametrize("hd", ATT_HD)
def test_block_attention_is_the_single_query_kernel_bit_for_bit(path, hd):
    """A block of queries (consecutive tokens x query heads sharing a KV head, causal) gives every
    output the bits of the same query alone, as generation runs it: any block, any GQA group, any
    number of positions (not multiples of 16 either), and the float64 softmax within rounding."""
    rng = np.random.default_rng(hd)
    ran_any = False
    for nh, ntok, npos0 in [(1, 1, 1), (1, 17, 1), (3, 5, 15), (8, 3, 16), (2, 9, 31), (1, 40, 70), (4, 2, 200)]:
        ld = hd + 3 * (hd % 2)  # rows of the cache are wider than a head
        rows = npos0 + ntok - 1
        q = rng.standard_normal((ntok, nh * hd)).astype(np.float32)
        k = rng.standard_normal((rows - 1) * ld + hd).astype(np.float32)
        v = rng.standard_normal((rows - 1) * ld + hd).astype(np.float32)
        scale = float(np.float32(1.5 / np.sqrt(hd)))
        ran, block = attend(q, k, v, nh, ntok, npos0, hd, ld, scale, False)
        if not ran:  # the scalar table composes dot_f32 and axpy_f32 in the forward pass
            assert path == "scalar" or path == "neon"
            return
        ran_any = True
        _, single = attend(q, k, v, nh, ntok, npos0, hd, ld, scale, True)
        np.testing.assert_array_equal(block.view(np.uint32), single.view(np.uint32),
                                      err_msg=f"nh={nh} ntok={ntok} npos0={npos0}")
        want = attention_float64(q, k, v, nh, ntok, npos0, hd, ld, scale)
        np.testing.assert_allclose(block, want, rtol=0, atol=2e-5 * max(1.0, np.abs(want).max()))
    assert ran_any


def test_attention_hook_rejects_bad_shapes():
    z = np.zeros(64, np.float32)
    with pytest.raises(ValueError):
        _core._attend_f32(z, z, z, 1, 1, 1, 64, 32, 1.0, z, False)  # ld < hd
    with pytest.raises(ValueError):
        _core._attend_f32(z, z, z, 1, 2, 1, 64, 64, 1.0, z, False)  # k too short for 2 positions
    with pytest.raises(ValueError):  # a stride whose byte count would wrap int64 and pass a tiny buffer
        _core._attend_f32(z, z, z, 1, 1, 5, 1, 2**62, 1.0, z, False)


# sha256 prefixes of one query-by-query attention output per table and head width; they are the
# bits the single-query kernels gave before queries ran in blocks (checked against that build
# at 1680 shapes), so a change to any score chain, reduction, exp or value order shows here
ATTENTION_BITS = {
    ("avx2", 24): "dfc253a279a3cf6a", ("avx2", 64): "8043cd6fac391a6d", ("avx2", 72): "9ff3fcd50c9a6cb8",
    ("avx2", 128): "aeb5fe7d7ce86b4c", ("avx512", 24): "168bd8687778ea5f", ("avx512", 64): "9ff9c67135e0e3d1",
    ("avx512", 72): "02206e28184ea8e8", ("avx512", 128): "f11431818aebad94",
}


@pytest.mark.parametrize("hd", [24, 64, 72, 128])
def test_attention_keeps_the_single_query_kernels_bits(path, hd):
    import hashlib

    table = "avx512" if path == "amx" else path  # amx's entry is avx512's
    if (table, hd) not in ATTENTION_BITS:
        pytest.skip(f"no recorded bits for the {path} table")
    rng = np.random.default_rng(hd)
    nh, ntok, npos0, ld = 2, 3, 45, hd + 8
    rows = npos0 + ntok - 1
    q = rng.standard_normal((ntok, nh * hd)).astype(np.float32)
    k = rng.standard_normal((rows - 1) * ld + hd).astype(np.float32)
    v = rng.standard_normal((rows - 1) * ld + hd).astype(np.float32)
    for per_query in (True, False):
        ran, out = attend(q, k, v, nh, ntok, npos0, hd, ld, 0.125, per_query)
        assert ran
        assert hashlib.sha256(out.tobytes()).hexdigest()[:16] == ATTENTION_BITS[(table, hd)]
