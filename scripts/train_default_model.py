"""Train lmpack's embedded default model: a tiny Llama that writes about Python, shipped in-repo.

The model lets a new user run the whole pipeline (convert, quantize, verify, generate) with no
download. Everything it learns from ships with CPython under the PSF License: the documentation
text bundled as `pydoc_data.topics` and the docstrings of the pure-Python standard library (read
with `ast`, never imported) and of `builtins`. A SentencePiece BPE tokenizer is trained on the
same training text, then a Llama (`transformers.LlamaForCausalLM`) is trained with torch on one
CPU thread for a wall-time budget, and the result is written as a Hugging Face folder:
config.json, model.safetensors (bf16), tokenizer.model and a README.md with the numbers.

Usage (torch, transformers and sentencepiece are dev-only dependencies):

    python scripts/train_default_model.py                    # ~20 min budget, writes lmpack/default_model
    python scripts/train_default_model.py --minutes 1 --out /tmp/smoke
    python scripts/train_default_model.py --steps 1234       # exact remake of a run that took 1234 steps

With a time budget the step count is fixed after a short calibration (the learning-rate schedule
needs it up front) and printed; passing it back with --steps replays the same run, since data
order, initialisation and sampling are all seeded and torch runs in deterministic mode.
"""
from __future__ import annotations

import argparse
import ast
import builtins
import hashlib
import inspect
import io
import json
import math
import os
import random
import sys
import sysconfig
import time
import warnings
from pathlib import Path

import sentencepiece as spm
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "lmpack" / "default_model"
SAMPLE_PROMPTS = ("The for statement", "A list", "The with statement")
# Standard-library folders left out: tests (code, not prose), GUI/IDE and demo code, generated
# codec modules, installer payloads, and pydoc_data itself (taken whole as the topics dict).
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "tkinter",
             "turtledemo", "ensurepip", "encodings", "pydoc_data", "__pycache__"}
MIN_DOC_CHARS = 80  # shorter docstrings are mostly one-line stubs ("Return self.") that teach little
BOS_ID, EOS_ID = 1, 2


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------
# Corpus


def topics_documents() -> list[tuple[str, str]]:
    from pydoc_data.topics import topics

    return [(f"topics:{key}", clean(topics[key])) for key in sorted(topics)]


def stdlib_docstring_documents() -> list[tuple[str, str]]:
    """Docstrings of modules, classes and functions in the pure-Python stdlib, by parsing source."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("config-"))
        for fn in sorted(filenames):
            if not fn.endswith(".py"):
                continue
            path = Path(dirpath) / fn
            rel = path.relative_to(root).as_posix()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # invalid escape sequences in old modules
                    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
            except (SyntaxError, UnicodeDecodeError):
                continue  # a few files are templates or need another encoding; not prose we need
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    text = ast.get_docstring(node)
                    if text:
                        name = getattr(node, "name", "<module>")
                        docs.append((f"stdlib:{rel}:{name}:{getattr(node, 'lineno', 0)}", clean(text)))
    return docs


def builtins_documents() -> list[tuple[str, str]]:
    """Docstrings of the builtins and of the methods of builtin types (written in C, so not in .py)."""
    docs = []
    for name in sorted(dir(builtins)):
        if name.startswith("_"):
            continue
        obj = getattr(builtins, name)
        if obj.__doc__:
            docs.append((f"builtins:{name}", clean(inspect.cleandoc(obj.__doc__))))
        if isinstance(obj, type) and not issubclass(obj, BaseException):
            for attr in sorted(vars(obj)):
                doc = getattr(vars(obj)[attr], "__doc__", None)
                if not attr.startswith("_") and isinstance(doc, str) and doc:
                    docs.append((f"builtins:{name}.{attr}", clean(inspect.cleandoc(doc))))
    return docs


def clean(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def build_corpus() -> list[tuple[str, str]]:
    """All documents, deduplicated by text, in a deterministic order."""
    seen: set[str] = set()
    out = []
    for name, text in topics_documents() + stdlib_docstring_documents() + builtins_documents():
        if len(text) >= MIN_DOC_CHARS and text not in seen:
            seen.add(text)
            out.append((name, text))
    return out


def split_corpus(docs, val_fraction: float, seed: int):
    """Hold out whole documents, in a seeded order, until `val_fraction` of the characters."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    target = val_fraction * sum(len(t) for _, t in docs)
    val_idx, chars = set(), 0
    for i in order:
        if chars >= target:
            break
        val_idx.add(i)
        chars += len(docs[i][1])
    train = [d for i, d in enumerate(docs) if i not in val_idx]
    val = [d for i, d in enumerate(docs) if i in val_idx]
    return train, val


