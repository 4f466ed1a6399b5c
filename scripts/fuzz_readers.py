"""Fuzz every reader of lmpack with mutated inputs; count crashes, hangs and internal errors.

    python scripts/fuzz_readers.py --n 100000            # the by-hand run (nice it: machines are shared)
    python scripts/fuzz_readers.py --n 2000 --targets lmp,pickle --seed 7

Targets, each a reader with its own seed input built from a tiny random-weight checkpoint:
  lmp          a `.lmp` file: raw byte damage, and JSON-aware damage of its header with valid checksums;
               a file that opens is also loaded by the C core and run for one token
  safetensors  a `.safetensors` file: raw bytes, and JSON-aware damage of its header
  index        a sharded HF folder whose `model.safetensors.index.json` is damaged (JSON-aware)
  torchzip     a `pytorch_model.bin` (zip): raw byte damage
  pickle       the same archive with only its `data.pkl` damaged (re-zipped, so the pickle is reached)
  meta         a Meta folder whose `params.json` is damaged (JSON-aware)
  config       an HF folder whose `config.json` is damaged (JSON-aware)
  tokconfig    an HF folder whose `tokenizer_config.json`, `generation_config.json` or `tokenizer.model`
               is damaged
  tokjson      an HF folder with a byte-level BPE `tokenizer.json` (and a chat template) damaged
  gguf         a GGUF file (f32 or q8_0, written by lmpack's exporter; a Llama and one model of each
               family with its own GGUF layout: Gemma 2/3, Phi-3, OLMo 2, Mixtral): raw byte damage, converted
  llama2c      a llama2.c v0 `.bin` (beside its tokenizer.model): raw byte damage, converted
Folder and single-file checkpoint targets run the whole conversion to a `.lmp` in a scratch folder.

Every case runs in a worker process with a 10 s watchdog (a case over it is a hang: the worker is
killed and replaced) under a 4 GB address-space limit; a worker that dies is a crash; an exception
other than LmpackError is an internal error. Each failure's input is saved under --out with its
traceback. Mutations are deterministic in (--seed, case number), so a saved case replays with
--replay TARGET:CASE. Peak memory is the largest resident set any worker reached (ru_maxrss).
The CI test (tests/test_fuzz_readers.py) drives the same targets with hypothesis and a small budget.
"""
from __future__ import annotations

import argparse
import json
import importlib.util
import multiprocessing as mp
import multiprocessing.connection
import os
import random
import resource
import shutil
import struct
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("lmpack") is None:  # run from a source tree without an install
    sys.path.insert(0, str(ROOT))
TARGETS = ("lmp", "safetensors", "index", "torchzip", "pickle", "meta", "config", "tokconfig", "tokjson", "gguf",
           "llama2c")
CASE_TIMEOUT = 10.0
WORKER_MEMORY = 4 << 30

# --------------------------------------------------------------------------------------------
# Seeds: one tiny checkpoint in every layout (built once, with torch/transformers/sentencepiece)


