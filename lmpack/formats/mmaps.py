"""Helpers for read-only file maps shared by every reader in lmpack.formats."""
from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import BinaryIO

from lmpack.errors import LmpackError


def open_readonly(path: Path) -> tuple[BinaryIO, int]:
    """Open a regular file for reading and return it with its size; a missing or unreadable file,
    a folder, a FIFO or a device is an LmpackError naming it (opened non-blocking, so a FIFO
    without a writer cannot hang the caller)."""
    fd = open_regular_fd(path)
    return os.fdopen(fd, "rb"), os.fstat(fd).st_size


def open_regular_fd(path: Path) -> int:
    """A read-only descriptor of `path` if it is a regular file (after symlinks)."""
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise LmpackError(f"{path}: cannot open ({e.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise LmpackError(f"{path}: {'is a folder' if stat.S_ISDIR(mode) else 'not a regular file'}")
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)  # regular files never block; reads then behave as usual
    except BaseException:
        os.close(fd)
        raise
    return fd


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
