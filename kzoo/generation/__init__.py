"""Generation: compiled, KV-cached decoding with any sampler, streaming, next-word views.

Example:
```python
from kzoo.generation import generate
from kzoo.models import CausalLM
model = CausalLM.from_preset("gpt_nano", vocab_size=256)
result = generate(model, [[5, 6, 7]], max_new_tokens=8, sampler="greedy")
```
"""

import json

from kzoo.generation.distribution import (
    NextWordDistribution,
    next_word_distribution,
    plot_distributions,
    temperature_sweep,
)
from kzoo.generation.generator import GenerationResult, Generator
from kzoo.generation.quantization import (
    GenerationWeights,
    load_generation_weights,
    quantize_for_generation,
)

# One Generator (and so one set of compiled programs) per model and sampler configuration,
# kept on the model itself: a Generator holds its model, so a table keyed (even weakly) by the
# model would keep every model ever generated with alive, and its programs, until the process
# ends. On the model, model -> cache -> Generator -> model is a cycle the collector frees.
_CACHE_ATTRIBUTE = "_kzoo_generators"


def _generators_of(model) -> dict:
    cache = vars(model).get(_CACHE_ATTRIBUTE)
    if cache is None:
        cache = {}
        # Past Keras' (and torch.nn.Module's) __setattr__: a cache is not a tracked attribute,
        # so it is never saved, counted as state, or walked by `model.save`.
        object.__setattr__(model, _CACHE_ATTRIBUTE, cache)
    return cache


def _unnamed(sampler):
    """`sampler` without the layer name a serialized config carries: each new instance gets
    its own (`top_k_sampler_3`), and it changes nothing in sampling. Without this, a config
    made afresh at every call (a text sample at every interval, a rollout at every step) was
    a new Generator each time, traced and compiled again (2-7 s of CPU on the nano model)."""
    config = sampler.get("config") if isinstance(sampler, dict) else None
    if isinstance(config, dict) and "name" in config:
        return {**sampler, "config": {k: v for k, v in config.items() if k != "name"}}
    return sampler


def get_generator(model, sampler="greedy", tokenizer=None, jit_compile=True,
                  weights=None, draft=None, num_draft_tokens=4, max_ngram=3) -> Generator:
    """The cached `Generator` for `model` with this sampler, tokenizer, compile mode and
    draft options (`Generator`'s `draft`, `num_draft_tokens`, `max_ngram`).

    Samplers given by name or config share programs across calls; a sampler instance gets its
    own Generator (its seed state lives in the instance).
    """
    if isinstance(sampler, str | dict):
        # The identifier itself, not the layer's get_config(): Keras' serialization imports
        # TensorFlow whenever it is installed, even on JAX or PyTorch.
        sampler_key = json.dumps(_unnamed(sampler), sort_keys=True, default=str)
    else:
        sampler_key = id(sampler)
    weights_key = weights if weights is None or isinstance(weights, str) else id(weights)
    draft_key = draft if draft is None or isinstance(draft, str) else id(draft)
    key = (sampler_key, id(tokenizer), bool(jit_compile), weights_key, draft_key,
           num_draft_tokens, max_ngram)
    per_model = _generators_of(model)
    # Adding or merging LoRA adapters, or quantizing, bumps the model's structure_version:
    # programs traced before it hold the old variables.
    version = getattr(model, "structure_version", 0)
    if per_model.get("structure_version", version) != version:
        per_model.clear()
    per_model["structure_version"] = version
    if key not in per_model:
        per_model[key] = Generator(model, sampler, tokenizer=tokenizer, jit_compile=jit_compile,
                                   weights=weights, draft=draft,
                                   num_draft_tokens=num_draft_tokens, max_ngram=max_ngram)
    return per_model[key]


def generate(model, prompts, max_new_tokens=64, sampler="greedy", tokenizer=None,
             jit_compile=True, weights=None, draft=None, num_draft_tokens=4, max_ngram=3,
             **kwargs) -> GenerationResult:
    """Generate continuations with `model`; see `Generator` (`draft=` for speculative
    decoding) and `Generator.generate` for every argument.

    Example:
    ```python
    from kzoo.generation import generate
    from kzoo.models import CausalLM
    model = CausalLM.from_preset("gpt_nano", vocab_size=256)
    generate(model, [[1, 2], [3, 4, 5]], max_new_tokens=4, sampler="top_k", seed=0).token_ids
    generate(model, [[1, 2, 1, 2]], max_new_tokens=4, draft="prompt_lookup").stats
    ```
    """
    generator = get_generator(model, sampler, tokenizer, jit_compile, weights, draft,
                              num_draft_tokens, max_ngram)
    return generator.generate(prompts, max_new_tokens=max_new_tokens, **kwargs)


def stream(model, prompt, max_new_tokens=64, sampler="greedy", tokenizer=None,
           jit_compile=True, weights=None, draft=None, num_draft_tokens=4, max_ngram=3,
           **kwargs):
    """Yield new tokens (or text pieces) of one prompt as produced; see `Generator.stream`.

    Example:
    ```python
    from kzoo.generation import stream
    from kzoo.models import CausalLM
    model = CausalLM.from_preset("gpt_nano", vocab_size=256)
    print(list(stream(model, [1, 2, 3], max_new_tokens=4)))
    ```
    """
    generator = get_generator(model, sampler, tokenizer, jit_compile, weights, draft,
                              num_draft_tokens, max_ngram)
    return generator.stream(prompt, max_new_tokens=max_new_tokens, **kwargs)


__all__ = [
    "GenerationResult",
    "GenerationWeights",
    "Generator",
    "NextWordDistribution",
    "generate",
    "get_generator",
    "load_generation_weights",
    "next_word_distribution",
    "plot_distributions",
    "quantize_for_generation",
    "stream",
    "temperature_sweep",
]
