"""MetaSource against its HF twin: a Meta folder built from a random HF Llama (q/k rows back in
Meta's interleaved order, split over model-parallel ranks, saved with torch.save) must yield
exactly the HF tensors and config, for MHA and GQA, both embedding split axes, one and two ranks."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import torch_sources

torch = pytest.importorskip("torch")

from lmpack.convert.hf import read_hf_config  # noqa: E402
from lmpack.convert.meta import MetaSource, meta_to_hf_rope  # noqa: E402
from lmpack.errors import LmpackError  # noqa: E402

CONFIG_KEYS = ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "vocab_size", "norm_eps",
               "rope_theta", "bos_id", "eos_ids", "tie_embeddings")


def reference(hf_folder):
    """The HF twin's tensors as numpy (bf16 as uint16 bits, like a Source)."""
    out = {}
    for name, t in torch_sources.hf_state_dict(hf_folder).items():
        out[name] = t.view(torch.uint16).numpy() if t.dtype == torch.bfloat16 else t.numpy()
    return out


def assert_same_as_hf(src: MetaSource, hf_folder) -> None:
    ref = reference(hf_folder)
    hf_cfg = read_hf_config(hf_folder)
    cfg = src.config()
    for key in CONFIG_KEYS:
        assert getattr(cfg, key) == getattr(hf_cfg, key), key
    if hf_cfg.tie_embeddings:
        ref["lm_head.weight"] = ref["model.embed_tokens.weight"]
    specs = src.tensor_specs()
    assert {s.name for s in specs} == {n for n in ref if not n.endswith("inv_freq")}
    for spec in specs:
        got = src.load(spec.name)
        want = ref[spec.name]
        assert spec.shape == want.shape and got.shape == want.shape, spec.name
        assert got.dtype == want.dtype, spec.name
        assert got.flags.c_contiguous, spec.name
        # Bitwise: no arithmetic touches the values, only their order.
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), spec.name


@pytest.mark.parametrize("mp,embed_dim,n_kv,dtype", [
    (2, 1, None, "float32"),  # Llama 2 style: tok_embeddings split on dim 1, MHA
    (2, 0, 2, "bfloat16"),  # Llama 3 style: split on dim 0, GQA, bf16 like Meta's files
    (1, 1, 2, "float16"),  # single rank (7B/8B): no merging, views straight from the map
])
def test_meta_matches_hf_twin(hf_checkpoint, tmp_path, mp, embed_dim, n_kv, dtype):
    ckpt = hf_checkpoint(dtype=dtype, n_kv_heads=n_kv)
    folder = torch_sources.hf_to_meta(ckpt.path, tmp_path / "meta", mp=mp, embed_dim=embed_dim)
    src = MetaSource(folder)
    try:
        assert src.info.kind == "meta"
        assert [f.name for f in src.info.files] == [f"consolidated.{i:02d}.pth" for i in range(mp)]
        assert_same_as_hf(src, ckpt.path)
    finally:
        src.close()


def test_tied_hf_model_becomes_untied_meta(hf_checkpoint, tmp_path):
    ckpt = hf_checkpoint(tie=True)
    folder = torch_sources.hf_to_meta(ckpt.path, tmp_path / "meta", mp=2)
    with_src = MetaSource(folder)
    try:
        assert not with_src.config().tie_embeddings
        assert np.array_equal(with_src.load("lm_head.weight"), with_src.load("model.embed_tokens.weight"))
    finally:
        with_src.close()


def test_rope_permutation_is_hf_convention():
    # One head, head_dim 4: Meta rows are pairs (0,1),(2,3) = (x0,y0),(x1,y1); HF puts every
    # pair's first element in the first half: x0, x1, y0, y1.
    meta = np.array([[10.0], [11.0], [20.0], [21.0]], dtype=np.float32)
    out = np.empty_like(meta)
    meta_to_hf_rope(meta, 1, out)
    assert out[:, 0].tolist() == [10.0, 20.0, 11.0, 21.0]


