"""A multi-turn conversation over one KV cache: the model's chat format, or plain continuation.

Each turn feeds only the new tokens (the previous reply's last token and the next user message)
at the current position, so earlier turns are never recomputed. Llama 2 chat models get
`[INST] ... [/INST]` turns; other models continue the text the user types.
"""
from __future__ import annotations

from typing import Iterator

from lmpack.errors import LmpackError
from lmpack.runtime.model import Model
from lmpack.runtime.sampler import Sampler


class ContextFull(LmpackError):
    """The next turn does not fit in the KV cache."""


class ChatSession:
    def __init__(self, model: Model, system: str | None = None, chat_format: str | None = "auto"):
        self.model = model
        self.format = model.config.chat_format if chat_format == "auto" else chat_format
        self.system = system
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the cache is simply overwritten from position 0)."""
        self.pos = 0
        self.history: list[int] = []  # ids in the cache, positions 0..pos-1
        self._pending: list[int] = []  # ids sampled but not yet fed to the model
        self._turns = 0

    @property
    def tokens_used(self) -> int:
        return self.pos + len(self._pending)

    def _turn_ids(self, user: str) -> list[int]:
        tok = self.model.tokenizer
        if self.format == "llama2":
            text = user.strip()
            if self._turns == 0 and self.system:
                text = f"<<SYS>>\n{self.system}\n<</SYS>>\n\n{text}"
            ids = tok.encode(f"[INST] {text} [/INST]", bos=True)
            if self._pending and self._pending[-1] not in tok.eos_ids:
                # the reply was cut short: close it the way the format expects
                ids = [next(iter(sorted(tok.eos_ids))), *ids]
            return ids
        # plain continuation: the conversation is one running text
        if self._turns == 0:
            return tok.encode(user, bos=True)
        return tok.encode(user, bos=False)

    def reply(self, user: str, max_tokens: int = 256, temperature: float = 0.8, top_p: float = 0.95,
              seed: int | None = None, stop_at_eos: bool = True) -> Iterator[str]:
        """Stream the model's reply to one user message; raises ContextFull before starting if
        the message cannot fit, and stops early (stats.stopped_by == "context") if the reply fills it."""
        ids = [*self._pending, *self._turn_ids(user)]
        if self.pos and not self.model.owns_cache(self):
            # Something else ran on this model since the last turn: rebuild the cache from the
            # conversation so far instead of continuing from another context.
            ids, self.pos, self.history = self.history + ids, 0, []
        if self.pos + len(ids) >= self.model.n_ctx:
            raise ContextFull(f"the conversation needs {self.pos + len(ids)} tokens; the context holds {self.model.n_ctx}")
        self._turns += 1
        sampler = Sampler(temperature, top_p, seed)
        generated: list[int] = []
        start = self.pos
        try:
            yield from self.model.continue_from(ids, start, sampler, max_tokens, stop_at_eos, generated, owner=self)
        finally:
            # Everything fed so far is in the cache; the last sampled id is not.
            self.pos = start + len(ids) + max(0, len(generated) - 1)
            self.history += ids + generated[:-1]
            self._pending = generated[-1:]

    @property
    def stats(self):
        return self.model.last_stats
