"""tokenizer.json models end to end against transformers' AutoTokenizer on the same folder: each
family's tokenizer (Llama 3, Qwen2, SmolLM2, OLMo 2, Mistral tekken, Gemma, Phi-3) trained at test time,
converted with a tiny model, then encode/decode/chat-template ids, EOS ids, sampling defaults
and logits compared with transformers."""
from __future__ import annotations

import json

import numpy as np
import pytest

import hf_tokenizers as H
import lmpack

AWKWARD = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "   three leading spaces",
    "multiple   spaces    inside  ",
    "line one\nline two\n\n\nline five\r\n",
    "\n\n",
    " ",
    "",
    "tabs\tand\t\ttabs",
    "numbers 1234567890 and 3.14159, x=42, 2024-12-31",
    "café naïve résumé über Straße señor",
    "Ελληνικά и русский",
    "日本語のテキストです。中文字符测试 한국어",
    "emoji 🙂🚀🎉🦙 👍🏽 family 👨‍👩‍👧",
    "def f(x):\n    return x ** 2  # square\n",
    "I'm sure it's fine; we'll see, they've gone. YOU'RE RIGHT",
    "<|im_start|>user hello<|im_end|> [INST] hi [/INST] <s></s> <|eot_id|> <start_of_turn>",
    "<|begin_of_text|><|start_header_id|>",
    "\u00a0non-breaking\u2009thin space, ﬁ ligature, e\u0301 combining",
]

