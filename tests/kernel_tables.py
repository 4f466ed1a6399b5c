"""A test helper: run a block of code on one kernel table of the C core, then restore the one before."""
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
