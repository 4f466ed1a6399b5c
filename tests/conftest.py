"""Shared pytest fixtures: test tokenizers, cached random-weight HF checkpoints and their `.lmp`
conversions, and a runner for the `lmpack` CLI in a subprocess.

Everything expensive is session-scoped and cached by its arguments, so the many test modules that
need "a tiny f32 Llama folder and its converted file" build it once.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]

# Property tests must not depend on the machine's speed or load: no per-example deadline, and no
# health check that fails a run because generating examples was slow on a busy machine.
settings.register_profile("lmpack", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lmpack")
# Run against the source tree when lmpack is not installed (an in-place build); an installed
# lmpack (pip install .) is left alone so the tests exercise what was installed.
if importlib.util.find_spec("lmpack") is None:
    sys.path.insert(0, str(ROOT))

import checkpoints  # noqa: E402  (tests/ is on sys.path: pytest's rootdir-relative conftest import)


def lmpack_pythonpath() -> str:
    """The directory that holds the `lmpack` package this test session imports (for subprocesses)."""
    spec = importlib.util.find_spec("lmpack")
    assert spec is not None and spec.origin is not None
    return str(Path(spec.origin).resolve().parents[1])


@pytest.fixture(scope="session")
def sp_model_path(tmp_path_factory) -> Path:
    """A BPE sentencepiece model (vocab 400, byte fallback, Llama 2 normalizer) trained for this session."""
    return checkpoints.train_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tokenizer.model")


@pytest.fixture(scope="session")
def llama2_tokenizer_path() -> Path:
    """The real Llama 2 tokenizer from ../shared/fixtures; tests using it skip when it is absent."""
    if not checkpoints.LLAMA2_TOKENIZER.is_file():
        pytest.skip(f"{checkpoints.LLAMA2_TOKENIZER} not present")
    return checkpoints.LLAMA2_TOKENIZER


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory, sp_model_path):
    """make(**kwargs) -> checkpoints.HFCheckpoint, cached per kwargs for the session.

    kwargs are those of `checkpoints.make_hf_checkpoint` except tmp_path; `tokenizer` defaults to
    the session's trained tokenizer. Do not mutate the returned folder; copy it first.
    """
    cache: dict = {}

    def make(**kwargs):
        kwargs.setdefault("tokenizer", sp_model_path)
        key = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))
        if key not in cache:
            folder = tmp_path_factory.mktemp("hf")
            cache[key] = checkpoints.make_hf_checkpoint(folder, **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def family_checkpoint(tmp_path_factory, sp_model_path):
    """make(model_type, **kwargs) -> checkpoints.HFCheckpoint of another family, cached per arguments.

    kwargs are those of `checkpoints.make_family_checkpoint`; do not mutate the returned folder."""
    cache: dict = {}

    def make(model_type, **kwargs):
        kwargs.setdefault("tokenizer", sp_model_path)
        key = (model_type, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key not in cache:
            folder = tmp_path_factory.mktemp(model_type)
            cache[key] = checkpoints.make_family_checkpoint(folder, model_type, **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def converted(tmp_path_factory):
    """convert(checkpoint, dtype="auto") -> Path of the `.lmp` file, converted once per (folder, dtype)."""
    cache: dict = {}

    def convert(ckpt, dtype: str = "auto") -> Path:
        from lmpack.convert import convert as lmpack_convert

        src = ckpt.path if hasattr(ckpt, "path") else Path(ckpt)
        key = (str(src), dtype)
        if key not in cache:
            out = tmp_path_factory.mktemp("lmp") / f"model-{dtype}.lmp"
            result = lmpack_convert(src, out, dtype=dtype)
            assert Path(result) == out and out.is_file()
            cache[key] = out
        return cache[key]

    return convert


@pytest.fixture(scope="session")
def tiny_hf(hf_checkpoint):
    """The default tiny checkpoint: f32, MHA, untied, one safetensors file, trained tokenizer."""
    return hf_checkpoint()


@pytest.fixture(scope="session")
def tiny_lmp(tiny_hf, converted) -> Path:
    """`tiny_hf` converted with --dtype auto (an f32 file)."""
    return converted(tiny_hf)


@pytest.fixture(scope="session")
def run_lmpack():
    """run(*args, timeout=120) -> CompletedProcess of `python -m lmpack *args` (text mode, never raises)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (lmpack_pythonpath(), env.get("PYTHONPATH")) if p)
    # Wide, plain output so rich tables and help text are not wrapped or coloured.
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", "PYTHONIOENCODING": "utf-8"})

    def run(*args, timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "lmpack", *map(str, args)],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
            timeout=timeout,
            cwd=cwd,
        )

    return run


# One child interpreter runs many CLI invocations (the import cost of a subprocess is most of its
# time): each result is printed as it completes, so a crash still names the case that caused it.
_BATCH_DRIVER = r"""
import contextlib, io, json, sys, traceback
from lmpack.cli import app
cases = json.loads(sys.stdin.read())
for key, args in cases:
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            app(args=args, prog_name="lmpack")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 99
    sys.__stdout__.write(json.dumps({"key": key, "returncode": code, "stdout": out.getvalue(),
                                     "stderr": err.getvalue()}) + "\n")
    sys.__stdout__.flush()
"""


@pytest.fixture(scope="session")
def run_lmpack_many():
    """run({key: [args...]}) -> {key: CompletedProcess-like}: many CLI calls in one child interpreter.

    A case whose call killed the child (a crash in C) gets returncode = the child's negative
    signal number; cases after it are re-run in a fresh child."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (lmpack_pythonpath(), env.get("PYTHONPATH")) if p)
    env.update({"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", "PYTHONIOENCODING": "utf-8"})

    def run(cases: dict, timeout: float = 300) -> dict:
        import json

        pending = [(key, [str(a) for a in args]) for key, args in cases.items()]
        results = {}
        while pending:
            proc = subprocess.run([sys.executable, "-c", _BATCH_DRIVER], input=json.dumps(pending),
                                  capture_output=True, text=True, encoding="utf-8", errors="replace",
                                  env=env, timeout=timeout)
            done = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"key"')]
            for r in done:
                results[r["key"]] = subprocess.CompletedProcess(cases[r["key"]], r["returncode"], r["stdout"], r["stderr"])
            pending = pending[len(done):]
            if pending:  # the child died on pending[0]
                key = pending.pop(0)[0]
                results[key] = subprocess.CompletedProcess(cases[key], proc.returncode if proc.returncode else -999,
                                                           "", proc.stderr)
        return results

    return run
