"""lmpack and llama.cpp side by side: same random-weight model, same thread count, alternating runs.

For each model shape and weight type this makes (once, in --workdir) the HF folder
(benchmarks/models.py), the `.lmp` file (`lmpack convert`) and a GGUF file of the same weights
(`lmpack convert ... -o X.gguf`: llama arch names, q/k rows permuted to llama.cpp's RoPE order,
the same Q8_0 bytes or BF16 bit copies), checks that both engines compute the same logits on the same ids, then
times prompt processing (ppN: N random ids from position 0, tokens/s) and generation (tgN: N single
token steps after a one-token prompt, tokens/s), each test run alternately by the two engines and
reported as the median of --reps runs. Generation's bytes moved per token (every weight matrix but
the embedding table) give its achieved GB/s, set against a read-bandwidth measurement at the same
thread count taken in the same run (benchmarks/readbw.py, before and after the timings).

llama.cpp comes from the optional `bench` extra (`pip install -e .[bench]`; llama-cpp-python builds
it from source: CMAKE_ARGS="-DGGML_NATIVE=ON" makes it use this CPU's instruction sets).

Each lmpack kernel table is best set against a llama.cpp built for the same instruction set:
--table NAME[=DIR] (repeatable) runs the whole comparison once per table, each in a child process
with LMPACK_KERNELS=NAME and, when DIR is given, the llama-cpp-python installed there
(`pip install --target DIR`), whose build flags are read from DIR/CMAKE_ARGS if that file exists.
The CPU (model and instruction-set flags), each llama.cpp's compiled features and flags, and every
number go to the output and to --json.

    python benchmarks/bench_llamacpp.py --shapes stories110m tinyllama --types q8_0 bf16 --threads 2 \\
        --table avx512=/opt/llamacpp-native --table avx2=/opt/llamacpp-avx2 --json docs/bench.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's BLAS threads would spin beside ours
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the sibling scripts, and lmpack when not installed

import models  # noqa: E402
import readbw  # noqa: E402

import lmpack  # noqa: E402
from lmpack import _core  # noqa: E402

SHORT = {"tinyllama": "tl", "stories110m": "st", "tiny": "tiny"}


# ---- model files ---------------------------------------------------------------------------------

def prepare(workdir: Path, shape: str, qtype: str) -> tuple[Path, Path]:
    """The .lmp and .gguf of one shape and type, made from one bf16 HF folder when missing."""
    workdir.mkdir(parents=True, exist_ok=True)
    folder = workdir / f"{shape}-bf16"
    if not (folder / "model.safetensors").exists():
        print(f"writing {folder}", flush=True)
        models.write_model(folder, shape, "bf16")
    tag = f"{SHORT[shape]}-{'q8' if qtype == 'q8_0' else 'bf16'}"
    lmp, gg = workdir / f"{tag}.lmp", workdir / f"{tag}.gguf"
    if not lmp.exists():
        print(f"converting {lmp}", flush=True)
        subprocess.run([sys.executable, "-m", "lmpack", "convert", str(folder), "-o", str(lmp),
                        "--dtype", qtype], check=True, stdout=subprocess.DEVNULL, cwd=HERE.parent)
    if not gg.exists():
        print(f"exporting {gg}", flush=True)
        subprocess.run([sys.executable, "-m", "lmpack", "convert", str(folder), "-o", str(gg),
                        "--dtype", qtype], check=True, stdout=subprocess.DEVNULL, cwd=HERE.parent)
    return lmp, gg


def weight_bytes(lmp: Path) -> int:
    """Bytes one generation step reads: every tensor but the embedding table (one row of it)."""
    from lmpack.formats.lmp import LmpReader

    with LmpReader(lmp) as r:
        return sum(t.nbytes for t in r.tensors
                   if t.name != "model.embed_tokens.weight" or r.config.tie_embeddings)


# ---- the two engines, behind one interface --------------------------------------------------------

class Lmpack:
    name = "lmpack"

    def __init__(self, path: Path, threads: int, n_ctx: int):
        self.m = lmpack.load(path, threads=threads, max_context=n_ctx)

    def logits(self, ids: list[int]) -> np.ndarray:
        return self.m.forward(ids, 0)[-1]

    def prompt(self, ids: np.ndarray) -> None:
        self.m.forward(ids, 0)

    def generate(self, ids: np.ndarray) -> None:
        """One step per id after the first (a one-token prompt), logits of each step computed."""
        self.m.forward(ids[:1], 0)
        for pos in range(1, len(ids)):
            self.m.forward(ids[pos:pos + 1], pos)

    def close(self) -> None:
        self.m.close()


class LlamaCpp:
    name = "llama.cpp"
    # llama.cpp's "extra buffer types" repack weights for its AMX kernels; in the llama-cpp-python
    # 0.3.36 build here that path segfaults in ggml_backend_amx_mul_mat on Q8_0, so by default the
    # weights stay in llama.cpp's plain CPU buffers (tinyBLAS: AVX-512 VNNI for Q8_0,
    # AVX512-BF16 dot products for BF16). --llama-extra-bufts turns them back on.
    extra_bufts = False

    def __init__(self, path: Path, threads: int, n_ctx: int):
        import llama_cpp.llama_cpp as lc
        from llama_cpp import Llama

        default = lc.llama_model_default_params

        def params():
            p = default()
            p.use_extra_bufts = self.extra_bufts
            return p

        lc.llama_model_default_params = params
        try:
            self.m = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=min(n_ctx, 512),
                           n_threads=threads, n_threads_batch=threads, verbose=False)
        finally:
            lc.llama_model_default_params = default

    def logits(self, ids: list[int]) -> np.ndarray:
        self.m.reset()
        self.m.eval(list(ids))
        return np.ctypeslib.as_array(self.m._ctx.get_logits(), shape=(self.m.n_vocab(),)).copy()

    def prompt(self, ids: np.ndarray) -> None:
        self.m.reset()
        self.m.eval(ids.tolist())

    def generate(self, ids: np.ndarray) -> None:
        self.m.reset()
        for t in ids.tolist():
            self.m.eval([t])

    def close(self) -> None:
        self.m.close()


def llama_cpp_info() -> str:
    try:
        import llama_cpp
    except ImportError:
        return ""
    info = llama_cpp.llama_print_system_info()
    info = info.decode() if isinstance(info, bytes) else info
    where = Path(llama_cpp.__file__).resolve().parent.parent
    flags = where / "CMAKE_ARGS"
    built = f"; built with CMAKE_ARGS={flags.read_text().strip()}" if flags.is_file() else ""
    return f"llama-cpp-python {llama_cpp.__version__} ({where}): {info.strip()}{built}"


# The instruction-set flags that decide which kernels either engine can run.
ISA_FLAGS = ("avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512dq",
             "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "asimddp")


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return []


def cpu_desc() -> str:
    """Model name, core count and instruction-set flags, e.g. 'AMD EPYC, 2 CPUs, avx2 ... avx512_bf16'."""
    return f"{cpu_name()}, {os.cpu_count()} CPUs, flags: {' '.join(cpu_flags()) or '?'}"


# ---- measurements ----------------------------------------------------------------------------------

def check_same_model(a, b, vocab: int, n: int = 12) -> dict:
    """Last-token logits of both engines on the same ids: max |diff| relative to the logits' std,
    and whether the top token agrees."""
    ids = [1] + np.random.default_rng(1).integers(3, vocab, n - 1).tolist()
    la, lb = a.logits(ids), b.logits(ids)
    rel = float(np.abs(la - lb).max() / la.std())
    return {"max_abs_diff_over_std": rel, "same_argmax": bool(la.argmax() == lb.argmax()),
            "corr": float(np.corrcoef(la, lb)[0, 1])}


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def run_pair(engines, shape: str, qtype: str, pps: list[int], tg: int, reps: int, wbytes: int) -> list[dict]:
    rng = np.random.default_rng(0)
    vocab = models.SHAPES[shape]["vocab_size"]
    tests = [(f"pp{n}", n, rng.integers(3, vocab, n).astype(np.int32)) for n in pps]
    tests.append((f"tg{tg}", tg, np.concatenate([[1], rng.integers(3, vocab, tg)]).astype(np.int32)))
    rows = []
    for name, n, ids in tests:
        kind = "prompt" if name.startswith("pp") else "generate"
        for e in engines:  # warm-up: page in the weights, settle the threads
            getattr(e, kind)(ids[:min(len(ids), 16)])
        secs = {e.name: [] for e in engines}
        for r in range(reps):
            order = engines if r % 2 == 0 else engines[::-1]  # alternate who goes first
            for e in order:
                secs[e.name].append(timed(getattr(e, kind), ids))
        row = {"shape": shape, "type": qtype, "test": name}
        for e in engines:
            tps = n / statistics.median(secs[e.name])
            row[e.name] = tps
            if kind == "generate":
                row[f"{e.name}_GBs"] = tps * wbytes / 1e9
        rows.append(row)
        print(fmt_row(row), flush=True)
    return rows


def fmt_row(r: dict) -> str:
    lc = r.get("llama.cpp")
    s = f"{r['shape']:<12} {r['type']:<5} {r['test']:>6} {r['lmpack']:9.1f}"
    s += f" {lc:10.1f} {r['lmpack'] / lc:6.2f}x" if lc else f" {'-':>10} {'-':>7}"
    if "lmpack_GBs" in r:
        s += f"   {r['lmpack_GBs']:5.1f}" + (f" {r['llama.cpp_GBs']:5.1f}" if lc else "")
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["stories110m", "tinyllama"], choices=sorted(models.SHAPES))
    ap.add_argument("--types", nargs="+", default=["q8_0", "bf16"], choices=["q8_0", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, nargs="*", default=[128, 512],
                    help="prompt lengths to time (give none, as `--pp --tg 128`, to time generation only)")
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lmpack-bench"))
    ap.add_argument("--bw-mib", type=int, default=1024, help="read-bandwidth buffer (>> last-level cache)")
    ap.add_argument("--no-llama", action="store_true", help="lmpack only")
    ap.add_argument("--llama-extra-bufts", action="store_true",
                    help="let llama.cpp repack weights into its extra (AMX) buffers")
    ap.add_argument("--json", type=Path, help="also write every number here (for roofline.py)")
    ap.add_argument("--table", action="append", default=[], metavar="NAME[=DIR]",
                    help="run once per lmpack kernel table, against the llama-cpp-python installed in DIR")
    a = ap.parse_args()
    if a.table:
        return run_tables(a)

    LlamaCpp.extra_bufts = a.llama_extra_bufts
    have_llama = False
    if not a.no_llama:
        try:
            import llama_cpp  # noqa: F401
            have_llama = True
        except ImportError:
            print("llama-cpp-python is not installed (pip install -e .[bench]): lmpack only")
    print(f"lmpack kernels: {_core.kernel_path()} (GEMV prefetch: {_core._gemv_prefetch()}), threads {a.threads}; "
          f"CPU: {cpu_desc()}")
    if have_llama:
        print(llama_cpp_info())
    bw = {"before": {}, "after": {}}
    for huge in (False, True):
        bw["before"]["huge" if huge else "4k"] = readbw.read_bandwidth(a.threads, a.bw_mib, 5, huge)
    peaks = readbw.compute_peaks()
    print("one core's peaks (GOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    print("read bandwidth (GB/s, {} threads, {} MiB): 4 KiB pages {:.1f}, huge pages {:.1f}".format(
        a.threads, a.bw_mib, bw["before"]["4k"], bw["before"]["huge"]), flush=True)

    n_ctx = max(a.pp + [a.tg + 1]) + 16
    results, checks = [], {}
    print(f"{'shape':<12} {'type':<5} {'test':>6} {'lmpack':>9} {'llama.cpp':>10} {'ratio':>7}   GB/s (lmpack, llama.cpp)")
    for shape in a.shapes:
        for qtype in a.types:
            lmp, gg = prepare(a.workdir, shape, qtype)
            engines = [Lmpack(lmp, a.threads, n_ctx)]
            if have_llama:
                engines.append(LlamaCpp(gg, a.threads, n_ctx))
                chk = check_same_model(engines[0], engines[1], models.SHAPES[shape]["vocab_size"])
                checks[f"{shape}/{qtype}"] = chk
                print(f"{shape:<12} {qtype:<5} same model: max|dlogit|/std {chk['max_abs_diff_over_std']:.4f}, "
                      f"corr {chk['corr']:.6f}, same top token {chk['same_argmax']}", flush=True)
            results += run_pair(engines, shape, qtype, a.pp, a.tg, a.reps, weight_bytes(lmp))
            for e in engines:
                e.close()
    for huge in (False, True):
        bw["after"]["huge" if huge else "4k"] = readbw.read_bandwidth(a.threads, a.bw_mib, 5, huge)
    print("read bandwidth after (GB/s): 4 KiB pages {:.1f}, huge pages {:.1f}".format(
        bw["after"]["4k"], bw["after"]["huge"]))
    if a.json:
        meta = {"threads": a.threads, "reps": a.reps, "kernels": _core.kernel_path(),
                "gemv_prefetch": _core._gemv_prefetch(),
                "llama_extra_bufts": a.llama_extra_bufts,
                "llama_cpp": llama_cpp_info() if have_llama else None, "cpu": cpu_name(),
                "cpu_flags": cpu_flags(), "cpus": os.cpu_count(),
                "command": " ".join([Path(sys.executable).name] + sys.argv)}
        a.json.write_text(json.dumps({"meta": meta, "read_bw": bw, "peaks": peaks, "checks": checks, "results": results}, indent=1))
        print(f"wrote {a.json}")


def strip_table_args(argv: list[str]) -> list[str]:
    """argv without its --table and --json options (either spelling: '--x v' or '--x=v')."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--table", "--json"):
            skip = True
        elif not arg.startswith(("--table=", "--json=")):
            out.append(arg)
    return out


