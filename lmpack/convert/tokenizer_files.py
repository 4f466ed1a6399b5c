"""A checkpoint folder's tokenizer files -> the tokenizer, special tokens, template and sampling
defaults an `.lmp` file embeds.

It reads what transformers reads for the same folder, and settles at convert time every choice
transformers makes at load time, so the runtime only replays it:
- `tokenizer.json` (the `tokenizers` library's format) wins over `tokenizer.model`, as transformers'
  fast tokenizer does; a sentencepiece `tokenizer.model` alone is embedded as it is; Meta Llama 3's
  tiktoken `tokenizer.model` (Meta folders) becomes the equivalent byte-level BPE (tiktoken.py).
- `tokenizer_config.json` (and, without `added_tokens_decoder` there, `special_tokens_map.json`)
  names the special tokens; named special tokens the vocabulary lacks are added. Whether BOS/EOS
  surround the text is the tokenizer.json post-processor's business (transformers ignores
  `add_bos_token` when there is a tokenizer.json); for a sentencepiece model, `add_bos_token` says.
- The chat template comes from `chat_template.jinja`, else `tokenizer_config.json` `chat_template`
  (a string, or a list of named templates), plus `additional_chat_templates/*.jinja`; each must compile.
- `generation_config.json` gives extra EOS ids and the sampling defaults.
Everything is checked here, so a broken file fails at convert time with one line.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lmpack.errors import LmpackError
from lmpack.formats.config import ModelConfig
from lmpack.formats.tokenizer_json import check_tokenizer_json

# The named special tokens transformers passes to a chat template (SPECIAL_TOKENS_ATTRIBUTES).
NAMED_SPECIAL = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
SAMPLING_KEYS = {"temperature": float, "top_p": float, "top_k": int, "repetition_penalty": float, "do_sample": bool}
MAX_TOKENIZER_BYTES = 1 << 30  # a tokenizer file larger than this is not a tokenizer


@dataclass
class TokenizerFiles:
    """What the converter embeds: the tokenizer blob and the header fields that go with it."""

    kind: str  # "sentencepiece" | "tokenizers"
    blob: bytes
    header: dict[str, Any] = field(default_factory=dict)  # the header's `tokenizer` fields besides the blob's
    generation: dict[str, Any] = field(default_factory=dict)  # the header's `generation` section
    bos_id: int | None = None
    eos_ids: list[int] = field(default_factory=list)
    n_ids: int = 0  # 1 + the largest id the tokenizer can produce


def _read(path: Path) -> bytes:
    from lmpack.formats.jsonfile import read_regular  # regular files only: a FIFO cannot hang us

    return read_regular(path, MAX_TOKENIZER_BYTES, "a tokenizer file")


def _json(path: Path, required: bool = False) -> Any:
    if not path.is_file():
        if required:
            raise LmpackError(f"{path.parent}: no {path.name}")
        return None
    from lmpack.formats.jsonfile import parse_json  # depth, huge integers, bad UTF-8: LmpackError

    value = parse_json(_read(path), str(path))
    if not isinstance(value, dict):
        raise LmpackError(f"{path}: expected a JSON object")
    return value


def _token_text(value: Any) -> str | None:
    """A special token's text from its config spelling: a string or an AddedToken dict."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def special_tokens(folder: Path, cfg: dict[str, Any]) -> dict[str, str]:
    """The special tokens transformers hands a chat template: the named ones and any other `*_token`
    key, from tokenizer_config.json, overridden by special_tokens_map.json when the config has no
    added_tokens_decoder (transformers' legacy rule)."""
    merged = dict(cfg)
    if "added_tokens_decoder" not in cfg:
        stm = _json(folder / "special_tokens_map.json")
        if stm:
            merged.update({k: v for k, v in stm.items() if k in NAMED_SPECIAL or k.endswith("_token")})
    out = {}
    for key, value in merged.items():
        if key in NAMED_SPECIAL or (key.endswith("_token") and not key.startswith("add_")):
            text = _token_text(value)
            if text is not None:
                out[key] = text
    return out


