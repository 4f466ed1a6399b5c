"""Test helpers: run a block of code on one kernel table (or GEMV prefetch profile) of the C core, then
restore the one before."""
from __future__ import annotations

import contextlib

from lmpack import _core


@contextlib.contextmanager
def using_kernels(name: str):
    before = _core.kernel_path()
    _core.set_kernel_path(name)
    try:
        yield
    finally:
        _core.set_kernel_path(before)


# Every GEMV prefetch profile of csrc/gemv_prefetch.c (tests switch to each: a missing one fails there).
PREFETCH_PROFILES = ["intel", "amd", "amd-8rows", "none"]


@contextlib.contextmanager
def using_prefetch(name: str):
    before = _core._gemv_prefetch()
    _core._gemv_prefetch(name)
    try:
        yield
    finally:
        _core._gemv_prefetch(before)
