"""The arithmetic task's reward for GRPO / RLOO: the feedback loop's rater as a reward function.

Use it as `recipes/rewards/arithmetic.py:correct` (a `rewards:` entry of an RL config), with a
prompt file whose records carry the sum as `answer`:

    {"prompt": "07+13=", "answer": 20}

Example:
```python
from kzoo.alignment.rewards import load_reward
correct = load_reward("recipes/rewards/arithmetic.py:correct")
correct(["07+13="], ["20"], {"answer": [20]}, [[2, 0]], [True])   # array([1.], dtype=float32)
```
"""


def correct(prompts, completions, answer, finished, **kwargs):
    """1.0 when the completion is exactly the sum zero-padded to two digits and the model ended
    it (sampled end-of-text), else 0.0: `kzoo.alignment.feedback_loop.rate`'s rule.

    Args:
        prompts: list[str]. "AA+BB=" prompts (not read: the sum comes from `answer`).
        completions: list[str]. the sampled text, without the end-of-text token.
        answer: list[int | str]. the correct sum of each prompt.
        finished: list[bool]. whether each completion ended with end-of-text.
    """
    return [1.0 if done and text == f"{int(a):02d}" else 0.0
            for text, a, done in zip(completions, answer, finished, strict=True)]
