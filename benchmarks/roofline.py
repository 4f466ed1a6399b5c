"""Roofline plot of a bench_llamacpp.py run: achieved GOP/s of lmpack, llama.cpp and CTranslate2 against the
machine's read-bandwidth and compute ceilings, measured in the same run (--json of
bench_llamacpp.py holds them).

Each test is one point. Its arithmetic intensity is the matmul operations (2 per weight per token:
attention and element-wise work are left out) over the weight bytes read once per forward pass;
prompt processing (ppN) sits N times further right than generation (tgN). The slanted line is the
2-thread read bandwidth (4 KiB pages, median of the before/after measurements); the flat lines are
2 cores times one core's measured peak of each instruction family.

    python benchmarks/roofline.py docs/bench.json -o docs/roofline.png
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models  # noqa: E402


def matmul_params(shape: str) -> int:
    """Weights every token multiplies: all matrices but the embedding table (lm_head untied)."""
    c = models.SHAPES[shape]
    d, f, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = d // c["num_attention_heads"] * c["num_key_value_heads"]
    return c["num_hidden_layers"] * (2 * d * d + 2 * kv * d + 3 * d * f) + v * d


BYTES_PER_WEIGHT = {"q8_0": 34 / 32, "bf16": 2.0}


def points(results: list[dict]) -> list[dict]:
    out, seen = [], set()
    for r in results:
        params = matmul_params(r["shape"])
        ntok = int(r["test"][2:]) if r["test"].startswith("pp") else 1
        intensity = 2.0 * ntok / BYTES_PER_WEIGHT[r["type"]]
        for engine in ("lmpack", "llama.cpp", "ctranslate2"):
            key = (engine, r["shape"], r["type"], r["test"], r.get("activations") if engine == "lmpack" else None)
            if r.get(engine) and key not in seen:  # a peer's number repeats on each lmpack activation row
                seen.add(key)
                out.append({"engine": engine, "x": intensity, "y": r[engine] * 2 * params / 1e9,
                            "label": f"{r['shape']} {r['type']} {r['test']}", "type": r["type"], "test": r["test"]})
    return out


def plot(data: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = points(data["results"])
    bw = sorted([data["read_bw"]["before"]["4k"], data["read_bw"]["after"]["4k"]])
    bw_mid = sum(bw) / 2
    threads = data["meta"]["threads"]
    peaks = {k: v * threads for k, v in data.get("peaks", {}).items()}
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    xs = [0.5, 2000]
    ax.plot(xs, [bw_mid * x for x in xs], color="black", lw=1.2,
            label=f"read bandwidth {bw_mid:.0f} GB/s ({threads} threads; {bw[0]:.0f}-{bw[1]:.0f} in this run)")
    styles = {"amx_int8": ("tab:red", "AMX int8"), "amx_bf16": ("tab:purple", "AMX bf16"),
              "avx512_vnni_int8": ("tab:orange", "AVX-512 VNNI int8"),
              "avx512_bf16_dot": ("tab:brown", "AVX512-BF16 dot"),
              "avx512_fma_f32": ("tab:gray", "AVX-512 f32 FMA"), "avx2_fma_f32": ("tab:pink", "AVX2 f32 FMA")}
    for k, (color, name) in styles.items():
        if k in peaks:
            ax.axhline(peaks[k], color=color, ls="--", lw=1)
            ax.text(0.55, peaks[k] * 1.06, f"{name} peak {peaks[k]:.0f} GOP/s", color=color, fontsize=8)
    marker = {"lmpack": "o", "llama.cpp": "s", "ctranslate2": "^"}
    color = {("lmpack", "q8_0"): "tab:blue", ("lmpack", "bf16"): "tab:cyan",
             ("llama.cpp", "q8_0"): "tab:green", ("llama.cpp", "bf16"): "tab:olive",
             ("ctranslate2", "q8_0"): "tab:red", ("ctranslate2", "bf16"): "tab:pink"}
    seen = set()
    for p in pts:
        key = (p["engine"], p["type"])
        ax.scatter(p["x"], p["y"], marker=marker[p["engine"]], color=color[key], s=40, zorder=3,
                   label=f"{p['engine']} {p['type']}" if key not in seen else None)
        seen.add(key)
        if p["engine"] == "lmpack":
            ax.annotate(p["label"].split(" ", 1)[0][:5] + " " + p["test"], (p["x"], p["y"]), fontsize=6,
                        xytext=(4, -8), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(*xs)
    ax.set_xlabel("arithmetic intensity (operations per weight byte read)")
    ax.set_ylabel("achieved GOP/s (2 x weights x tokens / time)")
    ax.set_title(f"{data['meta'].get('cpu', '')}, {threads} threads: lmpack ({data['meta']['kernels']}) vs llama.cpp"
                 + (", CTranslate2" if data["meta"].get("ctranslate2") else ""),
                 fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path)
    ap.add_argument("-o", "--output", type=Path, default=Path("docs/roofline.png"))
    ap.add_argument("--table", help="kernel table to plot from a multi-table run (default: the first)")
    a = ap.parse_args()
    data = json.loads(a.json.read_text())
    if "tables" in data:  # bench_llamacpp.py --table ...: one run per kernel table
        data = data["tables"][a.table or next(iter(data["tables"]))]
    plot(data, a.output)
