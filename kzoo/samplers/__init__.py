"""Samplers: layers (and pure functions) that turn next-token logits into next-token ids.

Look one up by name with `get`, compose knobs on any of them, save them inside a Keras model,
or hand them to a keras_hub `CausalLM` (they follow keras_hub's `Sampler` protocol).

Example:
```python
from kzoo import samplers
sampler = samplers.get("top_p", p=0.9, top_k=50, temperature=0.7, seed=0)
ids = sampler([[0.1, 2.0, 0.3]])
```
"""

import keras

from kzoo.samplers import functional
from kzoo.samplers.beam import BeamSampler
from kzoo.samplers.contrastive import ContrastiveSampler
from kzoo.samplers.sampler import Sampler
from kzoo.samplers.variants import (
    GreedySampler,
    MinPSampler,
    RandomSampler,
    TopKSampler,
    TopPSampler,
)

_REGISTRY = {
    "greedy": GreedySampler,
    "random": RandomSampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
    "min_p": MinPSampler,
    "beam": BeamSampler,
    "contrastive": ContrastiveSampler,
    "sampler": Sampler,
}


def list_samplers() -> list[str]:
    """The names `get` accepts."""
    return sorted(_REGISTRY)


def is_sampler(obj) -> bool:
    """Whether `obj` follows the keras_hub sampler protocol (kzoo's or keras_hub's own)."""
    return hasattr(obj, "get_next_token") and hasattr(obj, "compute_probabilities")


def get(identifier, **kwargs):
    """A sampler from a name (plus constructor kwargs), a serialized config, or an instance.

    Args:
        identifier: str, dict, or sampler. a name from `list_samplers()`; a config from
            `serialize`; or a kzoo/keras_hub sampler instance (returned as is).
        **kwargs: constructor arguments when `identifier` is a name.

    Example:
    ```python
    from kzoo import samplers
    samplers.get("top_k", k=10, seed=0)
    ```
    """
    if isinstance(identifier, str):
        if identifier not in _REGISTRY:
            raise ValueError(
                f"Unknown sampler {identifier!r}. Valid names: {', '.join(list_samplers())}"
            )
        return _REGISTRY[identifier](**kwargs)
    if kwargs:
        raise ValueError("Keyword arguments are only accepted with a sampler name.")
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if is_sampler(identifier):
        return identifier
    raise ValueError(
        f"Could not interpret sampler {identifier!r}: pass one of {list_samplers()}, "
        "a config dict, or a sampler instance."
    )


def serialize(sampler) -> dict:
    """A JSON-able config of `sampler` (`keras.saving.serialize_keras_object`)."""
    return keras.saving.serialize_keras_object(sampler)


def deserialize(config: dict):
    """Rebuild a sampler from `serialize`'s config; never executes code from it."""
    return keras.saving.deserialize_keras_object(config, safe_mode=True)


__all__ = [
    "BeamSampler",
    "ContrastiveSampler",
    "GreedySampler",
    "MinPSampler",
    "RandomSampler",
    "Sampler",
    "TopKSampler",
    "TopPSampler",
    "deserialize",
    "functional",
    "get",
    "is_sampler",
    "list_samplers",
    "serialize",
]
