"""Tokenizer folders in the layout of the Qwen3 and Gemma 3 checkpoints, made here: a small
tokenizer trained on the shared text, with the family's special tokens and chat template
(`kzoo.models.families.qwen3` / `gemma3` `CHAT_TEMPLATE`) in `tokenizer_config.json`, as the
Hub files keep them. Qwen3's is byte-level BPE like the real one; Gemma's is a BPE with byte
fallback over "▁"-marked words, like the real SentencePiece-converted one. The
`tokenizer_class` is the generic fast one, so transformers reads `tokenizer.json` as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

VOCAB = 600


def _lines(limit: int = 3000) -> list[str]:
    text = Path(os.environ.get("KZOO_TEST_DATA", "/work/shared/data"), "tinyshakespeare.txt")
    return text.read_text(encoding="utf-8").splitlines()[:limit]


def _qwen3_model(added):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_lines(), trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=list(added), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def _gemma3_model(added):
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(_lines(), trainers.BpeTrainer(
        vocab_size=VOCAB + 256, special_tokens=[*added, *bytes_], show_progress=False))
    # Gemma's encoder writes <bos> first; its chat template writes it too (add_special_tokens
    # is then off)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    return tok


def write_folder(family, folder) -> Path:
    """A tokenizer folder for `family` ("qwen3" or "gemma3") in `folder`."""
    from importlib import import_module

    module = import_module(f"kzoo.models.families.{family}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tok = {"qwen3": _qwen3_model, "gemma3": _gemma3_model}[family](module.ADDED_TOKENS)
    tok.save(str(folder / "tokenizer.json"))
    named = set(module.SPECIAL_TOKENS.values())
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", **module.SPECIAL_TOKENS,
        "additional_special_tokens": [t for t in module.ADDED_TOKENS
                                      if t not in named and "think" not in t
                                      and "tool" not in t],
        "clean_up_tokenization_spaces": False, "chat_template": module.CHAT_TEMPLATE,
        "model_max_length": 131072}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    # the instruction-tuned models stop at the turn end as well as the document end
    ends = {"qwen3": ["<|im_end|>", "<|endoftext|>"], "gemma3": ["<eos>", "<end_of_turn>"]}
    generation = {"eos_token_id": [tok.token_to_id(t) for t in ends[family]]}
    (folder / "generation_config.json").write_text(json.dumps(generation))
    return folder