# --------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(train_docs, vocab_size: int) -> bytes:
    """A Llama-style SentencePiece BPE model, trained on the training split only."""
    lines = [line for _, text in train_docs for line in text.splitlines() if line.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=0.9995,  # rare characters fall back to bytes instead of bloating the vocab
        byte_fallback=True,
        unk_id=0, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=-1,
        # Llama's settings: text is kept verbatim (indentation matters in Python docs), digits
        # are split so numbers do not eat the vocabulary, runs of spaces may become pieces.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        max_sentence_length=1 << 16,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def encode_stream(sp: spm.SentencePieceProcessor, docs) -> torch.Tensor:
    ids: list[int] = []
    for _, text in docs:
        ids.append(BOS_ID)
        ids.extend(sp.encode(text))
        ids.append(EOS_ID)
    return torch.tensor(ids, dtype=torch.long)


# --------------------------------------------------------------------------------------------
# Model, training, evaluation


def make_config(args, vocab_size: int) -> LlamaConfig:
    head_dim = args.dim // args.heads
    for name, value in (("dim", args.dim), ("ffn", args.ffn), ("head_dim", head_dim)):
        # lmpack quantizes rows in Q8_0 blocks of 32 values; every row length must be a multiple.
        if value % 32:
            raise ValueError(f"{name} = {value} is not a multiple of 32 (the Q8_0 block size)")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=args.dim,
        intermediate_size=args.ffn,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=head_dim,
        max_position_embeddings=512,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=None,
    )