def test_params_json_fields(hf_checkpoint, tmp_path):
    ckpt = hf_checkpoint()
    folder = torch_sources.hf_to_meta(ckpt.path, tmp_path / "m", mp=1, rope_theta=500000.0,
                                      extra_params={"use_scaled_rope": True, "max_seq_len": 1024})
    src = MetaSource(folder)
    cfg = src.config()
    src.close()
    assert cfg.rope_theta == 500000.0 and cfg.max_context == 1024
    assert cfg.rope_scaling == {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8192}
    assert cfg.vocab_size == ckpt.vocab_size  # vocab_size -1: taken from the embedding rows
    src = MetaSource(folder, rope_scaling_factor=32)
    assert src.config().rope_scaling["factor"] == 32.0
    src.close()

    params = json.loads((folder / "params.json").read_text())
    del params["use_scaled_rope"], params["max_seq_len"], params["rope_theta"]
    (folder / "params.json").write_text(json.dumps(params))
    src = MetaSource(folder)
    cfg = src.config()
    src.close()
    assert cfg.rope_theta == 10000.0 and cfg.max_context == 4096 and cfg.rope_scaling is None
    with pytest.raises(LmpackError, match="use_scaled_rope"):
        MetaSource(folder, rope_scaling_factor=32)


def _meta_copy(hf_checkpoint, tmp_path, mp=2, **kw):
    ckpt = hf_checkpoint()
    return torch_sources.hf_to_meta(ckpt.path, tmp_path / "meta", mp=mp, **kw)


def test_missing_shard_refused(hf_checkpoint, tmp_path):
    folder = _meta_copy(hf_checkpoint, tmp_path)
    shutil.move(folder / "consolidated.01.pth", folder / "consolidated.02.pth")
    with pytest.raises(LmpackError, match="shard 1 of 3 is missing"):
        MetaSource(folder)


def test_params_mismatch_refused(hf_checkpoint, tmp_path):
    folder = _meta_copy(hf_checkpoint, tmp_path)
    params = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**params, "n_layers": params["n_layers"] + 1}))
    with pytest.raises(LmpackError, match="model.layers.2.input_layernorm.weight' is missing"):
        MetaSource(folder)
    del params["norm_eps"]
    (folder / "params.json").write_text(json.dumps(params))
    with pytest.raises(LmpackError, match="missing field 'norm_eps'"):
        MetaSource(folder)
    (folder / "params.json").write_text("{not json")
    with pytest.raises(LmpackError, match="not valid JSON"):
        MetaSource(folder)


def test_replicated_norm_must_agree(hf_checkpoint, tmp_path):
    folder = _meta_copy(hf_checkpoint, tmp_path)
    shard = torch.load(folder / "consolidated.01.pth", weights_only=True)
    shard["norm.weight"] = shard["norm.weight"] + 1
    torch.save(shard, folder / "consolidated.01.pth")
    src = MetaSource(folder)
    try:
        with pytest.raises(LmpackError, match="replicated tensor 'model.norm.weight' differs"):
            src.load("model.norm.weight")
    finally:
        src.close()


def test_unexpected_and_inconsistent_tensors_refused(hf_checkpoint, tmp_path):
    folder = _meta_copy(hf_checkpoint, tmp_path)
    path = folder / "consolidated.00.pth"
    shard = torch.load(path, weights_only=True)
    torch.save({**shard, "layers.0.attention.wq.bias": torch.zeros(4)}, path)
    with pytest.raises(LmpackError, match="unexpected tensor 'layers.0.attention.wq.bias'"):
        MetaSource(folder)
    bad = dict(shard)
    bad["layers.1.feed_forward.w2.weight"] = bad["layers.1.feed_forward.w2.weight"][:-1]
    torch.save(bad, path)
    with pytest.raises(LmpackError, match="w2.weight' slices disagree"):
        MetaSource(folder)
    bad = dict(shard)
    del bad["layers.0.feed_forward.w1.weight"]
    torch.save(bad, path)
    with pytest.raises(LmpackError, match="w1.weight' is missing from this shard"):
        MetaSource(folder)


def test_non_sentencepiece_tokenizer_refused(hf_checkpoint, tmp_path):
    folder = _meta_copy(hf_checkpoint, tmp_path)
    # Llama 3's tokenizer.model is tiktoken's base64 ranks, not a sentencepiece proto.
    (folder / "tokenizer.model").write_text("IQ== 0\nIg== 1\n")
    # Meta folders take a tiktoken file (Llama 3), but only a complete one.
    with pytest.raises(LmpackError, match="tiktoken file where byte 0x00 is not a token"):
        MetaSource(folder)
