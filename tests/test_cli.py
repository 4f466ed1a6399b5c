"""The `lmpack` command line end to end on a tiny model: convert (with its progress report),
inspect (config, tokenizer and tensor table), run (text on stdout, tok/s on stderr, greedy and
seeded output equal to the Python API's), and the help text of every command.
"""
from __future__ import annotations

import os
import re

import numpy as np
import pytest


@pytest.fixture(scope="module")
def cli_bf16(tiny_hf, tmp_path_factory, run_lmpack):
    """`lmpack convert` of the tiny f32 checkpoint to a bf16 file, and the finished process."""
    out = tmp_path_factory.mktemp("cli") / "tiny-bf16.lmp"
    proc = run_lmpack("convert", tiny_hf.path, "-o", out, "--dtype", "bf16")
    return out, proc


def test_convert(cli_bf16, tiny_hf):
    from lmpack.formats.lmp import LmpReader

    out, proc = cli_bf16
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "error" not in proc.stderr.lower()
    assert re.search(r"[0-9.]+ ?[kMG]?B/s", proc.stderr), f"no throughput in the progress report:\n{proc.stderr}"
    assert proc.stdout.strip() == ""
    with LmpReader(out) as r:
        assert {t.dtype for t in r.tensors if len(t.shape) == 2} == {"bf16"}
        assert r.tokenizer_bytes == (tiny_hf.path / "tokenizer.model").read_bytes()


def test_inspect(cli_bf16, run_lmpack):
    from lmpack.formats.lmp import LmpReader

    out, _ = cli_bf16
    proc = run_lmpack("inspect", out)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    with LmpReader(out) as r:
        cfg = r.config
        for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "ffn_dim", "vocab_size"):
            line = next((ln for ln in text.splitlines() if re.search(rf"\b{key}\b", ln)), None)
            assert line is not None and re.search(rf"\b{getattr(cfg, key)}\b", line), f"{key} missing: {line}"
        assert "sentencepiece" in text
        assert str(len(r.tokenizer_bytes)) in text.replace(",", "")
        for t in r.tensors:
            line = next((ln for ln in text.splitlines() if re.search(rf"\b{re.escape(t.name)}\b", ln)), None)
            assert line is not None, f"tensor {t.name} not listed"
            assert t.dtype in line, line
            assert all(re.search(rf"(?<!\d){d}(?!\d)", line) for d in t.shape), line
            assert str(t.nbytes) in line.replace(",", "").replace("_", ""), line


def test_run_greedy_matches_python_api(cli_bf16, run_lmpack):
    import lmpack

    out, _ = cli_bf16
    prompt = "The small model"
    expected = "".join(lmpack.load(out).generate(prompt, max_tokens=12, temperature=0.0))
    assert expected, "the model generated nothing (the test would not check run's output)"
    proc = run_lmpack("run", out, "-p", prompt, "-n", "12", "--temperature", "0", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout
    assert proc.stdout.rstrip("\n").endswith(expected)
    stderr = proc.stderr.lower()
    assert "prompt" in stderr and "generation" in stderr, proc.stderr
    assert len(re.findall(r"[0-9.]+ tok/s", stderr)) >= 2, proc.stderr
    assert "traceback" not in stderr


def test_run_seeded_sampling_matches_python_api(cli_bf16, run_lmpack):
    import lmpack

    out, _ = cli_bf16
    prompt = "The model"
    args = dict(max_tokens=10, temperature=0.9, top_p=0.9, seed=5)
    expected = "".join(lmpack.load(out).generate(prompt, **args))
    proc = run_lmpack("run", out, "-p", prompt, "-n", "10", "--temperature", "0.9", "--top-p", "0.9",
                      "--seed", "5", "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip("\n").endswith(expected)


def test_run_zero_tokens(cli_bf16, run_lmpack):
    out, _ = cli_bf16
    proc = run_lmpack("run", out, "-p", "Hello", "-n", "0")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in ("", "Hello")  # the prompt may be echoed; nothing is generated


HELP = {
    (): ["convert", "run", "inspect"],
    ("convert",): ["--output", "-o", "--dtype", "auto", "f32", "f16", "bf16", "SRC"],
    ("run",): ["--prompt", "-p", "-n", "--temperature", "--top-p", "--seed", "--threads", "FILE"],
    ("inspect",): ["FILE"],
}


@pytest.fixture(scope="module")
def helps(run_lmpack_many):
    return run_lmpack_many({" ".join(cmd) or "main": [*cmd, "--help"] for cmd in HELP})


@pytest.mark.parametrize("cmd", list(HELP), ids=lambda c: " ".join(c) or "main")
def test_help_mentions_options(cmd, helps):
    proc = helps[" ".join(cmd) or "main"]
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for word in HELP[cmd]:
        assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text, re.IGNORECASE), f"'{word}' not in help:\n{text}"


def test_console_script_entry_point():
    """pyproject's `lmpack` script must resolve to the command line's entry (lmpack/__main__.py,
    which guards the CLI's import against an early Ctrl-C, then runs the Typer app)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from pathlib import Path

    import typer

    from conftest import ROOT

    pyproject = ROOT / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not running from a source tree")
    target = tomllib.loads(pyproject.read_text())["project"]["scripts"]["lmpack"]
    module, attr = target.split(":")
    obj = getattr(__import__(module, fromlist=[attr]), attr)
    assert isinstance(obj, typer.Typer) or callable(obj)
    assert Path(__import__(module, fromlist=[attr]).__file__).name == "__main__.py"


def test_cli_logits_agree_with_bf16_reference(cli_bf16, tiny_hf):
    """The CLI-converted bf16 file runs the same numbers as a bf16-rounded transformers model."""
    import torch

    import checkpoints
    import lmpack

    out, _ = cli_bf16
    ids = [1] + list(range(3, 40))
    ref_model = checkpoints.rounded_reference(tiny_hf.model, "bf16")
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids]), use_cache=False).logits[0].numpy()
    got = lmpack.load(out).logits(ids)
    assert np.abs(got - ref).max() < 1e-3 * ref.std()


@pytest.mark.parametrize("command, quiet", [("inspect", True), ("verify", False)])
def test_blas_threads_are_quieted_only_where_blas_is_never_called(cli_bf16, command, quiet, monkeypatch):
    """`verify --against` runs a numpy reference forward pass, which wants BLAS threads; the
    other commands never call BLAS, and numpy's idle BLAS threads would spin beside theirs."""
    from typer.testing import CliRunner

    from lmpack.cli import app

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "")  # records the variable, so it is restored afterwards
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    result = CliRunner().invoke(app, [command, str(cli_bf16[0])])
    assert result.exit_code == 0, result.output
    assert (os.environ.get("OPENBLAS_NUM_THREADS") == "1") == quiet