def lm_loss(model, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) over windows of context+1 tokens."""
    logits = model(input_ids=windows[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), windows[:, 1:].reshape(-1))


def eval_windows(stream: torch.Tensor, context: int, limit: int | None = None) -> torch.Tensor:
    """Non-overlapping windows, so every token of `stream` (after the first) is predicted once."""
    n = (len(stream) - 1) // context
    if limit is not None:
        n = min(n, limit)
    return torch.stack([stream[i * context: i * context + context + 1] for i in range(n)])


@torch.no_grad()
def evaluate(model, windows: torch.Tensor, batch: int = 16) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch):
        w = windows[i:i + batch]
        total += lm_loss(model, w).item() * w[:, 1:].numel()
        count += w[:, 1:].numel()
    model.train()
    return total / count


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor * peak + (1 - floor) * peak * 0.5 * (1 + math.cos(math.pi * progress))


def train(model, train_stream, val_windows, args) -> dict:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(args.seed)
    n_starts = len(train_stream) - args.context - 1
    budget = args.minutes * 60.0
    total_steps = args.steps  # None until calibrated when running on a time budget
    calib_steps = 20
    best = {"val_loss": float("inf"), "step": -1, "state": None}
    history, replans = [], []
    t0 = time.time()
    step, running = 0, None
    while total_steps is None or step < total_steps:
        starts = torch.randint(0, n_starts, (args.batch,), generator=gen)
        windows = torch.stack([train_stream[s: s + args.context + 1] for s in starts.tolist()])
        lr = lr_at(step, total_steps or 10 ** 9, args.lr, args.warmup, args.min_lr_ratio)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = lm_loss(model, windows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        elapsed = time.time() - t0
        if total_steps is None and step == calib_steps:
            per_step = elapsed / step
            # Evaluations cost about 5% on top of the steps; keep them inside the budget.
            total_steps = max(calib_steps + 1, int(budget / (per_step * 1.05)))
            if total_steps <= args.warmup:
                args.warmup = max(1, total_steps // 10)
            log(f"calibrated: {per_step:.3f} s/step -> {total_steps} steps "
                f"(replay this run exactly with --steps {total_steps})")
        if args.steps is None and step > calib_steps and step % args.log_every == 0:
            # The machine is shared: if others' load slows the steps down, shorten the run
            # rather than overrun the budget (the cosine schedule is re-planned to the new end).
            # Likewise lengthen it if the load eases, so the budget is used. Re-planning looks at
            # the pace so far, and only when it is off by more than a fifth, to avoid dithering.
            projected = elapsed / step * total_steps
            if projected > 1.2 * budget or (projected < 0.8 * budget and step < 0.8 * total_steps):
                total_steps = max(step + 1, int(budget * step / elapsed / 1.05))
                replans.append((step, total_steps))
                log(f"re-planned at step {step}: {elapsed / step:.2f} s/step, now {total_steps} steps")
        if step % args.log_every == 0 or step == total_steps:
            tok_s = step * args.batch * args.context / elapsed
            log(f"step {step:5d}/{total_steps or '?'}  loss {running:.4f}  lr {lr:.2e}  "
                f"{tok_s:,.0f} tok/s  {elapsed / 60:.1f} min")
        if step % args.eval_every == 0 or step == total_steps:
            val = evaluate(model, val_windows)
            history.append((step, round(running, 4), round(val, 4)))
            log(f"eval step {step}: val loss {val:.4f} (ppl {math.exp(val):.2f})")
            if val < best["val_loss"]:
                best = {"val_loss": val, "step": step,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    return {"steps": step, "seconds": time.time() - t0, "best": best, "history": history, "replans": replans}


@torch.no_grad()
def samples(model, sp, prompts, max_new: int, seed: int) -> list[dict]:
    model.eval()
    out = []
    for i, prompt in enumerate(prompts):
        ids = torch.tensor([[BOS_ID] + sp.encode(prompt)])
        greedy = model.generate(ids, max_new_tokens=max_new, do_sample=False, eos_token_id=EOS_ID,
                                pad_token_id=EOS_ID)
        torch.manual_seed(seed + i)  # one seed per prompt, so similar prompts do not share draws
        sampled = model.generate(ids, max_new_tokens=max_new, do_sample=True, temperature=0.8, top_k=0,
                                 top_p=1.0, eos_token_id=EOS_ID, pad_token_id=EOS_ID)
        out.append({"prompt": prompt, "seed": seed + i,
                    "greedy": sp.decode(greedy[0, 1:].tolist()),
                    "t0.8": sp.decode(sampled[0, 1:].tolist())})
    return out


# --------------------------------------------------------------------------------------------
# Output folder


def save_folder(model, tokenizer_bytes: bytes, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    (out / "generation_config.json").unlink(missing_ok=True)  # defaults only; config.json has the ids
    (out / "tokenizer.model").write_bytes(tokenizer_bytes)
    # transformers 5 writes `rope_parameters` and `dtype`; older readers (and most checkpoints in
    # the wild) use `rope_theta` and `torch_dtype`. Carry both so either kind of reader works.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["rope_theta"] = cfg.get("rope_parameters", {}).get("rope_theta", 10000.0)
    cfg["torch_dtype"] = "bfloat16"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def write_readme(out: Path, r: dict) -> None:
    def block(text: str) -> str:
        return "\n".join("    " + line for line in text.splitlines())

    sample_md = []
    for s in r["samples"]:
        sample_md.append(f"Prompt `{s['prompt']}`, greedy:\n\n{block(s['greedy'])}\n\n"
                         f"Prompt `{s['prompt']}`, temperature 0.8 (seed {s['seed']}):\n\n{block(s['t0.8'])}\n")
    a = r["args"]
    budget = ("run with `--steps`" if a["steps"] is not None
              else f"time budget `--minutes {a['minutes']:g}`, step count set from the measured pace")
    if r["replans"]:
        replay = (f"This run re-planned its schedule while training, to fit the time budget on a\n"
                  f"shared machine ((step, new total): {r['replans']}), so `--steps` gives a run\n"
                  f"of the same length with an unbroken schedule rather than this exact one.")
    else:
        replay = ("`--steps` replays this run's schedule, data order and initialisation; with the same\n"
                  "library versions and CPU type the result matches up to floating-point differences.")
    text = f"""# lmpack default model

A tiny Llama that writes about Python, shipped inside lmpack so the README's main command
(convert, quantize to Q8_0, verify, generate) runs with no download. It is a demonstration
model: it produces English-like text about Python, not reliable answers.

## What it is

