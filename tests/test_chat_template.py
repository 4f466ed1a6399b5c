"""The chat template environment against transformers' own renderer on the constructs real templates
use: whitespace control with trim/lstrip blocks, namespaces, loop controls, tojson (no HTML
escaping, indent), dict(), string methods and tests, {% generation %}, raise_exception, special
tokens as variables, extra keyword arguments; and the sandbox holding against escapes."""
from __future__ import annotations

import pytest

from lmpack.errors import LmpackError
from lmpack.formats.chat_template import TemplateRefused, compile_template, render

CONVS = [
    [{"role": "user", "content": "Hi <b>&</b> 'quoted' \"double\""}],
    [{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "Hello"},
     {"role": "assistant", "content": "Hi!", "reasoning_content": None}, {"role": "user", "content": "日本 🦙\n"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4", "reasoning": "add them"},
     {"role": "user", "content": "and 3+3?"}],
    [{"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]}],
]

TEMPLATES = {
    "blocks": """{% for m in messages %}
    {% if m.role == 'system' %}
        SYS: {{ m.content | trim }}
    {% else %}
        {{ m.role | upper }}: {{ m.content if m.content is string else m.content | map(attribute='text') | join(' ') }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}ASSISTANT:{% endif %}""",
    "namespace-loopcontrols": """{%- set ns = namespace(count=0, last='') %}
{%- for m in messages %}{%- if m.role == 'assistant' %}{% continue %}{% endif %}
{%- set ns.count = ns.count + 1 %}{%- set ns.last = m.role %}{%- if loop.index > 3 %}{% break %}{% endif %}
[{{ loop.index0 }}:{{ m.role }}]
{%- endfor %}{{ ns.count }} {{ ns.last }}""",
    "reasoning": """{% for m in messages %}{{ m.role }}:{{ m.reasoning_content | default('-') }}/{{ m.thinking | default('-') }};{% endfor %}""",
    "tojson": """{{ messages | tojson }}|{{ messages[0] | tojson(indent=2) }}|{{ {'b': 1, 'a': [1, 2]} | tojson(sort_keys=true) }}""",
    "dict-and-strings": """{%- set d = dict(a=1, b='x') %}{{ d.a }}{{ d['b'] }}
{%- for m in messages %}{{ '|' + m.role.split('s')[0] + '|' + (m.content is string) | string }}
{%- if m.content is string %}{{ m.content.strip().replace('\\n', ' ').startswith('H') }}{% endif %}{% endfor %}""",
    "generation": """{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{{ eos_token }}{% endgeneration %}{% else %}{{ m.content }}{% endif %}{% endfor %}""",
    "special-tokens": """{{ bos_token }}{% for m in messages %}{{ m.role }}{{ eos_token }}{% endfor %}{{ pad_token is defined }}{{ custom_flag | default('none') }}""",
}
VARIABLES = {"bos_token": "<s>", "eos_token": "</s>"}


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("gen", [True, False])
def test_renders_like_transformers(name, gen):
    from transformers.utils.chat_template_utils import _normalize_chat_messages, render_jinja_template

    for conv in CONVS:
        for extra in ({}, {"custom_flag": "on"}):
            # as apply_chat_template does: None-valued keys dropped, then rendered (reasoning aliased)
            want, _ = render_jinja_template([_normalize_chat_messages(conv)], chat_template=TEMPLATES[name],
                                            add_generation_prompt=gen, **VARIABLES, **extra)
            got = render(TEMPLATES[name], conv, gen, {**VARIABLES, **extra})
            assert got == want[0], (name, conv)


def test_raise_exception_is_a_refusal():
    t = "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}ok"
    assert render(t, [{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(TemplateRefused, match="System role not supported"):
        render(t, [{"role": "system", "content": "x"}])


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__ }}{{ ().__class__.__base__ }}",
    "{% set ns = namespace() %}{% set ns.__dict__ = 1 %}",
    "{{ cycler.__init__.__globals__ }}",
])
def test_sandbox_refuses_escapes(source):
    with pytest.raises(LmpackError):
        render(source, [{"role": "user", "content": "x"}])


def test_syntax_errors_name_the_line():
    with pytest.raises(LmpackError, match="syntax error on line 2"):
        compile_template("ok\n{% for m in messages %}")
    with pytest.raises(LmpackError, match="no filter named 'nosuch'|syntax error"):
        compile_template("{{ x | nosuch }}")


def test_messages_must_be_a_conversation():
    for bad in ([], "hi", [1], None):
        with pytest.raises(LmpackError, match="conversation|chat message"):
            render("{{ messages }}", bad)
