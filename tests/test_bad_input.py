"""Bad input through the real command line, one test per class of damage: broken safetensors,
broken config.json, unsupported models, corrupt or truncated `.lmp` files, impossible output
paths. Each must end with exit status 1, exactly one stderr line starting with "error:" that names
the problem, no traceback, no output or temporary file, and never a crash of the interpreter.

`convert` and `run` (the C runtime) go through a subprocess so a crash would be seen as a negative
return code instead of taking pytest down; the pure-Python reader is also checked in-process.
"""
from __future__ import annotations

import json
import struct

import pytest

import checkpoints


def assert_clean_failure(proc, *mentions: str) -> str:
    """The CLI failed the way the brief says; returns the error line."""
    assert proc.returncode >= 0, f"interpreter crashed with signal {-proc.returncode}\nstderr: {proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{proc.stderr}"
    line = lines[0]
    assert line.startswith("error:"), line
    assert "internal error" not in line, f"bad input surfaced as an internal error: {line}"
    assert proc.returncode == 1, f"exit status {proc.returncode}: {line}"
    for m in mentions:
        assert m.lower() in line.lower(), f"error line does not mention {m!r}: {line}"
    return line


# --------------------------------------------------------------------------------------------
# convert: damaged HF folders

def _safetensors_parts(path):
    data = path.read_bytes()
    (n,) = struct.unpack_from("<Q", data, 0)
    return json.loads(data[8:8 + n]), data[8 + n:]


def _write_safetensors(path, header, buffer):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + buffer)


def truncate_safetensors(folder):
    f = folder / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) * 3 // 5])
    return "model.safetensors"


def offsets_past_end(folder):
    f = folder / "model.safetensors"
    header, buffer = _safetensors_parts(f)
    last = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
    begin, end = header[last]["data_offsets"]
    # move the last tensor 4 KiB past the end of the buffer, keeping its byte count consistent
    header[last]["data_offsets"] = [begin + 4096, end + 4096]
    _write_safetensors(f, header, buffer)
    return "model.safetensors"


def header_length_past_end(folder):
    f = folder / "model.safetensors"
    data = bytearray(f.read_bytes())
    struct.pack_into("<Q", data, 0, len(data) + 10)
    f.write_bytes(bytes(data))
    return "model.safetensors"


def header_not_json(folder):
    f = folder / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:20] = b"\xff\xfe{not json!"
    f.write_bytes(bytes(data))
    return "model.safetensors"


def shape_disagrees_with_config(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] += 32
    (folder / "config.json").write_text(json.dumps(cfg))
    return "mlp"


def missing_hidden_size(folder):
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["hidden_size"]
    (folder / "config.json").write_text(json.dumps(cfg))
    return "hidden_size"


