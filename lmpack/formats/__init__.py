"""Bytes on disk: the `.lmp` container (reader and writer) and the source formats lmpack reads."""
from lmpack.formats.config import ModelConfig, expected_tensors
from lmpack.formats.lmp import LmpReader, LmpWriter, Q8Tensor, TensorEntry

__all__ = ["ModelConfig", "expected_tensors", "LmpReader", "LmpWriter", "Q8Tensor", "TensorEntry"]
