"""Builders of PyTorch-pickle test checkpoints from a saved HF safetensors folder.

`hf_to_bin` rewrites an HF folder's weights as `pytorch_model*.bin` (single or sharded with an
index), `hf_to_meta` as a Meta folder (`params.json` + `consolidated.NN.pth`) the way Meta's
reference code lays it out: q/k rows in interleaved RoPE order and every model-parallel rank's
slice in its own file. Both use torch.save, the writer lmpack's reader must understand.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path


def hf_state_dict(folder: Path) -> dict:
    """The HF folder's tensors as stored (their dtype), from every safetensors file."""
    from safetensors.torch import load_file

    sd = {}
    for p in sorted(Path(folder).glob("*.safetensors")):
        sd.update(load_file(str(p)))
    return sd


def hf_to_bin(hf_folder: Path, out: Path, shards: int = 1, tie_saved: bool = False) -> Path:
    """Copy an HF folder with its weights as `pytorch_model.bin`, or as `shards` files plus the index.

    `tie_saved` also stores `lm_head.weight` as the very tensor `model.embed_tokens.weight` (one
    shared storage), as torch.save does for a tied model's full state dict."""
    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "tokenizer.model"):
        shutil.copy(Path(hf_folder) / name, out / name)
    sd = {k: v.clone() for k, v in hf_state_dict(hf_folder).items()}
    if tie_saved:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    names = list(sd)
    if shards == 1:
        torch.save(sd, out / "pytorch_model.bin")
        return out
    weight_map = {}
    per = -(-len(names) // shards)
    for k in range(shards):
        file = f"pytorch_model-{k + 1:05d}-of-{shards:05d}.bin"
        part = {n: sd[n] for n in names[k * per:(k + 1) * per]}
        torch.save(part, out / file)
        weight_map.update({n: file for n in part})
    (out / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}, indent=2))
    return out


def hf_to_meta_rope(w, n_heads: int):
    """Undo HF's q/k permutation: half-split rows (i, i + hd/2) back to Meta's pairs (2i, 2i+1)."""
    rows, cols = w.shape
    hd = rows // n_heads
    return w.reshape(n_heads, 2, hd // 2, cols).transpose(1, 2).reshape(rows, cols).contiguous()


def hf_to_meta(hf_folder: Path, out: Path, *, mp: int = 2, embed_dim: int = 1,
               rope_theta: float | None = None, extra_params: dict | None = None) -> Path:
    """Write the HF folder as a Meta checkpoint split over `mp` model-parallel ranks.

    `embed_dim` is the axis tok_embeddings is split on: 1 as in Llama 1/2, 0 as in Llama 3."""
    import torch

    hf_folder, out = Path(hf_folder), Path(out)
    cfg = json.loads((hf_folder / "config.json").read_text())
    sd = hf_state_dict(hf_folder)
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    if cfg.get("tie_word_embeddings"):
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]

    meta = {"tok_embeddings.weight": (sd["model.embed_tokens.weight"], embed_dim),
            "norm.weight": (sd["model.norm.weight"], None),
            "output.weight": (sd["lm_head.weight"], 0)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        m = f"layers.{i}."
        meta[m + "attention.wq.weight"] = (hf_to_meta_rope(sd[p + "self_attn.q_proj.weight"], nh), 0)
        meta[m + "attention.wk.weight"] = (hf_to_meta_rope(sd[p + "self_attn.k_proj.weight"], nkv), 0)
        meta[m + "attention.wv.weight"] = (sd[p + "self_attn.v_proj.weight"], 0)
        meta[m + "attention.wo.weight"] = (sd[p + "self_attn.o_proj.weight"], 1)
        meta[m + "feed_forward.w1.weight"] = (sd[p + "mlp.gate_proj.weight"], 0)
        meta[m + "feed_forward.w3.weight"] = (sd[p + "mlp.up_proj.weight"], 0)
        meta[m + "feed_forward.w2.weight"] = (sd[p + "mlp.down_proj.weight"], 1)
        meta[m + "attention_norm.weight"] = (sd[p + "input_layernorm.weight"], None)
        meta[m + "ffn_norm.weight"] = (sd[p + "post_attention_layernorm.weight"], None)

    out.mkdir(parents=True, exist_ok=True)
    for rank in range(mp):
        shard = {}
        for name, (t, axis) in meta.items():
            shard[name] = t.clone() if axis is None else t.chunk(mp, dim=axis)[rank].clone()
        # Llama 2 checkpoints carry the RoPE table too; readers must skip it.
        shard["rope.freqs"] = torch.ones(cfg["hidden_size"] // nh // 2, dtype=torch.float32)
        torch.save(shard, out / f"consolidated.{rank:02d}.pth")

    rp = cfg.get("rope_parameters") or {}
    params = {
        "dim": cfg["hidden_size"], "n_layers": cfg["num_hidden_layers"], "n_heads": nh,
        "multiple_of": 32, "norm_eps": cfg["rms_norm_eps"], "vocab_size": -1,
        "rope_theta": rope_theta if rope_theta is not None else rp.get("rope_theta", cfg.get("rope_theta", 10000.0)),
        "max_seq_len": cfg.get("max_position_embeddings", 4096),
    }
    if nkv != nh:
        params["n_kv_heads"] = nkv
    params.update(extra_params or {})
    (out / "params.json").write_text(json.dumps(params))
    shutil.copy(hf_folder / "tokenizer.model", out / "tokenizer.model")
    return out