def build_seeds(folder: Path) -> Path:
    """Write the seed inputs into `folder` (once; reused when already there)."""
    folder = Path(folder)
    sys.path.insert(0, str(ROOT / "tests"))
    if (folder / "done").is_file():
        if not (folder / "hfjson").is_dir():
            _build_tokenizer_json_seed(folder)
        if not (folder / "model-q8_0.gguf").is_file() or not all(
                (folder / f"model-{m}.gguf").is_file() for m in GGUF_FAMILY_SEEDS):
            _build_gguf_seeds(folder)
        if not (folder / "l2c" / "model.bin").is_file():
            _write_llama2c_v0(folder / "model.lmp", folder / "l2c")
        return folder
    import checkpoints
    import torch_sources

    from lmpack.convert import convert

    folder.mkdir(parents=True, exist_ok=True)
    tok = checkpoints.train_tokenizer(folder / "tokenizer.model")
    dims = dict(dim=64, n_layers=1, n_heads=2, ffn_dim=128)
    hf = checkpoints.make_hf_checkpoint(folder / "hf", tokenizer=tok, dims=dims).path
    (hf / "tokenizer_config.json").write_text(json.dumps({"chat_template": "[INST] {{ messages }} [/INST]",
                                                          "bos_token": "<s>", "eos_token": "</s>"}))
    checkpoints.make_hf_checkpoint(folder / "sharded", tokenizer=tok, dims=dims, shards=2)
    torch_sources.hf_to_bin(hf, folder / "bin")
    torch_sources.hf_to_meta(hf, folder / "meta", mp=1)
    convert(hf, folder / "model.lmp")
    convert(hf, folder / "model-q8_0.lmp", dtype="q8_0")
    _build_tokenizer_json_seed(folder)
    _build_gguf_seeds(folder)
    _write_llama2c_v0(folder / "model.lmp", folder / "l2c")
    (folder / "done").write_text("ok")
    return folder


# One GGUF seed per family with its own GGUF layout: (model_type, config fields beyond the tiny base)
GGUF_FAMILY_SEEDS = {
    "gemma2": ("gemma2", dict(query_pre_attn_scalar=32, sliding_window=8, tie=True)),
    "gemma3": ("gemma3_text", dict(query_pre_attn_scalar=32, sliding_window=8, tie=True)),
    "phi3": ("phi3", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                           "partial_rotary_factor": 0.5})),
    "olmo2": ("olmo2", dict()),
    "mixtral": ("mixtral", dict(num_local_experts=3, num_experts_per_tok=2)),
}


def _build_gguf_seeds(folder: Path) -> None:
    """The HF seed exported as GGUF files (f32 and q8_0) by lmpack's exporter, and a q8_0 GGUF of
    a tiny model of each family with its own layout (fused, stacked, shifted tensors; own keys)."""
    import checkpoints

    from lmpack.convert import convert
    from lmpack.convert.detect import open_source
    from lmpack.convert.gguf_export import export

    for dtype in ("auto", "q8_0"):
        source = open_source(folder / "hf")
        try:
            export(source, folder / f"model-{dtype}.gguf", dtype=dtype)
        finally:
            source.close()
    tiny = dict(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1, head_dim=32)
    for name, (model_type, extra) in GGUF_FAMILY_SEEDS.items():
        ckpt = checkpoints.make_family_checkpoint(folder / f"hf-{name}", model_type, dtype="bfloat16",
                                                  tokenizer=folder / "tokenizer.model", **{**tiny, **extra})
        convert(ckpt.path, folder / f"model-{name}.gguf", dtype="q8_0")


def _build_tokenizer_json_seed(folder: Path) -> None:
    """An HF folder whose tokenizer is a byte-level BPE tokenizer.json (Qwen 2 style) with a template."""
    import checkpoints
    import hf_tokenizers

    tok_dir = hf_tokenizers.qwen2(folder / "tokfiles")
    gen = json.loads((tok_dir / "generation_config.json").read_text())
    eos = gen.get("eos_token_id")
    special = {"bos_token_id": gen.get("bos_token_id") or 0, "eos_token_id": eos[0] if isinstance(eos, list) else eos}
    checkpoints.make_hf_checkpoint(folder / "hfjson", tokenizer=None, tokenizer_files=tok_dir,
                                   vocab=hf_tokenizers.n_tokens(tok_dir), special_ids=special,
                                   dims=dict(dim=64, n_layers=1, n_heads=2, ffn_dim=128))


