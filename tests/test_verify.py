"""`lmpack verify`: passes on good files of every dtype and source kind, and fails — naming the check
and the tensor — on a flipped data byte, a flipped header byte, a truncated file, swapped tensors,
a conversion without the q/k permutation, non-finite values and a broken tokenizer. Its numpy
reference forward pass is itself checked against transformers.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import checkpoints

torch = pytest.importorskip("torch")
import torch_sources  # noqa: E402

from lmpack.convert import convert  # noqa: E402
from lmpack.convert.detect import open_source  # noqa: E402
from lmpack.verify import CHECKS, DEFAULT_THRESHOLDS, UsageError, verify  # noqa: E402
from lmpack.verify.reference import reference_logits  # noqa: E402

MAX_TOKENS = 64  # enough positions for stable metrics, quick on the tiny models


@pytest.fixture(scope="module")
def ckpt(hf_checkpoint):
    """f32 source, GQA (4 query heads over 2 kv heads), untied head."""
    return hf_checkpoint(n_kv_heads=2)


@pytest.fixture(scope="module")
def lmp(ckpt, converted):
    return lambda dtype="f32": converted(ckpt, dtype)


def statuses(result) -> dict[str, str]:
    return {name: c.status for name, c in result.checks.items()}


def entry(path: Path, name: str) -> dict:
    _, header = checkpoints.read_lmp_raw(path)
    return next(t for t in header["tensors"] if t["name"] == name)


def flip(src: Path, dst: Path, at: int) -> Path:
    data = bytearray(src.read_bytes())
    data[at] ^= 0x10
    dst.write_bytes(bytes(data))
    return dst


# --------------------------------------------------------------------------------------------
# The reference forward pass against transformers


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(dtype="bfloat16", n_kv_heads=1, tie=True, rope_scaling=checkpoints.LLAMA3_ROPE, rope_theta=500000.0),
], ids=["f32-mha-untied", "bf16-mqa-tied-llama3rope"])
def test_reference_matches_transformers(hf_checkpoint, kwargs):
    ck = hf_checkpoint(**kwargs)
    ids = [1] + np.random.default_rng(3).integers(0, ck.vocab_size, 47).tolist()
    want = ck.reference_logits(ids)
    source = open_source(ck.path)
    try:
        got = reference_logits(source, ids)
    finally:
        source.close()
    assert got.dtype == np.float32 and got.shape == want.shape
    scale = float(want.std())
    assert scale > 0.5
    err = float(np.abs(got - want).max())
    assert err < 1e-4 * scale, f"reference vs transformers: {err:.3g} = {err / scale:.3g} x std"


# --------------------------------------------------------------------------------------------
# Good files pass


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16", "q8_0"])
def test_good_file_passes_every_dtype(lmp, ckpt, dtype):
    path = lmp(dtype)
    result = verify(path, against=ckpt.path, max_tokens=MAX_TOKENS)
    assert result.ok, result.failures()
    assert set(statuses(result).values()) == {"pass"}, statuses(result)
    assert result.dtype == dtype
    m = result.metrics
    assert m.tokens == MAX_TOKENS and m.ref_logit_std > 0.5
    assert result.thresholds == DEFAULT_THRESHOLDS[dtype]
    if dtype == "f32":  # the same numbers through two implementations: float32 rounding only
        assert m.max_abs_error_rel_std < 1e-4 and m.kl_mean < 1e-9 and m.top1_agreement == 1.0
    else:  # lossy, but not by much: the default prompt is English through a 400-piece tokenizer
        assert 0 < m.kl_mean < DEFAULT_THRESHOLDS[dtype].max_kl_mean
    tensors = result.checks["tensors"].data["tensors"]
    assert len(tensors) == 2 + 2 * 9 + 1  # embed, head, 9 per layer, final norm


def test_integrity_only_without_source(lmp):
    result = verify(lmp("bf16"))
    assert result.ok
    assert statuses(result) == {"structure": "pass", "checksums": "pass", "tokenizer": "pass", "values": "pass",
                                "config": "skip", "tensors": "skip", "logits": "skip"}
    assert result.metrics is None
    assert result.checks["checksums"].data["bytes"] == Path(lmp("bf16")).stat().st_size - \
        checkpoints.read_lmp_raw(lmp("bf16"))[1]["tokenizer"]["offset"] - _padding(lmp("bf16"))


def _padding(path: Path) -> int:
    """Bytes of the data section that belong to no range (alignment padding)."""
    _, header = checkpoints.read_lmp_raw(path)
    ranges = sorted([(header["tokenizer"]["offset"], header["tokenizer"]["nbytes"])] +
                    [(t["offset"], t["nbytes"]) for t in header["tensors"]])
    return sum(b[0] - (a[0] + a[1]) for a, b in zip(ranges, ranges[1:]))


@pytest.mark.parametrize("kind", ["hf-bin", "meta"])
def test_good_file_passes_every_source_kind(hf_checkpoint, tmp_path, kind):
    ck = hf_checkpoint(dtype="bfloat16", n_kv_heads=2)
    if kind == "hf-bin":
        folder = torch_sources.hf_to_bin(ck.path, tmp_path / "bin", shards=2)
    else:
        folder = torch_sources.hf_to_meta(ck.path, tmp_path / "meta", mp=2)
    out = convert(folder, tmp_path / "m.lmp", dtype="auto")
    result = verify(out, against=folder, max_tokens=MAX_TOKENS)
    assert result.ok, result.failures()
    assert result.metrics.kl_mean < 1e-9
    # The Meta file holds HF's layout: its tensors equal the HF folder's, bit for bit (the config
    # may differ in fields Meta's params.json does not carry, so only tensors and logits count).
    cross = verify(out, against=ck.path, max_tokens=MAX_TOKENS)
    assert cross.checks["tensors"].status == "pass", cross.failures()
    assert cross.checks["logits"].status == "pass", cross.failures()


def test_against_float_lmp(lmp):
    result = verify(lmp("q8_0"), against=lmp("f32"), max_tokens=MAX_TOKENS)
    assert result.ok, result.failures()


# --------------------------------------------------------------------------------------------
# Corruptions


def test_flipped_data_byte(lmp, ckpt, tmp_path):
    good = lmp("f32")
    e = entry(good, "model.layers.1.mlp.down_proj.weight")
    bad = flip(good, tmp_path / "bad.lmp", e["offset"] + e["nbytes"] // 2 + 1)
    result = verify(bad)
    assert not result.ok
    assert statuses(result)["structure"] == "pass" and statuses(result)["checksums"] == "fail"
    assert [p.tensor for p in result.checks["checksums"].problems] == ["model.layers.1.mlp.down_proj.weight"]
    # Against the source the tensor comparison names it too.
    full = verify(bad, against=ckpt.path, max_tokens=MAX_TOKENS)
    assert [p.tensor for p in full.checks["tensors"].problems] == ["model.layers.1.mlp.down_proj.weight"]


def test_flipped_tokenizer_byte(lmp, tmp_path):
    good = lmp("f32")
    _, header = checkpoints.read_lmp_raw(good)
    bad = flip(good, tmp_path / "bad.lmp", header["tokenizer"]["offset"] + 100)
    result = verify(bad)
    assert not result.ok
    assert [p.tensor for p in result.checks["checksums"].problems] == ["<tokenizer>"]


@pytest.mark.parametrize("at,match", [(64 + 30, "header"), (20, "preamble"), (3, "magic")])
def test_flipped_header_byte(lmp, tmp_path, at, match):
    bad = flip(lmp("f32"), tmp_path / "bad.lmp", at)
    result = verify(bad)
    assert not result.ok
    assert statuses(result)["structure"] == "fail"
    assert all(s == "skip" for n, s in statuses(result).items() if n != "structure")
    assert match in result.checks["structure"].problems[0].message


def test_truncated_file(lmp, tmp_path):
    data = lmp("f32").read_bytes()
    bad = tmp_path / "bad.lmp"
    bad.write_bytes(data[:-100])
    result = verify(bad)
    assert not result.ok and "truncated" in result.checks["structure"].problems[0].message
    bad.write_bytes(data[:40])
    assert not verify(bad).ok


def test_swapped_tensors_caught_only_against_source(lmp, ckpt, tmp_path):
    a, b = "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"

    def swap(header):
        ta = next(t for t in header["tensors"] if t["name"] == a)
        tb = next(t for t in header["tensors"] if t["name"] == b)
        for key in ("offset", "crc32c"):
            ta[key], tb[key] = tb[key], ta[key]

    bad = checkpoints.write_lmp_with_header(lmp("bf16"), tmp_path / "swapped.lmp", swap)
    assert verify(bad).ok  # every range still matches its checksum: the file alone cannot tell
    result = verify(bad, against=ckpt.path, max_tokens=MAX_TOKENS)
    assert not result.ok
    assert statuses(result)["checksums"] == "pass"
    assert sorted(p.tensor for p in result.checks["tensors"].problems) == [a, b]
    assert statuses(result)["logits"] == "fail"
    assert result.metrics.kl_mean > 10 * DEFAULT_THRESHOLDS["bf16"].max_kl_mean


def _permute_qk_to_meta(src: Path, dst: Path) -> Path:
    """A copy of an HF folder whose q/k rows are in Meta's interleaved order: what a converter
    that forgot the permutation would produce from a Meta checkpoint."""
    from safetensors.torch import load_file, save_file

    cfg = json.loads((src / "config.json").read_text())
    checkpoints.copy_checkpoint(src, dst)
    sd = load_file(src / "model.safetensors")
    for name in list(sd):
        if name.endswith("q_proj.weight"):
            sd[name] = torch_sources.hf_to_meta_rope(sd[name], cfg["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            sd[name] = torch_sources.hf_to_meta_rope(sd[name], cfg["num_key_value_heads"])
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("dtype", ["f32", "q8_0"])
def test_conversion_without_qk_permutation(ckpt, tmp_path, dtype):
    wrong = _permute_qk_to_meta(ckpt.path, tmp_path / "wrong")
    out = convert(wrong, tmp_path / "wrong.lmp", dtype=dtype)
    assert verify(out).ok  # intact: checksums, structure and values are all fine
    result = verify(out, against=ckpt.path, max_tokens=MAX_TOKENS)
    assert not result.ok
    s = statuses(result)
    assert s["checksums"] == s["structure"] == s["config"] == "pass"
    assert s["tensors"] == "fail" and s["logits"] == "fail"
    bad = sorted(p.tensor for p in result.checks["tensors"].problems)
    assert bad == sorted(f"model.layers.{i}.self_attn.{w}_proj.weight" for i in range(2) for w in "qk")
    # The logits see it as well, even under the loosest (q8_0) thresholds.
    assert result.metrics.kl_mean > DEFAULT_THRESHOLDS["q8_0"].max_kl_mean


def _rewrite_range(src: Path, dst: Path, name: str, edit) -> Path:
    """Copy `src` with the bytes of tensor `name` (or the tokenizer) edited and its checksum redone."""
    data = bytearray(src.read_bytes())
    _, header = checkpoints.read_lmp_raw(src)
    e = header["tokenizer"] if name == "<tokenizer>" else next(t for t in header["tensors"] if t["name"] == name)
    edit(memoryview(data)[e["offset"]:e["offset"] + e["nbytes"]])
    tmp = dst.with_suffix(".tmp")
    tmp.write_bytes(bytes(data))
    crc = f"{checkpoints.crc32c_py(data[e['offset']:e['offset'] + e['nbytes']]):08x}"

    def fix(h):
        target = h["tokenizer"] if name == "<tokenizer>" else next(t for t in h["tensors"] if t["name"] == name)
        target["crc32c"] = crc

    return checkpoints.write_lmp_with_header(tmp, dst, fix)


@pytest.mark.parametrize("dtype,bits", [("f32", b"\x00\x00\xc0\x7f"), ("bf16", b"\x80\xff"), ("f16", b"\x00\x7c")])
def test_non_finite_values(lmp, tmp_path, dtype, bits):
    name = "model.layers.0.self_attn.v_proj.weight"

    def poison(view):
        view[len(bits) * 7:len(bits) * 8] = bits

    bad = _rewrite_range(lmp(dtype), tmp_path / "nan.lmp", name, poison)
    result = verify(bad)
    assert not result.ok
    assert statuses(result)["checksums"] == "pass" and statuses(result)["values"] == "fail"
    assert [p.tensor for p in result.checks["values"].problems] == [name]
    assert "1 of" in result.checks["values"].problems[0].message


def test_q8_0_bad_scale_and_quant(lmp, tmp_path):
    name = "model.layers.1.mlp.up_proj.weight"
    e = entry(lmp("q8_0"), name)
    rows, cols = e["shape"]
    scales_at = (rows * cols + 63) // 64 * 64

    def poison(view):
        view[5] = 0x80  # quant -128
        view[scales_at + 2:scales_at + 4] = b"\x00\x7c"  # scale +inf

    result = verify(_rewrite_range(lmp("q8_0"), tmp_path / "q.lmp", name, poison))
    messages = [p.message for p in result.checks["values"].problems]
    assert len(messages) == 2 and any("scales" in m for m in messages) and any("-128" in m for m in messages)


def test_broken_tokenizer(lmp, tmp_path):
    def garbage(view):
        view[:] = bytes(range(256)) * (len(view) // 256) + bytes(len(view) % 256)

    result = verify(_rewrite_range(lmp("f32"), tmp_path / "tok.lmp", "<tokenizer>", garbage))
    assert statuses(result)["checksums"] == "pass" and statuses(result)["tokenizer"] == "fail"


def test_config_mismatch(lmp, ckpt, tmp_path):
    def edit(h):
        h["config"]["rope_theta"] = 20000.0

    bad = checkpoints.write_lmp_with_header(lmp("f32"), tmp_path / "cfg.lmp", edit)
    result = verify(bad, against=ckpt.path, max_tokens=MAX_TOKENS)
    assert statuses(result)["config"] == "fail" and "rope_theta" in result.checks["config"].problems[0].message
    assert statuses(result)["logits"] == "fail"  # the runtime uses the file's theta

    def edit_dims(h):
        h["config"]["eos_ids"] = [2, 3]

    result = verify(checkpoints.write_lmp_with_header(lmp("f32"), tmp_path / "eos.lmp", edit_dims), against=ckpt.path,
                    max_tokens=MAX_TOKENS)
    assert statuses(result)["config"] == "fail" and statuses(result)["tensors"] == "pass"


# --------------------------------------------------------------------------------------------
# Thresholds, prompts and usage errors


def test_threshold_overrides(lmp, ckpt):
    path = lmp("q8_0")
    strict = verify(path, against=ckpt.path, max_tokens=MAX_TOKENS, thresholds={"max_kl_mean": 0.0})
    assert not strict.ok and strict.thresholds.max_kl_mean == 0.0
    assert [p.message.split(" ")[:2] for p in strict.checks["logits"].problems] == [["mean", "KL"]]
    loose = verify(path, against=ckpt.path, max_tokens=MAX_TOKENS,
                   thresholds={"max_kl_mean": 1.0, "min_top1": 0.0, "max_kl_max": None})
    assert loose.ok and loose.thresholds.max_kl_max == DEFAULT_THRESHOLDS["q8_0"].max_kl_max


def test_prompt_and_text_file(lmp, ckpt, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(" ".join(checkpoints.corpus_lines(200)), encoding="utf-8")
    r = verify(lmp("f32"), against=ckpt.path, text_file=text, max_tokens=100)
    assert r.ok and r.metrics.tokens == 100 and r.prompt_tokens[0] == 1
    r = verify(lmp("f32"), against=ckpt.path, prompt="The model runs fast.")
    assert r.ok and 3 < r.metrics.tokens < 20


@pytest.mark.parametrize("kwargs,match", [
    (dict(file="missing.lmp"), "no such file"),
    (dict(prompt="a", text_file="t.txt"), "not both"),
    (dict(text_file="missing.txt"), "no such file"),
    (dict(max_tokens=1), "at least 2"),
    (dict(thresholds={"max_kl": 1.0}), "unknown threshold"),
    (dict(against="missing-folder"), "no such file"),
    (dict(against="."), "cannot use"),
])
def test_usage_errors(lmp, tmp_path, monkeypatch, kwargs, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("hello")
    kwargs = {"file": lmp("f32"), **kwargs}
    with pytest.raises(UsageError, match=match):
        verify(**kwargs)


def test_empty_prompt_is_a_usage_error(lmp, ckpt):
    with pytest.raises(UsageError, match="at least one token"):
        verify(lmp("f32"), against=ckpt.path, prompt="")


# --------------------------------------------------------------------------------------------
# The command line


def test_cli_json_and_exit_codes(lmp, ckpt, tmp_path, run_lmpack):
    p = run_lmpack("verify", lmp("q8_0"), "--against", ckpt.path, "--json", "-n", MAX_TOKENS)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert set(doc) == {"lmpack_verify", "file", "against", "ok", "dtype", "checks", "metrics", "thresholds"}
    assert doc["ok"] is True and doc["dtype"] == "q8_0" and list(doc["checks"]) == list(CHECKS)
    for c in doc["checks"].values():
        assert set(c) == {"status", "what", "summary", "seconds", "problem_count", "problems", "data"}
    assert set(doc["metrics"]) == {"tokens", "ref_logit_std", "max_abs_error", "max_abs_error_rel_std",
                                   "top1_agreement", "kl_mean", "kl_max", "ppl_reference", "ppl_file", "ppl_rel_diff"}
    assert doc["thresholds"]["max_kl_mean"] == DEFAULT_THRESHOLDS["q8_0"].max_kl_mean

    p = run_lmpack("verify", lmp("q8_0"), "--against", ckpt.path, "--json", "-n", MAX_TOKENS, "--max-kl", "0")
    assert p.returncode == 1 and json.loads(p.stdout)["checks"]["logits"]["status"] == "fail"

    bad = flip(lmp("f32"), tmp_path / "bad.lmp", entry(lmp("f32"), "lm_head.weight")["offset"] + 7)
    p = run_lmpack("verify", bad)
    assert p.returncode == 1
    assert "checksums" in p.stdout and "FAIL" in p.stdout and "lm_head.weight" in p.stdout and "NOT sound" in p.stdout

    p = run_lmpack("verify", lmp("f32"))
    assert p.returncode == 0 and "sound" in p.stdout and "FAIL" not in p.stdout


@pytest.mark.parametrize("args", [
    ["missing.lmp"],
    ["{file}", "--prompt", "a", "--text-file", "{file}"],
    ["{file}", "--max-kl", "-1"],
    ["{file}", "--max-tokens", "x"],
    ["{file}", "--against", "missing-folder"],
    ["{file}", "--threads", "0"],
])
def test_cli_usage_errors_exit_2(lmp, tmp_path, run_lmpack, args):
    p = run_lmpack("verify", *[a.format(file=lmp("f32")) for a in args], cwd=tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
