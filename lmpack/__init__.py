"""lmpack: LLM checkpoints to one memory-mappable file, run fast on a CPU.

    import lmpack, lmpack.convert
    lmpack.convert.convert("path/to/hf-folder", "model.lmp", dtype="q8_0")
    m = lmpack.load("model.lmp")
    print("".join(m.generate("Once upon a time", max_tokens=32)))
"""
__version__ = "0.1.0"

from lmpack.errors import LmpackError  # noqa: E402
from lmpack.runtime.model import Model, load  # noqa: E402


__all__ = ["LmpackError", "Model", "load", "__version__"]
