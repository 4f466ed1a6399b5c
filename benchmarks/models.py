"""Random-weight Hugging Face Llama folders of real shapes, for benchmarks (no torch needed).

Writes `config.json`, `model.safetensors` (bf16, or f32/f16) streamed tensor by tensor, and a
`tokenizer.model`: the Llama 2 tokenizer from ../shared/fixtures when present, otherwise a small
sentencepiece model trained on the fly (its pieces are fewer than the model's vocabulary, which the
runtime allows). Usage:

    python benchmarks/models.py tinyllama /tmp/bench/tinyllama-bf16 [--dtype bf16]
"""
from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np

SHAPES = {
    # TinyLlama-1.1B
    "tinyllama": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                      intermediate_size=5632, vocab_size=32000, max_position_embeddings=2048),
    # llama2.c stories110M
    "stories110m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                        intermediate_size=2048, vocab_size=32000, max_position_embeddings=1024),
    # a small one for smoke runs
    "tiny": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                 intermediate_size=704, vocab_size=32000, max_position_embeddings=512),
}

REPO = Path(__file__).resolve().parents[1]
LLAMA2_TOKENIZER = REPO.parent / "shared" / "fixtures" / "llama2-tokenizer.model"


def tensor_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = d // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    out = {"model.embed_tokens.weight": (v, d)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (d,), p + "self_attn.q_proj.weight": (d, d),
                    p + "self_attn.k_proj.weight": (kv, d), p + "self_attn.v_proj.weight": (kv, d),
                    p + "self_attn.o_proj.weight": (d, d), p + "post_attention_layernorm.weight": (d,),
                    p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d),
                    p + "mlp.down_proj.weight": (d, f)})
    out["model.norm.weight"] = (d,)
    out["lm_head.weight"] = (v, d)
    return out


def _encode(x: np.ndarray, dtype: str) -> bytes:
    if dtype == "bf16":
        u = x.astype(np.float32).view(np.uint32)
        return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16).tobytes()
    return x.astype({"f32": np.float32, "f16": np.float16}[dtype]).tobytes()


def write_model(folder: Path, shape: str, dtype: str = "bf16", seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    c = SHAPES[shape]
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
              "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": {"bf16": "bfloat16", "f16": "float16", "f32": "float32"}[dtype],
              **c}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    shapes = tensor_shapes(c)
    st = {"F32": 4, "F16": 2, "BF16": 2}
    st_dtype = {"bf16": "BF16", "f16": "F16", "f32": "F32"}[dtype]
    header, pos = {}, 0
    for name, shp in shapes.items():
        n = int(np.prod(shp)) * st[st_dtype]
        header[name] = {"dtype": st_dtype, "shape": list(shp), "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(header).encode()
    raw += b" " * (-(len(raw) + 8) % 64)
    rng = np.random.default_rng(seed)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shp in shapes.items():
            if len(shp) == 1:
                x = 1 + 0.1 * rng.standard_normal(shp, dtype=np.float32)
            else:
                x = rng.standard_normal(shp, dtype=np.float32) * np.float32(1 / np.sqrt(shp[1]))
            f.write(_encode(x, dtype))
    _write_tokenizer(folder / "tokenizer.model")
    return folder


def _write_tokenizer(path: Path) -> None:
    if LLAMA2_TOKENIZER.is_file():
        path.write_bytes(LLAMA2_TOKENIZER.read_bytes())
        return
    import io

    import sentencepiece as spm

    words = ("the a of to in and is was for on that with as by at from it an be this are or which one "
             "time story little girl boy dog cat day happy sad big small red blue tree house sun").split()
    rng = np.random.default_rng(0)
    text = "\n".join(" ".join(rng.choice(words, 12)) for _ in range(4000))
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.splitlines()), model_writer=model,
                                   vocab_size=300, byte_fallback=True, model_type="bpe")
    path.write_bytes(model.getvalue())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("folder", type=Path)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(write_model(a.folder, a.shape, a.dtype, a.seed))