def _write_llama2c_v0(lmp: Path, folder: Path) -> None:
    """A llama2.c legacy (v0) checkpoint of the `.lmp` seed's weights, beside its tokenizer.model
    (the layout of llama2.c's export.py; q/k rows stay in HF order, which a fuzz seed may)."""
    import numpy as np

    from lmpack.formats.lmp import LmpReader

    folder.mkdir(parents=True, exist_ok=True)
    with LmpReader(lmp) as r:
        c = r.config
        t = lambda name: np.asarray(r.tensor(name), dtype="<f4").tobytes()  # noqa: E731
        vocab = c.vocab_size if c.tie_embeddings else -c.vocab_size
        out = [struct.pack("<7i", c.dim, c.ffn_dim, c.n_layers, c.n_heads, c.n_kv_heads, vocab, c.max_context),
               t("model.embed_tokens.weight")]
        for part in ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "post_attention_layernorm", "mlp.gate_proj", "mlp.down_proj", "mlp.up_proj"):
            out += [t(f"model.layers.{i}.{part}.weight") for i in range(c.n_layers)]
        out += [t("model.norm.weight"), bytes(2 * c.max_context * (c.head_dim // 2) * 4)]
        if not c.tie_embeddings:
            out.append(t("lm_head.weight"))
        (folder / "model.bin").write_bytes(b"".join(out))
        (folder / "tokenizer.model").write_bytes(r.tokenizer_bytes)


# --------------------------------------------------------------------------------------------
# Mutations


INTERESTING_INTS = [0, 1, -1, 2, 7, 31, 32, 33, 64, 255, 256, 4095, 4096, 65535, 65536, 2**31 - 1, 2**31, 2**32,
                    2**32 + 1, 2**48, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -2**63, 16777216, 2**22, 10**30]


def interesting_json(rng: random.Random):
    """A JSON value chosen to break assumptions: extremes, wrong types, deep or huge structures."""
    pick = rng.randrange(16)
    if pick == 0:
        return rng.choice(INTERESTING_INTS)
    if pick == 1:
        return rng.choice([0.0, -0.0, 1e-300, 5e-324, 1e308, -1e308, 0.5, 1.9, 1e-310, 3.4e38])
    if pick == 2:
        return rng.choice(["", "false", "true", "0", "nan", "Infinity", "x" * rng.randrange(1, 5000), "\u0000",
                           "../../etc/passwd", "model.safetensors", "/dev/zero", "[bold]x[/]", "é"])
    if pick == 3:
        return rng.choice([None, True, False])
    if pick == 4:
        return [rng.choice(INTERESTING_INTS) for _ in range(rng.randrange(0, 40))]
    if pick == 5:
        return {}
    if pick == 6:
        return []
    if pick == 7:  # nesting that may pass or exceed the parser's limit
        depth = rng.choice([10, 100, 900, 1100, 5000])
        v: object = 1
        for _ in range(depth):
            v = [v]
        return v
    if pick == 8:
        return 10 ** rng.choice([100, 4299, 4301, 6000]) - 1  # written out by dump_json without the digit limit
    if pick == 9:
        return {"rope_type": rng.choice(["llama3", "linear", "default", "yarn", 3]), "factor": rng.choice([8.0, 0.0, 5e-324, -1]),
                "low_freq_factor": rng.choice([1.0, 4.0, 0]), "high_freq_factor": rng.choice([4.0, 1.0]),
                "original_max_position_embeddings": rng.choice([8192, 0, -1, 2**40])}
    if pick == 10:
        return float("nan") if rng.random() < 0.5 else float("inf")  # json.dumps writes NaN / Infinity
    if pick == 11:
        return rng.randrange(-5, 1 << 24)
    if pick == 12:
        return rng.random() * 10 ** rng.randrange(-8, 8)
    if pick == 13:
        return ["model.safetensors", 1, None][rng.randrange(3)]
    if pick == 14:
        return {"a": {"b": {"c": [1, 2, {"d": None}]}}}
    return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(1, 30)))


def mutate_json_value(value, rng: random.Random, depth: int = 0):
    """Change one node of a parsed JSON document (or add/remove a key), returning the new document."""
    if isinstance(value, dict) and value and depth < 8 and rng.random() < 0.85:
        key = rng.choice(list(value))
        out = dict(value)
        r = rng.random()
        if r < 0.1:
            del out[key]
        elif r < 0.2:
            out[rng.choice(["__metadata__", "x", key + "_", "tie_word_embeddings", "rope_scaling", "weight_map",
                            "provenance", "tensors", "n_layers"])] = interesting_json(rng)
        else:
            out[key] = mutate_json_value(value[key], rng, depth + 1)
        return out
    if isinstance(value, list) and value and depth < 8 and rng.random() < 0.8:
        out = list(value)
        i = rng.randrange(len(out))
        r = rng.random()
        if r < 0.1:
            del out[i]
        elif r < 0.2:
            out.insert(i, interesting_json(rng))
        elif r < 0.25:
            out = out + out
        else:
            out[i] = mutate_json_value(out[i], rng, depth + 1)
        return out
    if isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.5:
        return rng.choice([value + 1, value - 1, value * 2, -value, value + 32, value * 1000, 0])
    return interesting_json(rng)


def dump_json(value, rng: random.Random) -> bytes:
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        text = json.dumps(value)
    except (ValueError, RecursionError):
        text = "[" * 5000 + "]" * 5000
    finally:
        sys.set_int_max_str_digits(limit)
    raw = text.encode("utf-8", "surrogatepass")
    if rng.random() < 0.1:  # and sometimes break the JSON text itself
        raw = mutate_bytes(raw, rng, edits=1)
    return raw


def mutate_bytes(data: bytes, rng: random.Random, edits: int | None = None) -> bytes:
    """Byte-level damage: bit flips, interesting values, inserted/deleted/duplicated runs, truncation."""
    buf = bytearray(data)
    for _ in range(edits or rng.choice([1, 1, 2, 3, 8, 32])):
        if not buf:
            buf += bytes([rng.randrange(256)])
            continue
        i = rng.randrange(len(buf))
        r = rng.randrange(9)
        if r == 0:
            buf[i] ^= 1 << rng.randrange(8)
        elif r == 1:
            buf[i] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, ord("["), ord("{"), ord('"'), ord("9")])
        elif r == 2:
            v = rng.choice(INTERESTING_INTS) & 0xFFFFFFFFFFFFFFFF
            buf[i:i + 8] = struct.pack("<Q", v)[:min(8, len(buf) - i)]
        elif r == 3:
            v = rng.choice(INTERESTING_INTS) & 0xFFFFFFFF
            buf[i:i + 4] = struct.pack("<I", v)[:min(4, len(buf) - i)]
        elif r == 4:
            del buf[i:i + rng.choice([1, 4, 64, 4096])]
        elif r == 5:
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.choice([1, 4, 16])))
        elif r == 6:
            j = rng.randrange(len(buf))
            buf[i:i] = buf[j:j + rng.choice([8, 64, 512])]
        elif r == 7:
            del buf[rng.randrange(len(buf) + 1):]
        else:
            buf[i:i + 4] = struct.pack("<f", rng.choice([float("nan"), float("inf"), -float("inf"), 1e38]))[:min(4, len(buf) - i)]
    return bytes(buf)