def run_tables(a) -> None:
    """One child run per --table, each with its kernel table and its llama.cpp; one merged JSON."""
    import tempfile

    runnable = _core.kernel_paths()
    print(f"CPU: {cpu_desc()}", flush=True)
    merged = {"meta": {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "cpus": os.cpu_count(),
                       "threads": a.threads, "reps": a.reps,
                       "command": " ".join([Path(sys.executable).name] + sys.argv)},
              "tables": {}}
    base = strip_table_args(sys.argv[1:])
    for spec in a.table:
        name, _, where = spec.partition("=")
        if name not in runnable:
            print(f"error: kernel table {name!r} cannot run here (runnable: {', '.join(runnable)})", file=sys.stderr)
            sys.exit(2)
        env = dict(os.environ, LMPACK_KERNELS=name)
        if where:
            if not (Path(where) / "llama_cpp").is_dir():
                print(f"error: no llama_cpp package in {where}", file=sys.stderr)
                sys.exit(2)
            env["PYTHONPATH"] = os.pathsep.join([str(Path(where).resolve())] +
                                                [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "table.json"
            print(f"\n==== kernel table {name} against llama.cpp from {where or 'the default install'}", flush=True)
            subprocess.run([sys.executable, str(Path(__file__).resolve())] + base + ["--json", str(out)],
                           env=env, check=True)
            merged["tables"][name] = json.loads(out.read_text())
    if a.json:
        a.json.write_text(json.dumps(merged, indent=1))
        print(f"wrote {a.json}")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
