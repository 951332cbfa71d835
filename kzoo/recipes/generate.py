"""Generate text from a run folder or a real model, streamed, or show the next-word odds.

    python recipes/generate.py --config recipes/configs/gpt/baby_shakespeare_char_generate.yaml
    kzoo generate --config gpt/baby_shakespeare_char_generate
    python recipes/generate.py runs/gpt_nano_pydocs --prompt 'The "for" statement' \\
        --sampler top_p --top-p 0.9 --temperature 0.8 --max-new-tokens 200 --seed 0
    python recipes/generate.py runs/gpt_nano_pydocs --prompt "def " --next-word --k 10 \\
        --temperatures 0.5 1 2 --png next_word.png
    python recipes/generate.py runs/gpt_mini --prompt "..." --sampler greedy --prompt-lookup 4
    python recipes/generate.py runs/gpt_mini --sampler greedy --draft-model runs/gpt_baby
    python recipes/generate.py runs/gpt_mini --sampler contrastive --penalty-alpha 0.6 --top-k 4

--prompt-lookup K drafts K tokens at a time from n-grams of the prompt and the text so far;
--draft-model PATH drafts --draft-tokens K (4) with a smaller model sharing the vocabulary.
Both are speculative decoding (`kzoo.generation.speculative`): greedy gives the same text as
without them, sampling the same distribution; one or the other, not with --sampler beam or
the penalties. --sampler contrastive (--penalty-alpha A in [0, 1], --top-k K) is contrastive
search (`kzoo.generation.contrastive`): deterministic, not with drafts, beams or the other knobs.

RUN_DIR is a kzoo run folder (model.keras, or --model-file, and tokenizer/), a Hugging Face
folder (config.json, model.safetensors, tokenizer.json) or a keras-hub preset folder
(save_to_preset); --tokenizer byte or a tokenizer folder replaces the one that came with it.
Nothing in the folder is executed: .keras files load in Keras' safe mode, Hugging Face weights
are safetensors only.
"""

import argparse
import dataclasses
import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kzoo.training.config import checked  # noqa: E402


@dataclasses.dataclass
class GenerateOptions:
    """The options: YAML keys of `--config`, each also a command-line flag (`top_p` is
    `--top-p`). Types and values are checked when the options are resolved; `temperature: 0`
    means greedy decoding (argmax), while each of `temperatures` (`--next-word`) must be > 0."""

    run_dir: str | None = None
    model_file: str = "model.keras"
    tokenizer: str = "auto"  # the model's own; or "byte", or a saved tokenizer folder
    prompt: str = "\n"
    max_new_tokens: int = checked(200, "positive")  # the generator needs at least one
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_at_eot: bool = True
    sampler: str = "top_k"
    temperature: float | None = checked(None, "non_negative")  # 0 means greedy
    top_k: int | None = None  # top_k, top_p, min_p and num_beams: checked by the sampler
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = checked(None, "positive")
    frequency_penalty: float | None = checked(None, "finite")
    presence_penalty: float | None = checked(None, "finite")
    num_beams: int | None = None
    penalty_alpha: float | None = None  # contrastive search; checked by the sampler
    next_word: bool = False
    k: int = checked(10, "positive")
    temperatures: list[float] = checked(check="positive", default_factory=lambda: [1.0])
    png: str | None = None
    truncate: bool = False
    prompt_lookup: int | None = checked(None, "positive")  # draft tokens from n-gram lookup
    draft_model: str | None = None  # a folder load_run reads, sharing the vocabulary
    draft_tokens: int = checked(4, "positive")  # per verification, with --draft-model


# YAML keys accepted by --config, with the command-line flag each one fills.
CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(GenerateOptions))
SAMPLER_KNOBS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                 "frequency_penalty", "presence_penalty", "num_beams", "penalty_alpha")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", help="run folder (model.keras and tokenizer/), "
                        "Hugging Face folder or keras-hub preset folder")
    parser.add_argument("--config", help="YAML file with any of the options below")
    parser.add_argument("--model-file", dest="model_file", help="model inside the run folder")
    parser.add_argument("--tokenizer", help="auto (the model's own), byte, or a tokenizer folder")
    parser.add_argument("--prompt")
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--stop", action="append", help="stop text (repeatable)")
    parser.add_argument("--no-stop-at-eot", dest="stop_at_eot", action="store_false",
                        default=None, help="keep going past the end-of-text token")
    parser.add_argument("--sampler", help="greedy, random, top_k, top_p, min_p, beam, "
                        "contrastive")
    for knob in SAMPLER_KNOBS:
        kind = int if knob in ("top_k", "num_beams") else float
        parser.add_argument("--" + knob.replace("_", "-"), dest=knob, type=kind)
    parser.add_argument("--next-word", dest="next_word", action="store_true", default=None,
                        help="print the next-token distribution instead of generating")
    parser.add_argument("--k", type=int, help="tokens shown by --next-word")
    parser.add_argument("--temperatures", type=float, nargs="+", help="for --next-word")
    parser.add_argument("--png", help="--next-word: also save the chart here")
    parser.add_argument("--truncate", action="store_true", default=None,
                        help="keep the end of a prompt longer than the context")
    parser.add_argument("--prompt-lookup", dest="prompt_lookup", type=int, metavar="K",
                        help="speculative decoding, K draft tokens from n-grams of the text")
    parser.add_argument("--draft-model", dest="draft_model", metavar="PATH",
                        help="speculative decoding with this smaller model's drafts")
    parser.add_argument("--draft-tokens", dest="draft_tokens", type=int, metavar="K",
                        help="draft tokens per step with --draft-model (default 4)")
    return parser.parse_args(argv)