CONVERSATIONS = {
    "user": [{"role": "user", "content": "Hi there!"}],
    "system": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    "turns": [{"role": "user", "content": "Name a fruit."}, {"role": "assistant", "content": "An apple 🍎."},
              {"role": "user", "content": "And a color?\n  "}],
    "system-turns": [{"role": "system", "content": "Answer in French."},
                     {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Bonjour !"},
                     {"role": "user", "content": "How are you?"}],
}

# Embedding rows per family: some padded past the tokenizer (as Qwen pads to a multiple of 128).
PAD = {"llama3": 0, "qwen2": 37, "smollm2": 0, "olmo2": 3, "mistral-tekken": 5, "gemma": 0, "phi3": 11}


@pytest.fixture(scope="session")
def family(request, tmp_path_factory, hf_checkpoint, converted):
    cache = {}

    def build(name):
        if name not in cache:
            tok_dir = H.FAMILIES[name](tmp_path_factory.mktemp("tok") / name)
            ref = H.auto_tokenizer(tok_dir)
            n = H.n_tokens(tok_dir)
            gen = json.loads((tok_dir / "generation_config.json").read_text())
            eos = gen.get("eos_token_id")
            special = {"bos_token_id": gen.get("bos_token_id") or 0,
                       "eos_token_id": eos[0] if isinstance(eos, list) else eos}
            ckpt = hf_checkpoint(tokenizer=None, tokenizer_files=tok_dir, vocab=n + PAD[name], special_ids=special,
                                 dims=dict(dim=64, n_heads=2, ffn_dim=160), tie=(name == "gemma"))
            m = lmpack.load(converted(ckpt), threads=1)
            cache[name] = (ref, m, ckpt, tok_dir)
        return cache[name]

    return build


FAMILIES = list(H.FAMILIES)


@pytest.mark.parametrize("name", FAMILIES)
def test_encode_decode_equal_transformers(family, name):
    ref, m, _, _ = family(name)
    assert m.tokenizer.kind == "tokenizers"
    for text in AWKWARD:
        for bos in (True, False):
            want = ref(text, add_special_tokens=bos)["input_ids"]
            assert m.tokenizer.encode(text, bos=bos) == want, (name, text, bos)
        ids = ref(text)["input_ids"]
        assert m.tokenizer.decode(ids) == ref.decode(ids, skip_special_tokens=True), (name, text)


@pytest.mark.parametrize("name", FAMILIES)
def test_bos_rule(family, name):
    ref, m, _, _ = family(name)
    ids = m.tokenizer.encode("hello", bos=True)
    adds_bos = name in ("llama3", "mistral-tekken", "gemma")  # Qwen, SmolLM2, OLMo 2 and Phi-3 add none
    assert (ids[0] == ref.bos_token_id) == adds_bos
    assert m.tokenizer.encode("hello", bos=False) == ref("hello", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", FAMILIES)
def test_chat_template_ids_equal_transformers(family, name):
    ref, m, _, _ = family(name)
    for key, conv in CONVERSATIONS.items():
        for gen_prompt in (True, False):
            try:
                want = ref.apply_chat_template(conv, add_generation_prompt=gen_prompt, tokenize=True)
            except Exception as e:  # Gemma's template refuses a system message; so must lmpack's
                with pytest.raises(lmpack.LmpackError, match=str(e)[:20]):
                    m.tokenizer.apply_chat_template(conv, add_generation_prompt=gen_prompt)
                continue
            want = want["input_ids"] if hasattr(want, "keys") else want
            assert m.tokenizer.apply_chat_template(conv, add_generation_prompt=gen_prompt) == want, (name, key)


@pytest.mark.parametrize("name", FAMILIES)
def test_eos_ids_and_generation_defaults(family, name):
    _, m, _, tok_dir = family(name)
    gen = json.loads((tok_dir / "generation_config.json").read_text())
    eos = gen["eos_token_id"] if isinstance(gen["eos_token_id"], list) else [gen["eos_token_id"]]
    assert set(eos) <= set(m.config.eos_token_ids)
    assert m.tokenizer.eos_ids == frozenset(m.config.eos_token_ids)
    expected = {k: gen[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty", "do_sample") if k in gen}
    assert m.generation_defaults == expected


@pytest.mark.parametrize("name", ["llama3", "qwen2", "gemma"])
def test_logits_of_chat_ids_match_transformers(family, name):
    ref, m, ckpt, _ = family(name)
    ids = m.tokenizer.apply_chat_template(CONVERSATIONS["turns"], add_generation_prompt=True)
    got = m.logits(ids)
    want = ckpt.reference_logits(ids)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4 * float(np.std(want)) + 1e-5)


def test_padded_vocabulary_decodes_every_id(family):
    _, m, _, _ = family("qwen2")
    assert m.config.vocab_size > m.tokenizer.vocab_size
    # ids past the tokenizer's own (padding rows) decode to nothing instead of failing
    assert m.tokenizer.decode([m.config.vocab_size - 1, m.tokenizer.encode("hi", bos=False)[0]]) == "hi"


def test_generation_stops_at_any_eos(family):
    _, m, _, _ = family("llama3")
    eos = sorted(m.config.eos_token_ids)
    assert len(eos) >= 3
    prompt = m.tokenizer.encode("Hello", bos=True)
    # Make each EOS id the argmax in turn by steering with a logit bias through the sampler.
    for e in eos:
        class Forced:
            def __call__(self, logits):
                return e

            def see(self, ids):
                pass

        out = list(m.continue_from(prompt, 0, Forced(), 8))
        assert out == [] and m.last_stats.stopped_by == "eos" and m.last_stats.generated_tokens == 0


def test_generate_uses_model_rule_for_prompt(family):
    ref, m, ckpt, _ = family("qwen2")
    want_ids = ref("The cat", add_special_tokens=True)["input_ids"]
    greedy = ckpt.reference_greedy(want_ids, 6)
    # Qwen's generation_config sets repetition_penalty 1.05; the plain greedy oracle has none
    text = "".join(m.generate("The cat", max_tokens=6, temperature=0, repetition_penalty=1.0))
    eos = set(m.config.eos_token_ids)
    cut = next((i for i, t in enumerate(greedy) if t in eos), len(greedy))
    assert text == ref.decode(greedy[:cut], skip_special_tokens=True)
    assert m.last_stats.prompt_tokens == len(want_ids)


def test_repetition_penalty_and_top_k_match_transformers_greedy(family):
    import torch

    ref, m, ckpt, _ = family("llama3")
    ids = ref("The cat", add_special_tokens=True)["input_ids"]
    with torch.no_grad():
        out = ckpt.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                  do_sample=False, max_new_tokens=8, repetition_penalty=1.3, eos_token_id=[],
                                  pad_token_id=0)
    want = out[0, len(ids):].tolist()
    got = []
    list(m.continue_from(ids, 0, m.sampler(temperature=0, repetition_penalty=1.3), 8, stop_at_eos=False, generated=got))
    assert got == want


@pytest.mark.parametrize("name", ["llama3", "mistral-tekken", "qwen2"])
def test_chat_session_feeds_only_what_changed(family, name):
    from lmpack.runtime.chat import ChatSession

    ref, m, _, _ = family(name)
    s = ChatSession(m, system="Be brief.")
    assert s.format == "template"
    list(s.reply("Hello there", max_tokens=4, temperature=0))
    first_prompt = m.last_stats.prompt_tokens
    list(s.reply("And then?", max_tokens=4, temperature=0))
    # The cache holds exactly the conversation as transformers renders it, up to the new reply.
    rendered = ref.apply_chat_template(s.messages[:-1], add_generation_prompt=True, tokenize=True)
    rendered = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
    assert s.history[:len(rendered)] == rendered
    incremental = m.forward(s._pending, s.pos)[-1]
    fresh = m.logits(s.history + s._pending)[-1]
    np.testing.assert_allclose(incremental, fresh, rtol=0, atol=1e-4 * float(np.std(fresh)))
    if name != "mistral-tekken":  # templates that keep earlier turns as they were: only the new suffix is fed
        assert m.last_stats.prompt_tokens < len(rendered) - first_prompt + 2
    else:  # Mistral moves the system prompt to the last user turn: re-fed from the first changed id
        assert m.last_stats.prompt_tokens < len(rendered)


def test_chat_template_without_system_role_refuses_system_prompt(family):
    from lmpack.runtime.chat import ChatSession

    _, m, _, _ = family("gemma")
    with pytest.raises(lmpack.LmpackError, match="takes no system prompt.*System role not supported"):
        ChatSession(m, system="Be brief.")
    s = ChatSession(m)
    list(s.reply("Hi", max_tokens=2, temperature=0))
    assert s.history[:len(m.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}]))] == \
        m.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])


