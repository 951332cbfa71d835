"""The conversation behind `kzoo chat`: the sampler settings, the turns, streamed replies
within the model's context (`Chat`) and the in-chat slash commands (`command`).

The terminal front end (arguments, loading, the read loop) is `kzoo.cli.chat`; how turns
become token ids is `kzoo.cli.chat_format`.

Example:
```python
import io
from kzoo.cli.chat_format import choose_format
from kzoo.cli.chat_session import Chat, command
from kzoo.models import CausalLM
from kzoo.tokenizers import ByteTokenizer
tokenizer = ByteTokenizer()
model = CausalLM.from_preset("gpt_nano", vocab_size=tokenizer.vocab_size)
chat = Chat(model, tokenizer, choose_format(tokenizer, None, "chat"), {"sampler": "greedy",
                                                                         "max_new_tokens": 4})
out = io.StringIO()
chat.reply("Hi", out=out)
command(chat, "/set temperature 0.7", out)   # True: the chat goes on
```
"""

from __future__ import annotations

# `kzoo generate`'s sampler knobs (kzoo.recipes.generate.SAMPLER_KNOBS) but beams: replies
# stream, and beam search decides its tokens only at the end.
KNOBS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "frequency_penalty",
         "presence_penalty", "penalty_alpha")
SAMPLERS = ("greedy", "random", "top_k", "top_p", "min_p", "contrastive")
SETTABLE = ("sampler", *KNOBS, "seed", "max_new_tokens")


def sampler_problem(name: str) -> str | None:
    """Why `name` cannot be the chat's sampler (one line), or None when it can."""
    if name in SAMPLERS:
        return None
    return (f"{name!r}: expected one of {', '.join(SAMPLERS)} (a reply streams; beam search "
            "picks its tokens only at the end)")


# the slash commands' /help text
HELP = """commands:
  /reset              forget the conversation
  /set KEY VALUE      change a setting: {keys}
  /set                show the settings
  /odds [K]           the K (10) most likely first tokens of the last reply, with their odds
  /help               this text
  /quit               leave (or Ctrl-D; Ctrl-C stops a reply)"""


