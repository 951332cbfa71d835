"""Reward functions for on-policy RL (GRPO, RLOO), in TRL's convention.

A reward function is `reward(prompts, completions, **columns) -> list[float]`: one value per
completion. The prompt file's other columns (`kzoo.data.prompts`) arrive as keyword arguments,
one list each aligned with the completions, and so do `completion_ids` (list[list[int]], the
sampled ids) and `finished` (list[bool]: True when the completion ended with an end token,
False when cut at the length limit). A function gets only the keywords it names, or all of them
when it takes `**kwargs`. A value of `None` means "not applicable to this completion" (TRL's
convention): it is NaN in the per-reward values and left out of the weighted sum (TRL's
`nansum`); a completion that every reward leaves at None is an error. NaN or infinity returned
by a function is a bug and an error.

A reward is named by a spec (`load_reward`):

- a built-in name (`list_rewards()`): `exact_match`, `format_ends`, `length`;
- `path/to/file.py:function_name` (TRL's convention), relative to the current directory;
- a reward-model run folder (what `recipes/reward.py` writes): the reward model's score of
  prompt + completion (`kzoo.alignment.reward_scoring`).

Example:
```python
from kzoo.alignment.rewards import reward_set_from_config
rewards = reward_set_from_config(["exact_match", {"reward": "length", "weight": -0.01}])
total, per_reward = rewards(["1+1="], ["02"], {"answer": ["02"]}, [[0, 2]], [True])
total, per_reward   # [0.98], {'exact_match': [1.0], 'length': [2.0]} (float32 arrays)
```
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import math
import numbers
import os
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from kzoo.alignment.builtin_rewards import (  # noqa: F401  (the registry lives there)
    _REWARDS,
    completion_text,
    exact_match,
    format_ends,
    get_reward,
    length,
    list_rewards,
    register_reward,
)
from kzoo.data.prompts import RESERVED_COLUMNS

CONFIG_KEYS = ("reward", "weight")


class RewardError(ValueError):
    """A reward function failed or returned something unusable (one line naming it)."""


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- one reward
def _check_weight(weight, where: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or \
            not math.isfinite(weight):
        raise ValueError(f"{where}: weight must be a finite number; got {weight!r}")
    return float(weight)


def _parameters(fn, name: str):
    """(takes **kwargs, keyword names it takes, names it requires) of a reward function."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: give them everything
        return True, set(), set()
    accepts_all, names, required = False, set(), set()
    for p in signature.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            accepts_all = True
        elif p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
            raise ValueError(f"reward {name!r} takes positional-only parameter {p.name!r}; "
                             "reward functions receive keywords (prompts, completions, ...)")
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.add(p.name)
            if p.default is p.empty:
                required.add(p.name)
    return accepts_all, names, required


def _values(name: str, out, n: int) -> np.ndarray:
    """A reward function's output as float32 (n,), None as NaN; RewardError otherwise."""
    if hasattr(out, "tolist") and not isinstance(out, (str, bytes)):
        out = out.tolist()  # numpy, torch or tensorflow values
    if not isinstance(out, (list, tuple)):
        raise RewardError(f"reward {name!r} returned a {type(out).__name__}, not a list of "
                          f"{n} numbers")
    if len(out) != n:
        raise RewardError(f"reward {name!r} returned {len(out)} values for {n} completions")
    values = np.empty(n, np.float32)
    for i, value in enumerate(out):
        if value is None:
            values[i] = np.nan
            continue
        if isinstance(value, (bool, np.bool_)):
            value = float(value)
        if not isinstance(value, numbers.Real):
            raise RewardError(f"reward {name!r} returned {value!r:.60} "
                              f"({type(value).__name__}) for completion {i}, not a number")
        if not math.isfinite(value):
            raise RewardError(f"reward {name!r} returned {value} for completion {i}")
        values[i] = value
    return values


