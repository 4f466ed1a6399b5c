"""The torch zip reader against torch itself, and against hostile files.

Values must equal `torch.load(weights_only=True)` for every dtype and view torch writes; sharded
`.bin` folders must read like their safetensors twin; malicious pickles must raise
UnsafePickleError without running (a sentinel file they would create never appears); and no
mutation of a valid archive or pickle may raise anything but LmpackError.
"""
from __future__ import annotations

import copyreg
import io
import os
import pickle
import struct
import tempfile
import time
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import torch_sources

torch = pytest.importorskip("torch")

from lmpack.convert.hf_bin import HFBinSource  # noqa: E402
from lmpack.errors import LmpackError, UnsafePickleError  # noqa: E402
from lmpack.formats.torchzip import TorchFile, load_state_dict  # noqa: E402


def as_numpy(t):
    t = t.detach()
    return t.view(torch.uint16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


# ---------------------------------------------------------------------------------------------
# A minimal zip writer, so tests control every byte (compression, zip64 forms, prefixes)


def write_zip(path: Path, members: list[tuple[str, bytes]], deflate=(), zip64: bool = False, pad: int = 0) -> Path:
    """Write `members` as a zip; names in `deflate` are compressed; `zip64` uses the zip64 forms
    for every size and offset (as torch's writer does past 4 GB)."""
    out = bytearray()
    central = bytearray()
    for name, data in members:
        raw = name.encode()
        crc = zlib.crc32(data)
        method = 8 if name in deflate else 0
        if method:
            c = zlib.compressobj(9, zlib.DEFLATED, -15)
            stored = c.compress(data) + c.flush()
        else:
            stored = data
        local_at = len(out)
        extra = b"\0" * pad  # torch pads the local extra field to align record data
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, len(stored), len(data),
                           len(raw), len(extra)) + raw + extra + stored
        if zip64:
            cextra = struct.pack("<HHQQQ", 1, 24, len(data), len(stored), local_at)
            sizes = (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF)
        else:
            cextra = b""
            sizes = (len(stored), len(data), local_at)
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, method, 0, 0, crc, sizes[0], sizes[1],
                               len(raw), len(cextra), 0, 0, 0, 0, sizes[2]) + raw + cextra
    cd_at = len(out)
    out += central
    n = len(members)
    if zip64:
        eocd64_at = len(out)
        out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), cd_at)
        out += struct.pack("<IIQI", 0x07064B50, 0, eocd64_at, 1)
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    else:
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), cd_at, 0)
    Path(path).write_bytes(bytes(out))
    return Path(path)


def archive(path: Path, pkl: bytes, records: dict[str, bytes], prefix: str = "archive", **kw) -> Path:
    members = [(f"{prefix}/data.pkl", pkl), (f"{prefix}/byteorder", b"little")]
    members += [(f"{prefix}/data/{k}", v) for k, v in records.items()]
    members.append((f"{prefix}/version", b"3\n"))
    return write_zip(path, members, **kw)


class _Pid:
    """Pickles as a persistent storage reference, the way torch.save's persistent_id does."""

    def __init__(self, storage_type, key, numel):
        self.pid = ("storage", storage_type, key, "cpu", numel)


class _Rebuild:
    """Pickles as a `_rebuild_tensor_v2` call with arbitrary (possibly hostile) arguments."""

    def __init__(self, *args):
        self.args = args

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _TorchishPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.pid if isinstance(obj, _Pid) else None


