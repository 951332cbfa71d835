"""What `kzoo rate` shows: items (a prompt and one or two completions) read from a candidates
file or sampled live from a run folder, and the units a person judges.

Candidates file (`--candidates`, `.jsonl`, `.json` list or `.parquet`), one object per item:

    {"prompt": "Q: 2+2?\\nA:", "completions": [" 4", " 5"]}          # a pair
    {"prompt": "Q: 2+2?\\nA:", "completions": [" 4"]}                # one: thumbs up / down
    {"id": "q7", "prompt": ..., "completions": [...], "meta": {"model": "runs/sft", "seed": 3}}

`id` (optional) names the item (default: a hash of prompt and completions), `meta` (optional)
is copied into the provenance of each judgement. Prompts file (`--prompts`): `.txt`, one prompt
per non-empty line, or `.json` / `.jsonl` records with a `prompt` string.

A unit is what one judgement answers. In "pairs" mode an item with two completions is one pair
unit (id = the item id) and an item with one completion is a single unit; in "thumbs" mode
every completion is a single unit (id = `ITEM:0`, `ITEM:1`). A pair's completions are shown in
an order fixed by its id (half the pairs swapped), so the left side is not always the first
completion: position bias does not become a preference.

Example:
```python
from kzoo.cli.rate.sources import read_candidates, units
items = read_candidates("candidates.jsonl")
units(items, "pairs")[0]   # {"id": ..., "kind": "pair", "prompt": ..., "completions": [l, r]}
```
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from kzoo.data.records import read_records

MODES = ("pairs", "thumbs")
SAMPLERS = ("random", "top_k", "top_p", "min_p")  # two draws of greedy or beam are the same
SAMPLER_KNOBS = ("temperature", "top_k", "top_p", "min_p")


class JudgementError(ValueError):
    """A request the rating API refuses: an unknown unit, mode or judgement (HTTP 400 with the
    message). Here, not in the server module, so that both HTTP and state code can raise it."""


def _digest(*parts) -> str:
    return hashlib.sha1(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def read_candidates(path: str | Path) -> list[dict]:
    """The items of a candidates file, checked (see the module docstring for the form).

    Returns:
        list[dict]. {"id", "prompt", "completions", "meta"} per item, in file order.

    Raises:
        ValueError: one line naming the file and line: missing or empty file, a record that
            is not {"prompt": str, "completions": [1 or 2 strings]}, a repeated id.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--candidates {path} does not exist")
    raw = read_records(path)
    if not raw:
        raise ValueError(f"--candidates {path} holds no candidates (0 records)")
    items, seen = [], {}
    for where, record in raw:
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise ValueError(f"{where}: expected an object with a string 'prompt' and "
                             "'completions': [1 or 2 strings]")
        completions = record.get("completions")
        if (not isinstance(completions, list) or len(completions) not in (1, 2)
                or not all(isinstance(c, str) for c in completions)):
            raise ValueError(f"{where}: 'completions' must be a list of 1 or 2 strings "
                             "(2: a pair to compare, 1: thumbs up / down)")
        item_id = record.get("id", _digest(record["prompt"], completions))
        if not isinstance(item_id, str) or not item_id or ":" in item_id:
            raise ValueError(f"{where}: 'id' must be a non-empty string without ':'")
        if item_id in seen:
            raise ValueError(f"{where}: id {item_id!r} repeats {seen[item_id]} (an item with the "
                             "same prompt and completions, or the same 'id')")
        meta = record.get("meta", {})
        if not isinstance(meta, dict):
            raise ValueError(f"{where}: 'meta' must be an object (model, sampler, seed, ...)")
        seen[item_id] = where
        items.append({"id": item_id, "prompt": record["prompt"], "completions": completions,
                      "meta": meta})
    return items


