"""lmpack chat: the KV cache carries across turns, formats, context-full handling, and the
interactive loop through piped stdin and a pseudo-terminal (Ctrl-C stops a reply, not the chat)."""
from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import lmpack
from lmpack.runtime.chat import ChatSession, ContextFull

from conftest import lmpack_pythonpath


def test_turns_reuse_the_cache(tiny_lmp):
    m = lmpack.load(tiny_lmp, threads=1)
    s = ChatSession(m, chat_format=None)
    first = "".join(s.reply("the cat", max_tokens=5, temperature=0))
    second = "".join(s.reply("and the dog", max_tokens=5, temperature=0))
    assert first and second
    # The cache after two turns holds exactly the conversation: feeding the pending token now
    # must give the same logits as a fresh run over the whole history.
    assert s.pos == len(s.history) and len(s._pending) == 1
    incremental = m.forward(s._pending, s.pos)[-1]
    fresh = m.logits(s.history + s._pending)[-1]
    np.testing.assert_allclose(incremental, fresh, rtol=0, atol=1e-4 * float(np.std(fresh)))
    # the second turn fed only its own tokens, not the first turn again
    assert m.last_stats.prompt_tokens < len(s.history)


def test_llama2_format_wraps_turns(tiny_lmp):
    m = lmpack.load(tiny_lmp, threads=1)
    s = ChatSession(m, system="be brief", chat_format="llama2")
    list(s.reply("hello", max_tokens=3, temperature=0))
    text = m.tokenizer.decode(s.history)
    assert text.startswith("[INST] <<SYS>>\nbe brief\n<</SYS>>\n\nhello [/INST]")
    assert s.history[0] == m.config.bos_id
    list(s.reply("again", max_tokens=3, temperature=0))
    assert "[INST] again [/INST]" in m.tokenizer.decode(s.history)


def test_context_full_is_refused_before_starting(tiny_lmp):
    m = lmpack.load(tiny_lmp, threads=1, max_context=16)
    s = ChatSession(m, chat_format=None)
    with pytest.raises(ContextFull):
        list(s.reply("the " * 40, max_tokens=4))
    assert s.pos == 0
    # a reply that fills the window stops cleanly at the end of it
    list(s.reply("the cat", max_tokens=100, temperature=0))
    assert m.last_stats.stopped_by == "context"
    assert s.pos == m.n_ctx  # the cache is full; the last sampled id waits outside it


def test_piped_stdin(run_lmpack, tiny_lmp):
    p = subprocess.run([sys.executable, "-m", "lmpack", "chat", str(tiny_lmp), "-n", "4", "--seed", "1"],
                       input="the cat\n/reset\nthe dog\n", capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": lmpack_pythonpath()})
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    assert p.stdout.count("\n") == 2  # one line per reply
    assert "conversation cleared" in p.stderr
    assert p.stderr.count("tok/s") == 2


def test_piped_context_full_starts_over(tiny_lmp):
    p = subprocess.run([sys.executable, "-m", "lmpack", "chat", str(tiny_lmp), "-n", "8", "--ctx", "24", "--seed", "1"],
                       input="the cat sat\nthe dog ran\nthe bird flew\n", capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": lmpack_pythonpath()})
    assert p.returncode == 0, p.stderr
    assert "context full" in p.stderr
    assert p.stderr.count("tok/s") == 3


def _read_until(fd: int, needle: bytes, timeout: float = 60) -> bytes:
    buf, end = b"", time.monotonic() + timeout
    while needle not in buf:
        left = end - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out waiting for {needle!r}; got {buf[-500:]!r}")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


def test_pseudo_terminal_ctrl_c(tiny_lmp):
    # Deterministic whatever the load: the reply cannot end on its own (100k tokens into a context
    # that holds them, EOS ignored), Ctrl-C is sent only once its first text has arrived, and the
    # chat is stopped while the key goes in, so it cannot race ahead between our read and our write.
    pid, fd = pty.fork()
    if pid == 0:  # child: the chat on the terminal side of the pty
        os.environ["PYTHONPATH"] = lmpack_pythonpath()
        os.execv(sys.executable, [sys.executable, "-m", "lmpack", "chat", str(tiny_lmp), "-n", "100000",
                                  "--ctx", "200000", "--seed", "2", "--ignore-eos", "--threads", "1"])
    try:
        _read_until(fd, b"> ")
        os.write(fd, b"the cat\r")
        _read_until(fd, b"the cat\r\n")  # the terminal's echo of the line
        _read_some(fd)                     # the reply's first streamed text
        os.kill(pid, signal.SIGSTOP)
        os.write(fd, b"\x03")              # Ctrl-C: SIGINT waits for the chat to run again
        os.kill(pid, signal.SIGCONT)
        out = _read_until(fd, b"> ")
        assert b"stopped" in out
        os.write(fd, b"/exit\r")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.close(fd)


def _read_some(fd: int, timeout: float = 60) -> bytes:
    r, _, _ = select.select([fd], [], [], timeout)
    if not r:
        raise AssertionError("the reply did not start")
    return os.read(fd, 4096)


@pytest.mark.parametrize("args", [["--top-p", "2"], ["--temperature", "-1"]])
def test_bad_sampling_options_are_one_line_errors(tiny_lmp, args):
    for command, stdin in (("chat", "the cat\n"), ("run", None)):
        p = subprocess.run([sys.executable, "-m", "lmpack", command, str(tiny_lmp), "-n", "2", *args],
                           input=stdin, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": lmpack_pythonpath()})
        assert p.returncode == 1, (command, p.stderr)
        assert p.stderr.strip().splitlines()[-1].startswith("error:"), p.stderr
        assert "internal error" not in p.stderr and "Traceback" not in p.stderr
        assert p.stdout == ""
