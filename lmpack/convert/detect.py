"""Tell which kind of checkpoint a path holds and open it as a Source.

Three kinds of folder are recognised by their file names: HF safetensors (`model*.safetensors`),
HF PyTorch (`pytorch_model*.bin`) and Meta (`params.json` + `consolidated.NN.pth`). A folder
holding more than one kind is refused rather than guessed at; naming one of its files (or passing
`kind`) picks that kind. Two kinds are single files: a GGUF (`*.gguf`) and a llama2.c checkpoint
(any other `*.bin`); an `.lmp` file is a source too (re-encoding, or GGUF export).
"""
from __future__ import annotations

from pathlib import Path

from lmpack.convert.source import Source
from lmpack.errors import LmpackError

KINDS = ("hf-safetensors", "hf-bin", "meta", "gguf", "llama2c", "lmp")
FILE_KINDS = ("gguf", "llama2c", "lmp")  # the checkpoint is the file itself, not its folder
_LABELS = {"hf-safetensors": "HF safetensors", "hf-bin": "HF PyTorch .bin", "meta": "Meta consolidated.*.pth"}


def _kind_of_file(name: str) -> str | None:
    """The checkpoint kind a file name belongs to, or None if it is not a weights file."""
    if name.endswith(".safetensors") or name == "model.safetensors.index.json":
        return "hf-safetensors"
    if (name.startswith("pytorch_model") and name.endswith(".bin")) or name == "pytorch_model.bin.index.json":
        return "hf-bin"
    if (name.startswith("consolidated.") and name.endswith(".pth")) or name == "params.json":
        return "meta"
    return None


def _file_kind(path: Path) -> str | None:
    """The kind of a single-file checkpoint named directly: GGUF, or a llama2.c `.bin`."""
    name = path.name.lower()
    if name.endswith(".gguf"):
        return "gguf"
    if name.endswith(".lmp"):
        return "lmp"
    if name.endswith(".bin") and _kind_of_file(path.name) is None:
        return "llama2c"
    return None


def _kinds_in(folder: Path) -> dict[str, list[str]]:
    """{kind: the file names that announce it} for every kind present in `folder`."""
    found: dict[str, list[str]] = {}
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as e:
        raise LmpackError(f"{folder}: cannot list ({e.strerror})") from None
    for p in entries:
        kind = _kind_of_file(p.name)
        # params.json alone is a weak sign: Mistral-style HF folders ship one beside safetensors.
        if kind is not None and p.name != "params.json":
            found.setdefault(kind, []).append(p.name)
    if not found and (folder / "params.json").is_file():
        found["meta"] = ["params.json"]
    return found


def detect(path: str | Path) -> tuple[Path, str]:
    """(checkpoint folder, kind) for a folder or for one of a checkpoint's files."""
    path = Path(path)
    if not path.exists():
        raise LmpackError(f"{path}: no such file or folder")
    prefer = None
    if path.is_file():
        prefer = _kind_of_file(path.name)
        if prefer is None and path.name not in ("config.json", "tokenizer.model"):
            raise LmpackError(f"{path} is a file, not a checkpoint folder; pass the folder holding config.json "
                              f"and model*.safetensors or pytorch_model*.bin, or params.json and consolidated.*.pth, "
                              f"or a *.gguf or llama2.c *.bin file")
        path = path.parent
    if not path.is_dir():
        raise LmpackError(f"{path}: not a folder")
    found = _kinds_in(path)
    if prefer is not None:
        return path, prefer
    if not found:
        raise LmpackError(f"{path}: no checkpoint found (expected model*.safetensors, pytorch_model*.bin, "
                          f"or params.json with consolidated.*.pth)")
    if len(found) > 1:
        listing = "; ".join(f"{_LABELS[k]} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})" for k, v in found.items())
        example = path / found[next(iter(found))][0]
        raise LmpackError(f"{path}: holds more than one kind of checkpoint: {listing}; pass one of its files "
                          f"(e.g. {example}) to choose")
    return path, next(iter(found))


def open_source(path: str | Path, kind: str | None = None, rope_scaling_factor: float | None = None,
                tokenizer: str | Path | None = None) -> Source:
    """Open the checkpoint at `path` (a folder, one of its files, a GGUF or a llama2.c file) as a Source.

    `kind` forces one of KINDS instead of detecting it; `rope_scaling_factor` overrides the Llama 3
    rope scaling factor of Meta checkpoints (HF folders record theirs in config.json); `tokenizer`
    is the tokenizer file of a llama2.c checkpoint (default: tokenizer.model beside it)."""
    if kind is not None and kind not in KINDS:
        raise LmpackError(f"unknown checkpoint kind '{kind}' (one of: {', '.join(KINDS)})")
    single = _file_kind(Path(path)) if kind is None else (kind if kind in FILE_KINDS else None)
    if single is not None:
        path = Path(path)
        if not path.is_file():
            raise LmpackError(f"{path}: no such file")
        if rope_scaling_factor is not None:
            raise LmpackError(f"{path}: a rope scaling factor override applies only to Meta checkpoints")
        if single == "lmp":
            from lmpack.convert.lmp_source import LmpSource

            if tokenizer is not None:
                raise LmpackError(f"{path}: an .lmp file carries its own tokenizer; --tokenizer applies to llama2.c files")
            return LmpSource(path, allow_quantized=True)
        if single == "gguf":
            from lmpack.convert.gguf_source import GgufSource

            if tokenizer is not None:
                raise LmpackError(f"{path}: a GGUF carries its own tokenizer; --tokenizer applies to llama2.c files")
            return GgufSource(path)
        from lmpack.convert.llama2c import Llama2cSource

        return Llama2cSource(path, tokenizer=tokenizer)
    if tokenizer is not None:
        raise LmpackError("--tokenizer applies only to llama2.c .bin files (folders carry their tokenizer)")
    folder, detected = detect(path) if kind is None else (_folder_of(path), kind)
    if rope_scaling_factor is not None and detected != "meta":
        raise LmpackError(f"{folder}: a rope scaling factor override applies only to Meta checkpoints "
                          f"(HF folders take it from config.json)")
    if detected == "hf-safetensors":
        from lmpack.convert.hf import HFSafetensorsSource

        return HFSafetensorsSource(folder)
    if detected == "hf-bin":
        from lmpack.convert.hf_bin import HFBinSource

        return HFBinSource(folder)
    from lmpack.convert.meta import MetaSource

    return MetaSource(folder, rope_scaling_factor=rope_scaling_factor)


def _folder_of(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise LmpackError(f"{path}: no such file or folder")
    return path.parent if path.is_file() else path
