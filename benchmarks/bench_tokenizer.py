"""Encode and decode throughput of an `.lmp` file's tokenizer against the tokenizers library called
directly on the same tokenizer.json, on ~1 MB of mixed text.

    python benchmarks/bench_tokenizer.py                      # trains a 32k byte-level BPE (Llama 3 pattern)
    python benchmarks/bench_tokenizer.py --tokenizer-json path/to/tokenizer.json --reps 7

The lmpack side is the tokenizer a converted file embeds: `read_tokenizer` (the converter's reading
of the folder) then the runtime's `open_tokenizer` over those bytes, i.e. `m.tokenizer` of a
loaded model. Both sides run single-threaded on the whole text (RAYON_NUM_THREADS=1: one encode of
one string is sequential in tokenizers anyway). Medians of --reps runs of each, interleaved; MB/s of UTF-8 input.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "1")

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
          "they you were her she there one all we their model token file tensor weight fast small runs convert "
          "memory cache layer head byte number").split()
_OTHER = ["Café au lait, naïve résumé, über die Straße.", "Ελληνικά και русский текст.", "日本語のテキストです。中文字符测试。",
          "Emoji 🙂🚀🎉🦙 done.", "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; ++i) { s += a[i]; }",
          "Numbers 1234567890, 3.14159 and 2024-12-31.", "    indented   with   runs   of   spaces\n\n\n"]


def _word(rng: random.Random) -> str:
    syllables = ["ka", "to", "re", "mi", "an", "sel", "por", "tri", "ex", "qu", "ing", "tion", "ly", "st", "ph", "or"]
    return "".join(rng.choice(syllables) for _ in range(min(6, 1 + int(rng.expovariate(0.7)))))


def make_text(n_bytes: int, seed: int = 0) -> str:
    """English-like words (a Zipf-ish vocabulary of invented ones too), code, digits, CJK, emoji."""
    rng = random.Random(seed)
    lexicon = _WORDS + [_word(random.Random(i)) for i in range(20000)]
    weights = [1 / (r + 1) for r in range(len(lexicon))]
    parts, size = [], 0
    while size < n_bytes:
        if rng.random() < 0.15:
            s = rng.choice(_OTHER)
        else:
            words = rng.choices(lexicon, weights, k=rng.randint(4, 18))
            s = " ".join(words).capitalize() + rng.choice(".!?,\n")
        parts.append(s + " ")
        size += len(s.encode()) + 1
    return "".join(parts)


def train(folder: Path, vocab: int) -> Path:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|begin_of_text|>", "<|end_of_text|>"], show_progress=False)
    tok.train_from_iterator([make_text(4 << 20, seed=1)], trainer=trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>",
                                                              "eos_token": "<|end_of_text|>"}))
    return folder


def timed_pair(f, g, reps: int) -> tuple[float, float, object, object]:
    """Median seconds of f and of g, run alternately (f g, g f, ...) so that a shared machine's
    load drifts affect both alike."""
    tf, tg, out_f, out_g = [], [], None, None
    for r in range(reps):
        for which in ((0, 1) if r % 2 == 0 else (1, 0)):
            t = time.perf_counter()
            if which == 0:
                out_f = f()
                tf.append(time.perf_counter() - t)
            else:
                out_g = g()
                tg.append(time.perf_counter() - t)
    return statistics.median(tf), statistics.median(tg), out_f, out_g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer-json", type=Path, default=None, help="a folder's tokenizer.json (default: train one)")
    ap.add_argument("--vocab", type=int, default=32000, help="vocabulary of the trained tokenizer")
    ap.add_argument("--mb", type=float, default=1.0, help="text size in MB")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()

    from tokenizers import Tokenizer

    from lmpack.convert.tokenizer_files import read_tokenizer
    from lmpack.runtime.tokenizer import open_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if a.tokenizer_json is None:
            train(folder, a.vocab)
        else:
            (folder / "tokenizer.json").write_bytes(a.tokenizer_json.read_bytes())
            cfg = a.tokenizer_json.parent / "tokenizer_config.json"
            if cfg.is_file():
                (folder / "tokenizer_config.json").write_bytes(cfg.read_bytes())
        direct = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tf = read_tokenizer(folder)
        mine = open_tokenizer(tf.kind, tf.blob, tf.bos_id or 0, tf.eos_ids, tf.n_ids, tf.header)

    text = make_text(int(a.mb * 1e6))
    mb = len(text.encode()) / 1e6
    t_direct, t_mine, ids_direct, ids_mine = timed_pair(lambda: direct.encode(text).ids,
                                                        lambda: mine.encode(text, bos=True), a.reps)
    assert ids_mine == ids_direct, "lmpack and tokenizers disagree"
    d_direct, d_mine, s_direct, s_mine = timed_pair(lambda: direct.decode(ids_direct, skip_special_tokens=True),
                                                    lambda: mine.decode(ids_direct), a.reps)
    assert s_mine == s_direct
    print(f"text: {mb:.2f} MB, {len(ids_direct)} tokens, vocabulary {direct.get_vocab_size()}")
    print(f"{'':12}{'tokenizers':>14}{'lmpack':>14}{'ratio':>8}")
    print(f"{'encode MB/s':12}{mb / t_direct:14.2f}{mb / t_mine:14.2f}{t_direct / t_mine:8.3f}")
    print(f"{'decode MB/s':12}{mb / d_direct:14.2f}{mb / d_mine:14.2f}{d_direct / d_mine:8.3f}")


if __name__ == "__main__":
    main()
