"""GGUF out: HF -> GGUF and HF -> .lmp -> GGUF, read back with gguf-py's own GGUFReader.

The oracle for every tensor's bytes is gguf-py (the format's library): its Q8_0 quantizer and its
BF16/F16 casts applied to the source's float32 numbers, with the q/k rows permuted as llama.cpp's
own converter does (`reshape(heads, 2, hd/2, cols).swapaxes(1, 2)`), written here independently
of lmpack. Metadata keys are checked for presence and value type.
"""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from lmpack.convert import convert  # noqa: E402

T = gguf.GGMLQuantizationType
V = gguf.GGUFValueType


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf: str) -> str:
    """HF -> GGUF names as llama.cpp's llama arch spells them (kept here, independent of lmpack)."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    parts = hf.split(".")
    sub = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
           "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
           "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}[".".join(parts[3:-1])]
    return f"blk.{parts[2]}.{sub}.weight"


def expected_bytes(ckpt, qtype) -> dict[str, bytes]:
    """{gguf name: bytes} that gguf-py gives for the checkpoint's numbers."""
    cfg = ckpt.model.config
    out = {}
    for name, p in ckpt.model.state_dict().items():
        if "rotary_emb" in name:
            continue
        x = p.detach().float().numpy()
        if name.endswith("q_proj.weight"):
            x = llama_cpp_permute(x, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            x = llama_cpp_permute(x, cfg.num_key_value_heads)
        t = T.F32 if x.ndim == 1 else qtype
        out[gguf_name(name)] = gguf.quants.quantize(np.ascontiguousarray(x, np.float32), t).tobytes()
    if cfg.tie_word_embeddings:
        out.pop("output.weight", None)
    return out


def read_back(path):
    r = gguf.GGUFReader(path)
    return r, {t.name: t for t in r.tensors}


@pytest.mark.parametrize("src_dtype,out_dtype,qtype", [
    ("bfloat16", "q8_0", T.Q8_0),
    ("bfloat16", "auto", T.BF16),
    ("float32", "f16", T.F16),
    ("float32", "auto", T.F32),
])
def test_hf_to_gguf_tensor_bytes_equal_gguf_py(hf_checkpoint, tmp_path, src_dtype, out_dtype, qtype):
    ckpt = hf_checkpoint(dtype=src_dtype, n_kv_heads=2)
    out = convert(ckpt.path, tmp_path / "m.gguf", dtype=out_dtype)
    r, tensors = read_back(out)
    want = expected_bytes(ckpt, qtype)
    assert sorted(tensors) == sorted(want)
    for name, data in want.items():
        t = tensors[name]
        assert t.tensor_type == (T.F32 if name.endswith("norm.weight") else qtype), name
        assert bytes(t.data.tobytes()) == data, name


def test_lmp_q8_0_exports_the_same_bytes_without_requantizing(hf_checkpoint, converted, tmp_path, run_lmpack):
    ckpt = hf_checkpoint(dtype="bfloat16", n_kv_heads=2)
    lmp = converted(ckpt, "q8_0")
    res = run_lmpack("export", lmp, "-o", tmp_path / "m.gguf")
    assert res.returncode == 0, res.stderr
    _, tensors = read_back(tmp_path / "m.gguf")
    for name, data in expected_bytes(ckpt, T.Q8_0).items():
        assert bytes(tensors[name].data.tobytes()) == data, name

    # the q8_0 planes of the .lmp are exactly the GGUF blocks' scales and quants
    from lmpack.formats.lmp import LmpReader

    with LmpReader(lmp) as lr:
        q, d = lr.tensor("model.layers.1.mlp.down_proj.weight")
        blocks = np.asarray(tensors["blk.1.ffn_down.weight"].data).reshape(q.shape[0], -1, 34)
        assert np.array_equal(blocks[:, :, 2:].view(np.int8).reshape(q.shape), q)
        assert np.array_equal(blocks[:, :, :2].copy().view(np.float16)[..., 0], d)


def test_metadata_keys_and_types(hf_checkpoint, tmp_path, sp_model_path):
    import sentencepiece as spm

    ckpt = hf_checkpoint(dtype="bfloat16", n_kv_heads=2)
    r, _ = read_back(convert(ckpt.path, tmp_path / "m.gguf", dtype="q8_0"))
    cfg = ckpt.model.config
    want = {
        "general.architecture": (V.STRING, "llama"),
        "general.file_type": (V.UINT32, int(gguf.LlamaFileType.MOSTLY_Q8_0)),
        "general.quantization_version": (V.UINT32, gguf.GGML_QUANT_VERSION),
        "llama.context_length": (V.UINT32, cfg.max_position_embeddings),
        "llama.embedding_length": (V.UINT32, cfg.hidden_size),
        "llama.block_count": (V.UINT32, cfg.num_hidden_layers),
        "llama.feed_forward_length": (V.UINT32, cfg.intermediate_size),
        "llama.attention.head_count": (V.UINT32, cfg.num_attention_heads),
        "llama.attention.head_count_kv": (V.UINT32, cfg.num_key_value_heads),
        "llama.rope.dimension_count": (V.UINT32, cfg.hidden_size // cfg.num_attention_heads),
        "llama.attention.layer_norm_rms_epsilon": (V.FLOAT32, pytest.approx(cfg.rms_norm_eps, rel=1e-6)),
        "llama.rope.freq_base": (V.FLOAT32, 10000.0),
        "tokenizer.ggml.model": (V.STRING, "llama"),
        "tokenizer.ggml.bos_token_id": (V.UINT32, 1),
        "tokenizer.ggml.eos_token_id": (V.UINT32, 2),
        "tokenizer.ggml.add_bos_token": (V.BOOL, True),
        "tokenizer.ggml.add_space_prefix": (V.BOOL, True),
    }
    for key, (vtype, value) in want.items():
        field = r.fields[key]
        assert field.types == [vtype], key
        assert field.contents() == value, key
    sp = spm.SentencePieceProcessor(model_file=str(sp_model_path))
    n = sp.get_piece_size()
    assert r.fields["tokenizer.ggml.tokens"].types == [V.ARRAY, V.STRING]
    assert r.fields["tokenizer.ggml.tokens"].contents() == [sp.id_to_piece(i) for i in range(n)]
    assert r.fields["tokenizer.ggml.scores"].types == [V.ARRAY, V.FLOAT32]
    assert np.array_equal(np.float32(r.fields["tokenizer.ggml.scores"].contents()),
                          np.float32([sp.get_score(i) for i in range(n)]))
    types = r.fields["tokenizer.ggml.token_type"].contents()
    assert types[sp.unk_id()] == gguf.TokenType.UNKNOWN and types[sp.bos_id()] == gguf.TokenType.CONTROL
    assert all(types[i] == gguf.TokenType.BYTE for i in range(n) if sp.is_byte(i))
    assert sum(t == gguf.TokenType.NORMAL for t in types) == n - 3 - sum(sp.is_byte(i) for i in range(n))


def test_tied_padded_and_scaled_models(hf_checkpoint, tmp_path, sp_model_path):
    from checkpoints import LLAMA3_ROPE, LINEAR_ROPE, tokenizer_vocab_size

    n_tok = tokenizer_vocab_size(sp_model_path)
    ckpt = hf_checkpoint(tie=True, vocab=n_tok + 16, rope_scaling=LLAMA3_ROPE)
    r, tensors = read_back(convert(ckpt.path, tmp_path / "tied.gguf"))
    assert "output.weight" not in tensors
    assert len(r.fields["tokenizer.ggml.tokens"].contents()) == n_tok + 16
    assert r.fields["tokenizer.ggml.token_type"].contents()[-1] == gguf.TokenType.UNUSED
    # llama.cpp's converter stores Llama 3 scaling as per-frequency divisors (1 .. factor)
    freqs = np.asarray(tensors["rope_freqs.weight"].data)
    assert freqs.shape == (16,) and freqs[0] == 1.0 and freqs[-1] == LLAMA3_ROPE["factor"]
    assert ((freqs > 1) & (freqs < LLAMA3_ROPE["factor"])).any()

    lin = hf_checkpoint(rope_scaling=LINEAR_ROPE)
    r, tensors = read_back(convert(lin.path, tmp_path / "lin.gguf"))
    assert r.fields["llama.rope.scaling.type"].contents() == "linear"
    assert r.fields["llama.rope.scaling.factor"].contents() == LINEAR_ROPE["factor"]
    assert "rope_freqs.weight" not in tensors


def test_export_failures_leave_nothing(tiny_lmp, tmp_path, run_lmpack):
    res = run_lmpack("export", tiny_lmp, "-o", tmp_path / "m.bin")
    assert res.returncode == 1 and "gguf" in res.stderr.lower() and "Traceback" not in res.stderr
    res = run_lmpack("export", tmp_path / "missing.lmp", "-o", tmp_path / "m.gguf")
    assert res.returncode == 1 and res.stderr.startswith("error:") and "Traceback" not in res.stderr
    res = run_lmpack("export", tiny_lmp, "-o", tmp_path / "nofolder" / "m.gguf")
    assert res.returncode == 1 and "does not exist" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_q8_0_relayout_round_trips_and_checks_sizes():
    from lmpack import _core

    rng = np.random.default_rng(3)
    q = rng.integers(-127, 128, size=(5, 96), dtype=np.int8)
    d = rng.standard_normal((5, 3)).astype(np.float16)
    blocks = np.empty((5, 3, 34), np.uint8)
    _core.q8_0_relayout(q, d, blocks, True)
    assert np.array_equal(blocks[:, :, 2:].view(np.int8), q.reshape(5, 3, 32))
    assert np.array_equal(blocks[:, :, :2].copy().view(np.float16)[..., 0], d)
    q2, d2 = np.empty_like(q), np.empty_like(d)
    _core.q8_0_relayout(q2, d2, blocks, False)
    assert np.array_equal(q2, q) and np.array_equal(d2, d)
    with pytest.raises(ValueError, match="sizes do not match"):
        _core.q8_0_relayout(q, d, blocks[:4], True)
    with pytest.raises(ValueError, match="sizes do not match"):
        _core.q8_0_relayout(q.reshape(-1)[:400], d, blocks, True)


def test_llama2_chat_format_travels_as_a_template(tiny_lmp, tmp_path):
    import jinja2

    from lmpack.convert.gguf_export import export
    from lmpack.convert.gguf_source import GgufSource
    from lmpack.convert.lmp_source import LmpSource

    src = LmpSource(tiny_lmp)
    src.config().chat_format = "llama2"
    try:
        export(src, tmp_path / "chat.gguf")
    finally:
        src.close()
    r, _ = read_back(tmp_path / "chat.gguf")
    template = r.fields["tokenizer.chat_template"].contents()
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}]
    text = jinja2.Environment().from_string(template).render(messages=msgs, bos_token="<s>", eos_token="</s>")
    assert text == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Bye [/INST]"
    back = GgufSource(tmp_path / "chat.gguf")
    assert back.config().chat_format == "llama2"
    back.close()
