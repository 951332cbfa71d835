"""`kzoo rate`: A local page where a person rates and corrects a model's completions.

    kzoo rate --candidates candidates.jsonl --out ratings.jsonl
    kzoo rate --run runs/gpt_nano_pydocs --prompts prompts.txt --out ratings.jsonl \\
        --sampler top_p --top-p 0.9 --temperature 0.8 --seed 0 --max-new-tokens 64
    python -m kzoo.cli.rate ...      # the same, without the `kzoo` command

Open the printed address (bound to 127.0.0.1 unless --host says otherwise; any other address
needs a token, printed in the address, or --token). Keys: 1 left better, 2 right better, 3 tie,
4 both bad, e correct an answer (Ctrl+Enter saves), u / d thumbs up / down on a single
completion, t switches pairs / thumbs mode. Pairs go to OUT, thumbs to
OUT.kto.jsonl, every judgement with its provenance to OUT.meta.jsonl (`kzoo.cli.rate.store`);
`kzoo dpo --set data.path=OUT` trains on them. Bad input (a missing run folder, an empty
prompts or candidates file, a port in use or out of range): one line on stderr, exit code 2,
no file written. The server is Starlette on uvicorn (`kzoo.cli.rate.asgi`: size limits,
timeouts, headers). A live-sampled prompt's id includes the model and sampler settings: rating
another model into the same OUT samples the prompts again; a restart with the same ones
continues where it stopped. `--candidates` imports no TensorFlow.

Example:
```python
from kzoo.cli.rate import main
main(["--candidates", "candidates.jsonl", "--out", "ratings.jsonl", "--port", "0"])
```
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import sys
from pathlib import Path

# Before anything imports Keras: the backend, and TensorFlow's start-up chatter off.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SAMPLER_FLAGS = {"temperature": float, "top_k": int, "top_p": float, "min_p": float}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kzoo rate", description="A local page to rate and correct completions: "
        "pairs for DPO / reward models, thumbs up / down for KTO.")
    source = parser.add_argument_group("what to rate (--candidates, or --run with --prompts)")
    source.add_argument("--candidates", help='JSONL of {"prompt", "completions": [a, b]} '
                        "(one completion: thumbs up / down)")
    source.add_argument("--run", help="run folder (or Hugging Face / keras-hub folder) to "
                        "sample two completions per prompt from")
    source.add_argument("--prompts", help="with --run: .txt (one prompt per line) or .jsonl "
                        'of {"prompt"}')
    parser.add_argument("--out", required=True, help="the pairs file, *.jsonl (appended to; "
                        "OUT.kto.jsonl and OUT.meta.jsonl sit beside it)")
    parser.add_argument("--port", type=int, default=8765, help="0: any free port")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; one that "
                        "is not a loopback address gets a token (printed in the URL)")
    parser.add_argument("--token", help="the token every request must carry (default: none "
                        "on 127.0.0.1, a random one on any other --host)")
    parser.add_argument("--mode", choices=("pairs", "thumbs"), default="pairs",
                        help="what the page opens with (t switches)")
    sampling = parser.add_argument_group("live sampling (--run)")
    sampling.add_argument("--sampler", default="top_k", help="random, top_k, top_p or min_p")
    for knob, kind in SAMPLER_FLAGS.items():
        sampling.add_argument("--" + knob.replace("_", "-"), dest=knob, type=kind)
    sampling.add_argument("--seed", type=int, help="prompt i is sampled with seed + i "
                          "(default: a random seed, printed and recorded)")
    sampling.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=64)
    sampling.add_argument("--template", default="raw", help="prompt template the model sees: "
                          "raw (the prompt as written), chat (a user turn in the model's chat "
                          "template), plain, alpaca or a format string with {prompt}; train "
                          "with the same data.template")
    sampling.add_argument("--tokenizer", default="auto", help="auto, byte or a folder")
    sampling.add_argument("--model-file", dest="model_file", default="model.keras")
    return parser.parse_args(argv)


def _prepare(args):
    """(items, live sampler or None, provenance) after every check that can fail cheaply."""
    from kzoo.cli.rate.sources import build_sampler, read_candidates, read_prompts

    if bool(args.candidates) == bool(args.run):
        raise ValueError("give --candidates FILE, or --run RUN_DIR with --prompts FILE "
                         "(not both)")
    if args.candidates:
        if args.prompts:
            raise ValueError("--prompts goes with --run, not with --candidates")
        return read_candidates(args.candidates), None, {"model": None,
                                                        "source": str(args.candidates)}
    if not args.prompts:
        raise ValueError("--run needs --prompts FILE (.txt: one prompt per line)")
    if not Path(args.run).exists():
        raise ValueError(f"--run {args.run} does not exist (a run folder: model.keras and "
                         "tokenizer/)")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens}: must be >= 1")
    from kzoo.data.instruction import get_template

    try:
        # "chat": a user turn in the model's chat template (rendered to ids when sampling)
        template = "chat" if args.template == "chat" else get_template(args.template)
    except ValueError as error:
        raise ValueError(f"--template {args.template!r}: {error}") from None
    prompts = read_prompts(args.prompts)
    knobs = {k: getattr(args, k) for k in SAMPLER_FLAGS}
    sampler = build_sampler(args.sampler, knobs)
    seed = secrets.randbelow(2**31) if args.seed is None else args.seed
    # The model, sampler, length and template are also part of each item's id (`start`).
    provenance = {"model": str(args.run), "source": str(args.prompts),
                  "sampler": {"name": args.sampler,
                              **{k: v for k, v in knobs.items() if v is not None}},
                  "max_new_tokens": args.max_new_tokens}
    provenance["template"] = args.template
    return prompts, (sampler, seed, template), provenance


def _token(args) -> str | None:
    """The token every request must carry: --token, else a new one for a --host that is not a
    loopback address (anyone who reaches it could read the prompts and write judgements)."""
    from kzoo.cli.rate.asgi import is_loopback

    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port {args.port}: must be in 0..65535 (0: any free port)")
    if args.token is not None and not re.fullmatch(r"[A-Za-z0-9._~-]+", args.token):
        raise ValueError("--token: letters, digits and . _ ~ - only (it goes in a URL and a "
                         "cookie); leave it out to get a random one")
    if args.token is None and not is_loopback(args.host):
        return secrets.token_urlsafe(24)
    return args.token


def _load_model(args):
    """The --run model and tokenizer; TensorFlow is imported here, not for --candidates."""
    from kzoo._quiet import import_tensorflow_quietly, probe_devices_quietly

    import_tensorflow_quietly()
    import kzoo.generation  # noqa: F401  registers kzoo's layers with Keras: the model loads
    from kzoo.models.sources import load_model_and_tokenizer

    probe_devices_quietly()  # no "failed call to cuInit" line on a machine without a GPU
    return load_model_and_tokenizer(args.run, args.tokenizer, args.model_file, what="--run",
                                    where="--tokenizer")


def _todo(prompts, store, provenance: dict, setting: dict) -> list[tuple[int, str]]:
    """(line, prompt) of the prompts no earlier session judged with this model and sampler.

    A prompt counts as judged when its pair was, or both its completions (thumbs mode); an
    older kzoo's id (the prompt's hash alone) counts when its judgement recorded the same
    model, sampler, length and template.
    """
    from kzoo.cli.rate.sources import prompt_id

    same = {k: provenance.get(k) for k in ("model", "sampler", "max_new_tokens", "template")}

    def judged(unit_id, legacy=False):
        return unit_id in store.judged and (not legacy or store.setting_of.get(unit_id) == same)

    def done(unit_id, legacy=False):
        return judged(unit_id, legacy) or (judged(f"{unit_id}:0", legacy)
                                          and judged(f"{unit_id}:1", legacy))

    return [(i, p) for i, p in enumerate(prompts)
            if not (done(prompt_id(p, setting)) or done(prompt_id(p), legacy=True))]


def start(args, out=None):
    """Check the input, load the model (--run), bind the port, open the store, start live
    sampling; (server, store) ready for `server.serve_forever()`.

    Raises:
        ValueError: bad input (one line); nothing is written then.
    """
    from kzoo.cli.rate.server import RateApp, attach, make_server
    from kzoo.cli.rate.sources import LiveSampler
    from kzoo.cli.rate.store import RatingStore, sibling_paths

    out = sys.stdout if out is None else out
    sibling_paths(args.out)
    token = _token(args)
    items, live_spec, provenance = _prepare(args)
    model = tokenizer = None
    if live_spec is not None:  # loaded before the port and files: its errors leave no trace
        model, tokenizer = _load_model(args)
    server = make_server(args.host, args.port, token=token)
    try:
        store = RatingStore(args.out)
    except ValueError:
        server.server_close()
        raise
    live, judged_before = None, 0
    if live_spec is not None:
        sampler, seed, template = live_spec
        setting = {"model": str(Path(args.run).resolve()), "model_file": args.model_file,
                   **{k: provenance[k] for k in ("sampler", "max_new_tokens", "template")}}
        todo = _todo(items, store, provenance, setting)
        judged_before = len(items) - len(todo)
        live = LiveSampler(model, tokenizer, [p for _, p in todo], sampler, provenance, seed,
                           args.max_new_tokens, indices=[i for i, _ in todo],
                           template=template, setting=setting)
        items = []
        print(f"kzoo rate: sampling {len(todo)} prompts with seed {seed}"
              + (f" ({judged_before} judged before)" if judged_before else ""), file=out)
    attach(server, RateApp(items, store, provenance, live=live, title=args.out,
                           judged_before=judged_before))
    if live is not None:
        live.start()
    host, port = server.server_address[:2]
    host = f"[{host}]" if ":" in host else host
    query = f"mode={args.mode}" + (f"&token={token}" if token else "")
    print(f"kzoo rate: http://{host}:{port}/?{query}  writing {args.out}  (Ctrl-C stops)",
          file=out, flush=True)
    return server, store


def run(args, out=None) -> int:
    """`start`, then serve until Ctrl-C (exit code 0)."""
    server, store = start(args, out)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run `kzoo rate` with `argv` (default: sys.argv[1:]); the exit code (2: bad input).

    Example:
    ```python
    main(["--candidates", "c.jsonl", "--out", "ratings.jsonl"])
    ```
    """
    args = parse_args(argv)
    try:
        return run(args)
    except ValueError as error:  # bad input: one line on stderr, code 2
        print("error: " + " ".join(str(error).split()), file=sys.stderr)
        return 2


__all__ = ["main"]
