"""Fuzzing `.lmp` preambles, headers and directories: every reader must fail cleanly.

Hypothesis mutates a small valid file (byte flips with and without re-done checksums, JSON field
edits with huge, negative and wrongly typed values, preamble fields, swapped or truncated ranges)
and feeds each result to `LmpReader`, `lmpack.load` (plus a forward pass when it loads), `lmpack
inspect` and `lmpack verify`. Allowed outcomes: success, or an LmpackError (exit status 1 from the
CLI with an `error:` line or a report). Anything else fails the test; a crash of the C core kills
the test run (it runs in-process on purpose); a hang trips a watchdog that ends the process and
leaves the stuck traceback in WATCHDOG_LOG; a huge allocation shows up as peak-RSS growth.
"""
from __future__ import annotations

import copy
import faulthandler
import json
import resource
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import checkpoints
import lmpack
from lmpack.cli import app
from lmpack.errors import LmpackError
from lmpack.formats.config import ModelConfig, expected_tensors
from lmpack.formats.dtypes import numpy_dtype
from lmpack.formats.lmp import LmpReader, LmpWriter
from lmpack.verify import verify

WATCHDOG_SECONDS = 60
WATCHDOG_LOG = Path(tempfile.gettempdir()) / "lmpack-fuzz-watchdog.txt"
MAX_RSS_GROWTH_MB = 400

# A tiny model with every stored dtype, so each decoder path of the runtime is reachable.
CFG = dict(architecture="llama", dim=64, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=16, ffn_dim=96,
           vocab_size=400, norm_eps=1e-5, rope_theta=10000.0, max_context=64, bos_id=1, eos_ids=[2])
DTYPE_OF = {"q_proj": "q8_0", "k_proj": "f16", "v_proj": "bf16", "o_proj": "q8_0", "gate_proj": "f32",
            "up_proj": "q8_0", "down_proj": "f16", "embed_tokens": "bf16", "lm_head": "q8_0"}


def _encode(x: np.ndarray, dtype: str) -> list:
    from lmpack.formats.dtypes import cast
    from lmpack.quantize import q8_0_chunks

    if dtype == "q8_0":
        return list(q8_0_chunks("t", x, "f32", threads=1))
    return [memoryview(np.ascontiguousarray(cast(x, "f32", dtype), dtype=numpy_dtype(dtype))).cast("B")]


@pytest.fixture(scope="module")
def base_file(tmp_path_factory, sp_model_path) -> bytes:
    cfg = ModelConfig(**CFG)
    shapes = expected_tensors(cfg)
    rng = np.random.default_rng(0)
    plan = []
    for name, shape in shapes.items():
        kind = next((v for k, v in DTYPE_OF.items() if k in name), "f32")
        plan.append((name, "f32" if len(shape) == 1 else kind, shape))
    path = tmp_path_factory.mktemp("fuzz") / "base.lmp"
    with LmpWriter(path, cfg, sp_model_path.read_bytes(), plan, {"source_kind": "test"}) as w:
        for name, dtype, shape in plan:
            x = (rng.standard_normal(shape) * 0.2 + (1.0 if len(shape) == 1 else 0.0)).astype(np.float32)
            w.write_tensor(name, _encode(x, dtype))
    assert verify(path).ok
    with lmpack.load(path, threads=1) as m:
        assert np.isfinite(m.logits([1, 5, 9])).all()
    return path.read_bytes()


# --------------------------------------------------------------------------------------------
# Mutations. Each returns the mutated bytes; checksums are re-done where the mutation says so,
# so the readers' own validation (not merely the CRC) is exercised.


def _split(data: bytes) -> tuple[int, int, dict]:
    header_len, data_offset = struct.unpack_from("<QQ", data, 16)
    return header_len, data_offset, json.loads(data[64:64 + header_len])


def _fix_crcs(buf: bytearray, header_len: int) -> None:
    """Re-do the header and preamble CRCs for whatever the buffer now says."""
    if 64 + header_len <= len(buf):
        struct.pack_into("<I", buf, 40, checkpoints.crc32c_py(bytes(buf[64:64 + header_len])))
    struct.pack_into("<I", buf, 44, checkpoints.crc32c_py(bytes(buf[:44])))


