"""lmpack against llama.cpp and CTranslate2 on the same random-weight models, runs alternating.

For each model shape and weight type this makes (once, in --workdir) the HF folder
(benchmarks/models.py), the `.lmp` file (`lmpack convert`), a GGUF file of the same weights
(`lmpack convert ... -o X.gguf`: llama arch names, q/k rows permuted to llama.cpp's RoPE order,
the same Q8_0 bytes or BF16 bit copies) and CTranslate2's conversion of the HF folder (int8 with
per-row scales for Q8_0, bfloat16 for bf16; benchmarks/ct2.py), checks that the engines compute the
same logits on the same ids, then times prompt processing (ppN: N random ids from position 0, to
the first token's logits, tokens/s) and generation (tgN: N single token steps after a one-token
prompt, tokens/s), each test run alternately by the engines and reported as the median of --reps
runs, with the load average before and after. Generation's bytes moved per token (every weight
matrix but the embedding table) give its achieved GB/s, set against a read-bandwidth measurement at
the same thread count taken in the same run (benchmarks/readbw.py, before and after the timings);
prompts' achieved GOP/s (2 operations per matrix weight per token, the classifier included) are set
against the compute ceilings of benchmarks/peaks.c measured in the same run (threads x one core's).

llama.cpp comes from llama-cpp-python (the `bench` extra; it builds llama.cpp from source with the
flags in CMAKE_ARGS), CTranslate2 from its prebuilt wheel (`pip install ctranslate2`; --no-ct2
leaves it out). lmpack runs with f32 activations (exact), and with --activations f32 bf16 also with
its opt-in bf16 activations; each row names its mode.

Each lmpack kernel table is best set against peers built for the same instruction set:
--table NAME[=DIR] (repeatable) runs the whole comparison once per table, each in a child process
with LMPACK_KERNELS=NAME, CTranslate2 forced to the same ISA (benchmarks/ct2.py) and, when DIR is
given, the llama-cpp-python installed there (`pip install --target DIR`), whose build flags are read
from DIR/CMAKE_ARGS. The CPU (model and instruction-set flags), each peer's build, and every number
go to the output (a markdown table per kernel table at the end) and to --json.

    python benchmarks/bench_llamacpp.py --shapes stories110m tinyllama --types q8_0 bf16 --threads 2 \\
        --table avx512=/opt/llamacpp-native --table avx2=/opt/llamacpp-avx2 --json docs/bench.json
    python benchmarks/bench_llamacpp.py --quick --tests tg      # one small run: stories110m q8_0 tg16
"""
from __future__ import annotations

import argparse
import inspect
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

import ct2  # noqa: E402
import models  # noqa: E402
import readbw  # noqa: E402
import report  # noqa: E402
from roofline import matmul_params  # noqa: E402

import lmpack  # noqa: E402
from lmpack import _core  # noqa: E402

SHORT = {"tinyllama": "tl", "stories110m": "st", "tiny": "tiny"}
CHILD_ENV = "LMPACK_BENCH_CHILD"  # set for the per-table children: the parent prints the tables


# ---- model files ---------------------------------------------------------------------------------

def hf_folder(workdir: Path, shape: str) -> Path:
    """The bf16 HF folder every engine's file is made from, written when missing."""
    workdir.mkdir(parents=True, exist_ok=True)
    folder = workdir / f"{shape}-bf16"
    if not (folder / "model.safetensors").exists():
        print(f"writing {folder}", flush=True)
        models.write_model(folder, shape, "bf16")
    return folder


def tag(shape: str, qtype: str) -> str:
    return f"{SHORT[shape]}-{'q8' if qtype == 'q8_0' else 'bf16'}"


def prepare(workdir: Path, shape: str, qtype: str) -> tuple[Path, Path]:
    """The .lmp and .gguf of one shape and type, made from one bf16 HF folder when missing."""
    folder = hf_folder(workdir, shape)
    lmp, gg = workdir / f"{tag(shape, qtype)}.lmp", workdir / f"{tag(shape, qtype)}.gguf"
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


# ---- the engines, behind one interface -----------------------------------------------------------

def has_activations_option() -> bool:
    """Whether this lmpack's load() takes activations= (the opt-in bf16-activation mode)."""
    return "activations" in inspect.signature(lmpack.load).parameters


class Lmpack:
    def __init__(self, path: Path, threads: int, n_ctx: int, activations: str = "f32"):
        self.activations = activations
        self.name = "lmpack" if activations == "f32" else f"lmpack[{activations} act]"
        kw = {} if activations == "f32" else {"activations": activations}
        self.m = lmpack.load(path, threads=threads, max_context=n_ctx, **kw)

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


