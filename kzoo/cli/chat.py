"""`kzoo chat RUN_OR_MODEL_DIR`: a streaming, multi-turn chat with a model in the terminal.

    kzoo chat runs/gpt_baby_instruction_sft
    kzoo chat SmolLM2-135M-Instruct --sampler top_p --top-p 0.9 --temperature 0.7 --seed 0

RUN_OR_MODEL_DIR is anything `kzoo generate` reads: a kzoo run folder, a `.keras` file, a
Hugging Face folder or a keras-hub preset folder (nothing in it is executed). Each turn is
rendered with the tokenizer's chat template when it has one; otherwise with the prompt
template the run was fine-tuned on (its config.yaml `data.template`); else (a pre-trained
model) as raw text, one turn per line (`--template chat` asks for kzoo's own
"### Instruction: / ### Response:" layout). Replies stream token by token and stop at the
model's end tokens. A conversation longer than the model's context keeps its most recent
turns that fit (said once). In the chat: /reset, /set KEY VALUE (temperature, top_k, top_p, min_p,
repetition_penalty, sampler, seed, max_new_tokens), /odds (the next-word odds behind the last
reply's first token, at the temperature it was drawn with), /help, /quit. Ctrl-C stops a
reply; Ctrl-C or Ctrl-D at the prompt exits at once (exit code 0). --prompt-lookup K or
--draft-model PATH (--draft-tokens K) decode speculatively: the same replies, fewer model
steps when drafts hit (`kzoo.generation.speculative`). --sampler contrastive --penalty-alpha A
--top-k K replies by contrastive search (`kzoo.generation.contrastive`; /set penalty_alpha too).
"""

from __future__ import annotations

import argparse
import select
import sys
from pathlib import Path

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
HELP = """commands:
  /reset              forget the conversation
  /set KEY VALUE      change a setting: {keys}
  /set                show the settings
  /odds [K]           the K (10) most likely first tokens of the last reply, with their odds
  /help               this text
  /quit               leave (or Ctrl-D; Ctrl-C stops a reply)"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="kzoo chat", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", metavar="RUN_OR_MODEL_DIR",
                        help="run folder, .keras file, Hugging Face or keras-hub folder")
    parser.add_argument("--model-file", dest="model_file", default="model.keras",
                        help="model inside a run folder (default model.keras)")
    parser.add_argument("--tokenizer", default="auto",
                        help="auto (the model's own), byte, or a tokenizer folder")
    parser.add_argument("--template", default="auto",
                        help="auto (the tokenizer's chat template, else the run's SFT "
                        "template, else raw); chat (the tokenizer's chat template, else kzoo's "
                        "### Instruction layout); or a prompt template: alpaca, plain, raw or "
                        "a format string with {prompt}")
    parser.add_argument("--system", help="a system message opening the conversation")
    parser.add_argument("--sampler", default="top_p",
                        help=", ".join(SAMPLERS) + " (default top_p; not beam: replies stream)")
    for knob in KNOBS:
        kind = int if knob == "top_k" else float
        parser.add_argument("--" + knob.replace("_", "-"), dest=knob, type=kind)
    parser.add_argument("--seed", type=int, help="seed of the first reply (then seed + turn)")
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int,
                        help="longest reply (default: the smaller of 256 and half the context)")
    parser.add_argument("--prompt-lookup", dest="prompt_lookup", type=int, metavar="K",
                        help="speculative decoding, K draft tokens from n-grams of the text")
    parser.add_argument("--draft-model", dest="draft_model", metavar="PATH",
                        help="speculative decoding with this smaller model's drafts")
    parser.add_argument("--draft-tokens", dest="draft_tokens", type=int, default=4,
                        metavar="K", help="draft tokens per step with --draft-model")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- formats
class JinjaFormat:
    """Turns rendered with a Jinja chat template (the tokenizer's, or kzoo's default)."""

    def __init__(self, tokenizer, template: str, variables: dict, name: str):
        from kzoo.data.conversation import _text_encoder

        self.template, self.variables, self.name = template, variables, name
        self.encode = _text_encoder(tokenizer)  # the template writes the special tokens

    def prompt_ids(self, system, turns, user) -> list[int]:
        """The ids of the conversation so far plus `user`, ending with the reply's header."""
        from kzoo.tokenizers.chat_template import render_chat_template

        messages = [{"role": "system", "content": system}] if system else []
        for question, answer in turns:
            messages += [{"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": user})
        text = render_chat_template(self.template, messages, True, **self.variables)
        return self.encode(text).tolist()


