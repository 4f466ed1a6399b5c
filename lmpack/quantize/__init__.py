"""Number formats below 16 bits: ggml-exact Q8_0 (blocks of 32 int8 with an fp16 scale)."""
from lmpack.quantize.q8_0 import q8_0_chunks, quantize

__all__ = ["quantize", "q8_0_chunks"]
