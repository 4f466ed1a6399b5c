"""Hostile input, one test per class of harm (issue 15): nothing may hang, exhaust memory, destroy
data or end in an internal error.

1. pickles built to make the unpickler (or anything formatting its data) do unbounded work;
2. an output path that is, or links to, one of the inputs;
3. sizes in configs that the files do not back, and config files that are not regular files;
4. inputs that used to surface as internal errors (NaN weights, odd sampling options, JSON that
   Python's parser refuses, odd index and provenance values, non-UTF-8 text);
5. configs that converted into files that could not run;
6. token ids that are not integers in the vocabulary;
7. one model used by two generations or threads, or after close();
8. signals during a conversion, and temp files a killed writer left behind;
9. a context too large for the machine;
10. smaller things: tie_word_embeddings as a string, reserved preamble bytes, index vs shards,
    a progress line before the error.

Hang and memory guards run the dangerous cases in a child with an address-space limit and a
generous timeout: a regression fails the test instead of taking the machine down.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import checkpoints
from conftest import lmpack_pythonpath
from test_bad_input import assert_clean_failure

import lmpack
from lmpack.errors import LmpackError, LmpackWarning


def _copy(tiny_hf, tmp_path, name="src") -> Path:
    return checkpoints.copy_checkpoint(tiny_hf.path, tmp_path / name)


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    path.write_text(json.dumps(cfg))


def _guarded(code: str, timeout: float = 120, mem_gb: float = 2.0) -> subprocess.CompletedProcess:
    """Run `code` in a child limited to `mem_gb` of address space (a runaway allocation fails there)."""
    env = dict(os.environ, PYTHONPATH=lmpack_pythonpath())
    limit = int(mem_gb * (1 << 30))
    prelude = f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=timeout,
                          env=env)


# --------------------------------------------------------------------------------------------
# 1. pickles that ask for unbounded work


def _dag(levels: int) -> bytes:
    """Memo entries L0 = [], Li = [L(i-1), L(i-1)]: 40 levels are 2^40 elements when unfolded."""
    out = bytearray(b"]q\x00")
    for i in range(1, levels + 1):
        out += b"](h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"eq" + bytes([i])
    return bytes(out)


def _tuple_dag(levels: int) -> bytes:
    out = bytearray(b")q\x00")
    for i in range(1, levels + 1):
        out += b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i])  # TUPLE2
    return bytes(out)


HOSTILE_PICKLES = {
    # the attack of issue 15: the DAG as a persistent id, whose repr was built whole
    "dag persistent id": b"\x80\x02" + _dag(40) + b"Q.",
    # hashing a shared tuple DAG as a dict key is exponential too
    "dag dict key": b"\x80\x02}q\x64" + _tuple_dag(40) + b"K\x01s.",
    # OrderedDict(big) again and again: quadratic copying through the memo
    "ordered dict copies": b"\x80\x02}q\x00(" + b"".join(b"K%cK\x00" % i for i in range(200)) + b"u" +
                           b"ccollections\nOrderedDict\nh\x00\x85R0" * 50 + b"h\x00.",
    "huge integer": b"\x80\x02\x8b" + struct.pack("<i", 1 << 20) + b"\x01" * (1 << 20) + b".",
    "set of tuples": b"\x80\x04\x8f(" + _tuple_dag(30)[:-2] + b"\x90.",
    "deep marks": b"\x80\x02" + b"(" * 10000 + b"t" * 10000 + b".",
}


@pytest.mark.parametrize("which", sorted(HOSTILE_PICKLES))
def test_hostile_pickle_is_refused_with_bounded_work(which, tmp_path):
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", HOSTILE_PICKLES[which])
        z.writestr("archive/byteorder", "little")
    proc = _guarded(f"""
from lmpack.formats.torchzip import TorchFile
from lmpack.errors import LmpackError
try:
    TorchFile({str(path)!r}).tensors()
except LmpackError as e:
    print("refused:", str(e)[:300])
