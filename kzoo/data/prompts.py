"""Prompt files for on-policy RL (GRPO, RLOO): prompts to sample from, and the columns the reward
functions read.

A prompt file is a `.json` list, `.jsonl` or `.parquet` table (`kzoo.data.records`) of records
with a `prompt`: a non-empty string, or a list of chat messages `{"role", "content"}` (TRL's
conversational prompt form, rendered later with the tokenizer's chat template). Every other
field is a column handed to the reward functions, one value per prompt (e.g. the `answer` an
exact-match reward checks); every record must have the same columns.

Example:
```python
import json
from kzoo.data.prompts import read_prompts, split_prompts
with open("sums.jsonl", "w") as f:
    f.write(json.dumps({"prompt": "07+13=", "answer": "20"}) + "\\n")
    f.write(json.dumps({"prompt": "01+02=", "answer": "03"}) + "\\n")
prompts = read_prompts("sums.jsonl")
prompts.prompts, prompts.columns   # ['07+13=', '01+02='], {'answer': ['20', '03']}
train, held_out = split_prompts(prompts, held_out_fraction=0.5, seed=0)
```
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from kzoo.data.conversation import check_messages
from kzoo.data.records import read_records

# Names the reward functions receive as keywords besides the columns (kzoo.alignment.rewards).
RESERVED_COLUMNS = ("prompts", "completions", "completion_ids", "finished")


@dataclasses.dataclass
class PromptSet:
    """Prompts with their columns and where each came from.

    Args:
        prompts: list. each a string or a list of chat messages `[{"role", "content"}]`.
        columns: dict[str, list]. every other field of the records, one value per prompt.
        locations: list[str]. where each record was read ("sums.jsonl line 3"), for errors.

    Example:
    ```python
    from kzoo.data.prompts import PromptSet
    ps = PromptSet(["1+1=", "2+2="], {"answer": ["02", "04"]}, ["a line 1", "a line 2"])
    len(ps), ps.select([1]).columns   # 2, {'answer': ['04']}
    ```
    """

    prompts: list
    columns: dict[str, list]
    locations: list[str]

    def __post_init__(self):
        n = len(self.prompts)
        sizes = {"locations": len(self.locations),
                 **{f"columns[{k!r}]": len(v) for k, v in self.columns.items()}}
        wrong = {k: v for k, v in sizes.items() if v != n}
        if wrong:
            raise ValueError(f"PromptSet: {n} prompts but {wrong}; every list needs one entry "
                             "per prompt")

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, indices) -> PromptSet:
        """The prompts at `indices` (ints, in that order, repeats allowed), with their columns.

        Example:
        ```python
        ps.select([0, 0, 1])   # e.g. each prompt repeated once per generation
        ```
        """
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not -len(self) <= i < len(self)]
        if bad:
            raise ValueError(f"PromptSet.select: index {bad[0]} is out of range for "
                             f"{len(self)} prompts")
        return PromptSet([self.prompts[i] for i in indices],
                         {k: [v[i] for i in indices] for k, v in self.columns.items()},
                         [self.locations[i] for i in indices])


def _check_prompt(where: str, prompt):
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{where}: 'prompt' is empty")
        return prompt
    if isinstance(prompt, list):
        if not prompt:
            raise ValueError(f"{where}: 'prompt' is an empty list of messages")
        return check_messages(where, prompt, "prompt")
    raise ValueError(f"{where}: 'prompt' must be a non-empty string or a list of messages "
                     f"{{'role', 'content'}}, got {type(prompt).__name__}")


def _from_instruction(record: dict) -> dict:
    """An Alpaca-style record (`instruction`, optional `input`) as a prompt record: the
    prompt is the instruction, then a blank line and the input (as `PromptTemplate` joins
    them); every field, `instruction` and `input` included, stays a column, so a template
    renders the record as the SFT recipe does."""
    extra = record.get("input") or ""
    prompt = record["instruction"] + (f"\n\n{extra}" if extra else "")
    return {"prompt": prompt, "input": extra, **record}


def read_prompts(path: str | Path) -> PromptSet:
    """Read a prompt file: `prompt` per record, every other field a column.

    Alpaca-style records (`instruction` and optional `input`, like the SFT and DPO data) are
    read too: the prompt is the instruction, a blank line and the input; render it with a
    template (`kzoo.alignment.rollout.encode_prompts(template="alpaca")`).

    Args:
        path: str | Path. a `.json`, `.jsonl` or `.parquet` file (`kzoo.data.records`).

    Returns:
        PromptSet. the prompts in file order, their columns and locations.

    Raises:
        ValueError: one line naming the file and record (line, row): an empty file, a record
            that is not an object or has no `prompt`, a `prompt` that is neither a non-empty
            string nor a list of messages, a column named like a reward keyword
            (`RESERVED_COLUMNS`), or records whose columns differ (the first record missing a
            column is named, with the first record that has it).

    Example:
    ```python
    from kzoo.data.prompts import read_prompts
    read_prompts("sums.jsonl").columns["answer"][:2]   # ['20', '03']
    ```
    """
    records = read_records(path)
    if not records:
        raise ValueError(f"{path} holds no prompts (0 records)")
    prompts, locations, fields = [], [], []
    for where, record in records:
        if not isinstance(record, dict):
            raise ValueError(f"{where}: expected a JSON object with a 'prompt', got "
                             f"{type(record).__name__}")
        if "prompt" not in record and isinstance(record.get("instruction"), str):
            record = _from_instruction(record)
        if "prompt" not in record:
            raise ValueError(f"{where}: no 'prompt' field (nor an Alpaca 'instruction'); has "
                             f"{sorted(record)}")
        reserved = sorted(set(record) & set(RESERVED_COLUMNS))
        if reserved:
            raise ValueError(f"{where}: column {reserved[0]!r} is a name reward functions "
                             f"receive as a keyword; rename it (reserved: "
                             f"{list(RESERVED_COLUMNS)})")
        prompts.append(_check_prompt(where, record["prompt"]))
        locations.append(where)
        fields.append({k: v for k, v in record.items() if k != "prompt"})
    names = list(dict.fromkeys(k for f in fields for k in f))  # first-seen order
    for where, values in zip(locations, fields):
        missing = [k for k in names if k not in values]
        if missing:
            first = next(loc for loc, f in zip(locations, fields) if missing[0] in f)
            raise ValueError(f"{where}: has no column {missing[0]!r} that {first} has; every "
                             f"record needs the same columns {names}")
    columns = {k: [f[k] for f in fields] for k in names}
    return PromptSet(prompts, columns, locations)


def _prompt_key(prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(
        prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def split_prompts(promptset: PromptSet, held_out_fraction: float, seed: int = 0):
    """Split into (train, held_out) by a seeded hash of each distinct prompt.

    The distinct prompts are ranked by `sha256(seed, prompt)`; the first
    `max(1, round(distinct * held_out_fraction))` (at most all but one) are held out. So the
    split depends only on the prompts and the seed (not on file order), repeats of a prompt
    always land on the same side, and both sides keep file order.

    Args:
        promptset: PromptSet. the prompts to split.
        held_out_fraction: float. in (0, 1), the share of distinct prompts held out.
        seed: int. picks which prompts are held out.

    Returns:
        tuple. `(train, held_out)` PromptSets.

    Raises:
        ValueError: a fraction outside (0, 1), or fewer than two distinct prompts.

    Example:
    ```python
    from kzoo.data.prompts import PromptSet, split_prompts
    ps = PromptSet([f"{i}+1=" for i in range(10)], {}, [f"line {i}" for i in range(10)])
    train, held_out = split_prompts(ps, 0.2, seed=0)   # 8 and 2 prompts
    ```
    """
    if isinstance(held_out_fraction, bool) or not isinstance(held_out_fraction, (int, float)) \
            or not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1); got {held_out_fraction!r}")
    keys = [_prompt_key(p) for p in promptset.prompts]
    distinct = list(dict.fromkeys(keys))
    if len(distinct) < 2:
        raise ValueError(f"cannot split {len(distinct)} distinct prompt(s) into a training and "
                         "a held-out part; add prompts")
    # Not crc32: it is linear, so changing the seed XORs every hash with nearly one constant
    # and can leave the ranking (hence the held-out set) as it was.
    ranked = sorted(distinct, key=lambda k: (
        hashlib.sha256(f"{seed}\x00{k}".encode()).digest(), k))
    n_held = min(max(1, round(len(distinct) * held_out_fraction)), len(distinct) - 1)
    held = set(ranked[:n_held])
    train = [i for i, k in enumerate(keys) if k not in held]
    held_out = [i for i, k in enumerate(keys) if k in held]
    return promptset.select(train), promptset.select(held_out)
