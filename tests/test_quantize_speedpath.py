"""The grouped SIMD quantizers (16 blocks a step on AVX-512, 8 on AVX2) against the scalar table
and gguf-py, byte for byte, at the edges the grouping creates.

The SIMD tables reduce several blocks' maxima together, divide and convert the scales as
vectors (fp16 through the hardware conversion) and fall back to one block at a time for the
tail and, in the activation quantizer, for a group holding inf or nan. So the cases here are
group boundaries, a distinct scale in every lane, fp16 scales at the subnormal and overflow
edges, 1/d overflowing, values near FLT_MAX, exact ties in even and odd positions (bf16 is
split by parity), and non-finite values in the middle of a group.
"""

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmpack import _core

from kernel_tables import using_kernels  # tests/ is on sys.path

Q8_0 = gguf.GGMLQuantizationType.Q8_0
SIMD = [p for p in _core.kernel_paths() if p != "scalar"]
DTYPES = ["f32", "f16", "bf16"]
FLT_MAX = np.finfo(np.float32).max

pytestmark = pytest.mark.skipif(not SIMD, reason="no SIMD kernel table on this CPU")


def to_source(x32, dtype):
    """(source array, its exact f32 upcast). bf16 truncates, f16 rounds (clipped to its finite
    range, inf and nan kept): either way the oracle sees exactly the values the kernel reads."""
    x32 = np.ascontiguousarray(x32, np.float32)
    if dtype == "f32":
        return x32, x32
    if dtype == "f16":
        h = np.where(np.isfinite(x32), np.clip(x32, -65504, 65504), x32).astype(np.float16)
        return h.view(np.uint16), h.astype(np.float32)
    bits = (x32.view(np.uint32) >> 16).astype(np.uint16)
    return bits, (bits.astype(np.uint32) << 16).view(np.float32)


def oracle(x32):
    with np.errstate(all="ignore"):  # tiny blocks overflow 1/d inside gguf-py, by design
        blocks = gguf.quants.quantize(x32.reshape(1, -1), Q8_0).reshape(-1, 34)
    return blocks[:, 2:].copy().view(np.int8).ravel(), blocks[:, :2].copy().view(np.uint16).ravel()


