"""Hugging Face tokenizer folders (`tokenizer.json` + `tokenizer_config.json`) as kzoo tokenizers.

`from_hf(folder)` reads the fast-tokenizer file with the `tokenizers` library (JSON only: no
code, no pickle), then what transformers adds on top of it: the named special tokens (bos, eos,
pad, unk) and extra ones, the decode clean-up switch, the chat template (`chat_template.jinja`
or the config's `chat_template`), and the end tokens of `generation_config.json` /
`config.json`, so that generation stops where the model was trained to stop
(`eos_token_ids`). Which tokens `encode` adds (a BOS, say) is decided by `tokenizer.json`'s
post-processor, as in transformers 5, which also leaves `add_bos_token`/`add_eos_token` of a
`tokenizer_config.json` unapplied for these files (`test_hf_tokenizer.py` checks it). `save`
writes the same layout back, which both `from_hf` and transformers' `AutoTokenizer` read.

Example:
```python
from kzoo.tokenizers import BPETokenizer
from kzoo.tokenizers.hf import HFTokenizer, from_hf
tok = HFTokenizer.from_kzoo(BPETokenizer.train(["the cat sat on the mat"] * 20, vocab_size=300))
tok.save("tok_hf")
again = from_hf("tok_hf")
again.decode(again.encode("the mat")), again.eos_token_ids   # ('the mat', [0])
```
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from kzoo._files import read_json_object
from kzoo.tokenizers.base import EOT_TOKEN, Tokenizer, TokenizerFileError
from kzoo.tokenizers.chat_template import DEFAULT_CHAT_TEMPLATE, render_chat_template

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
TEMPLATE_FILE = "chat_template.jinja"
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                "mask_token")
# transformers' clean-up of spaces before punctuation (WordPiece-era; skipped for BPE).
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _read_json(path: Path, required: bool = False) -> dict:
    if not path.is_file():
        if required:
            raise TokenizerFileError(f"{path} is missing")
        return {}
    return read_json_object(path, TokenizerFileError)


def _content(token):
    """A special token as written in a config: a string or an AddedToken dict."""
    if isinstance(token, dict):
        return token.get("content")
    return token if isinstance(token, str) else None


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


class HFTokenizer(Tokenizer):
    """A `tokenizers.Tokenizer` with Hugging Face's special tokens and chat template.

    Not in the registry of trainable kinds: it is loaded from a folder (`from_hf`, or
    `load_tokenizer`, which recognizes the Hugging Face layout), never trained.

    Args:
        tokenizer: tokenizers.Tokenizer. the fast tokenizer (from `tokenizer.json`).
        special_tokens: dict. named special tokens, e.g. `{"eos_token": "</s>"}`.
        extra_special_tokens: list[str]. more special tokens (`<|im_end|>`, ...).
        chat_template: str or None. the Jinja chat template.
        eos_token_ids: list[int] or None. ids that end generation; default the eos token's.
        clean_up_tokenization_spaces: bool. transformers' decode clean-up (not for BPE).
        bos_token_id: int or None. the model's beginning id when no bos token is named.
        pad_token_id: int or None. likewise for padding.
    """

    kind = "hf"

    def __init__(self, tokenizer, special_tokens: dict | None = None,
                 extra_special_tokens=(), chat_template: str | None = None,
                 eos_token_ids=None, clean_up_tokenization_spaces: bool = False,
                 bos_token_id: int | None = None, pad_token_id: int | None = None):
        from tokenizers import AddedToken

        self._tok = tokenizer
        self.special_tokens = {k: v for k, v in (special_tokens or {}).items() if v is not None}
        self.extra_special_tokens = list(extra_special_tokens)
        self.chat_template = chat_template
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        # Like transformers: named special tokens become added tokens, matched whole in text.
        known = {t.content for t in tokenizer.get_added_tokens_decoder().values()}
        missing = [t for t in [*self.special_tokens.values(), *self.extra_special_tokens]
                   if t not in known]
        if missing:
            tokenizer.add_special_tokens(
                [AddedToken(t, special=True, normalized=False) for t in dict.fromkeys(missing)])
        eos = self.token_id("eos_token")
        ids = _ids(eos_token_ids) + ([eos] if eos is not None else [])
        self.eos_token_ids = list(dict.fromkeys(ids))  # in order, each once
        self._bos_id = self.token_id("bos_token", bos_token_id)
        self._pad_id = self.token_id("pad_token", pad_token_id)

    # ------------------------------------------------------------------ special tokens
    def token_id(self, name: str, default=None):
        """The id of named special token `name` ("eos_token", ...), or `default`."""
        token = self.special_tokens.get(name)
        found = None if token is None else self._tok.token_to_id(token)
        return default if found is None else found

    @property
    def bos_token_id(self):
        return self._bos_id

    @property
    def pad_token_id(self):
        return self._pad_id

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int:
        eos = self.token_id("eos_token")
        if eos is None and not self.eos_token_ids:
            raise ValueError("this tokenizer has no end-of-text token (no eos_token in "
                             f"{CONFIG_FILE}, no eos_token_id in generation_config.json)")
        return eos if eos is not None else self.eos_token_ids[0]

    @property
    def stop_token_ids(self) -> list[int]:
        return self.eos_token_ids or [self.eot_id]

    # ------------------------------------------------------------------ text <-> ids
    def encode(self, text: str, add_special_tokens: bool = True) -> np.ndarray:
        """The int32 ids of `text`; like transformers, the post-processor's tokens (a Llama
        BOS, say) are added unless `add_special_tokens=False`."""
        return np.asarray(self._tok.encode(text, add_special_tokens=add_special_tokens).ids,
                          np.int32)

    def encode_batch(self, texts, add_special_tokens: bool = True) -> list[np.ndarray]:
        return [np.asarray(e.ids, np.int32) for e in
                self._tok.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        text = self._tok.decode(np.asarray(ids).reshape(-1).tolist(),
                                skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces and type(self._tok.model).__name__ != "BPE":
            for before, after in _CLEAN_UP:
                text = text.replace(before, after)
        return text

    def apply_chat_template(self, messages, add_generation_prompt: bool = False,
                            tokenize: bool = True, chat_template: str | None = None,
                            **variables):
        """Render a conversation with the folder's chat template (sandboxed Jinja).

        Args:
            messages: list[dict]. `{"role", "content"}` turns.
            add_generation_prompt: bool. end with the assistant header.
            tokenize: bool. return ids (encoded without adding special tokens again: the
                template writes them) instead of the text, as transformers does.
            chat_template: str or None. a template to use instead of the folder's.
            **variables: more names for the template (`tools=...`, `documents=...`, ...).

        Example:
        ```python
        from kzoo.tokenizers import BPETokenizer
        from kzoo.tokenizers.hf import HFTokenizer
        tok = HFTokenizer.from_kzoo(BPETokenizer.train(["hi there"] * 20, vocab_size=280))
        tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                tokenize=False)   # '### Instruction:\\nhi\\n\\n### Response:\\n'
        ```
        """
        template = chat_template or self.chat_template
        if template is None:
            raise ValueError("this tokenizer has no chat template; pass chat_template=... "
                             "(kzoo.tokenizers.chat_template.DEFAULT_CHAT_TEMPLATE for kzoo's)")
        text = render_chat_template(template, messages, add_generation_prompt,
                                    **{**self.special_tokens, **variables})
        return self.encode(text, add_special_tokens=False).tolist() if tokenize else text

    # ------------------------------------------------------------------ building
    @classmethod
    def from_kzoo(cls, tokenizer) -> HFTokenizer:
        """Wrap a kzoo `BPETokenizer` (its EOT is bos, eos and unk, as in GPT-2), with kzoo's
        default chat template."""
        inner = getattr(tokenizer, "_tok", None)
        if tokenizer.kind != "bpe" or inner is None:
            raise ValueError(f"a {tokenizer.kind!r} tokenizer has no Hugging Face form; "
                             "only kzoo's 'bpe' (a tokenizers BPE) and 'hf' tokenizers do")
        from tokenizers import Tokenizer as Fast

        copy = Fast.from_str(inner.to_str())
        return cls(copy, {"bos_token": EOT_TOKEN, "eos_token": EOT_TOKEN,
                          "unk_token": EOT_TOKEN}, chat_template=DEFAULT_CHAT_TEMPLATE)

    def get_config(self) -> dict:
        return {"special_tokens": self.special_tokens,
                "extra_special_tokens": self.extra_special_tokens,
                "eos_token_ids": self.eos_token_ids}

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `tokenizer.json`, `tokenizer_config.json`, `chat_template.jinja` and the end
        ids (`generation_config.json`, unless the folder already has one)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._tok.save(str(directory / TOKENIZER_FILE))
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **self.special_tokens,
                  "extra_special_tokens": self.extra_special_tokens,
                  "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False),
                                             encoding="utf-8")
        if self.chat_template is not None:
            (directory / TEMPLATE_FILE).write_text(self.chat_template, encoding="utf-8")
        generation = directory / "generation_config.json"
        if not generation.exists():
            ids = {"bos_token_id": self.bos_token_id, "pad_token_id": self.pad_token_id,
                   "eos_token_id": self.eos_token_ids or None}
            generation.write_text(json.dumps(ids, indent=2), encoding="utf-8")
        return directory


def from_hf(path: str | os.PathLike) -> HFTokenizer:
    """Load the tokenizer of a Hugging Face model folder (or a folder written by `save`).

    Args:
        path: str | PathLike. a folder with `tokenizer.json`.

    Raises:
        ValueError: one line naming the missing or damaged file.

    Example:
    ```python
    from kzoo.tokenizers import BPETokenizer, from_hf
    from kzoo.tokenizers.hf import HFTokenizer
    bpe = BPETokenizer.train(["hi there"] * 20, vocab_size=280)
    HFTokenizer.from_kzoo(bpe).save("tok_hf")     # or a folder downloaded from the Hub
    tok = from_hf("tok_hf")
    ids = tok.apply_chat_template([{"role": "user", "content": "Hi"}],
                                  add_generation_prompt=True)
    ```
    """
    from tokenizers import Tokenizer as Fast

    folder = Path(path)
    file = folder / TOKENIZER_FILE
    if not file.is_file():
        other = [n for n in ("tokenizer.model", "vocab.json", "spiece.model")
                 if (folder / n).exists()]
        hint = (f"; it has {other}: save the tokenizer once with transformers "
                "(AutoTokenizer.from_pretrained(...).save_pretrained(...)) to write one"
                if other else "")
        raise TokenizerFileError(f"{file} is missing{hint}")
    try:
        fast = Fast.from_file(str(file))
    except Exception as error:  # `tokenizers` raises a bare Exception on a bad file
        raise TokenizerFileError(f"{file} is not a readable tokenizers file: "
                                 f"{' '.join(str(error).split())[:200]}") from None
    config = _read_json(folder / CONFIG_FILE)
    special = {name: _content(config.get(name)) for name in NAMED_TOKENS}
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens") or []
    extra = [_content(t) for t in (extra.values() if isinstance(extra, dict) else extra)]
    for entry in (config.get("added_tokens_decoder") or {}).values():
        if isinstance(entry, dict) and entry.get("special") and _content(entry):
            extra.append(_content(entry))
    template = config.get("chat_template")
    if (folder / TEMPLATE_FILE).is_file():
        template = (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
    if isinstance(template, list):  # older files: a list of named templates
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    generation = _read_json(folder / "generation_config.json")
    model = _read_json(folder / "config.json")
    eos_ids = _ids(generation.get("eos_token_id")) + _ids(model.get("eos_token_id"))
    tokenizer = HFTokenizer(
        fast, special, [t for t in extra if t], template, eos_ids,
        bool(config.get("clean_up_tokenization_spaces", False)),
        generation.get("bos_token_id", model.get("bos_token_id")),
        generation.get("pad_token_id", model.get("pad_token_id")),
    )
    return tokenizer
