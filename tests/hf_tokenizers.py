"""Builders of each family's tokenizer folder (tokenizer.json + tokenizer_config.json +
generation_config.json), trained at test time, and the transformers oracle that loads them.

Byte-level BPE families (Llama 3, Qwen2/2.5/3, SmolLM2, Mistral's tekken in its HF form) are trained
with the `tokenizers` library using each family's real pre-tokenizer; sentencepiece-style families
(Gemma, Phi-3) start from a sentencepiece model trained here and are turned into tokenizer.json by
transformers itself, as their Hub folders were. Special tokens and chat templates follow each
family's published format (written for these tests). Nothing here uses lmpack.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import checkpoints

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?"
                  r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")

LLAMA3_TEMPLATE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

QWEN_TEMPLATE = """{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if not (loop.first and message.role == "system") %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

SMOLLM2_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
                    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                    "{% endif %}")

MISTRAL_TEMPLATE = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST]" + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST]" + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- message["content"] + eos_token}}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

GEMMA_TEMPLATE = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                  "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
                  "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
                  "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
                  "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
                  "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")

PHI3_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + "
                 "'<|end|>\n'}}{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
                 "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
                 "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}"
                 "{% endif %}")

OLMO2_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ '<|system|>\n' + "
                  "message['content'] + '\n' }}{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + "
                  "'\n' }}{% elif message['role'] == 'assistant' %}{% if not loop.last %}{{ '<|assistant|>\n'  + "
                  "message['content'] + eos_token + '\n' }}{% else %}{{ '<|assistant|>\n'  + message['content'] + "
                  "eos_token }}{% endif %}{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}"
                  "{% endif %}{% endfor %}")

_CODE = [
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }\n",
    "if __name__ == '__main__':\n\tmain()\n",
    "SELECT id, name FROM users WHERE age >= 21;\n",
    "x = [1, 2, 3]; y = {'a': 1}; print(f\"{x!r}\")\n",
    "I'm sure it's fine, we'll see, they've gone, you're right, he'd know.",
    "Numbers 1234567890 3.14159 2024-12-31 100,000 and 007.",
]


def training_text() -> list[str]:
    return checkpoints.corpus_lines(1500) + _CODE * 40


def _byte_level(pattern: str | None, specials: list[str], vocab_size: int, digits: bool = False, nfc: bool = False,
                ignore_merges: bool = False):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    if nfc:
        tok.normalizer = normalizers.NFC()
    if pattern is not None:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:  # SmolLM2: every digit alone, then GPT-2's own regex
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials if specials else [],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(training_text(), trainer=trainer)
    return tok


def _added(tok, content: str) -> dict:
    return {"content": content, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False,
            "special": True}


def _write(folder: Path, tok, config: dict, generation: dict | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    decoder = {}
    for t in json.loads((folder / "tokenizer.json").read_text())["added_tokens"]:
        decoder[str(t["id"])] = {k: t[k] for k in ("content", "lstrip", "rstrip", "normalized", "single_word", "special")}
    config = {"added_tokens_decoder": decoder, **config}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    if generation is not None:
        (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return folder


def llama3(folder: Path) -> Path:
    from tokenizers import AddedToken, processors

    tok = _byte_level(LLAMA3_PATTERN, [], 700, ignore_merges=True)
    names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
             "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
             "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in names])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)])])
    ids = {n: tok.token_to_id(n) for n in names}
    return _write(folder, tok, {
        "bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "clean_up_tokenization_spaces": True,
        "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 131072,
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": LLAMA3_TEMPLATE,
    }, {"bos_token_id": bos, "eos_token_id": [ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]],
        "do_sample": True, "temperature": 0.6, "top_p": 0.9})


def qwen2(folder: Path) -> Path:
    from tokenizers import processors

    tok = _byte_level(QWEN_PATTERN, [], 700, nfc=True)
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(n, special=True, normalized=False)
                            for n in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    eot, im_end = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|im_end|>")
    return _write(folder, tok, {
        "add_prefix_space": False, "bos_token": None, "chat_template": QWEN_TEMPLATE,
        "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
        "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }, {"bos_token_id": eot, "eos_token_id": [im_end, eot], "do_sample": True, "temperature": 0.7, "top_p": 0.8,
        "top_k": 20, "repetition_penalty": 1.05, "pad_token_id": eot})


def smollm2(folder: Path) -> Path:
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>"]
    tok = _byte_level(None, specials, 700)
    return _write(folder, tok, {
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "bos_token": "<|im_start|>",
        "chat_template": SMOLLM2_TEMPLATE, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>",
        "model_max_length": 8192, "pad_token": "<|im_end|>", "tokenizer_class": "GPT2Tokenizer",
        "unk_token": "<|endoftext|>", "vocab_size": 49152,
    }, {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2})


def mistral_tekken(folder: Path) -> Path:
    from tokenizers import processors

    specials = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]",
                "[TOOL_RESULTS]", "[/TOOL_RESULTS]", "[TOOL_CALLS]", "<pad>", "[PREFIX]", "[MIDDLE]", "[SUFFIX]"]
    tok = _byte_level(TEKKEN_PATTERN, specials, 700)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B:1",
                                                       special_tokens=[("<s>", 1)])
    return _write(folder, tok, {
        "bos_token": "<s>", "chat_template": MISTRAL_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "</s>", "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>",
    }, {"bos_token_id": 1, "eos_token_id": 2})