# --------------------------------------------------------------------------------------------
# Rewriting containers around a mutated part (so checksums do not stop every mutation at the door)


def _crc32c(data: bytes) -> int:
    from lmpack import _core

    return _core.crc32c(data)


def lmp_with_header(data: bytes, header_raw: bytes) -> bytes:
    """A `.lmp` image with its header replaced and the preamble lengths and checksums recomputed."""
    buf = bytearray(data)
    (data_offset,) = struct.unpack_from("<Q", buf, 24)
    room = data_offset - 64
    if len(header_raw) > room:
        header_raw = header_raw[:room]
    buf[64:data_offset] = header_raw + bytes(room - len(header_raw))
    struct.pack_into("<Q", buf, 16, len(header_raw))
    struct.pack_into("<I", buf, 40, _crc32c(header_raw))
    struct.pack_into("<I", buf, 44, _crc32c(bytes(buf[:44])))
    return bytes(buf)


def safetensors_with_header(data: bytes, header_raw: bytes) -> bytes:
    (n,) = struct.unpack_from("<Q", data, 0)
    return struct.pack("<Q", len(header_raw)) + header_raw + data[8 + n:]


def rezip_with_pickle(archive: bytes, pkl: bytes, rng: random.Random) -> bytes:
    """The torch archive rebuilt with `pkl` as its data.pkl (stored or deflated), other records kept."""
    import io

    src = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in src.infolist():
            body = pkl if info.filename.endswith("/data.pkl") else src.read(info.filename)
            method = zipfile.ZIP_DEFLATED if info.filename.endswith("/data.pkl") and rng.random() < 0.2 else zipfile.ZIP_STORED
            z.writestr(zipfile.ZipInfo(info.filename), body, compress_type=method)
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# Targets: (build the damaged input in `work` from the seeds) then (run the reader on it)


