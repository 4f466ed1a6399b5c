"""Reading and writing `.lmp` container files, exactly as docs/FORMAT.md specifies.

`LmpWriter` streams a planned set of tensors into a temporary file beside the output and renames
it into place only when every byte and checksum is written, so a failure never leaves a partial
file. `LmpReader` maps a file read-only, validates the preamble, header and directory before
exposing anything, and hands out zero-copy numpy views of tensors; it is the public API for
reading `.lmp` files from Python.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import mmap
import os
import struct
import queue
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np

from lmpack import _core
from lmpack.errors import LmpackError, brief
from lmpack.formats.arch import family
from lmpack.formats.config import ModelConfig, expected_tensors
from lmpack.formats.jsonfile import parse_json
from lmpack.formats.mmaps import drop_pages, open_readonly
from lmpack.formats.dtypes import ALIGN, DTYPES, Q8_0_BLOCK, align_up, numpy_dtype, q8_0_planes, tensor_nbytes

MAGIC = b"\x89LMP\r\n\x1a\n"
VERSION = 1
PREAMBLE = struct.Struct("<8sIIQQQII16x")  # magic, version, flags, header_len, data_offset, file_size, crcs
PREAMBLE_SIZE = 64
PAGE = 4096
MAX_HEADER = 64 << 20
TOKENIZER_KINDS = ("sentencepiece", "tokenizers")
# Optional fields of the header's `tokenizer` section and of its `generation` section (FORMAT.md).
TOKENIZER_FIELDS = {"add_bos": bool, "legacy": bool, "clean_up_tokenization_spaces": bool, "chat_template": str,
                    "special_tokens": dict, "chat_templates": dict}
GENERATION_FIELDS = {"temperature": float, "top_p": float, "top_k": int, "repetition_penalty": float,
                     "do_sample": bool}

assert PREAMBLE.size == PREAMBLE_SIZE


@dataclass(frozen=True)
class TensorEntry:
    """One row of the tensor directory."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    crc32c: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "offset": self.offset, "nbytes": self.nbytes, "crc32c": self.crc32c}


