"""The `.lmp` container as docs/FORMAT.md specifies it, checked from both sides: the public
`LmpReader` API (config, tokenizer, tensor directory, zero-copy views equal to the source
tensors) and the raw bytes parsed here with struct (alignment, sizes, checksums), plus the
writer's atomicity when a conversion fails half-way.
"""
from __future__ import annotations

import numpy as np
import pytest

import checkpoints

torch = pytest.importorskip("torch")
from safetensors import safe_open  # noqa: E402


def source_tensors(folder) -> dict[str, "torch.Tensor"]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, framework="pt") as s:
            for k in s.keys():
                out[k] = s.get_tensor(k)
    return out


def stored_bits(t: "torch.Tensor", dtype: str) -> np.ndarray:
    """The bytes a file of `dtype` must hold for source tensor `t`, computed by torch/numpy."""
    if dtype == "bf16":
        return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    if dtype == "f16":
        return t.float().numpy().astype(np.float16)
    return t.float().numpy()


@pytest.fixture(scope="module")
def reader_cls():
    from lmpack.formats.lmp import LmpReader

    return LmpReader


def test_reader_exposes_config_tokenizer_and_tensors(tiny_hf, tiny_lmp, reader_cls):
    from lmpack.formats.config import ModelConfig, expected_tensors

    with reader_cls(tiny_lmp) as r:
        cfg = r.config
        assert isinstance(cfg, ModelConfig)
        hf = tiny_hf.model.config
        assert (cfg.dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.ffn_dim, cfg.vocab_size) == (
            hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.num_key_value_heads,
            hf.intermediate_size, hf.vocab_size)
        assert r.tokenizer_bytes == (tiny_hf.path / "tokenizer.model").read_bytes()
        assert isinstance(r.header, dict) and r.header["format"] == "lmpack" and r.header["version"] == 1
        names = [t.name for t in r.tensors]
        assert names == list(expected_tensors(cfg))  # canonical file order, HF names
        assert set(names) == set(source_tensors(tiny_hf.path))
        for t in r.tensors:
            assert t.dtype == "f32" and tuple(t.shape) == tuple(expected_tensors(cfg)[t.name])
            assert t.nbytes == 4 * int(np.prod(t.shape))
        prov = r.header["provenance"]
        assert prov["source_kind"] == "hf-safetensors"
        assert prov["lmpack_version"]
        assert {(f["name"], f["size"]) for f in prov["source_files"]} == {
            (p.name, p.stat().st_size) for p in tiny_hf.path.glob("*.safetensors")}


@pytest.mark.parametrize("ckpt_kwargs,dtype", [
    (dict(), "auto"),
    (dict(dtype="bfloat16", n_kv_heads=1, shards=3), "auto"),
    (dict(dtype="float16", tie=True, shards=2), "auto"),
    (dict(), "bf16"),
    (dict(), "f16"),
    (dict(dtype="bfloat16", n_kv_heads=1, shards=3), "f32"),
], ids=["f32", "bf16-sharded", "f16-tied-sharded", "f32-to-bf16", "f32-to-f16", "bf16-to-f32"])
def test_tensor_views_equal_the_source(ckpt_kwargs, dtype, hf_checkpoint, converted, reader_cls):
    """Same-dtype conversion is bit-exact; casts round to nearest even exactly as torch/numpy do;
    norms are f32 whatever the file dtype; a tied checkpoint has no lm_head."""
    ckpt = hf_checkpoint(**ckpt_kwargs)
    src = source_tensors(ckpt.path)
    src_dtype = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}[ckpt.dtype]
    with reader_cls(converted(ckpt, dtype)) as r:
        assert ("lm_head.weight" in [t.name for t in r.tensors]) == (not ckpt_kwargs.get("tie", False))
        for entry in r.tensors:
            view = r.tensor(entry.name)
            want_dtype = "f32" if len(entry.shape) == 1 else (src_dtype if dtype == "auto" else dtype)
            assert entry.dtype == want_dtype, entry.name
            expected = stored_bits(src[entry.name], want_dtype)
            assert view.shape == expected.shape and view.dtype == expected.dtype, entry.name
            assert view.tobytes() == expected.tobytes(), f"{entry.name}: stored bytes differ from the source"


