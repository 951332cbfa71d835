"""Instruction data for supervised fine-tuning (SFT): prompt templates, reading, encoding.

Records are Alpaca-style (`instruction`, optional `input`, `output`) or prompt/completion style
(`prompt`, `completion`). A prompt template turns a record into the prompt text; the response
follows it and ends with the tokenizer's end-of-text id. The loss mask marks response tokens only,
so the model learns to answer, not to recite prompts.

Example:
```python
from kzoo.data.instruction import encode_sft, read_instruction_records
from kzoo.tokenizers import ByteTokenizer
records = [{"instruction": "Say hi.", "input": "", "output": "Hi!"}]
arrays = encode_sft(records, ByteTokenizer(), max_length=128)
arrays["token_ids"].shape, arrays["loss_mask"].shape   # (1, 128), (1, 128)
```
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kzoo.data.conversation import (
    encode_conversation,
    fit_sequence,
    is_conversational,
    prompt_key,
    sft_conversation,
)
from kzoo.data.records import check_text_fields, read_records

# The former name, kept for callers that read JSON records through this module.
read_json_records = read_records

_ALPACA_HEAD = (
    "Below is an instruction that describes a task{extra}. "
    "Write a response that appropriately completes the request.\n\n"
)

# Named templates: (template used when the record has an input, template used when it has none).
TEMPLATES: dict[str, tuple[str, str]] = {
    "alpaca": (
        _ALPACA_HEAD.format(extra=", paired with an input that provides further context")
        + "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
        _ALPACA_HEAD.format(extra="") + "### Instruction:\n{instruction}\n\n### Response:\n",
    ),
    "plain": ("{instruction}\n{input}\n", "{instruction}\n"),
    "raw": ("{prompt}", "{prompt}"),
}
FIELDS = ("instruction", "input", "prompt")
# `template="chat"`: string records become a user turn and an assistant turn, rendered with the
# tokenizer's chat template (how a chat model is tuned on Alpaca-style data).
CHAT = "chat"


@dataclass(frozen=True)
class PromptTemplate:
    """Formats a record into prompt text with `str.format` fields {instruction}, {input}, {prompt}.

    `{prompt}` is the instruction, followed by a blank line and the input when there is one.

    Args:
        with_input: str. template for records whose `input` is not empty.
        without_input: str. template for the others.

    Example:
    ```python
    from kzoo.data.instruction import PromptTemplate
    PromptTemplate("Q: {prompt}\nA: ", "Q: {prompt}\nA: ").format({"instruction": "2+2?"})
    ```
    """

    with_input: str
    without_input: str

    def __post_init__(self):
        for text in (self.with_input, self.without_input):
            names = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
            unknown = sorted(names - set(FIELDS))
            if unknown:
                raise ValueError(
                    f"Prompt template {text!r} uses unknown field(s) {unknown}. "
                    f"Allowed fields: {list(FIELDS)}"
                )

    def format(self, record: dict) -> str:
        instruction = record.get("instruction", record.get("prompt", ""))
        extra = record.get("input", "") or ""
        prompt = record.get("prompt") or (instruction + (f"\n\n{extra}" if extra else ""))
        template = self.with_input if extra else self.without_input
        return template.format(instruction=instruction, input=extra, prompt=prompt)


def get_template(template: str | PromptTemplate) -> PromptTemplate:
    """A `PromptTemplate` from a name in `TEMPLATES`, a format string, or a template.

    A string containing `{` is taken as a custom format string used for every record.

    Example:
    ```python
    from kzoo.data.instruction import get_template
    get_template("alpaca"); get_template("Question: {prompt}\nAnswer: ")
    ```
    """
    if isinstance(template, PromptTemplate):
        return template
    if not isinstance(template, str):
        raise ValueError(f"`template` must be a name or a format string. Received: {template!r}")
    if template in TEMPLATES:
        return PromptTemplate(*TEMPLATES[template])
    if template == CHAT:
        raise ValueError("template 'chat' renders records with the tokenizer's chat template, "
                         "not a PromptTemplate: pass it to encode_sft or encode_pairs")
    if "{" in template:
        return PromptTemplate(template, template)
    raise ValueError(
        f"Unknown prompt template: {template!r}. Valid names: {sorted([*TEMPLATES, CHAT])}, "
        f"or a format string with fields {list(FIELDS)}"
    )


def read_instruction_records(path: str | Path) -> list[dict]:
    """Read SFT records from a `.json`, `.jsonl` or `.parquet` file.

    String records, `instruction`/`input`/`output` or `prompt`/`completion`, become dicts with
    `instruction`, `input`, `output` (prompt/completion records: `prompt` and `output`).
    Conversational records (`kzoo.data.conversation`), `{"messages": [...]}` or
    `{"prompt": [...], "completion": [...]}`, keep that form with only `role` and `content` in
    each message. A record with an empty response, a malformed conversation, or a file without
    records raises a ValueError naming the file and record (line, row).

    Example:
    ```python
    from kzoo.data.instruction import read_instruction_records
    records = read_instruction_records("../shared/data/instruction-data.json")
    ```
    """
    records = []
    for where, record in read_records(path):
        if is_conversational(record):
            messages, start = sft_conversation(where, record)
            out = ({"messages": messages} if "messages" in record else
                   {"prompt": messages[:start], "completion": messages[start:]})
            records.append(out)
            continue
        if isinstance(record, dict) and "prompt" in record:
            check_text_fields(where, record, ("prompt", "completion"))
            out = {"prompt": record["prompt"], "output": record["completion"]}
        else:
            check_text_fields(where, record, ("instruction", "output"), ("input",))
            out = {k: record.get(k, "") for k in ("instruction", "input", "output")}
        if not out["output"].strip():
            raise ValueError(f"{where}: the response ('output'/'completion') is empty")
        records.append(out)
    if not records:
        raise ValueError(f"{path} holds no instruction records (0 records)")
    return records


def build_sequence(prompt_ids: np.ndarray, response_ids: np.ndarray, eot_id: int,
                   max_length: int, max_prompt_length: int | None = None):
    """Prompt + response + end-of-text, truncated to `max_length`; None if no response fits.

    Truncation keeps the prompt's start (cut to `max_prompt_length` tokens when given) and cuts
    the response's end. Returns `(token_ids, loss_mask)`, both length <= max_length, with
    `loss_mask` 1.0 on the response tokens (the end-of-text included), 0.0 on the prompt.
    """
    if max_prompt_length is not None:
        prompt_ids = prompt_ids[:max_prompt_length]
    response = np.concatenate([response_ids, [eot_id]]).astype(np.int32)
    room = max_length - len(prompt_ids)
    # At least one response token must be predicted from a prompt token (the first target).
    if room < 1 or len(prompt_ids) == 0:
        return None
    response = response[:room]
    ids = np.concatenate([prompt_ids, response]).astype(np.int32)
    mask = np.concatenate([np.zeros(len(prompt_ids)), np.ones(len(response))]).astype(np.float32)
    return ids, mask


def _sft_row(i: int, record: dict, tokenizer, template, max_length: int,
             max_prompt_length: int | None):
    """(token_ids, loss_mask, prompt_length) of one record; ids None when nothing fits."""
    where = f"record {i}"
    if is_conversational(record) or template == CHAT:
        if is_conversational(record):
            messages, start = sft_conversation(where, record)
        else:
            user = get_template("raw").format(record)
            messages, start = [{"role": "user", "content": user},
                               {"role": "assistant", "content": record["output"]}], 0
        ids, mask = encode_conversation(messages, tokenizer, start, where)
        return fit_sequence(ids, mask, max_length, max_prompt_length)
    prompt_ids = np.asarray(tokenizer.encode(template.format(record)), np.int32)
    built = build_sequence(prompt_ids, np.asarray(tokenizer.encode(record["output"])),
                           tokenizer.eot_id, max_length, max_prompt_length)
    return (*(built or (None, None)), len(prompt_ids))


def encode_sft(records: list[dict], tokenizer, max_length: int,
               template: str | PromptTemplate = "alpaca", max_prompt_length: int | None = None,
               strict: bool = False) -> dict:
    """Tokenize SFT records into padded arrays with a response-only loss mask.

    String records are formatted with `template`; conversational records (and string records
    under `template="chat"`) are rendered with the tokenizer's chat template, learning every
    assistant turn and the end-of-turn text the template writes after it
    (`kzoo.data.conversation`), and get no extra end-of-text id: the template writes its own.

    Args:
        records: list[dict]. from `read_instruction_records`.
        tokenizer: a kzoo tokenizer (`encode`, `eot_id`).
        max_length: int. tokens per row, prompt and response together.
        template: str or PromptTemplate. the prompt template (see `get_template`), or "chat".
        max_prompt_length: int or None. keep at most this many prompt tokens (their start);
            for a conversation the prompt is everything before its first learned token.
        strict: bool. raise instead of skipping a record whose prompt leaves no room.

    Returns:
        dict with "token_ids" int32 (N, max_length) padded with `eot_id`, "loss_mask" float32
        (N, max_length), and "skipped" (number of records whose prompt was too long).

    Example:
    ```python
    from kzoo.data.instruction import encode_sft
    from kzoo.tokenizers import ByteTokenizer
    encode_sft([{"instruction": "Hi", "output": "Yo"}], ByteTokenizer(), 64, template="plain")
    chat = {"messages": [{"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Yo"}]}
    encode_sft([chat], ByteTokenizer(), 64)["loss_mask"].sum()   # "Yo", end-of-text, "\n\n"
    ```
    """
    template = template if template == CHAT else get_template(template)
    rows, masks, skipped = [], [], 0
    for i, record in enumerate(records):
        ids, mask, prompt_length = _sft_row(i, record, tokenizer, template, max_length,
                                            max_prompt_length)
        if ids is None:
            if strict:
                raise ValueError(
                    f"record {i}: the prompt has {prompt_length} tokens, leaving no room for a "
                    f"response in max_length={max_length}"
                )
            skipped += 1
            continue
        rows.append(ids)
        masks.append(mask)
    token_ids = np.full((len(rows), max_length), tokenizer.eot_id, np.int32)
    loss_mask = np.zeros((len(rows), max_length), np.float32)
    for r, (ids, mask) in enumerate(zip(rows, masks)):
        token_ids[r, : len(ids)] = ids
        loss_mask[r, : len(mask)] = mask
    return {"token_ids": token_ids, "loss_mask": loss_mask, "skipped": skipped}


def sft_dataset(arrays: dict, batch_size: int, shuffle: bool = True, seed: int = 0,
                epochs: int | None = None):
    """A `tf.data.Dataset` of (x, y, sample_weight) for `model.fit`: next-token targets whose
    weight is the response mask, so only response tokens count in the loss.

    Args:
        arrays: dict. "token_ids" and "loss_mask", (rows, L) (`encode_sft`).
        batch_size: int. rows per batch.
        shuffle: bool. shuffle the rows (seeded).
        seed: int. shuffling seed.
        epochs: int | None. None: one pass, reshuffled at every new iterator. N: N passes in
            one dataset, pass e in the order of seed + e, every iterator the same; fit it with
            `steps_per_epoch=sft_steps(arrays, batch_size)`, so the order does not depend on
            how many iterators the trainer makes (JAX and PyTorch peek at a first batch with
            an iterator of their own; TensorFlow does not).

    Example:
    ```python
    from kzoo.data.instruction import encode_sft, sft_dataset
    from kzoo.tokenizers import ByteTokenizer
    arrays = encode_sft([{"instruction": "Hi", "output": "Yo"}], ByteTokenizer(), 64)
    ds = sft_dataset(arrays, batch_size=1)
    ```
    """
    from kzoo._quiet import tensorflow

    tf = tensorflow()

    ids, mask = arrays["token_ids"], arrays["loss_mask"]
    if len(ids) == 0:  # tf.data would fail on an empty shuffle buffer
        raise ValueError("no SFT rows to batch (0 rows): the data is empty or every record "
                         "was skipped")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be None or >= 1, got {epochs}")
    # Inputs are tokens 0..L-2, targets tokens 1..L-1: the weight of target t is mask[t].
    ds = tf.data.Dataset.from_tensor_slices((ids[:, :-1], ids[:, 1:], mask[:, 1:]))
    if epochs is None:
        if shuffle:
            ds = ds.shuffle(len(ids), seed=seed, reshuffle_each_iteration=True)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    passes = [(ds.shuffle(len(ids), seed=seed + e, reshuffle_each_iteration=False) if shuffle
               else ds).batch(batch_size) for e in range(epochs)]
    out = passes[0]
    for later in passes[1:]:
        out = out.concatenate(later)
    return out.prefetch(tf.data.AUTOTUNE)


def sft_steps(arrays: dict, batch_size: int) -> int:
    """Batches in one pass over `arrays` (the last one may be short): `steps_per_epoch` for
    `sft_dataset(..., epochs=N)`.

    Example:
    ```python
    sft_steps({"token_ids": np.zeros((10, 8))}, 4)   # 3
    ```
    """
    return -(-len(arrays["token_ids"]) // batch_size)


def split_records(records: list[dict], validation_fraction: float, seed: int = 0):
    """Split records into (train, validation) by a seeded hash of the prompt text.

    A conversation's prompt is every message before its last assistant turn (canonical JSON),
    so `{"messages": [user, assistant]}` and `{"prompt": [user], "chosen": [...], ...}` split
    alike. The split depends only on each record's prompt, so the SFT file and the preference
    file of the same prompts split identically (no held-out prompt is seen in SFT), records
    dropped as bad input do not shift it, and repeated prompts always land on the same side.

    Example:
    ```python
    from kzoo.data.instruction import split_records
    train, val = split_records(records, validation_fraction=0.1, seed=0)
    ```
    """
    import zlib

    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"`validation_fraction` must be in (0, 1). Received: {validation_fraction!r}"
        )
    train, val = [], []
    for record in records:
        key = prompt_key(record)
        if key is None:
            key = "\x00".join(record.get(k, "") for k in FIELDS)
        bucket = zlib.crc32(f"{seed}\x00{key}".encode()) % 100_000
        (val if bucket < validation_fraction * 100_000 else train).append(record)
    return train, val
