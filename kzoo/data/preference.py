"""Preference pairs for DPO and reward models: reading, checking, encoding, batching.

Accepted record forms (JSON list, JSONL or Parquet, or a TFDS data set with `tfds:NAME`):

- TRL's: `{"prompt": ..., "chosen": ..., "rejected": ...}`
- Alpaca-style: `{"instruction": ..., "input": ..., "chosen": ..., "rejected": ...}`
- TRL's conversational: `prompt`, `chosen`, `rejected` lists of messages, or only `chosen` and
  `rejected` (their common message prefix is the prompt), rendered with the tokenizer's chat
  template (`kzoo.data.conversation`); string records are too under `template="chat"`.

Each pair becomes two rows, chosen then rejected, of `prompt + response + end-of-text`, right
padded to `max_length`; a loss mask marks response tokens only. Truncation keeps the prompt's
start (at most `max_prompt_length` tokens) and cuts the response's end. Bad pairs (chosen equal to
rejected, an empty response, a prompt that leaves no room for a response) are skipped and counted,
or raise a ValueError under `strict=True`. A malformed record always raises, naming the file and
record (or line).

Example:
```python
from kzoo.data.preference import encode_pairs, read_preference_records
from kzoo.tokenizers import ByteTokenizer
records, counts = read_preference_records("../shared/data/instruction-preference.json")
arrays = encode_pairs(records, ByteTokenizer(), max_length=256)
arrays["token_ids"].shape   # (pairs, 2, 256): [:, 0] chosen, [:, 1] rejected
```
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kzoo.data.conversation import (
    encode_conversation,
    fit_sequence,
    has_response,
    is_conversational,
    preference_conversation,
)
from kzoo.data.instruction import CHAT, PromptTemplate, build_sequence, get_template
from kzoo.data.records import check_text_fields, read_records

DEFAULT_FIELDS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}


def _normalize(where: str, record) -> dict:
    if is_conversational(record):
        return preference_conversation(where, record)
    if isinstance(record, dict) and "prompt" in record:
        check_text_fields(where, record, ("prompt", "chosen", "rejected"))
        return {k: record[k] for k in ("prompt", "chosen", "rejected")}
    check_text_fields(where, record, ("instruction", "chosen", "rejected"), ("input",))
    return {k: record.get(k, "") for k in ("instruction", "input", "chosen", "rejected")}


def _tfds_records(name: str, split: str, data_dir: str | None, fields: dict):
    from kzoo._quiet import import_tensorflow_quietly

    import_tensorflow_quietly(any_backend=True)  # TFDS imports it, loudly
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # tfds raises its own DatasetNotFoundError type.
        raise ValueError(f"Unknown TFDS data set {name!r}: {error}") from None
    builder.download_and_prepare()
    missing = sorted(set(fields.values()) - set(builder.info.features))
    if missing:
        raise ValueError(
            f"TFDS data set {name!r} has no feature(s) {missing}; features are "
            f"{sorted(builder.info.features)}. Map them with `fields`."
        )
    out = []
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    for i, example in enumerate(tfds.as_numpy(dataset)):
        record = {}
        for ours, theirs in fields.items():
            value = example[theirs]
            record[ours] = value.decode("utf-8") if isinstance(value, bytes) else value
        out.append((f"tfds:{name}[{split}] example {i}", record))
    return out


def read_preference_records(source: str | Path, strict: bool = False, split: str = "train",
                            data_dir: str | None = None, fields: dict | None = None):
    """Read and check preference pairs from a JSON/JSONL file or a TFDS data set.

    Args:
        source: str or Path. a `.json` / `.jsonl` / `.parquet` path, or `"tfds:NAME"`.
        strict: bool. raise a ValueError on a pair whose chosen equals its rejected response
            or that has an empty response, instead of skipping and counting it.
        split: str. TFDS split (TFDS sources only).
        data_dir: str or None. TFDS data folder (TFDS sources only).
        fields: dict or None. TFDS feature names for "prompt", "chosen", "rejected".

    Returns:
        `(records, counts)`: normalized dicts (conversations as `prompt`, `chosen`, `rejected`
        message lists), and counts {"read", "kept", "identical", "empty"}.

    Raises:
        ValueError: naming the source and record: a malformed record, a bad pair under
            `strict`, or no usable pair at all (an empty source, or every pair skipped).

    Example:
    ```python
    from kzoo.data.preference import read_preference_records
    records, counts = read_preference_records("pairs.jsonl", strict=True)
    ```
    """
    source = str(source)
    if source.startswith("tfds:"):
        raw = _tfds_records(source[5:], split, data_dir, {**DEFAULT_FIELDS, **(fields or {})})
    else:
        raw = read_records(source)
    records, counts = [], {"read": len(raw), "kept": 0, "identical": 0, "empty": 0}
    for where, record in raw:
        record = _normalize(where, record)
        problem = None
        if not all(has_response(r) if isinstance(r, list) else r.strip()
                   for r in (record["chosen"], record["rejected"])):
            problem, key = "has an empty response", "empty"
        elif record["chosen"] == record["rejected"]:
            problem, key = "has chosen == rejected", "identical"
        if problem:
            if strict:
                raise ValueError(f"{where}: the pair {problem} (strict=True)")
            counts[key] += 1
            continue
        records.append(record)
    counts["kept"] = len(records)
    if not records:
        if not raw:
            raise ValueError(f"{source} holds no preference pairs (0 records)")
        raise ValueError(
            f"{source}: no usable preference pairs: all {len(raw)} records were skipped "
            f"({counts['identical']} with chosen == rejected, {counts['empty']} with an empty "
            "response)")
    return records, counts


def _pair_rows(i: int, record: dict, tokenizer, template, max_length: int,
               max_prompt_length: int | None):
    """([(ids, mask) chosen, (ids, mask) rejected] or None when no response fits, prompt
    length in tokens) of one pair."""
    if is_conversational(record) or template == CHAT:
        if is_conversational(record):
            record = preference_conversation(f"pair {i}", record)
        else:
            user = [{"role": "user", "content": get_template("raw").format(record)}]
            record = {"prompt": user, **{k: [{"role": "assistant", "content": record[k]}]
                                         for k in ("chosen", "rejected")}}
        built, first = [], 0
        for key in ("chosen", "rejected"):
            ids, mask = encode_conversation(record["prompt"] + record[key], tokenizer,
                                            len(record["prompt"]), f"pair {i}")
            ids, mask, first = fit_sequence(ids, mask, max_length, max_prompt_length)
            built.append(None if ids is None else (ids, mask))
        return (None if None in built else built), first
    prompt_ids = np.asarray(tokenizer.encode(template.format(record)), np.int32)
    built = [
        build_sequence(prompt_ids, np.asarray(tokenizer.encode(record[key]), np.int32),
                       tokenizer.eot_id, max_length, max_prompt_length)
        for key in ("chosen", "rejected")
    ]
    return (None if built[0] is None else built), len(prompt_ids)


def encode_pairs(records: list[dict], tokenizer, max_length: int,
                 template: str | PromptTemplate = "alpaca", max_prompt_length: int | None = None,
                 strict: bool = False) -> dict:
    """Tokenize pairs into (pairs, 2, max_length) arrays, chosen at [:, 0], rejected at [:, 1].

    Args:
        records: list[dict]. from `read_preference_records`.
        tokenizer: a kzoo tokenizer (`encode`, `eot_id`).
        max_length: int. tokens per row (prompt + response + end-of-text, then padding).
        template: str or PromptTemplate. the prompt template (see `kzoo.data.instruction`),
            or "chat"; conversational pairs always use the tokenizer's chat template, the
            response being everything the template writes after the generation prompt.
        max_prompt_length: int or None. keep only the first this-many prompt tokens.
        strict: bool. raise a ValueError for a prompt that leaves no room for a response,
            instead of skipping and counting it.

    Returns:
        dict: "token_ids" int32 (N, 2, max_length) padded with `eot_id`; "loss_mask" float32
        (N, 2, max_length), 1.0 on response tokens; "lengths" int32 (N, 2) real tokens per
        row; "skipped" int, pairs dropped because the prompt was too long.

    Example:
    ```python
    from kzoo.data.preference import encode_pairs
    from kzoo.tokenizers import ByteTokenizer
    pair = {"prompt": "2+2=", "chosen": "4", "rejected": "5"}
    encode_pairs([pair], ByteTokenizer(), max_length=16, template="raw")["loss_mask"][0, 0]
    ```
    """
    if max_length < 2:
        raise ValueError(f"`max_length` must be at least 2. Received: max_length={max_length}")
    template = template if template == CHAT else get_template(template)
    eot = tokenizer.eot_id
    token_ids = np.full((len(records), 2, max_length), eot, np.int32)
    loss_mask = np.zeros((len(records), 2, max_length), np.float32)
    lengths = np.zeros((len(records), 2), np.int32)
    kept = 0
    for i, record in enumerate(records):
        built, prompt_length = _pair_rows(i, record, tokenizer, template, max_length,
                                          max_prompt_length)
        if built is None:
            if strict:
                raise ValueError(
                    f"pair {i}: the prompt has {prompt_length} tokens and leaves no room for a "
                    f"response in max_length={max_length} (set max_prompt_length or raise "
                    "max_length)"
                )
            continue
        for j, (ids, mask) in enumerate(built):
            token_ids[kept, j, : len(ids)] = ids
            loss_mask[kept, j, : len(mask)] = mask
            lengths[kept, j] = len(ids)
        kept += 1
    return {
        "token_ids": token_ids[:kept],
        "loss_mask": loss_mask[:kept],
        "lengths": lengths[:kept],
        "skipped": len(records) - kept,
    }


def check_encoded_pairs(train: dict, val: dict, source, max_length: int) -> None:
    """Refuse a training or validation split left without pairs, naming the data file and why.

    Args:
        train: dict. the encoded training pairs (`encode_pairs`).
        val: dict. the encoded validation pairs.
        source: str or Path. the data file (named in the message).
        max_length: int. the row length the pairs were encoded to.

    Raises:
        ValueError: one line: how many pairs each split kept, how many were skipped and why.

    Example:
    ```python
    check_encoded_pairs(train, val, "pairs.json", max_length=256)
    ```
    """
    skipped = train["skipped"] + val["skipped"]
    n_train, n_val = len(train["token_ids"]), len(val["token_ids"])
    why = (f"{skipped} skipped because the prompt leaves no room for a response in "
           f"max_length={max_length} (set data.max_prompt_length or raise data.max_length)")
    if n_train == 0:
        raise ValueError(f"{source}: no training pairs left: {n_val} went to validation, {why}")
    if n_val == 0:
        raise ValueError(
            f"{source}: no validation pairs left: 0 of {n_train + n_val + skipped} held out, "
            f"{why}; raise data.validation_fraction or add pairs")


def split_arrays(arrays: dict, validation_fraction: float, seed: int = 0):
    """Split encoded arrays into (train, validation) by a seeded permutation of the rows.

    Example:
    ```python
    from kzoo.data.preference import split_arrays
    train, val = split_arrays(arrays, validation_fraction=0.1, seed=0)
    ```
    """
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(
            f"`validation_fraction` must be in (0, 1). Received: {validation_fraction!r}"
        )
    n = len(arrays["token_ids"])
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * validation_fraction)))
    pick = {"validation": order[:n_val], "train": order[n_val:]}
    out = {}
    for part, rows in pick.items():
        out[part] = {k: v[rows] for k, v in arrays.items() if isinstance(v, np.ndarray)}
    return out["train"], out["validation"]


def preference_dataset(arrays: dict, batch_size: int, shuffle: bool = True, seed: int = 0,
                       drop_remainder: bool = False):
    """A `tf.data.Dataset` of input dicts (no targets) for `DPOModel.fit` / `RewardModel.fit`.

    Keys: "token_ids", "loss_mask", "lengths" and, when present, "reference_logps" (N, 2).

    Example:
    ```python
    from kzoo.data.preference import preference_dataset
    ds = preference_dataset(arrays, batch_size=8)
    ```
    """
    from kzoo._quiet import tensorflow

    tf = tensorflow()

    if len(arrays["token_ids"]) == 0:  # tf.data would fail on an empty shuffle buffer
        raise ValueError("no pairs to batch (0 rows): the data is empty or every pair was "
                         "skipped")
    keys = [k for k in ("token_ids", "loss_mask", "lengths", "reference_logps") if k in arrays]
    ds = tf.data.Dataset.from_tensor_slices({k: arrays[k] for k in keys})
    if shuffle:
        ds = ds.shuffle(len(arrays["token_ids"]), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
