"""Every reader under mutated input, with a fixed small budget: only LmpackError may come out.

The targets, seeds and mutations are those of scripts/fuzz_readers.py (the by-hand run of 100,000+
cases with a watchdog and memory tracking); here hypothesis picks the mutation seeds, derandomized
so CI runs the same cases every time. Targets: `.lmp` (bytes and header JSON, then the C core),
safetensors (bytes and header JSON), a sharded folder's index, torch zip archives (bytes) and
their pickles, Meta params.json, config.json, tokenizer_config.json / tokenizer.model, GGUF files and
llama2.c checkpoints.
"""
from __future__ import annotations

import random
import sys
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import fuzz_readers  # noqa: E402

from lmpack.errors import LmpackError  # noqa: E402

EXAMPLES = 25  # per target: ~200 cases, a few seconds


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    return fuzz_readers.build_seeds(tmp_path_factory.mktemp("fuzz-seeds"))


@pytest.mark.parametrize("target", fuzz_readers.TARGETS)
def test_reader_refuses_or_accepts_but_never_fails_otherwise(target, seeds, tmp_path_factory):
    if target == "gguf" and not (seeds / "model-q8_0.gguf").is_file():
        pytest.skip("gguf-py is not installed")
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(case=st.integers(min_value=0, max_value=2**63))
    def check(case):
        work = tmp_path_factory.mktemp(f"fuzz-{target}")
        path = fuzz_readers.make_case(target, seeds, work, random.Random(case))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                fuzz_readers.run_reader(target.split("-")[0], path, work)
            except LmpackError:
                pass

    check()


def test_seeds_are_accepted(seeds, tmp_path):
    """Unmutated, every seed goes through its reader: the harness damages valid inputs."""
    import shutil

    cases = {"lmp": seeds / "model.lmp", "safetensors": seeds / "hf" / "model.safetensors",
             "torchzip": seeds / "bin" / "pytorch_model.bin", "index": seeds / "sharded", "meta": seeds / "meta",
             "config": seeds / "hf", "llama2c": seeds / "l2c" / "model.bin"}
    if (seeds / "model-q8_0.gguf").is_file():
        cases["gguf"] = seeds / "model-q8_0.gguf"
        cases.update({f"gguf-{m}": seeds / f"model-{m}.gguf" for m in fuzz_readers.GGUF_FAMILY_SEEDS})
    for target, path in cases.items():
        work = tmp_path / target
        work.mkdir()
        if path.is_dir():
            shutil.copytree(path, work / "ckpt")
            path = work / "ckpt"
        fuzz_readers.run_reader(target.split("-")[0], path, work)
