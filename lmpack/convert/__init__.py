"""Source checkpoints (HF safetensors, HF .bin, Meta .pth) to the canonical tensor stream, streamed into `.lmp`."""
from lmpack.convert.pipeline import convert

__all__ = ["convert"]
