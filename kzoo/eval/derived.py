"""Tasks made when they load, from data the recipes train on: nothing is shipped or downloaded.

Three of kzoo's tasks are built from the data a user already has (the same files the recipes
read) or from code alone, each held out the way its recipe holds data out:

- `kzoo_shakespeare_mc`: from `tinyshakespeare.txt`, passages of the last 8% of the text
  (inside the 10% that the Shakespeare pre-training recipes validate on): choose the true next
  line of a speech among four lines of the same stretch of text, by log-likelihood;
- `kzoo_instruct_ll`: from `instruction-data.json`, the responses of the held-out records
  (the SFT recipe's split: `validation_fraction` 0.1, `split_seed` 0, by prompt hash), scored
  by their log-likelihood after the Alpaca prompt, in bits per byte of the response;
- `kzoo_sums_gen`: the feedback loop's own sums (`07+13=` -> `20`), every pair below
  `max_operand`, answered by greedy generation.

A file is found by the task's metadata (`shakespeare_path`, `instructions_path`: lm-eval's
`--metadata`, `kzoo eval --metadata`, the recipes' `eval.metadata`), else in the folder named by
the `KZOO_DATA` environment variable, else in `../shared/data` (the recipes' default paths).

Example:
```python
from kzoo.eval import derived
items = derived.shakespeare_items(open("tinyshakespeare.txt").read())
items[0]["choices"][items[0]["label"]]      # the line that really comes next
derived.sum_problems(max_operand=3)[5]      # {'question': '01+02=', 'answer': '03'}
```
"""

from __future__ import annotations

import os
import random
from pathlib import Path

DATA_ENV = "KZOO_DATA"
DEFAULT_DATA_DIR = "../shared/data"
SHAKESPEARE_TAIL = 0.08  # inside the recipes' 10% validation tail whatever the tokenizer
SHAKESPEARE_ITEMS, SHAKESPEARE_SEED, SHAKESPEARE_CHOICES = 200, 7, 4
INSTRUCT_FRACTION, INSTRUCT_SEED = 0.1, 0  # the SFT recipe's defaults


def data_file(metadata: dict, key: str, name: str, task: str) -> Path:
    """The local file a task is made from: `metadata[key]`, else `$KZOO_DATA/name`, else
    `../shared/data/name`.

    Raises:
        FileNotFoundError: naming the path tried, the task and both ways to point at the file.
    """
    given = metadata.get(key)
    path = Path(given) if given else Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR) / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is not a file; task {task} is made from {name}: pass --metadata "
            f"'{{\"{key}\": \"PATH\"}}' or set {DATA_ENV} to the folder that holds it")
    return path


def _dataset(test: list[dict]):
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(test)})


def shakespeare_items(text: str, count: int = SHAKESPEARE_ITEMS,
                      seed: int = SHAKESPEARE_SEED) -> list[dict]:
    """Next-line choices from the held-out tail of a play text (speeches split by blank lines,
    each headed by `SPEAKER:`).

    Each item: `context` (the speaker and the speech's lines so far), `choices` (four distinct
    lines: the true next line and three lines of other speeches of the tail, of similar length),
    `label` (the true line's index). Speeches are taken in order, so the first items are the same
    for any `count`.
    """
    tail = text[int(len(text) * (1.0 - SHAKESPEARE_TAIL)):]
    # The tail's first speech is cut at an arbitrary character: dropped.
    speeches = [[line for line in block.split("\n") if line.strip()]
                for block in tail.split("\n\n")[1:]]
    speeches = [s for s in speeches if len(s) >= 3 and s[0].endswith(":")]
    pool = [(index, line) for index, speech in enumerate(speeches) for line in speech[1:]]
    rng = random.Random(seed)
    items = []
    for index, speech in enumerate(speeches):
        if len(items) == count:
            break
        cut = rng.randrange(2, len(speech))  # at least one line of the speech is context
        true = speech[cut]
        similar = sorted({line for other, line in pool if other != index and line != true
                          and 0.5 * len(true) <= len(line) <= 2.0 * len(true)})
        if len(similar) < SHAKESPEARE_CHOICES - 1:
            continue
        choices = [true, *rng.sample(similar, SHAKESPEARE_CHOICES - 1)]
        rng.shuffle(choices)
        items.append({"context": "\n".join(speech[:cut]), "choices": choices,
                      "label": choices.index(true)})
    return items


def _made_from_file(metadata: dict, task: str, key: str, name: str, read, make, empty: str):
    """A task's test split: `make(read(path))` of its local file, refused when it is empty."""
    path = data_file(metadata, key, name, task)
    items = make(read(path))
    if not items:
        raise ValueError(f"task {task}: {path} {empty}")
    return _dataset(items)


def shakespeare(**metadata):
    """`kzoo_shakespeare_mc`'s data (lm-eval's `custom_dataset`)."""
    from kzoo.data.sources import read_text_file

    return _made_from_file(metadata, "kzoo_shakespeare_mc", "shakespeare_path",
                           "tinyshakespeare.txt", read_text_file, shakespeare_items,
                           "has no speeches (blocks of a 'SPEAKER:' line and at least two "
                           "lines) in its last 8%")


def instruction_items(records: list[dict], validation_fraction: float = INSTRUCT_FRACTION,
                      seed: int = INSTRUCT_SEED, template: str = "alpaca") -> list[dict]:
    """The held-out records (`kzoo.data.instruction.split_records`) as `prompt` (the template
    applied) and `response`; records whose prompt is a conversation are left out."""
    from kzoo.data.instruction import get_template, split_records

    _, held = split_records(records, validation_fraction, seed)
    form = get_template(template)
    return [{"prompt": form.format(record), "response": record["output"]} for record in held
            if isinstance(record.get("output"), str) and record["output"]
            and not isinstance(record.get("prompt"), list)]


def instructions(**metadata):
    """`kzoo_instruct_ll`'s data (lm-eval's `custom_dataset`)."""
    from kzoo.data.instruction import read_instruction_records

    return _made_from_file(metadata, "kzoo_instruct_ll", "instructions_path",
                           "instruction-data.json", read_instruction_records, instruction_items,
                           "holds no held-out record with a text response")


def sum_problems(max_operand: int = 20) -> list[dict]:
    """Every `a + b` with `0 <= a, b < max_operand`, written as the feedback loop writes them.

    Example: `sum_problems(2)` is four problems, the last `{"question": "01+01=", "answer": "02"}`.
    """
    if not 2 <= int(max_operand) <= 50:
        raise ValueError(f"task kzoo_sums_gen: max_operand must be in [2, 50]; got {max_operand}")
    return [{"question": f"{a:02d}+{b:02d}=", "answer": f"{a + b:02d}"}
            for a in range(max_operand) for b in range(max_operand)]


def sums(max_operand: int = 20, **_):
    """`kzoo_sums_gen`'s data (lm-eval's `custom_dataset`; metadata `max_operand`)."""
    return _dataset(sum_problems(int(max_operand)))


def response_bits(doc: dict, results) -> dict:
    """lm-eval's `process_results` of `kzoo_instruct_ll`: the response's log-likelihood with its
    UTF-8 length (aggregated to bits per byte) and whether greedy decoding gives it exactly."""
    loglikelihood, is_greedy = results[0]
    return {"bits_per_byte": (float(loglikelihood), len(doc["response"].encode("utf-8"))),
            "greedy": float(bool(is_greedy))}
