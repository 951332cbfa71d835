"""Unpaired feedback for KTO: one completion per record with a thumbs up or down.

Accepted record forms (JSON list, JSONL or Parquet), `label` a JSON boolean (true: desirable):

- TRL's unpaired: `{"prompt": str, "completion": str, "label": bool}`
- Alpaca-style: `{"instruction": str, "input": str (optional), "completion": str, "label": bool}`
- TRL's conversational: `prompt` and `completion` lists of messages, rendered with the
  tokenizer's chat template (`kzoo.data.conversation`); string records are too under
  `template="chat"`.

`unpair` turns preference pairs into such records (chosen = up, rejected = down, shuffled) and
`pair_up` goes back, for the held-out implied-reward accuracy. A row is `prompt + completion +
end-of-text`, right padded, with a loss mask on the completion, truncated as
`kzoo.data.preference.encode_pairs` truncates. `with_kl_rows` adds KTO's mismatched rows: in
each batch of consecutive rows, the completions shifted by one (row i gets row i-1's
completion, the first row the last one's), as TRL's collator builds them.

Example:
```python
from kzoo.data.preference import read_preference_records
from kzoo.data.unpaired import encode_unpaired, unpair, with_kl_rows
from kzoo.tokenizers import ByteTokenizer
pairs, _ = read_preference_records("../shared/data/instruction-preference.json")
arrays = encode_unpaired(unpair(pairs, seed=0), ByteTokenizer(), 256, template="plain")
arrays = with_kl_rows(arrays, batch_size=8)   # adds "kl_token_ids", "kl_loss_mask"
```
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from kzoo.data.conversation import (
    check_messages,
    check_trainable,
    encode_conversation,
    fit_sequence,
    has_response,
    is_conversational,
    prompt_key,
)
from kzoo.data.instruction import CHAT, FIELDS, PromptTemplate, get_template
from kzoo.data.records import check_text_fields, read_records

ROW_KEYS = ("token_ids", "loss_mask", "labels", "lengths", "kl_token_ids", "kl_loss_mask",
            "reference_logps", "reference_kl_logps")


def _normalize(where: str, record) -> dict:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "completion" not in record and {"chosen", "rejected"} <= set(record):
        raise ValueError(f"{where}: a chosen/rejected pair, not an unpaired record "
                         "{prompt, completion, label}; set data.unpair: true (or call unpair)")
    if "label" not in record:
        raise ValueError(f"{where}: missing field(s) ['label']; has {sorted(record)}")
    if not isinstance(record["label"], bool):
        raise ValueError(f"{where}: field 'label' must be a bool (true: thumbs up, false: "
                         f"thumbs down), got {type(record['label']).__name__} "
                         f"{record['label']!r}")
    if is_conversational(record):
        missing = [k for k in ("prompt", "completion") if k not in record]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}; has {sorted(record)}")
        prompt = check_messages(where, record["prompt"], "prompt")
        completion = check_messages(where, record["completion"], "completion")
        if has_response(completion):
            check_trainable(where, prompt + completion, len(prompt))
        return {"prompt": prompt, "completion": completion, "label": record["label"]}
    if "prompt" in record:
        check_text_fields(where, record, ("prompt", "completion"))
        return {k: record[k] for k in ("prompt", "completion", "label")}
    check_text_fields(where, record, ("instruction", "completion"), ("input",))
    return {"instruction": record["instruction"], "input": record.get("input", ""),
            "completion": record["completion"], "label": record["label"]}


def _empty(completion) -> bool:
    return not (has_response(completion) if isinstance(completion, list) else completion.strip())


def label_counts(records: list[dict]) -> dict:
    """{"desirable": n, "undesirable": m} of unpaired records."""
    up = sum(1 for r in records if r["label"])
    return {"desirable": up, "undesirable": len(records) - up}


def warn_one_sided(source, records: list[dict]) -> None:
    """Warn (UserWarning) when every record has the same label: KTO trains on them (as TRL
    allows), but learns nothing about the other kind."""
    counts = label_counts(records)
    if records and not (counts["desirable"] and counts["undesirable"]):
        kind = "true (thumbs up)" if counts["desirable"] else "false (thumbs down)"
        missing = "undesirable" if counts["desirable"] else "desirable"
        warnings.warn(f"{source}: all {len(records)} records have label {kind}: KTO trains, but "
                      f"no {missing} example tells the policy what to move away from / toward",
                      UserWarning, stacklevel=3)


def read_unpaired_records(source: str | Path, strict: bool = False):
    """Read and check unpaired `{prompt, completion, label}` records.

    Args:
        source: str or Path. a `.json`, `.jsonl` or `.parquet` file.
        strict: bool. raise on an empty completion instead of skipping and counting it.

    Returns:
        `(records, counts)`: normalized dicts and {"read", "kept", "empty", "desirable",
        "undesirable"}. Warns when every kept record has the same label.

    Raises:
        ValueError: one line naming the file and record: no records, a label that is not a
            bool, a missing field, a malformed conversation, an empty completion under `strict`,
            or every completion empty.

    Example:
    ```python
    from kzoo.data.unpaired import read_unpaired_records
    records, counts = read_unpaired_records("feedback.jsonl")
    ```
    """
    raw = read_records(source)
    if not raw:
        raise ValueError(f"{source} holds no unpaired records (0 records)")
    records, empty = [], 0
    for where, record in raw:
        record = _normalize(where, record)
        if _empty(record["completion"]):
            if strict:
                raise ValueError(f"{where}: the completion is empty (strict=True)")
            empty += 1
            continue
        records.append(record)
    if not records:
        raise ValueError(f"{source}: no usable records: all {len(raw)} completions are empty")
    warn_one_sided(source, records)
    counts = {"read": len(raw), "kept": len(records), "empty": empty, **label_counts(records)}
    return records, counts


def unpair(pairs: list[dict], seed: int = 0) -> list[dict]:
    """Preference pairs -> unpaired records: chosen labelled True, rejected False, shuffled.

    Args:
        pairs: list[dict]. from `kzoo.data.preference.read_preference_records`.
        seed: int. the shuffle's seed.

    Example:
    ```python
    from kzoo.data.unpaired import unpair
    unpair([{"prompt": "2+2=", "chosen": "4", "rejected": "5"}])
    # [{'prompt': '2+2=', 'completion': '5', 'label': False}, {... '4', 'label': True}]
    ```
    """
    out = []
    for pair in pairs:
        context = {k: v for k, v in pair.items() if k not in ("chosen", "rejected")}
        out.append({**context, "completion": pair["chosen"], "label": True})
        out.append({**context, "completion": pair["rejected"], "label": False})
    order = np.random.default_rng(seed).permutation(len(out))
    return [out[i] for i in order]


def _key(record: dict) -> str:
    key = prompt_key(record)
    return key if key is not None else "\x00".join(record.get(k, "") for k in FIELDS)


def pair_up(records: list[dict]) -> list[dict]:
    """Unpaired records -> preference pairs of the same prompt, a desirable completion with an
    undesirable one, in the order the prompts first appear; unmatched records are left out.

    Example:
    ```python
    from kzoo.data.unpaired import pair_up
    pair_up([{"prompt": "2+2=", "completion": "5", "label": False},
             {"prompt": "2+2=", "completion": "4", "label": True}])
    # [{'prompt': '2+2=', 'chosen': '4', 'rejected': '5'}]
    ```
    """
    groups: dict[str, tuple[list, list]] = {}
    for record in records:
        groups.setdefault(_key(record), ([], []))[0 if record["label"] else 1].append(record)
    pairs = []
    for ups, downs in groups.values():
        for up, down in zip(ups, downs):
            context = {k: v for k, v in up.items() if k not in ("completion", "label")}
            pairs.append({**context, "chosen": up["completion"], "rejected": down["completion"]})
    return pairs


def _pieces(i: int, record: dict, tokenizer, template, max_prompt_length: int | None):
    """(prompt_ids, completion_ids, completion_mask) of one record, the prompt already cut to
    `max_prompt_length`."""
    if is_conversational(record) or template == CHAT:
        where = f"record {i}"
        if is_conversational(record):
            prompt, completion = record["prompt"], record["completion"]
        else:
            prompt = [{"role": "user", "content": get_template("raw").format(record)}]
            completion = [{"role": "assistant", "content": record["completion"]}]
        ids, mask = encode_conversation(prompt + completion, tokenizer, len(prompt), where)
        learned = np.flatnonzero(mask > 0)
        first = int(learned[0]) if len(learned) else len(ids)
        prompt_ids, completion_ids, completion_mask = ids[:first], ids[first:], mask[first:]
    else:
        prompt_ids = np.asarray(tokenizer.encode(template.format(record)), np.int32)
        completion_ids = np.concatenate([np.asarray(tokenizer.encode(record["completion"]),
                                                    np.int32), [tokenizer.eot_id]])
        completion_mask = np.ones(len(completion_ids), np.float32)
    if max_prompt_length is not None:
        prompt_ids = prompt_ids[:max_prompt_length]
    return (prompt_ids.astype(np.int32), completion_ids.astype(np.int32),
            completion_mask.astype(np.float32))


def _row(prompt_ids, completion_ids, completion_mask, max_length):
    ids = np.concatenate([prompt_ids, completion_ids])
    mask = np.concatenate([np.zeros(len(prompt_ids), np.float32), completion_mask])
    ids, mask, _ = fit_sequence(ids, mask, max_length)
    return ids, mask


def encode_unpaired(records: list[dict], tokenizer, max_length: int,
                    template: str | PromptTemplate = "alpaca",
                    max_prompt_length: int | None = None, strict: bool = False) -> dict:
    """Tokenize unpaired records into (N, max_length) rows with a completion-only loss mask.

    Args:
        records: list[dict]. from `read_unpaired_records` or `unpair`.
        tokenizer: a kzoo tokenizer (`encode`, `eot_id`).
        max_length: int. tokens per row (prompt + completion + end-of-text, then padding).
        template: str or PromptTemplate. the prompt template, or "chat"
            (`kzoo.data.instruction`); conversational records use the chat template.
        max_prompt_length: int or None. keep only the first this-many prompt tokens.
        strict: bool. raise for a prompt that leaves no room for a completion, instead of
            skipping and counting it.

    Returns:
        dict: "token_ids" int32 (N, max_length) padded with `eot_id`; "loss_mask" float32
        (N, max_length); "labels" bool (N,); "lengths" int32 (N,); "skipped" int; "pieces"
        list of (prompt_ids, completion_ids, completion_mask), what `with_kl_rows` recombines;
        "pad_id" int.

    Example:
    ```python
    from kzoo.data.unpaired import encode_unpaired
    from kzoo.tokenizers import ByteTokenizer
    row = {"prompt": "2+2=", "completion": "4", "label": True}
    encode_unpaired([row], ByteTokenizer(), max_length=16, template="raw")["loss_mask"][0]
    ```
    """
    if max_length < 2:
        raise ValueError(f"`max_length` must be at least 2. Received: max_length={max_length}")
    template = template if template == CHAT else get_template(template)
    n = len(records)
    out = {"token_ids": np.full((n, max_length), tokenizer.eot_id, np.int32),
           "loss_mask": np.zeros((n, max_length), np.float32),
           "labels": np.zeros(n, bool), "lengths": np.zeros(n, np.int32)}
    pieces, kept = [], 0
    for i, record in enumerate(records):
        piece = _pieces(i, record, tokenizer, template, max_prompt_length)
        ids, mask = _row(*piece, max_length)
        if ids is None:
            if strict:
                raise ValueError(
                    f"record {i}: the prompt has {len(piece[0])} tokens and leaves no room for "
                    f"a completion in max_length={max_length} (set max_prompt_length or raise "
                    "max_length)")
            continue
        out["token_ids"][kept, : len(ids)] = ids
        out["loss_mask"][kept, : len(ids)] = mask
        out["labels"][kept] = bool(record["label"])
        out["lengths"][kept] = len(ids)
        pieces.append(piece)
        kept += 1
    arrays = {k: v[:kept] for k, v in out.items()}
    return {**arrays, "skipped": n - kept, "pieces": pieces, "pad_id": int(tokenizer.eot_id)}


def with_kl_rows(arrays: dict, batch_size: int, seed: int | None = 0) -> dict:
    """Order the rows (a seeded permutation; None keeps them) and add each row's KL row: the
    prompt of row i with the completion of row i-1 of the same batch of `batch_size`
    consecutive rows (the first row of a batch takes the batch's last completion).

    Batch the result in order (`unpaired_dataset(..., shuffle=False)`) and every batch's KL
    rows hold the batch's own completions, each under another prompt, as in TRL. A last batch
    of one row borrows the completion of the row before it.

    Args:
        arrays: dict. from `encode_unpaired` (needs "pieces").
        batch_size: int. the training batch size, >= 2.
        seed: int or None. the order's seed.

    Returns:
        a new dict with the rows reordered and "kl_token_ids" int32, "kl_loss_mask" float32,
        both (N, max_length).

    Raises:
        ValueError: batch_size < 2 or a single row: no mismatched pair exists.

    Example:
    ```python
    from kzoo.data.unpaired import with_kl_rows
    train = with_kl_rows(train, batch_size=8, seed=0)
    ```
    """
    n = len(arrays["token_ids"])
    if batch_size < 2 or n < 2:
        raise ValueError(
            f"KTO's KL estimate pairs each completion with another prompt of its batch, so it "
            f"needs batches of at least 2 rows; got batch_size={batch_size} and {n} row(s). "
            "Raise train.batch_size (and add data), or use loss_type apo_zero_unpaired (no KL)")
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    partner = np.empty(n, np.int64)  # position (in `order`) of the completion each row borrows
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if stop - start == 1:
            partner[start] = start - 1
            continue
        positions = np.arange(start, stop)
        partner[start:stop] = np.roll(positions, 1)  # [last, first, ..., second to last]
    pieces = [arrays["pieces"][i] for i in order]
    max_length = arrays["token_ids"].shape[1]
    kl_ids = np.full_like(arrays["token_ids"], arrays["pad_id"])
    kl_mask = np.zeros_like(arrays["loss_mask"])
    for k in range(n):
        _, completion_ids, completion_mask = pieces[partner[k]]
        ids, mask = _row(pieces[k][0], completion_ids, completion_mask, max_length)
        kl_ids[k, : len(ids)] = ids
        kl_mask[k, : len(mask)] = mask
    out = {k: v[order] for k, v in arrays.items() if isinstance(v, np.ndarray)}
    extra = {k: v for k, v in arrays.items() if not isinstance(v, np.ndarray)}
    return {**extra, **out, "kl_token_ids": kl_ids, "kl_loss_mask": kl_mask, "pieces": pieces}


def unpaired_dataset(arrays: dict, batch_size: int, shuffle: bool = False, seed: int = 0):
    """A `tf.data.Dataset` of input dicts for `KTOModel.fit` / `evaluate`, in row order by
    default (shuffling would split the batches `with_kl_rows` built the KL rows for).

    Keys: those of `ROW_KEYS` present in `arrays`.

    Example:
    ```python
    from kzoo.data.unpaired import unpaired_dataset
    ds = unpaired_dataset(with_kl_rows(arrays, 8), batch_size=8)
    ```
    """
    from kzoo._quiet import tensorflow

    tf = tensorflow()

    if len(arrays["token_ids"]) == 0:
        raise ValueError("no unpaired rows to batch (0 rows): the data is empty or every "
                         "record was skipped")
    ds = tf.data.Dataset.from_tensor_slices({k: arrays[k] for k in ROW_KEYS if k in arrays})
    if shuffle:
        ds = ds.shuffle(len(arrays["token_ids"]), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