def torch_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _TorchishPickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Values equal torch.load


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_values_match_torch_load(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 8, generator=g).to(dtype)
    emb = torch.randn(10, 8, generator=g).to(dtype)
    sd = OrderedDict(
        plain=base,
        transposed=base.T,  # non-contiguous stride
        rows=base[2:5],  # storage offset
        column=base[:, 3],  # offset and stride together
        strided=base[::2, 1::3],
        scalar=base[1, 1].clone(),
        vector=torch.randn(7, generator=g).to(dtype),
        param=torch.nn.Parameter(torch.randn(3, 2, generator=g).to(dtype)),
        embed=emb,
        head=emb,  # tied weights: one storage, two names
        empty=torch.zeros(0, 8, dtype=dtype),
    )
    path = tmp_path / "sd.pt"
    torch.save(sd, path)
    ref = torch.load(path, weights_only=True)
    f, tensors = load_state_dict(path)
    try:
        assert list(tensors) == list(sd)
        for name, t in tensors.items():
            got = t.array()
            want = as_numpy(ref[name])
            assert t.shape == tuple(ref[name].shape), name
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert np.array_equal(got, want), name
            assert not got.flags.writeable, name
            # Dropping the pages only unmaps them from the process: the next read faults them back.
            t.release()
            assert np.array_equal(t.array(), want), name
        assert tensors["embed"].storage is tensors["head"].storage
        assert not tensors["transposed"].is_contiguous() and tensors["plain"].is_contiguous()
        # The arrays are views into the file, not copies.
        assert np.shares_memory(tensors["plain"].array(), tensors["rows"].array())
    finally:
        f.close()


def test_other_dtypes_and_prefix(tmp_path):
    path = tmp_path / "weird-name.pt"
    torch.save({"i": torch.arange(5), "d": torch.ones(3, dtype=torch.float64),
                "c": torch.ones(2, dtype=torch.complex64), "n": 7}, path)
    with TorchFile(path) as f:
        assert f.prefix == "weird-name/"
        tensors = f.tensors()
        assert sorted(tensors) == ["c", "d", "i"]  # the plain int is skipped
        assert tensors["i"].array().tolist() == [0, 1, 2, 3, 4]
        assert tensors["d"].dtype == "f64"
        with pytest.raises(LmpackError, match="ComplexFloatStorage, which lmpack does not read"):
            tensors["c"].array()


def test_closed_file_refuses_reads(tmp_path):
    torch.save({"a": torch.ones(4)}, tmp_path / "a.pt")
    f = TorchFile(tmp_path / "a.pt")
    t = f.tensors()["a"]
    f.close()
    with pytest.raises(LmpackError, match="closed"):
        t.array()


# ---------------------------------------------------------------------------------------------
# HF .bin folders


@pytest.mark.parametrize("shards,dtype", [(1, "float32"), (3, "bfloat16"), (2, "float16")])
def test_hf_bin_matches_safetensors(hf_checkpoint, tmp_path, shards, dtype):
    ckpt = hf_checkpoint(dtype=dtype, n_kv_heads=2)
    folder = torch_sources.hf_to_bin(ckpt.path, tmp_path / "bin", shards=shards)
    ref = {k: as_numpy(v) for k, v in torch_sources.hf_state_dict(ckpt.path).items()}
    src = HFBinSource(folder)
    try:
        assert src.info.kind == "hf-bin" and len(src.info.files) == shards
        specs = src.tensor_specs()
        assert {s.name for s in specs} == set(ref)
        assert src.config().n_kv_heads == 2
        for s in specs:
            got = src.load(s.name)
            assert s.dtype == {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}[dtype]
            assert np.array_equal(got, ref[s.name]), s.name
    finally:
        src.close()


def test_hf_bin_tied_head(hf_checkpoint, tmp_path):
    ckpt = hf_checkpoint(tie=True)
    folder = torch_sources.hf_to_bin(ckpt.path, tmp_path / "bin", tie_saved=True)
    with TorchFile(folder / "pytorch_model.bin") as f:
        t = f.tensors()
        assert t["lm_head.weight"].storage is t["model.embed_tokens.weight"].storage
    src = HFBinSource(folder)
    assert "lm_head.weight" not in {s.name for s in src.tensor_specs()}  # tie: the saved copy is dropped
    src.close()

    untied = hf_checkpoint()
    folder = torch_sources.hf_to_bin(untied.path, tmp_path / "untied")
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del sd["lm_head.weight"]
    torch.save(sd, folder / "pytorch_model.bin")
    with pytest.raises(LmpackError, match="'lm_head.weight' is missing"):
        HFBinSource(folder)