class Q8Tensor(NamedTuple):
    """A q8_0 tensor as stored: int8 quants (rows, cols) and fp16 scales (rows, cols/32)."""

    quants: np.ndarray
    scales: np.ndarray

    def dequantize(self) -> np.ndarray:
        rows, cols = self.quants.shape
        q = self.quants.reshape(rows, cols // Q8_0_BLOCK, Q8_0_BLOCK).astype(np.float32)
        return (q * self.scales.astype(np.float32)[:, :, None]).reshape(rows, cols)


# macOS has no fdatasync; fsync does the job there
_fdatasync = getattr(os, "fdatasync", os.fsync)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder that cannot be opened (or a platform that cannot open folders)
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the data itself is synced
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _signals_deferred():
    """Hold SIGINT and SIGTERM until the block is done, then deliver them, for the few steps where
    being interrupted would leave a file behind untracked. Python runs signal handlers between
    bytecodes, possibly well after the signal arrived, so the Python-level handlers are swapped
    (blocking the signal in the OS would not stop one that already arrived)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # handlers run on the main thread only
        yield
        return
    held: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    # a handler installed from C (getsignal gives None) cannot be put back, so it is left alone
    previous = {s: signal.signal(s, lambda signum, frame: held.append(signum))
                for s in sigs if signal.getsignal(s) is not None}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if held:
            signal.raise_signal(held[0])  # runs the restored handler now


def _lock(fd: int, blocking: bool) -> bool:
    """An exclusive advisory lock on an open file (released when the process ends, however it
    ends); False if another process holds it. Always True where flock does not exist."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except (BlockingIOError, PermissionError):
        return False
    except OSError:  # a file system without locks: treat every temp file as in use
        return False
    return True


def remove_stale_temps(path: Path, keep: Path | None = None) -> list[Path]:
    """Delete the temp files an earlier writer to `path` left behind when it was killed (SIGKILL,
    a power cut): names `.NAME.XXXXXXXX.tmp` beside it, regular files of this user that no live
    writer holds locked. Returns what was removed."""
    import re
    import stat

    pattern = re.compile(re.escape(f".{path.name}.") + r"[a-z0-9_]{8}\.tmp")
    removed = []
    try:
        names = [n for n in os.listdir(path.parent) if pattern.fullmatch(n)]
    except OSError:
        return removed
    for name in names:
        p = path.parent / name
        if keep is not None and p == keep:
            continue
        try:
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                continue
            fd = os.open(p, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue
        try:
            fst = os.fstat(fd)
            # A writer locks its file right after creating it: an empty file that is seconds old
            # may be one that is not locked yet, and is left for next time.
            fresh = fst.st_size == 0 and abs(datetime.datetime.now().timestamp() - fst.st_mtime) < 5
            if not fresh and _lock(fd, blocking=False) and os.path.samestat(fst, os.lstat(p)):
                os.unlink(p)
                removed.append(p)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def _crc_hex(crc: int) -> str:
    return f"{crc:08x}"


# --------------------------------------------------------------------------------------------
# Writing


class _BackgroundWriter:
    """Writes buffers to a file, in order, on a thread of its own.

    Encoding a chunk (casting, quantizing, checksumming: C code that releases the GIL) then
    overlaps the write of the previous one. The file has to reach the disk before it is renamed
    into place, and waiting for that at the end would idle the CPU while the disk works; so every
    WRITE_BEHIND bytes the thread waits for the range it started last time and starts the disk
    write of the range just completed (`_core.write_behind`, Linux's sync_file_range): encoding,
    copying and the disk then run at once and dirty memory stays at about two ranges. Where that
    call is missing it falls back to an fdatasync every SYNC_EVERY bytes. The queue is short, so
    at most a few chunks are in flight.
    """

    WRITE_BEHIND = 64 << 20
    SYNC_EVERY = 256 << 20

    def __init__(self, f, depth: int = 3):
        self._f = f
        self._queue: queue.Queue = queue.Queue(depth)
        self._error: BaseException | None = None
        self.pos = f.tell()
        self._thread = threading.Thread(target=self._run, name="lmpack-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            fd = self._f.fileno()
            # the disk write of everything below `started` has been started, and waited for below `previous`
            started = previous = self._f.tell()
        except BaseException as e:  # noqa: BLE001 - the file was closed under us: report, do not print
            self._error = e
            while self._queue.get() is not None:
                pass
            return
        write_behind = True
        while (buf := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain after a failure; the producer sees the error on its next call
            try:
                if callable(buf):  # a "these bytes are written" callback, run in order
                    buf()
                    continue
                self._f.write(buf)
                pos = self._f.tell()
                if write_behind and pos - started >= self.WRITE_BEHIND:
                    self._f.flush()
                    # wait for the range started last time, then start this one
                    if started > previous:
                        write_behind = _core.write_behind(fd, previous, started - previous, True)
                    write_behind = write_behind and _core.write_behind(fd, started, pos - started, False)
                    previous, started = started, pos
                elif not write_behind and pos - started >= self.SYNC_EVERY:
                    self._f.flush()
                    _fdatasync(fd)
                    started = pos
            except BaseException as e:  # noqa: BLE001 - re-raised in the producer's thread
                self._error = e

    def write(self, buf) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(buf)
        self.pos += len(buf)

    def then(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the writer thread once everything queued before it is written."""
        self._queue.put(callback)

    def close(self) -> None:
        """Wait for every queued write; re-raise the first write error."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            raise self._error


class LmpWriter:
    """Writes one `.lmp` file; use as a context manager, then `write_tensor` each planned tensor.

    The full directory (names, dtypes, shapes) is planned up front so every offset is known before
    any data is written; checksums are filled into the header at the end (fixed-width hex, so the
    header keeps its length).
    """

    def __init__(self, path: str | os.PathLike, config: ModelConfig, tokenizer: bytes,
                 tensors: Iterable[tuple[str, str, tuple[int, ...]]], provenance: dict[str, Any],
                 tokenizer_kind: str = "sentencepiece", tokenizer_fields: dict[str, Any] | None = None,
                 generation: dict[str, Any] | None = None):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise LmpackError(f"{self.path}: output folder {self.path.parent} does not exist")
        if self.path.is_dir():
            raise LmpackError(f"{self.path}: is a folder, expected a file path")
        config.validate()
        self.config = config
        self.tokenizer = bytes(tokenizer)
        self.tokenizer_kind = tokenizer_kind
        self.tokenizer_fields = dict(tokenizer_fields or {})
        self.generation = dict(generation or {})
        self.provenance = {"lmpack_version": _version(),
                           "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                           **provenance}
        self.entries = [TensorEntry(name, dtype, tuple(int(d) for d in shape), 0, tensor_nbytes(dtype, shape), "0" * 8)
                        for name, dtype, shape in tensors]
        self._plan()
        self._next = 0
        self._tmp: Path | None = None
        self._f = None
        self._out: _BackgroundWriter | None = None

    def _header_bytes(self, tok_crc: str) -> bytes:
        header = {
            "format": "lmpack",
            "version": VERSION,
            "config": self.config.to_dict(),
            "tokenizer": {"kind": self.tokenizer_kind, **self.tokenizer_fields, "offset": self.tok_offset,
                          "nbytes": len(self.tokenizer), "crc32c": tok_crc},
            **({"generation": self.generation} if self.generation else {}),
            "provenance": self.provenance,
            "tensors": [e.to_json() for e in self.entries],
        }
        return json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()

    def _plan(self) -> None:
        # Offsets depend on the header length and the header holds the offsets: plan with a
        # generous upper bound for the header, which only costs padding.
        self.tok_offset = 0
        probe = len(self._header_bytes("0" * 8)) + 32 * (len(self.entries) + 1)
        self.data_offset = align_up(PREAMBLE_SIZE + probe + 1024, PAGE)
        self.tok_offset = self.data_offset
        pos = align_up(self.tok_offset + len(self.tokenizer), ALIGN)
        planned = []
        for e in self.entries:
            planned.append(TensorEntry(e.name, e.dtype, e.shape, pos, e.nbytes, e.crc32c))
            pos = align_up(pos + e.nbytes, ALIGN)
        self.entries = planned
        self.file_size = self.entries[-1].offset + self.entries[-1].nbytes if self.entries else \
            self.tok_offset + len(self.tokenizer)
        assert PREAMBLE_SIZE + len(self._header_bytes("0" * 8)) <= self.data_offset

    def __enter__(self) -> "LmpWriter":
        # A Ctrl-C in here could leave a temp file nobody knows of, or a writer thread nobody
        # stops: signals wait until the writer is set up (a few milliseconds).
        try:
            with _signals_deferred():
                return self._enter()
        except BaseException as e:  # `with` calls __exit__ only once __enter__ has returned; the
            self.__exit__(type(e), e, e.__traceback__)  # held signal may fire on the way out
            raise

    def _enter(self) -> "LmpWriter":
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._tmp = Path(tmp)
        self._f = os.fdopen(fd, "wb")
        _lock(fd, blocking=True)  # held until the file is renamed: marks it as in use
        remove_stale_temps(self.path, keep=self._tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; the output gets the usual permissions
        self._out = _BackgroundWriter(self._f)
        self._out.write(bytes(self.tok_offset))
        self._out.write(self.tokenizer)
        self._tok_crc = _core.crc32c(self.tokenizer)
        self._pad()
        return self

    def _pad(self) -> None:
        pos = self._out.pos
        self._out.write(bytes(align_up(pos, ALIGN) - pos))

    def write_tensor(self, name: str, chunks: Iterable[Any], progress: Callable[[int], None] | None = None,
                     on_written: Callable[[], None] | None = None) -> None:
        """Write the next planned tensor from byte chunks (any buffer objects), in plan order.

        Writes complete in the background; `on_written` is called (on the writer thread) once this
        tensor's bytes are all in the file, e.g. to drop the source pages the chunks came from."""
        if self._next >= len(self.entries) or self.entries[self._next].name != name:
            want = self.entries[self._next].name if self._next < len(self.entries) else "nothing"
            raise LmpackError(f"internal: tensor '{name}' written out of order (expected {want})")
        entry = self.entries[self._next]
        assert self._out.pos == entry.offset
        crc, written = 0, 0
        for chunk in chunks:
            view = memoryview(chunk).cast("B")
            written += len(view)
            if written > entry.nbytes:
                raise LmpackError(f"internal: tensor '{name}' got more than its {entry.nbytes} bytes")
            crc = _core.crc32c(view, crc)
            self._out.write(view)
            if progress:
                progress(len(view))
        if written != entry.nbytes:
            raise LmpackError(f"internal: tensor '{name}' got {written} bytes, expected {entry.nbytes}")
        if on_written is not None:
            self._out.then(on_written)
        self.entries[self._next] = TensorEntry(entry.name, entry.dtype, entry.shape, entry.offset,
                                               entry.nbytes, _crc_hex(crc))
        self._next += 1
        if self._next < len(self.entries):
            self._pad()

    def _finish(self) -> None:
        if self._next != len(self.entries):
            raise LmpackError(f"internal: only {self._next} of {len(self.entries)} tensors written")
        self._out.close()
        if self._f.tell() != self.file_size:
            raise LmpackError("internal: file size does not match the plan")
        header = self._header_bytes(_crc_hex(self._tok_crc))
        if PREAMBLE_SIZE + len(header) > self.data_offset:
            raise LmpackError("internal: header outgrew its planned space")
        head = PREAMBLE.pack(MAGIC, VERSION, 0, len(header), self.data_offset, self.file_size,
                             _core.crc32c(header), 0)
        head = head[:44] + struct.pack("<I", _core.crc32c(head[:44])) + head[48:]
        self._f.seek(0)
        self._f.write(head)
        self._f.write(header)
        self._f.flush()
        os.fsync(self._f.fileno())
        # renamed while still open and locked, so no other writer takes it for a stale temp file
        os.replace(self._tmp, self.path)
        self._tmp = None
        self._f.close()
        _fsync_dir(self.path.parent)  # the rename itself survives a crash only once its folder is synced

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
        except OSError as e:
            raise self._write_error(e) from None
        finally:
            with _signals_deferred():  # a second Ctrl-C must not stop the cleanup half-way
                if self._out is not None:
                    try:
                        self._out.close()
                    except BaseException:  # noqa: BLE001 - the original error (or _finish's) wins
                        pass
                if self._f is not None and not self._f.closed:
                    self._f.close()
                if self._tmp is not None and self._tmp.exists():
                    self._tmp.unlink()
        if isinstance(exc, OSError) and not getattr(exc, "filename", None):
            raise self._write_error(exc) from None

    def _write_error(self, e: OSError) -> LmpackError:
        """An error writing the output (a full disk, a quota, an I/O error) that names the file;
        the background writer's OSError carries no file name."""
        if e.filename:
            return LmpackError(f"{e.filename}: {e.strerror or e}")
        return LmpackError(f"{self.path}: cannot write ({e.strerror or e}); nothing was written")


# --------------------------------------------------------------------------------------------
# Reading


class LmpReader:
    """A validated, read-only, memory-mapped `.lmp` file.

    >>> with LmpReader("model.lmp") as r:
    ...     r.config.dim, [t.name for t in r.tensors][:2]
    ...     emb = r.tensor("model.embed_tokens.weight")   # zero-copy numpy view
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._file, size = open_readonly(self.path)
        try:
            if size < PREAMBLE_SIZE:
                raise LmpackError(f"{self.path}: not an lmpack file (only {size} bytes)")
            self.buffer = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self._validate(size)
        except BaseException:
            self.close()
            raise

    # -- validation, in the order of docs/FORMAT.md "Validation"
    def _fail(self, what: str) -> LmpackError:
        return LmpackError(f"{self.path}: {what}")

    def _validate(self, size: int) -> None:
        mm = self.buffer
        magic, version, flags, header_len, data_offset, file_size, header_crc, pre_crc = \
            PREAMBLE.unpack_from(mm, 0)
        if magic != MAGIC:
            raise self._fail("not an lmpack file (bad magic)")
        if version != VERSION:
            raise self._fail(f"unsupported lmpack format version {version} (this lmpack reads {VERSION})")
        if _core.crc32c(mm[:44]) != pre_crc:
            raise self._fail("corrupt preamble (checksum mismatch)")
        if flags:
            raise self._fail(f"unknown flags 0x{flags:x}")
        if any(mm[48:PREAMBLE_SIZE]):
            raise self._fail("corrupt preamble (reserved bytes 48-63 are not zero)")
        if file_size != size:
            raise self._fail(f"truncated or padded: header says {file_size} bytes, file has {size}")
        if not 0 < header_len <= MAX_HEADER or data_offset % PAGE or \
                not PREAMBLE_SIZE + header_len <= data_offset <= size:
            raise self._fail("corrupt preamble (header length or data offset out of range)")
        raw = mm[PREAMBLE_SIZE:PREAMBLE_SIZE + header_len]
        if _core.crc32c(raw) != header_crc:
            raise self._fail("corrupt header (checksum mismatch)")
        try:
            header = parse_json(raw, "header")
        except LmpackError as e:
            raise self._fail(f"corrupt {e}") from None
        if not isinstance(header, dict) or not all(k in header for k in ("config", "tokenizer", "tensors")):
            raise self._fail("corrupt header (missing config, tokenizer or tensors)")
        if not isinstance(header.get("provenance", {}), dict):
            raise self._fail("corrupt header (provenance is not an object)")
        self.header = header
        self.data_offset = data_offset
        self.config = ModelConfig.from_dict(header["config"], where=f"{self.path}: config")

        ranges = []
        tok = header["tokenizer"]
        if not isinstance(tok, dict) or tok.get("kind") not in TOKENIZER_KINDS:
            raise self._fail(f"unsupported tokenizer {brief(tok.get('kind') if isinstance(tok, dict) else tok)}")
        self.tokenizer_entry = self._entry({**tok, "name": "<tokenizer>", "dtype": "u8"}, size, raw_bytes=True)
        self.tokenizer_kind = tok["kind"]
        self.tokenizer_fields = self._fields(tok, TOKENIZER_FIELDS, "tokenizer")
        gen = header.get("generation", {})
        self.generation = self._fields(gen if isinstance(gen, dict) else None, GENERATION_FIELDS, "generation")
        ranges.append((self.tokenizer_entry.offset, self.tokenizer_entry.nbytes, "tokenizer"))

        if not isinstance(header["tensors"], list):
            raise self._fail("corrupt header (tensors is not a list)")
        self.tensors = [self._entry(t, size) for t in header["tensors"]]
        self._by_name = {}
        for t in self.tensors:
            if t.name in self._by_name:
                raise self._fail(f"tensor '{t.name}' listed twice")
            self._by_name[t.name] = t
            ranges.append((t.offset, t.nbytes, t.name))
        ranges.sort()
        for (o1, n1, a), (o2, _, b) in zip(ranges, ranges[1:]):
            if o1 + n1 > o2:
                raise self._fail(f"tensors '{a}' and '{b}' overlap")

        want = family(self.config.architecture).tensor_count(self.config)
        if want > len(self.tensors) + 9:  # refuse before building the name set of a huge n_layers
            raise self._fail(f"the directory lists {len(self.tensors)} tensors, the config implies {want}")
        expected = expected_tensors(self.config)
        missing = [n for n in expected if n not in self._by_name]
        if missing:
            raise self._fail(f"missing tensor '{missing[0]}'" + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
        extra = [n for n in self._by_name if n not in expected]
        if extra:
            raise self._fail(f"unexpected tensor '{extra[0]}'")
        for name, shape in expected.items():
            t = self._by_name[name]
            if t.shape != shape:
                raise self._fail(f"tensor '{name}' has shape {list(t.shape)}, the config implies {list(shape)}")
            if len(shape) == 1 and t.dtype != "f32":
                raise self._fail(f"tensor '{name}' is {t.dtype}; norm weights must be f32")

    def _fields(self, section: dict | None, kinds: dict[str, type], where: str) -> dict[str, Any]:
        """The known optional fields of a header section, each of its type (string maps for dicts)."""
        if section is None:
            raise self._fail(f"corrupt header ({where} is not an object)")
        out = {}
        for key, kind in kinds.items():
            if key not in section or section[key] is None:
                continue
            v = section[key]
            if kind is float:
                ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and v != float("inf")
            elif kind is int:
                ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
            elif kind is dict:
                ok = isinstance(v, dict) and all(isinstance(a, str) and isinstance(b, str) for a, b in v.items())
            else:
                ok = isinstance(v, kind)
            if not ok:
                raise self._fail(f"corrupt header ({where}.{key} is {type(v).__name__}, expected {kind.__name__})")
            out[key] = v
        return out

    def _entry(self, t: Any, size: int, raw_bytes: bool = False) -> TensorEntry:
        if not isinstance(t, dict):
            raise self._fail("corrupt tensor directory")
        name = t.get("name")
        if not isinstance(name, str):
            raise self._fail("corrupt tensor directory (a tensor without a name)")
        dtype, shape, offset, nbytes, crc = (t.get(k) for k in ("dtype", "shape", "offset", "nbytes", "crc32c"))
        if raw_bytes:
            shape = [nbytes] if isinstance(nbytes, int) else None
        elif dtype not in DTYPES:
            raise self._fail(f"tensor '{name}' has unknown dtype {brief(dtype)}")
        if not isinstance(shape, list) or not 0 < len(shape) <= 8 or \
                not all(isinstance(d, int) and not isinstance(d, bool) and 0 < d < 1 << 48 for d in shape):
            raise self._fail(f"tensor '{name}' has a bad shape {brief(shape)}")
        for key, v in (("offset", offset), ("nbytes", nbytes)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise self._fail(f"tensor '{name}' has a bad {key} {brief(v)}")
        if not isinstance(crc, str) or len(crc) != 8 or any(c not in "0123456789abcdef" for c in crc):
            raise self._fail(f"tensor '{name}' has a bad checksum field {brief(crc)}")
        if not raw_bytes:
            try:
                want = tensor_nbytes(dtype, tuple(shape))
            except LmpackError as e:
                raise self._fail(f"tensor '{name}': {e}") from None
            if nbytes != want:
                raise self._fail(f"tensor '{name}' claims {nbytes} bytes, {dtype} {shape} needs {want}")
            if offset % ALIGN:
                raise self._fail(f"tensor '{name}' offset {offset} is not {ALIGN}-byte aligned")
        if offset < self.data_offset or offset + nbytes > size:
            raise self._fail(f"tensor '{name}' lies outside the data section (offset {offset}, {nbytes} bytes)")
        return TensorEntry(name, dtype, tuple(shape), offset, nbytes, crc)

    # -- access
    @property
    def tokenizer_bytes(self) -> bytes:
        e = self.tokenizer_entry
        return bytes(self.buffer[e.offset:e.offset + e.nbytes])

    def entry(self, name: str) -> TensorEntry:
        try:
            return self._by_name[name]
        except KeyError:
            raise LmpackError(f"{self.path}: no tensor named '{name}'") from None

    def tensor(self, name: str) -> np.ndarray | Q8Tensor:
        """A zero-copy view: a numpy array (bf16 as uint16 bits), or a Q8Tensor for q8_0."""
        e = self.entry(name)
        if e.dtype == "q8_0":
            rows, cols = e.shape
            scales_at, _ = q8_0_planes(e.shape)
            q = np.frombuffer(self.buffer, np.int8, rows * cols, e.offset).reshape(rows, cols)
            s = np.frombuffer(self.buffer, np.float16, rows * cols // Q8_0_BLOCK, e.offset + scales_at)
            return Q8Tensor(q, s.reshape(rows, cols // Q8_0_BLOCK))
        dt = numpy_dtype(e.dtype)
        count = e.nbytes // dt.itemsize
        return np.frombuffer(self.buffer, dt, count, e.offset).reshape(e.shape)

    def release(self, name: str) -> None:
        """Drop a tensor's mapped pages from this process (streaming passes over large files)."""
        e = self.entry(name)
        drop_pages(self.buffer, e.offset, e.nbytes)

    def tensor_bytes(self, name: str) -> memoryview:
        """The raw stored bytes of a tensor (for checksums and copies)."""
        e = self.entry(name)
        return memoryview(self.buffer)[e.offset:e.offset + e.nbytes]

    def verify_checksums(self) -> list[str]:
        """Names of tensors (and '<tokenizer>') whose bytes do not match their checksum."""
        bad = []
        for e in [self.tokenizer_entry, *self.tensors]:
            view = memoryview(self.buffer)[e.offset:e.offset + e.nbytes]
            if _crc_hex(_core.crc32c(view)) != e.crc32c:
                bad.append(e.name)
            view.release()
        return bad

    @property
    def file_size(self) -> int:
        return len(self.buffer)

    def close(self) -> None:
        buf = getattr(self, "buffer", None)
        if buf is not None:
            try:
                buf.close()
            except BufferError:
                pass  # numpy views still use the map; it is unmapped when they are gone
        if getattr(self, "_file", None) is not None:
            self._file.close()

    def __enter__(self) -> "LmpReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _version() -> str:
    from lmpack import __version__
    return __version__