def _link_tree(src: Path, dst: Path) -> None:
    """A copy of a seed folder whose files are hard links (readers never write to their inputs)."""
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file():
            os.link(p, dst / p.name)


def _replace(path: Path, data: bytes) -> None:
    path.unlink(missing_ok=True)  # never write through a hard link into the seed
    path.write_bytes(data)


def make_case(target: str, seeds: Path, work: Path, rng: random.Random) -> Path:
    """Write one damaged input for `target` under `work`; returns what the reader is given."""
    if target == "lmp":
        seed = (seeds / rng.choice(["model.lmp", "model-q8_0.lmp"])).read_bytes()
        if rng.random() < 0.6:
            (n,) = struct.unpack_from("<Q", seed, 16)
            header = json.loads(seed[64:64 + n])
            data = lmp_with_header(seed, dump_json(mutate_json_value(header, rng), rng))
            if rng.random() < 0.2:
                data = mutate_bytes(data, rng, edits=1)
        else:
            data = mutate_bytes(seed, rng)
        path = work / "model.lmp"
        path.write_bytes(data)
        return path
    if target == "safetensors":
        seed = (seeds / "hf" / "model.safetensors").read_bytes()
        if rng.random() < 0.6:
            (n,) = struct.unpack_from("<Q", seed, 0)
            data = safetensors_with_header(seed, dump_json(mutate_json_value(json.loads(seed[8:8 + n]), rng), rng))
        else:
            data = mutate_bytes(seed, rng)
        path = work / "model.safetensors"
        path.write_bytes(data)
        return path
    if target == "gguf":
        path = work / "model.gguf"
        names = ["model-auto.gguf", "model-q8_0.gguf", *(f"model-{m}.gguf" for m in GGUF_FAMILY_SEEDS)]
        path.write_bytes(mutate_bytes((seeds / rng.choice(names)).read_bytes(), rng))
        return path
    if target == "llama2c":
        path = work / "model.bin"
        path.write_bytes(mutate_bytes((seeds / "l2c" / "model.bin").read_bytes(), rng))
        shutil.copy(seeds / "l2c" / "tokenizer.model", work / "tokenizer.model")
        return path
    if target in ("torchzip", "pickle"):
        seed = (seeds / "bin" / "pytorch_model.bin").read_bytes()
        if target == "pickle":
            z = zipfile.ZipFile(__import__("io").BytesIO(seed))
            name = next(n for n in z.namelist() if n.endswith("/data.pkl"))
            data = rezip_with_pickle(seed, mutate_bytes(z.read(name), rng), rng)
        else:
            data = mutate_bytes(seed, rng)
        path = work / "pytorch_model.bin"
        path.write_bytes(data)
        return path
    folder = work / "ckpt"
    json_file = {"index": ("sharded", "model.safetensors.index.json"), "meta": ("meta", "params.json"),
                 "config": ("hf", "config.json"), "tokconfig": ("hf", "tokenizer_config.json"),
                 "tokjson": ("hfjson", "tokenizer.json")}[target]
    if target == "tokjson" and rng.random() < 0.3:
        json_file = ("hfjson", "tokenizer_config.json")
    _link_tree(seeds / json_file[0], folder)
    if target == "tokconfig" and rng.random() < 0.3:
        _replace(folder / "tokenizer.model", mutate_bytes((folder / "tokenizer.model").read_bytes(), rng))
        return folder
    if target == "tokconfig" and rng.random() < 0.4 and (folder / "generation_config.json").is_file():
        json_file = (json_file[0], "generation_config.json")
    path = folder / json_file[1]
    doc = json.loads(path.read_text())
    _replace(path, dump_json(mutate_json_value(doc, rng), rng))
    return folder


