"""The error of the opt-in bf16-activation mode, measured on the test suite's checkpoints.

For each checkpoint (random weights via transformers, as tests/checkpoints.py makes them: the
Llama variants and every bf16 family case of tests/test_families.py), converted to a bf16 file,
prints the logits of 64 random ids under `activations="bf16"` against transformers' float32
forward over the same bf16-rounded weights and against lmpack's exact (f32-activation) forward of
the same file: max|diff| / std of the reference logits, top-1 agreement and the KL divergence
(mean, max; nats). The README's "bf16 activations" table comes from this script:

    python benchmarks/bf16_act_error.py [--kernels avx512] [--families]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import checkpoints  # noqa: E402

import lmpack  # noqa: E402
from lmpack import _core  # noqa: E402
from lmpack.convert import convert  # noqa: E402


def kl(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    def logsm(z):
        z = z.astype(np.float64) - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    lp, lq = logsm(ref), logsm(got)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def row(name: str, ref: np.ndarray, got: np.ndarray) -> str:
    k = kl(ref, got)
    err = np.abs(got.astype(np.float64) - ref).max() / ref.std()
    top1 = (ref.argmax(-1) == got.argmax(-1)).mean()
    return f"| {name} | {err:.3f} | {top1:.3f} | {k.mean():.1e} | {k.max():.1e} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", default=None, help="kernel table (default: the best this CPU runs)")
    ap.add_argument("--families", action="store_true", help="also the bf16 family cases of tests/test_families.py")
    a = ap.parse_args()
    if a.kernels:
        _core.set_kernel_path(a.kernels)
    if not _core._has_bf16_act():
        print(f"note: the {_core.kernel_path()} kernels have no bf16-activation matmul here; "
              "the mode falls back to the exact path", file=sys.stderr)
    import torch

    tmp = Path(tempfile.mkdtemp(prefix="bf16-act-"))
    tok = checkpoints.train_tokenizer(tmp / "tokenizer.model")
    cases = [
        ("llama f32 source", lambda d: checkpoints.make_hf_checkpoint(d, tokenizer=tok, seed=0)),
        ("llama bf16 GQA tied", lambda d: checkpoints.make_hf_checkpoint(d, tokenizer=tok, seed=1, n_kv_heads=2,
                                                                         dtype="bfloat16", tie=True)),
        ("llama bf16 seed 2", lambda d: checkpoints.make_hf_checkpoint(d, tokenizer=tok, seed=2, dtype="bfloat16")),
    ]
    if a.families:
        import test_families

        for name, (model_type, kwargs, _, _) in test_families.CASES.items():
            if kwargs.get("dtype") == "bfloat16":
                cases.append((name, lambda d, t=model_type, k=kwargs: checkpoints.make_family_checkpoint(
                    d, t, tokenizer=tok, **k)))
    print(f"kernels: {_core.kernel_path()}")
    print("| checkpoint | max|diff|/std | top-1 | KL mean | KL max |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for i, (name, make) in enumerate(cases):
        d = tmp / f"ck{i}"
        d.mkdir()
        ck = make(d)
        path = convert(ck.path, tmp / f"ck{i}.lmp", dtype="bf16")
        ids = [1] + [int(v) for v in np.random.default_rng(7).integers(3, ck.vocab_size, 63)]
        ref_model = checkpoints.rounded_reference(ck.model, "bf16")
        with torch.no_grad():
            ref = ref_model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()
        exact = lmpack.load(path, threads=2).logits(ids)
        got = lmpack.load(path, threads=2, activations="bf16").logits(ids)
        print(row(f"{name}: vs transformers f32", ref, got))
        print(row(f"{name}: vs lmpack exact", exact, got))
        print(row(f"{name}: exact vs transformers f32", ref, exact), flush=True)


if __name__ == "__main__":
    main()
