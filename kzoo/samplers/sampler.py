"""`Sampler`: a Keras layer mapping next-token logits to next-token ids, composable and seeded.

One class carries every knob (penalties, temperature, top-k, top-p, min-p); the named samplers
(`TopKSampler`, `TopPSampler`, ...) only change defaults. The work itself is done by the pure
functions of `kzoo.samplers.functional`, applied in a fixed order from two small tables.

The layer also speaks keras_hub's `Sampler` protocol, so it drops into
`keras_hub.models.CausalLM.compile(sampler=...)`:
- `compute_probabilities(logits)` and `get_next_token(probabilities)`;
- `sampler(next, prompt, cache=..., index=..., mask=..., stop_token_ids=...)` runs the decode loop
  with keras_hub's `next(prompt, cache, index) -> (logits, hidden_states, cache)` callback.
"""

import keras
from keras import ops

from kzoo.samplers import functional as F


def seed_variables(sampler) -> list:
    """The variables a sampler (kzoo or keras_hub) changes when it draws: its seed state."""
    generator = getattr(sampler, "seed_generator", None)
    return [generator.state] if generator is not None else []


def with_seeds(sampler, seeds, draw):
    """Run `draw()` with the sampler's seed state read from `seeds` (tensors); returns
    `(draw's result, new seeds)`. A compiled loop carries the seeds as loop values: JAX cannot
    assign to a variable inside `jax.jit`, least of all inside a while loop.

    Example:
    ```python
    from kzoo.samplers import TopKSampler
    from kzoo.samplers.sampler import seed_variables, with_seeds
    sampler = TopKSampler(k=2, seed=0)
    seeds = [v.value for v in seed_variables(sampler)]
    token, seeds = with_seeds(sampler, seeds, lambda: sampler([[0.1, 2.0, 0.3]]))
    ```
    """
    variables = seed_variables(sampler)
    with keras.StatelessScope(state_mapping=list(zip(variables, seeds))) as scope:
        result = draw()
    new = (scope.get_current_value(v) for v in variables)
    return result, tuple(n if n is not None else s for n, s in zip(new, seeds))


# (attribute, function, value meaning "off"): logit processors that need the token history.
_PENALTIES = (
    ("repetition_penalty", F.repetition_penalty, 1.0),
    ("frequency_penalty", F.frequency_penalty, 0.0),
    ("presence_penalty", F.presence_penalty, 0.0),
)
# (attribute, function): filters applied after temperature, in this order, when not None.
_FILTERS = (
    ("top_k", F.top_k_filter),
    ("top_p", F.top_p_filter),
    ("min_p", F.min_p_filter),
)


def _optional(check, value):
    return None if value is None else check(value)


