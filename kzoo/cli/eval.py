"""`kzoo eval MODEL --tasks a,b`: lm-eval tasks on a kzoo model, offline, with a results table.

    kzoo eval runs/gpt_nano_pydocs --tasks kzoo_arith_mc,kzoo_arith_gen,kzoo_pydocs_ppl
    kzoo eval SmolLM2-135M-Instruct --tasks my_task --include-path my_tasks --limit 100

MODEL is anything `model.init_from` takes: a run folder, a `.keras` file, a Hugging Face folder
or a keras-hub preset folder. Tasks are kzoo's suite (kzoo_pydocs_ppl, kzoo_arith_mc,
kzoo_arith_gen), lm-eval's own tasks whose data is already on this machine, and task folders
passed with --include-path (YAMLs with `dataset_path: json` and local `data_files`). Nothing
is downloaded. Writes results.json and results.md (the table, also printed) into --output,
by default MODEL/eval for a run folder and ./kzoo-eval/NAME otherwise. Exit codes: 0 done,
2 bad input (one `error: ...` line).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="kzoo eval", description=__doc__.splitlines()[0])
    parser.add_argument("model", metavar="MODEL",
                        help="run folder, .keras file, Hugging Face or keras-hub folder")
    parser.add_argument("--tasks", required=True,
                        help="comma-separated task, group or tag names (kzoo_arith_mc, ...)")
    parser.add_argument("--limit", type=float,
                        help="evaluate the first N docs of each task (a value < 1: a fraction)")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=8,
                        help="rows per forward and generation batch (default 8)")
    parser.add_argument("--include-path", dest="include_paths", action="append", default=[],
                        metavar="DIR", help="a folder of task YAMLs with local data (repeatable)")
    parser.add_argument("--output", help="folder for results.json and results.md")
    parser.add_argument("--num-fewshot", dest="num_fewshot", type=int,
                        help="override the tasks' number of few-shot examples")
    parser.add_argument("--tokenizer", default="auto",
                        help="auto (the model's own), byte, or a tokenizer folder")
    parser.add_argument("--model-file", dest="model_file", default="model.keras",
                        help="model inside a run folder (default model.keras)")
    parser.add_argument("--dtype", help="dtype of a converted Hugging Face or keras-hub model "
                        "(float32, bfloat16, mixed_bfloat16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of few-shot choices (0)")
    parser.add_argument("--metadata", default="{}", metavar="JSON",
                        help="a JSON object handed to every task, as lm-eval's --metadata (e.g. "
                        "'{\"shakespeare_path\": \"data/tinyshakespeare.txt\"}')")
    return parser.parse_args(argv)


def parse_metadata(text: str) -> dict:
    """--metadata's JSON object; a ValueError (one line) for anything else."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ValueError(f"--metadata is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--metadata must be a JSON object ({{\"key\": value}}); got {text}")
    return value


def _error(message: str) -> int:
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    return 2


def _limit(value):
    if value is None:
        return None
    if value <= 0:
        raise ValueError(f"--limit must be positive; got {value:g}")
    return int(value) if value >= 1 else value


def output_folder(args, source) -> Path:
    """--output, else the run folder's eval/, else ./kzoo-eval/NAME."""
    if args.output:
        return Path(args.output)
    if source.kind == "run":
        return source.path / "eval"
    return Path("kzoo-eval") / Path(args.model).resolve().name.removesuffix(".keras")


def main(argv=None) -> int:
    """`kzoo eval ...`; 0 when done, 2 on bad input (one `error: ...` line)."""
    args = parse_args(argv)
    # Before `datasets` and `huggingface_hub` are imported: they read these once.
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    from kzoo.models.sources import find_model_source

    try:
        limit = _limit(args.limit)
        if args.batch_size <= 0:
            raise ValueError(f"--batch-size must be positive; got {args.batch_size}")
        source = find_model_source(args.model, args.model_file, what="MODEL")
        from kzoo.eval.run import check_include_paths, parse_tasks

        tasks = parse_tasks(args.tasks)
        check_include_paths(args.include_paths)
        metadata = parse_metadata(args.metadata)
    except ValueError as error:
        return _error(str(error))
    try:
        import lm_eval  # noqa: F401
    except ModuleNotFoundError:
        return _error("kzoo eval needs lm-eval: pip install 'kzoo[eval]'")
    from kzoo.cli._library import load_library as _load_library

    _load_library()
    from kzoo.eval.run import markdown_table, prepare, run, write_report

    try:
        prepared = prepare(args.model, tasks, batch_size=args.batch_size,
                           include_paths=args.include_paths, tokenizer=args.tokenizer,
                           dtype=args.dtype, model_file=args.model_file, seed=args.seed,
                           metadata=metadata)
    except ValueError as error:
        return _error(str(error))
    output = run(prepared, limit=limit, num_fewshot=args.num_fewshot, seed=args.seed)
    written = write_report(output, output_folder(args, source))
    print(markdown_table(output))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