class PromptFormat:
    """Turns rendered with an SFT prompt template: prompt, reply, end-of-text, one after
    another (exactly how `kzoo.data.instruction.encode_sft` lays out one record).

    Args:
        tokenizer: a kzoo or Hugging Face tokenizer.
        template: PromptTemplate. how a message becomes a prompt.
        name: str. what the chat's first line calls the layout.
        raw: bool. a pre-trained model's text: a reply and the next message are separated by
            a new line, not end-of-text (which a pre-trained model reads as "a new document
            starts here": the earlier turns would no longer count).
    """

    def __init__(self, tokenizer, template, name: str, raw: bool = False):
        self.tokenizer, self.template, self.name = tokenizer, template, name
        self.end = list(tokenizer.encode("\n")) if raw else [tokenizer.eot_id]

    def prompt_ids(self, system, turns, user) -> list[int]:
        encode = self.tokenizer.encode
        ids = list(encode(system + "\n\n")) if system else []
        for question, answer in turns:
            ids += [*encode(self.template.format({"instruction": question})), *encode(answer),
                    *self.end]
        return [int(i) for i in ids + list(encode(self.template.format({"instruction": user})))]


def _run_template(source) -> str | None:
    """`data.template` of a fine-tuning run's config.yaml (read as plain YAML data)."""
    from kzoo.training.config import read_yaml

    path = source.path / "config.yaml"
    if source.kind != "run" or not path.is_file():
        return None
    config = read_yaml(path)
    data = config.get("data") if isinstance(config, dict) else None
    template = data.get("template") if isinstance(data, dict) else None
    return template if isinstance(template, str) else None


def choose_format(tokenizer, source, template: str = "auto"):
    """How turns become ids: a `JinjaFormat` or a `PromptFormat` (see the module docstring).

    Args:
        tokenizer: a kzoo or Hugging Face tokenizer.
        source: ModelSource or None. where the model came from (a run's config.yaml is read).
        template: str. "auto", "chat", a `kzoo.data.instruction.TEMPLATES` name or a format
            string.

    Example:
    ```python
    from kzoo.tokenizers import ByteTokenizer
    choose_format(ByteTokenizer(), None, "chat").name  # "kzoo's ### Instruction / ### Response"
    choose_format(ByteTokenizer(), None).name          # "raw text: ..." (a pre-trained model)
    ```
    """
    from kzoo.data.conversation import chat_template_of
    from kzoo.data.instruction import CHAT, get_template

    own = getattr(tokenizer, "chat_template", None)
    if template == "auto":
        # No chat template and no fine-tuning template: a pre-trained model, which was never
        # shown "### Instruction:" headers; it continues raw text.
        template = CHAT if own else (_run_template(source) or "raw")
    if template == "raw":
        return PromptFormat(tokenizer, get_template("raw"),
                            "raw text: no chat template, no fine-tuning template", raw=True)
    if template == CHAT:
        text, variables = chat_template_of(tokenizer)
        name = "the tokenizer's chat template" if own else \
            "kzoo's ### Instruction / ### Response"
        return JinjaFormat(tokenizer, text, variables, name)
    try:
        return PromptFormat(tokenizer, get_template(template), f"prompt template {template!r}")
    except ValueError as error:
        raise ValueError(f"--template {template!r}: {error}") from None


# ----------------------------------------------------------------------------- the chat
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