def llama_cpp_info() -> dict | None:
    """The llama-cpp-python in use: version, folder, compiled features, CMake flags (DIR/CMAKE_ARGS)."""
    try:
        import llama_cpp
    except ImportError:
        return None
    info = llama_cpp.llama_print_system_info()
    info = (info.decode() if isinstance(info, bytes) else info).strip()
    where = Path(llama_cpp.__file__).resolve().parent.parent
    flags = where / "CMAKE_ARGS"
    return {"version": llama_cpp.__version__, "where": str(where), "system_info": info,
            "features": report.system_features(info),
            "cmake_args": report.cmake_args(flags.read_text()) if flags.is_file() else None}


def cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_name() -> str:
    return report.cpu_name(cpuinfo()) or platform.processor()


def cpu_flags() -> list[str]:
    return report.cpu_flags(cpuinfo())


def cpu_desc() -> str:
    """Model name, core count and instruction-set flags, e.g. 'AMD EPYC, 2 CPUs, avx2 ... avx512_bf16'."""
    return f"{cpu_name()}, {os.cpu_count()} CPUs, flags: {' '.join(cpu_flags()) or '?'}"


# ---- measurements ----------------------------------------------------------------------------------

def check_same_model(a, b, vocab: int, n: int = 12) -> dict:
    """Last-token logits of two engines on the same ids: max |diff| relative to the logits' std,
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


def load1() -> float:
    return os.getloadavg()[0]


def run_tests(engines, shape: str, qtype: str, tests: list[tuple[str, int]], reps: int, wbytes: int,
              table: str, peaks: dict, threads: int) -> list[dict]:
    """Each test run by every engine in turn, reps times (the order rotates each repetition);
    one row per lmpack activation mode, the peers' numbers repeated on each."""
    rng = np.random.default_rng(0)
    vocab = models.SHAPES[shape]["vocab_size"]
    params = matmul_params(shape)
    rows = []
    for name, n in tests:
        if name.startswith("pp"):
            kind, ids = "prompt", rng.integers(3, vocab, n).astype(np.int32)
        else:
            kind, ids = "generate", np.concatenate([[1], rng.integers(3, vocab, n)]).astype(np.int32)
        for e in engines:  # warm-up: page in the weights, settle the threads
            getattr(e, kind)(ids[:min(len(ids), 16)])
        before = load1()
        secs = {e.name: [] for e in engines}
        for r in range(reps):
            k = r % len(engines)
            for e in engines[k:] + engines[:k]:  # rotate who goes first
                secs[e.name].append(timed(getattr(e, kind), ids))
        after = load1()
        tps = {e.name: n / statistics.median(secs[e.name]) for e in engines}
        for e in engines:
            if not isinstance(e, Lmpack):
                continue
            row = {"shape": shape, "type": qtype, "test": name, "activations": e.activations,
                   "lmpack": tps[e.name], "load_before": before, "load_after": after,
                   "secs": {"lmpack": secs[e.name]}}
            for peer in engines:
                if not isinstance(peer, Lmpack):
                    row[peer.name] = tps[peer.name]
                    row["secs"][peer.name] = secs[peer.name]
            if kind == "generate":
                for eng in report.ENGINES:
                    if row.get(eng):
                        row[f"{eng}_GBs"] = row[eng] * wbytes / 1e9
            row.update(report.percent_of_peaks(row, params, peaks, threads, table))
            rows.append(row)
            print(fmt_row(row), flush=True)
    return rows


def fmt_row(r: dict) -> str:
    cells = report.table_rows({"meta": {}, "results": [r]})[0]
    return "  ".join(cells[:4] + cells[4:9] + [cells[9] or "", cells[11]])


def selected_tests(a) -> list[tuple[str, int]]:
    tests = [(f"pp{n}", n) for n in a.pp] if "pp" in a.tests else []
    if "tg" in a.tests and a.tg > 0:
        tests.append((f"tg{a.tg}", a.tg))
    return tests