def test_hf_bin_transposed_tensor_comes_out_contiguous(hf_checkpoint, tmp_path):
    ckpt = hf_checkpoint()
    folder = torch_sources.hf_to_bin(ckpt.path, tmp_path / "bin")
    sd = torch.load(folder / "pytorch_model.bin", weights_only=True)
    name = "model.layers.0.mlp.down_proj.weight"
    want = sd[name].numpy().copy()
    sd[name] = sd[name].T.contiguous().T  # same values, column-major storage
    torch.save(sd, folder / "pytorch_model.bin")
    src = HFBinSource(folder)
    got = src.load(name)
    src.close()
    assert got.flags.c_contiguous and np.array_equal(got, want)


def test_hf_bin_bad_folders(hf_checkpoint, tmp_path):
    ckpt = hf_checkpoint()
    folder = torch_sources.hf_to_bin(ckpt.path, tmp_path / "bin", shards=2)
    index = folder / "pytorch_model.bin.index.json"
    text = index.read_text()
    index.write_text(text.replace("pytorch_model-00002-of-00002.bin", "../../etc/passwd", 1))
    with pytest.raises(LmpackError, match="not a file name in the folder"):
        HFBinSource(folder)
    # An index that lies about where a tensor lives.
    first = "pytorch_model-00001-of-00002.bin"
    index.write_text(text.replace('"pytorch_model-00002-of-00002.bin"', f'"{first}"', 1))
    with pytest.raises(LmpackError, match="is listed in"):
        HFBinSource(folder)
    index.write_text(text)
    sd = torch.load(folder / first, weights_only=True)
    name = next(iter(sd))
    sd[name] = sd[name].double()
    torch.save(sd, folder / first)
    with pytest.raises(LmpackError, match="dtype f64"):
        HFBinSource(folder)


# ---------------------------------------------------------------------------------------------
# Container-level errors


