"""GGUF in: files written by gguf-py itself (independently of lmpack's writer) and by `lmpack export`,
converted to `.lmp` and compared with the direct HF -> `.lmp` conversion of the same checkpoint:
the same tensor bytes and the same logits bit for bit for F32/F16/BF16/Q8_0 weights (the runtime
then runs the same numbers with the same kernels), the same config, the same tokenization. Other
ggml types are dequantized with gguf-py's dequantizers; that is checked against transformers.
"""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

import checkpoints  # noqa: E402
from lmpack.convert import convert  # noqa: E402
from lmpack.formats.lmp import LmpReader  # noqa: E402
from test_e2e_hf import F32_TOL, assert_logits_close, token_ids  # noqa: E402
from test_gguf_export import expected_bytes, llama_cpp_permute, gguf_name  # noqa: E402

T = gguf.GGMLQuantizationType


def write_with_gguf_py(ckpt, path, qtype, tokenizer_path):
    """A llama GGUF of the checkpoint written with gguf-py alone (keys, tokenizer and tensors by hand)."""
    import sentencepiece as spm

    cfg = ckpt.model.config
    w = gguf.GGUFWriter(path, "llama")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_path))
    n = sp.get_piece_size()
    types = [gguf.TokenType.UNKNOWN if sp.is_unknown(i) else gguf.TokenType.CONTROL if sp.is_control(i)
             else gguf.TokenType.BYTE if sp.is_byte(i) else gguf.TokenType.NORMAL for i in range(n)]
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.id_to_piece(i).encode() for i in range(n)])
    w.add_token_scores([sp.get_score(i) for i in range(n)])
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    for name, data in expected_bytes(ckpt, qtype).items():
        raw = np.frombuffer(data, np.uint8)
        if name.endswith("norm.weight"):
            w.add_tensor(name, raw.view(np.float32).copy())
        else:
            rows = {"token_embd.weight": cfg.vocab_size, "output.weight": cfg.vocab_size}.get(name)
            if rows is None:
                rows = dict(ckpt.model.named_parameters())[_hf_name(name, ckpt)].shape[0]
            w.add_tensor(name, raw.reshape(rows, -1).copy(), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _hf_name(gname: str, ckpt) -> str:
    for name in dict(ckpt.model.named_parameters()):
        if gguf_name(name) == gname:
            return name
    raise KeyError(gname)


def _same_files(a, b):
    with LmpReader(a) as ra, LmpReader(b) as rb:
        assert ra.config.to_dict() == rb.config.to_dict()
        assert [(e.name, e.dtype, e.shape) for e in ra.tensors] == [(e.name, e.dtype, e.shape) for e in rb.tensors]
        for e in ra.tensors:
            assert bytes(ra.tensor_bytes(e.name)) == bytes(rb.tensor_bytes(e.name)), e.name


@pytest.mark.parametrize("src_dtype,qtype,lmp_dtype", [
    ("bfloat16", T.Q8_0, "q8_0"),
    ("bfloat16", T.BF16, "auto"),
    ("float32", T.F16, "f16"),
    ("float32", T.F32, "auto"),
])
def test_gguf_py_file_converts_to_the_same_bytes_and_logits(hf_checkpoint, converted, tmp_path, sp_model_path,
                                                             src_dtype, qtype, lmp_dtype):
    import lmpack

    ckpt = hf_checkpoint(dtype=src_dtype, n_kv_heads=2)
    direct = converted(ckpt, lmp_dtype)
    src = write_with_gguf_py(ckpt, tmp_path / "m.gguf", qtype, sp_model_path)
    out = convert(src, tmp_path / "m.lmp")
    with LmpReader(out) as r, LmpReader(direct) as d:
        assert r.config.to_dict() == d.config.to_dict()
        for e in d.tensors:
            assert bytes(r.tensor_bytes(e.name)) == bytes(d.tensor_bytes(e.name)), e.name
    ids = token_ids(ckpt.vocab_size)
    a, b = lmpack.load(out), lmpack.load(direct)
    assert np.array_equal(a.logits(ids), b.logits(ids))
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model_path))
    for line in checkpoints.corpus_lines(200) + ["  two  spaces  ", "🦙🦙 ünïcode 2024", ""]:
        assert a.tokenizer.encode(line, bos=False) == sp.encode(line), line
    a.close()
    b.close()


