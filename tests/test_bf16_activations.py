"""The opt-in bf16-activation mode (`lmpack.load(path, activations="bf16")`).

Kernel level: the scalar table's matmul_bf16_act defines the arithmetic (VDPBF16PS's: per f32
lane the odd pair's product, then the even pair's, each a fused add in round-to-nearest-even,
bf16 denormal inputs read as 0, denormal results flushed to 0; kernels.h has the chain). It is
checked against float64 on ordinary values and against hand-worked cases for the DAZ/FTZ rules;
the avx512 table's VDPBF16PS tiles must give the same bits as it (on the Zen 5 this was written
on they do, denormal ranges included), and every table that has the entry keeps the determinism
contract (any batch size, any row split).

Model level: against transformers' float32 forward over the same (bf16-rounded) weights, the
mode's logits stay within the bounds below, its results do not depend on the thread count or on
how the tokens are fed, and tables without the entry (or a default load) give the exact path's
bits.

Bounds, and why: rounding an activation to bf16 is a relative error of at most 2^-9, about
1e-3 rms per element after the sums, and it compounds over the layers. On the random test
checkpoints (weights std 0.15: large logits, peaky softmax) the measured max|diff|/std was
0.05-0.09, mean KL 1.4e-4 to 2.1e-4 nats, max KL <= 8e-4, top-1 agreement 0.98 (README, "bf16
activations"); the bounds leave 2-4x headroom and are far tighter than Q8_0's (mean KL 0.012).
"""
from __future__ import annotations

import numpy as np
import pytest

import checkpoints
import lmpack
from lmpack import _core
from lmpack.errors import LmpackError
from kernel_tables import PREFETCH_PROFILES, using_kernels, using_prefetch
from test_q8_accuracy import kl

REL_BOUND = 0.25        # max |logit diff| / std of the reference logits
MEAN_KL_BOUND = 1e-3    # nats
MAX_KL_BOUND = 4e-3
TOP1_BOUND = 0.93


def act_paths() -> list[str]:
    """The runnable kernel tables that have a bf16-activation matmul on this CPU."""
    out = []
    for p in _core.kernel_paths():
        with using_kernels(p):
            if _core._has_bf16_act():
                out.append(p)
    return out


def bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns, round to nearest even (the values used here are finite)."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_values(h: np.ndarray) -> np.ndarray:
    return (h.astype(np.uint32) << 16).view(np.float32)


def matmul(w, x, rows, cols, ntok, r0=0, r1=None):
    y = np.full((ntok, rows), np.nan, np.float32)
    _core._matmul("bf16_act", w, None, rows, cols, x, None, ntok, y, r0, rows if r1 is None else r1)
    return y


def scalar(w, x, rows, cols, ntok):
    with using_kernels("scalar"):
        return matmul(w, x, rows, cols, ntok)


# ---- the reference ---------------------------------------------------------------------------

@pytest.mark.parametrize("rows,cols,ntok", [(5, 64, 3), (7, 77, 4), (3, 1000, 2)])
def test_scalar_reference_is_the_bf16_dot_product(rows, cols, ntok):
    """On ordinary values it is the dot product of the bf16 numbers, up to f32 accumulation."""
    rng = np.random.default_rng(cols)
    w = bf16_bits(rng.standard_normal((rows, cols)))
    x = bf16_bits(rng.standard_normal((ntok, cols)))
    want = bf16_values(x).astype(np.float64) @ bf16_values(w).astype(np.float64).T
    got = scalar(w, x, rows, cols, ntok)
    scale = np.abs(bf16_values(x)).astype(np.float64) @ np.abs(bf16_values(w)).astype(np.float64).T
    assert (np.abs(got - want) <= 4 * cols * 2.0**-24 * scale + 1e-30).all()


def test_scalar_reference_daz_ftz_and_order():
    """Hand-worked cases of the rules that are not plain IEEE arithmetic, on one output of 64
    columns: lane 0 takes the products p1, p0 (step 0), then p33, p32 (step 1)."""
    denormal = bf16_values(np.array([0x0040], np.uint16))[0]  # 2^-127, a bf16 denormal
    cases = [
        ({0: (2.0**20, denormal)}, 0.0),          # DAZ: read as 0 (else 2^-107, a normal result)
        ({0: (2.0**-70, 2.0**-70)}, 0.0),         # FTZ: the 2^-140 result is flushed
        ({0: (2.0**-63, 2.0**-63)}, 2.0**-126),   # the smallest normal survives
        # odd before even: 1 + 2^-24 ties to 1, then - 1 gives 0; even first would give 2^-24
        ({0: (1.0, 1.0), 32: (-1.0, 1.0), 33: (2.0**-12, 2.0**-12)}, 0.0),
        ({0: (1.0, 1.0), 33: (-1.0, 1.0), 32: (2.0**-12, 2.0**-12)}, 2.0**-24),
    ]
    for products, want in cases:
        w, x = np.zeros((1, 64), np.float32), np.zeros((1, 64), np.float32)
        for c, (a, b) in products.items():
            w[0, c], x[0, c] = a, b
        wb, xb = bf16_bits(w), bf16_bits(x)
        got = scalar(wb, xb, 1, 64, 1)[0, 0]
        assert got == np.float32(want), (products, got, want)
        for p in act_paths():
            with using_kernels(p):
                assert matmul(wb, xb, 1, 64, 1)[0, 0] == got, (p, products)


