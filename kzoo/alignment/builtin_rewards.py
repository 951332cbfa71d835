"""The built-in reward functions and their registry (`kzoo.alignment.rewards` re-exports them).

Each is a small pure function in TRL's convention, `reward(prompts, completions, **columns) ->
list[float]` (see `kzoo.alignment.rewards`).

Example:
```python
from kzoo.alignment.builtin_rewards import get_reward, list_rewards
list_rewards()   # ['exact_match', 'format_ends', 'length']
get_reward("exact_match")(["1+1="], [" 02"], answer=["02"], finished=[True])   # [1.0]
```
"""

from __future__ import annotations

_REWARDS: dict = {}


def register_reward(name: str):
    """Decorator adding a reward function to the built-in registry under `name`.

    Example:
    ```python
    from kzoo.alignment.rewards import register_reward
    @register_reward("short")
    def short(prompts, completions, **kwargs):
        return [1.0 if len(c) < 10 else 0.0 for c in completions]
    ```
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register_reward: the name must be an identifier; got {name!r}")

    def add(fn):
        if name in _REWARDS:
            raise ValueError(f"register_reward: a reward named {name!r} is already registered")
        _REWARDS[name] = fn
        return fn

    return add


def get_reward(name: str):
    """The built-in reward function registered as `name`.

    Example:
    ```python
    from kzoo.alignment.rewards import get_reward
    get_reward("format_ends")([""], ["x"], finished=[True])   # [1.0]
    ```
    """
    if name not in _REWARDS:
        raise ValueError(f"unknown reward {name!r}; built-in rewards: {list_rewards()}")
    return _REWARDS[name]


def list_rewards() -> list[str]:
    """The built-in reward names, sorted.

    Example:
    ```python
    from kzoo.alignment.rewards import list_rewards
    list_rewards()   # ['exact_match', 'format_ends', 'length']
    ```
    """
    return sorted(_REWARDS)


def completion_text(completion) -> str:
    """The text of a completion: itself, or the last message's content of a conversational
    completion (`[{"role": "assistant", "content": ...}]`)."""
    if isinstance(completion, list):
        return completion[-1]["content"] if completion else ""
    return str(completion)


@register_reward("exact_match")
def exact_match(prompts, completions, answer, finished, **kwargs) -> list[float]:
    """1.0 when the completion, stripped, equals `str(answer)` stripped and it ended with an end
    token (`finished`), else 0.0: the arithmetic task's rater
    (`kzoo.alignment.feedback_loop.rate`) for a prompt file with an `answer` column."""
    return [1.0 if done and completion_text(c).strip() == str(a).strip() else 0.0
            for c, a, done in zip(completions, answer, finished, strict=True)]


@register_reward("length")
def length(prompts, completions, completion_ids, **kwargs) -> list[float]:
    """The number of completion tokens, as a float: with a negative weight a length penalty
    (`{reward: length, weight: -0.01}` takes 0.01 per token), with a positive one a bonus."""
    return [float(len(ids)) for ids in completion_ids]


@register_reward("format_ends")
def format_ends(prompts, completions, finished, **kwargs) -> list[float]:
    """1.0 when the completion ended with an end token, 0.0 when it was cut at the length
    limit."""
    return [1.0 if done else 0.0 for done in finished]
