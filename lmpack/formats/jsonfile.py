"""Bounded reading of the small files that sit beside weights: JSON configs, indexes, tokenizers.

Every reader in lmpack goes through here for them, so one rule holds everywhere: only regular
files are read (a FIFO, a device such as /dev/zero or a folder is refused without blocking), a
file larger than its cap is refused before a byte of it is read, and JSON that Python's parser
cannot take (nesting deeper than the interpreter's recursion limit, integers past its 4300-digit
limit, invalid UTF-8) is an LmpackError naming the file, never an internal error.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from lmpack.errors import LmpackError

MAX_JSON_BYTES = 64 << 20  # the largest real config/index/tokenizer_config is a few MB
MAX_TOKENIZER_BYTES = 64 << 20  # sentencepiece / tiktoken models are at most a few MB


def read_regular(path: str | os.PathLike, max_bytes: int, what: str = "") -> bytes:
    """The bytes of `path` if it is a regular file (after symlinks) of at most `max_bytes` bytes.

    The file is opened non-blocking, so a FIFO without a writer cannot hang the caller."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise LmpackError(f"{path.parent}: no {path.name}") from None
    except OSError as e:
        raise LmpackError(f"{path}: cannot open ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise LmpackError(f"{path}: not a regular file{' (' + what + ')' if what else ''}")
        if st.st_size > max_bytes:
            raise LmpackError(f"{path}: {st.st_size} bytes is implausibly large{' for ' + what if what else ''} "
                              f"(at most {max_bytes} bytes are read)")
        chunks, left = [], max_bytes + 1
        while left > 0:  # the size can change under us: read to EOF, but never past the cap
            b = os.read(fd, min(left, 1 << 20))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        data = b"".join(chunks)
    except OSError as e:
        raise LmpackError(f"{path}: cannot read ({e.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise LmpackError(f"{path}: grew past {max_bytes} bytes while being read")
    return data


def parse_json(raw: bytes | str, where: str) -> Any:
    """json.loads, with every way untrusted text can make it fail turned into an LmpackError."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise LmpackError(f"{where}: not valid JSON (nested too deeply)") from None
    except UnicodeDecodeError as e:
        raise LmpackError(f"{where}: not valid JSON (not UTF-8 at byte {e.start})") from None
    except ValueError as e:  # JSONDecodeError, and integers past sys.get_int_max_str_digits()
        msg = str(e).split(";")[0]
        raise LmpackError(f"{where}: not valid JSON ({msg[:200]})") from None


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file beside a checkpoint: regular files only, at most `max_bytes`."""
    return parse_json(read_regular(path, max_bytes, "JSON"), str(path))