class Reward:
    """A reward function with its name and weight, called with checked inputs and outputs.

    Args:
        fn: callable. `fn(prompts, completions, **columns) -> list[float | None]`.
        name: str or None. the name in logs; default the function's `__name__`.
        weight: float. its weight in a `RewardSet`'s total.

    Call: `reward(prompts, completions, columns, completion_ids, finished)` returns float32
    (n,), NaN where the function returned None.

    Example:
    ```python
    from kzoo.alignment.rewards import Reward
    ends = Reward(lambda completions, finished: [float(f) for f in finished], name="ends")
    ends(["2+2="], ["4"], {}, [[4]], [True])   # array([1.], dtype=float32)
    ```
    """

    def __init__(self, fn, name: str | None = None, weight: float = 1.0):
        if not callable(fn):
            raise ValueError(f"reward {name!r}: a {type(fn).__name__} is not callable")
        self.fn = fn
        self.name = str(name or getattr(fn, "__name__", type(fn).__name__))
        self.weight = _check_weight(weight, f"reward {self.name!r}")
        self._accepts_all, self._names, self._required = _parameters(fn, self.name)

    def renamed(self, name: str) -> Reward:
        """A copy under another name (same function and weight)."""
        return Reward(self.fn, name, self.weight)

    def __repr__(self) -> str:
        return f"Reward({self.name!r}, weight={self.weight})"

    def __call__(self, prompts, completions, columns: dict | None = None, completion_ids=None,
                 finished=None) -> np.ndarray:
        n = len(completions)
        keywords = {"prompts": prompts, "completions": completions}
        if completion_ids is not None:
            keywords["completion_ids"] = completion_ids
        if finished is not None:
            keywords["finished"] = finished
        clash = sorted(set(columns or {}) & set(RESERVED_COLUMNS))
        if clash:
            raise ValueError(f"reward {self.name!r}: column {clash[0]!r} clashes with a reward "
                             f"keyword (reserved: {list(RESERVED_COLUMNS)})")
        keywords.update(columns or {})
        for key, value in keywords.items():
            if len(value) != n:
                raise ValueError(f"reward {self.name!r}: {key!r} has {len(value)} entries for "
                                 f"{n} completions")
        missing = sorted(self._required - set(keywords))
        if missing:
            raise RewardError(f"reward {self.name!r} needs {missing}, which the prompts do not "
                              f"provide; it gets {sorted(keywords)}")
        # Copies: a function that edits its lists must not change what the next one reads.
        passed = {k: list(v) for k, v in keywords.items()
                  if self._accepts_all or k in self._names}
        try:
            out = self.fn(**passed)
        except Exception as error:
            raise RewardError(f"reward {self.name!r} raised {type(error).__name__}: "
                              f"{_one_line(error)}") from error
        return _values(self.name, out, n)


# ----------------------------------------------------------------------------- specs
def _load_function(spec: str):
    file, _, function = spec.rpartition(":")
    path = Path(file)
    if not function.isidentifier():
        raise ValueError(f"reward {spec!r}: {function!r} is not a function name; expected "
                         "path/to/file.py:function_name")
    if not path.is_file():
        raise ValueError(f"reward {spec!r}: {path} does not exist (relative to the current "
                         f"directory {os.getcwd()})")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"kzoo_reward_{stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look a module up by name
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:
        del sys.modules[module_name]
        raise ValueError(f"reward {spec!r}: importing {path} raised {type(error).__name__}: "
                         f"{_one_line(error)}") from error
    if not hasattr(module, function):
        defined = sorted(k for k, v in vars(module).items()
                         if inspect.isfunction(v) and not k.startswith("_"))
        raise ValueError(f"reward {spec!r}: {path} defines no {function!r}; its functions: "
                         f"{defined}")
    fn = getattr(module, function)
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: {function!r} in {path} is a {type(fn).__name__}, "
                         "not a function")
    return fn


def load_reward(spec, policy_tokenizer=None, weight: float = 1.0) -> Reward:
    """The reward a spec names.

    A `path/to/file.py:function_name` spec imports that file, which runs its code: the user's
    own code, by their explicit request (everything else here reads only data).

    Args:
        spec: str or callable. a built-in name (`list_rewards()`), `path/to/file.py:function`
            (relative to the current directory), a reward-model run folder, or a function.
        policy_tokenizer: tokenizer or None. the policy's; a reward model whose tokenizer is
            not the same (class, vocabulary, config) is refused.
        weight: float. the reward's weight in a `RewardSet`.

    Returns:
        Reward. named after the built-in, the function, or the run folder.

    Raises:
        ValueError: one line naming the spec: unknown name, missing file or function, a
            non-callable, a file that fails to import, a folder that is not a reward-model run,
            a tokenizer mismatch.

    Example:
    ```python
    from kzoo.alignment.rewards import load_reward
    load_reward("exact_match").name                          # 'exact_match'
    load_reward("recipes/rewards/arithmetic.py:correct").name   # 'correct'
    ```
    """
    if callable(spec) and not isinstance(spec, (str, os.PathLike)):
        return Reward(spec, weight=weight)
    if not isinstance(spec, (str, os.PathLike)):
        raise ValueError(f"reward spec must be a string; got {type(spec).__name__} {spec!r}")
    text = str(spec)
    if text in _REWARDS:
        return Reward(_REWARDS[text], text, weight)
    if ":" in text and text.rpartition(":")[0].endswith(".py"):
        fn = _load_function(text)
        return Reward(fn, text.rpartition(":")[2], weight)
    if Path(text).is_dir():
        from kzoo.alignment.reward_scoring import RewardModelScorer, check_same_tokenizer

        scorer = RewardModelScorer(text, spec=text)
        if policy_tokenizer is not None:
            check_same_tokenizer(scorer.tokenizer, policy_tokenizer, text)
        return Reward(scorer, scorer.__name__, weight)
    hint = (f"; name the function: {text}:function_name" if text.endswith(".py") else "")
    raise ValueError(f"unknown reward {text!r}: not a built-in reward {list_rewards()}, a "
                     f"path/to/file.py:function_name, or a reward-model run folder{hint}")