@pytest.mark.parametrize("kwargs,dtype", [
    (dict(dtype="bfloat16", n_kv_heads=2, tie=True, rope_scaling=checkpoints.LLAMA3_ROPE), "q8_0"),
    (dict(n_kv_heads=1, rope_scaling=checkpoints.LINEAR_ROPE, rope_theta=500000.0), "auto"),
    (dict(n_kv_heads=2, dims=dict(head_dim=64)), "bf16"),
])
def test_lmpack_export_then_import_is_lossless(hf_checkpoint, converted, tmp_path, run_lmpack, kwargs, dtype):
    ckpt = hf_checkpoint(**kwargs)
    direct = converted(ckpt, dtype)
    res = run_lmpack("export", direct, "-o", tmp_path / "m.gguf")
    assert res.returncode == 0, res.stderr
    res = run_lmpack("convert", tmp_path / "m.gguf", "-o", tmp_path / "back.lmp")
    assert res.returncode == 0, res.stderr
    _same_files(direct, tmp_path / "back.lmp")


def test_other_ggml_types_are_dequantized_on_request(hf_checkpoint, tmp_path, sp_model_path, run_lmpack):
    import copy

    import lmpack

    ckpt = hf_checkpoint(n_kv_heads=2)
    src = write_with_gguf_py(ckpt, tmp_path / "q4.gguf", T.Q4_0, sp_model_path)
    res = run_lmpack("convert", src, "-o", tmp_path / "auto.lmp")
    assert res.returncode == 1 and "Q4_0" in res.stderr and "--dtype" in res.stderr
    assert not (tmp_path / "auto.lmp").exists()
    res = run_lmpack("convert", src, "-o", tmp_path / "f32.lmp", "--dtype", "f32")
    assert res.returncode == 0, res.stderr
    assert "dequantized" in res.stderr and "Q4_0" in res.stderr

    # the reference: transformers with every matrix replaced by gguf-py's dequantization of its Q4_0
    ref = copy.deepcopy(ckpt.model)
    cfg = ref.config
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.dim() < 2:
                continue
            x = p.detach().numpy()
            heads = {"q_proj": cfg.num_attention_heads, "k_proj": cfg.num_key_value_heads}.get(name.split(".")[-2])
            if heads:
                x = llama_cpp_permute(x, heads)
            deq = gguf.quants.dequantize(gguf.quants.quantize(np.ascontiguousarray(x), T.Q4_0), T.Q4_0)
            if heads:  # back to HF order
                deq = deq.reshape(heads, deq.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(deq.shape)
            p.copy_(torch.from_numpy(np.ascontiguousarray(deq)))
    ids = token_ids(ckpt.vocab_size)
    with torch.no_grad():
        want = ref(torch.tensor([ids]), use_cache=False).logits[0].numpy()
    m = lmpack.load(tmp_path / "f32.lmp")
    assert_logits_close(m.logits(ids), want, F32_TOL, "Q4_0 GGUF dequantized to f32")
    m.close()


def test_verify_against_a_gguf(hf_checkpoint, tmp_path, run_lmpack):
    ckpt = hf_checkpoint(dtype="bfloat16", n_kv_heads=2)
    gg = convert(ckpt.path, tmp_path / "m.gguf", dtype="q8_0")
    lmp = convert(gg, tmp_path / "m.lmp")
    res = run_lmpack("verify", lmp, "--against", gg, "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    import json

    assert json.loads(res.stdout)["ok"] is True


def test_gguf_to_gguf_keeps_every_tensor_byte(hf_checkpoint, tmp_path, sp_model_path):
    ckpt = hf_checkpoint(dtype="bfloat16", n_kv_heads=2)
    src = write_with_gguf_py(ckpt, tmp_path / "in.gguf", T.Q8_0, sp_model_path)
    out = convert(src, tmp_path / "out.gguf")
    a = {t.name: t for t in gguf.GGUFReader(src).tensors}
    b = {t.name: t for t in gguf.GGUFReader(out).tensors}
    assert sorted(a) == sorted(b)
    for name, t in a.items():
        assert b[name].tensor_type == t.tensor_type, name
        assert bytes(b[name].data.tobytes()) == bytes(t.data.tobytes()), name


def test_output_that_is_an_input_is_refused(hf_checkpoint, converted, tmp_path, run_lmpack, sp_model_path):
    """GGUF and llama2.c sources are single files: writing the output over one of them (or over the
    tokenizer a llama2.c file names) must be refused, whatever container the output is."""
    direct = converted(hf_checkpoint(), "auto")
    gguf_path = tmp_path / "m.gguf"
    assert run_lmpack("export", direct, "-o", gguf_path).returncode == 0
    before = gguf_path.read_bytes()
    for out in (gguf_path, tmp_path / "link.gguf"):
        if out.name == "link.gguf":
            out.symlink_to(gguf_path)
        res = run_lmpack("convert", gguf_path, "-o", out)
        assert res.returncode == 1 and "is one of the input files" in res.stderr, res.stderr
        assert gguf_path.read_bytes() == before
    link = tmp_path / "lmp-link.gguf"
    link.symlink_to(direct)
    size = direct.stat().st_size
    res = run_lmpack("export", direct, "-o", link)
    assert res.returncode == 1 and "input" in res.stderr, res.stderr
    assert direct.stat().st_size == size