class Chat:
    """A conversation with a model: replies streamed, sampler settings changeable.

    Args:
        model: CausalLM. the model.
        tokenizer: its tokenizer.
        chat_format: JinjaFormat or PromptFormat. how turns become ids.
        settings: dict. `sampler` and its knobs, `seed`, `max_new_tokens` (None: default).
        system: str or None. a system message.

    Example:
    ```python
    chat = Chat(model, tokenizer, choose_format(tokenizer, None), {"sampler": "greedy"})
    chat.reply("Hi", out=sys.stdout); chat.odds(k=5).probs
    ```
    """

    def __init__(self, model, tokenizer, chat_format, settings: dict, system=None, draft=None):
        self.model, self.tokenizer, self.format, self.system = model, tokenizer, chat_format, system
        self.draft = dict(draft or {})  # `Generator`'s draft arguments, checked in `update`
        self.settings = {}
        self.reset()
        self.update(settings)

    def update(self, changes: dict) -> None:
        """Apply new settings, all checked (the sampler is built) before any takes effect."""
        from kzoo.recipes.generate import build_sampler

        settings = {**self.settings, **changes}
        name = settings.get("sampler") or "top_p"
        if sampler_problem(name):
            raise ValueError(f"sampler {sampler_problem(name)}")
        context = self.model.max_sequence_length
        limit = settings.get("max_new_tokens")
        limit = min(256, context // 2) if limit is None else limit  # 0 is refused, not "default"
        if not 0 < limit < context:
            raise ValueError(f"max_new_tokens must be in [1, {context - 1}] (the model's "
                             f"context is {context}), got {limit}")
        sampler = build_sampler({**settings, "sampler": name})
        if self.draft:  # refuses a sampler that does not combine with drafts (penalties)
            from kzoo.generation import get_generator

            get_generator(self.model, sampler, self.tokenizer, **self.draft)
        if limit != getattr(self, "limit", limit):
            self.first_turn = 0  # another room for the conversation: look for its window again
        self.settings, self.sampler, self.limit = settings, sampler, limit

    def reset(self) -> None:
        """Forget the conversation (and that its window was announced)."""
        self.turns, self.last_prompt, self.last_first, self.last_temperature = [], None, None, None
        self.first_turn, self.told_window = 0, False

    def _window(self, user: str, out) -> list[int]:
        """The prompt ids of the most recent turns that leave `max_new_tokens` of room.

        Only whole turns are left out, oldest first, and that is said once per conversation;
        a message too long by itself keeps its last tokens.
        """
        context = self.model.max_sequence_length
        room = context - self.limit
        ids = self.format.prompt_ids(self.system, self.turns[self.first_turn:], user)
        start = self.first_turn
        while len(ids) > room and self.first_turn < len(self.turns):
            self.first_turn += 1  # kept: a later turn never needs an earlier one back
            ids = self.format.prompt_ids(self.system, self.turns[self.first_turn:], user)
        if self.first_turn > start and not self.told_window:
            self.told_window = True
            print(f"[the conversation no longer fits the model's context ({context} tokens, "
                  f"{self.limit} of them for the reply): from now on the model sees the most "
                  "recent turns that fit]", file=out)
        if len(ids) > room:
            print(f"[this message does not fit the model's context: its first "
                  f"{len(ids) - room} tokens are left out]", file=out)
            ids = ids[-room:]
        return ids

    def reply(self, user: str, out, header: str = "") -> str:
        """Stream the model's answer to `user` onto `out` after `header`; the text (partial
        on Ctrl-C). The model sees the most recent turns that fit (`_window`)."""
        from kzoo.generation import stream

        ids, generated, shown, stopped = None, [], "", False
        try:  # Ctrl-C anywhere in here ends the reply, not the chat
            ids = self._window(user, out)
            out.write(header)
            out.flush()
            seed = self.settings.get("seed")
            seed = None if seed is None else seed + len(self.turns)
            for token in stream(self.model, ids, max_new_tokens=self.limit,
                                sampler=self.sampler, tokenizer=self.tokenizer,
                                stop_token_ids=self.tokenizer.stop_token_ids, seed=seed,
                                **self.draft):
                generated.append(int(token))
                text = self.tokenizer.decode(generated)
                if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                    out.write(text[len(shown):] if text.startswith(shown) else text)
                    out.flush()
                    shown = text
        except KeyboardInterrupt:
            stopped = True
        text = self.tokenizer.decode(generated) if generated else ""
        out.write((text[len(shown):] if text.startswith(shown) else "")
                  + (" [stopped]" if stopped else "") + "\n")
        out.flush()
        if ids is not None:
            self.turns.append((user, text))
            self.last_prompt, self.last_first = ids, (generated[0] if generated else None)
            # /odds after a /set temperature must still show what this reply was drawn from
            self.last_temperature = self.settings.get("temperature")
        return text

    def odds(self, k: int = 10):
        """The next-word distribution the last reply's first token was drawn from
        (`kzoo.generation.next_word_distribution`, at the temperature that reply was sampled
        with, or 1)."""
        from kzoo.generation import next_word_distribution

        if self.last_prompt is None:
            raise ValueError("no reply yet: /odds shows the odds behind the last reply")
        return next_word_distribution(self.model, self.last_prompt, k,
                                      self.last_temperature or 1.0, self.tokenizer)


def _parse_value(key: str, text: str):
    if key == "sampler":
        return text
    if text.lower() in ("none", "null", "default"):
        return None
    try:
        return int(text) if key in ("top_k", "seed", "max_new_tokens") else float(text)
    except ValueError:
        raise ValueError(f"/set {key}: {text!r} is not a number") from None


def command(chat: Chat, line: str, out) -> bool:
    """Run one in-chat command (`/set temperature 0.7`, ...); False when the chat should end.

    Raises:
        ValueError: one line for an unknown command, key or value (the chat goes on).
    """
    name, *args = line[1:].split()
    if name in ("quit", "exit", "q"):
        return False
    if name == "help":
        print(HELP.format(keys=", ".join(SETTABLE)), file=out)
    elif name == "reset":
        chat.reset()
        print("[conversation forgotten]", file=out)
    elif name == "set" and not args:
        shown = {**chat.settings, "max_new_tokens": chat.limit}
        print(" ".join(f"{k}={v}" for k, v in shown.items() if v is not None), file=out)
    elif name == "set":
        if len(args) != 2 or args[0] not in SETTABLE:
            raise ValueError(f"usage: /set KEY VALUE with KEY one of {', '.join(SETTABLE)}")
        chat.update({args[0]: _parse_value(args[0], args[1])})
        print(f"[{args[0]} = {args[1]}]", file=out)
    elif name == "odds":
        k = int(args[0]) if args and args[0].isdigit() else 10
        dist = chat.odds(k)
        print(dist.bars(), file=out)
        first = chat.last_first
        if first is not None:
            print(f"the reply began with {chat.tokenizer.decode([first])!r} "
                  f"(sum of the {len(dist.probs)} shown: {sum(dist.probs):.1%})", file=out)
    else:
        raise ValueError(f"unknown command /{name}; /help lists them")
    return True