- Architecture: `LlamaForCausalLM` (model_type `llama`), {r['params']:,} parameters.
  hidden {a['dim']}, {a['layers']} layers, {a['heads']} query heads and {a['kv_heads']} key/value
  heads (grouped-query attention), head_dim {a['dim'] // a['heads']}, intermediate {a['ffn']},
  RoPE theta 10000, RMSNorm eps 1e-5, max_position_embeddings 512 (trained at context {a['context']}).
- Input and output embeddings are tied (`tie_word_embeddings: true`), so `model.safetensors` has
  no `lm_head.weight`.
- Weights in bfloat16 (`model.safetensors`, one file). `config.json` carries both the
  transformers-5 keys (`rope_parameters`, `dtype`) and the older `rope_theta`, `torch_dtype`.
- Tokenizer: SentencePiece BPE (`tokenizer.model`), vocabulary {r['vocab_size']}, byte fallback
  (any text encodes), unk=0, bos=1, eos=2, no pad, identity normalization, digits split.
  Every training document is encoded as `<s> text </s>`; prompts should start with `<s>`.

## Quality

Validation: {r['val_tokens']:,} tokens ({r['val_chars']:,} characters, {r['val_docs']} whole documents,
{100 * r['val_chars'] / r['total_chars']:.1f}% of the corpus) held out before the tokenizer was trained.

| | loss (nats/token) | perplexity | bits/byte |
|---|---|---|---|
| train (fp32, {r['train_eval_windows']} windows) | {r['train_loss']:.4f} | {math.exp(r['train_loss']):.2f} | |
| validation (fp32) | {r['val_loss_fp32']:.4f} | {math.exp(r['val_loss_fp32']):.2f} | {r['val_bpb_fp32']:.3f} |
| validation (bf16, as shipped) | {r['val_loss_bf16']:.4f} | **{math.exp(r['val_loss_bf16']):.2f}** | {r['val_bpb_bf16']:.3f} |

For scale: a uniform guess over the vocabulary has perplexity {r['vocab_size']}. The weights kept
are those of the step with the best validation loss on a fixed subset ({r['best_step']} of
{r['steps']} steps).

## Samples

Generated with transformers from the shipped bf16 weights ({r['max_new']} new tokens at most).

{chr(10).join(sample_md)}
## How it was made

`scripts/train_default_model.py` in the lmpack repository, on Python {r['python']}, torch
{r['torch']}, transformers {r['transformers']}, sentencepiece {r['sentencepiece']}:

1. Corpus: the `topics` dict of CPython's `pydoc_data/topics.py` (the language reference and
   library text that `help()` shows), the docstrings of the pure-Python standard library
   (modules, classes, functions; parsed with `ast`, not imported; tests, IDLE, tkinter, lib2to3,
   encodings and demos left out) and the docstrings of `builtins` and of builtin types' methods.
   Documents under {MIN_DOC_CHARS} characters are dropped and duplicates removed: {r['docs']} documents,
   {r['total_chars']:,} characters (sha256 of the corpus: `{r['corpus_sha256'][:16]}`).
2. Split: whole documents, in a seeded shuffle, go to validation until {a['val_fraction']:.0%} of the characters.
3. Tokenizer: SentencePiece BPE trained on the training lines only (settings in the script).
4. Model: seed {r['seed']}, AdamW (betas 0.9/0.95, weight decay {a['weight_decay']} on matrices),
   peak learning rate {a['lr']}, {a['warmup']} warm-up steps then cosine decay to {a['min_lr_ratio']:.0%} of the peak,
   gradient clipping 1.0, batches of {a['batch']} random windows of {a['context']}+1 tokens, fp32 on one CPU
   thread (`torch.set_num_threads(1)`), {r['steps']} steps in {r['seconds'] / 60:.1f} minutes
   ({r['train_tokens_seen']:,} tokens seen; the training split has {r['train_tokens']:,});
   {budget}.
5. Saved with `model.to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)`;
   `generation_config.json` is removed (it held only defaults).

## How to remake it

    pip install torch transformers sentencepiece
    python scripts/train_default_model.py --steps {r['steps']} --out lmpack/default_model

{replay}
Without `--steps` the script trains for `--minutes` (default 20) of wall time; add
`--out /tmp/somewhere` to leave the shipped folder alone.

## Data source and licence