def _operands(kind, rows, cols, ntok, rng):
    if kind == "normal":
        return bf16_bits(rng.standard_normal((rows, cols))), bf16_bits(rng.standard_normal((ntok, cols)))
    # "wide": exponents over a wide range, some denormals; "tiny": products below the f32 normal range
    lo_w, hi_w, lo_x, hi_x = (90, 140, 90, 140) if kind == "wide" else (1, 40, 60, 100)
    sign_man = lambda shape: rng.integers(0, 1 << 16, shape).astype(np.uint16) & 0x807F  # noqa: E731
    w = sign_man((rows, cols)) | (rng.integers(lo_w, hi_w, (rows, cols)).astype(np.uint16) << 7)
    x = sign_man((ntok, cols)) | (rng.integers(lo_x, hi_x, (ntok, cols)).astype(np.uint16) << 7)
    w[rng.random((rows, cols)) < 0.08] &= 0x807F  # denormals and zeros
    return w, x


@pytest.mark.parametrize("kind", ["normal", "wide", "tiny"])
@pytest.mark.parametrize("rows,cols,ntok", [(13, 77, 9), (16, 64, 6), (9, 1000, 13), (8, 33, 1), (7, 2048 + 32, 5)])
def test_simd_tables_bit_identical_to_scalar(kind, rows, cols, ntok):
    paths = [p for p in act_paths() if p != "scalar"]
    if not paths:
        pytest.skip("no SIMD table with a bf16-activation matmul on this CPU")
    rng = np.random.default_rng(rows * cols + ntok)
    w, x = _operands(kind, rows, cols, ntok, rng)
    ref = scalar(w, x, rows, cols, ntok)
    if kind == "tiny":  # the case does reach the flush-to-zero rule: products below 2^-126
        prod = np.abs(bf16_values(w[0]).astype(np.float64) * bf16_values(x[0]))
        assert ((prod > 0) & (prod < 2.0**-126)).any()
    for p in paths:
        with using_kernels(p):
            np.testing.assert_array_equal(matmul(w, x, rows, cols, ntok).view(np.uint32), ref.view(np.uint32),
                                          err_msg=p)


@pytest.mark.parametrize("rows,cols", [(13, 4096 + 32), (11, 96), (9, 100), (17, 768)])
def test_determinism_contract(rows, cols):
    """Every table with the entry: a token alone (the GEMV, under every GEMV profile: tiles of one
    row or of 8) or in any batch position, and any row split (threads), gives the same bits."""
    rng = np.random.default_rng(rows + cols)
    w = bf16_bits(rng.standard_normal((rows, cols)))
    ntok = 11
    x = bf16_bits(rng.standard_normal((ntok, cols)))
    for p in act_paths():
        with using_kernels(p):
            full = matmul(w, x, rows, cols, ntok)
            assert not np.isnan(full).any()
            for name in PREFETCH_PROFILES:
                with using_prefetch(name):
                    for t in range(ntok):
                        np.testing.assert_array_equal(matmul(w, x[t:t + 1], rows, cols, 1)[0], full[t],
                                                      err_msg=f"{p} {name}")
            for splits in ([0, 1, rows], [0, 5, 6, rows], [0, 3, 10, rows], list(range(rows + 1))):
                splits = sorted({s for s in splits if s <= rows})
                y = np.full((ntok, rows), np.nan, np.float32)
                for a, b in zip(splits, splits[1:]):
                    part = matmul(w, x, rows, cols, ntok, a, b)
                    assert np.isnan(part[:, :a]).all() and np.isnan(part[:, b:]).all()
                    y[:, a:b] = part[:, a:b]
                np.testing.assert_array_equal(y, full, err_msg=p)
            perm = rng.permutation(ntok)
            np.testing.assert_array_equal(matmul(w, x[perm], rows, cols, ntok), full[perm], err_msg=p)


def test_tables_without_the_entry_say_so():
    for p in _core.kernel_paths():
        if p in act_paths():
            continue
        with using_kernels(p), pytest.raises(ValueError, match="no bf16-activation matmul"):
            matmul(np.zeros(64, np.uint16), np.zeros(32, np.uint16), 2, 32, 1)


