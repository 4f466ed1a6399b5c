"""LmpWriter details the format tests do not reach: output permissions and write errors raised on
the background writer thread."""
from __future__ import annotations

import os
import stat

import pytest

from lmpack.errors import LmpackError
from lmpack.formats import lmp
from lmpack.formats.config import ModelConfig


def test_output_gets_umask_permissions_not_mkstemps(tiny_hf, tmp_path):
    from lmpack.convert import convert

    old = os.umask(0o022)
    try:
        out = convert(tiny_hf.path, tmp_path / "m.lmp")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644


def _config() -> ModelConfig:
    return ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=2, head_dim=16, ffn_dim=64, vocab_size=8,
                       norm_eps=1e-5, rope_theta=1e4, max_context=16, bos_id=1, eos_ids=[2])


def test_write_error_on_the_writer_thread_reaches_the_caller(tmp_path, monkeypatch):
    writer = lmp.LmpWriter(tmp_path / "x.lmp", _config(), b"tok", [("a", "f32", (4, 8))], {})

    class Full(OSError):
        pass

    # the error names the file being written (the writer thread's OSError carries no file name)
    with pytest.raises(LmpackError, match=r"x\.lmp: cannot write \(No space left on device\)"):
        with writer:
            real_write = writer._f.write

            def failing_write(buf):
                if len(buf) == 128:
                    raise Full(28, "No space left on device")
                return real_write(buf)

            monkeypatch.setattr(writer._f, "write", failing_write)
            writer.write_tensor("a", [bytes(128)])
    assert list(tmp_path.iterdir()) == []


def test_wrong_byte_count_is_refused(tmp_path):
    writer = lmp.LmpWriter(tmp_path / "x.lmp", _config(), b"tok", [("a", "f32", (4, 8))], {})
    with pytest.raises(LmpackError, match="expected 128"):
        with writer:
            writer.write_tensor("a", [bytes(100)])
    assert list(tmp_path.iterdir()) == []


def _convert_in_small_windows(tiny_hf, path, calls, monkeypatch, supported: bool):
    """Converts the tiny model with a 4 KiB write-behind window, recording the calls."""
    from lmpack.convert import convert

    real = lmp._core.write_behind

    def spy(fd, offset, nbytes, wait):
        calls.append((offset, nbytes, wait))
        return real(fd, offset, nbytes, wait) if supported else False

    monkeypatch.setattr(lmp._BackgroundWriter, "WRITE_BEHIND", 4096)
    monkeypatch.setattr(lmp._BackgroundWriter, "SYNC_EVERY", 8192)
    monkeypatch.setattr(lmp._core, "write_behind", spy)
    convert(tiny_hf.path, path)
    with lmp.LmpReader(path) as r:
        assert r.verify_checksums() == []
        assert path.stat().st_size > 20 * 4096


def test_write_behind_starts_each_range_and_waits_for_the_previous(tiny_hf, tmp_path, monkeypatch):
    calls = []
    _convert_in_small_windows(tiny_hf, tmp_path / "x.lmp", calls, monkeypatch, supported=True)
    starts = [(o, n) for o, n, wait in calls if not wait]
    waits = [(o, n) for o, n, wait in calls if wait]
    assert len(starts) > 10
    # the started ranges tile the file in order, and each step waits for the range started one step before
    assert all(o1 == o0 + n0 for (o0, n0), (o1, _) in zip(starts, starts[1:]))
    assert waits == starts[:-1]


def test_without_write_behind_the_writer_falls_back_to_fdatasync(tiny_hf, tmp_path, monkeypatch):
    synced = []
    real_sync = lmp._fdatasync
    monkeypatch.setattr(lmp, "_fdatasync", lambda fd: (synced.append(fd), real_sync(fd)))
    calls = []
    _convert_in_small_windows(tiny_hf, tmp_path / "x.lmp", calls, monkeypatch, supported=False)
    assert len(calls) == 1  # asked once, then never again
    assert len(synced) > 5