def run_reader(target: str, path: Path, work: Path) -> None:
    """Run the reader(s) of `target` over `path` as lmpack's users would."""
    if target == "lmp":
        from lmpack.formats.lmp import LmpReader
        from lmpack.runtime.model import load

        with LmpReader(path) as r:
            r.verify_checksums()
            r.tokenizer_bytes
        m = load(path, threads=1, max_context=8)
        m.logits([m.config.bos_id])
        m.close()
    elif target == "safetensors":
        from lmpack.formats.safetensors import SafetensorsFile

        f = SafetensorsFile(path)
        try:
            for name in f.entries:
                if f.dtype_of(name) is not None:
                    f.load(name).sum()
        finally:
            f.close()
    elif target in ("torchzip", "pickle"):
        from lmpack.formats.torchzip import TorchFile

        with TorchFile(path) as f:
            for t in f.tensors().values():
                if t.dtype is not None:
                    t.array().sum()
    else:
        from lmpack.convert import convert

        convert(path, work / "out.lmp")


# --------------------------------------------------------------------------------------------
# Worker and watchdog


def _worker(conn, seeds: str, base_seed: int) -> None:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY, WORKER_MEMORY))
    import warnings

    warnings.simplefilter("ignore")  # LmpackWarning and numpy warnings are not failures
    from lmpack.errors import LmpackError

    seeds_path = Path(seeds)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        target, case = msg
        work = Path(tempfile.mkdtemp(prefix="lmpack-fuzz-"))
        rng = random.Random(f"{base_seed}:{target}:{case}")
        outcome, detail = "ok", ""
        try:
            try:
                path = make_case(target, seeds_path, work, rng)
            except Exception:  # noqa: BLE001 - a bug of this script, reported as such
                conn.send(("harness", traceback.format_exc(), 0))
                continue
            try:
                run_reader(target, path, work)
            except LmpackError:
                outcome = "refused"
            except MemoryError:
                outcome, detail = "oom", traceback.format_exc()
            except BaseException:  # noqa: BLE001 - exactly what the fuzzer counts
                outcome, detail = "internal", traceback.format_exc()
        finally:
            shutil.rmtree(work, ignore_errors=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        conn.send((outcome, detail, peak))


def _save(out: Path, kind: str, target: str, case: int, seeds: Path, base_seed: int, detail: str) -> None:
    """Keep a failing input (regenerated from its seed) and what happened."""
    folder = out / f"{kind}-{target}-{case}"
    work = folder / "input"
    work.mkdir(parents=True, exist_ok=True)
    make_case(target, seeds, work, random.Random(f"{base_seed}:{target}:{case}"))
    (folder / "what.txt").write_text(f"{kind} target={target} case={case} seed={base_seed}\n{detail}")


def fuzz(n: int, targets: list[str], seeds: Path, out: Path, base_seed: int, workers: int) -> dict:
    ctx = mp.get_context("spawn")
    counts = {k: 0 for k in ("ok", "refused", "internal", "crash", "hang", "oom", "harness")}
    per_target = {t: dict(counts) for t in targets}
    peak = 0
    slowest = 0.0
    pool: list = [None] * workers

    def start(i):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker, args=(child, str(seeds), base_seed), daemon=True)
        p.start()
        pool[i] = (p, parent)

    for i in range(workers):
        start(i)
    cases = [(targets[k % len(targets)], k) for k in range(n)]
    busy: dict[int, tuple] = {}
    t0 = time.time()
    next_case = 0
    done = 0
    while done < n:
        for i in range(workers):
            if i not in busy and next_case < n:
                p, conn = pool[i]
                conn.send(cases[next_case])
                busy[i] = (cases[next_case], time.time())
                next_case += 1
        ready = mp.connection.wait([pool[i][1] for i in busy] + [pool[i][0].sentinel for i in busy], timeout=0.5)
        now = time.time()
        for i in list(busy):
            p, conn = pool[i]
            (target, case), started = busy[i]
            result = None
            if conn in ready or p.sentinel in ready:
                try:
                    result = conn.recv() if conn.poll() else None
                except (EOFError, OSError):
                    result = None
                if result is None and not p.is_alive():
                    result = ("crash", f"worker died with exit code {p.exitcode}", 0)
            if result is None and now - started > CASE_TIMEOUT:
                p.kill()
                p.join()
                result = ("hang", f"over {CASE_TIMEOUT} s", 0)
            if result is None:
                continue
            outcome, detail, rss = result
            slowest = max(slowest, now - started)
            peak = max(peak, rss)
            counts[outcome] += 1
            per_target[target][outcome] += 1
            if outcome == "harness":
                print(f"harness error: {target} case {case}\n{detail[-1500:]}", flush=True)
            elif outcome in ("internal", "crash", "hang", "oom"):
                _save(out, outcome, target, case, seeds, base_seed, detail)
                print(f"{outcome}: {target} case {case}\n{detail[-1500:]}", flush=True)
            if outcome in ("crash", "hang"):
                start(i)
            del busy[i]
            done += 1
            if done % 1000 == 0:
                rate = done / (time.time() - t0)
                print(f"{done}/{n} cases, {rate:.0f}/s, {counts}, peak RSS {peak / 2**20:.0f} MiB", flush=True)
    for p, conn in pool:
        try:
            conn.send(None)
        except OSError:
            pass
        p.join(timeout=5)
    return {"cases": n, "counts": counts, "per_target": per_target, "peak_rss_mib": round(peak / 2**20, 1),
            "slowest_case_s": round(slowest, 2), "seconds": round(time.time() - t0, 1), "seed": base_seed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000, help="number of mutated inputs (spread over the targets)")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated subset of {','.join(TARGETS)}")
    ap.add_argument("--seed", type=int, default=1, help="base seed of the mutations")
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--seeds-dir", type=Path, default=Path(tempfile.gettempdir()) / "lmpack-fuzz-seeds",
                    help="where the seed checkpoints are built (reused)")
    ap.add_argument("--out", type=Path, default=Path("fuzz-failures"), help="where failing inputs are saved")
    ap.add_argument("--replay", help="TARGET:CASE: rebuild one case and run it here, with its traceback")
    args = ap.parse_args()
    seeds = build_seeds(args.seeds_dir)
    if args.replay:
        target, case = args.replay.split(":")
        work = Path(tempfile.mkdtemp(prefix="lmpack-replay-"))
        path = make_case(target, seeds, work, random.Random(f"{args.seed}:{target}:{int(case)}"))
        print(f"input: {path}")
        from lmpack.errors import LmpackError

        try:
            run_reader(target, path, work)
        except LmpackError as e:
            print(f"refused: {e}")
        print("no internal error")
        return
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        ap.error(f"unknown targets: {', '.join(sorted(unknown))}")
    result = fuzz(args.n, targets, seeds, args.out, args.seed, args.workers)
    print(json.dumps(result, indent=2))
    bad = sum(result["counts"][k] for k in ("internal", "crash", "hang", "oom"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
