"""Chat templates: the Jinja text a model folder ships, rendered the way transformers renders it.

A template is untrusted code from a model folder, so it runs in jinja2's immutable sandbox with
the environment transformers documents for chat templates: `trim_blocks` and `lstrip_blocks`,
the loop controls (`break`/`continue`), a `tojson` filter that does not HTML-escape, the globals
`raise_exception`, `strftime_now`, `dict` and `namespace`, and a `{% generation %}` block that
renders its body. The special tokens (`bos_token`, `eos_token`, ...) and `add_generation_prompt`
are template variables. `check_template` is what `convert` and `verify` run to refuse a broken
template: it must compile and render a one-message conversation (or refuse it by its own
`raise_exception`, which is the template working as written).
"""
from __future__ import annotations

import datetime
import functools
import json
import re
import threading
from typing import Any

from lmpack.errors import LmpackError


# Bounds on the work of one render (a template is untrusted input): loop iterations over range(),
# and the size of any string or list the template builds and of the text it renders.
MAX_TEMPLATE_STEPS = 1_000_000
MAX_TEMPLATE_TEXT = 16 << 20
_STEPS = threading.local()


def _environment():
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    import jinja2.utils
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks the assistant's tokens for training
        masks; rendering only needs its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Raised(jinja2.exceptions.TemplateError):
        """What a template's own raise_exception() raises: it refuses this conversation."""

    def raise_exception(message):
        raise Raised(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes <, >, & and ' for HTML, which would change the prompt text
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    class Dict:
        """`dict(...)` and `dict.fromkeys(...)` without exposing the dict type itself."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class Namespace(jinja2.utils.Namespace):
        """A namespace that refuses underscore names, the way into Python internals."""

        def __init__(*args, **kwargs):
            self, rest = args[0], args[1:]
            attrs = dict(*rest, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"a namespace cannot hold the name {name!r}")

    class Bounded(ImmutableSandboxedEnvironment):
        """The sandbox with a bound on work: `range` iterations count against a per-render budget,
        and `*`, `**` and `+` refuse results larger than MAX_TEMPLATE_TEXT (a template is input:
        nested loops or repeated doubling must not hang or exhaust memory)."""

        intercepted_binops = frozenset(["*", "**", "+", "%"])

        def call_binop(self, context, operator, left, right):
            if operator == "%" and isinstance(left, str) and \
                    any(int(w) > MAX_TEMPLATE_TEXT for w in re.findall(r"%[-#0 +]*(\d{1,30})", left)):
                raise jinja2.exceptions.SecurityError("chat template formats a value too wide")
            if operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)) and \
                    abs(right) > 64 and abs(left) > 1:
                raise jinja2.exceptions.SecurityError("chat template computes a power too large")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_TEMPLATE_TEXT:
                        raise jinja2.exceptions.SecurityError("chat template builds a value too large")
            if operator == "+" and isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)) \
                    and len(left) + len(right) > MAX_TEMPLATE_TEXT:
                raise jinja2.exceptions.SecurityError("chat template builds a value too large")
            return super().call_binop(context, operator, left, right)

    class BoundedRange:
        """range() whose iteration counts against the render's budget (len, [], `in` as range's)."""

        def __init__(self, r: range):
            self._r = r

        def __len__(self):
            return len(self._r)

        def __getitem__(self, i):
            return self._r[i]

        def __contains__(self, x):
            return x in self._r

        def __iter__(self):
            return self._count(iter(self._r))

        def __reversed__(self):
            return self._count(reversed(self._r))

        @staticmethod
        def _count(values):
            for i in values:
                _STEPS.left -= 1
                if _STEPS.left < 0:
                    raise jinja2.exceptions.SecurityError("chat template does too much work (loop iterations)")
                yield i

    def bounded_range(*args):
        r = range(*args)
        if len(r) > MAX_TEMPLATE_STEPS:
            raise jinja2.exceptions.SecurityError(f"chat template asks for a range of {len(r)} values")
        return BoundedRange(r)

    env = Bounded(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols])
    env.globals["range"] = bounded_range
    center = env.filters["center"]
    indent = env.filters["indent"]

    def bounded_center(value, width=80):
        if isinstance(width, int) and width > MAX_TEMPLATE_TEXT:
            raise jinja2.exceptions.SecurityError("chat template centers in a width too large")
        return center(value, width)

    def bounded_indent(s, width=4, *args, **kwargs):
        if isinstance(width, int) and width > MAX_TEMPLATE_TEXT or isinstance(width, str) and len(width) > 4096:
            raise jinja2.exceptions.SecurityError("chat template indents by a width too large")
        return indent(s, width, *args, **kwargs)

    env.filters.update(center=bounded_center, indent=bounded_indent)
    env.raised = Raised
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=strftime_now, dict=Dict(), namespace=Namespace)
    return env


class TemplateRefused(LmpackError):
    """The template itself refused the conversation (its raise_exception), e.g. a system message
    for a model without a system role."""


@functools.lru_cache(maxsize=1)
def environment():
    return _environment()


@functools.lru_cache(maxsize=16)
def compile_template(source: str):
    """The compiled template, or an LmpackError naming the line and the syntax error."""
    import jinja2

    if not isinstance(source, str):
        raise LmpackError(f"a chat template must be a string, got {type(source).__name__}")
    try:
        return environment().from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise LmpackError(f"chat template syntax error on line {e.lineno}: {e.message}") from None
    except jinja2.TemplateError as e:
        raise LmpackError(f"chat template does not compile: {e}") from None


def _plain(value: Any) -> Any:
    """Messages rebuilt from plain JSON types only, so a template never sees a caller's objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return f"<{type(value).__name__}>"


REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def check_messages(messages: Any) -> list[dict]:
    """The conversation as a list of dicts without None values, reasoning aliased (as transformers
    passes it to the template)."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise LmpackError("a conversation must be a non-empty list of messages")
    out = []
    for m in messages:
        if not isinstance(m, dict):
            raise LmpackError(f"a chat message must be a dict with 'role' and 'content', got {type(m).__name__}")
        m = {k: v for k, v in _plain(m).items() if v is not None}
        # A reply's reasoning under any of its names is seen under all of them, as transformers
        # does: templates read `reasoning_content` (Qwen3) or `thinking` (gpt-oss).
        reasoning = next((m[k] for k in REASONING_FIELDS if k in m), None)
        if reasoning is not None:
            m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
        out.append(m)
    return out


def render(source: str, messages: Any, add_generation_prompt: bool = True,
           variables: dict[str, Any] | None = None) -> str:
    """The conversation rendered to text; `variables` are the special tokens (bos_token, ...)."""
    import jinja2

    template = compile_template(source)
    try:
        context = {"tools": None, "documents": None, **_plain(dict(variables or {}))}
        for key in ("messages", "add_generation_prompt"):  # given as arguments, not variables
            context.pop(key, None)
        _STEPS.left = MAX_TEMPLATE_STEPS
        out, size = [], 0
        for piece in template.generate(**context, messages=check_messages(messages),
                                       add_generation_prompt=bool(add_generation_prompt)):
            size += len(piece)
            if size > MAX_TEMPLATE_TEXT:
                raise LmpackError(f"chat template renders more than {MAX_TEMPLATE_TEXT} characters")
            out.append(piece)
        return "".join(out)
    except environment().raised as e:
        raise TemplateRefused(f"chat template: {e}") from None
    except jinja2.TemplateError as e:
        raise LmpackError(f"chat template: {e}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, ZeroDivisionError) as e:
        raise LmpackError(f"chat template failed: {type(e).__name__}: {e}") from None


def check_template(source: str, variables: dict[str, Any] | None = None) -> None:
    """Raise LmpackError unless `source` compiles and renders `[user]` with a generation prompt."""
    compile_template(source)
    try:
        render(source, [{"role": "user", "content": "Hello"}], True, variables)
    except TemplateRefused:
        pass
