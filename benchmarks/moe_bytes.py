"""Weight bytes a generated token reads in a mixture-of-experts `.lmp` file, against the dense
equivalent that would read every expert.

The C core runs only the experts a token's router picks (csrc/forward.c `moe`), so a generation
step streams the attention, the router, n_experts_used of n_experts experts per layer, the final
norm and the head (plus one embedding row). Given a file this sums its tensor directory; given
`--mixtral-8x7b` it does the same for that shape stored as q8_0 with the router in f32.

    python benchmarks/moe_bytes.py model.lmp
    python benchmarks/moe_bytes.py --mixtral-8x7b
"""
from __future__ import annotations

import argparse

from lmpack.formats.arch import family
from lmpack.formats.config import ModelConfig


def per_token(cfg: ModelConfig, nbytes: dict[str, int]) -> tuple[int, int]:
    """(bytes a generated token reads, bytes it would read if every expert ran)."""
    fam = family(cfg.architecture)
    used = dense = 0
    for name, t in fam.tensors(cfg):
        b = nbytes[name]
        if t.slot == "embed":
            b = b // cfg.vocab_size  # one row per token
            if not cfg.tie_embeddings:
                used += b
                dense += b
                continue
            b = nbytes[name]  # tied: the head reads it all
        dense += b
        used += b * cfg.n_experts_used // cfg.n_experts if t.per_expert else b
    return used, dense


def _size(n: int) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e9 else f"{n / 1e6:.3f} MB"


def q8_bytes(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n // 32 * 34 if len(shape) == 2 else 4 * n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", nargs="?")
    ap.add_argument("--mixtral-8x7b", action="store_true", help="the Mixtral-8x7B shape, q8_0, router f32")
    args = ap.parse_args()
    if args.mixtral_8x7b:
        cfg = ModelConfig(architecture="mixtral", dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, head_dim=128,
                          ffn_dim=14336, vocab_size=32000, norm_eps=1e-5, rope_theta=1e6, max_context=32768,
                          bos_id=1, eos_ids=[2], n_experts=8, n_experts_used=2)
        from lmpack.formats.arch import expected_tensors

        nbytes = {n: (4 * s[0] * s[1] if n.endswith("block_sparse_moe.gate.weight") else q8_bytes(s))
                  for n, s in expected_tensors(cfg).items()}
    elif args.file:
        from lmpack.formats.lmp import LmpReader

        r = LmpReader(args.file)
        cfg, nbytes = r.config, {t.name: t.nbytes for t in r.tensors}
    else:
        ap.error("give a file or --mixtral-8x7b")
    if not cfg.n_experts:
        ap.error("not a mixture-of-experts model")
    used, dense = per_token(cfg, nbytes)
    print(f"{cfg.architecture}: {cfg.n_experts_used} of {cfg.n_experts} experts per token")
    print(f"bytes read per generated token: {_size(used)}")
    print(f"dense equivalent (every expert): {_size(dense)}  (ratio {used / dense:.3f})")


if __name__ == "__main__":
    main()