QUICK = {"shapes": ["stories110m"], "types": ["q8_0"], "reps": 1, "pp": [128], "tg": 16, "bw_mib": 256}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["stories110m", "tinyllama"], choices=sorted(models.SHAPES))
    ap.add_argument("--types", nargs="+", default=["q8_0", "bf16"], choices=["q8_0", "bf16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tests", nargs="+", default=["pp", "tg"], choices=["pp", "tg"],
                    help="which tests to run (e.g. --tests tg: generation only)")
    ap.add_argument("--pp", type=int, nargs="+", default=[128, 512], help="prompt lengths")
    ap.add_argument("--tg", type=int, default=128, help="generated tokens")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--quick", action="store_true",
                    help="small defaults for a smoke run: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in QUICK.items())
                    + " (options given explicitly win)")
    ap.add_argument("--activations", nargs="+", default=["f32"], choices=["f32", "bf16"],
                    help="lmpack's activation modes, one row each (bf16: the opt-in rounded mode)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/lmpack-bench"))
    ap.add_argument("--bw-mib", type=int, default=1024, help="read-bandwidth buffer (>> last-level cache)")
    ap.add_argument("--no-llama", action="store_true", help="leave llama.cpp out")
    ap.add_argument("--no-ct2", action="store_true", help="leave CTranslate2 out")
    ap.add_argument("--llama-extra-bufts", action="store_true",
                    help="let llama.cpp repack weights into its extra (AMX) buffers")
    ap.add_argument("--json", type=Path, help="also write every number here (for roofline.py)")
    ap.add_argument("--markdown", type=Path, help="also write the closing report (description and tables) here")
    ap.add_argument("--table", action="append", default=[], metavar="NAME[=DIR]",
                    help="run once per lmpack kernel table, against the llama-cpp-python installed in DIR")
    return ap


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = parser()
    if "--quick" in argv:
        ap.set_defaults(**QUICK)
    a = ap.parse_args(argv)
    if a.threads < 1 or a.reps < 1 or min(a.pp) < 1 or a.tg < 0:
        ap.error("--threads, --reps and --pp must be >= 1, --tg >= 0")
    return a


def main() -> None:
    a = parse_args(sys.argv[1:])
    if "bf16" in a.activations and not has_activations_option():
        sys.exit("error: --activations bf16 needs lmpack.load(..., activations=...), which this lmpack "
                 "does not have")
    if a.table:
        return run_tables(a)

    table = _core.kernel_path()
    isa_env = ct2.force_isa(table)  # before ctranslate2 is first imported
    LlamaCpp.extra_bufts = a.llama_extra_bufts
    have_llama = have_ct2 = False
    if not a.no_llama:
        try:
            import llama_cpp  # noqa: F401
            have_llama = True
        except ImportError:
            print("llama-cpp-python is not installed (pip install -e .[bench]): no llama.cpp columns")
    ct2_version = None
    if not a.no_ct2:
        ct2_version = ct2.version()
        have_ct2 = ct2_version is not None
        if not have_ct2:
            print("ctranslate2 is not installed (pip install ctranslate2): no CTranslate2 columns "
                  "(--no-ct2 silences this)")
    load_start = list(os.getloadavg())
    print(f"lmpack kernels: {table} (GEMV prefetch: {_core._gemv_prefetch()}), threads {a.threads}; "
          f"CPU: {cpu_desc()}")
    lc_info = llama_cpp_info() if have_llama else None
    bw = {"before": {}, "after": {}}
    for huge in (False, True):
        bw["before"]["huge" if huge else "4k"] = readbw.read_bandwidth(a.threads, a.bw_mib, 5, huge)
    peaks = readbw.compute_peaks()
    print("read bandwidth (GB/s, {} threads, {} MiB): 4 KiB pages {:.1f}, huge pages {:.1f}; load {:.2f}".format(
        a.threads, a.bw_mib, bw["before"]["4k"], bw["before"]["huge"], load1()), flush=True)

    tests = selected_tests(a)
    n_ctx = max([n for _, n in tests] + [1]) + 16
    results, checks = [], {}
    ct_meta = {"version": ct2_version, "isa_env": isa_env, "probe": {}, "convert": {}} if have_ct2 else None
    print("  ".join(report.HEAD[:9] + ["GB/s", "load"]))
    for shape in a.shapes:
        for qtype in a.types:
            lmp, gg = prepare(a.workdir, shape, qtype)
            engines = []
            for act in a.activations:
                try:
                    engines.append(Lmpack(lmp, a.threads, n_ctx, act))
                except Exception as e:  # a mode this weight type does not offer: say so, keep the others
                    if act == "f32":
                        raise
                    print(f"{shape} {qtype}: lmpack with {act} activations is not available: {e}", flush=True)
            if have_llama:
                engines.append(LlamaCpp(gg, a.threads, n_ctx))
            if have_ct2:
                cdir = a.workdir / f"{tag(shape, qtype)}-ct2"
                ct_meta["convert"][f"{shape}/{qtype}"] = ct2.convert(hf_folder(a.workdir, shape), cdir, qtype)
                if qtype not in ct_meta["probe"]:
                    ct_meta["probe"][qtype] = ct2.probe(cdir, qtype, a.threads)
                engines.append(ct2.CTranslate2(cdir, a.threads, qtype))
            for other in engines[1:]:
                chk = check_same_model(engines[0], other, models.SHAPES[shape]["vocab_size"])
                checks[f"{shape}/{qtype}/{other.name}"] = chk
                print(f"{shape} {qtype} {engines[0].name} vs {other.name}: max|dlogit|/std "
                      f"{chk['max_abs_diff_over_std']:.4f}, corr {chk['corr']:.6f}, same top token "
                      f"{chk['same_argmax']}", flush=True)
            results += run_tests(engines, shape, qtype, tests, a.reps, weight_bytes(lmp), table, peaks, a.threads)
            for e in engines:
                e.close()
    for huge in (False, True):
        bw["after"]["huge" if huge else "4k"] = readbw.read_bandwidth(a.threads, a.bw_mib, 5, huge)
    meta = {"threads": a.threads, "reps": a.reps, "kernels": table, "gemv_prefetch": _core._gemv_prefetch(),
            "activations": a.activations,
            "llama_extra_bufts": a.llama_extra_bufts, "llama_cpp": lc_info, "ctranslate2": ct_meta,
            "cpu": cpu_name(), "cpu_flags": cpu_flags(), "cpus": os.cpu_count(),
            "load_start": load_start, "load_end": list(os.getloadavg()),
            "command": " ".join([Path(sys.executable).name] + sys.argv)}
    run = {"meta": meta, "read_bw": bw, "peaks": peaks, "checks": checks, "results": results}
    write_outputs(a, None if os.environ.get(CHILD_ENV) else report.report(run), run)


