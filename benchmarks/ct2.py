"""CTranslate2 as a second peer of the benchmark: the same HF folder converted by its own converter,
run by its generator at the same thread count, on the instruction set of the kernel table under test.

CTranslate2 (`pip install ctranslate2`, a prebuilt wheel) needs no build. Its converter runs once per
workdir and model (int8 with one scale per weight row for the Q8_0 rows, bfloat16 for the bf16 rows);
its wall time and peak resident memory are kept beside the converted folder and reported by every
later run. Which code it runs is decided at start-up from the environment: `CT2_FORCE_CPU_ISA` picks
CTranslate2's own kernels (AVX2 / AVX512), `ONEDNN_MAX_CPU_ISA` caps the oneDNN GEMMs it uses on
non-Intel CPUs (and `MKL_ENABLE_INSTRUCTIONS` MKL's on Intel), so `force_isa` sets them before the
first import. `probe` loads a model in a child with CTranslate2's and oneDNN's logs on and reports
what was actually selected.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# Per lmpack kernel table: CTranslate2's ISA, oneDNN's and MKL's caps. `avx512` compares against a
# llama.cpp without AMX, so oneDNN stops below AMX there; `amx` leaves oneDNN uncapped.
ISA_FOR_TABLE = {
    "avx512": {"CT2_FORCE_CPU_ISA": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16",
               "MKL_ENABLE_INSTRUCTIONS": "AVX512"},
    "amx": {"CT2_FORCE_CPU_ISA": "AVX512"},
    "avx2": {"CT2_FORCE_CPU_ISA": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
ISA_ENV = ("CT2_FORCE_CPU_ISA", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")

# lmpack weight type -> (converter --quantization, compute types to try in order on the CPU).
QUANT = {"q8_0": ("int8", ("int8",)), "bf16": ("bfloat16", ("bfloat16", "float32"))}


def version() -> str | None:
    """CTranslate2's version, or None when it is not installed."""
    try:
        import ctranslate2
    except ImportError:
        return None
    return ctranslate2.__version__


def force_isa(table: str, env: dict = os.environ) -> dict[str, str]:
    """Set the ISA variables for `table` where the caller has not set them; returns the values in
    effect. Must run before ctranslate2 is imported (it reads them once)."""
    for k, v in ISA_FOR_TABLE.get(table, {}).items():
        env.setdefault(k, v)
    return {k: env[k] for k in ISA_ENV if k in env}


def convert(folder: Path, out: Path, qtype: str) -> dict:
    """`out`, CTranslate2's conversion of the HF `folder` for lmpack type `qtype`, made when missing.
    Returns the conversion record: quantization, wall seconds, peak RSS of the converter (MiB)."""
    record = out / "lmpack-bench-convert.json"
    if record.is_file():
        return json.loads(record.read_text())
    quant = QUANT[qtype][0]
    tmp = out.with_name(out.name + ".partial")
    print(f"converting {out} (CTranslate2, {quant})", flush=True)
    cmd = [sys.executable, "-c", "from ctranslate2.converters.transformers import main; main()",
           "--model", str(folder), "--output_dir", str(tmp), "--quantization", quant, "--force"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        last = (err.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        sys.exit(f"error: ct2-transformers-converter failed on {folder}: {last}")
    rec = {"quantization": quant, "seconds": secs, "peak_rss_mib": usage.ru_maxrss / 1024,
           "bytes": sum(p.stat().st_size for p in tmp.iterdir())}
    (tmp / record.name).write_text(json.dumps(rec))
    os.replace(tmp, out)
    return rec


_LOG = {"isa": re.compile(r"Selected ISA: (\S+)"), "sgemm": re.compile(r"SGEMM backend: (.+)"),
        "gemm_s8": re.compile(r"GEMM_S8 backend: (.+)"), "mkl": re.compile(r"Use Intel MKL: (\S+)"),
        "compute_type": re.compile(r"Selected compute type: (\S+)"),
        "onednn_isa": re.compile(r"onednn_verbose,info,cpu,isa:(.+)")}


def parse_log(text: str) -> dict[str, str]:
    """The selections CTranslate2 (CT2_VERBOSE=1) and oneDNN (ONEDNN_VERBOSE=1) log at start-up."""
    out = {}
    for key, rx in _LOG.items():
        m = rx.search(text)
        if m:
            out[key] = m.group(1).strip()
    return out


def probe(model: Path, qtype: str, threads: int) -> dict[str, str]:
    """Load `model` in a child with the logs on and run one token: what CTranslate2 selected."""
    code = ("import sys, ctranslate2 as c; g = c.Generator(sys.argv[1], device='cpu', intra_threads=int(sys.argv[2]),"
            " compute_type=sys.argv[3]); g.forward_batch([[1, 2, 3]])")
    env = dict(os.environ, CT2_VERBOSE="1", ONEDNN_VERBOSE="1")
    for ct in QUANT[qtype][1]:
        r = subprocess.run([sys.executable, "-c", code, str(model), str(threads), ct], env=env,
                           capture_output=True, text=True, check=False)
        if r.returncode == 0:
            return parse_log(r.stdout + r.stderr)
    return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}


class CTranslate2:
    """The benchmark's engine interface (logits / prompt / generate / close) over ctranslate2.Generator."""
    name = "ctranslate2"

    def __init__(self, path: Path, threads: int, qtype: str):
        import ctranslate2

        ctranslate2.set_log_level(40)  # errors only: its compute-type fallback warning is reported instead
        err = None
        for ct in QUANT[qtype][1]:  # bfloat16 compute is not offered on every CPU: fall back to float32
            try:
                self.g = ctranslate2.Generator(str(path), device="cpu", compute_type=ct,
                                               intra_threads=threads, inter_threads=1)
                break
            except ValueError as e:
                err = e
        else:
            raise RuntimeError(f"CTranslate2 cannot load {path}: {err}")
        self.compute_type = self.g.compute_type
        # generate_batch takes token strings: the converter's vocabulary maps ids to them.
        self.vocab = json.loads((Path(path) / "vocabulary.json").read_text())

    def logits(self, ids: list[int]) -> np.ndarray:
        return np.asarray(self.g.forward_batch([list(ids)]))[0, -1].copy()

    def prompt(self, ids: np.ndarray) -> None:
        """Time to the first token: the prompt's forward pass, then one greedy pick (CTranslate2's
        decoder runs all but the last id without the classifier, then one step with it)."""
        self.g.generate_batch([[self.vocab[i] for i in ids.tolist()]], max_length=1, sampling_topk=1,
                              include_prompt_in_result=False)

    def generate(self, ids: np.ndarray) -> None:
        """len(ids) forward passes from a one-token prompt (ids[0]), greedy; the end token cannot stop it."""
        n = len(ids)
        self.g.generate_batch([[self.vocab[int(ids[0])]]], max_length=n, min_length=n, sampling_topk=1,
                              include_prompt_in_result=False)

    def close(self) -> None:
        self.g.unload_model()
        del self.g
