"""What bench_llamacpp.py says about a run, as text: the CPU (model, instruction-set flags), each
peer's build (llama.cpp's CMake flags and compiled features, CTranslate2's version and ISA), the
load and bandwidth around the timings, and one markdown table per kernel table.

Pure functions of /proc/cpuinfo text and of the run's JSON, so they are tested without timing
anything (tests/test_bench_report.py).
"""
from __future__ import annotations

import shlex

# The instruction-set flags that decide which kernels the engines can run.
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512dq",
             "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp")

# Per kernel table and weight type, the one-core ceilings (benchmarks/peaks.c) a prompt is set against.
PEAKS_FOR = {
    ("avx512", "q8_0"): ("avx512_vnni_int8",),
    ("avx512", "bf16"): ("avx512_bf16_dot", "avx512_fma_f32"),
    ("amx", "q8_0"): ("amx_int8", "avx512_vnni_int8"),
    ("amx", "bf16"): ("amx_bf16", "avx512_bf16_dot"),
    ("avx2", "bf16"): ("avx2_fma_f32",),
}
PEAK_NAMES = {"avx512_vnni_int8": "VNNI", "avx512_bf16_dot": "BF16 dot", "avx512_fma_f32": "FMA",
              "avx2_fma_f32": "AVX2 FMA", "amx_int8": "AMX int8", "amx_bf16": "AMX bf16"}
ENGINES = ("lmpack", "llama.cpp", "ctranslate2")
SHAPE_NAMES = {"stories110m": "stories110M", "tinyllama": "TinyLlama-1.1B", "tiny": "tiny"}


