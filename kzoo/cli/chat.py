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

This module is the terminal front end (arguments, loading, the read loop); the conversation and
its slash commands are `kzoo.cli.chat_session`, the turns' layout `kzoo.cli.chat_format`.
"""

from __future__ import annotations

import argparse
import select
import sys
from pathlib import Path

from kzoo.cli.chat_format import JinjaFormat, PromptFormat, choose_format
from kzoo.cli.chat_session import (
    HELP,
    KNOBS,
    SAMPLERS,
    SETTABLE,
    Chat,
    command,
    sampler_problem,
)

# Re-exported: tests and older code import them from here.
__all__ = ["HELP", "KNOBS", "SAMPLERS", "SETTABLE", "Chat", "JinjaFormat", "PromptFormat",
           "choose_format", "command", "load", "loop", "main", "parse_args", "read_line",
           "sampler_problem"]


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
