"""The named samplers: `Sampler` with one knob made the headline argument.

Each accepts every `Sampler` argument as well, which is how they compose:
`TopPSampler(p=0.9, top_k=50, temperature=0.7)` is top-k, then top-p, at temperature 0.7.
"""

import keras

from kzoo.samplers import functional as F
from kzoo.samplers.sampler import Sampler


def _headline(value, kwargs: dict, generic: str, default):
    """The headline argument, also accepted under `Sampler`'s generic name (`k` or `top_k`)."""
    other = kwargs.pop(generic, None)
    if value is not None and other is not None and other != value:
        raise ValueError(f"Got two values for one argument: {value!r} and {generic}={other!r}.")
    return next((v for v in (value, other) if v is not None), default)


def _renamed_config(config: dict, ours: str, theirs: str) -> dict:
    """Expose `Sampler`'s generic argument `ours` under the subclass's name `theirs`."""
    config = dict(config)
    config[theirs] = config.pop(ours)
    return config


@keras.saving.register_keras_serializable(package="kzoo")
class GreedySampler(Sampler):
    """Always the most likely token (argmax); penalties still apply.

    Example:
    ```python
    from kzoo.samplers import GreedySampler
    GreedySampler()([[0.1, 2.0, 0.3]])   # [1]
    ```
    """

    draw_fn = staticmethod(F.greedy_draw)


@keras.saving.register_keras_serializable(package="kzoo")
class RandomSampler(Sampler):
    """Draw from the full softmax distribution at `temperature`.

    Example:
    ```python
    from kzoo.samplers import RandomSampler
    RandomSampler(temperature=0.8, seed=1)([[0.1, 2.0, 0.3]])
    ```
    """


@keras.saving.register_keras_serializable(package="kzoo")
class TopKSampler(Sampler):
    """Draw among the `k` most likely tokens.

    Args:
        k: int. how many tokens to keep; > 0 (default 5; `top_k=` works too).
        **kwargs: any other `Sampler` argument (temperature, top_p, seed, ...).

    Example:
    ```python
    from kzoo.samplers import TopKSampler
    TopKSampler(k=2, seed=1)([[0.1, 2.0, 0.3]])   # 1 or 2, never 0
    ```
    """

    def __init__(self, k=None, **kwargs):
        super().__init__(top_k=_headline(k, kwargs, "top_k", 5), **kwargs)

    @property
    def k(self):
        return self.top_k

    def get_config(self):
        return _renamed_config(super().get_config(), "top_k", "k")


@keras.saving.register_keras_serializable(package="kzoo")
class TopPSampler(Sampler):
    """Nucleus sampling: draw among the smallest set of tokens whose probability reaches `p`.

    Args:
        p: float. probability mass in (0, 1] (default 0.9; `top_p=` works too).
        **kwargs: any other `Sampler` argument (temperature, top_k, seed, ...).

    Example:
    ```python
    from kzoo.samplers import TopPSampler
    TopPSampler(p=0.9, top_k=50, temperature=0.7, seed=1)([[0.1, 2.0, 0.3]])
    ```
    """

    def __init__(self, p=None, **kwargs):
        super().__init__(top_p=_headline(p, kwargs, "top_p", 0.9), **kwargs)

    @property
    def p(self):
        return self.top_p

    def get_config(self):
        return _renamed_config(super().get_config(), "top_p", "p")


@keras.saving.register_keras_serializable(package="kzoo")
class MinPSampler(Sampler):
    """Min-p sampling: keep tokens at least `p` times as likely as the most likely one.

    Args:
        p: float. ratio in [0, 1] (default 0.05; `min_p=` works too).
        **kwargs: any other `Sampler` argument.

    Example:
    ```python
    from kzoo.samplers import MinPSampler
    MinPSampler(p=0.1, seed=1)([[0.1, 2.0, 0.3]])
    ```
    """

    def __init__(self, p=None, **kwargs):
        super().__init__(min_p=_headline(p, kwargs, "min_p", 0.05), **kwargs)

    @property
    def p(self):
        return self.min_p

    def get_config(self):
        return _renamed_config(super().get_config(), "min_p", "p")
