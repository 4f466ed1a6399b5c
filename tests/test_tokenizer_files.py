"""The tokenizer beside the weights: a vocabulary padded beyond the tokenizer's pieces converts, runs
and verifies; a `tokenizer.model` that is not a sentencepiece model is refused when the conversion
starts, with one line that says what the file is, and nothing is written."""
from __future__ import annotations

import json

import pytest

import checkpoints
import lmpack
from lmpack.runtime.sampler import Sampler

PAD = 64  # embedding rows beyond the tokenizer's pieces, as checkpoints round vocab_size up


@pytest.fixture(scope="module")
def padded(hf_checkpoint, sp_model_path, converted):
    pieces = checkpoints.tokenizer_vocab_size(sp_model_path)
    ckpt = hf_checkpoint(vocab=pieces + PAD)
    return ckpt, converted(ckpt), pieces


def _sample(m, seed: int, n: int = 64) -> list[int]:
    """The ids a near-uniform sampler draws (so padding rows come up), as generate would."""
    generated: list[int] = []
    ids = m.tokenizer.encode("the cat", bos=True)
    list(m.continue_from(ids, 0, Sampler(100.0, 1.0, seed), n, stop_at_eos=False, generated=generated))
    return generated


def test_padding_ids_decode_to_nothing(padded):
    _, lmp, pieces = padded
    m = lmpack.load(lmp, threads=1)
    assert m.config.vocab_size == pieces + PAD
    assert m.tokenizer.decode([pieces, pieces + PAD - 1]) == ""
    hello = m.tokenizer.encode("hello", bos=False)
    assert m.tokenizer.decode([*hello, pieces + 3, *hello]) == m.tokenizer.decode(hello + hello)


def test_generation_through_padding_ids(padded):
    _, lmp, pieces = padded
    m = lmpack.load(lmp, threads=1)
    generated = _sample(m, seed=3)
    assert any(g >= pieces for g in generated), "the test needs a run that samples a padding id"
    assert all(0 <= g < pieces + PAD for g in generated)


def test_cli_run_and_verify_padded(padded, run_lmpack):
    ckpt, lmp, pieces = padded
    assert any(g >= pieces for g in _sample(lmpack.load(lmp, threads=1), seed=3))
    p = run_lmpack("run", lmp, "-p", "the cat", "-n", "64", "--temperature", "100", "--top-p", "1",
                   "--seed", "3", "--ignore-eos", "--threads", "1")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("the cat") and len(p.stdout.strip()) > len("the cat")
    assert "error" not in p.stderr
    v = run_lmpack("verify", lmp, "--json")
    assert v.returncode == 0, v.stdout + v.stderr
    tok = json.loads(v.stdout)["checks"]["tokenizer"]
    assert tok["status"] == "pass" and f"{PAD} padding rows" in tok["summary"]


TIKTOKEN = b"IQ== 0\nIg== 1\nIw== 2\nJA== 3\n"
WRONG_TOKENIZERS = {
    "tiktoken ranks (Llama 3)": (TIKTOKEN, "tiktoken"),
    "tekken JSON renamed": (json.dumps({"config": {"pattern": "x"}, "vocab": []}).encode(), "JSON"),
    "empty": (b"", "empty"),
    "garbage": (bytes(range(256)) * 4, "unrecognised"),
}


@pytest.mark.parametrize("which", list(WRONG_TOKENIZERS))
def test_wrong_tokenizer_model_is_refused_at_convert(which, tiny_hf, tmp_path, run_lmpack):
    data, says = WRONG_TOKENIZERS[which]
    src = checkpoints.copy_checkpoint(tiny_hf.path, tmp_path / "src")
    (src / "tokenizer.model").write_bytes(data)
    out = tmp_path / "out.lmp"
    p = run_lmpack("convert", src, "-o", out)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr
    assert "not a sentencepiece model" in lines[0] and says in lines[0], lines[0]
    assert not out.exists() and [f.name for f in tmp_path.iterdir()] == ["src"]
