"""`lmpack quantize` and `convert --dtype q8_0`: same bytes either way, --keep, and refusals."""
from __future__ import annotations

import numpy as np

from lmpack.formats.lmp import LmpReader, Q8Tensor


def test_quantize_equals_convert_q8_0(tiny_hf, tiny_lmp, tmp_path, run_lmpack):
    direct = tmp_path / "direct.lmp"
    requant = tmp_path / "requant.lmp"
    assert run_lmpack("convert", tiny_hf.path, "-o", direct, "--dtype", "q8_0").returncode == 0
    p = run_lmpack("quantize", tiny_lmp, "-o", requant, "--type", "q8_0")
    assert p.returncode == 0, p.stderr
    with LmpReader(direct) as a, LmpReader(requant) as b:
        assert [(t.name, t.dtype, t.shape, t.crc32c) for t in a.tensors] == \
               [(t.name, t.dtype, t.shape, t.crc32c) for t in b.tensors]
        assert {t.dtype for t in a.tensors if len(t.shape) == 2} == {"q8_0"}
        assert {t.dtype for t in a.tensors if len(t.shape) == 1} == {"f32"}


def test_keep_patterns(tiny_hf, tiny_lmp, tmp_path, run_lmpack):
    out = tmp_path / "kept.lmp"
    p = run_lmpack("quantize", tiny_lmp, "-o", out, "--keep", "lm_head.weight", "--keep", "model.embed_*")
    assert p.returncode == 0, p.stderr
    with LmpReader(out) as r, LmpReader(tiny_lmp) as src:
        kept = {t.name for t in r.tensors if t.dtype == "f32" and len(t.shape) == 2}
        assert kept == {"lm_head.weight", "model.embed_tokens.weight"}
        np.testing.assert_array_equal(r.tensor("lm_head.weight"), src.tensor("lm_head.weight"))
        q = r.tensor("model.layers.0.mlp.up_proj.weight")
        assert isinstance(q, Q8Tensor)
        w = src.tensor("model.layers.0.mlp.up_proj.weight")
        # half a step, plus what storing d as fp16 (relative error <= 2^-11) costs the |q| <= 127 multiple
        bound = np.repeat(q.scales.astype(np.float32), 32, axis=1) * (0.5 + 127 * 2 ** -11) * (1 + 2 ** -10)
        assert (np.abs(q.dequantize() - w) <= bound + 1e-12).all()
    out2 = tmp_path / "kept2.lmp"
    p = run_lmpack("convert", tiny_hf.path, "-o", out2, "--dtype", "q8_0", "--keep", "*.down_proj.weight")
    assert p.returncode == 0, p.stderr
    with LmpReader(out2) as r:
        assert {t.name for t in r.tensors if t.dtype == "f32" and len(t.shape) == 2} == \
               {t.name for t in r.tensors if t.name.endswith("down_proj.weight")}


def test_quantize_refusals(tiny_lmp, tmp_path, run_lmpack):
    q8 = tmp_path / "q.lmp"
    assert run_lmpack("quantize", tiny_lmp, "-o", q8).returncode == 0
    for args, words in ((("quantize", q8, "-o", tmp_path / "again.lmp"), "already q8_0"),
                        (("quantize", tiny_lmp, "-o", tiny_lmp), "different file"),
                        (("quantize", tiny_lmp, "-o", tmp_path / "x.lmp", "--type", "q4_0"), "unknown quantization type")):
        p = run_lmpack(*args)
        assert p.returncode == 1 and p.stderr.startswith("error:") and words in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    assert not (tmp_path / "again.lmp").exists() and not (tmp_path / "x.lmp").exists()
