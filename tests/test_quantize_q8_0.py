"""The C Q8_0 quantizer (_core.quantize_q8_0) against gguf-py's reference, byte for byte.

gguf.quants.quantize writes interleaved 34-byte blocks [fp16 d | 32 int8]; lmpack stores two
planes (quants, scales), so the oracle's bytes are split before comparing. Every kernel path
this CPU can run must give the same bytes, with any thread count.
"""

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lmpack import _core

from kernel_tables import using_kernels  # tests/ is on sys.path

Q8_0 = gguf.GGMLQuantizationType.Q8_0
PATHS = _core.kernel_paths()


def oracle(x32):
    """gguf-py's Q8_0 of a float32 vector, split into (quants int8[n], scales uint16[n/32])."""
    with np.errstate(all="ignore"):  # tiny blocks overflow 1/d inside gguf-py, by design
        blocks = gguf.quants.quantize(x32.reshape(1, -1), Q8_0).reshape(-1, 34)
    return blocks[:, 2:].copy().view(np.int8).ravel(), blocks[:, :2].copy().view(np.uint16).ravel()


def ours(src, dtype, threads=1):
    src = np.ascontiguousarray(src)
    n = src.size
    q = np.full(n, 99, np.int8)
    d = np.full(n // 32, 0xDEAD, np.uint16)
    _core.quantize_q8_0(src, dtype, q, d, threads=threads)
    return q, d


def assert_same(got, want):
    gq, gd = got
    wq, wd = want
    np.testing.assert_array_equal(gd, wd, err_msg="fp16 scales differ")
    np.testing.assert_array_equal(gq, wq, err_msg="int8 quants differ")


def check_all_paths(x32):
    want = oracle(x32)
    for p in PATHS:
        with using_kernels(p):
            assert_same(ours(x32, "f32"), want)


# --- generated rows ------------------------------------------------------------------------

finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)
f32_rows = st.integers(1, 6).flatmap(lambda nb: hnp.arrays(np.float32, nb * 32, elements=finite32))


@st.composite
def tie_rows(draw):
    """Blocks whose amax is 127 * 2^e, so d and 1/d are exact and x*id hits k + 0.5 exactly.
    Up to 40 blocks, so the SIMD quantizers' 16-block (AVX-512) and 8-block (AVX2) groups and
    their one-block tails are all reached."""
    nb = draw(st.integers(1, 40))
    out = []
    for _ in range(nb):
        e = draw(st.integers(-100, 100))
        halves = draw(hnp.arrays(np.int32, 31, elements=st.integers(-253, 253)))
        blk = np.concatenate([[127.0 * (1 if draw(st.booleans()) else -1)], halves / 2.0])
        perm = draw(st.permutations(range(32)))
        out.append(np.ldexp(blk[list(perm)], e).astype(np.float32))
    return np.concatenate(out)


@st.composite
def scaled_normal_rows(draw):
    """Random normals times a per-block magnitude from denormal to near FLT_MAX, mixed signs, in
    up to 40 blocks (whole SIMD groups and tails)."""
    nb = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    mags = np.array(draw(st.lists(st.sampled_from(
        [1e-45, 1e-40, 1e-38, 3e-37, 1e-30, 1e-3, 1.0, 1e10, 1e30, 3e38 / 4.0]),
        min_size=nb, max_size=nb)), np.float64)
    x = rng.standard_normal((nb, 32)) * mags[:, None]
    zero_block = draw(st.integers(-1, nb - 1))
    if zero_block >= 0:
        x[zero_block] = 0.0
    return np.clip(x, -3.4e38, 3.4e38).astype(np.float32).ravel()


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(f32_rows)
def test_f32_rows_match_gguf(x):
    check_all_paths(x)


@SETTINGS
@given(tie_rows())
def test_exact_half_ties_round_away_from_zero(x):
    check_all_paths(x)


@SETTINGS
@given(scaled_normal_rows())
def test_denormal_to_huge_blocks_match_gguf(x):
    check_all_paths(x)


@SETTINGS
@given(st.integers(1, 6).flatmap(lambda nb: hnp.arrays(
    np.float16, nb * 32, elements=st.floats(width=16, allow_nan=False, allow_infinity=False))))
def test_f16_source_matches_gguf_on_upcast(x):
    want = oracle(x.astype(np.float32))
    for p in PATHS:
        with using_kernels(p):
            assert_same(ours(x, "f16"), want)


