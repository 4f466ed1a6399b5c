"""End to end from PyTorch-pickle sources: an HF `.bin` folder and a Meta folder, each built from a
random transformers Llama, go through `lmpack.convert.convert` and `lmpack.load(...).logits`, and
must give transformers' logits (f32 within 1e-4 x std, bf16 within 1e-3 x std)."""
from __future__ import annotations

import pytest

import torch_sources
from test_e2e_hf import F32_TOL, HALF_TOL, assert_logits_close, token_ids

pytest.importorskip("transformers")
pytest.importorskip("torch")

VARIANTS = {
    "bin-f32-gqa-3shards": ("bin", dict(n_kv_heads=2), dict(shards=3), F32_TOL),
    "bin-bf16-tied": ("bin", dict(dtype="bfloat16", tie=True), dict(tie_saved=True), HALF_TOL),
    "meta-f32-mha-mp2-embed-dim1": ("meta", dict(rope_theta=500000.0), dict(mp=2, embed_dim=1), F32_TOL),
    "meta-bf16-gqa-mp2-embed-dim0": ("meta", dict(dtype="bfloat16", n_kv_heads=2), dict(mp=2, embed_dim=0), HALF_TOL),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_match_transformers(variant, hf_checkpoint, converted, tmp_path):
    import lmpack

    kind, hf_kwargs, build_kwargs, tol = VARIANTS[variant]
    ckpt = hf_checkpoint(**hf_kwargs)
    build = torch_sources.hf_to_bin if kind == "bin" else torch_sources.hf_to_meta
    folder = build(ckpt.path, tmp_path / kind, **build_kwargs)
    m = lmpack.load(converted(folder))
    assert m.config.tie_embeddings == (kind == "bin" and bool(hf_kwargs.get("tie")))
    ids = token_ids(ckpt.vocab_size)
    assert_logits_close(m.logits(ids), ckpt.reference_logits(ids), tol, variant)