def test_views_are_zero_copy(tiny_lmp, reader_cls):
    with reader_cls(tiny_lmp) as r:
        a = r.tensor("model.embed_tokens.weight")
        b = r.tensor("model.embed_tokens.weight")
        assert not a.flags.owndata and not a.flags.writeable
        assert np.shares_memory(a, b)  # both views point into the same mapping
        e = [t for t in r.tensors if t.name == "model.embed_tokens.weight"][0]
        assert a.__array_interface__["data"][0] % 64 == 0  # SIMD-aligned in memory too
        assert e.offset % 64 == 0
        del a, b


def test_special_values_round_like_torch(tiny_hf, tmp_path, converted, reader_cls):
    """Round-to-nearest-even ties, subnormals, -0.0, f16's largest and tiny values through f32 ->
    bf16/f16 (nothing that overflows either type: refusing that is a policy, not a rounding rule)."""
    from safetensors.torch import load_file, save_file

    folder = checkpoints.copy_checkpoint(tiny_hf.path, tmp_path / "special")
    tensors = load_file(folder / "model.safetensors")
    emb = tensors["model.embed_tokens.weight"].clone()
    bits = np.array([0x3F808000, 0x3F818000, 0x3F80C000, 0x3F807FFF, 0xBF808000, 0x00000001, 0x80000000,
                     0x007FFFFF, 0x477FE000, 0x477FEFFF, 0x33800000, 0x38800000, 0x3F7FFFFF, 0x2F800001],
                    dtype=np.uint32)
    emb.view(-1)[:bits.size] = torch.from_numpy(bits.view(np.float32).copy())
    tensors["model.embed_tokens.weight"] = emb
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    for dtype in ("bf16", "f16"):
        with reader_cls(converted(folder, dtype)) as r:
            got = r.tensor("model.embed_tokens.weight").reshape(-1)[:bits.size]
            want = stored_bits(emb.reshape(-1)[:bits.size], dtype)
            np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16), err_msg=dtype)


def test_layout_alignment_and_sizes(hf_checkpoint, converted):
    """The raw bytes follow FORMAT.md, parsed here without lmpack."""
    path = converted(hf_checkpoint(dtype="float16", tie=True, shards=2))
    data = path.read_bytes()
    pre, header = checkpoints.read_lmp_raw(path)
    assert pre["magic"] == checkpoints.LMP_MAGIC and pre["version"] == 1 and pre["flags"] == 0
    assert pre["reserved"] == b"\0" * 16
    assert pre["file_size"] == len(data)
    assert pre["data_offset"] % 4096 == 0 and pre["data_offset"] >= 64 + pre["header_len"]
    assert set(data[64 + pre["header_len"]:pre["data_offset"]]) <= {0}, "header padding is not zero"
    tok = header["tokenizer"]
    assert tok["kind"] == "sentencepiece"
    ranges = [(tok["offset"], tok["nbytes"])] + [(t["offset"], t["nbytes"]) for t in header["tensors"]]
    offsets = [t["offset"] for t in header["tensors"]]
    assert offsets == sorted(offsets), "tensors are not in file order"
    for off, n in ranges:
        assert off % 64 == 0 and off >= pre["data_offset"] and off + n <= len(data)
    ranges.sort()
    for (o1, n1), (o2, _) in zip(ranges, ranges[1:]):
        assert o1 + n1 <= o2
        assert set(data[o1 + n1:o2]) <= {0}, "padding between tensors is not zero"
        assert o2 - (o1 + n1) < 64, "more padding than alignment needs"
    assert ranges[-1][0] + ranges[-1][1] == len(data), "trailing bytes after the last tensor"
    size = {"f32": 4, "f16": 2, "bf16": 2}
    for t in header["tensors"]:
        assert t["nbytes"] == size[t["dtype"]] * int(np.prod(t["shape"]))
    assert header["config"]["tie_embeddings"] is True


def test_checksums(tiny_lmp):
    from lmpack import _core

    # the C CRC-32C against the standard check value and a plain-Python implementation
    assert _core.crc32c(b"123456789") == 0xE3069283
    assert _core.crc32c(b"") == 0
    blob = bytes(range(256)) * 37 + b"tail"
    assert _core.crc32c(blob) == checkpoints.crc32c_py(blob)
    assert _core.crc32c(blob[1000:], _core.crc32c(blob[:1000])) == _core.crc32c(blob)
    for n in (1, 7, 8, 15, 63, 64, 65):  # tails around the hardware path's word sizes
        assert _core.crc32c(blob[3:3 + n]) == checkpoints.crc32c_py(blob[3:3 + n]), n

    data = tiny_lmp.read_bytes()
    pre, header = checkpoints.read_lmp_raw(tiny_lmp)
    assert pre["preamble_crc"] == checkpoints.crc32c_py(data[:44])
    assert pre["header_crc"] == checkpoints.crc32c_py(data[64:64 + pre["header_len"]])
    tok = header["tokenizer"]
    assert tok["crc32c"] == f"{checkpoints.crc32c_py(data[tok['offset']:tok['offset'] + tok['nbytes']]):08x}"
    for t in header["tensors"]:
        chunk = memoryview(data)[t["offset"]:t["offset"] + t["nbytes"]]
        assert t["crc32c"] == f"{_core.crc32c(chunk):08x}", t["name"]
        if t["nbytes"] <= 4096:
            assert t["crc32c"] == f"{checkpoints.crc32c_py(chunk):08x}", t["name"]


