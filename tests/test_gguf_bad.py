"""Bad GGUF files: every class of corruption gets one `error:` line, exit status 1, no output file;
and a hypothesis fuzz of the reader (byte edits and truncations of a valid file), whose only
allowed outcomes are a loaded file or an LmpackError.

Field positions come from gguf-py's GGUFReader on the valid file (each field's parts are its raw
bytes), so the edits are placed independently of the reader under test.
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

gguf = pytest.importorskip("gguf")

from lmpack.errors import LmpackError  # noqa: E402
from lmpack.formats.gguf import GgufFile  # noqa: E402


@pytest.fixture(scope="module")
def good(tmp_path_factory, hf_checkpoint):
    """A small valid GGUF (lmpack export of a tiny GQA model, q8_0) and its bytes."""
    from lmpack.convert import convert

    ckpt = hf_checkpoint(dtype="bfloat16", n_kv_heads=2, vocab=400)
    path = convert(ckpt.path, tmp_path_factory.mktemp("gguf") / "good.gguf", dtype="q8_0")
    return path, path.read_bytes()


def _field_parts(path, key):
    """(offset, [(offset, nbytes) of each part]) of a metadata field, as gguf-py parses it."""
    r = gguf.GGUFReader(path)
    f = r.fields[key]
    pos, parts = f.offset, []
    for p in f.parts:
        parts.append((pos, p.nbytes))
        pos += p.nbytes
    return parts


def _tensor_parts(path, name):
    r = gguf.GGUFReader(path)
    t = next(t for t in r.tensors if t.name == name)
    pos, parts = t.field.offset, []
    for p in t.field.parts:
        parts.append((pos, p.nbytes))
        pos += p.nbytes
    return parts  # name length, name, n_dims, dims, type, offset


def _put(data: bytes, at: int, fmt: str, value) -> bytes:
    b = bytearray(data)
    struct.pack_into("<" + fmt, b, at, value)
    return bytes(b)


def _replace(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and data.count(old) >= 1
    return data.replace(old, new, 1)


def corruptions(path, data: bytes) -> dict[str, tuple[bytes, str]]:
    """{case: (file bytes, a word the error line must contain)}."""
    kv_first = _field_parts(path, "general.architecture")
    tokens = _field_parts(path, "tokenizer.ggml.tokens")
    ttypes = _field_parts(path, "tokenizer.ggml.token_type")
    q = _tensor_parts(path, "blk.0.attn_q.weight")
    r = gguf.GGUFReader(path)
    data_start = r.data_offset
    last = max(r.tensors, key=lambda t: t.data_offset)
    return {
        "empty": (b"", "GGUF"),
        "bad-magic": (b"GGUX" + data[4:], "magic"),
        "version-1": (_put(data, 4, "I", 1), "version"),
        "big-endian": (_put(data, 4, "I", 0x03000000), "big-endian"),
        "lying-kv-count": (_put(data, 16, "Q", 1 << 60), "cannot fit"),
        "lying-tensor-count": (_put(data, 8, "Q", 1 << 59), "cannot fit"),
        "kv-count-too-high": (_put(data, 16, "Q", struct.unpack_from("<Q", data, 16)[0] + 5), ""),
        "huge-key-string": (_put(data, kv_first[0][0], "Q", 1 << 62), "long"),
        "huge-value-string": (_put(data, kv_first[3][0], "Q", 1 << 62), "past the end"),
        "huge-array": (_put(data, tokens[4][0], "Q", 1 << 61), "past the end"),
        "unknown-value-type": (_put(data, kv_first[2][0], "I", 99), "unknown value type"),
        "unknown-array-type": (_put(data, tokens[3][0], "I", 77), "unknown array element type"),
        "unknown-ggml-type": (_put(data, q[4][0] if len(q) == 6 else q[-2][0], "I", 99), "unknown ggml type"),
        "zero-dims": (_put(data, q[2][0], "I", 0), "dimensions"),
        "five-dims": (_put(data, q[2][0], "I", 5), "dimensions"),
        "zero-dimension": (_put(data, q[3][0], "Q", 0), "dimension"),
        "misaligned-offset": (_put(data, q[-1][0], "Q", struct.unpack_from("<Q", data, q[-1][0])[0] + 2), "aligned"),
        "offset-past-end": (_put(data, q[-1][0], "Q", len(data) * 4 // 32 * 32), "outside"),
        "overlapping": (_put(data, q[-1][0], "Q", 0), "overlap"),
        "truncated-header": (data[:40], ""),
        "truncated-metadata": (data[:tokens[5][0] + 3], "past the end"),
        "truncated-data": (data[:data_start + last.data_offset + 10], "outside"),
        "missing-key": (_replace(data, b"llama.embedding_length", b"llama.embedding_lengtX"), "missing"),
        "unknown-arch": (_replace(data, b"\x05\x00\x00\x00\x00\x00\x00\x00llama", b"\x05\x00\x00\x00\x00\x00\x00\x00llamb"),
                         "architecture"),
        "unexpected-tensor": (_replace(data, b"blk.0.attn_q.weight", b"blk.0.attn_X.weight"), "unexpected tensor"),
        "bad-token-type": (_put(data, ttypes[-1][0] - 4, "i", 99), "token type"),
        "infinite-rope-theta": (_put(data, _field_parts(path, "llama.rope.freq_base")[3][0], "f", float("inf")),
                                "finite"),
        "nan-norm-eps": (_put(data, _field_parts(path, "llama.attention.layer_norm_rms_epsilon")[3][0], "f",
                              float("nan")), "finite"),
        "unknown-tokenizer-model": (data[:_field_parts(path, "tokenizer.ggml.model")[4][0]] + b"llamx" +
                                    data[_field_parts(path, "tokenizer.ggml.model")[4][0] + 5:], "tokenizer model"),
        "wrong-key-type": (_put(data, _field_parts(path, "llama.block_count")[2][0], "I",
                                int(gguf.GGUFValueType.FLOAT32)), "wrong type"),
    }


def test_bad_ggufs_fail_in_one_line(good, tmp_path, run_lmpack_many):
    path, data = good
    cases, expect = {}, {}
    for name, (blob, word) in corruptions(path, data).items():
        (tmp_path / f"{name}.gguf").write_bytes(blob)
        cases[name] = ["convert", tmp_path / f"{name}.gguf", "-o", tmp_path / f"{name}.lmp"]
        expect[name] = word
    cases["ok"] = ["convert", path, "-o", tmp_path / "ok.lmp"]
    results = run_lmpack_many(cases)
    assert results["ok"].returncode == 0, results["ok"].stderr
    for name, res in results.items():
        if name == "ok":
            continue
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1, (name, res.returncode, res.stderr)
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, res.stderr)
        message = lines[0].replace(str(tmp_path / f"{name}.gguf"), "FILE")
        assert expect[name].lower() in message.lower(), (name, lines[0])
        assert "FILE" in message, (name, lines[0])  # the line names the file
        assert not (tmp_path / f"{name}.lmp").exists(), name
    assert not list(tmp_path.glob(".*.tmp"))


def _open_all(path):
    """Everything a conversion does before writing: the reader, the source (config, tokenizer,
    tensor set) and a load of every tensor."""
    from lmpack.convert.gguf_source import GgufSource

    with GgufFile(path):
        pass
    src = GgufSource(path)
    try:
        for spec in src.tensor_specs():
            x = src.load(spec.name)
            del x
    finally:
        src.close()


def test_fuzz_gguf_reader(good, tmp_path):
    path, data = good
    r = gguf.GGUFReader(path)
    head = r.data_offset  # header, metadata and tensor directory: where the structure lives
    target = tmp_path / "fuzz.gguf"

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.integers(0, head - 1), st.sampled_from(
        [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x01", b"\xff" * 8, b"\x00" * 8, b"\x10\x00\x00\x00"])),
        min_size=1, max_size=4), st.one_of(st.none(), st.integers(0, len(data))))
    def run(edits, cut):
        blob = bytearray(data)
        for at, b in edits:
            blob[at:at + len(b)] = b
        blob = bytes(blob[:len(data)])
        if cut is not None:
            blob = blob[:cut]
        target.write_bytes(blob)
        try:
            _open_all(target)
        except LmpackError as e:
            assert str(e) and "\n" not in str(e)

    run()


def test_llama3_scaling_is_read_back_from_divisors():
    from lmpack.convert.gguf_arch import llama3_from_divisors, llama3_rope_divisors
    from lmpack.formats.config import ModelConfig

    base = dict(architecture="llama", dim=4096, n_layers=1, n_heads=32, n_kv_heads=8, head_dim=128, ffn_dim=14336,
                vocab_size=1000, norm_eps=1e-5, rope_theta=500000.0, max_context=131072, bos_id=1, eos_ids=[2])
    for rs in ({"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192},
               {"type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}):
        cfg = ModelConfig(**base, rope_scaling=rs)
        d = llama3_rope_divisors(cfg)
        assert llama3_from_divisors(ModelConfig(**base), d, 8192, "x") == rs
    with pytest.raises(LmpackError, match="does not follow Llama 3"):
        bumpy = llama3_rope_divisors(ModelConfig(**base, rope_scaling=rs)).copy()
        bumpy[3] = 5.0
        llama3_from_divisors(ModelConfig(**base), bumpy, 8192, "x")


# ---- the other families: files rewritten with gguf-py from a valid export ----------------------

def rewrite(src, dst, drop=(), fields=None, reshape=None, nan_scale=None, q8=()) -> None:
    """Copy the GGUF `src` to `dst` with gguf-py, leaving out tensors `drop`, setting metadata
    `fields` ({key: (value, GGUFValueType)}), giving tensors in `reshape` another row count (data
    cut or repeated), making the first Q8_0 scale of tensor `nan_scale` a NaN, and storing the f32
    tensors `q8` as Q8_0."""
    import numpy as np

    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    fields = fields or {}
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key in fields:
            continue
        sub = f.types[1] if len(f.types) > 1 else None
        w.add_key_value(key, f.contents(), f.types[0], sub)
    for key, (value, vtype) in fields.items():
        w.add_key_value(key, value, vtype)
    for t in r.tensors:
        if t.name in drop:
            continue
        data = np.array(t.data)
        if reshape and t.name in reshape:
            data = np.resize(data, (reshape[t.name], *data.shape[1:]))
        if t.name == nan_scale:
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
            flat = data.reshape(-1).view(np.uint8)
            flat[0:2] = np.frombuffer(np.float16(np.nan).tobytes(), np.uint8)
        ttype = t.tensor_type
        if t.name in q8:
            data, ttype = gguf.quants.quantize(data.astype(np.float32), gguf.GGMLQuantizationType.Q8_0), \
                gguf.GGMLQuantizationType.Q8_0
        quant = ttype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
        w.add_tensor(t.name, data, raw_shape=data.shape if not quant else None,
                     raw_dtype=ttype if quant else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def family_ggufs(tmp_path_factory, family_checkpoint):
    """Valid q8_0 GGUFs of a Gemma 2, a Phi-3, an OLMo 2 and a Mixtral model."""
    from lmpack.convert import convert

    out = {}
    folder = tmp_path_factory.mktemp("family-gguf")
    for model_type, kwargs in {
        "gemma2": dict(head_dim=32, query_pre_attn_scalar=32, tie=True),
        "phi3": dict(),
        "olmo2": dict(),
        "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
    }.items():
        ckpt = family_checkpoint(model_type, dtype="bfloat16", **kwargs)
        out[model_type] = convert(ckpt.path, folder / f"{model_type}.gguf", dtype="q8_0")
    return out


U32, F32 = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32
FAMILY_CORRUPTIONS = {
    # case: (family, rewrite arguments, a word the error line must contain)
    "gemma2-missing-post-ffw-norm": ("gemma2", dict(drop=["blk.1.post_ffw_norm.weight"]), "missing"),
    "gemma2-lying-head-count": ("gemma2", dict(fields={"gemma2.attention.head_count": (8, U32)}), "shape"),
    "gemma2-nan-q8_0-scale": ("gemma2", dict(nan_scale="blk.0.attn_k.weight"), "NaN"),
    "gemma2-text-window": ("gemma2", dict(fields={"gemma2.attention.sliding_window": ("16", gguf.GGUFValueType.STRING)}),
                           "wrong type"),
    "gemma2-inf-softcap": ("gemma2", dict(fields={"gemma2.attn_logit_softcapping": (float("inf"), F32)}), "finite"),
    "gemma2-pattern-of-other-length": ("gemma2", dict(fields={
        "gemma2.attention.sliding_window": (16, U32),
        "gemma2.attention.sliding_window_pattern": ([True] * 5, gguf.GGUFValueType.ARRAY)}), "per layer"),
    "gemma2-zero-period": ("gemma2", dict(fields={"gemma2.attention.sliding_window": (16, U32),
                                                   "gemma2.attention.sliding_window_pattern": (0, U32)}), "period"),
    "phi3-short-qkv": ("phi3", dict(reshape={"blk.0.attn_qkv.weight": 128}), "shape"),
    "phi3-short-gate-up": ("phi3", dict(reshape={"blk.1.ffn_up.weight": 320}), "shape"),
    "phi3-odd-rope-dims": ("phi3", dict(fields={"phi3.rope.dimension_count": (7, U32)}), "rope_dim"),
    "phi3-nan-q8_0-scale": ("phi3", dict(nan_scale="blk.1.ffn_up.weight"), "NaN"),
    "olmo2-lying-block-count": ("olmo2", dict(fields={"olmo2.block_count": (1 << 20, U32)}), "layers"),
    "olmo2-missing-k-norm": ("olmo2", dict(drop=["blk.0.attn_k_norm.weight"]), "missing"),
    "mixtral-lying-expert-count": ("mixtral", dict(fields={"llama.expert_count": (8, U32)}), "experts"),
    "mixtral-huge-expert-count": ("mixtral", dict(fields={"llama.expert_count": (1 << 30, U32)}), "n_experts"),
    "mixtral-many-experts": ("mixtral", dict(fields={"llama.expert_count": (4096, U32)}), "experts"),
    "gemma2-q8_0-norm": ("gemma2", dict(q8=["blk.0.attn_norm.weight"]), "vector"),
    "mixtral-used-above-count": ("mixtral", dict(fields={"llama.expert_used_count": (5, U32)}), "n_experts_used"),
    "mixtral-missing-experts": ("mixtral", dict(drop=["blk.1.ffn_down_exps.weight"]), "missing"),
    "mixtral-missing-router": ("mixtral", dict(drop=["blk.0.ffn_gate_inp.weight"]), "missing"),
    "mixtral-nan-expert-scale": ("mixtral", dict(nan_scale="blk.0.ffn_up_exps.weight"), "NaN"),
}


def test_bad_family_ggufs_fail_in_one_line(family_ggufs, tmp_path, run_lmpack_many):
    cases = {f"ok-{k}": ["convert", p, "-o", tmp_path / f"ok-{k}.lmp"] for k, p in family_ggufs.items()}
    for name, (fam, args, _) in FAMILY_CORRUPTIONS.items():
        rewrite(family_ggufs[fam], tmp_path / f"{name}.gguf", **args)
        cases[name] = ["convert", tmp_path / f"{name}.gguf", "-o", tmp_path / f"{name}.lmp"]
    results = run_lmpack_many(cases)
    for name, res in results.items():
        if name.startswith("ok-"):
            assert res.returncode == 0, (name, res.stderr)
            continue
        lines = res.stderr.strip().splitlines()
        assert res.returncode == 1, (name, res.returncode, res.stderr)
        assert len(lines) == 1 and lines[0].startswith("error:"), (name, res.stderr)
        assert FAMILY_CORRUPTIONS[name][2].lower() in lines[0].lower(), (name, lines[0])
        assert not (tmp_path / f"{name}.lmp").exists(), name
    assert not list(tmp_path.glob(".*.tmp"))
