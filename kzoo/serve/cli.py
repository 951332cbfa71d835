"""`kzoo serve MODEL`: serve a model over OpenAI's HTTP API, many requests decoded together.

    kzoo serve runs/gpt_baby_instruction_sft
    kzoo serve SmolLM2-135M-Instruct --weights int8 --slots 16 --port 8001
    kzoo serve runs/x --host 0.0.0.0 --api-key "$KEY"      # a key is required off loopback
    kzoo serve runs/base --lora runs/dpo/adapters.safetensors  # LoRA adapters (`save_lora`)
    kzoo serve runs/x --prompt-lookup 4                       # speculative decoding
    kzoo serve runs/big --draft-model runs/small --draft-tokens 4

MODEL is anything `kzoo chat` reads: a kzoo run folder, a `.keras` file, a Hugging Face folder
or a keras-hub preset folder (nothing in it is executed). Listens on 127.0.0.1 unless --host is
given. Chat messages are rendered with the tokenizer's chat template (kzoo's own
"### Instruction" layout when it has none). SIGTERM or Ctrl-C stops accepting, lets the requests
under way finish (--shutdown-timeout at most, then they are cancelled) and exits 0. Bad
arguments: one `error:` line, exit code 2.

--prompt-lookup K or --draft-model PATH (--draft-tokens K) decode every request they can serve
speculatively, one request at a time in an exclusive lane beside the batch (the same greedy
tokens; `logprobs` and `echo` requests stay in the batch). A request's `penalty_alpha` (0..1)
with `top_k` asks for contrastive search, in that lane too (`kzoo.serve.modes`).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from kzoo.serve.http import is_loopback

WEIGHTS = ("float32", "bfloat16", "int8")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="kzoo serve", description=__doc__.splitlines()[0],
        epilog="Decoding modes: --prompt-lookup K or --draft-model PATH decode the requests they "
        "can serve speculatively, one at a time beside the batch (greedy gives the same tokens; "
        "logprobs and echo requests stay in the batch). A request's penalty_alpha (0..1) with "
        "top_k (default 4) asks for contrastive search; with the openai client, pass them in "
        "extra_body. See docs/serve.md, 'Decoding modes'.")
    parser.add_argument("model", metavar="MODEL",
                        help="run folder, .keras file, Hugging Face or keras-hub folder")
    parser.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any)")
    parser.add_argument("--api-key", dest="api_key", default=os.environ.get("KZOO_API_KEY"),
                        help="required as 'Authorization: Bearer KEY' (default $KZOO_API_KEY); "
                        "needed when --host is not a loopback address")
    parser.add_argument("--model-name", dest="model_name",
                        help="the model's id in /v1/models (default: MODEL's folder name)")
    parser.add_argument("--model-file", dest="model_file", default="model.keras",
                        help="model inside a run folder (default model.keras)")
    parser.add_argument("--tokenizer", default="auto",
                        help="auto (the model's own), byte, or a tokenizer folder")
    parser.add_argument("--weights", help="generation weights: " + ", ".join(WEIGHTS)
                        + " (default: the model's own, read live)")
    parser.add_argument("--dtype", help="dtype of a Hugging Face or keras-hub model")
    parser.add_argument("--lora", metavar="PATH",
                        help="LoRA adapters to serve on the model (a kzoo `save_lora` "
                        ".safetensors file), merged into its kernels at start")
    parser.add_argument("--slots", type=int, default=8, help="requests decoded together (8)")
    parser.add_argument("--prompt-lookup", dest="prompt_lookup", type=int, metavar="K",
                        help="speculative decoding with K draft tokens from n-grams of the "
                        "prompt and text (vLLM's 'ngram' method); one request at a time")
    parser.add_argument("--draft-model", dest="draft_model", metavar="PATH",
                        help="speculative decoding with this smaller model's drafts (the same "
                        "vocabulary); one request at a time")
    parser.add_argument("--draft-tokens", dest="draft_tokens", type=int, metavar="K",
                        help="draft tokens per step with --draft-model (4)")
    parser.add_argument("--max-queue", dest="max_queue", type=int, default=64,
                        help="sequences waiting for a slot before 429 (64)")
    parser.add_argument("--max-concurrent", dest="max_concurrent", type=int, default=64,
                        help="requests under way at once before 429 (64)")
    parser.add_argument("--max-tokens", dest="max_tokens", type=int,
                        help="the most new tokens a request may ask for (default: context - 1)")
    parser.add_argument("--max-n", dest="max_n", type=int, default=8,
                        help="the most choices per prompt (8)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds a request may take before it is cancelled (600)")
    parser.add_argument("--shutdown-timeout", dest="shutdown_timeout", type=float, default=30.0,
                        help="seconds SIGTERM waits for the requests under way (30)")
    return parser.parse_args(argv)


def check_args(args) -> str | None:
    """Why `args` cannot be served (one line), or None; checked before anything loads."""
    if not Path(args.model).exists():
        return f"MODEL {args.model} does not exist"
    if args.lora is not None and not Path(args.lora).is_file():
        return f"--lora {args.lora}: no such file"
    if not 0 <= args.port <= 65535:
        return f"--port {args.port}: must be in 0..65535"
    if not is_loopback(args.host) and not args.api_key:
        return (f"--host {args.host} is reachable from other machines: give --api-key KEY "
                "(or set KZOO_API_KEY), which every request must then carry")
    if args.api_key is not None and (not args.api_key or any(c.isspace()
                                                             for c in args.api_key)):
        return "--api-key: must be a non-empty string without spaces"
    if args.weights is not None and args.weights not in WEIGHTS:
        return f"--weights {args.weights!r}: expected one of {', '.join(WEIGHTS)}"
    for name in ("slots", "max_queue", "max_concurrent", "max_n"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1"
    if args.prompt_lookup is not None and args.draft_model is not None:
        return "--prompt-lookup and --draft-model do not combine: choose one"
    for name in ("prompt_lookup", "draft_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            return (f"--{name.replace('_', '-')} {getattr(args, name)}: the number of draft "
                    "tokens must be at least 1")
    if args.draft_tokens is not None and args.draft_model is None:
        return "--draft-tokens needs --draft-model (with --prompt-lookup K, K is the number)"
    if args.draft_model is not None and not Path(args.draft_model).exists():
        return f"--draft-model {args.draft_model} does not exist"
    if args.max_tokens is not None and args.max_tokens < 1:
        return f"--max-tokens {args.max_tokens}: must be at least 1"
    for name in ("timeout", "shutdown_timeout"):
        if not getattr(args, name) > 0:
            return f"--{name.replace('_', '-')} {getattr(args, name)}: must be > 0"
    return None


def chat_renderer(tokenizer):
    """messages -> prompt ids with the tokenizer's chat template (kzoo's own without one),
    ending with the assistant's header."""
    from kzoo.data.conversation import _text_encoder, chat_template_of
    from kzoo.tokenizers.chat_template import render_chat_template

    template, variables = chat_template_of(tokenizer)
    encode = _text_encoder(tokenizer)  # the template writes the special tokens itself

    def render(messages) -> list[int]:
        return encode(render_chat_template(template, messages, True, **variables)).tolist()
    return render