All training text is part of CPython {r['python'].split()[0]} and is distributed under the
Python Software Foundation License Version 2 (documentation examples additionally under the
Zero-Clause BSD licence): Copyright (c) 2001 Python Software Foundation; All Rights Reserved.
The PSF License permits use, modification and redistribution provided this notice is kept.
This model is a derivative work of that text and is shipped with lmpack under the same terms
for its training data; lmpack's own code is MIT-licensed.
"""
    (out / "README.md").write_text(text)


# --------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder to write (default: %(default)s)")
    p.add_argument("--minutes", type=float, default=20.0, help="wall-time budget for training")
    p.add_argument("--steps", type=int, default=None, help="train exactly this many steps (overrides --minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=1536)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--ffn", type=int, default=704)
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument("--eval-windows", type=int, default=48, help="validation windows per periodic eval")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--max-new", type=int, default=64, help="tokens per sample in the README")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)  # the machine is shared; one core is plenty for a model this size
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)

    docs = build_corpus()
    corpus_sha = hashlib.sha256("\x00".join(t for _, t in docs).encode()).hexdigest()
    train_docs, val_docs = split_corpus(docs, args.val_fraction, args.seed)
    total_chars = sum(len(t) for _, t in docs)
    val_chars = sum(len(t) for _, t in val_docs)
    log(f"corpus: {len(docs)} documents, {total_chars:,} chars; validation {len(val_docs)} documents, "
        f"{val_chars:,} chars; sha256 {corpus_sha[:16]}")

    tok_bytes = train_tokenizer(train_docs, args.vocab_size)
    sp = spm.SentencePieceProcessor(model_proto=tok_bytes)
    train_stream = encode_stream(sp, train_docs)
    val_stream = encode_stream(sp, val_docs)
    val_bytes = sum(len(t.encode()) for _, t in val_docs)
    log(f"tokenizer: vocab {sp.get_piece_size()}; train {len(train_stream):,} tokens, "
        f"val {len(val_stream):,} tokens ({val_bytes / len(val_stream):.2f} bytes/token)")

    config = make_config(args, sp.get_piece_size())
    model = LlamaForCausalLM(config)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params:,} parameters")

    val_all = eval_windows(val_stream, args.context)
    val_sub = val_all[:args.eval_windows]
    result = train(model, train_stream, val_sub, args)
    best = result["best"]
    model.load_state_dict(best["state"])
    log(f"kept step {best['step']} (subset val loss {best['val_loss']:.4f})")

    train_windows = eval_windows(train_stream, args.context, limit=len(val_all))
    train_loss = evaluate(model, train_windows)
    val_fp32 = evaluate(model, val_all)
    n_pred = val_all[:, 1:].numel()
    save_folder(model, tok_bytes, args.out)
    shipped = LlamaForCausalLM.from_pretrained(args.out, dtype=torch.bfloat16)
    val_bf16 = evaluate(shipped, val_all)
    # bits per byte uses only the predicted span's share of the validation text, so that a
    # tokenizer with longer pieces does not look better than it is.
    bytes_pred = val_bytes * n_pred / (len(val_stream) - 1)
    bpb = lambda loss: loss * n_pred / math.log(2) / bytes_pred  # noqa: E731
    log(f"final: train loss {train_loss:.4f}; val loss fp32 {val_fp32:.4f} (ppl {math.exp(val_fp32):.2f}, "
        f"{bpb(val_fp32):.3f} bits/byte); bf16 {val_bf16:.4f} (ppl {math.exp(val_bf16):.2f})")

    gen = samples(shipped, sp, SAMPLE_PROMPTS, args.max_new, args.seed)
    for s in gen:
        log(f"--- {s['prompt']!r} greedy:\n{s['greedy']}\n--- {s['prompt']!r} t=0.8:\n{s['t0.8']}")

    import transformers

    write_readme(args.out, {
        "args": vars(args) | {"out": str(args.out)}, "params": n_params, "vocab_size": sp.get_piece_size(),
        "docs": len(docs), "total_chars": total_chars, "corpus_sha256": corpus_sha,
        "val_docs": len(val_docs), "val_chars": val_chars, "val_tokens": n_pred,
        "train_tokens": len(train_stream), "train_eval_windows": len(train_windows),
        "train_loss": train_loss, "val_loss_fp32": val_fp32, "val_loss_bf16": val_bf16,
        "val_bpb_fp32": bpb(val_fp32), "val_bpb_bf16": bpb(val_bf16),
        "best_step": best["step"], "steps": result["steps"], "seconds": result["seconds"],
        "train_tokens_seen": result["steps"] * args.batch * args.context,
        "replans": result["replans"], "samples": gen, "seed": args.seed, "max_new": args.max_new,
        "python": sys.version.split()[0], "torch": torch.__version__,
        "transformers": transformers.__version__, "sentencepiece": spm.__version__,
    })
    size = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    log(f"wrote {args.out} ({size / 1e6:.2f} MB): {sorted(f.name for f in args.out.iterdir())}")
    log("history (step, smoothed train loss, subset val loss): " + json.dumps(result["history"]))


if __name__ == "__main__":
    main()
