"""Q8_0 files against the f32 oracle: top-1 agreement, KL divergence and perplexity.

Bounds, and why: a Q8_0 weight is off by at most half a step of its block, |e| <= max|x|/254
(plus the fp16 rounding of the scale, 2^-11 relative), so each matmul output carries a relative
error of roughly 0.2-0.3% that compounds over layers. On the random test models (init std 0.15,
so their logits are large and their softmax peaky, which magnifies any error) five seeds gave
mean KL 0.003-0.006 nats, max KL <= 0.03 and top-1 agreement 0.86-0.94 against transformers'
f32 logits; the bounds below leave about 2x headroom. Trained models are far less sensitive:
perplexity moves by well under 1% (checked on the real Llama 2 vocabulary and on the shipped
default model when present).
"""
from __future__ import annotations

import numpy as np
import pytest

import lmpack

MEAN_KL_BOUND = 0.012
MAX_KL_BOUND = 0.06
TOP1_BOUND = 0.80


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def kl(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    lp, lq = log_softmax(ref), log_softmax(got)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    lp = log_softmax(logits[:-1])
    return float(np.exp(-lp[np.arange(len(ids) - 1), ids[1:]].mean()))


@pytest.mark.parametrize("variant", [
    dict(seed=0),
    dict(seed=1, n_kv_heads=2, dtype="bfloat16", tie=True),
])
def test_q8_0_logits_close_to_f32_oracle(hf_checkpoint, converted, variant):
    ck = hf_checkpoint(**variant)
    m = lmpack.load(converted(ck, "q8_0"), threads=2)
    ids = [1] + [int(i) for i in np.random.default_rng(7).integers(3, ck.vocab_size, 63)]
    ref, got = ck.reference_logits(ids), m.logits(ids)
    k = kl(ref, got)
    assert k.mean() <= MEAN_KL_BOUND, k.mean()
    assert k.max() <= MAX_KL_BOUND, k.max()
    assert (ref.argmax(-1) == got.argmax(-1)).mean() >= TOP1_BOUND
    # and the f32 file of the same checkpoint is exact, so the difference is the quantization's
    exact = lmpack.load(converted(ck, "f32" if ck.dtype == "float32" else "auto"), threads=2).logits(ids)
    assert kl(ref, exact).max() < 1e-6


TEXT = ("The quick brown fox jumps over the lazy dog. Python is a programming language that lets you "
        "work quickly and integrate systems more effectively. A list is a mutable sequence.")


def test_q8_0_perplexity_with_llama2_vocabulary(hf_checkpoint, converted, llama2_tokenizer_path):
    ck = hf_checkpoint(tokenizer=llama2_tokenizer_path, dims=dict(dim=64, n_layers=2, n_heads=4, ffn_dim=160))
    f32 = lmpack.load(converted(ck, "auto"), threads=2)
    q8 = lmpack.load(converted(ck, "q8_0"), threads=2)
    ids = f32.tokenizer.encode(TEXT)
    p32, p8 = perplexity(f32.logits(ids), ids), perplexity(q8.logits(ids), ids)
    assert abs(p8 - p32) / p32 < 0.02, (p32, p8)


def test_q8_0_perplexity_of_default_model(tmp_path):
    from lmpack import default_model
    from lmpack.convert import convert

    if not (default_model.path() / "model.safetensors").is_file():
        pytest.skip("the default model is not in this checkout")
    full = convert(default_model.path(), tmp_path / "f.lmp", dtype="f32")
    q8 = convert(default_model.path(), tmp_path / "q.lmp", dtype="q8_0")
    mf, mq = lmpack.load(full, threads=2), lmpack.load(q8, threads=2)
    text = ("The for statement is used to iterate over the elements of a sequence (such as a string, "
            "tuple or list) or other iterable object.")
    ids = mf.tokenizer.encode(text)
    pf, pq = perplexity(mf.logits(ids), ids), perplexity(mq.logits(ids), ids)
    assert pf < 200, pf  # a trained model: far below the vocabulary size
    assert abs(pq - pf) / pf < 0.01, (pf, pq)