""")
    assert proc.returncode == 0 and proc.stdout.startswith("refused:"), proc.stdout + proc.stderr


def test_deflated_pickle_is_bounded_by_the_archive(tmp_path):
    # 100 MB of opcodes deflate to ~100 KB; an archive with no storage record needs no such pickle
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02]q\x00(" + b"K\x01" * (50 << 20) + b"e.")
    from lmpack.formats.torchzip import TorchFile

    with pytest.raises(LmpackError, match="implausibly large"):
        TorchFile(path)


def test_real_state_dicts_still_load(tmp_path):
    import torch

    sd = {f"layers.{i}.w": torch.zeros(3, 4) for i in range(300)}
    sd["t"] = torch.zeros(4, 3).t()
    torch.save(sd, tmp_path / "m.pt")
    from lmpack.formats.torchzip import TorchFile

    with TorchFile(tmp_path / "m.pt") as f:
        assert len(f.tensors()) == 301


# --------------------------------------------------------------------------------------------
# 2. output that is an input


@pytest.mark.parametrize("how", ["same path", "symlink", "hard link", "config.json"])
def test_output_that_is_an_input_is_refused(how, tiny_hf, tmp_path, run_lmpack):
    src = _copy(tiny_hf, tmp_path)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    out = {"same path": src / "model.safetensors", "config.json": src / "config.json",
           "symlink": tmp_path / "link.lmp", "hard link": tmp_path / "hard.lmp"}[how]
    if how == "symlink":
        out.symlink_to(src / "model.safetensors")
    if how == "hard link":
        os.link(src / "model.safetensors", out)
    assert_clean_failure(run_lmpack("convert", src, "-o", out), "input")
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    assert not list(tmp_path.glob(".*.tmp")) and not list(src.glob(".*.tmp"))


# --------------------------------------------------------------------------------------------
# 3. sizes and files that configs claim


def test_config_sizes_are_checked_against_the_files(tiny_hf, tmp_path, run_lmpack_many):
    import torch_sources

    big_layers = _copy(tiny_hf, tmp_path, "layers")
    _edit_config(big_layers, num_hidden_layers=1 << 24)
    meta = torch_sources.hf_to_meta(tiny_hf.path, tmp_path / "meta", mp=1)
    params = json.loads((meta / "params.json").read_text())
    (meta / "params.json").write_text(json.dumps({**params, "n_layers": 1 << 22}))
    zero = _copy(tiny_hf, tmp_path, "zero")
    (zero / "config.json").unlink()
    (zero / "config.json").symlink_to("/dev/zero")
    fifo = _copy(tiny_hf, tmp_path, "fifo")
    (fifo / "config.json").unlink()
    os.mkfifo(fifo / "config.json")
    meta_fifo = torch_sources.hf_to_meta(tiny_hf.path, tmp_path / "meta_fifo", mp=1)
    (meta_fifo / "params.json").unlink()
    os.mkfifo(meta_fifo / "params.json")
    cases = {name: ["convert", folder, "-o", tmp_path / f"{name}.lmp"]
             for name, folder in [("layers", big_layers), ("meta", meta), ("zero", zero), ("fifo", fifo),
                                  ("meta_fifo", meta_fifo)]}
    results = run_lmpack_many(cases, timeout=300)
    assert_clean_failure(results["layers"], "16777216 layers")
    assert_clean_failure(results["meta"], "4194304 layers")
    for name in ("zero", "fifo", "meta_fifo"):
        assert_clean_failure(results[name], "not a regular file")
    assert not list(tmp_path.glob("*.lmp"))


def test_readers_refuse_fifos_and_devices(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = _guarded(f"""
from lmpack.errors import LmpackError
from lmpack.formats.lmp import LmpReader
from lmpack.formats.safetensors import SafetensorsFile
from lmpack.formats.torchzip import TorchFile
for reader in (LmpReader, SafetensorsFile, TorchFile):
    for path in ({str(fifo)!r}, "/dev/zero"):
        try:
            reader(path)
        except LmpackError as e:
            print("refused:", e)