def test_cli_chat_and_run_say_which_sampling(family, tmp_path):
    import os
    import subprocess
    import sys

    from conftest import lmpack_pythonpath

    _, m, _, _ = family("llama3")
    env = {**os.environ, "PYTHONPATH": lmpack_pythonpath()}
    p = subprocess.run([sys.executable, "-m", "lmpack", "chat", str(m.path), "-n", "3", "--seed", "1",
                        "--system", "Be [bold]brief[/bold]."], input="hello\nagain\n",
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert "the model's chat template" in p.stderr
    assert "sampling: temperature 0.6, top_p 0.9 (from the model's generation_config: temperature, top_p)" in p.stderr
    p = subprocess.run([sys.executable, "-m", "lmpack", "run", str(m.path), "-p", "Hi", "-n", "3", "--temp", "0"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert p.returncode == 0, p.stderr
    assert "sampling: greedy" in p.stderr and "generation_config" not in p.stderr.split("sampling:")[1].splitlines()[0]
    p = subprocess.run([sys.executable, "-m", "lmpack", "inspect", str(m.path)], capture_output=True, text=True,
                       timeout=120, env=env)
    assert p.returncode == 0 and "<|begin_of_text|>" in p.stdout and "tokenizers" in p.stdout


@pytest.mark.parametrize("name", ["llama3", "qwen2", "gemma"])
def test_verify_checks_tokenizer_and_against_source(family, name, run_lmpack):
    _, m, ckpt, _ = family(name)
    v = run_lmpack("verify", m.path, "--against", ckpt.path, "--json", "-n", "24")
    assert v.returncode == 0, v.stdout + v.stderr
    checks = json.loads(v.stdout)["checks"]
    assert checks["tokenizer"]["status"] == "pass"
    assert checks["tokenizer"]["summary"].startswith("tokenizers, ") and "1 chat template" in checks["tokenizer"]["summary"]
    assert checks["config"]["status"] == "pass" and checks["logits"]["status"] == "pass"


def test_verify_fails_a_broken_template_or_wrong_eos(family, tmp_path, run_lmpack):
    import checkpoints

    _, m, _, _ = family("qwen2")

    def broken_template(h):
        h["tokenizer"]["chat_template"] = "{% for m in messages %}{{ m.content }"

    def wrong_eos(h):
        h["tokenizer"]["special_tokens"]["eos_token"] = "<|im_start|>"

    for mutate, says in ((broken_template, "chat template"), (wrong_eos, "eos_token")):
        bad = checkpoints.write_lmp_with_header(m.path, tmp_path / f"{says}.lmp", mutate)
        v = run_lmpack("verify", bad, "--json")
        assert v.returncode == 1
        tok = json.loads(v.stdout)["checks"]["tokenizer"]
        assert tok["status"] == "fail" and says in json.dumps(tok), tok


def _bad_folder(family, tmp_path, name="qwen2"):
    import checkpoints

    _, _, ckpt, _ = family(name)
    return checkpoints.copy_checkpoint(ckpt.path, tmp_path / "src")


def _assert_refused(run_lmpack, src, tmp_path, says: str):
    out = tmp_path / "out.lmp"
    p = run_lmpack("convert", src, "-o", out)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and says in lines[0], p.stderr
    assert not out.exists() and [f.name for f in tmp_path.iterdir()] == ["src"]


@pytest.mark.parametrize("case", ["not-json", "not-loadable", "template-syntax", "template-list", "template-render",
                                  "vocab-too-large",
                                  "config-not-json", "bad-generation"])
def test_bad_tokenizer_input_is_one_line_and_no_file(family, tmp_path, run_lmpack, case):
    src = _bad_folder(family, tmp_path)
    cfg_path = src / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    if case == "not-json":
        (src / "tokenizer.json").write_text('{"version": "1.0", "model": ')
        says = "tokenizer.json"
    elif case == "not-loadable":
        doc = json.loads((src / "tokenizer.json").read_text())
        doc["model"]["type"] = "NoSuchModel"
        (src / "tokenizer.json").write_text(json.dumps(doc))
        says = "not a tokenizer.json the tokenizers library loads"
    elif case == "template-syntax":
        cfg["chat_template"] = "{% for message in messages %}{{ message.content }}"
        cfg_path.write_text(json.dumps(cfg))
        says = "chat template syntax error on line 1"
    elif case == "template-list":
        cfg["chat_template"] = [{"name": "default", "template": "{{ x "}]
        cfg_path.write_text(json.dumps(cfg))
        says = "default chat template syntax error"
    elif case == "template-render":
        cfg["chat_template"] = "{{ messages[5]['content'] }}"
        cfg_path.write_text(json.dumps(cfg))
        says = "chat template: "
    elif case == "vocab-too-large":
        config = json.loads((src / "config.json").read_text())
        config.update(vocab_size=100, bos_token_id=0, eos_token_id=1)  # only the tokenizer is too large
        (src / "config.json").write_text(json.dumps(config))
        says = "tokens but the model only 100 embedding rows"
    elif case == "config-not-json":
        cfg_path.write_text("{not json")
        says = "tokenizer_config.json: not valid JSON"
    else:
        (src / "generation_config.json").write_text(json.dumps({"temperature": "hot"}))
        says = "generation_config.json: temperature must be"
    _assert_refused(run_lmpack, src, tmp_path, says)


def test_tokenizer_json_wins_over_tokenizer_model(family, tmp_path, sp_model_path):
    from lmpack.convert import convert

    src = _bad_folder(family, tmp_path, "llama3")
    (src / "tokenizer.model").write_bytes(sp_model_path.read_bytes())
    out = convert(src, tmp_path / "both.lmp")
    with lmpack.load(out) as m:
        assert m.tokenizer.kind == "tokenizers"
    (src / "tokenizer.model").write_text("IQ== 0\n")  # a tiktoken file beside tokenizer.json is not read
    convert(src, tmp_path / "both2.lmp")


def test_quantize_keeps_tokenizer_fields(family, tmp_path):
    from lmpack.convert.lmp_source import LmpSource
    from lmpack.convert.pipeline import run

    _, m, _, _ = family("llama3")
    src = LmpSource(m.path)
    try:
        out = run(src, tmp_path / "q8.lmp", dtype="q8_0")
    finally:
        src.close()
    with lmpack.load(out) as q:
        assert q.tokenizer.chat_template == m.tokenizer.chat_template
        assert q.generation_defaults == m.generation_defaults
        assert q.tokenizer.encode("hello world") == m.tokenizer.encode("hello world")


@pytest.mark.parametrize("name,flags", [("qwen2", {"add_bos_token": True, "bos_token": "<|endoftext|>"}),
                                        ("llama3", {"add_bos_token": False}),
                                        ("mistral-tekken", {"add_eos_token": True})])
def test_add_bos_flags_follow_transformers(family, tmp_path, name, flags):
    """Whatever transformers makes of add_bos_token/add_eos_token beside a tokenizer.json, lmpack does too."""
    from lmpack.convert.tokenizer_files import read_tokenizer
    from lmpack.runtime.tokenizer import open_tokenizer

    _, _, _, tok_dir = family(name)
    folder = tmp_path / name
    folder.mkdir()
    for p in tok_dir.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, **flags}))
    ref = H.auto_tokenizer(folder)
    tf = read_tokenizer(folder)
    tok = open_tokenizer(tf.kind, tf.blob, tf.bos_id or 0, tf.eos_ids, tf.n_ids, tf.header)
    for text in ("hello world", ""):
        assert tok.encode(text, bos=True) == ref(text)["input_ids"]