# ----------------------------------------------------------------------------- several
def _unique_names(names: list[str]) -> list[str]:
    counts, taken, out, seen = Counter(names), set(names), [], Counter()
    for name in names:
        if counts[name] == 1:
            out.append(name)
            continue
        seen[name] += 1
        candidate = f"{name}_{seen[name]}"
        while candidate in taken:  # a reward already called e.g. "f_1"
            seen[name] += 1
            candidate = f"{name}_{seen[name]}"
        taken.add(candidate)
        out.append(candidate)
    return out


class RewardSet:
    """Several rewards and their weighted sum, TRL's `(rewards_per_func * weights).nansum(1)`.

    Rewards sharing a name are renamed `name_1`, `name_2`, ... so each has its own log key.

    Args:
        rewards: list[Reward]. at least one.

    Call: `rewards(prompts, completions, columns, completion_ids, finished)` returns
    `(total, per_reward)`: float32 (n,) and {name: float32 (n,)} (NaN where None).

    Example:
    ```python
    from kzoo.alignment.rewards import RewardSet, load_reward
    rs = RewardSet([load_reward("format_ends"), load_reward("format_ends", weight=2.0)])
    rs.names   # ['format_ends_1', 'format_ends_2']
    ```
    """

    def __init__(self, rewards: list[Reward]):
        rewards = list(rewards)
        if not rewards:
            raise ValueError("RewardSet: no rewards given; name at least one")
        for i, reward in enumerate(rewards):
            if not isinstance(reward, Reward):
                raise ValueError(f"RewardSet: item {i} is a {type(reward).__name__}, not a "
                                 "Reward (see load_reward)")
        names = _unique_names([r.name for r in rewards])
        self.rewards = [r if r.name == n else r.renamed(n) for r, n in zip(rewards, names)]

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rewards]

    @property
    def weights(self) -> np.ndarray:
        return np.array([r.weight for r in self.rewards], np.float32)

    def __len__(self) -> int:
        return len(self.rewards)

    def __call__(self, prompts, completions, columns: dict | None = None, completion_ids=None,
                 finished=None):
        per_reward = {r.name: r(prompts, completions, columns, completion_ids, finished)
                      for r in self.rewards}
        stacked = np.stack(list(per_reward.values()), axis=1)  # (n, rewards)
        unscored = np.flatnonzero(np.isnan(stacked).all(axis=1))
        if len(unscored):
            i = int(unscored[0])
            raise RewardError(f"every reward {self.names} returned None for completion {i} "
                              f"(prompt {str(prompts[i])!r:.80}); at least one must score it")
        total = np.nansum(stacked * self.weights[None, :], axis=1).astype(np.float32)
        return total, per_reward


def reward_set_from_config(items, policy_tokenizer=None, where: str = "rewards") -> RewardSet:
    """A RewardSet from a config list: specs (weight 1) or `{reward: SPEC, weight: W}`.

    Args:
        items: list. each a spec string (`load_reward`) or a dict with `reward` and optional
            `weight`.
        policy_tokenizer: tokenizer or None. passed to `load_reward` (reward models).
        where: str. the config key, named in errors.

    Raises:
        ValueError: one line: not a list, an empty list, an item of another type, an unknown
            key (the allowed ones listed), a missing `reward`, a bad weight or spec.

    Example:
    ```python
    from kzoo.alignment.rewards import reward_set_from_config
    reward_set_from_config(["recipes/rewards/arithmetic.py:correct",
                            {"reward": "format_ends", "weight": 0.1}]).names
    ```
    """
    if not isinstance(items, (list, tuple)):
        raise ValueError(f"{where} must be a list of rewards; got {type(items).__name__}")
    if not items:
        raise ValueError(f"{where} is empty; name at least one reward (built-in "
                         f"{list_rewards()}, path/to/file.py:function_name, or a reward-model "
                         "run folder)")
    rewards = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if isinstance(item, str):
            item = {"reward": item}
        if not isinstance(item, dict):
            raise ValueError(f"{at}: expected a reward spec or {{reward: SPEC, weight: W}}, got "
                             f"{type(item).__name__}")
        unknown = [k for k in item if k not in CONFIG_KEYS]
        if unknown:
            raise ValueError(f"{at}: unknown key {unknown[0]!r}; allowed keys: "
                             f"{list(CONFIG_KEYS)}")
        if "reward" not in item:
            raise ValueError(f"{at}: no 'reward' key; allowed keys: {list(CONFIG_KEYS)}")
        weight = _check_weight(item.get("weight", 1.0), at)
        rewards.append(load_reward(item["reward"], policy_tokenizer, weight))
    return RewardSet(rewards)
