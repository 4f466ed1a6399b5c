"""llama2.c checkpoints in: v0 (legacy fp32), v1 (fp32) and v2 (int8 groups) files written here from
a transformers model, following the layouts of llama2.c's export.py (legacy_export,
version1_export, version2_export and its quantize_q80) and tokenizer.py, converted by lmpack and
compared with transformers' logits for the same numbers. The writers here use torch and struct
only, never lmpack.
"""
from __future__ import annotations

import struct

import numpy as np
import pytest

import checkpoints
from test_e2e_hf import F32_TOL, assert_logits_close, token_ids

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def _f32(t) -> bytes:
    return t.detach().float().contiguous().numpy().astype("<f4").tobytes()


def _meta_qk(w, n_heads):
    """HF's half-split q/k rows back to Meta's interleaved order (llama2.c's permute_reverse)."""
    return w.view(n_heads, 2, w.shape[0] // n_heads // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)


def _weights(model):
    """llama2.c's weight lists, by kind, from an HF LlamaForCausalLM (Meta names and RoPE order)."""
    cfg = model.config
    layers = model.model.layers
    return {
        "tok": model.model.embed_tokens.weight,
        "att_norm": [l.input_layernorm.weight for l in layers],
        "wq": [_meta_qk(l.self_attn.q_proj.weight, cfg.num_attention_heads) for l in layers],
        "wk": [_meta_qk(l.self_attn.k_proj.weight, cfg.num_key_value_heads) for l in layers],
        "wv": [l.self_attn.v_proj.weight for l in layers],
        "wo": [l.self_attn.o_proj.weight for l in layers],
        "ffn_norm": [l.post_attention_layernorm.weight for l in layers],
        "w1": [l.mlp.gate_proj.weight for l in layers],
        "w2": [l.mlp.down_proj.weight for l in layers],
        "w3": [l.mlp.up_proj.weight for l in layers],
        "norm": model.model.norm.weight,
        "out": model.lm_head.weight,
    }


def _header_ints(model, vocab_sign: int = 1) -> list[int]:
    cfg = model.config
    return [cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
            cfg.num_key_value_heads, vocab_sign * cfg.vocab_size, cfg.max_position_embeddings]


def write_v0(model, path):
    w = _weights(model)
    shared = model.config.tie_word_embeddings
    cfg = model.config
    hd = cfg.hidden_size // cfg.num_attention_heads
    with open(path, "wb") as f:
        f.write(struct.pack("iiiiiii", *_header_ints(model, 1 if shared else -1)))
        f.write(_f32(w["tok"]))
        for kind in ("att_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3"):
            for t in w[kind]:
                f.write(_f32(t))
        f.write(_f32(w["norm"]))
        # freqs_cos / freqs_sin for max_seq_len positions, which run.c skips
        freqs = 1.0 / 10000.0 ** (torch.arange(0, hd, 2).float() / hd)
        angles = torch.outer(torch.arange(cfg.max_position_embeddings).float(), freqs)
        f.write(_f32(torch.cos(angles)))
        f.write(_f32(torch.sin(angles)))
        if not shared:
            f.write(_f32(w["out"]))


def _v1_header(model, version: int, group_size: int | None = None) -> bytes:
    h = struct.pack("I", 0x616B3432) + struct.pack("i", version) + struct.pack("iiiiiii", *_header_ints(model))
    h += struct.pack("B", int(model.config.tie_word_embeddings))
    if group_size is not None:
        h += struct.pack("i", group_size)
    return h + b"\0" * (256 - len(h))


def write_v1(model, path):
    w = _weights(model)
    with open(path, "wb") as f:
        f.write(_v1_header(model, 1))
        for t in [*w["att_norm"], *w["ffn_norm"], w["norm"], w["tok"]]:
            f.write(_f32(t))
        for kind in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
            for t in w[kind]:
                f.write(_f32(t))
        if not model.config.tie_word_embeddings:
            f.write(_f32(w["out"]))


def quantize_q80(w, group_size):
    """llama2.c's export.py quantize_q80: per group max/127, divide, round half to even."""
    w = w.detach().float().reshape(-1, group_size)
    scale = w.abs().max(dim=1).values / 127.0
    q = torch.round(w / scale[:, None]).to(torch.int8)
    return q, scale


def write_v2(model, path, group_size=64):
    """version2_export; also returns the HF-named dequantized values the file holds."""
    w = _weights(model)
    held = {}
    with open(path, "wb") as f:
        f.write(_v1_header(model, 2, group_size))
        for t in [*w["att_norm"], *w["ffn_norm"], w["norm"]]:
            f.write(_f32(t))
        mats = [w["tok"]] + [t for kind in ("wq", "wk", "wv", "wo", "w1", "w2", "w3") for t in w[kind]]
        if not model.config.tie_word_embeddings:
            mats.append(w["out"])
        for t in mats:
            q, s = quantize_q80(t, group_size)
            f.write(q.numpy().tobytes())
            f.write(s.numpy().astype("<f4").tobytes())
            held[id(t)] = (q.float() * s[:, None]).reshape(t.shape)
    return w, held


def reference_from_v2(ckpt, w, held):
    """A float32 copy of the model holding exactly the v2 file's dequantized weights."""
    import copy

    ref = copy.deepcopy(ckpt.model)
    cfg = ref.config
    inv = {"wq": cfg.num_attention_heads, "wk": cfg.num_key_value_heads}
    with torch.no_grad():
        ref.model.embed_tokens.weight.copy_(held[id(w["tok"])])
        for i, layer in enumerate(ref.model.layers):
            for kind, mod in (("wq", layer.self_attn.q_proj), ("wk", layer.self_attn.k_proj),
                              ("wv", layer.self_attn.v_proj), ("wo", layer.self_attn.o_proj),
                              ("w1", layer.mlp.gate_proj), ("w2", layer.mlp.down_proj), ("w3", layer.mlp.up_proj)):
                v = held[id(w[kind][i])]
                if kind in inv:  # back from Meta's order: HF_row[h, c*hd/2 + i] = Meta_row[h, 2i + c]
                    n = inv[kind]
                    v = v.view(n, v.shape[0] // n // 2, 2, v.shape[1]).transpose(1, 2).reshape(v.shape)
                mod.weight.copy_(v)
        if not cfg.tie_word_embeddings:
            ref.lm_head.weight.copy_(held[id(w["out"])])
    return ref


def write_tokenizer_bin(sp_path, out):
    """llama2.c's tokenizer.py export."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    tokens, scores = [], []
    for i in range(sp.get_piece_size()):
        t = sp.id_to_piece(i)
        if i == sp.bos_id():
            t = "\n<s>\n"
        elif i == sp.eos_id():
            t = "\n</s>\n"
        tokens.append(t.replace("\u2581", " ").encode("utf-8"))
        scores.append(sp.get_score(i))
    with open(out, "wb") as f:
        f.write(struct.pack("I", max(len(t) for t in tokens)))
        for b, s in zip(tokens, scores):
            f.write(struct.pack("fI", s, len(b)))
            f.write(b)


@pytest.fixture(scope="module")
def lmpack_mod():
    import lmpack

    return lmpack


def _logits(lmpack, path, ids):
    m = lmpack.load(path)
    try:
        return m.logits(ids)
    finally:
        m.close()


@pytest.mark.parametrize("version,tie", [(0, False), (0, True), (1, False), (1, True)])
def test_fp32_versions_give_the_models_logits(hf_checkpoint, tmp_path, lmpack_mod, version, tie, run_lmpack):
    ckpt = hf_checkpoint(n_kv_heads=2, tie=tie)
    src = tmp_path / "model.bin"
    (write_v0 if version == 0 else write_v1)(ckpt.model, src)
    (tmp_path / "tokenizer.model").write_bytes((ckpt.path / "tokenizer.model").read_bytes())
    res = run_lmpack("convert", src, "-o", tmp_path / "m.lmp")
    assert res.returncode == 0, res.stderr
    cfg = lmpack_mod.load(tmp_path / "m.lmp").config
    assert (cfg.tie_embeddings, cfg.n_kv_heads, cfg.max_context) == (tie, 2, ckpt.model.config.max_position_embeddings)
    ids = token_ids(ckpt.vocab_size)
    assert_logits_close(_logits(lmpack_mod, tmp_path / "m.lmp", ids), ckpt.reference_logits(ids), F32_TOL,
                        f"llama2.c v{version}")


def test_v2_int8_dequantized_exactly_or_requantized_with_its_error(hf_checkpoint, tmp_path, lmpack_mod, run_lmpack):
    ckpt = hf_checkpoint(n_kv_heads=2)
    src = tmp_path / "model.bin"
    w, held = write_v2(ckpt.model, src, group_size=64)
    write_tokenizer_bin(ckpt.path / "tokenizer.model", tmp_path / "tok.bin")
    ref = reference_from_v2(ckpt, w, held)
    ids = token_ids(ckpt.vocab_size)
    with torch.no_grad():
        want = ref(torch.tensor([ids]), use_cache=False).logits[0].numpy()

    res = run_lmpack("convert", src, "--tokenizer", tmp_path / "tok.bin", "-o", tmp_path / "f32.lmp")
    assert res.returncode == 0, res.stderr
    assert "dequantized exactly to f32" in res.stderr
    assert_logits_close(_logits(lmpack_mod, tmp_path / "f32.lmp", ids), want, F32_TOL, "llama2.c v2 as f32")

    res = run_lmpack("convert", src, "--tokenizer", tmp_path / "tok.bin", "-o", tmp_path / "q8.lmp", "--dtype", "q8_0")
    assert res.returncode == 0, res.stderr
    line = next(l for l in res.stderr.splitlines() if "re-quantized to ggml Q8_0" in l)
    # the reported error is what the two grids differ by: above zero, below a Q8_0 step
    worst = float(line.split("max |error| ")[1].split(",")[0])
    biggest = max(float(v.abs().max()) for v in held.values())
    assert 0 < worst < biggest / 127, line
    # and the file is ggml Q8_0 of the v2 values, bit for bit
    from lmpack.formats.lmp import LmpReader
    from lmpack.quantize.q8_0 import quantize

    with LmpReader(tmp_path / "q8.lmp") as r, LmpReader(tmp_path / "f32.lmp") as f:
        for e in r.tensors:
            if e.dtype == "q8_0":
                q, d = quantize(np.asarray(f.tensor(e.name)), "f32")
                assert np.array_equal(r.tensor(e.name).quants, q) and np.array_equal(r.tensor(e.name).scales, d)

    # straight to a Q8_0 GGUF: the same error line, measured on the GGUF's own blocks
    res = run_lmpack("convert", src, "--tokenizer", tmp_path / "tok.bin", "-o", tmp_path / "q8.gguf", "--dtype", "q8_0")
    assert res.returncode == 0, res.stderr
    gguf_line = next(l for l in res.stderr.splitlines() if "re-quantized to ggml Q8_0" in l)
    assert gguf_line.split("max |error|")[1] == line.split("max |error|")[1], (gguf_line, line)


def test_tokenizer_bin_rebuilds_the_same_tokenizer(hf_checkpoint, tmp_path, lmpack_mod, sp_model_path):
    import sentencepiece as spm

    ckpt = hf_checkpoint()
    write_v1(ckpt.model, tmp_path / "model.bin")
    write_tokenizer_bin(sp_model_path, tmp_path / "tokenizer.bin")
    from lmpack.convert import convert

    convert(tmp_path / "model.bin", tmp_path / "m.lmp")  # tokenizer.bin beside it
    m = lmpack_mod.load(tmp_path / "m.lmp")
    sp = spm.SentencePieceProcessor(model_file=str(sp_model_path))
    for line in checkpoints.corpus_lines(300) + ["  two  spaces", "🦙 ünïcode 12345", ""]:
        assert m.tokenizer.encode(line, bos=False) == sp.encode(line), line
    m.close()


def _corruptions(good: bytes) -> dict[str, bytes]:
    bad_version = bytearray(good)
    struct.pack_into("<i", bad_version, 4, 7)
    zero_heads = bytearray(good)
    struct.pack_into("<i", zero_heads, 8 + 12, 0)
    huge_dim = bytearray(good)
    struct.pack_into("<i", huge_dim, 8, 1 << 30)
    odd_heads = bytearray(good)
    struct.pack_into("<i", odd_heads, 8 + 16, 3)  # n_kv_heads that does not divide n_heads
    return {
        "empty": b"",
        "tiny": good[:10],
        "header-only": good[:256],
        "truncated": good[:-1],
        "appended": good + b"\0" * 4,
        "bad-version": bytes(bad_version),
        "zero-heads": bytes(zero_heads),
        "huge-dim": bytes(huge_dim),
        "odd-kv-heads": bytes(odd_heads),
        "text": b"this is not a model at all, just some text" * 10,
    }


def test_bad_llama2c_files_fail_in_one_line(hf_checkpoint, tmp_path, run_lmpack_many):
    ckpt = hf_checkpoint()
    write_v1(ckpt.model, tmp_path / "good.bin")
    (tmp_path / "tokenizer.model").write_bytes((ckpt.path / "tokenizer.model").read_bytes())
    cases = {}
    for name, data in _corruptions((tmp_path / "good.bin").read_bytes()).items():
        (tmp_path / f"{name}.bin").write_bytes(data)
        cases[name] = ["convert", tmp_path / f"{name}.bin", "-o", tmp_path / f"{name}.lmp"]
    (tmp_path / "junk.model").write_bytes(b"\x01\x02junk")
    cases["bad-tokenizer"] = ["convert", tmp_path / "good.bin", "--tokenizer", tmp_path / "junk.model",
                              "-o", tmp_path / "bad-tokenizer.lmp"]
    cases["missing-tokenizer"] = ["convert", tmp_path / "good.bin", "--tokenizer", tmp_path / "nope.model",
                                  "-o", tmp_path / "missing-tokenizer.lmp"]
    results = run_lmpack_many(cases)
    for name, res in results.items():
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1, (name, res.returncode, res.stderr)
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, res.stderr)
        assert not (tmp_path / f"{name}.lmp").exists(), name
    assert not list(tmp_path.glob(".*.tmp"))
