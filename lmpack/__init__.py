"""lmpack: LLM checkpoints to one memory-mappable file, run fast on a CPU.

    import lmpack, lmpack.convert
    lmpack.convert.convert("path/to/hf-folder", "model.lmp", dtype="q8_0")
    m = lmpack.load("model.lmp")
    print("".join(m.generate("Once upon a time", max_tokens=32)))
"""
__version__ = "0.1.0"

from typing import TYPE_CHECKING

from lmpack.errors import LmpackError  # noqa: E402

if TYPE_CHECKING:  # type checkers see the real names; at run time they load on first use
    from lmpack.runtime.model import Model, load

__all__ = ["LmpackError", "Model", "load", "__version__"]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__} - {"TYPE_CHECKING"})


def __getattr__(name: str):
    # The runtime (and numpy with it) loads on first use, so the command line can set up the
    # environment numpy reads at import (see lmpack/cli.py) and `import lmpack` stays cheap.
    if name in ("Model", "load"):
        from lmpack.runtime import model

        return getattr(model, name)
    raise AttributeError(f"module 'lmpack' has no attribute '{name}'")