def read_prompts(path: str | Path) -> list[str]:
    """The distinct prompts of a `.txt` (one per non-empty line) or `.json`/`.jsonl` file.

    Raises:
        ValueError: one line: a missing or empty file, a record without a string 'prompt'.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--prompts {path} does not exist")
    if path.suffix == ".txt":
        prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        prompts = []
        for where, record in read_records(path):
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ValueError(f"{where}: expected an object with a string 'prompt'")
            prompts.append(record["prompt"])
    if not prompts:
        raise ValueError(f"--prompts {path} holds no prompts (a .txt file: one per line)")
    return list(dict.fromkeys(prompts))  # a repeated prompt is rated once


SETTING = ("model", "model_file", "sampler", "max_new_tokens", "template")


def prompt_id(prompt: str, setting: dict | None = None) -> str:
    """The id of a live-sampled item: a hash of its prompt and of what sampled it.

    A restart with the same model and sampler skips the prompts judged before; another model
    or sampler settings (rated into the same --out) makes new items.

    Args:
        prompt: str. the prompt as written in the prompts file.
        setting: dict or None. {"model", "model_file", "sampler", "max_new_tokens",
            "template"} (see `SETTING`); None: the prompt alone, the id an older kzoo gave.
    """
    return _digest(prompt) if setting is None else _digest(prompt, setting)


def units(items: list[dict], mode: str) -> list[dict]:
    """The units to judge in `mode` ("pairs" or "thumbs"), in item order.

    Each unit: {"id", "kind": "pair" | "single", "item", "prompt", "completions"} with the
    pair's completions in display order (left, right) and "swapped" telling whether left is
    the item's second completion.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: expected one of {list(MODES)}")
    out = []
    for item in items:
        completions = item["completions"]
        if mode == "pairs" and len(completions) == 2:
            swapped = int(_digest(item["id"])[-1], 16) % 2 == 1
            shown = completions[::-1] if swapped else list(completions)
            out.append({"id": item["id"], "kind": "pair", "item": item["id"],
                        "prompt": item["prompt"], "completions": shown, "swapped": swapped})
        elif mode == "pairs":
            out.append({"id": item["id"], "kind": "single", "item": item["id"],
                        "prompt": item["prompt"], "completions": completions, "swapped": False})
        else:
            for k, completion in enumerate(completions):
                unit_id = item["id"] if len(completions) == 1 else f"{item['id']}:{k}"
                out.append({"id": unit_id, "kind": "single", "item": item["id"],
                            "prompt": item["prompt"], "completions": [completion],
                            "swapped": False})
    return out


def build_sampler(name: str, knobs: dict):
    """The kzoo sampler `name` with its knobs; refuses samplers whose two draws are equal.

    Raises:
        ValueError: `name` is not one of `SAMPLERS`, or a knob the sampler refuses.
    """
    from kzoo import samplers

    if name not in SAMPLERS:
        raise ValueError(f"--sampler {name!r}: expected one of {list(SAMPLERS)} (greedy and "
                         "beam give the same completion twice)")
    return samplers.get(name, **{k: v for k, v in knobs.items() if v is not None})


class LiveSampler:
    """Samples two completions per prompt in a background thread, appending items as it goes.

    Args:
        model: CausalLM. the model of the run folder.
        tokenizer: the model's tokenizer.
        prompts: list[str]. the prompts, judged ones already removed.
        sampler: a kzoo sampler (see `build_sampler`).
        provenance: dict. {"model", "sampler", ...} copied into each item's meta.
        seed: int. prompt i (in the file) is sampled with seed `seed + i`.
        max_new_tokens: int. at most this many tokens per completion.
        indices: list[int] or None. each prompt's line in the prompts file (default 0, 1, ...).
        template: PromptTemplate, "chat" or None. what the model sees is
            `template.format(prompt)`, or with "chat" the prompt as a user turn in the
            tokenizer's chat template;
            the records keep the prompt itself (train with the same `data.template`).
        setting: dict or None. what sampled the items, part of their ids (`prompt_id`).

    Attributes:
        items: list[dict]. items sampled so far (read under `lock`).
        done, total: int. prompts sampled, prompts to sample. error: str or None.

    Example:
    ```python
    live = LiveSampler(model, tok, ["Hi"], build_sampler("top_k", {}), {}, seed=0)
    live.start(); live.join()
    ```
    """

    def __init__(self, model, tokenizer, prompts, sampler, provenance, seed: int,
                 max_new_tokens: int = 64, indices=None, template=None, setting=None):
        self.model, self.tokenizer, self.sampler = model, tokenizer, sampler
        self.setting = setting
        self.prompts = list(prompts)
        self.indices = list(indices) if indices is not None else list(range(len(prompts)))
        self.provenance, self.seed, self.max_new_tokens = provenance, seed, max_new_tokens
        self.template = template
        self.items: list[dict] = []
        self.lock = threading.Lock()
        self.done, self.total, self.error = 0, len(self.prompts), None
        self._thread = threading.Thread(target=self._run, daemon=True, name="kzoo-rate-sampler")

    def start(self):
        self._thread.start()

    def join(self, timeout=None):
        self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self):
        from kzoo.generation import generate

        try:
            for index, prompt in zip(self.indices, self.prompts, strict=True):
                seed = self.seed + index
                # One batch of the same prompt twice: two independent draws with one seed.
                if self.template == "chat":  # ids: the template writes the special tokens
                    from kzoo.alignment.rollout import encode_prompts

                    text = encode_prompts([prompt], self.tokenizer, 1 << 30, "chat")[0].tolist()
                else:
                    text = prompt if self.template is None else self.template.format(
                        {"prompt": prompt})
                result = generate(self.model, [text, text], self.max_new_tokens,
                                  self.sampler, self.tokenizer, seed=seed, truncate=True,
                                  stop_token_ids=self.tokenizer.stop_token_ids)
                item = {"id": prompt_id(prompt, self.setting), "prompt": prompt,
                        "completions": list(result.texts),
                        "meta": {**self.provenance, "seed": seed, "prompt_index": index}}
                with self.lock:
                    self.items.append(item)
                    self.done += 1
        except Exception as error:  # shown on the page: the person sees why sampling stopped
            self.error = " ".join(f"{type(error).__name__}: {error}".split())[:300]