# ---- the model ---------------------------------------------------------------------------------

# Llama checkpoints, and a mixture of experts (its experts run on gathered token rows)
MIXTRAL = dict(num_local_experts=8, num_experts_per_tok=3, sliding_window=16, intermediate_size=96, dtype="bfloat16")


@pytest.fixture(scope="module", params=[dict(seed=1, n_kv_heads=2, dtype="bfloat16", tie=True), dict(seed=0),
                                        dict(family="mixtral", **MIXTRAL)],
                ids=["bf16-gqa-tied", "f32-source", "mixtral-bf16"])
def bf16_file(request, hf_checkpoint, family_checkpoint, converted):
    kw = dict(request.param)
    family = kw.pop("family", None)
    ck = family_checkpoint(family, **kw) if family else hf_checkpoint(**kw)
    path = converted(ck, "bf16")
    ids = [1] + [int(i) for i in np.random.default_rng(7).integers(3, ck.vocab_size, 63)]
    import torch

    ref_model = checkpoints.rounded_reference(ck.model, "bf16")  # the numbers the file holds
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()
    return path, ids, ref


def test_logits_within_bounds_of_transformers(bf16_file):
    path, ids, ref = bf16_file
    exact = lmpack.load(path, threads=2).logits(ids)
    got = lmpack.load(path, threads=2, activations="bf16").logits(ids)
    err = float(np.abs(got.astype(np.float64) - ref).max() / ref.std())
    k = kl(ref, got)
    assert err < REL_BOUND and k.mean() < MEAN_KL_BOUND and k.max() < MAX_KL_BOUND, (err, k.mean(), k.max())
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= TOP1_BOUND
    # the exact path stays exact, and the mode does change the numbers where it runs
    assert float(np.abs(exact - ref).max() / ref.std()) < 1e-3
    if "avx512" in act_paths() and _core.kernel_path() == "avx512":
        assert not np.array_equal(exact, got)


def test_same_bits_at_any_thread_count_and_token_feeding(bf16_file):
    """Per table: 1, 2 and 3 threads agree; and a prompt fed one token at a time (the GEMV) gives
    the bits of the whole prompt in one pass (the prompt tiles)."""
    path, ids, _ = bf16_file
    ids = ids[:24]
    for table in _core.kernel_paths():
        with using_kernels(table):
            outs = [lmpack.load(path, threads=t, activations="bf16").logits(ids) for t in (1, 2, 3)]
            np.testing.assert_array_equal(outs[0], outs[1], err_msg=table)
            np.testing.assert_array_equal(outs[0], outs[2], err_msg=table)
            m = lmpack.load(path, threads=2, activations="bf16")
            stepwise = np.stack([m.forward([t], pos=i)[-1] for i, t in enumerate(ids)])
            if table == "amx":  # amx's prompt tiles are not its GEMV (kernels.h); exact mode there
                np.testing.assert_allclose(stepwise, outs[0], rtol=1e-4, atol=1e-4 * np.abs(outs[0]).max())
            else:
                np.testing.assert_array_equal(stepwise, outs[0], err_msg=table)
            # the model reports the mode that runs, not the one asked for
            assert m.activations == ("bf16" if table in act_paths() else "f32"), table
            if table not in act_paths():  # falls back to the exact path, bit for bit
                np.testing.assert_array_equal(outs[0], lmpack.load(path, threads=2).logits(ids), err_msg=table)


def test_other_weight_types_are_untouched(hf_checkpoint, converted):
    ck = hf_checkpoint()
    ids = [1, 5, 9, 200, 17]
    for dtype in ("f32", "q8_0"):
        path = converted(ck, dtype)
        np.testing.assert_array_equal(lmpack.load(path, threads=2, activations="bf16").logits(ids),
                                      lmpack.load(path, threads=2).logits(ids), err_msg=dtype)


def test_bad_value_is_refused(tiny_lmp):
    with pytest.raises(LmpackError, match="activations must be one of f32, bf16"):
        lmpack.load(tiny_lmp, activations="fp8")
    assert lmpack.load(tiny_lmp).activations == "f32"


def test_cli_run_takes_the_option(hf_checkpoint, converted, run_lmpack):
    path = converted(hf_checkpoint(seed=1, n_kv_heads=2, dtype="bfloat16", tie=True), "bf16")
    r = run_lmpack("run", str(path), "-p", "hello", "-n", "4", "--temperature", "0", "--activations", "bf16",
                   "-t", "2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("hello")
    r = run_lmpack("run", str(path), "-p", "hello", "-n", "4", "--activations", "f16")
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == ["error: activations must be one of f32, bf16, got 'f16'"]
    assert "Traceback" not in r.stderr
