"""The embedded default model: a tiny Llama trained on CPython's own docs, as a Hugging Face folder.

It lets the whole pipeline (convert, quantize, verify, generate) run with no download. The
folder holds config.json, model.safetensors (bf16), tokenizer.model and a README.md that says
how it was made (scripts/train_default_model.py), how to remake it and what its data licence is.
"""
from pathlib import Path

FILES = ("config.json", "model.safetensors", "tokenizer.model", "README.md")


def path() -> Path:
    """The folder holding the default model's files, usable as a Hugging Face checkpoint path."""
    return Path(__file__).resolve().parent