def chat_templates(folder: Path, cfg: dict[str, Any], specials: dict[str, str]) -> tuple[str | None, dict[str, str]]:
    """(default template, named templates) as transformers finds them; each one compiles and renders
    a one-message conversation."""
    from lmpack.formats.chat_template import check_template

    default, named = None, {}
    value = cfg.get("chat_template")
    where = folder / "tokenizer_config.json"
    if isinstance(value, str):
        default = value
    elif isinstance(value, list):
        for t in value:
            if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not isinstance(t.get("template"), str):
                raise LmpackError(f"{where}: chat_template list entries must be {{name, template}} strings")
            named[t["name"]] = t["template"]
        default = named.pop("default", None)
    elif value is not None:
        raise LmpackError(f"{where}: chat_template must be a string or a list of named templates")
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        default, where = _text(jinja), jinja
    extra = folder / "additional_chat_templates"
    if extra.is_dir():
        for p in sorted(extra.glob("*.jinja")):
            named[p.stem] = _text(p)
    for name, source in [("default", default), *named.items()]:
        if source is None:
            continue
        try:
            check_template(source, specials)
        except LmpackError as e:
            raise LmpackError(f"{where}: {name} {e}") from None
    return default, named


def _text(path: Path) -> str:
    try:
        return _read(path).decode("utf-8")
    except UnicodeDecodeError as e:
        raise LmpackError(f"{path}: not UTF-8 text ({e})") from None


def generation_defaults(folder: Path) -> tuple[dict[str, Any], list[int], int | None]:
    """(sampling defaults, EOS ids, BOS id) from generation_config.json; values of the wrong type
    are refused, absent ones stay absent."""
    gen = _json(folder / "generation_config.json") or {}
    where = folder / "generation_config.json"
    defaults = {}
    for key, kind in SAMPLING_KEYS.items():
        value = gen.get(key)
        if value is None:
            continue
        ok = isinstance(value, bool) if kind is bool else \
            (not isinstance(value, bool) and isinstance(value, (int, float) if kind is float else int))
        if not ok or (kind is not bool and not value >= 0):
            raise LmpackError(f"{where}: {key} must be a non-negative {kind.__name__}, got {value!r}")
        if (key == "top_p" and not 0 < value <= 1) or (key == "repetition_penalty" and not value > 0):
            raise LmpackError(f"{where}: {key} {value!r} is out of range")
        defaults[key] = value
    eos = gen.get("eos_token_id")
    eos_ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0 for e in eos_ids):
        raise LmpackError(f"{where}: eos_token_id must be an id or a list of ids, got {eos!r}")
    bos = gen.get("bos_token_id")
    return defaults, eos_ids, bos if isinstance(bos, int) and not isinstance(bos, bool) else None


