"""The `lmpack` command line: parse, call the library, report. No logic of its own.

Every command turns an LmpackError (bad input) into one line on stderr starting with `error:`
and exit status 1, without a traceback; long work shows a rich progress bar on stderr; generated
text goes to stdout and timings to stderr so the text can be piped.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from lmpack.errors import LmpackError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    # Help texts quote chat formats ([INST] ... [/INST]) and paths: print them as written, never as markup.
    rich_markup_mode=None,
    help="Convert LLM checkpoints into one memory-mappable .lmp file, and run it on the CPU.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True)


def _fail(message: str, code: int = 1) -> "typer.Exit":
    say_error(message)
    return typer.Exit(code)


def say_error(message: str) -> None:
    """`error: message` on stderr; the message (paths, tensor names, model text) is never markup."""
    err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt is for SIGINT, so that whatever
    is being written is cleaned up on the way out (and `except KeyboardInterrupt` in the chat loop,
    which means "stop this reply", does not swallow it)."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _catch_signals():
    """While a command runs, Ctrl-C and SIGTERM unwind it (temp files removed) instead of ending
    the process where it stands (see lmpack/__main__.py for the time before); the handlers found
    are put back afterwards, for applications that run commands in-process."""
    import signal

    try:
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread (an embedding application): leave its handlers alone
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)


def handles_errors(fn):
    """Run a command, turning bad input into a one-line error and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _show_warnings()
        try:
            with _catch_signals():
                return fn(*args, **kwargs)
        except LmpackError as e:
            raise _fail(str(e)) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except Terminated:
            err.print("terminated")
            raise typer.Exit(143) from None
        except OSError as e:
            raise _fail(f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}") from None
        except MemoryError:
            raise _fail("out of memory") from None
        except Exception as e:  # a bug, not bad input: still one line, traceback on request
            if os.environ.get("LMPACK_DEBUG"):
                raise
            raise _fail(f"internal error: {type(e).__name__}: {e} (set LMPACK_DEBUG=1 for a traceback)", 2) from None

    return wrapper


def _utf8(text: str, what: str) -> str:
    """`text` if it encodes as UTF-8; bytes that are not UTF-8 reach Python as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise LmpackError(f"{what} is not valid UTF-8 text (at character {e.start})") from None
    return text


def _show_warnings() -> None:
    """lmpack's warnings (LmpackWarning) as one `warning:` line each on stderr, not markup."""
    import warnings

    from lmpack.errors import LmpackWarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, LmpackWarning):
            err.print(Text.assemble(("warning:", "yellow"), " ", str(message)), highlight=False, soft_wrap=True)
        else:
            warnings._showwarnmsg_impl(warnings.WarningMessage(message, category, filename, lineno, file, line))

    warnings.showwarning = show


DTYPE_HELP = ("Stored type of the weight matrices: auto keeps the source's (bf16 stays bf16), f32, f16, bf16, "
              "or q8_0 (ggml-exact 8-bit blocks). Norm weights are always f32.")
ACT_HELP = ("What matmuls with bf16 weights compute on: f32 (default) keeps activations exact; bf16 rounds "
            "them to bf16 for the CPU's bf16 dot product (AVX512-BF16): faster prompts, logits off by a few "
            "percent of their spread (README, 'bf16 activations'). Other weight types and CPUs without it "
            "stay exact.")
TEMP_HELP = "Sampling temperature; 0 is greedy (default: the model's generation_config, else 0.8)."
TOP_P_HELP = ("Nucleus sampling: keep the smallest set of tokens with this much probability "
              "(default: the model's generation_config, else 0.95).")
TOP_K_HELP = "Keep only the k most likely tokens; 0 keeps all (default: the model's generation_config, else 0)."
REPEAT_HELP = ("Repetition penalty as transformers applies it; 1 is none (default: the model's "
               "generation_config, else 1).")
KEEP_HELP = ("With q8_0: glob of tensor names to keep in source precision, e.g. 'lm_head.weight' or "
             "'model.embed_tokens.weight'; repeatable.")