def load(args):
    """The model and tokenizer `args` name (one-line ValueErrors)."""
    from kzoo._quiet import probe_devices_quietly
    from kzoo.models.sources import find_model_source, resolve_tokenizer
    from kzoo.tokenizers import check_vocab

    source = find_model_source(args.model, args.model_file, what="MODEL")
    tokenizer = resolve_tokenizer(args.tokenizer, source, where="--tokenizer")
    probe_devices_quietly()  # no "failed call to cuInit" line on a machine without a GPU
    model = source.load_model(dtype=args.dtype)
    if args.lora:
        # merged: the compiled decoder then reads plain kernels (and int8 / bf16 snapshots of
        # them), at the speed of the base model
        try:
            model.load_lora(args.lora)
            model.merge_lora()
        except ValueError as error:
            raise ValueError(f"--lora {args.lora}: {error}") from None
    check_vocab(tokenizer, model.vocab_size, where=str(source.model_path))
    check_texts(tokenizer, model.vocab_size, where=str(source.model_path))
    return model, tokenizer


def load_draft(args, model) -> dict:
    """`Engine`'s draft arguments from --prompt-lookup / --draft-model (one-line ValueErrors)."""
    from kzoo.models.sources import find_model_source

    if args.prompt_lookup is not None:
        return {"draft": "prompt_lookup", "num_draft_tokens": args.prompt_lookup}
    if args.draft_model is None:
        return {}
    draft = find_model_source(args.draft_model, "model.keras", what="--draft-model").load_model()
    if draft.vocab_size != model.vocab_size:
        raise ValueError(f"--draft-model {args.draft_model} has {draft.vocab_size} ids "
                         f"(vocab_size) but MODEL has {model.vocab_size}: a draft model must "
                         "share the model's vocabulary")
    return {"draft": draft, "num_draft_tokens": args.draft_tokens or 4}