class Boom(RuntimeError):
    pass


def _fail_on_third_load(monkeypatch, exc=Boom):
    from lmpack.convert import hf

    calls = {"n": 0}
    original = hf.HFSafetensorsSource.load

    def load(self, name):
        calls["n"] += 1
        if calls["n"] == 3:
            raise exc(f"injected failure while loading {name}")
        return original(self, name)

    monkeypatch.setattr(hf.HFSafetensorsSource, "load", load)
    return calls


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt, MemoryError], ids=lambda e: e.__name__)
def test_writer_is_atomic_on_failure(exc, tiny_hf, tmp_path, monkeypatch):
    from lmpack.convert import convert

    calls = _fail_on_third_load(monkeypatch, exc)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "model.lmp"
    with pytest.raises(exc):
        convert(tiny_hf.path, out, dtype="bf16")
    assert calls["n"] == 3, "the failure was not reached (the test would prove nothing)"
    assert not out.exists()
    assert list(out_dir.iterdir()) == [], "a temporary file was left behind"


def test_failed_conversion_keeps_an_existing_output(tiny_hf, tiny_lmp, tmp_path, monkeypatch):
    """Atomic replace: a failure half-way leaves the previous file at the output path untouched."""
    from lmpack.convert import convert

    out = tmp_path / "model.lmp"
    out.write_bytes(tiny_lmp.read_bytes())
    _fail_on_third_load(monkeypatch)
    with pytest.raises(Boom):
        convert(tiny_hf.path, out, dtype="f16")
    assert out.read_bytes() == tiny_lmp.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.lmp"]


def test_conversion_is_deterministic_apart_from_the_timestamp(tiny_hf, tiny_lmp, tmp_path):
    from lmpack.convert import convert

    again = convert(tiny_hf.path, tmp_path / "again.lmp")
    pre_a, head_a = checkpoints.read_lmp_raw(tiny_lmp)
    pre_b, head_b = checkpoints.read_lmp_raw(again)
    head_a["provenance"].pop("created", None)
    head_b["provenance"].pop("created", None)
    assert head_a == head_b
    assert tiny_lmp.read_bytes()[pre_a["data_offset"]:] == again.read_bytes()[pre_b["data_offset"]:]


def test_extra_hf_tensors_are_handled(tiny_hf, hf_checkpoint, tmp_path, converted, reader_cls):
    """Older HF saves carry `rotary_emb.inv_freq` buffers, and tied checkpoints may still store
    `lm_head.weight`: the converter drops both and writes exactly the FORMAT.md tensor set."""
    from safetensors.torch import load_file, save_file

    from lmpack.formats.config import expected_tensors

    folder = checkpoints.copy_checkpoint(tiny_hf.path, tmp_path / "inv_freq")
    tensors = load_file(folder / "model.safetensors")
    for i in range(2):
        tensors[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = checkpoints.plain_inv_freq(32, 10000.0)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})

    tied = hf_checkpoint(n_kv_heads=2, tie=True)
    tied_folder = checkpoints.copy_checkpoint(tied.path, tmp_path / "tied_with_head")
    tensors2 = load_file(tied_folder / "model.safetensors")
    assert "lm_head.weight" not in tensors2
    tensors2["lm_head.weight"] = tensors2["model.embed_tokens.weight"].clone()
    save_file(tensors2, tied_folder / "model.safetensors", metadata={"format": "pt"})

    for src, original in ((folder, tiny_hf.path), (tied_folder, tied.path)):
        with reader_cls(converted(src)) as r, reader_cls(converted(original)) as ref:
            assert [t.name for t in r.tensors] == list(expected_tensors(r.config))
            for t in r.tensors:
                assert r.tensor(t.name).tobytes() == ref.tensor(t.name).tobytes(), t.name
