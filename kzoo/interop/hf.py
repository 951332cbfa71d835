"""A Hugging Face model folder in, a `CausalLM` out, and back (`CausalLM.from_hf` / `save_hf`).

Loading reads `config.json`, refuses anything kzoo would compute differently (see
`kzoo.interop.hf_config`), builds the model, then copies the safetensors weights in one tensor
at a time, converting bf16/fp16 to the requested dtype on the way (`kzoo.interop.hf_weights`).
Saving writes a folder `transformers.AutoModelForCausalLM.from_pretrained` loads.

Example:
```python
from kzoo.interop.hf import load_hf, save_hf
from kzoo.models import CausalLM
save_hf(CausalLM.from_preset("llama_nano"), "llama_nano_hf")
model = load_hf("llama_nano_hf")
```
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from kzoo._files import read_json_object
from kzoo.interop.hf_config import hf_config_from_kzoo, kzoo_args_from_hf
from kzoo.interop.hf_weights import SINGLE_FILE, Checkpoint, export_tensors, load_weights
from kzoo.interop.safetensors_io import write_safetensors


def _folder(path) -> Path:
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder (expected a Hugging Face model folder "
                         "with config.json and model.safetensors)")
    return folder


def read_config(path: str | os.PathLike) -> dict:
    """The parsed `config.json` of a model folder (one-line ValueError when unreadable)."""
    file = _folder(path) / "config.json"
    if not file.is_file():
        raise ValueError(f"{file} is missing: a Hugging Face model folder starts with it")
    return read_json_object(file)


def load_hf(path: str | os.PathLike, dtype=None, **overrides):
    """Build a `CausalLM` from a local Hugging Face folder (any `model_type` of
    `kzoo.interop.SUPPORTED_MODEL_TYPES`).

    Args:
        path: str | PathLike. a folder with `config.json` and `model.safetensors` (or shards
            with `model.safetensors.index.json`).
        dtype: str or None. the model's dtype policy ("float32", "bfloat16",
            "mixed_bfloat16", ...); None: Keras' default (float32). Weights stored in another
            dtype are converted tensor by tensor.
        **overrides: `dropout` (training only), `max_sequence_length` (RoPE models),
            `attention_impl`, `name`.

    Returns:
        CausalLM. with the checkpoint's weights.

    Raises:
        ValueError: one line: an unsupported model_type (the supported ones are listed), a
            config field kzoo cannot compute, a missing shard or tensor, or a shape mismatch
            (naming the tensor, its file and both shapes).
    """
    from kzoo.models import CausalLM

    folder = _folder(path)
    config = read_config(folder)
    args, family = kzoo_args_from_hf(config, str(folder / "config.json"), overrides)
    checkpoint = Checkpoint(folder)  # before building: a folder without weights fails fast
    if dtype is not None:
        args["dtype"] = dtype
    # Built with zero weights (no random draws: every weight is overwritten next); the
    # config's initializer_range is kept for get_config and weights made later.
    initializer_range = args.pop("initializer_range")
    model = CausalLM(**args, initializer_range=0.0)
    model.initializer_range = initializer_range
    load_weights(model, checkpoint, family)
    return model


def save_hf(model, path: str | os.PathLike, tokenizer=None) -> Path:
    """Write `model` (and `tokenizer`) as a Hugging Face folder transformers can load.

    Args:
        model: CausalLM. the model; its family is the one whose transformers model computes
            the same (`kzoo.models.families.family_for_model`): GPT-style ones become "gpt2",
            Llama-style "llama", "qwen2" when only query/key/value projections have biases...
        path: str | PathLike. the folder (created).
        tokenizer: kzoo tokenizer or None. an `HFTokenizer`, or a kzoo `BPETokenizer`
            (written with kzoo's default chat template).

    Returns:
        Path. the folder.

    Raises:
        ValueError: one line when the model uses a setting no supported transformers model
            has, or the tokenizer has more ids than the model.
    """
    from kzoo.models.families import family_for_model_type
    from kzoo.tokenizers.hf import HFTokenizer

    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder")
    ids = {}
    if tokenizer is not None:
        if not isinstance(tokenizer, HFTokenizer):
            tokenizer = HFTokenizer.from_kzoo(tokenizer)
        if tokenizer.vocab_size > model.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                             f"{model.vocab_size}")
        eos = tokenizer.eos_token_ids
        ids = {"bos_token_id": tokenizer.bos_token_id, "pad_token_id": tokenizer.pad_token_id,
               "eos_token_id": eos[0] if len(eos) == 1 else (eos or None)}
    config = hf_config_from_kzoo(model, **ids)
    folder.mkdir(parents=True, exist_ok=True)
    producers, shapes = export_tensors(model, family_for_model_type(config["model_type"]).name)
    write_safetensors(folder / SINGLE_FILE, producers, {"format": "pt"}, shapes)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    generation = {k: v for k, v in ids.items() if v is not None}
    (folder / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n",
                                                   encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save(folder)
    return folder
