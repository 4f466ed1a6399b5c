"""Helpers for read-only file maps shared by every reader in lmpack.formats."""
from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import BinaryIO

from lmpack.errors import LmpackError


def open_readonly(path: Path) -> tuple[BinaryIO, int]:
    """Open a file for reading and return it with its size; a missing or unreadable file is an
    LmpackError naming it."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise LmpackError(f"{path}: cannot open ({e.strerror})") from None
    return f, os.fstat(f.fileno()).st_size


def drop_pages(m: mmap.mmap | None, begin: int, nbytes: int) -> None:
    """Unmap the pages of [begin, begin+nbytes) from a read-only file map, so a streaming pass over
    a large file keeps its resident memory at about one tensor; a no-op where madvise is missing."""
    if m is None or nbytes == 0 or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = begin - begin % mmap.PAGESIZE
    try:
        m.madvise(mmap.MADV_DONTNEED, start, min(len(m), begin + nbytes) - start)
    except (OSError, ValueError):
        pass