def quantize(path, src, dtype, threads=1):
    q = np.full(src.size, 99, np.int8)
    d = np.full(src.size // 32, 0xDEAD, np.uint16)
    with using_kernels(path):
        _core.quantize_q8_0(src, dtype, q, d, threads=threads)
    return q, d


def quantize_act(path, x):
    q = np.full(x.size, 99, np.int8)
    d = np.full(x.size // 32, 12345.0, np.float32)
    with using_kernels(path):
        _core._quantize_act_q8(np.ascontiguousarray(x, np.float32), q, d)
    return q, d


def assert_same(got, want, what):
    np.testing.assert_array_equal(got[1], want[1], err_msg=f"{what}: scales differ")
    np.testing.assert_array_equal(got[0], want[0], err_msg=f"{what}: quants differ")


def check(x32, dtypes=DTYPES, threads=(1,)):
    """Every SIMD table equals the scalar one, and the scalar one equals gguf-py."""
    for dtype in dtypes:
        src, up = to_source(x32, dtype)
        want = quantize("scalar", src, dtype)
        assert_same(want, oracle(up), f"scalar {dtype} vs gguf")
        for p in SIMD:
            for t in threads:
                assert_same(quantize(p, src, dtype, threads=t), want, f"{p} {dtype} threads={t}")


def check_act(x):
    want = quantize_act("scalar", x)
    for p in SIMD:
        got = quantize_act(p, x)
        np.testing.assert_array_equal(got[1].view(np.uint32), want[1].view(np.uint32), err_msg=f"{p} act scales")
        np.testing.assert_array_equal(got[0], want[0], err_msg=f"{p} act quants")


MAGS = np.array([1e-45, 1e-40, 3e-37, 1e-20, 6e-6, 1e-3, 1.0, 100.0, 6e4, 1e10, 1e30, 3e38 / 4], np.float64)


def blocks_with_magnitudes(nb, seed, mags=MAGS):
    """nb blocks of random normals, block b scaled by its own magnitude (so every lane of a
    group has a different scale), a zero block and a negative-zero block among them."""
    rng = np.random.default_rng(seed)
    scale = mags[rng.integers(0, len(mags), nb)] * rng.uniform(0.5, 2.0, nb)
    x = rng.standard_normal((nb, 32)) * scale[:, None]
    if nb > 2:
        x[nb // 2] = 0.0
        x[nb // 3] = -0.0
    return np.clip(x, -FLT_MAX, FLT_MAX).astype(np.float32).ravel()


# --- group boundaries ------------------------------------------------------------------------

@pytest.mark.parametrize("n", [32, 224, 256, 288, 480, 512, 544, 992, 1056, 16 * 32 * 3 + 32, 16 * 32 * 5 + 7 * 32])
def test_group_boundaries(n):
    check(blocks_with_magnitudes(n // 32, seed=n), threads=(1, 3))


def test_each_lane_of_a_group_keeps_its_own_scale():
    # block b of 48 has amax 2^(b - 24): a lane mix-up in the reduction or the scale broadcast
    # would give some block another block's scale
    nb = 48
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (nb, 32))
    x[np.arange(nb), rng.integers(0, 32, nb)] = 1.0
    x *= np.ldexp(1.0, np.arange(nb) - 24)[:, None]
    check(x.astype(np.float32).ravel())
    check_act(x.astype(np.float32))


@pytest.mark.parametrize("n", [32, 480, 512, 544, 16 * 32 * 2 + 32, 16 * 32 * 3 + 15 * 32])
def test_act_group_boundaries(n):
    check_act(blocks_with_magnitudes(n // 32, seed=n + 1))


# --- fp16 scales at their edges ----------------------------------------------------------------

def blocks_with_amax(amax, seed=0):
    """One block per amax (f32): that value at a random position and sign, the rest below it."""
    amax = np.asarray(amax, np.float32)
    rng = np.random.default_rng(seed)
    x = (rng.uniform(-1, 1, (amax.size, 32)) * amax[:, None]).astype(np.float32)
    pos = rng.integers(0, 32, amax.size)
    x[np.arange(amax.size), pos] = amax * rng.choice([-1, 1], amax.size)
    return x.ravel()


def test_fp16_scale_subnormal_and_overflow_edges():
    exact = np.array([
        2.0**-25, 3 * 2.0**-25, 5 * 2.0**-25, 2.0**-24, 2.0**-14 - 2.0**-25, 2.0**-14,  # ties, subnormal top
        65504.0, 65519.0, 65520.0, 65536.0,  # fp16 max, ties to inf at 65520
    ])
    rng = np.random.default_rng(5)
    # d swept over f32 bit patterns from below the fp16 subnormals to past fp16 overflow
    sweep = rng.integers(np.float32(2.0**-27).view(np.int32), np.float32(2.0**17).view(np.int32), 16 * 40)
    d = np.concatenate([exact, sweep.astype(np.int32).view(np.float32).astype(np.float64)])
    amax = (d * 127).astype(np.float32)
    # the amax neighbours too: d = amax/127 rounds, so ulps of amax move d across the edges
    amax = np.concatenate([amax, np.nextafter(amax, np.inf), np.nextafter(amax, 0)])
    check(blocks_with_amax(amax, seed=1), dtypes=["f32"])
    check(blocks_with_amax(amax, seed=2), dtypes=["bf16"])
    check(blocks_with_amax(amax[amax < 65504], seed=3), dtypes=["f16"])


def test_one_over_d_overflow_gives_zero_quants():
    edge = np.float32(127.0 / FLT_MAX)  # around here 1/(amax/127) stops being finite
    near = edge.view(np.int32) + np.arange(-40, 41)
    amax = np.concatenate([near.astype(np.int32).view(np.float32),
                           np.float32([1e-45, 1e-40, 1.1754942e-38, 1e-37, 3e-37, 4e-37, 0.0])])
    x = blocks_with_amax(amax, seed=4)
    for dtype in ["f32", "bf16"]:
        check(x, dtypes=[dtype])
    check_act(x)
    src, _ = to_source(x, "f32")
    q, d = quantize(SIMD[-1], src, "f32")
    tiny = np.float32(amax) / np.float32(127) < np.float32(1) / FLT_MAX
    assert tiny.any() and (q.reshape(-1, 32)[tiny[: q.size // 32]] == 0).all()


def test_values_near_flt_max():
    big = np.float32([FLT_MAX, -FLT_MAX, 3e38, 1.7e38, np.float32(3.3895314e38)])  # last: bf16 max
    amax = np.tile(big, 7)  # several to a group, in different lanes
    check(blocks_with_amax(amax, seed=6), dtypes=["f32", "bf16"])
    check(blocks_with_amax(np.float32([65504.0] * 17 + [60000.0] * 3), seed=7), dtypes=["f16"])
    check_act(blocks_with_amax(amax, seed=8))


def test_exact_ties_in_even_and_odd_positions():
    # amax 127 * 2^e makes d and 1/d exact, so x*id lands on k + 0.5 exactly, in both halves of
    # every 32-bit pair (the bf16 path quantizes even and odd positions separately)
    rng = np.random.default_rng(9)
    rows = []
    for b in range(40):
        e = int(rng.integers(-12, 12))
        v = (rng.integers(-127, 127, 32) + 0.5) * rng.choice([1, -1], 32)
        v[b % 32] = 127.0 * (1 if b % 2 else -1)
        rows.append(np.clip(v, -127, 127) * 2.0**e)
    check(np.concatenate(rows).astype(np.float32))
    # just below one half must round to 0, exactly one half to 1 (f32 only: others can't hold it)
    below = np.r_[127.0, np.tile([0.49999997, -0.49999997, 0.5, -0.5, 1.4999999, 1.5, 2.5, -2.5], 4)[:31]]
    check(np.tile(below, 20).astype(np.float32), dtypes=["f32"])


# --- non-finite values inside a group ------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("at", [2 * 512 + 7 * 32 + 5, 512 - 1, 3 * 512 + 40])
def test_non_finite_inside_a_group_is_refused(bad, dtype, at):
    x = np.linspace(-2, 2, 3 * 512 + 64).astype(np.float32)  # three groups and a two-block tail
    x[at] = bad
    src, _ = to_source(x, dtype)
    for p in ["scalar", *SIMD]:
        with pytest.raises(ValueError, match=rf"non-finite value at element {at}$"):
            quantize(p, src, dtype)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("at", [7 * 32 + 5, 512 + 15 * 32 + 31, 2 * 512 + 32 + 1])
def test_act_non_finite_block_alone_gets_nan(bad, at):
    x = blocks_with_magnitudes(2 * 16 + 3, seed=at, mags=np.array([1e-3, 1.0, 100.0]))
    x[at] = bad
    check_act(x)
    for p in SIMD:
        q, d = quantize_act(p, x)
        blk = at // 32
        assert np.isnan(d[blk]) and (q[blk * 32:(blk + 1) * 32] == 0).all()
        assert not np.isnan(np.delete(d, blk)).any()


# --- generated rows spanning several groups ----------------------------------------------------

@st.composite
def multi_group_rows(draw):
    nb = draw(st.integers(1, 70))
    seed = draw(st.integers(0, 2**32 - 1))
    return blocks_with_magnitudes(nb, seed)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(multi_group_rows(), st.sampled_from(DTYPES))
def test_generated_multi_group_rows(x, dtype):
    check(x, dtypes=[dtype])
    check_act(x)