@SETTINGS
@given(st.integers(1, 40).flatmap(lambda nb: hnp.arrays(np.uint16, nb * 32)))
def test_bf16_source_matches_gguf_on_upcast(bits):
    bits = np.where((bits & 0x7F80) == 0x7F80, bits & 0x807F, bits).astype(np.uint16)  # finite only
    x32 = (bits.astype(np.uint32) << 16).view(np.float32)
    want = oracle(x32)
    for p in PATHS:
        with using_kernels(p):
            assert_same(ours(bits, "bf16"), want)


# --- hand-picked edge cases ----------------------------------------------------------------

def test_hand_picked_blocks():
    blocks = [
        np.zeros(32),                                   # d = 0, id = 0
        np.full(32, -0.0),                              # negative zeros
        np.r_[127.0, np.full(31, 0.49999997)],          # v just below 0.5 must round to 0
        np.r_[127.0, np.full(31, 0.5)],                 # exact tie rounds up
        np.r_[-127.0, np.full(31, -0.5)],               # and away from zero when negative
        np.r_[127.0, np.arange(31) - 15.5],             # a tie on every element
        np.r_[3.4028235e38, -3.4028235e38, np.zeros(30)],  # FLT_MAX: fp16(d) overflows to inf
        np.r_[1e-45, np.zeros(31)],                     # smallest denormal: 1/d overflows
        np.r_[1.1754942e-38, -5e-39, np.zeros(30)],     # largest denormals
        np.r_[65504.0 * 127, np.ones(31)],              # d = fp16 max
        np.r_[6e-8 * 127, np.ones(31) * 1e-6],          # d near the fp16 subnormal range
    ]
    x = np.concatenate(blocks).astype(np.float32)
    check_all_paths(x)


def test_large_row_multithreaded_equals_single_threaded():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(32 * 4099) * rng.choice([1e-3, 1.0, 50.0], 32 * 4099)).astype(np.float32)
    want = oracle(x)
    for p in PATHS:
        with using_kernels(p):
            one = ours(x, "f32", threads=1)
            assert_same(one, want)
            for t in (2, 3, 7, 5000):
                assert_same(ours(x, "f32", threads=t), one)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_non_finite_refused_with_index(bad, dtype):
    x = np.linspace(-1, 1, 32 * 40).astype(np.float32)
    x[1234] = bad
    if dtype == "f32":
        src = x
    elif dtype == "f16":
        src = x.astype(np.float16)
    else:
        src = (x.view(np.uint32) >> 16).astype(np.uint16)
    for p in PATHS:
        with using_kernels(p):
            for threads in (1, 3):
                with pytest.raises(ValueError, match=r"non-finite value at element 1234$"):
                    ours(src, dtype, threads=threads)


def test_size_and_argument_errors():
    x = np.ones(64, np.float32)
    q = np.empty(64, np.int8)
    d = np.empty(2, np.uint16)
    with pytest.raises(ValueError, match="multiple of 32"):
        _core.quantize_q8_0(np.ones(48, np.float32), "f32", np.empty(48, np.int8), d)
    with pytest.raises(ValueError, match="quants_out"):
        _core.quantize_q8_0(x, "f32", np.empty(63, np.int8), d)
    with pytest.raises(ValueError, match="scales_out"):
        _core.quantize_q8_0(x, "f32", q, np.empty(3, np.uint16))
    with pytest.raises(ValueError, match="src_dtype"):
        _core.quantize_q8_0(x, "f64", q, d)
    with pytest.raises(ValueError, match="threads"):
        _core.quantize_q8_0(x, "f32", q, d, threads=0)
    with pytest.raises(ValueError, match="whole number"):
        _core.quantize_q8_0(b"\0" * 131, "f16", q, d)
    with pytest.raises((BufferError, TypeError)):
        _core.quantize_q8_0(x, "f32", bytes(64), d)  # read-only output
    with pytest.raises(TypeError):
        _core.quantize_q8_0(object(), "f32", q, d)
    with pytest.raises(ValueError, match="aligned"):
        raw = bytearray(64 * 4 + 1)
        _core.quantize_q8_0(memoryview(raw)[1:], "f32", q, d)


def test_empty_input_is_a_no_op():
    _core.quantize_q8_0(np.empty(0, np.float32), "f32", np.empty(0, np.int8), np.empty(0, np.uint16))


def test_set_kernel_path_rejects_unknown():
    with pytest.raises(ValueError, match="cannot run"):
        _core.set_kernel_path("avx9000")
    assert _core.kernel_paths()[0] == "scalar"
    assert _core.kernel_path() in _core.kernel_paths()
