"""Write a GGUF file (llama.cpp's format) holding the same weights as a benchmark HF folder.

The side-by-side benchmark must give llama.cpp exactly the model lmpack runs: this reads the
single `model.safetensors` that benchmarks/models.py writes, maps names to llama.cpp's `llama`
architecture (token_embd, blk.N.attn_q, ...), permutes the q/k rows from Hugging Face's half-split
RoPE order to the interleaved order llama.cpp's `llama` arch expects, and stores the matrices as
BF16 (bit copies) or Q8_0 (gguf-py's reference quantizer, which lmpack's matches byte for byte);
1-D norms are F32 as llama.cpp's converter writes them. The tokenizer keys come from the folder's
sentencepiece model. Tensors are streamed one at a time, so memory stays near one tensor.

    python benchmarks/gguf_export.py /tmp/bench/tinyllama-bf16 /tmp/bench/tl-q8.gguf --type q8_0
"""
from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np

import gguf

ST_DTYPES = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}


def read_safetensors(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def load_f32(mm: np.ndarray, base: int, info: dict) -> np.ndarray:
    a, b = info["data_offsets"]
    raw = mm[base + a:base + b]
    if info["dtype"] == "BF16":
        x = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        x = raw.view(ST_DTYPES[info["dtype"]]).astype(np.float32)
    return x.reshape(info["shape"])


def hf_to_interleaved(w: np.ndarray, n_head: int) -> np.ndarray:
    """Rows of each head go from (first halves, second halves) to pairs (i, i + half) side by side,
    which is the RoPE layout of Meta checkpoints and of llama.cpp's `llama` architecture."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf: str) -> str:
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    parts = hf.split(".")  # model.layers.N.<module>.<proj>.weight
    n = parts[2]
    sub = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
           "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
           "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
           "mlp.down_proj": "ffn_down"}[".".join(parts[3:-1])]
    return f"blk.{n}.{sub}.weight"


def add_tokenizer(w: gguf.GGUFWriter, path: Path, vocab: int) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(path))
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.id_to_piece(i).encode())
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        elif sp.is_unused(i):
            types.append(gguf.TokenType.UNUSED)
        else:
            types.append(gguf.TokenType.NORMAL)
    for i in range(len(tokens), vocab):  # a tokenizer smaller than the embedding: pad
        tokens.append(f"[PAD{i}]".encode())
        scores.append(-1000.0)
        types.append(gguf.TokenType.UNUSED)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_unk_token_id(sp.unk_id())
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)


def export(folder: Path, out: Path, qtype: str) -> Path:
    cfg = json.loads((folder / "config.json").read_text())
    header, base = read_safetensors(folder / "model.safetensors")
    mm = np.memmap(folder / "model.safetensors", dtype=np.uint8, mode="r")
    n_head, n_kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    dim = cfg["hidden_size"]
    ggtype = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "bf16": gguf.GGMLQuantizationType.BF16}[qtype]
    ftype = {"q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "bf16": gguf.LlamaFileType.MOSTLY_BF16}[qtype]

    w = gguf.GGUFWriter(out, "llama")
    w.add_name(folder.name)
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(dim)
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_rope_dimension_count(dim // n_head)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-5))
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(w, folder / "tokenizer.model", cfg["vocab_size"])

    names = list(header)
    plan = []
    for name in names:
        shape = header[name]["shape"]
        if len(shape) == 1:
            t, dt, shp = gguf.GGMLQuantizationType.F32, np.dtype(np.float32), shape
        else:  # quantized types are described by their byte shape
            t, dt = ggtype, np.dtype(np.uint8)
            shp = [shape[0], gguf.quants.quant_shape_to_byte_shape(shape, t)[-1]]
        plan.append((name, t))
        w.add_tensor_info(gguf_name(name), shp, dt, int(np.prod(shp)) * dt.itemsize, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for name, t in plan:
        x = load_f32(mm, base, header[name])
        if name.endswith("q_proj.weight"):
            x = hf_to_interleaved(x, n_head)
        elif name.endswith("k_proj.weight"):
            x = hf_to_interleaved(x, n_kv)
        if t == gguf.GGMLQuantizationType.F32:
            data = np.ascontiguousarray(x, np.float32)
        else:  # bf16 rounds to nearest even: exact bit copies for a bf16 source
            data = gguf.quants.quantize(np.ascontiguousarray(x), t)
        w.write_tensor_data(data)
    w.close()
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--type", default="q8_0", choices=["q8_0", "bf16"])
    a = ap.parse_args()
    print(export(a.folder, a.out, a.type))