def _with_header(data: bytes, header: object) -> bytes:
    _, data_offset, _ = _split(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    if 64 + len(raw) > data_offset:
        raw = raw[:data_offset - 64]  # too long for its room: keep the truncated (invalid) JSON
    buf = bytearray(data)
    buf[64:data_offset] = raw + b"\0" * (data_offset - 64 - len(raw))
    struct.pack_into("<Q", buf, 16, len(raw))
    _fix_crcs(buf, len(raw))
    return bytes(buf)


BIG = [2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30]
VALUES = st.one_of(
    st.sampled_from([0, 1, -1, -64, 64, 4096, 63, 65, -(2**63), 0.5, -0.0, float("nan"), float("inf"), "", "x",
                     "f32", "q8_0", "u8", None, True, False, [], {}, [0], [1, 2], [-1], [2**40, 2**40]] + BIG),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-5, 2**33), max_size=4),
)
TENSOR_KEYS = ["name", "dtype", "shape", "offset", "nbytes", "crc32c"]
CONFIG_KEYS = list(CFG) + ["tie_embeddings", "rope_scaling", "chat_format"]
TOKENIZER_KEYS = ["kind", "offset", "nbytes", "crc32c"]


@st.composite
def mutations(draw, data: bytes) -> bytes:
    kind = draw(st.sampled_from(["flip_header", "field", "delete", "preamble", "resize", "flip_data", "swap",
                                 "numeric"]))
    header_len, data_offset, header = _split(data)
    if kind == "flip_header":  # raw bytes of preamble + header + padding, CRCs re-done or not
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, data_offset - 1))
            buf[at] ^= draw(st.integers(1, 255))
        if draw(st.booleans()):
            _fix_crcs(buf, min(struct.unpack_from("<Q", buf, 16)[0], 1 << 30))
        return bytes(buf)
    if kind in ("field", "delete", "numeric"):
        h = copy.deepcopy(header)
        where = draw(st.sampled_from(["tensor", "config", "tokenizer", "top"]))
        if where == "tensor":
            target, keys = draw(st.sampled_from(h["tensors"])), TENSOR_KEYS
        elif where == "config":
            target, keys = h["config"], CONFIG_KEYS
        elif where == "tokenizer":
            target, keys = h["tokenizer"], TOKENIZER_KEYS
        else:
            target, keys = h, ["config", "tokenizer", "tensors", "format", "version"]
        key = draw(st.sampled_from(keys))
        if kind == "delete":
            target.pop(key, None)
        elif kind == "numeric" and isinstance(target.get(key), int) and not isinstance(target.get(key), bool):
            # Near the true value: off by an alignment step, a block, a page, a sign.
            delta = draw(st.sampled_from([1, -1, 2, 32, -32, 64, -64, 4096, -4096, 2**32, -(2**32)]))
            target[key] = target[key] + delta
        elif kind == "numeric" and key == "shape" and isinstance(target.get(key), list):
            shape = list(target["shape"])
            i = draw(st.integers(0, len(shape) - 1))
            shape[i] = draw(st.sampled_from([0, 1, shape[i] * 2, shape[i] + 32, shape[i] - 32, 2**31, 2**40, -shape[i]]))
            target["shape"] = shape
        else:
            target[key] = draw(VALUES)
        return _with_header(data, h)
    if kind == "preamble":
        buf = bytearray(data)
        field = draw(st.sampled_from([(8, "<I"), (12, "<I"), (16, "<Q"), (24, "<Q"), (32, "<Q"), (48, "<Q")]))
        value = draw(st.sampled_from([0, 1, 2, 63, 64, 4096, 8192, header_len - 1, header_len + 1, data_offset - 4096,
                                      data_offset + 4096, len(data) - 1, len(data) + 1, 2**31, 2**32 - 1, 2**63,
                                      2**64 - 1]))
        if field[1] == "<I":
            value &= 0xFFFFFFFF
        struct.pack_into(field[1], buf, field[0], value)
        _fix_crcs(buf, min(struct.unpack_from("<Q", buf, 16)[0], 1 << 30))
        return bytes(buf)
    if kind == "resize":
        cut = draw(st.integers(0, len(data) + 100))
        return data[:cut] if cut <= len(data) else data + bytes(cut - len(data))
    if kind == "flip_data":
        buf = bytearray(data)
        at = draw(st.integers(data_offset, len(data) - 1))
        buf[at] ^= draw(st.integers(1, 255))
        return bytes(buf)
    # swap: two directory entries exchange their offsets (and checksums), whatever their sizes
    h = copy.deepcopy(header)
    a, b = draw(st.lists(st.integers(0, len(h["tensors"]) - 1), min_size=2, max_size=2, unique=True))
    for key in draw(st.sampled_from([("offset",), ("offset", "crc32c"), ("offset", "nbytes", "crc32c")])):
        h["tensors"][a][key], h["tensors"][b][key] = h["tensors"][b][key], h["tensors"][a][key]
    return _with_header(data, h)