def test_files_without_the_new_header_fields_still_load(tiny_lmp, tmp_path):
    """A file from before tokenizer fields and generation defaults existed: sentencepiece, BOS added."""
    import checkpoints

    def strip(h):
        h["tokenizer"] = {k: h["tokenizer"][k] for k in ("kind", "offset", "nbytes", "crc32c")}
        h.pop("generation", None)

    old = checkpoints.write_lmp_with_header(tiny_lmp, tmp_path / "old.lmp", strip)
    with lmpack.load(old) as m, lmpack.load(tiny_lmp) as new:
        assert m.tokenizer.encode("the cat") == new.tokenizer.encode("the cat")
        assert m.tokenizer.encode("the cat")[0] == m.config.bos_id
        assert m.tokenizer.chat_template is None and m.generation_defaults == {}


@pytest.mark.parametrize("field,value,says", [
    ("kind", "tiktoken", "unsupported tokenizer"),
    ("chat_template", 5, "tokenizer.chat_template is int"),
    ("special_tokens", {"bos_token": 1}, "tokenizer.special_tokens"),
    ("add_bos", "yes", "tokenizer.add_bos"),
    ("generation", {"temperature": "hot"}, "generation.temperature"),
    ("generation", {"top_k": -1}, "generation.top_k"),
    ("generation", [], "generation is not an object"),
])
def test_bad_tokenizer_header_fields_are_refused(tiny_lmp, tmp_path, field, value, says):
    import checkpoints

    def mutate(h):
        if field == "generation":
            h["generation"] = value
        else:
            h["tokenizer"][field] = value

    bad = checkpoints.write_lmp_with_header(tiny_lmp, tmp_path / "bad.lmp", mutate)
    with pytest.raises(lmpack.LmpackError, match=says):
        lmpack.load(bad)


LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if loop.index0 == 0 and system_message != false %}{% set content = "
    "'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = "
    "message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + "
    "' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}")


@pytest.mark.parametrize("legacy", [None, True, False])
@pytest.mark.parametrize("which", ["trained", "llama2"])
def test_sentencepiece_chat_template_ids_equal_transformers(tmp_path, sp_model_path, which, legacy):
    """A folder with only tokenizer.model and Llama 2's template: transformers' ids, both legacy modes."""
    from lmpack.convert.tokenizer_files import read_tokenizer
    from lmpack.runtime.tokenizer import open_tokenizer

    import checkpoints

    path = sp_model_path if which == "trained" else checkpoints.LLAMA2_TOKENIZER
    if not path.is_file():
        pytest.skip(f"{path} not present")
    (tmp_path / "tokenizer.model").write_bytes(path.read_bytes())
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
           "tokenizer_class": "LlamaTokenizer", "chat_template": LLAMA2_TEMPLATE}
    if legacy is not None:
        cfg["legacy"] = legacy
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    ref = H.auto_tokenizer(tmp_path)
    tf = read_tokenizer(tmp_path)
    tok = open_tokenizer(tf.kind, tf.blob, tf.bos_id, tf.eos_ids, tf.n_ids, tf.header)
    assert tok.kind == "sentencepiece"
    for key, conv in CONVERSATIONS.items():
        want = ref.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
        want = want["input_ids"] if hasattr(want, "keys") else want
        assert tok.apply_chat_template(conv) == want, key