def cpu_name(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return ""


def cpu_flags(cpuinfo: str) -> list[str]:
    """The ISA_FLAGS present on the first 'flags' (x86) or 'Features' (ARM) line, in ISA_FLAGS order."""
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            have = set(line.split(":", 1)[1].split())
            return [f for f in ISA_FLAGS if f in have]
    return []


def cmake_args(text: str) -> list[str]:
    """The -D options of a CMAKE_ARGS string (as pip's build saw it, shell quoting and all)."""
    return [a for a in shlex.split(text) if a.startswith("-D")]


def system_features(info: str) -> list[str]:
    """Compiled-in features from llama.cpp's system info ('CPU : AVX2 = 1 | AVX512 = 0 | ...')."""
    out = []
    for part in info.replace("\n", "|").split("|"):
        if ":" in part:
            part = part.split(":", 1)[1]
        key, _, val = part.partition("=")
        if key.strip() and val.strip() == "1":
            out.append(key.strip())
    return out


def gops(tokens_per_s: float, matmul_params: int) -> float:
    """Achieved GOP/s: 2 operations (a multiply and an add) per matrix weight per token."""
    return tokens_per_s * 2 * matmul_params / 1e9


def percent_of_peaks(row: dict, params: int, peaks: dict, threads: int, table: str) -> dict:
    """For a prompt row: each engine's GOP/s and its percent of `threads` x each relevant ceiling."""
    out = {}
    if not row["test"].startswith("pp"):
        return out
    for e in ENGINES:
        if not row.get(e):
            continue
        g = gops(row[e], params)
        out[f"{e}_GOPs"] = g
        for p in PEAKS_FOR.get((table, row["type"]), ()):
            if p in peaks:
                out[f"{e}_pct_{p}"] = 100 * g / (peaks[p] * threads)
    return out


def _num(x) -> str:
    if x is None:
        return "-"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def table_rows(run: dict) -> list[list[str]]:
    """One list of cells per result row (markdown_table's body)."""
    table = run["meta"].get("kernels", "")
    out = []
    for r in run["results"]:
        gbs = " / ".join(_num(r.get(f"{e}_GBs")) for e in ENGINES) if "lmpack_GBs" in r else ""
        pct = "; ".join(
            f"{PEAK_NAMES.get(p, p)} " + " / ".join(
                f"{r[f'{e}_pct_{p}']:.0f}%" if f"{e}_pct_{p}" in r else "-" for e in ENGINES)
            for p in PEAKS_FOR.get((table, r["type"]), ()) if f"lmpack_pct_{p}" in r)
        load = r.get("load_before"), r.get("load_after")
        out.append([SHAPE_NAMES.get(r["shape"], r["shape"]), r["type"], r.get("activations", "f32"), r["test"],
                    _num(r["lmpack"]), _num(r.get("llama.cpp")), _ratio(r["lmpack"], r.get("llama.cpp")),
                    _num(r.get("ctranslate2")), _ratio(r["lmpack"], r.get("ctranslate2")), gbs, pct,
                    f"{load[0]:.2f} -> {load[1]:.2f}" if None not in load else "-"])
    return out


HEAD = ["model", "type", "act", "test", "lmpack tok/s", "llama.cpp tok/s", "lmpack / llama.cpp",
        "CTranslate2 tok/s", "lmpack / CT2", "GB/s lm / lc / ct2", "% of peak lm / lc / ct2", "load"]
ALIGN = ["---"] * 4 + ["---:"] * 5 + ["---"] * 3


def describe(run: dict) -> list[str]:
    """The lines naming what the run ran on: CPU, builds, ISA, threads, load, bandwidth, peaks."""
    m = run["meta"]
    lines = [f"CPU: {m.get('cpu') or '?'}, {m.get('cpus')} CPUs, flags: {' '.join(m.get('cpu_flags') or []) or '?'}",
             (f"lmpack kernel table: {m.get('kernels')}, {m.get('threads')} threads, activations: "
              f"{', '.join(m.get('activations') or ['f32'])}, median of {m.get('reps')} alternating runs")]
    lc = m.get("llama_cpp")
    if isinstance(lc, dict):
        lines.append(f"llama.cpp: llama-cpp-python {lc.get('version')} from {lc.get('where')}; CMAKE_ARGS: "
                     f"{' '.join(lc.get('cmake_args') or []) or '(no CMAKE_ARGS file)'}; compiled: "
                     f"{' '.join(lc.get('features') or [])}")
    elif lc:
        lines.append(f"llama.cpp: {lc}")
    ct = m.get("ctranslate2")
    if ct:
        env = " ".join(f"{k}={v}" for k, v in (ct.get("isa_env") or {}).items())
        for qtype, p in (ct.get("probe") or {}).items():
            sel = ", ".join(f"{k} {v}" for k, v in p.items())
            lines.append(f"CTranslate2 {ct.get('version')} ({env}) for {qtype}: {sel}")
        for key, c in (ct.get("convert") or {}).items():
            lines.append(f"CTranslate2 converter, {key} ({c['quantization']}): {c['seconds']:.1f} s, "
                         f"peak RSS {c['peak_rss_mib']:.0f} MiB")
    bw = run.get("read_bw") or {}
    if bw.get("before"):
        lines.append("read bandwidth (GB/s, {} threads; 4 KiB pages / huge pages): before {:.1f} / {:.1f}, "
                     "after {:.1f} / {:.1f}".format(m.get("threads"), bw["before"]["4k"], bw["before"]["huge"],
                                                    bw.get("after", {}).get("4k", 0), bw.get("after", {}).get("huge", 0)))
    if run.get("peaks"):
        lines.append("one core's ceilings (peaks.c, GOP/s of thread CPU time; % of peak uses threads x these): "
                     + ", ".join(f"{k} {v:.0f}" for k, v in run["peaks"].items()))
        lines.append("GOP/s counts 2 operations per matrix weight per token (every matrix, the classifier "
                     "included; attention scores and element-wise work left out)")
    loads = [x for r in run.get("results", []) for x in (r.get("load_before"), r.get("load_after")) if x is not None]
    if loads and m.get("cpus") and max(loads) > m["cpus"]:
        lines.append(f"warning: the load average reached {max(loads):.2f} on {m['cpus']} CPUs during the timings: "
                     "other jobs shared the cores, so these numbers (spinning thread pools above all) are not "
                     "an idle machine's")
    if m.get("load_start") and m.get("load_end"):
        lines.append("load average (1/5/15 min): start {} end {}".format(
            " / ".join(f"{x:.2f}" for x in m["load_start"]), " / ".join(f"{x:.2f}" for x in m["load_end"])))
    return lines


def markdown_table(run: dict) -> str:
    rows = [HEAD, ALIGN] + table_rows(run)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def report(run: dict, name: str | None = None) -> str:
    """A run's description and its table; `name` heads it (the kernel table of a --table run)."""
    title = f"### kernel table {name or run['meta'].get('kernels')}"
    return "\n".join([title, ""] + [f"- {x}" for x in describe(run)] + ["", markdown_table(run), ""])