def load(args):
    """The model, tokenizer and chat format that `args` name."""
    from kzoo.models.sources import find_model_source, resolve_tokenizer
    from kzoo.tokenizers import check_vocab

    source = find_model_source(args.run_dir, args.model_file, what="RUN_OR_MODEL_DIR")
    tokenizer = resolve_tokenizer(args.tokenizer, source, where="--tokenizer")
    chat_format = choose_format(tokenizer, source, args.template)
    from kzoo._quiet import probe_devices_quietly

    probe_devices_quietly()  # no "failed call to cuInit" line on a machine without a GPU
    model = source.load_model()
    check_vocab(tokenizer, model.vocab_size, where=str(source.model_path))
    return model, tokenizer, chat_format


def _draft(args) -> dict:
    """`Generator`'s draft arguments from --prompt-lookup / --draft-model."""
    if args.prompt_lookup is not None:
        return {"draft": "prompt_lookup", "num_draft_tokens": args.prompt_lookup}
    if args.draft_model is None:
        return {}
    from kzoo.models.sources import find_model_source

    draft = find_model_source(args.draft_model, "model.keras", what="--draft-model").load_model()
    return {"draft": draft, "num_draft_tokens": args.draft_tokens}


def read_line(prompt: str) -> str:
    """`input(prompt)`, except that at a terminal Ctrl-C always lands at once.

    TensorFlow's threads may take the SIGINT of a Ctrl-C; Python then only raises
    KeyboardInterrupt when the main thread runs again, which a thread blocked in `input()`
    (readline's `select` without a timeout) never does until the next key. So a terminal is
    polled every 0.2 s and read a line at a time (the terminal's own line editing).
    """
    if not sys.stdin.isatty():
        return input(prompt)
    sys.stdout.write(prompt)
    sys.stdout.flush()
    while not select.select([sys.stdin], [], [], 0.2)[0]:
        pass
    line = sys.stdin.readline()
    if not line:  # Ctrl-D on an empty line
        raise EOFError
    return line.rstrip("\n")


def loop(chat: Chat, read=read_line, out=None) -> int:
    """Read messages and commands until /quit, Ctrl-D or Ctrl-C at the prompt; exit code 0."""
    out = sys.stdout if out is None else out
    while True:
        try:
            line = read("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return 0
        if not line:
            continue
        try:
            if line.startswith("/"):
                if not command(chat, line, out):
                    return 0
                continue
            chat.reply(line, out, header="model> ")
        except ValueError as error:
            print("error: " + " ".join(str(error).split()), file=out)
        except KeyboardInterrupt:  # Ctrl-C inside a command (/odds runs the model): stop it
            print(" [stopped]", file=out)


def main(argv=None) -> int:
    """`kzoo chat ...`; 0 when the chat ends, 2 on bad input (one `error: ...` line)."""
    args = parse_args(argv)
    # Checked before TensorFlow is imported and the model loaded: a quick answer.
    problem = None
    if not Path(args.run_dir).exists():
        problem = f"RUN_OR_MODEL_DIR {args.run_dir} does not exist"
    elif sampler_problem(args.sampler):
        problem = f"--sampler {sampler_problem(args.sampler)}"
    elif args.max_new_tokens is not None and args.max_new_tokens < 1:
        problem = f"--max-new-tokens {args.max_new_tokens}: must be at least 1"
    elif args.prompt_lookup is not None and args.draft_model is not None:
        problem = "--prompt-lookup and --draft-model do not combine: choose one"
    elif min(1 if args.prompt_lookup is None else args.prompt_lookup, args.draft_tokens) < 1:
        problem = "--prompt-lookup / --draft-tokens: the number of draft tokens must be >= 1"
    if problem:
        print("error: " + problem, file=sys.stderr)
        return 2
    from kzoo.cli._library import load_library as _load_library

    settings = {k: v for k, v in vars(args).items() if k in SETTABLE}
    try:
        _load_library()
        model, tokenizer, chat_format = load(args)
        chat = Chat(model, tokenizer, chat_format, settings, system=args.system,
                    draft=_draft(args))
    except ValueError as error:
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C while the model loads: leave without a traceback
        print(file=sys.stderr)
        return 130
    print(f"kzoo chat with {args.run_dir} ({model.count_params():,} parameters; "
          f"{chat_format.name}). /help for commands, /quit or Ctrl-D to leave, "
          "Ctrl-C stops a reply.")
    return loop(chat)


if __name__ == "__main__":
    sys.exit(main())