def describe_draft(draft: dict) -> str:
    if not draft:
        return ""
    what = ("prompt lookup" if draft["draft"] == "prompt_lookup"
            else f"draft model of {draft['draft'].count_params():,} parameters")
    return f", {what}, {draft['num_draft_tokens']} draft tokens"


def check_texts(tokenizer, vocab_size: int, where: str) -> None:
    """A one-line ValueError when the model can sample ids its tokenizer has no text for.

    A model with more ids than its tokenizer samples them now and then (always, with random
    weights); a request that draws one would end in an error. Padded rows past a tokenizer
    that decodes unknown ids as no text (Hugging Face tokenizers; Qwen2 pads its embeddings)
    are fine; the byte and char tokenizers refuse such ids.
    """
    if tokenizer.vocab_size >= vocab_size:
        return
    try:
        tokenizer.decode([vocab_size - 1])
    except Exception:  # noqa: BLE001  any refusal to decode is the same problem
        raise ValueError(
            f"{where} has {vocab_size} ids (vocab_size) but its tokenizer "
            f"({tokenizer.kind}) has {tokenizer.vocab_size} and no text for ids "
            f"{tokenizer.vocab_size}..{vocab_size - 1}, which the model can sample; give "
            "--tokenizer the tokenizer the model was trained with") from None


def make_server(engine, tokenizer, args):
    """The bound `UvicornServer` serving `engine` as `args` say."""
    from kzoo.serve import app as app_lib
    from kzoo.serve import http, protocol

    sock = http.bind(args.host, args.port, what="kzoo serve")
    host, port = sock.getsockname()[:2]
    name = args.model_name or Path(args.model).name
    limits = protocol.Limits(context=engine.length, max_tokens=args.max_tokens, max_n=args.max_n,
                             vocab=engine.model.vocab_size)
    settings = app_lib.Settings(model_name=name, host=args.host, port=port,
                                api_key=args.api_key, limits=limits,
                                max_concurrent=args.max_concurrent, timeout_s=args.timeout)
    asgi = app_lib.build_app(engine, tokenizer, chat_renderer(tokenizer), settings)
    return http.UvicornServer(sock, asgi, app_lib.Protocol, graceful_s=args.shutdown_timeout,
                              max_connections=args.max_concurrent + 16)


def main(argv=None) -> int:
    """`kzoo serve ...`; 0 after SIGTERM / Ctrl-C, 2 on bad input (one `error:` line)."""
    args = parse_args(argv)
    problem = check_args(args)
    if problem:
        print("error: " + problem, file=sys.stderr)
        return 2
    from kzoo.cli._library import load_library
    from kzoo.serve.engine import Engine

    try:
        load_library()
        model, tokenizer = load(args)
        draft = load_draft(args, model)
        engine = Engine(model, tokenizer, slots=args.slots, weights=args.weights,
                        max_queue=args.max_queue, **draft)
        server = make_server(engine, tokenizer, args)
    except ValueError as error:
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    engine.start()
    host, port = server.server_address
    shown = f"[{host}]" if ":" in host else host
    print(f"kzoo serve: {args.model} ({model.count_params():,} parameters, context "
          f"{engine.length}, {engine.slots} slots{describe_draft(draft)}) on "
          f"http://{shown}:{port}/v1"
          + (" (API key required)" if args.api_key else ""), flush=True)
    # uvicorn takes SIGTERM / SIGINT while it runs and raises them again when it has stopped;
    # these handlers take that second one, so the process ends here with exit code 0.
    stopped = []
    previous = {s: signal.signal(s, lambda sig, frame: stopped.append(sig))
                for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.serve_forever()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        engine.stop()
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