def write_outputs(a, text: str | None, data: dict) -> None:
    """Print the report (and save it with --markdown), and save every number with --json."""
    if text is not None:
        print("\n" + text)
        if a.markdown:
            a.markdown.write_text(text)
    if a.json:
        a.json.write_text(json.dumps(data, indent=1))
        print(f"wrote {a.json}")


def strip_table_args(argv: list[str]) -> list[str]:
    """argv without its --table, --json and --markdown options (either spelling: '--x v' or '--x=v')."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--table", "--json", "--markdown"):
            skip = True
        elif not arg.startswith(("--table=", "--json=", "--markdown=")):
            out.append(arg)
    return out


def run_tables(a) -> None:
    """One child run per --table, each with its kernel table, its llama.cpp and CTranslate2 on the
    same ISA; their tables printed together at the end, one merged JSON."""
    import tempfile

    runnable = _core.kernel_paths()
    specs = []
    for spec in a.table:  # check every table before the first long run
        name, _, where = spec.partition("=")
        if name not in runnable:
            sys.exit(f"error: kernel table {name!r} cannot run here (runnable: {', '.join(runnable)})")
        if where and not (Path(where) / "llama_cpp").is_dir():
            sys.exit(f"error: no llama_cpp package in {where}")
        specs.append((name, where))
    print(f"CPU: {cpu_desc()}", flush=True)
    merged = {"meta": {"cpu": cpu_name(), "cpu_flags": cpu_flags(), "cpus": os.cpu_count(),
                       "threads": a.threads, "reps": a.reps,
                       "command": " ".join([Path(sys.executable).name] + sys.argv)},
              "tables": {}}
    base = strip_table_args(sys.argv[1:])
    for name, where in specs:
        env = dict(os.environ, LMPACK_KERNELS=name, **{CHILD_ENV: "1"})
        if where:
            env["PYTHONPATH"] = os.pathsep.join([str(Path(where).resolve())] +
                                                [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "table.json"
            print(f"\n==== kernel table {name} against llama.cpp from {where or 'the default install'}", flush=True)
            r = subprocess.run([sys.executable, str(Path(__file__).resolve())] + base + ["--json", str(out)], env=env,
                               check=False)
            if r.returncode != 0:
                sys.exit(f"error: the {name} run failed (exit status {r.returncode})")
            merged["tables"][name] = json.loads(out.read_text())
    write_outputs(a, "\n".join(report.report(run, name) for name, run in merged["tables"].items()), merged)


if __name__ == "__main__":
    main()
