"""GGUF out and back in for each family with a GGUF row beyond Llama (Mistral, Qwen2, Qwen3):
HF -> GGUF with lmpack, read with gguf-py (architecture, names, the family's extra tensors: Qwen2's
q/k/v biases, Qwen3's q/k norms), then GGUF -> `.lmp` must hold the direct conversion's bytes and
give its logits bit for bit. Families llama.cpp's matching architecture cannot run as lmpack does
(a sliding window it would ignore) and families without a row are refused in one line.
"""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from lmpack.convert import convert  # noqa: E402
from lmpack.formats.lmp import LmpReader  # noqa: E402
from test_e2e_hf import token_ids  # noqa: E402

FAMILIES = {
    # model_type: (kwargs, GGUF architecture, architecture read back, a tensor only this family has)
    "mistral": (dict(sliding_window=4096), "llama", "llama", None),
    "qwen2": (dict(tie=True), "qwen2", "qwen2", "blk.0.attn_q.bias"),
    "qwen3": (dict(head_dim=64), "qwen3", "qwen3", "blk.1.attn_k_norm.weight"),
}


@pytest.mark.parametrize("model_type", list(FAMILIES))
@pytest.mark.parametrize("dtype", ["q8_0", "bf16"])
def test_family_round_trip(model_type, dtype, family_checkpoint, converted, tmp_path):
    import lmpack

    kwargs, arch, back_arch, special = FAMILIES[model_type]
    ckpt = family_checkpoint(model_type, dtype="bfloat16", **kwargs)
    out = convert(ckpt.path, tmp_path / "m.gguf", dtype=dtype)
    r = gguf.GGUFReader(out)
    assert r.fields["general.architecture"].contents() == arch
    names = {t.name for t in r.tensors}
    if special:
        assert special in names
    assert ("output.weight" in names) == (not kwargs.get("tie", False))
    back = convert(out, tmp_path / "back.lmp")
    direct = converted(ckpt, dtype)
    with LmpReader(back) as a, LmpReader(direct) as b:
        assert a.config.architecture == back_arch
        for e in b.tensors:
            assert bytes(a.tensor_bytes(e.name)) == bytes(b.tensor_bytes(e.name)), e.name
    ids = token_ids(ckpt.vocab_size, n=32)
    with lmpack.load(back) as a, lmpack.load(direct) as b:
        assert np.array_equal(a.logits(ids), b.logits(ids))


def test_unsupported_families_are_refused(family_checkpoint, tmp_path, run_lmpack):
    ckpt = family_checkpoint("mistral", sliding_window=64)
    res = run_lmpack("convert", ckpt.path, "-o", tmp_path / "m.gguf")
    assert res.returncode == 1 and "sliding-window" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    ckpt = family_checkpoint("olmo2")
    res = run_lmpack("convert", ckpt.path, "-o", tmp_path / "o.gguf")
    assert res.returncode == 1 and "not supported" in res.stderr
    assert not list(tmp_path.iterdir())
