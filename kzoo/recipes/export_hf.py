"""Write a run's model (and tokenizer) as a Hugging Face folder transformers loads.

    python recipes/export_hf.py runs/dpo exported/
    kzoo export_hf runs/dpo exported/
    python recipes/export_hf.py runs/gpt_nano_pydocs exported/ --model-file best.keras

RUN_DIR is a kzoo run folder (pretrain, SFT or DPO): its model file (default model.keras)
becomes config.json, generation_config.json and model.safetensors, in the model's own dtype.
Its tokenizer/ comes along when it has a Hugging Face form (a tokenizer loaded from a Hugging
Face folder, or a kzoo BPE, written with kzoo's chat template); a byte or char tokenizer has
none, and the folder is written without one (said on stdout). OUT_DIR must be new or empty:
the folder is written beside it under a temporary name and renamed when complete, so a failed
export leaves nothing. Bad input is one `error: ...` line on stderr and exit code 2.
"""

import argparse
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="kzoo run folder (model.keras and tokenizer/)")
    parser.add_argument("out_dir", help="new or empty folder to write")
    parser.add_argument("--model-file", dest="model_file", default="model.keras",
                        help="model inside the run folder (default model.keras)")
    return parser.parse_args(argv)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"OUT_DIR {out} exists and is a file")
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"OUT_DIR {out} is not empty; export_hf writes only into a new or "
                         "empty folder (it never overwrites files it did not write)")


def hf_tokenizer(tokenizer):
    """The Hugging Face form of a run's tokenizer, or None when it has none.

    Args:
        tokenizer: kzoo Tokenizer or None. the run's tokenizer.

    Returns:
        HFTokenizer or None. an `HFTokenizer` as is, a kzoo BPE converted
        (`HFTokenizer.from_kzoo`), None for byte and char tokenizers.

    Example:
    ```python
    from kzoo.tokenizers import ByteTokenizer
    hf_tokenizer(ByteTokenizer())   # None
    ```
    """
    from kzoo.tokenizers import HFTokenizer

    if tokenizer is None or isinstance(tokenizer, HFTokenizer):
        return tokenizer
    if tokenizer.kind == "bpe":
        return HFTokenizer.from_kzoo(tokenizer)
    return None


def export(run_dir: str, out_dir: str, model_file: str = "model.keras") -> dict:
    """Write the model of `run_dir` to `out_dir` as a Hugging Face folder.

    Args:
        run_dir: str. a kzoo run folder.
        out_dir: str. a new or empty folder.
        model_file: str. the model inside the run folder.

    Returns:
        dict. `out_dir`, `model_type`, `parameters` and `tokenizer` (its kind, or None).

    Raises:
        ValueError: one line: not a run folder, a damaged model or tokenizer, a non-empty
            OUT_DIR, or a model setting transformers has no architecture for.

    Example:
    ```python
    export("runs/dpo", "exported")   # {'out_dir': 'exported', 'model_type': 'llama', ...}
    ```
    """
    import json

    from kzoo.models.sources import find_model_source
    from kzoo.tokenizers import check_vocab, load_tokenizer

    out = Path(out_dir)
    _check_out(out)
    source = find_model_source(run_dir, model_file, what="RUN_DIR")
    if source.kind != "run":
        raise ValueError(f"RUN_DIR {run_dir} is a {source.kind} model, not a kzoo run folder; "
                         "export_hf writes a run's model (kzoo-run.json, model.keras)")
    model = source.load_model()
    folder = source.path / "tokenizer"
    tokenizer = load_tokenizer(folder) if folder.is_dir() else None
    if tokenizer is not None:
        check_vocab(tokenizer, model.vocab_size, where=str(source.model_path))
    converted = hf_tokenizer(tokenizer)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create {out.parent}: {error.strerror or error}") from None
    tmp = out.with_name(f".{out.name}.export-{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)  # one a killed export of this pid left
    try:
        model.save_hf(tmp, tokenizer=converted)
        os.replace(tmp, out)  # onto an empty folder too (checked above)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"writing {out} failed: {error.strerror or error}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    return {"out_dir": str(out), "model_type": config["model_type"],
            "parameters": int(model.count_params()),
            "tokenizer": None if converted is None else tokenizer.kind,
            "tokenizer_left_out": None if converted is not None or tokenizer is None
            else tokenizer.kind}


def main(argv=None) -> int:
    from kzoo.training.recipe import error_line

    args = parse_args(argv)
    try:
        result = export(args.run_dir, args.out_dir, args.model_file)
    except ValueError as error:  # bad input: one line naming the folder or file; code 2
        print(error_line(error), file=sys.stderr)
        return 2
    print(f"wrote {result['out_dir']}: a {result['model_type']} model, "
          f"{result['parameters']:,} parameters")
    if result["tokenizer"]:
        print(f"with the run's {result['tokenizer']} tokenizer (tokenizer.json, "
              "tokenizer_config.json)")
    elif result["tokenizer_left_out"]:
        print(f"without a tokenizer: the run's {result['tokenizer_left_out']} tokenizer has no "
              "Hugging Face form (give transformers one of your own)")
    else:
        print(f"without a tokenizer: {args.run_dir} has no tokenizer/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