def test_legacy_format_refused_with_hint(tmp_path):
    path = tmp_path / "old.bin"
    torch.save({"a": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(LmpackError, match=r"legacy .*_use_new_zipfile_serialization=True"):
        TorchFile(path)


def test_not_a_zip_and_empty(tmp_path):
    (tmp_path / "e.bin").write_bytes(b"")
    with pytest.raises(LmpackError, match="empty file"):
        TorchFile(tmp_path / "e.bin")
    (tmp_path / "j.bin").write_bytes(b'{"json": 1}')
    with pytest.raises(LmpackError, match="not a PyTorch zip"):
        TorchFile(tmp_path / "j.bin")
    with pytest.raises(LmpackError, match="cannot open"):
        TorchFile(tmp_path / "missing.bin")
    with pytest.raises(LmpackError, match="is a folder"):
        TorchFile(tmp_path)


def _simple(numel=6, key="0"):
    data = np.arange(numel, dtype=np.float32).tobytes()
    pkl = torch_pickle({"w": _Rebuild(_Pid(torch.FloatStorage, key, numel), 0, (2, 3), (3, 1), False, OrderedDict())})
    return pkl, {key: data}


def test_handmade_archive_zip64_and_padding(tmp_path):
    pkl, records = _simple()
    for zip64 in (False, True):
        path = archive(tmp_path / f"z{zip64}.pt", pkl, records, zip64=zip64, pad=17)
        with TorchFile(path) as f:
            assert f.tensors()["w"].array().tolist() == [[0, 1, 2], [3, 4, 5]]


def test_compressed_records(tmp_path):
    pkl, records = _simple()
    # A deflated pickle is inflated (it is small); a deflated tensor record cannot be mapped.
    path = archive(tmp_path / "c.pt", pkl, records, deflate={"archive/data.pkl", "archive/data/0"})
    with TorchFile(path) as f:
        with pytest.raises(LmpackError, match="compressed"):
            f.tensors()["w"].array()


def test_big_endian_refused(tmp_path):
    pkl, records = _simple()
    members = [("a/data.pkl", pkl), ("a/byteorder", b"big"), ("a/data/0", records["0"])]
    with pytest.raises(LmpackError, match="byte order"):
        TorchFile(write_zip(tmp_path / "b.pt", members))


@pytest.mark.parametrize("args,match", [
    ((0, (3, 3), (3, 1)), "reads past its storage"),
    ((5, (2,), (1,)), "reads past its storage"),
    ((0, (2, 3), (1,)), "2 dims but 1 strides"),
    ((-1, (2,), (1,)), "non-negative"),
    ((7, (0,), (1,)), "past its storage"),
    ((0, (2, 3), (3, "x")), "non-negative integer"),
])
def test_tensor_bounds_checked(tmp_path, args, match):
    pkl = torch_pickle({"w": _Rebuild(_Pid(torch.FloatStorage, "0", 6), *args, False, OrderedDict())})
    with pytest.raises(LmpackError, match=match):
        TorchFile(archive(tmp_path / "t.pt", pkl, {"0": bytes(24)}))


def test_storage_claims_checked(tmp_path):
    pkl = torch_pickle({"w": _Rebuild(_Pid(torch.FloatStorage, "0", 100), 0, (2,), (1,), False, OrderedDict())})
    with pytest.raises(LmpackError, match="record holds 24 bytes"):
        TorchFile(archive(tmp_path / "a.pt", pkl, {"0": bytes(24)}))
    pkl = torch_pickle({"w": _Rebuild(_Pid(torch.FloatStorage, "9", 6), 0, (2,), (1,), False, OrderedDict())})
    with pytest.raises(LmpackError, match="no record archive/data/9"):
        TorchFile(archive(tmp_path / "b.pt", pkl, {"0": bytes(24)}))
    pkl = torch_pickle({"a": _Rebuild(_Pid(torch.FloatStorage, "0", 6), 0, (2,), (1,), False, OrderedDict()),
                        "b": _Rebuild(_Pid(torch.HalfStorage, "0", 6), 0, (2,), (1,), False, OrderedDict())})
    with pytest.raises(LmpackError, match="used as both"):
        TorchFile(archive(tmp_path / "c.pt", pkl, {"0": bytes(24)}))


def test_backward_hooks_refused(tmp_path):
    pkl = torch_pickle({"w": _Rebuild(_Pid(torch.FloatStorage, "0", 6), 0, (2,), (1,), False, OrderedDict(a=1))})
    with pytest.raises(LmpackError, match="backward hooks"):
        TorchFile(archive(tmp_path / "h.pt", pkl, {"0": bytes(24)}))


# ---------------------------------------------------------------------------------------------
# Malicious pickles never run


def _payloads(sentinel: Path) -> dict[str, bytes]:
    cmd = f"touch {sentinel}".encode()
    py = f"open({str(sentinel)!r}, 'w').close()".encode()
    s = lambda b: b"\x8c" + bytes([len(b)]) + b  # SHORT_BINUNICODE  # noqa: E731
    return {
        "GLOBAL os.system": b"cos\nsystem\n(S'" + cmd + b"'\ntR.",
        "GLOBAL posix.system": b"cposix\nsystem\n(S'" + cmd + b"'\ntR.",
        "STACK_GLOBAL builtins.eval": b"\x80\x04" + s(b"builtins") + s(b"eval") + b"\x93" + s(py) + b"\x85R.",
        "GLOBAL __builtin__.eval (py2 name)": b"c__builtin__\neval\n(S'" + py + b"'\ntR.",
        "INST os.system": b"(S'" + cmd + b"'\nios\nsystem\n.",
        "OBJ os.system": b"(cos\nsystem\nS'" + cmd + b"'\no.",
        "subprocess.Popen": b"csubprocess\nPopen\n((S'touch'\nS'" + str(sentinel).encode() + b"'\nltR.",
        # A torch-looking dict whose tensor rebuild is smuggled through an allowed wrapper.
        "_rebuild_from_type_v2 with os.system": (b"ctorch._tensor\n_rebuild_from_type_v2\n(cos\nsystem\n"
                                                  b"ctorch\nTensor\n(S'" + cmd + b"'\ntNtR."),
        "torch.storage._load_from_bytes": b"ctorch.storage\n_load_from_bytes\n(C\x00tR.",
    }


def _wait_for(path: Path, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.exists():
            return True
        time.sleep(0.05)
    return path.exists()


@pytest.mark.parametrize("which", list(_payloads(Path("x"))))
def test_malicious_pickle_never_runs(tmp_path, which):
    sentinel = tmp_path / "pwned"
    payload = _payloads(sentinel)[which]
    if which not in ("_rebuild_from_type_v2 with os.system", "torch.storage._load_from_bytes"):
        # The payload is live: the stock unpickler runs it.
        pickle.loads(payload)
        assert _wait_for(sentinel), f"{which}: the test payload does not work"
        sentinel.unlink()
    path = archive(tmp_path / "evil.pt", payload, {})
    with pytest.raises(UnsafePickleError, match="refusing pickle (global|opcode)"):
        TorchFile(path)
    time.sleep(0.2)
    assert not sentinel.exists()


def test_extension_registry_opcode_refused(tmp_path):
    # EXT2 fetches a global through copyreg's registry without naming it in the pickle.
    sentinel = tmp_path / "pwned"
    payload = b"\x80\x02\x83\xcd\xab(S'touch " + str(sentinel).encode() + b"'\ntR."
    copyreg.add_extension("os", "system", 0xABCD)
    try:
        pickle.loads(payload)
        assert _wait_for(sentinel)
        sentinel.unlink()
        with pytest.raises(UnsafePickleError, match="EXT2"):
            TorchFile(archive(tmp_path / "evil.pt", payload, {}))
    finally:
        copyreg.remove_extension("os", "system", 0xABCD)
        copyreg.clear_extension_cache()
    assert not sentinel.exists()


def test_build_cannot_mutate_admitted_globals(tmp_path):
    # BUILD on an admitted function would otherwise set attributes on lmpack's own objects.
    payload = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}S'__defaults__'\n(I1\ntsb."
    with pytest.raises(UnsafePickleError, match="set state|BUILD"):
        TorchFile(archive(tmp_path / "b.pt", payload, {}))


# ---------------------------------------------------------------------------------------------
# Fuzzing: only LmpackError, whatever the bytes


def _seed_archive() -> tuple[bytes, bytes]:
    """A small real torch.save archive and its data.pkl."""
    buf = io.BytesIO()
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save(OrderedDict(a=t, b=t.T, c=t[1:].to(torch.bfloat16), d=torch.ones(2, dtype=torch.float16)), buf)
    data = buf.getvalue()
    with TorchFile(_tmp_write(data)) as f:
        member = f.members[f.prefix + "data.pkl"]
        pkl = data[member.offset:member.offset + member.size]
    return data, pkl


def _tmp_write(data: bytes) -> Path:
    fd, name = tempfile.mkstemp(suffix=".pt")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return Path(name)


def _read_everything(path: Path) -> None:
    """Open, then touch every tensor's bytes: any failure must be an LmpackError."""
    try:
        with TorchFile(path) as f:
            for t in f.tensors().values():
                a = t.array()
                a.sum()
    except LmpackError:
        pass
    finally:
        path.unlink()


SEED_ZIP, SEED_PKL = _seed_archive()
mutations = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8)
# No deadline: a test must not depend on the machine's speed or load (hangs are bounded by the
# unpickler's own limits, which other tests check).
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mutate(data: bytes, muts, cut: int | None) -> bytes:
    b = bytearray(data)
    for pos, val in muts:
        b[pos % len(b)] = val
    return bytes(b[:cut] if cut is not None else b)


@FUZZ
@given(muts=mutations, cut=st.none() | st.integers(0, len(SEED_ZIP)))
def test_fuzz_zip_bytes(muts, cut):
    _read_everything(_tmp_write(_mutate(SEED_ZIP, muts, cut)))


@FUZZ
@given(muts=mutations, cut=st.none() | st.integers(0, len(SEED_PKL)),
       insert=st.none() | st.tuples(st.integers(0, len(SEED_PKL)), st.binary(min_size=1, max_size=12)))
def test_fuzz_pickle_bytes(muts, cut, insert):
    pkl = _mutate(SEED_PKL, muts, cut)
    if insert is not None:
        pkl = pkl[:insert[0]] + insert[1] + pkl[insert[0]:]
    # Rebuild the archive around the mutated pickle so its CRC is right and the unpickler sees it.
    records = {str(i): bytes(48) for i in range(4)}
    with tempfile.TemporaryDirectory() as d:
        path = archive(Path(d) / "f.pt", pkl, records)
        _read_everything(path)