# --------------------------------------------------------------------------------------------
# The property


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _exercise(path: Path, runner: CliRunner) -> None:
    loaded = None
    try:
        LmpReader(path).close()
    except LmpackError:
        pass
    try:
        with lmpack.load(path, threads=1, max_context=16) as m:
            loaded = m.logits([1, 2, 3, 399])
            assert loaded.shape == (4, m.config.vocab_size)
    except LmpackError:
        pass

    for args in (["inspect", str(path)], ["verify", str(path), "--json"]):
        r = runner.invoke(app, args)
        assert r.exit_code in (0, 1), (args, r.exit_code, r.output, r.exception)
        assert "internal error" not in r.output, (args, r.output)
        assert r.exception is None or isinstance(r.exception, SystemExit), (args, repr(r.exception))
        if args[0] == "verify":
            doc = json.loads(r.stdout)
            assert doc["ok"] == (r.exit_code == 0)
            if loaded is None:  # what the runtime refuses, verify must not call sound
                assert not doc["ok"], "verify passed a file that lmpack.load refuses"


def test_fuzz_mutated_files(base_file, tmp_path):
    runner = CliRunner()
    path = tmp_path / "fuzz.lmp"
    rss_before = _rss_mb()
    _exercise_bytes = _make_runner(path, runner)
    _exercise_bytes(base_file)  # the unmutated file goes through every reader
    for blob in _hand_picked(base_file):
        _exercise_bytes(blob)

    @settings(max_examples=150, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def check(data):
        _exercise_bytes(data.draw(mutations(base_file)))

    check()
    growth = _rss_mb() - rss_before
    assert growth < MAX_RSS_GROWTH_MB, f"peak RSS grew by {growth:.0f} MB while fuzzing"


def _make_runner(path: Path, runner: CliRunner):
    def run(blob: bytes) -> None:
        path.write_bytes(blob)
        # A hang ends the process with exit status 1; pytest's capture would swallow the traceback,
        # so it goes to a file that outlives the run.
        with open(WATCHDOG_LOG, "w") as log:
            faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True, file=log)
            try:
                _exercise(path, runner)
            finally:
                faulthandler.cancel_dump_traceback_later()
    return run


def _hand_picked(data: bytes):
    """Mutations worth trying every time, whatever hypothesis draws."""
    _, _, header = _split(data)

    def edit(fn):
        h = copy.deepcopy(header)
        fn(h)
        return _with_header(data, h)

    big = [t for t in header["tensors"] if len(t["shape"]) == 2]
    yield edit(lambda h: h["tensors"][1].update(nbytes=2**63))
    yield edit(lambda h: h["tensors"][1].update(offset=2**64 - 64))
    yield edit(lambda h: h["tensors"][1].update(shape=[2**31, 2**31]))
    yield edit(lambda h: h["tensors"][1].update(dtype="q8_0"))
    yield edit(lambda h: h["config"].update(n_layers=2**24))
    yield edit(lambda h: h["config"].update(vocab_size=2**24, max_context=2**24))
    yield edit(lambda h: h["tokenizer"].update(offset=big[0]["offset"], nbytes=big[0]["nbytes"]))
    yield edit(lambda h: h["tokenizer"].update(nbytes=0))
    yield edit(lambda h: h.update(tensors=h["tensors"] * 2))
    yield edit(lambda h: h.update(tensors={}))
    yield _with_header(data, [])
    yield _with_header(data, "lmpack")
    yield data[:64]
    yield b""