def olmo2(folder: Path) -> Path:
    """GPT-2-style byte-level BPE (GPT-2's own regex), as OLMo 2's cl100k-derived tokenizer runs it."""
    from tokenizers import AddedToken, pre_tokenizers, processors

    tok = _byte_level(None, [], 700)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.add_special_tokens([AddedToken(n, special=True, normalized=False)
                            for n in ("<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>")])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    eot = tok.token_to_id("<|endoftext|>")
    return _write(folder, tok, {
        "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "unk_token": None,
        "chat_template": OLMO2_TEMPLATE, "clean_up_tokenization_spaces": False, "model_max_length": 4096,
        "tokenizer_class": "GPT2Tokenizer",
    }, {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": tok.token_to_id("<|pad|>")})


def _spm_model(path: Path, pieces: dict, user_defined: list[str], vocab_size: int = 500) -> Path:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_text()), model_writer=buf, vocab_size=vocab_size, model_type="bpe",
        byte_fallback=True, character_coverage=0.9995, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
        user_defined_symbols=user_defined, num_threads=1, minloglevel=2, **pieces)
    path.write_bytes(buf.getvalue())
    return path


def _via_transformers(folder: Path, cls_name: str, spm_pieces: dict, user_defined: list[str], config: dict,
                      generation: dict) -> Path:
    """A sentencepiece model made into tokenizer.json by transformers' own class, then saved."""
    import tempfile

    import pytest

    pytest.importorskip("google.protobuf")  # transformers reads sentencepiece protos with it
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        _spm_model(src / "tokenizer.model", spm_pieces, user_defined)
        (src / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": cls_name, **config}))
        tok = getattr(transformers, cls_name).from_pretrained(src)
        tok.add_special_tokens({"additional_special_tokens": user_defined})
        tok.chat_template = config.get("chat_template")
        folder.mkdir(parents=True, exist_ok=True)
        tok.save_pretrained(folder)
    (folder / "tokenizer.model").unlink(missing_ok=True)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    if "chat_template" not in cfg and not (folder / "chat_template.jinja").is_file():
        cfg["chat_template"] = config["chat_template"]
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return folder


def gemma(folder: Path) -> Path:
    return _via_transformers(folder, "GemmaTokenizer",
                             dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
                                  bos_piece="<bos>", unk_piece="<unk>"),
                             ["<start_of_turn>", "<end_of_turn>"],
                             {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
                              "add_bos_token": True, "add_eos_token": False, "chat_template": GEMMA_TEMPLATE},
                             {"bos_token_id": 2, "eos_token_id": [1, 5], "pad_token_id": 0})


def phi3(folder: Path) -> Path:
    return _via_transformers(folder, "LlamaTokenizer",
                             dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1),
                             ["<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>"],
                             {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                              "unk_token": "<unk>", "add_bos_token": False, "add_eos_token": False,
                              "legacy": False, "chat_template": PHI3_TEMPLATE},
                             {"bos_token_id": 1, "eos_token_id": [2, 3, 5], "pad_token_id": 2})


FAMILIES = {"llama3": llama3, "qwen2": qwen2, "smollm2": smollm2, "olmo2": olmo2, "mistral-tekken": mistral_tekken,
            "gemma": gemma, "phi3": phi3}


def n_tokens(folder: Path) -> int:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return 1 + max(tok.get_vocab(with_added_tokens=True).values())


def auto_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def llama3_specials(llama31: bool = True) -> list[str]:
    """Meta's 256 Llama 3 special tokens in id order (3.1 names more of them than 3.0)."""
    if llama31:
        named = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                 "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                 "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
        return named + [f"<|reserved_special_token_{i}|>" for i in range(3, 3 + 256 - len(named))]
    named = ["<|begin_of_text|>", "<|end_of_text|>"] + [f"<|reserved_special_token_{i}|>" for i in range(4)] + \
        ["<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>"]
    return named + [f"<|reserved_special_token_{i}|>" for i in range(5, 5 + 256 - len(named))]


def llama3_tiktoken(folder: Path, llama31: bool = True) -> Path:
    """Meta's Llama 3 tokenizer.model (tiktoken ranks, from a byte-level BPE trained here) and,
    beside it, the HF twin's tokenizer.json made by transformers' own TikTokenConverter."""
    import base64

    import pytest

    pytest.importorskip("tiktoken")  # transformers' TikTokenConverter reads the ranks with it
    from tokenizers import processors
    from transformers.convert_slow_tokenizer import TikTokenConverter

    trained = _byte_level(LLAMA3_PATTERN, [], 700)
    chars = {c: b for b, c in _gpt2_chars().items()}
    vocab = trained.get_vocab()
    lines = [base64.b64encode(bytes(chars[c] for c in tok)).decode() + f" {rank}"
             for tok, rank in sorted(vocab.items(), key=lambda kv: kv[1])]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_text("\n".join(lines) + "\n")
    specials = llama3_specials(llama31)
    tok = TikTokenConverter(vocab_file=str(folder / "tokenizer.model"), pattern=LLAMA3_PATTERN,
                            extra_special_tokens=specials).converted()
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
        "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": True}))
    return folder


def _gpt2_chars() -> dict[int, str]:
    """GPT-2's byte -> printable character map (as in its encoder.py), written out for the tests."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    out, n = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + n)
            n += 1
    return out


def tiktoken_encoding(folder: Path, llama31: bool = True):
    """tiktoken itself on the same ranks file, with Llama 3's pattern and special tokens."""
    import pytest

    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(str(folder / "tokenizer.model"))
    return tiktoken.Encoding("llama3-test", pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                             special_tokens={s: len(ranks) + i for i, s in enumerate(llama3_specials(llama31))})
