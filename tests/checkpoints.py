"""Builders of small test checkpoints: a sentencepiece tokenizer trained on the spot, random-weight
Hugging Face Llama folders, and the float32 transformers model that is their numerical oracle.

Everything here is deterministic for a given seed and uses only sentencepiece, torch and
transformers (the oracles), never lmpack itself, so a test that converts one of these folders and
compares against `HFCheckpoint.model` checks lmpack against an independent implementation.
"""
from __future__ import annotations

import copy
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

LLAMA2_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "llama2-tokenizer.model"

# Tiny dims, all multiples of 32 so every SIMD path sees whole vectors; head_dim = 32.
TINY = dict(dim=128, n_layers=2, n_heads=4, ffn_dim=320)
# A larger std than transformers' default (0.02) so logits spread (std ~ 1-2) and a wrong
# RoPE, norm or head shows up far above the tolerance instead of hiding in near-zero logits.
INIT_STD = 0.15

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    # With head_dim 32 and theta 1e4 the wavelengths run 6.3, 11, 20, 35, 63, 112, ...: against
    # 64/4 = 16 and 64/1 = 64 that gives unchanged, smoothed and divided frequencies alike.
    "original_max_position_embeddings": 64,
}

LINEAR_ROPE = {"rope_type": "linear", "factor": 4.0}

_WORDS = (
    "the of and to in a is that for it as was with be by on not he I this are or his from at which "
    "but have an they you were her she there one all we their model token file tensor weight fast "
    "small llama runs convert memory cache layer head byte number 2024 42 7"
).split()
_UNICODE_LINES = [
    "Café au lait, naïve résumé, über die Straße, señor, crème brûlée.",
    "Ελληνικά και русский текст рядом с English words.",
    "日本語のテキストです。中文字符测试，한국어 문장.",
    "Emoji time 🙂🚀🎉 and a 🦙 llama, 👍 done.",
    "Tabs\tand   several   spaces, then a newline.",
]


def corpus_lines(n: int = 3000, seed: int = 0) -> list[str]:
    """English-ish sentences plus unicode, CJK and emoji lines: the training text of the test tokenizer."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ","]))
    lines += _UNICODE_LINES * 30
    rng.shuffle(lines)
    return lines


def train_tokenizer(path: Path, vocab_size: int = 400) -> Path:
    """Train a BPE sentencepiece model with Llama 2's normalizer settings and byte fallback.

    Byte fallback matters: characters outside the small vocabulary (most emoji, rare CJK) then
    encode as <0xNN> pieces, the path the real Llama tokenizer takes for anything rare.
    """
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_lines()),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=0.9995,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    path = Path(path)
    path.write_bytes(buf.getvalue())
    return path


def tokenizer_vocab_size(path: Path) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(path)).get_piece_size()


@dataclass
class HFCheckpoint:
    """A saved HF folder and the float32 model holding exactly the numbers in its files."""

    path: Path
    model: "object"  # transformers LlamaForCausalLM, float32, eager attention, eval mode
    dtype: str  # the checkpoint's dtype: float32 | float16 | bfloat16
    vocab_size: int

    def reference_logits(self, ids: list[int]):
        """transformers' float32 logits for exactly `ids`, as a numpy array (len(ids), vocab)."""
        import torch

        with torch.no_grad():
            out = self.model(torch.tensor([ids], dtype=torch.long), use_cache=False)
        return out.logits[0].float().numpy()

    def reference_greedy(self, ids: list[int], n: int) -> list[int]:
        """transformers' greedy continuation ids (without the prompt), stopping at EOS as HF does."""
        import torch

        with torch.no_grad():
            out = self.model.generate(
                torch.tensor([ids], dtype=torch.long),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=n,
                pad_token_id=self.model.config.eos_token_id,
            )
        return out[0, len(ids):].tolist()


def rounded_reference(model, dtype: str):
    """A float32 copy of `model` whose 2-D weights are rounded through `dtype` (norms untouched).

    That is the model a file converted with `--dtype dtype` holds: FORMAT.md keeps 1-D tensors
    in f32 whatever the file's dtype.
    """
    import torch

    tdtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[dtype]
    ref = copy.deepcopy(model).float()
    with torch.no_grad():
        for p in ref.parameters():
            if p.dim() >= 2:
                p.copy_(p.to(tdtype).to(torch.float32))
    return ref