def _tokenizers_json(path: Path, cfg: dict[str, Any], specials: dict[str, str]):
    """The tokenizer.json loaded with `tokenizers`, with transformers' load-time changes applied."""
    from tokenizers import AddedToken, Tokenizer

    try:
        text = _text(path)
        check_tokenizer_json(text, path)
        tok = Tokenizer.from_str(text)
    except LmpackError:
        raise
    except BaseException as e:  # tokenizers raises a bare Exception with serde's text, or a Rust panic
        if not isinstance(e, Exception) and type(e).__name__ != "PanicException":
            raise  # Ctrl-C and friends
        raise LmpackError(f"{path}: not a tokenizer.json the tokenizers library loads "
                          f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
    # Tokens tokenizer_config.json declares (added_tokens_decoder, named specials) but tokenizer.json lacks.
    decoder = cfg.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise LmpackError(f"{path.parent / 'tokenizer_config.json'}: added_tokens_decoder must be an object")
    wanted = []
    for _, t in sorted(decoder.items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() and len(str(kv[0])) < 19 else 0):
        text = _token_text(t)
        if text is not None and tok.token_to_id(text) is None:
            opts = {k: bool(t[k]) for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in t}
            wanted.append(AddedToken(text, **opts))
    for key in NAMED_SPECIAL:
        text = specials.get(key)
        if text is not None and tok.token_to_id(text) is None and text not in [str(w) for w in wanted]:
            wanted.append(AddedToken(text, special=True, normalized=False))
    if wanted:
        tok.add_special_tokens(wanted)
    # BOS/EOS come from tokenizer.json's post-processor alone: with a tokenizer.json, transformers
    # drops tokenizer_config.json's add_bos_token/add_eos_token (files written by transformers
    # agree with them anyway), and adds nothing around the text when there is no post-processor.
    split = cfg.get("split_special_tokens", False)
    tok.encode_special_tokens = bool(split)
    return tok


def _sentencepiece(path: Path):
    """The sentencepiece model, or one line saying what the file is instead (a tiktoken file in an HF
    folder needs that folder's tokenizer.json, or Meta's original/ folder)."""
    from lmpack.convert.source import load_sentencepiece

    return load_sentencepiece(path)


def read_tokenizer(folder: str | Path, meta_llama3: bool | None = None) -> TokenizerFiles:
    """The folder's tokenizer as the converter embeds it. `meta_llama3` (Meta folders) accepts a
    tiktoken tokenizer.model; True picks Llama 3.1's special-token layout, False Llama 3.0's."""
    folder = Path(folder)
    cfg = _json(folder / "tokenizer_config.json") or {}
    specials = special_tokens(folder, cfg)
    default, named = chat_templates(folder, cfg, specials)
    gen, gen_eos, gen_bos = generation_defaults(folder)
    header: dict[str, Any] = {}
    tj, tm = folder / "tokenizer.json", folder / "tokenizer.model"
    if tj.is_file():
        tok = _tokenizers_json(tj, cfg, specials)
        kind, blob = "tokenizers", tok.to_str().encode("utf-8")
        n_ids = 1 + max([*tok.get_vocab(with_added_tokens=True).values(), -1])
        ids = {k: tok.token_to_id(v) for k, v in specials.items()}
        header["clean_up_tokenization_spaces"] = bool(cfg.get("clean_up_tokenization_spaces", False))
    elif tm.is_file():
        data = _read(tm)
        from lmpack.convert.tiktoken import END_OF_GENERATION, LLAMA3_CHAT_TEMPLATE, llama3_tokenizer_json, \
            looks_like_tiktoken

        if meta_llama3 is not None and looks_like_tiktoken(data):
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(llama3_tokenizer_json(data, str(tm), llama31=meta_llama3))
            kind, blob = "tokenizers", tok.to_str().encode("utf-8")
            n_ids = tok.get_vocab_size(with_added_tokens=True)
            specials = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
            default = default or LLAMA3_CHAT_TEMPLATE
            ids = {k: tok.token_to_id(v) for k, v in specials.items()}
            gen_eos = [*gen_eos, *(i for i in map(tok.token_to_id, END_OF_GENERATION) if i is not None)]
        else:
            sp = _sentencepiece(tm)
            kind, blob = "sentencepiece", data
            n_ids = sp.get_piece_size()
            for key, sp_id in (("bos_token", sp.bos_id()), ("eos_token", sp.eos_id()), ("unk_token", sp.unk_id())):
                if key not in specials and sp_id >= 0:
                    specials[key] = sp.id_to_piece(sp_id)
            ids = {k: sp.piece_to_id(v) for k, v in specials.items()}
            ids = {k: i for k, i in ids.items() if sp.id_to_piece(i) == specials[k]}
            add_bos = cfg.get("add_bos_token", True)
            header["add_bos"] = bool(add_bos) and "bos_token" in ids
            # transformers' sentencepiece tokenizers (legacy=False, its default) put no "▁" before
            # text that follows a special token; legacy=True ones do (Llama 2's "<s>▁[INST]")
            header["legacy"] = bool(cfg.get("legacy", False))
    else:
        raise LmpackError(f"{folder}: no tokenizer.json or tokenizer.model")
    header["special_tokens"] = specials
    if default is not None:
        header["chat_template"] = default
    if named:
        header["chat_templates"] = named
    eos_ids = [*gen_eos]
    if ids.get("eos_token") is not None:
        eos_ids.append(ids["eos_token"])
    return TokenizerFiles(kind, blob, header, gen, ids.get("bos_token") if ids.get("bos_token") is not None else gen_bos,
                          eos_ids, n_ids)


def with_tokenizer(config: ModelConfig, tok: TokenizerFiles, where: str) -> ModelConfig:
    """`config` with the tokenizer's BOS and every EOS id, once the tokenizer fits the embedding."""
    if tok.n_ids > config.vocab_size:
        raise LmpackError(f"{where}: the tokenizer has {tok.n_ids} tokens but the model only {config.vocab_size} "
                          f"embedding rows")
    eos = list(dict.fromkeys([*config.eos_ids, *(e for e in tok.eos_ids if e < config.vocab_size)]))
    bos = tok.bos_id if tok.bos_id is not None and tok.bos_id < config.vocab_size else config.bos_id
    return replace(config, eos_ids=eos, bos_id=bos)