""", timeout=60)
    assert proc.returncode == 0 and proc.stdout.count("refused:") == 6, proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# 4. what used to be internal errors


def _nan_lmp(src: Path, dst: Path) -> Path:
    """`src` with one NaN in a layer weight, checksums kept consistent (so only the value is bad)."""
    pre, header = checkpoints.read_lmp_raw(src)
    t = next(t for t in header["tensors"] if t["name"] == "model.layers.0.mlp.up_proj.weight")
    data = bytearray(src.read_bytes())
    data[t["offset"]:t["offset"] + 4] = struct.pack("<f", float("nan"))
    dst.write_bytes(bytes(data))
    crc = checkpoints.crc32c_py(bytes(data[t["offset"]:t["offset"] + t["nbytes"]]))

    def mutate(h):
        next(x for x in h["tensors"] if x["name"] == t["name"])["crc32c"] = f"{crc:08x}"

    return checkpoints.write_lmp_with_header(dst, dst, mutate)


def _lmp_with_header_text(src: Path, dst: Path, edit) -> Path:
    """`src` with its header JSON text replaced by edit(text), lengths and checksums made valid
    (json.dumps could not write what Python's parser refuses)."""
    pre, _ = checkpoints.read_lmp_raw(src)
    data = bytearray(src.read_bytes())
    raw = edit(bytes(data[64:64 + pre["header_len"]]))
    assert 64 + len(raw) <= pre["data_offset"], "edited header does not fit before the data section"
    data[64:pre["data_offset"]] = raw + bytes(pre["data_offset"] - 64 - len(raw))
    struct.pack_into("<Q", data, 16, len(raw))
    struct.pack_into("<I", data, 40, checkpoints.crc32c_py(raw))
    struct.pack_into("<I", data, 44, checkpoints.crc32c_py(bytes(data[:44])))
    dst.write_bytes(bytes(data))
    return dst


def test_former_internal_errors_are_clear_errors(tiny_hf, tiny_lmp, tmp_path, run_lmpack_many):
    deep = _copy(tiny_hf, tmp_path, "deep")
    (deep / "config.json").write_text((deep / "config.json").read_text().rstrip()[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}")
    bigint = _copy(tiny_hf, tmp_path, "bigint")
    (bigint / "config.json").write_text((bigint / "config.json").read_text().rstrip()[:-1] + ', "x": ' + "9" * 5000 + "}")
    index = _copy(tiny_hf, tmp_path, "index")
    (index / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": ["model.safetensors"]}}))
    nan_src = _copy(tiny_hf, tmp_path, "nan")
    from safetensors.numpy import load_file, save_file

    sd = load_file(str(nan_src / "model.safetensors"))
    sd["model.layers.1.mlp.down_proj.weight"][3, 4] = np.inf
    save_file(sd, str(nan_src / "model.safetensors"))
    deep_lmp = _lmp_with_header_text(tiny_lmp, tmp_path / "deep.lmp", lambda raw: raw.replace(
        b'"config":{', b'"config":{"x":' + b"[" * 1100 + b"]" * 1100 + b",", 1))
    prov = checkpoints.write_lmp_with_header(tiny_lmp, tmp_path / "prov.lmp", lambda h: h.update(provenance=[1, 2]))
    nan_lmp = _nan_lmp(tiny_lmp, tmp_path / "nanw.lmp")
    run = ["run", tiny_lmp, "-p", "Hello", "-n", "3"]
    cases = {
        "temperature nan": [*run, "--temperature", "nan"],
        "seed -1": [*run, "--seed", "-1"],
        "deep config": ["convert", deep, "-o", tmp_path / "o1.lmp"],
        "bigint config": ["convert", bigint, "-o", tmp_path / "o2.lmp"],
        "index values": ["convert", index, "-o", tmp_path / "o3.lmp"],
        "nan convert": ["convert", nan_src, "-o", tmp_path / "o4.lmp"],
        "deep lmp header": ["inspect", deep_lmp],
        "provenance": ["inspect", prov],
        "nan weights": ["run", nan_lmp, "-p", "Hello", "-n", "3", "--temperature", "0"],
        "non-utf8 prompt": [*run, "-p", "caf\udce9"],
    }
    results = run_lmpack_many(cases)
    mentions = {"temperature nan": "temperature", "seed -1": "seed", "deep config": "nested too deeply",
                "bigint config": "4300 digits", "index values": "not a plain file name", "nan convert": "NaN/Inf",
                "deep lmp header": "nested too deeply", "provenance": "provenance", "nan weights": "non-finite",
                "non-utf8 prompt": "UTF-8"}
    for key, proc in results.items():
        assert_clean_failure(proc, mentions[key])
    assert not list(tmp_path.glob("o*.lmp")) and not list(tmp_path.glob(".*.tmp"))
    # a temperature too small to divide by is greedy, not NaN
    tiny_t = run_lmpack_many({"t": [*run, "--temperature", "1e-310"], "g": [*run, "--temperature", "0"]})
    assert tiny_t["t"].returncode == 0 and tiny_t["t"].stdout == tiny_t["g"].stdout


def test_non_utf8_text_options(tiny_hf, tiny_lmp, run_lmpack_many):
    results = run_lmpack_many({
        "system": ["chat", tiny_lmp, "--system", "caf\udce9", "-n", "2"],
        "verify": ["verify", tiny_lmp, "--against", tiny_hf.path, "-p", "caf\udce9"],
    })
    assert_clean_failure(results["system"], "UTF-8")
    verify = results["verify"]  # a usage error for verify: exit 2, as docs/VERIFY.md says
    assert verify.returncode == 2 and verify.stderr.startswith("error:") and "UTF-8" in verify.stderr
    with pytest.raises(LmpackError, match="UTF-8"):
        lmpack.load(tiny_lmp).generate("caf\udce9")


def test_non_utf8_stdin_in_chat(tiny_lmp, tmp_path):
    env = dict(os.environ, PYTHONPATH=lmpack_pythonpath(), TERM="dumb", NO_COLOR="1")
    proc = subprocess.run([sys.executable, "-m", "lmpack", "chat", str(tiny_lmp), "-n", "2"], input=b"caf\xe9\n",
                          capture_output=True, env=env, timeout=120)
    lines = [x for x in proc.stderr.decode().splitlines() if x.startswith("error:")]
    assert proc.returncode == 1 and lines and "UTF-8" in lines[0], proc.stderr.decode()
    assert b"Traceback" not in proc.stderr


# --------------------------------------------------------------------------------------------
# 5. whatever convert writes must run


@pytest.mark.parametrize("change,mention", [
    ({"rope_theta": 1e-300, "rope_parameters": None}, "RoPE"),
    ({"rope_parameters": None, "rope_scaling": {"rope_type": "linear", "factor": 5e-324}}, "RoPE"),
])
def test_configs_that_cannot_run_are_refused(change, mention, tiny_hf, tmp_path, run_lmpack):
    src = _copy(tiny_hf, tmp_path)
    _edit_config(src, **change)
    assert_clean_failure(run_lmpack("convert", src, "-o", tmp_path / "o.lmp"), mention)
    assert not (tmp_path / "o.lmp").exists()


@pytest.mark.parametrize("content", [b"", b"garbage, not a sentencepiece model"])
def test_unloadable_tokenizer_is_refused(content, tiny_hf, tmp_path, run_lmpack):
    src = _copy(tiny_hf, tmp_path)
    (src / "tokenizer.model").write_bytes(content)
    assert_clean_failure(run_lmpack("convert", src, "-o", tmp_path / "o.lmp"), "tokenizer")
    assert not (tmp_path / "o.lmp").exists()


def test_llama3_scaling_with_equal_freq_factors_runs(tiny_hf, tmp_path):
    """low_freq_factor == high_freq_factor leaves no smoothed band: the frequencies are transformers'
    (which only divides by zero for a wavelength exactly on the boundary) and no warning is raised."""
    import torch
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from lmpack.convert import convert
    from lmpack.runtime.model import rope_inv_freq

    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 2.0,
            "original_max_position_embeddings": 64}
    src = _copy(tiny_hf, tmp_path)
    _edit_config(src, rope_parameters={**rope, "rope_theta": 10000.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = convert(src, tmp_path / "o.lmp")
        m = lmpack.load(out)
        ours = rope_inv_freq(m.config)
        text = "".join(m.generate("Hello", max_tokens=4, temperature=0))
    assert isinstance(text, str)
    hf_cfg = LlamaConfig(**{**json.loads((src / "config.json").read_text())})
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, torch.device("cpu"))
    np.testing.assert_allclose(ours, theirs.float().numpy(), rtol=1e-6)


# --------------------------------------------------------------------------------------------
# 6. token ids


@pytest.mark.parametrize("ids", [np.array([2**32 + 1]), [1.9], ["7"], "7", [True], [2**70], [-1], [10**6]],
                         ids=["int32 wrap", "float", "str item", "str", "bool", "huge", "negative", "past vocab"])
def test_token_ids_must_be_integers_in_range(ids, tiny_lmp):
    m = lmpack.load(tiny_lmp, threads=1)
    with pytest.raises(LmpackError, match="token id"):
        m.logits(ids)
    with pytest.raises(LmpackError, match="token id"):
        list(m.generate(ids, max_tokens=1)) if not isinstance(ids, str) else m.logits(ids)
    assert m.logits(np.array([1, 5], dtype=np.uint8)).shape == (2, m.config.vocab_size)


# --------------------------------------------------------------------------------------------
# 7. one model, two users


def test_interleaved_generations_never_give_wrong_text(tiny_lmp):
    m = lmpack.load(tiny_lmp, threads=1)
    alone = list(m.generate("the cat", max_tokens=6, temperature=0))
    a = m.generate("the cat", max_tokens=6, temperature=0)
    first = next(a)
    b = list(m.generate("a dog and", max_tokens=6, temperature=0))
    assert b == list(m.generate("a dog and", max_tokens=6, temperature=0))
    assert first == alone[0]
    with pytest.raises(LmpackError, match="taken over"):
        next(a)


def test_logits_from_threads_are_exact(tiny_lmp):
    m = lmpack.load(tiny_lmp, threads=1)
    inputs = [[1, 5, 9], [1, 7], [1, 2, 3, 4, 5]]
    refs = [m.logits(ids) for ids in inputs]
    failures = []

    def work(k):
        for i in range(30):
            ids = inputs[(k + i) % 3]
            try:
                if not np.array_equal(m.logits(ids), refs[(k + i) % 3]):
                    failures.append("mismatch")
            except Exception as e:  # noqa: BLE001
                failures.append(repr(e))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_chat_session_survives_other_use_of_the_model(tiny_lmp):
    from lmpack.runtime.chat import ChatSession

    def conversation(interrupt: bool) -> list[str]:
        m = lmpack.load(tiny_lmp, threads=1)
        s = ChatSession(m, chat_format=None)
        out = ["".join(s.reply("the cat", max_tokens=5, temperature=0))]
        if interrupt:
            m.logits([1, 2, 3])
        out.append("".join(s.reply("and the dog", max_tokens=5, temperature=0)))
        return out

    assert conversation(True) == conversation(False)


def test_calls_after_close_are_clear_errors(tiny_lmp):
    m = lmpack.load(tiny_lmp, threads=1)
    m.close()
    with pytest.raises(LmpackError, match="closed"):
        m.logits([1])
    with pytest.raises(LmpackError, match="closed"):
        list(m.generate("Hello", max_tokens=2))


# --------------------------------------------------------------------------------------------
# 8. signals and temp files


@pytest.fixture(scope="module")
def medium_hf(tmp_path_factory, sp_model_path):
    """A checkpoint large enough (~110 MB) that a conversion can be stopped in the middle."""
    return checkpoints.make_hf_checkpoint(tmp_path_factory.mktemp("medium"), tokenizer=sp_model_path,
                                          dims=dict(dim=512, n_layers=8, n_heads=8, ffn_dim=1536))


def test_sigterm_during_convert_removes_the_temp_file(medium_hf, tmp_path):
    env = dict(os.environ, PYTHONPATH=lmpack_pythonpath(), TERM="dumb", NO_COLOR="1")
    out = tmp_path / "m.lmp"
    for attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-m", "lmpack", "convert", str(medium_hf.path), "-o", str(out),
                                 "--dtype", "q8_0", "--threads", "1"], stderr=subprocess.PIPE, env=env)
        while proc.poll() is None and not list(tmp_path.glob(".m.lmp.*.tmp")):
            time.sleep(0.001)
        proc.send_signal(signal.SIGSTOP)  # frozen mid-conversion (unless it finished already)
        caught = bool(list(tmp_path.glob(".m.lmp.*.tmp"))) and proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        _, stderr = proc.communicate(timeout=120)
        if caught:
            break
        out.unlink(missing_ok=True)
    assert caught, "the conversion always finished before it could be stopped"
    assert proc.returncode == 143, stderr.decode()
    assert stderr.decode().strip().splitlines()[-1] == "terminated", stderr.decode()
    assert b"Traceback" not in stderr and b"File " not in stderr, stderr.decode()
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_files_are_removed_by_the_next_write(tiny_hf, tmp_path):
    """A killed writer's temp file (unlocked) goes; a live writer's (locked) and foreign files stay."""
    import fcntl

    from lmpack.convert import convert

    out = tmp_path / "m.lmp"
    stale = tmp_path / ".m.lmp.abc123_x.tmp"
    stale.write_bytes(b"\0" * 4096)
    live = tmp_path / ".m.lmp.live0000.tmp"
    live.write_bytes(b"\0" * 4096)
    other = tmp_path / ".other.lmp.abc123_x.tmp"
    other.write_bytes(b"x")
    with open(live, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        convert(tiny_hf.path, out)
        assert not stale.exists()
        assert live.exists() and other.exists()
    assert lmpack.load(out).config.n_layers == 2


def test_early_interrupt_is_one_line(tmp_path):
    """A signal while the CLI is still importing ends it at once, with one line and no traceback."""
    env = dict(os.environ, PYTHONPATH=lmpack_pythonpath())
    code = ("import os, signal, lmpack.__main__ as entry\n"
            "signal.signal(signal.SIGINT, entry._exit_now)\n"
            "os.kill(os.getpid(), signal.SIGINT)\n"
            "import time; time.sleep(30)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 130 and proc.stderr == "interrupted\n"


# --------------------------------------------------------------------------------------------
# 9. absurd contexts


def test_absurd_context_fails_before_allocating(tiny_lmp, run_lmpack):
    proc = run_lmpack("run", tiny_lmp, "-p", "hi", "-n", "2", "--ctx", str(2**31 - 1), "--threads", "8")
    assert_clean_failure(proc, "GB")
    proc = _guarded(f"import lmpack\ntry:\n    lmpack.load({str(tiny_lmp)!r}, max_context=2**31 - 1)\n"
                    f"except lmpack.LmpackError as e:\n    print('refused', e)", mem_gb=1.0)
    assert proc.stdout.startswith("refused") and "GB" in proc.stdout, proc.stderr


# --------------------------------------------------------------------------------------------
# 10. smaller things


def test_tie_word_embeddings_as_a_string_warns(hf_checkpoint, tmp_path, run_lmpack):
    src = checkpoints.copy_checkpoint(hf_checkpoint(tie=True).path, tmp_path / "src")
    _edit_config(src, tie_word_embeddings="false")
    from lmpack.convert.hf import read_hf_config

    with pytest.warns(LmpackWarning, match="transformers reads it as true"):
        assert read_hf_config(src).tie_embeddings is True
    proc = run_lmpack("convert", src, "-o", tmp_path / "o.lmp")
    assert proc.returncode == 0 and "warning:" in proc.stderr and "Traceback" not in proc.stderr


def test_nonzero_reserved_preamble_bytes_fail_verify(tiny_lmp, tmp_path, run_lmpack):
    data = bytearray(tiny_lmp.read_bytes())
    data[50] = 7  # reserved bytes are not covered by the preamble checksum
    bad = tmp_path / "bad.lmp"
    bad.write_bytes(bytes(data))
    proc = run_lmpack("verify", bad, "--json")
    assert proc.returncode == 1 and "reserved" in proc.stdout


def test_safetensors_index_must_agree_with_the_shards(hf_checkpoint, tmp_path, run_lmpack):
    src = checkpoints.copy_checkpoint(hf_checkpoint(shards=2).path, tmp_path / "src")
    index = json.loads((src / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    name = next(n for n, f in index["weight_map"].items() if f == files[0])
    index["weight_map"][name] = files[1]
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    assert_clean_failure(run_lmpack("convert", src, "-o", tmp_path / "o.lmp"), name, "listed in")


def test_failed_conversion_prints_only_the_error(tiny_hf, tmp_path, run_lmpack):
    """The failure comes late (the last tensor holds a NaN): no progress line before `error:`."""
    src = _copy(tiny_hf, tmp_path)
    from safetensors.numpy import load_file, save_file

    sd = load_file(str(src / "model.safetensors"))
    sd["lm_head.weight"][-1, -1] = np.nan
    save_file(sd, str(src / "model.safetensors"))
    assert_clean_failure(run_lmpack("convert", src, "-o", tmp_path / "o.lmp"), "lm_head.weight", "NaN")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


# --------------------------------------------------------------------------------------------
# chat templates are input too: their work is bounded


@pytest.mark.parametrize("template", [
    '{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}',
    '{{ "x" * 1000000000 }}',
    '{{ [1] * 100000000 }}',
    '{% set ns = namespace(s="ab") %}{% for i in range(100) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}',
    '{{ 2 ** 100000000 }}',
    '{{ "%1000000000d" % 1 }}',
    '{{ "x"|center(1000000000) }}',
], ids=["nested loops", "string repeat", "list repeat", "doubling", "power", "format width", "center"])
def test_chat_template_work_is_bounded(template):
    proc = _guarded(f"""
from lmpack.formats.chat_template import render
from lmpack.errors import LmpackError
try:
    render({template!r}, [{{"role": "user", "content": "hi"}}])
except LmpackError as e:
    print("refused:", e)
""", timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("refused:"), proc.stdout + proc.stderr


def test_bounded_template_builtins_behave_as_jinja():
    from lmpack.formats.chat_template import render

    t = ('{% for i in range(3) %}{{ i }}{% endfor %}|{{ range(5)|length }}|{{ (range(4)|list)[2] }}|'
         '{% for i in range(3)|reverse %}{{ i }}{% endfor %}|{{ "%3d" % 7 }}|{{ "ab"|center(6) }}|{{ "a\nb"|indent(2) }}')
    assert render(t, [{"role": "user", "content": "hi"}]) == "012|5|2|210|  7|  ab  |a\n  b"


def test_tokenizer_json_that_panics_tokenizers_is_refused(tmp_path):
    """A BPE continuing_subword_prefix longer than a merge makes tokenizers panic in Rust (found by
    scripts/fuzz_readers.py): it is refused before tokenizers sees it, and a panic is an LmpackError."""
    import hf_tokenizers

    from lmpack.convert.tokenizer_files import read_tokenizer

    folder = hf_tokenizers.qwen2(tmp_path / "tok")
    tj = json.loads((folder / "tokenizer.json").read_text())
    tj["model"]["continuing_subword_prefix"] = "\u1f68" * 30
    (folder / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(LmpackError, match="continuing_subword_prefix"):
        read_tokenizer(folder)