def resolve_options(args) -> dict:
    """Defaults <- YAML config <- command line, checked against `GenerateOptions`.

    Raises:
        ValueError: one line naming the file and key, or the flag, of a bad option.
    """
    from kzoo.training.config import config_from_dict, read_yaml

    options = {}
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise ValueError(f"--config {path} does not exist")
        loaded = read_yaml(path)
        loaded = {} if loaded is None else loaded
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of options at the top level")
        unknown = sorted(set(loaded) - set(CONFIG_KEYS), key=str)
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {unknown}. Valid keys: {list(CONFIG_KEYS)}")
        config_from_dict(loaded, GenerateOptions, str(path))
        options.update(loaded)
    flags = {k: v for k, v in vars(args).items() if v is not None and k != "config"}
    for key, value in flags.items():
        flag = "RUN_DIR" if key == "run_dir" else "--" + key.replace("_", "-")
        config_from_dict({key: value}, GenerateOptions, flag)
    options.update(flags)
    options = dataclasses.asdict(config_from_dict(options, GenerateOptions, "the options"))
    if not options.get("run_dir"):
        raise ValueError("Give a run folder: `generate.py RUN_DIR` or run_dir: in --config")
    return options


def load_run(run_dir: str, model_file: str = "model.keras", tokenizer: str = "auto"):
    """The model and tokenizer of RUN_DIR (any form `kzoo.models.sources` accepts).

    Args:
        run_dir: str. a run folder, a Hugging Face folder or a keras-hub preset folder.
        model_file: str. the model inside a run folder.
        tokenizer: str. "auto" (the one that came with the model), "byte" or a folder.

    Example:
    ```python
    model, tokenizer = load_run("runs/gpt_nano_pydocs")
    ```
    """
    from kzoo.models.sources import load_model_and_tokenizer

    return load_model_and_tokenizer(run_dir, tokenizer, model_file, what="RUN_DIR",
                                    where="--tokenizer")


def build_sampler(options: dict):
    from kzoo import samplers

    name = options["sampler"]
    knobs = {k: options[k] for k in SAMPLER_KNOBS if options.get(k) is not None}
    if "num_beams" in knobs and name != "beam":
        if name == "contrastive":
            from kzoo.samplers.contrastive import COMBINES

            raise ValueError(f"--num-beams does not combine with --sampler contrastive: "
                             f"{COMBINES}")
        raise ValueError(f"--num-beams applies to --sampler beam, not {name!r}")
    if "penalty_alpha" in knobs and name != "contrastive":
        raise ValueError(f"--penalty-alpha is contrastive search's: use --sampler contrastive "
                         f"(with --top-k K), not {name!r}")
    return samplers.get(name, **knobs)


def draft_options(options: dict) -> dict:
    """`Generator`'s draft arguments from --prompt-lookup / --draft-model (empty: none)."""
    lookup, path = options.get("prompt_lookup"), options.get("draft_model")
    if lookup is not None and path is not None:
        raise ValueError("--prompt-lookup and --draft-model do not combine: choose one")
    if lookup is not None:
        return {"draft": "prompt_lookup", "num_draft_tokens": lookup}
    if path is not None:
        from kzoo.models.sources import find_model_source

        # The draft's own tokenizer is not needed: Generator checks the vocabulary sizes.
        draft = find_model_source(path, "model.keras", "--draft-model").load_model()
        return {"draft": draft, "num_draft_tokens": options.get("draft_tokens", 4)}
    return {}


def run(options: dict, out=None) -> dict:
    from kzoo.generation import Generator, plot_distributions, temperature_sweep

    out = sys.stdout if out is None else out  # looked up now: sys.stdout may be replaced

    model, tokenizer = load_run(options["run_dir"], options["model_file"], options["tokenizer"])
    prompt = str(options["prompt"])
    if options["next_word"]:
        dists = temperature_sweep(model, prompt, options["temperatures"], options["k"],
                                  tokenizer, truncate=options["truncate"])
        for dist in dists:
            print(dist.bars(), file=out)
        if options.get("png"):
            print(f"saved {plot_distributions(dists, options['png'])}", file=out)
        return {"next_word": [vars(d) for d in dists]}

    sampler = build_sampler(options)
    generator = Generator(model, sampler, tokenizer=tokenizer, **draft_options(options))
    kwargs = dict(
        max_new_tokens=options["max_new_tokens"], seed=options.get("seed"),
        stop_token_ids=tokenizer.stop_token_ids if options["stop_at_eot"] else None,
        stop_sequences=options.get("stop"), truncate=options["truncate"],
    )
    print(prompt, end="", file=out, flush=True)
    if generator.is_beam:  # beams are only decided at the end: print the winner at once
        text = generator.generate(prompt, **kwargs).texts[0]
        print(text, file=out)
        return {"text": text}
    pieces = []
    for piece in generator.stream(prompt, **kwargs):
        pieces.append(piece)
        print(piece, end="", file=out, flush=True)
    print(file=out)
    return {"text": "".join(pieces)}


def main(argv=None) -> int:
    from kzoo.training.recipe import error_line

    try:
        run(resolve_options(parse_args(argv)))
    except ValueError as error:  # bad input: one line naming the file, key or flag; code 2
        print(error_line(error), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