def _legacy_config(folder: Path) -> None:
    """Rewrite config.json the way transformers 4.x (and most Hub checkpoints) wrote it.

    transformers 5 folds `rope_theta` and `rope_scaling` into `rope_parameters` and writes `dtype`;
    real Llama 2/3 folders carry `rope_theta`, `rope_scaling` and `torch_dtype`. A converter must read both.
    """
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    rp = cfg.pop("rope_parameters", None) or {}
    cfg["rope_theta"] = rp.get("rope_theta", 10000.0)
    scaling = {k: v for k, v in rp.items() if k != "rope_theta"}
    cfg["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    path.write_text(json.dumps(cfg, indent=2))


def _place_tokenizer(folder: Path, tokenizer: Path | None, tokenizer_files: Path | None) -> None:
    """Copy a sentencepiece `tokenizer` in as tokenizer.model, and/or every file of `tokenizer_files`."""
    if tokenizer is not None:
        (folder / "tokenizer.model").write_bytes(Path(tokenizer).read_bytes())
    if tokenizer_files is not None:
        for p in Path(tokenizer_files).iterdir():
            if p.is_file():
                (folder / p.name).write_bytes(p.read_bytes())


def make_hf_checkpoint(
    tmp_path: Path,
    *,
    tokenizer: Path | None,
    dtype: str = "float32",
    n_kv_heads: int | None = None,
    tie: bool = False,
    shards: int = 1,
    rope_scaling: dict | None = None,
    vocab: int | None = None,
    seed: int = 0,
    legacy_config: bool = False,
    rope_theta: float = 10000.0,
    max_position_embeddings: int = 512,
    dims: dict | None = None,
    tokenizer_files: Path | None = None,
    special_ids: dict | None = None,
) -> HFCheckpoint:
    """Save a random-weight LlamaForCausalLM to `tmp_path` as an HF folder and return it with its oracle.

    `dims` overrides TINY (dim, n_layers, n_heads, ffn_dim) and may add head_dim.
    `tokenizer_files` is a folder whose files (tokenizer.json, tokenizer_config.json, ...) are copied
    in instead of a sentencepiece `tokenizer`; `special_ids` overrides bos_token_id/eos_token_id.
    `dtype` is the checkpoint's storage dtype; the returned model is float32 and holds the same
    (rounded) numbers. `shards` > 1 writes model-0000K-of-0000N.safetensors plus the index.
    Norm weights are randomised too (transformers initialises them to 1, which would hide a runtime
    that ignores them).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    d = {**TINY, **(dims or {})}
    vocab = vocab if vocab is not None else tokenizer_vocab_size(tokenizer)
    n_kv = n_kv_heads if n_kv_heads is not None else d["n_heads"]
    kwargs = dict(
        vocab_size=vocab,
        hidden_size=d["dim"],
        intermediate_size=d["ffn_dim"],
        num_hidden_layers=d["n_layers"],
        num_attention_heads=d["n_heads"],
        num_key_value_heads=n_kv,
        max_position_embeddings=max_position_embeddings,
        rms_norm_eps=1e-5,
        initializer_range=INIT_STD,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
        attn_implementation="eager",
    )
    kwargs.update(special_ids or {})
    if "head_dim" in d:  # an explicit head_dim, not dim / n_heads (q_proj is then not square)
        kwargs["head_dim"] = d["head_dim"]
    params = {"rope_type": "default", "rope_theta": rope_theta}
    if rope_scaling is not None:
        params = {**rope_scaling, "rope_theta": rope_theta}
    config = LlamaConfig(rope_parameters=params, **kwargs)

    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # RMSNorm weights
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    tdtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    stored = model.to(tdtype)
    if dtype != "float32":
        # A fresh float32 model loaded with the rounded weights: casting `stored` back would also
        # round the RoPE inv_freq buffers, which no runtime does.
        ref = LlamaForCausalLM(config).eval()
        ref.load_state_dict({k: v.float() for k, v in stored.state_dict().items()})
    else:
        ref = stored

    folder = Path(tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    save_kwargs = {}
    if shards > 1:
        total = sum(p.numel() * p.element_size() for p in stored.parameters())
        # Slightly above total/shards so the largest tensor still fits and we get `shards` files.
        save_kwargs["max_shard_size"] = int(total / shards * 1.15)
    stored.save_pretrained(folder, safe_serialization=True, **save_kwargs)
    _place_tokenizer(folder, tokenizer, tokenizer_files)
    if legacy_config:
        _legacy_config(folder)

    written = sorted(folder.glob("*.safetensors"))
    if shards > 1:
        assert len(written) >= 2 and (folder / "model.safetensors.index.json").is_file(), written
    else:
        assert [p.name for p in written] == ["model.safetensors"], written

    return HFCheckpoint(path=folder, model=ref, dtype=dtype, vocab_size=vocab)


def plain_inv_freq(head_dim: int, theta: float):
    import torch

    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c_py(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli, reflected 0x82F63B78) in plain Python: an oracle for small buffers."""
    crc ^= 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def copy_checkpoint(src: Path, dst: Path) -> Path:
    """A private copy of a checkpoint folder, for tests that modify or corrupt files."""
    import shutil

    shutil.copytree(src, dst)
    return Path(dst)


# --------------------------------------------------------------------------------------------
# Raw `.lmp` surgery (docs/FORMAT.md), done without lmpack so corruptions are independent of the
# reader they test.

LMP_MAGIC = b"\x89LMP\r\n\x1a\n"


def read_lmp_raw(path: Path) -> tuple[dict, dict]:
    """(preamble fields, header JSON) parsed with struct and json only."""
    import struct

    data = Path(path).read_bytes()
    magic, version, flags, header_len, data_offset, file_size, header_crc, pre_crc = struct.unpack_from(
        "<8sIIQQQII", data, 0)
    pre = dict(magic=magic, version=version, flags=flags, header_len=header_len, data_offset=data_offset,
               file_size=file_size, header_crc=header_crc, preamble_crc=pre_crc, reserved=data[48:64])
    header = json.loads(data[64:64 + header_len])
    return pre, header


def write_lmp_with_header(src: Path, dst: Path, mutate) -> Path:
    """Copy `src` to `dst` after `mutate(header_dict)`, with valid lengths and checksums.

    The result is consistent except for whatever `mutate` broke, so a reader must catch that one
    thing itself (and not merely notice a checksum)."""
    import struct

    data = bytearray(Path(src).read_bytes())
    pre, header = read_lmp_raw(src)
    mutate(header)
    raw = json.dumps(header, separators=(",", ":")).encode()
    assert 64 + len(raw) <= pre["data_offset"], "mutated header no longer fits before the data section"
    data[64:pre["data_offset"]] = raw + b"\0" * (pre["data_offset"] - 64 - len(raw))
    struct.pack_into("<Q", data, 16, len(raw))
    struct.pack_into("<I", data, 40, crc32c_py(raw))
    struct.pack_into("<I", data, 44, crc32c_py(bytes(data[:44])))
    Path(dst).write_bytes(bytes(data))
    return Path(dst)


# --------------------------------------------------------------------------------------------
# Other families: random-weight checkpoints of any transformers causal-LM model_type

# Tiny shapes shared by every family (GQA: 4 query heads over 2 key/value heads).
FAMILY_BASE = dict(hidden_size=128, intermediate_size=320, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5)
# Families whose RMSNorm multiplies by (1 + w): their norm weights are centred on 0, not 1.
CENTRED_NORMS = ("gemma2", "gemma3_text")
MOE_SHARED = 0.9  # the part of each expert's variance common to all experts


def make_family_checkpoint(tmp_path: Path, model_type: str, *, tokenizer: Path | None, dtype: str = "float32",
                           seed: int = 0, tie: bool = False, tokenizer_files: Path | None = None,
                           **overrides) -> HFCheckpoint:
    """Save a random-weight `model_type` causal LM (transformers' own class for it) as an HF folder.

    Weights are drawn with std INIT_STD; norm weights and biases are randomised too (transformers
    starts them at 1 or 0, which would hide a runtime that ignores them). `overrides` are config
    fields on top of FAMILY_BASE. `tokenizer_files` is a folder whose files (tokenizer.json, ...)
    are copied in instead of a sentencepiece `tokenizer` (then give vocab_size)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    vocab = overrides.pop("vocab_size") if tokenizer is None else tokenizer_vocab_size(tokenizer)
    kw = dict(FAMILY_BASE, vocab_size=vocab, initializer_range=INIT_STD, tie_word_embeddings=tie,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)
    kw.update(overrides)
    config = AutoConfig.for_model(model_type, **kw)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    centre = 0.0 if model_type in CENTRED_NORMS else 1.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.3 * torch.randn_like(p))
            elif p.dim() == 1:
                p.copy_(centre + 0.3 * torch.randn_like(p))
            elif p.dim() == 3:
                # MoE experts [n_experts, ...]: sharing a common part, as experts upcycled from one
                # dense MLP do. Independent random experts make every near-tie of the router that
                # a rounding flips a jump far beyond anything a trained MoE shows.
                p.copy_(MOE_SHARED ** 0.5 * p[:1] + (1 - MOE_SHARED) ** 0.5 * p)
    tdtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    stored = model.to(tdtype)
    if dtype != "float32":
        ref = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
        ref.load_state_dict({k: v.float() for k, v in stored.state_dict().items()})
    else:
        ref = stored
    folder = Path(tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    stored.save_pretrained(folder, safe_serialization=True)
    _place_tokenizer(folder, tokenizer, tokenizer_files)
    return HFCheckpoint(path=folder, model=ref, dtype=dtype, vocab_size=vocab)
