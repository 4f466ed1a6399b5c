"""Text the command line prints is never read as rich markup: every command's `--help` (whose texts
quote `[INST] ... [/INST]`) works with the typer and rich that pip resolves today, and paths,
tensor names and messages that look like markup tags come out as written."""
from __future__ import annotations

import click
import pytest
import typer


def _commands(group: click.Command, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path of the CLI, the top level included, found from the app itself."""
    paths = [prefix]
    for name, cmd in getattr(group, "commands", {}).items():
        paths += _commands(cmd, (*prefix, name))
    return paths


def _all_commands() -> list[tuple[str, ...]]:
    from lmpack.cli import app

    return _commands(typer.main.get_command(app))


def test_every_command_is_found():
    found = {c[0] for c in _all_commands() if c}
    assert {"convert", "quantize", "run", "chat", "inspect", "verify", "demo"} <= found


@pytest.fixture(scope="module")
def helps(run_lmpack_many):
    return run_lmpack_many({" ".join(c) or "main": [*c, "--help"] for c in _all_commands()})


@pytest.mark.parametrize("cmd", _all_commands(), ids=lambda c: " ".join(c) or "main")
def test_help_works(cmd, helps):
    proc = helps[" ".join(cmd) or "main"]
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr
    assert "Usage" in proc.stdout


def test_chat_help_quotes_the_llama2_tags(helps):
    assert "[INST] ... [/INST]" in helps["chat"].stdout


@pytest.mark.parametrize("name", ["x[/INST]y", "[bold]z[/]", "w[link=https:x.y]v"])
def test_error_messages_print_paths_as_written(run_lmpack, tmp_path, name):
    missing = tmp_path / name
    proc = run_lmpack("inspect", missing)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error:") and name in line, proc.stderr


def test_verify_report_prints_messages_as_written():
    import io

    from rich.console import Console

    from lmpack.verify import Check, VerifyResult, render
    from lmpack.verify.report import CHECKS

    checks = {n: Check(n) for n in CHECKS}
    for c in checks.values():
        c.status = "pass"
    checks["tensors"].fail("bytes differ [/INST] at [bold]3[/]", "model.layers.0.[/x].weight")
    out = io.StringIO()
    render(VerifyResult(file="a[/b].lmp", checks=checks), Console(file=out, width=300, no_color=True))
    text = out.getvalue()
    assert "bytes differ [/INST] at [bold]3[/]" in text
    assert "model.layers.0.[/x].weight" in text
    assert "a[/b].lmp: NOT sound" in text
