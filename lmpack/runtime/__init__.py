"""Loading and running `.lmp` files: the model wrapper over the C core, tokenizer and sampler."""
from lmpack.runtime.model import Model, load

__all__ = ["Model", "load"]