def model_type_gpt2(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "gpt2"
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (folder / "config.json").write_text(json.dumps(cfg))
    return "gpt2"


def config_not_json(folder):
    (folder / "config.json").write_text('{"model_type": "llama", ')
    return "config.json"


def no_config(folder):
    (folder / "config.json").unlink()
    return "config.json"


def no_tokenizer(folder):
    (folder / "tokenizer.model").unlink()
    return "tokenizer.model"


def no_weights(folder):
    (folder / "model.safetensors").unlink()
    return "safetensors"


def missing_tensor(folder):
    f = folder / "model.safetensors"
    header, buffer = _safetensors_parts(f)
    del header["model.layers.1.mlp.up_proj.weight"]
    _write_safetensors(f, header, buffer)
    return "model.layers.1.mlp.up_proj.weight"


def unsupported_rope_type(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                              "original_max_position_embeddings": 128}
    (folder / "config.json").write_text(json.dumps(cfg))
    return "yarn"


def attention_bias(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["attention_bias"] = True
    (folder / "config.json").write_text(json.dumps(cfg))
    return "attention_bias"


def heads_do_not_divide(folder):
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_key_value_heads"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    return "n_kv_heads"


FOLDER_DAMAGE = [truncate_safetensors, offsets_past_end, header_length_past_end, header_not_json,
                 shape_disagrees_with_config, missing_hidden_size, model_type_gpt2, config_not_json,
                 no_config, no_tokenizer, no_weights, missing_tensor, unsupported_rope_type, attention_bias,
                 heads_do_not_divide]


@pytest.fixture(scope="module")
def folder_results(tiny_hf, tmp_path_factory, run_lmpack_many):
    """Every FOLDER_DAMAGE case converted by the CLI (one child interpreter for all of them)."""
    base = tmp_path_factory.mktemp("damaged-folders")
    cases, meta = {}, {}
    for damage in FOLDER_DAMAGE:
        name = damage.__name__
        folder = checkpoints.copy_checkpoint(tiny_hf.path, base / name)
        out_dir = base / f"{name}-out"
        out_dir.mkdir()
        meta[name] = (damage(folder), out_dir)
        cases[name] = ["convert", folder, "-o", out_dir / "model.lmp"]
    results = run_lmpack_many(cases)
    return {name: (results[name], *meta[name]) for name in cases}


@pytest.mark.parametrize("damage", FOLDER_DAMAGE, ids=lambda f: f.__name__)
def test_convert_rejects_damaged_folder(damage, folder_results):
    proc, mention, out_dir = folder_results[damage.__name__]
    assert_clean_failure(proc, mention)
    assert list(out_dir.iterdir()) == [], "output or temporary file left behind"


@pytest.mark.parametrize("damage", [truncate_safetensors, offsets_past_end, missing_hidden_size, model_type_gpt2],
                         ids=lambda f: f.__name__)
def test_convert_rejects_damaged_folder_in_own_process(damage, tiny_hf, tmp_path, run_lmpack):
    """The same through `python -m lmpack` itself (exit status and stderr of a real process)."""
    folder = checkpoints.copy_checkpoint(tiny_hf.path, tmp_path / "src")
    mention = damage(folder)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert_clean_failure(run_lmpack("convert", folder, "-o", out_dir / "model.lmp"), mention)
    assert list(out_dir.iterdir()) == [], "output or temporary file left behind"


def test_convert_missing_shard(hf_checkpoint, tmp_path, run_lmpack):
    folder = checkpoints.copy_checkpoint(hf_checkpoint(dtype="float16", tie=True, shards=2).path, tmp_path / "src")
    victim = sorted(folder.glob("model-*.safetensors"))[-1]
    victim.unlink()
    out = tmp_path / "model.lmp"
    assert_clean_failure(run_lmpack("convert", folder, "-o", out), victim.name)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_convert_truncated_shard(hf_checkpoint, tmp_path, run_lmpack):
    folder = checkpoints.copy_checkpoint(hf_checkpoint(dtype="float16", tie=True, shards=2).path, tmp_path / "src")
    victim = sorted(folder.glob("model-*.safetensors"))[-1]
    victim.write_bytes(victim.read_bytes()[:-100])
    out = tmp_path / "model.lmp"
    assert_clean_failure(run_lmpack("convert", folder, "-o", out), victim.name)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_convert_output_in_missing_folder(tiny_hf, tmp_path, run_lmpack):
    out = tmp_path / "no" / "such" / "folder" / "model.lmp"
    assert_clean_failure(run_lmpack("convert", tiny_hf.path, "-o", out))
    assert not (tmp_path / "no").exists(), "convert created the missing folder or left files"


def test_convert_missing_source(tmp_path, run_lmpack):
    assert_clean_failure(run_lmpack("convert", tmp_path / "nothing-here", "-o", tmp_path / "m.lmp"), "nothing-here")
    assert list(tmp_path.iterdir()) == []


def test_convert_unknown_dtype(tiny_hf, tmp_path, run_lmpack):
    assert_clean_failure(run_lmpack("convert", tiny_hf.path, "-o", tmp_path / "m.lmp", "--dtype", "f8"), "f8")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# run / inspect / the reader: damaged .lmp files

def bad_magic(src, dst):
    data = bytearray(src.read_bytes())
    data[1:4] = b"GGU"
    dst.write_bytes(bytes(data))


def flipped_header_byte(src, dst):
    data = bytearray(src.read_bytes())
    pre, _ = checkpoints.read_lmp_raw(src)
    data[64 + pre["header_len"] // 2] ^= 0x20
    dst.write_bytes(bytes(data))


def flipped_preamble_byte(src, dst):
    data = bytearray(src.read_bytes())
    data[24] ^= 0x01  # data_offset, caught by the preamble checksum
    dst.write_bytes(bytes(data))


def truncated(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) - 1000])


def truncated_to_preamble(src, dst):
    dst.write_bytes(src.read_bytes()[:40])


def empty_file(src, dst):
    dst.write_bytes(b"")


def appended_junk(src, dst):
    dst.write_bytes(src.read_bytes() + b"\0" * 64)


def _mutated(mutate):
    def damage(src, dst):
        checkpoints.write_lmp_with_header(src, dst, mutate)
    damage.__name__ = mutate.__name__
    return damage


def _tensor(header, name):
    return next(t for t in header["tensors"] if t["name"] == name)


@_mutated
def offset_past_end(h):
    t = _tensor(h, "model.layers.1.mlp.down_proj.weight")
    t["offset"] += 1 << 30


@_mutated
def offset_before_data(h):
    _tensor(h, "model.layers.0.self_attn.q_proj.weight")["offset"] = 0


@_mutated
def misaligned_offset(h):
    _tensor(h, "model.norm.weight")["offset"] += 4


@_mutated
def overlapping_tensors(h):
    ts = h["tensors"]
    ts[3]["offset"] = ts[2]["offset"]


@_mutated
def nbytes_disagrees_with_shape(h):
    t = _tensor(h, "model.embed_tokens.weight")
    t["nbytes"] //= 2


@_mutated
def lmp_shape_disagrees_with_config(h):
    t = _tensor(h, "model.layers.0.mlp.up_proj.weight")
    t["shape"] = [t["shape"][0] // 2, t["shape"][1]]
    t["nbytes"] //= 2


@_mutated
def lmp_missing_tensor(h):
    h["tensors"] = [t for t in h["tensors"] if t["name"] != "model.layers.1.self_attn.v_proj.weight"]


@_mutated
def unknown_dtype(h):
    _tensor(h, "lm_head.weight")["dtype"] = "f8"


@_mutated
def bad_head_count(h):
    h["config"]["n_kv_heads"] = 3


@_mutated
def missing_config_key(h):
    del h["config"]["dim"]


@_mutated
def tokenizer_past_end(h):
    h["tokenizer"]["nbytes"] = 1 << 40


def garbage_tokenizer(src, dst):
    data = bytearray(src.read_bytes())
    _, h = checkpoints.read_lmp_raw(src)
    tok = h["tokenizer"]
    data[tok["offset"]:tok["offset"] + tok["nbytes"]] = b"\xff" * tok["nbytes"]
    dst.write_bytes(bytes(data))


LMP_DAMAGE = [bad_magic, flipped_header_byte, flipped_preamble_byte, truncated, truncated_to_preamble, empty_file,
              appended_junk, offset_past_end, offset_before_data, misaligned_offset, overlapping_tensors,
              nbytes_disagrees_with_shape, lmp_shape_disagrees_with_config, lmp_missing_tensor, unknown_dtype,
              bad_head_count, missing_config_key, tokenizer_past_end]


@pytest.fixture
def damaged(tiny_lmp, tmp_path):
    def make(damage):
        dst = tmp_path / "bad.lmp"
        damage(tiny_lmp, dst)
        assert dst.read_bytes() != tiny_lmp.read_bytes()
        return dst
    return make


@pytest.fixture(scope="module")
def lmp_results(tiny_lmp, tmp_path_factory, run_lmpack_many):
    """`run` and `inspect` on every damaged file, in one child interpreter."""
    base = tmp_path_factory.mktemp("damaged-lmp")
    cases = {}
    for damage in LMP_DAMAGE + [garbage_tokenizer]:
        path = base / f"{damage.__name__}.lmp"
        damage(tiny_lmp, path)
        assert path.read_bytes() != tiny_lmp.read_bytes()
        cases[("run", damage.__name__)] = ["run", path, "-p", "Hello", "-n", "4", "--temperature", "0"]
        cases[("inspect", damage.__name__)] = ["inspect", path]
    keyed = {f"{cmd}:{name}": args for (cmd, name), args in cases.items()}
    return run_lmpack_many(keyed)


@pytest.mark.parametrize("damage", LMP_DAMAGE, ids=lambda f: f.__name__)
def test_reader_rejects_damaged_lmp(damage, damaged):
    from lmpack.errors import LmpackError
    from lmpack.formats.lmp import LmpReader

    path = damaged(damage)
    with pytest.raises(LmpackError) as info:
        LmpReader(path).close()
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message


@pytest.mark.parametrize("damage", LMP_DAMAGE + [garbage_tokenizer], ids=lambda f: f.__name__)
def test_run_and_inspect_reject_damaged_lmp(damage, lmp_results):
    name = damage.__name__
    proc = lmp_results[f"run:{name}"]
    assert_clean_failure(proc, f"{name}.lmp")
    assert proc.stdout.strip() == "", "run printed output for a file it should refuse"
    if damage is not garbage_tokenizer:  # inspect does not parse the tokenizer, only reports its size
        assert_clean_failure(lmp_results[f"inspect:{name}"], f"{name}.lmp")


@pytest.mark.parametrize("damage", [bad_magic, flipped_header_byte, truncated, offset_past_end, garbage_tokenizer],
                         ids=lambda f: f.__name__)
def test_run_rejects_damaged_lmp_in_own_process(damage, damaged, run_lmpack):
    proc = run_lmpack("run", damaged(damage), "-p", "Hello", "-n", "4", "--temperature", "0")
    assert_clean_failure(proc, "bad.lmp")
    assert proc.stdout.strip() == ""


def test_run_missing_file(tmp_path, run_lmpack):
    assert_clean_failure(run_lmpack("run", tmp_path / "absent.lmp", "-p", "x"), "absent.lmp")


def test_run_rejects_bad_arguments(tiny_lmp, run_lmpack):
    assert_clean_failure(run_lmpack("run", tiny_lmp, "-p", "x", "--top-p", "0"))
    assert_clean_failure(run_lmpack("run", tiny_lmp, "-p", "x", "--threads", "-1"))


def test_python_load_rejects_damage_without_crashing(tiny_lmp, tmp_path):
    """lmpack.load (the C runtime behind it) on damaged files, in a child interpreter."""
    import subprocess
    import sys

    from conftest import lmpack_pythonpath

    paths = []
    for damage in (truncated, offset_past_end, nbytes_disagrees_with_shape, bad_head_count, garbage_tokenizer):
        dst = tmp_path / f"{damage.__name__}.lmp"
        damage(tiny_lmp, dst)
        paths.append(str(dst))
    code = (
        "import sys, lmpack\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        lmpack.load(p)\n"
        "    except lmpack.LmpackError as e:\n"
        "        print('ok', p, e)\n"
        "    else:\n"
        "        print('loaded', p)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": lmpack_pythonpath()})
    assert proc.returncode == 0, f"child exited {proc.returncode}: {proc.stderr}"
    results = proc.stdout.splitlines()
    assert len(results) == len(paths) and all(r.startswith("ok ") for r in results), proc.stdout


def test_convert_survives_random_safetensors_corruption(tiny_hf, tmp_path_factory):
    """Hypothesis flips bytes anywhere in a safetensors file (header or data): converting then
    either succeeds or raises LmpackError, and a failure leaves no output or temporary file."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from lmpack.convert import convert
    from lmpack.errors import LmpackError

    base = tmp_path_factory.mktemp("fuzz-st")
    original = (tiny_hf.path / "model.safetensors").read_bytes()
    (n,) = struct.unpack_from("<Q", original, 0)
    folder = checkpoints.copy_checkpoint(tiny_hf.path, base / "src")
    out_dir = base / "out"
    out_dir.mkdir()

    # positions: mostly the 8-byte length and the JSON header (where parsing happens), some data
    pos = st.one_of(st.integers(0, 8 + n - 1), st.integers(0, len(original) - 1))

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(flips=st.lists(st.tuples(pos, st.integers(1, 255)), min_size=1, max_size=4),
           cut=st.one_of(st.none(), st.integers(0, len(original) - 1)))
    def check(flips, cut):
        data = bytearray(original)
        for at, x in flips:
            data[at] ^= x
        if cut is not None:
            data = data[:cut]
        (folder / "model.safetensors").write_bytes(bytes(data))
        out = out_dir / "model.lmp"
        try:
            convert(folder, out)
        except LmpackError as e:
            assert "\n" not in str(e)
            assert list(out_dir.iterdir()) == []
        else:
            assert out.is_file()
            out.unlink()

    check()