@keras.saving.register_keras_serializable(package="kzoo")
class Sampler(keras.layers.Layer):
    """Pick the next token from logits: penalties -> temperature -> top-k -> top-p -> min-p -> draw.

    Args:
        temperature: float. >= 0; divides the logits. 0 means greedy (argmax).
        top_k: int or None. keep only the k most likely tokens (k > 0).
        top_p: float or None. keep the smallest set of tokens with mass >= p, p in (0, 1].
        min_p: float or None. keep tokens with probability >= min_p * the top probability.
        repetition_penalty: float. > 0; CTRL-style penalty on tokens already seen (1 = off).
        frequency_penalty: float. subtract this times a token's count so far (0 = off).
        presence_penalty: float. subtract this once from every token seen so far (0 = off).
        seed: int or None. seed of the layer's `keras.random.SeedGenerator`.
        **kwargs: passed to `keras.layers.Layer` (name, dtype, ...). dtype defaults to float32,
            so that sampling maths stays in full precision under a mixed policy.

    Call arguments:
        logits: float tensor. (batch, vocab) next-token logits.
        token_counts: float tensor or None. (batch, vocab) counts of the tokens so far; needed
            only when a penalty is on.

    Returns:
        int32 tensor (batch,): the chosen token ids.

    Example:
    ```python
    import numpy as np
    from kzoo.samplers import Sampler
    sampler = Sampler(temperature=0.7, top_k=50, top_p=0.9, seed=0)
    ids = sampler(np.random.randn(2, 100).astype("float32"))   # (2,) int32
    ```
    """

    # The final draw; greedy samplers override it with argmax.
    draw_fn = staticmethod(F.categorical_draw)

    def __init__(self, temperature=1.0, top_k=None, top_p=None, min_p=None,
                 repetition_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0,
                 seed=None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.temperature = F.check_temperature(temperature)
        self.top_k = _optional(F.check_top_k, top_k)
        self.top_p = _optional(F.check_top_p, top_p)
        self.min_p = _optional(F.check_min_p, min_p)
        self.repetition_penalty = F.check_repetition_penalty(repetition_penalty)
        self.frequency_penalty = F._number("frequency_penalty", frequency_penalty)
        self.presence_penalty = F._number("presence_penalty", presence_penalty)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be an int or None. Received: seed={seed!r}")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    @property
    def uses_token_counts(self) -> bool:
        """Whether `call` needs `token_counts` (a penalty is on)."""
        return any(getattr(self, name) != off for name, _, off in _PENALTIES)

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0 or self.draw_fn is F.greedy_draw

    def process_logits(self, logits, token_counts=None):
        """Apply penalties, temperature and filters: float32 (batch, vocab) -> same shape."""
        logits = ops.cast(logits, "float32")
        for name, fn, off in _PENALTIES:
            value = getattr(self, name)
            if value == off:
                continue
            if token_counts is None:
                raise ValueError(
                    f"`{name}={value}` needs `token_counts` (batch, vocab) when calling "
                    f"{type(self).__name__}; pass them or turn the penalty off."
                )
            logits = fn(logits, token_counts, value)
        if self.temperature > 0:
            logits = F.scale_temperature(logits, self.temperature)
        for name, fn in _FILTERS:
            value = getattr(self, name)
            if value is not None:
                logits = fn(logits, value)
        return logits

    def select(self, logits):
        """Draw ids (batch,) int32 from processed logits."""
        draw = F.greedy_draw if self.is_greedy else self.draw_fn
        return draw(logits, seed=self.seed_generator)

    def call(self, logits, token_counts=None):
        return self.select(self.process_logits(logits, token_counts))

    def compute_output_spec(self, logits, token_counts=None):
        return keras.KerasTensor(logits.shape[:-1], dtype="int32")

    # ---- keras_hub `Sampler` protocol --------------------------------------------------------
    def compute_probabilities(self, logits, token_counts=None):
        """Softmax of the processed logits, float32 (batch, vocab) (keras_hub protocol)."""
        return ops.softmax(self.process_logits(logits, token_counts), axis=-1)

    def get_next_token(self, probabilities):
        """Draw ids (batch,) from probabilities (keras_hub protocol)."""
        probabilities = ops.cast(probabilities, "float32")
        logits = ops.where(probabilities > 0, ops.log(ops.maximum(probabilities, 1e-38)), F.NEG_INF)
        return self.select(logits)

    def __call__(self, *args, **kwargs):
        # keras_hub calls `sampler(next=fn, prompt=..., ...)` (or positionally, `fn` first);
        # anything else is an ordinary layer call on logits.
        first = args[0] if args else None
        if "next" in kwargs or (callable(first) and not hasattr(first, "shape")):
            return self.run_decode_loop(*args, **kwargs)
        if isinstance(first, list | tuple):  # nested Python lists of logits, for convenience
            args = (ops.convert_to_tensor(first, "float32"), *args[1:])
        return super().__call__(*args, **kwargs)

    def run_loop(self, cond, body, model=None, loop_vars=None, maximum_iterations=None):
        """`ops.while_loop` (keras_hub protocol). keras_hub's JAX generate runs the loop in its
        own `StatelessScope`; `run_decode_loop` carries the seed state through the loop."""
        del model
        return ops.while_loop(cond, body, loop_vars, maximum_iterations=maximum_iterations)

    def run_decode_loop(self, next, prompt, cache=None, index=0, mask=None,
                        stop_token_ids=None, hidden_states=None, model=None, **kwargs):
        """keras_hub's decode loop: fill `prompt` (batch, max_length) from `index` on.

        Positions where `mask` is true are prompt tokens and are kept; the loop stops early once
        every row has produced one of `stop_token_ids`.
        """
        del hidden_states, kwargs
        max_length = ops.cast(ops.shape(prompt)[-1], "int32")
        index = ops.cast(index, "int32")
        mask = ops.zeros_like(prompt, dtype="bool") if mask is None else ops.cast(mask, "bool")
        cache = () if cache is None else cache

        def cond(prompt, cache, index, mask, seeds):
            if stop_token_ids is None:
                return ops.convert_to_tensor(True)
            hits = ops.zeros_like(prompt, dtype="bool")
            for stop in stop_token_ids:
                hits = ops.logical_or(hits, ops.equal(prompt, stop))
            done = ops.any(ops.logical_and(hits, ops.logical_not(mask)), axis=-1)
            return ops.logical_not(ops.all(done))

        def body(prompt, cache, index, mask, seeds):
            logits, _, cache = next(prompt, cache, index)
            counts = None
            if self.uses_token_counts:
                filled = ops.arange(ops.shape(prompt)[-1])[None, :] < index  # (1, max_length)
                counts = F.token_counts(prompt, ops.shape(logits)[-1], filled)
            token, seeds = with_seeds(self, seeds, lambda: self.get_next_token(
                self.compute_probabilities(logits, counts)))
            token = ops.cast(token, prompt.dtype)
            token = ops.where(mask[:, index], prompt[:, index], token)  # keep prompt tokens
            prompt = ops.slice_update(prompt, [0, index], token[:, None])
            return prompt, cache, index + 1, mask, seeds

        seeds = tuple(ops.convert_to_tensor(v) for v in seed_variables(self))
        prompt, _, _, _, seeds = self.run_loop(
            cond, body, model=model, loop_vars=(prompt, cache, index, mask, seeds),
            maximum_iterations=max_length - index,
        )
        for variable, value in zip(seed_variables(self), seeds):
            variable.assign(value)  # keras_hub's JAX generate reads it back from its scope
        return prompt

    def get_config(self):
        config = super().get_config()
        config.update({
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "seed": self.seed,
        })
        return config