def test_streamed_pieces_join_to_the_decoded_text(family):
    """Byte-level tokens split characters (emoji, CJK): the stream holds them back and the pieces
    always join to exactly what decoding all ids at once gives."""
    import random

    from lmpack.runtime.tokenizer import StreamDecoder

    _, m, _, _ = family("qwen2")
    tok = m.tokenizer
    anchor = tok.encode("Hello", bos=False)
    emoji = tok.encode("🦙 日本語 🙂", bos=False)
    rng = random.Random(0)
    for trial in range(200):
        ids = [rng.randrange(m.config.vocab_size) for _ in range(rng.randint(0, 12))]
        if trial % 2:
            ids = emoji[:rng.randint(0, len(emoji))] + ids
        d = StreamDecoder(tok, anchor)
        text = "".join(d.push(i) for i in ids) + d.flush()
        assert text == tok.decode(anchor + ids)[len(tok.decode(anchor)):], ids


def test_template_that_refuses_by_its_own_exception_converts(family, tmp_path):
    from lmpack.convert import convert

    src = _bad_folder(family, tmp_path, "qwen2")
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg["chat_template"] = ("{% if messages[0]['role'] != 'system' %}{{ raise_exception('a system message "
                            "comes first') }}{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    with lmpack.load(convert(src, tmp_path / "out.lmp")) as m:
        with pytest.raises(lmpack.LmpackError, match="a system message comes first"):
            m.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
        assert m.tokenizer.apply_chat_template([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]) \
            == m.tokenizer.encode("su", bos=False)


QWEN3_LIKE = """{%- for message in messages %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""


def test_template_keyword_arguments_as_in_transformers(family, tmp_path):
    from lmpack.convert import convert

    src = _bad_folder(family, tmp_path, "qwen2")
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": QWEN3_LIKE}))
    ref = H.auto_tokenizer(src)
    conv = CONVERSATIONS["turns"]
    with lmpack.load(convert(src, tmp_path / "out.lmp")) as m:
        for kwargs in ({}, {"enable_thinking": False}, {"enable_thinking": True}):
            want = ref.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, **kwargs)
            want = want["input_ids"] if hasattr(want, "keys") else want
            assert m.tokenizer.apply_chat_template(conv, **kwargs) == want, kwargs


def test_template_chat_context_full_is_refused_before_starting(family):
    from lmpack.runtime.chat import ChatSession, ContextFull

    _, m, _, _ = family("qwen2")
    small = lmpack.load(m.path, threads=1, max_context=120)
    s = ChatSession(small)
    with pytest.raises(ContextFull):
        list(s.reply("word " * 200, max_tokens=4))
    assert s.pos == 0 and s.messages == []
    list(s.reply("hi", max_tokens=100, temperature=0, stop_at_eos=False))
    assert small.last_stats.stopped_by == "context" and s.pos == small.n_ctx


@pytest.mark.parametrize("layout", ["jinja-files", "config-list"])
def test_template_sources_and_named_templates_as_transformers_finds_them(family, tmp_path, layout):
    from lmpack.convert import convert

    src = _bad_folder(family, tmp_path, "qwen2")
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    default = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
    tool_use = "TOOLS{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    if layout == "jinja-files":  # chat_template.jinja wins over tokenizer_config.json's template
        (src / "chat_template.jinja").write_text(default)
        (src / "additional_chat_templates").mkdir()
        (src / "additional_chat_templates" / "tool_use.jinja").write_text(tool_use)
    else:
        cfg["chat_template"] = [{"name": "default", "template": default}, {"name": "tool_use", "template": tool_use}]
        (src / "tokenizer_config.json").write_text(json.dumps(cfg))
    ref = H.auto_tokenizer(src)
    conv = CONVERSATIONS["system-turns"]
    with lmpack.load(convert(src, tmp_path / "out.lmp")) as m:
        for name in (None, "tool_use"):
            want = ref.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, chat_template=name)
            want = want["input_ids"] if hasattr(want, "keys") else want
            assert m.tokenizer.apply_chat_template(conv, template=name) == want, name
        assert sorted(m.tokenizer.chat_templates) == ["tool_use"]


def test_piece_of_every_kind(family, tiny_lmp):
    _, m, _, _ = family("llama3")
    assert m.tokenizer.piece(m.config.bos_id) == "<|begin_of_text|>"
    assert m.tokenizer.piece(m.config.vocab_size + 5) == ""
    with lmpack.load(tiny_lmp) as sp:
        assert sp.tokenizer.piece(sp.config.bos_id) == "<s>" and sp.tokenizer.piece(10 ** 6) == ""
