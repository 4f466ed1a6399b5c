"""A multi-turn conversation over one KV cache: the model's chat template, Llama 2's format, or
plain continuation.

With a chat template (embedded from the model folder), each turn renders the whole conversation
the way transformers does and feeds only what the cache does not already hold: the ids after the
longest common prefix of the rendered conversation and the ids in the cache. When the template
renders earlier turns unchanged (most do), that is just the new message; when it does not (a system
prompt that moves, reasoning a template strips from old replies, a reply whose text re-tokenizes
differently), the cache is re-fed from the first id that changed. Without a template, Llama 2 chat
models get `[INST] ... [/INST]` turns and other models continue the text the user types.
"""
from __future__ import annotations

from typing import Iterator

from lmpack.errors import LmpackError
from lmpack.runtime.model import Model


class ContextFull(LmpackError):
    """The next turn does not fit in the KV cache."""


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ChatSession:
    def __init__(self, model: Model, system: str | None = None, chat_format: str | None = "auto"):
        """`chat_format`: "auto" (the template if the file has one, else the config's format), "template",
        "llama2", or None (plain continuation)."""
        self.model = model
        tok = model.tokenizer
        if chat_format == "auto":
            chat_format = "template" if tok.chat_template is not None else model.config.chat_format
        if chat_format == "template" and tok.chat_template is None:
            raise LmpackError("this model has no chat template")
        self.format = chat_format
        self.system = system
        if self.format == "template" and system:
            try:  # refuse now, not after the user typed a message
                tok.render_chat([{"role": "system", "content": system}, {"role": "user", "content": "hi"}])
            except LmpackError as e:
                raise LmpackError(f"this model's chat template takes no system prompt ({e})") from None
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the cache is simply overwritten from position 0)."""
        self.pos = 0
        self.history: list[int] = []  # ids in the cache, positions 0..pos-1
        self._pending: list[int] = []  # ids sampled but not yet fed to the model
        self._turns = 0
        self.messages: list[dict] = [{"role": "system", "content": self.system}] \
            if self.format == "template" and self.system else []

    @property
    def tokens_used(self) -> int:
        return self.pos + len(self._pending)

    def _turn_ids(self, user: str) -> tuple[int, list[int]]:
        """(position to feed from, ids to feed there) for the next user message."""
        tok = self.model.tokenizer
        if self.format == "template":
            ids = tok.apply_chat_template([*self.messages, {"role": "user", "content": user}],
                                          add_generation_prompt=True)
            # Positions < pos hold history; what was sampled last (pending) is not in the cache yet.
            keep = min(_common_prefix(self.history, ids), self.pos, max(0, len(ids) - 1))
            return keep, ids[keep:]
        if self.format == "llama2":
            text = user.strip()
            if self._turns == 0 and self.system:
                text = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{text}"
            ids = tok.encode(f"[INST] {text} [/INST]", bos=True)
            if self._pending and self._pending[-1] not in tok.eos_ids:
                # the reply was cut short: close it the way the format expects
                ids = [next(iter(sorted(tok.eos_ids))), *ids]
            return self.pos, [*self._pending, *ids]
        # plain continuation: the conversation is one running text
        ids = tok.encode(user, bos=self._turns == 0)
        if not ids:
            raise LmpackError("empty message (this model's tokenizer adds no BOS token to start from)")
        return self.pos, [*self._pending, *ids]

    def reply(self, user: str, max_tokens: int = 256, temperature: float | None = None, top_p: float | None = None,
              seed: int | None = None, stop_at_eos: bool = True, top_k: int | None = None,
              repetition_penalty: float | None = None) -> Iterator[str]:
        """Stream the model's reply to one user message; raises ContextFull before starting if
        the message cannot fit, and stops early (stats.stopped_by == "context") if the reply fills it.
        Sampling options left as None take the model's defaults (Model.sampler)."""
        start, ids = self._turn_ids(user)
        if start and not self.model.owns_cache(self):
            # Something else ran on this model since the last turn: rebuild the cache from the
            # conversation so far instead of continuing from another context.
            ids, start = self.history[:start] + ids, 0
        if start + len(ids) >= self.model.n_ctx:
            raise ContextFull(f"the conversation needs {start + len(ids)} tokens; the context holds {self.model.n_ctx}")
        sampler = self.model.sampler(temperature, top_p, seed, top_k, repetition_penalty)
        sampler.see(self.history[:start])
        self._turns += 1
        generated: list[int] = []
        try:
            yield from self.model.continue_from(ids, start, sampler, max_tokens, stop_at_eos, generated, owner=self)
        finally:
            # Everything fed so far is in the cache; the last sampled id is not.
            self.pos = start + len(ids) + max(0, len(generated) - 1)
            self.history = self.history[:start] + ids + generated[:-1]
            self._pending = generated[-1:]
            if self.format == "template":
                tok = self.model.tokenizer
                reply = generated[:-1] if generated and generated[-1] in tok.eos_ids else generated
                self.messages += [{"role": "user", "content": user},
                                  {"role": "assistant", "content": tok.decode(reply)}]

    @property
    def stats(self):
        return self.model.last_stats