def without_blas_threads(fn):
    """For commands that never call BLAS (all but `verify --against`, whose numpy reference does):
    numpy's BLAS threads, started when numpy loads, spin for a while on the same cores as the
    converter's and the runtime's own threads. numpy loads lazily, inside the command, so this
    takes effect; a value the user set is kept."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        return fn(*args, **kwargs)

    return wrapper


@app.command()
@handles_errors
@without_blas_threads
def convert(
    src: Path = typer.Argument(..., help="Checkpoint folder: HF (config.json + *.safetensors or pytorch_model*.bin "
                                         "+ tokenizer.json or tokenizer.model) or Meta (params.json + consolidated.NN.pth + "
                                         "tokenizer.model, sentencepiece or Llama 3 tiktoken); or a GGUF file, or a "
                                         "llama2.c .bin file."),
    output: Path = typer.Option(..., "-o", "--output", help="The .lmp file to write (written atomically); "
                                "a name ending in .gguf writes a GGUF file for llama.cpp instead."),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    keep: Optional[List[str]] = typer.Option(None, "--keep", help=KEEP_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="Threads for quantization (default: all cores)."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Source kind instead of detecting it: hf-safetensors, "
                                       "hf-bin or meta (for folders that hold more than one), gguf or llama2c."),
    rope_scaling_factor: Optional[float] = typer.Option(None, "--rope-scaling-factor", help="Meta Llama 3.x folders: "
                                                        "override the rope scaling factor (Llama 3.2 1B/3B need 32)."),
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="llama2.c .bin files: the tokenizer "
                                             "(a sentencepiece tokenizer.model or llama2.c's tokenizer.bin; default: "
                                             "tokenizer.model beside the file)."),
):
    """Convert a checkpoint into one .lmp file (or a GGUF file for -o *.gguf), streaming tensor by tensor
    (memory ~ one tensor). Sources: HF and Meta folders, GGUF files, llama2.c .bin files."""
    from lmpack.convert.pipeline import convert as run_convert

    out = run_convert(src, output, dtype=dtype, keep=tuple(keep or ()), progress=True, threads=threads,
                      kind=kind, rope_scaling_factor=rope_scaling_factor, tokenizer=tokenizer,
                      log=lambda line: err.print(Text(line), highlight=False, soft_wrap=True))
    err.print(Text(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)"), highlight=False)


def _export_help() -> str:
    from lmpack.formats.arch import FAMILIES

    return ("Write an .lmp file as a GGUF file for llama.cpp, Ollama or LM Studio (streamed, atomic).\n\n"
            f"Families: {', '.join(FAMILIES)} (each as the architecture llama.cpp runs it; Mistral and "
            "Mixtral are its llama). Features llama.cpp would run differently (a window it ignores, another "
            "sliding-layer pattern) are refused.")


@app.command(help=_export_help())
@handles_errors
@without_blas_threads
def export(
    src: Path = typer.Argument(..., help="The .lmp file to export."),
    output: Path = typer.Option(..., "-o", "--output", help="The GGUF file to write (written atomically)."),
    dtype: str = typer.Option("auto", "--dtype", help="Stored type of the weight matrices: auto keeps the file's "
                              "(q8_0 blocks are re-laid, never re-quantized), f32, f16, bf16 or q8_0."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="Threads for quantization (default: all cores)."),
):
    """Write an .lmp file as a GGUF file for llama.cpp, Ollama or LM Studio (streamed, atomic)."""
    from lmpack.convert.gguf_export import export as run_export
    from lmpack.convert.lmp_source import LmpSource

    if output.suffix.lower() != ".gguf":
        raise LmpackError(f"{output}: the output of export is a GGUF file; name it *.gguf")
    if Path(src).resolve() == Path(output).resolve():
        raise LmpackError("the output must be a different file than the input")
    source = LmpSource(src, allow_quantized=True)
    try:
        out = run_export(source, output, dtype=dtype, progress=True, threads=threads, name=Path(src).stem)
    finally:
        source.close()
    err.print(Text(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)"), highlight=False)


@app.command()
@handles_errors
@without_blas_threads
def quantize(
    src: Path = typer.Argument(..., help="An .lmp file with f32, f16 or bf16 weights."),
    output: Path = typer.Option(..., "-o", "--output", help="The .lmp file to write (written atomically)."),
    type_: str = typer.Option("q8_0", "--type", help="Target type of the weight matrices (q8_0)."),
    keep: Optional[List[str]] = typer.Option(None, "--keep", help=KEEP_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="Quantizer threads (default: all cores)."),
):
    """Re-encode an existing .lmp file's weight matrices as Q8_0 (streamed, atomic)."""
    from lmpack.convert.lmp_source import LmpSource
    from lmpack.convert.pipeline import run

    if type_ != "q8_0":
        raise LmpackError(f"unknown quantization type '{type_}' (supported: q8_0)")
    if Path(src).resolve() == Path(output).resolve():
        raise LmpackError("the output must be a different file than the input")
    source = LmpSource(src)
    try:
        out = run(source, output, dtype=type_, keep=tuple(keep or ()), progress=True, threads=threads,
                  description="quantizing")
    finally:
        source.close()
    err.print(Text(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)"), highlight=False)


@app.command()
@handles_errors
@without_blas_threads
def run(
    file: Path = typer.Argument(..., help="The .lmp model file."),
    prompt: str = typer.Option("", "-p", "--prompt", help="Text to continue (BOS is prepended if the model's tokenizer adds one)."),
    n: int = typer.Option(256, "-n", "--max-tokens", help="Maximum number of tokens to generate."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "--temp", help=TEMP_HELP),
    top_p: Optional[float] = typer.Option(None, "--top-p", help=TOP_P_HELP),
    top_k: Optional[int] = typer.Option(None, "--top-k", help=TOP_K_HELP),
    repetition_penalty: Optional[float] = typer.Option(None, "--repeat-penalty", help=REPEAT_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for reproducible sampling."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="CPU threads (default: all cores)."),
    ctx: Optional[int] = typer.Option(None, "--ctx", help="KV cache length in tokens (default: the model's, at most 4096)."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Keep generating past end-of-sequence tokens."),
    activations: str = typer.Option("f32", "--activations", help=ACT_HELP),
):
    """Generate text from a prompt; prints the text as it is generated, then tokens/s on stderr."""
    from lmpack.runtime.model import load

    if n < 0:
        raise LmpackError("--max-tokens must be >= 0")
    _utf8(prompt, "the prompt")
    m = load(file, threads=threads, max_context=ctx, activations=activations)
    pieces = m.generate(prompt, max_tokens=n, temperature=temperature, top_p=top_p, seed=seed,
                        stop_at_eos=not ignore_eos, top_k=top_k, repetition_penalty=repetition_penalty)
    # (generate checked the sampling options before any output; the prompt runs before it too, so
    # a file that cannot compute, NaN weights say, fails with its error line alone)
    first = next(pieces, "")
    _say_sampling(m, temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty)
    sys.stdout.write(prompt + first)
    sys.stdout.flush()
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    s = m.last_stats
    err.print(f"prompt: {s.prompt_tokens} tokens, {s.prompt_tps:.1f} tok/s | "
              f"generation: {s.generated_tokens} tokens, {s.generation_tps:.1f} tok/s "
              f"({m.threads} threads, stopped by {s.stopped_by})", highlight=False, soft_wrap=True)


@app.command()
@handles_errors
@without_blas_threads
def demo(
    src: Optional[Path] = typer.Option(None, "--src", help="Checkpoint folder to use instead of the model shipped with lmpack."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Keep the .lmp files here (default: a temporary folder, removed at the end)."),
    prompt: str = typer.Option("The for statement", "-p", "--prompt", help="Text to continue."),
    n: int = typer.Option(80, "-n", "--max-tokens", help="Tokens to generate."),
    seed: int = typer.Option(1, "--seed", help="Sampling seed."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="CPU threads (default: all cores)."),
):
    """The whole pipeline on the model shipped with lmpack, no download: convert, quantize to Q8_0,
    verify against the source, and generate text with tokens/s."""
    import tempfile

    from lmpack import default_model
    from lmpack.convert.lmp_source import LmpSource
    from lmpack.convert.pipeline import convert as run_convert, run as run_pipeline
    from lmpack.runtime.model import load
    from lmpack.verify import render, verify as run_verify

    source = src or default_model.path()
    with contextlib.ExitStack() as stack:
        folder = out_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lmpack-demo-")))
        folder.mkdir(parents=True, exist_ok=True)
        full, q8 = folder / "model.lmp", folder / "model-q8_0.lmp"

        err.rule("[bold]1. convert")
        err.print(Text(f"{source} -> {full}"), highlight=False)
        run_convert(source, full, progress=True, threads=threads)
        err.print(f"{full.stat().st_size / 1e6:.2f} MB")

        err.rule("[bold]2. quantize to Q8_0")
        lmp = LmpSource(full)
        try:
            run_pipeline(lmp, q8, dtype="q8_0", progress=True, threads=threads, description="quantizing")
        finally:
            lmp.close()
        err.print(f"{q8.stat().st_size / 1e6:.2f} MB")

        err.rule("[bold]3. verify the Q8_0 file against the source")
        result = run_verify(q8, against=source, threads=threads, progress=True)
        render(result, Console(stderr=True))
        if not result.ok:
            raise LmpackError("verification failed (see the report above)")

        err.rule("[bold]4. generate")
        m = load(q8, threads=threads)
        sys.stdout.write(prompt)
        for piece in m.generate(prompt, max_tokens=n, temperature=0.8, top_p=0.95, seed=seed):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        s = m.last_stats
        err.print(f"prompt: {s.prompt_tokens} tokens, {s.prompt_tps:.1f} tok/s | generation: {s.generated_tokens} "
                  f"tokens, {s.generation_tps:.1f} tok/s ({m.threads} threads, {_core_path()} kernels)",
                  highlight=False, soft_wrap=True)
        m.close()
        if out_dir:
            err.print(Text(f"kept {full} and {q8}"), highlight=False)


def _mb(size) -> str:
    return f"{size / 1e6:.1f} MB" if isinstance(size, (int, float)) and not isinstance(size, bool) else "? MB"


def _say_sampling(m, **given) -> None:
    """One stderr line: the sampling a run uses and which options came from the model."""
    from lmpack.runtime.sampler import describe, sampling_options

    err.print(Text(describe(*sampling_options(m.generation_defaults, **given)), style="dim"), highlight=False,
              soft_wrap=True)


def _core_path() -> str:
    from lmpack import _core

    return _core.kernel_path()


@app.command()
@handles_errors
@without_blas_threads
def inspect(file: Path = typer.Argument(..., help="The .lmp file to describe.")):
    """Show a file's config, tokenizer, provenance and tensor directory."""
    from lmpack.formats.lmp import LmpReader

    out = Console()
    with LmpReader(file) as r:
        cfg = r.config.to_dict()
        t = Table(title=Text(f"{file} — lmpack format v{r.header.get('version')}, {r.file_size / 1e6:.2f} MB"),
                  show_header=False)
        t.add_column("key", style="bold")
        t.add_column("value")
        for k, v in cfg.items():
            t.add_row(Text(k), Text(str(v)))
        tok = r.tokenizer_entry
        t.add_row("tokenizer", Text(f"{r.tokenizer_kind}, {tok.nbytes} bytes"))
        fields = r.tokenizer_fields
        if fields.get("special_tokens"):
            t.add_row("special_tokens", Text(", ".join(f"{k}={v!r}" for k, v in fields["special_tokens"].items())))
        if "add_bos" in fields:
            t.add_row("add_bos", str(fields["add_bos"]))
        template = fields.get("chat_template")
        t.add_row("chat_template", f"{len(template)} characters" if template else "none")
        if fields.get("chat_templates"):
            t.add_row("chat_templates", Text(", ".join(fields["chat_templates"])))
        if r.generation:
            t.add_row("generation", Text(", ".join(f"{k}={v}" for k, v in r.generation.items())))
        prov = r.header.get("provenance", {})
        for k in ("source_kind", "dtype", "lmpack_version", "created"):
            if k in prov:
                t.add_row(k, Text(str(prov[k])))
        files = prov.get("source_files")
        files = [f for f in files if isinstance(f, dict)] if isinstance(files, list) else []
        if files:
            t.add_row("source_files", Text(", ".join(f"{f.get('name')} ({_mb(f.get('size'))})" for f in files[:8]) +
                      (f" and {len(files) - 8} more" if len(files) > 8 else "")))
        out.print(t)
        tt = Table(title=f"{len(r.tensors)} tensors")
        for col in ("name", "dtype", "shape", "bytes", "offset", "crc32c"):
            tt.add_column(col, justify="right" if col in ("bytes", "offset") else "left")
        for e in r.tensors:
            tt.add_row(Text(e.name), e.dtype, "x".join(map(str, e.shape)), f"{e.nbytes:,}", f"{e.offset:,}", e.crc32c)
        out.print(tt)


@app.command()
@handles_errors
@without_blas_threads
def chat(
    file: Path = typer.Argument(..., help="The .lmp model file."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt (for chat templates that take one, "
                                         "and the Llama 2 format)."),
    plain: bool = typer.Option(False, "--plain", help="Ignore the model's chat format: continue the text you type."),
    n: int = typer.Option(256, "-n", "--max-tokens", help="Maximum tokens per reply."),
    temperature: Optional[float] = typer.Option(None, "--temperature", "--temp", help=TEMP_HELP),
    top_p: Optional[float] = typer.Option(None, "--top-p", help=TOP_P_HELP),
    top_k: Optional[int] = typer.Option(None, "--top-k", help=TOP_K_HELP),
    repetition_penalty: Optional[float] = typer.Option(None, "--repeat-penalty", help=REPEAT_HELP),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for reproducible replies."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="CPU threads (default: all cores)."),
    ctx: Optional[int] = typer.Option(None, "--ctx", help="KV cache length in tokens (default: the model's, at most 4096)."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Replies go on past end-of-sequence tokens (until -n)."),
    activations: str = typer.Option("f32", "--activations", help=ACT_HELP),
):
    """Talk to a model: one line per turn, replies stream; the KV cache is kept across turns.

    Uses the chat template embedded from the model folder (rendered as transformers renders it), else
    [INST] ... [/INST] for Llama 2 chat models, otherwise continues your text. Ctrl-C stops a reply;
    Ctrl-C or Ctrl-D at the prompt, or /exit, ends; /reset starts over.
    """
    from lmpack.runtime.chat import ChatSession, ContextFull
    from lmpack.runtime.model import load

    m = load(file, threads=threads, max_context=ctx, activations=activations)
    _utf8(system or "", "the system prompt")
    if system is not None and plain:
        raise LmpackError("--system needs a chat format; --plain has none")
    session = ChatSession(m, system=system, chat_format=None if plain else "auto")
    m.sampler(temperature, top_p, seed, top_k, repetition_penalty)  # bad options fail before the first prompt
    interactive = sys.stdin.isatty()
    mode = {"template": "the model's chat template", "llama2": "chat format llama2", None: "plain continuation"}
    err.print(Text(f"{file.name}: {mode.get(session.format, session.format)}, context {m.n_ctx} tokens. "
                   f"/reset starts over, /exit or Ctrl-D ends.", style="dim"), highlight=False)
    _say_sampling(m, temperature=temperature, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty)
    turn_seed = seed
    while True:
        try:
            line = _utf8(input("> " if interactive else ""), "the input line")
        except (EOFError, KeyboardInterrupt):
            err.print("")
            break
        except UnicodeDecodeError as e:
            raise LmpackError(f"the input is not valid UTF-8 text (byte {e.start} of the line)") from None
        if line.strip() == "/exit":
            break
        if line.strip() == "/reset":
            session.reset()
            err.print("[dim](conversation cleared)[/]")
            continue
        if not line.strip():
            continue
        for attempt in (0, 1):
            try:
                for piece in session.reply(line, max_tokens=n, temperature=temperature, top_p=top_p,
                                           seed=turn_seed, stop_at_eos=not ignore_eos, top_k=top_k,
                                           repetition_penalty=repetition_penalty):
                    sys.stdout.write(piece)
                    sys.stdout.flush()
                break
            except ContextFull:
                if attempt or session.pos == 0:
                    raise LmpackError("this message alone does not fit in the context; use a larger --ctx") from None
                err.print("[yellow](context full: starting a new conversation)[/]")
                session.reset()
            except KeyboardInterrupt:
                err.print("[dim] (stopped)[/]", end="")
                break
        sys.stdout.write("\n")
        sys.stdout.flush()
        s = session.stats
        if s.stopped_by == "context":
            err.print("[yellow](context full: the next message starts a new conversation)[/]")
            session.reset()
        err.print(f"[dim]{s.generated_tokens} tokens, {s.generation_tps:.1f} tok/s, "
                  f"context {session.tokens_used}/{m.n_ctx}[/]", highlight=False)
        if turn_seed is not None:
            turn_seed += 1


@app.command()
@handles_errors
def verify(
    file: Path = typer.Argument(..., help="The .lmp file to check."),
    against: Optional[Path] = typer.Option(None, "--against", help="The source checkpoint (folder, or a float .lmp) "
                                           "to compare config, tensors and logits with."),
    prompt: Optional[str] = typer.Option(None, "-p", "--prompt", help="Text for the logit comparison "
                                         "(default: a fixed English paragraph)."),
    text_file: Optional[Path] = typer.Option(None, "--text-file", help="A UTF-8 text file for the logit comparison "
                                             "instead of --prompt."),
    max_tokens: int = typer.Option(256, "-n", "--max-tokens", help="Cut the prompt or text to this many tokens."),
    max_error: Optional[float] = typer.Option(None, "--max-error", help="Override: max |logit error| / std of the "
                                              "reference logits."),
    min_top1: Optional[float] = typer.Option(None, "--min-top1", help="Override: minimum top-1 agreement (0..1)."),
    max_kl: Optional[float] = typer.Option(None, "--max-kl", help="Override: maximum mean KL(ref || file), nats."),
    max_kl_token: Optional[float] = typer.Option(None, "--max-kl-token", help="Override: maximum KL at any one "
                                                 "position, nats."),
    max_ppl_diff: Optional[float] = typer.Option(None, "--max-ppl-diff", help="Override: maximum relative "
                                                 "perplexity difference."),
    threads: Optional[int] = typer.Option(None, "--threads", "-t", help="Runtime threads (default: all cores)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout (stable keys)."),
):
    """Check that a file is intact (structure, checksums, tokenizer, finite values) and, with --against,
    faithful to its source (config, every tensor, logits against a numpy reference). Exit 0 when sound,
    1 when not, 2 on usage errors. Thresholds per dtype: docs/VERIFY.md."""
    import json

    from lmpack.verify import UsageError, render, verify as run_verify

    if prompt is not None:
        try:
            _utf8(prompt, "the prompt")
        except LmpackError as e:
            say_error(str(e))
            raise SystemExit(2) from None

    overrides = {"max_error_rel_std": max_error, "min_top1": min_top1, "max_kl_mean": max_kl,
                 "max_kl_max": max_kl_token, "max_ppl_rel_diff": max_ppl_diff}
    # typer.Exit is an Exception that handles_errors would report as a bug: leave through SystemExit.
    bad = [f"--{k.replace('_', '-')}" for k, v in (("max_error", max_error), ("min_top1", min_top1), ("max_kl", max_kl),
                                                   ("max_kl_token", max_kl_token), ("max_ppl_diff", max_ppl_diff))
           if v is not None and not v >= 0]
    if bad or (threads is not None and threads < 1):
        say_error(f"{bad[0] if bad else '--threads'} must be {'a number >= 0' if bad else 'at least 1'}")
        raise SystemExit(2)
    try:
        result = run_verify(file, against=against, prompt=prompt, text_file=text_file, max_tokens=max_tokens,
                            thresholds=overrides, threads=threads, progress=not as_json and err.is_terminal)
    except UsageError as e:
        say_error(str(e))
        raise SystemExit(2) from None
    if as_json:
        sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n")
        sys.stdout.flush()
    else:
        render(result, Console())
    if not result.ok:
        raise SystemExit(1)


def main() -> None:
    app(prog_name="lmpack")


if __name__ == "__main__":
    main()
