"""What every alignment model shares: `PolicyModel`, a Keras model that tunes a `CausalLM` policy
(against a reference where the method has one), and the log-prob helpers its steps score with.

`PolicyModel` owns: the policy and the reference (a frozen model, None for precomputed
log-probs in the batch, or "adapters_off": the LoRA policy with its adapters skipped), the
scoring of either under no gradient (`reference_scores`), the metric trackers, `compile` with an
optimizer only (slots built at once, under the caller's distribution scope), the batch-key check
with one `ValueError` line, and `get_config` / `from_config` of the policy and reference.
A method (`DPOModel`, `KTOModel`, `ORPOModel`, `PolicyGradientModel`) adds its loss, its
`train_step` / `test_step` and its own config keys.

Example:
```python
import keras
from kzoo.alignment.base import PolicyModel, sequence_logps

@keras.saving.register_keras_serializable(package="kzoo")
class NLLModel(PolicyModel):   # a method with no reference: the mean NLL of the rows
    takes_reference = False

    def __init__(self, policy, **kwargs):
        super().__init__(policy, **kwargs)
        self.track(("loss",))

    def train_step(self, data):
        ...
```
"""

from __future__ import annotations

import keras
from keras import ops

from kzoo import backend
from kzoo.models.lora import lora_disabled, lora_spec

ADAPTERS_OFF = "adapters_off"


def target_logps(model, token_ids, training=False):
    """log p(token t+1 | tokens 0..t) of every row, from float32 logits: (rows, L - 1).

    Args:
        model: a `CausalLM`.
        token_ids: int tensor. (rows, L).
        training: bool. passed to the model (dropout).

    Example:
    ```python
    target_logps(model, np.array([[1, 2, 3]]))   # (1, 2)
    ```
    """
    token_ids = ops.convert_to_tensor(token_ids)
    logits = model(token_ids[:, :-1], training=training)  # (rows, L-1, vocab)
    # The fused op computes log-softmax in the logits' dtype: force float32.
    return -ops.sparse_categorical_crossentropy(
        ops.cast(token_ids[:, 1:], "int32"), ops.cast(logits, "float32"), from_logits=True)


def sequence_logps(model, token_ids, loss_mask, training=False, average=False):
    """Sum (or mean) of log p(token_t | tokens before t) over positions where `loss_mask` is 1.

    Args:
        model: a `CausalLM` (float32 logits (batch, seq, vocab)).
        token_ids: int tensor. (rows, L).
        loss_mask: float tensor. (rows, L); 1.0 marks the tokens to score.
        training: bool. passed to the model (dropout).
        average: bool. divide by the number of scored tokens (length-normalised log-prob).

    Returns:
        float32 tensor (rows,).

    Example:
    ```python
    import numpy as np
    from kzoo.models import CausalLM
    from kzoo.alignment.base import sequence_logps
    model = CausalLM.from_preset("gpt_nano")
    sequence_logps(model, np.array([[1, 2, 3]]), np.array([[0.0, 1.0, 1.0]]))
    ```
    """
    mask = ops.cast(loss_mask, "float32")[:, 1:]  # target t+1 counts when token t+1 is response
    total = ops.sum(target_logps(model, token_ids, training) * mask, axis=-1)
    if average:
        total = total / ops.maximum(ops.sum(mask, axis=-1), 1.0)
    return total


def pair_logps(model, token_ids, loss_mask, training=False, average=False):
    """Chosen and rejected log-probs of (pairs, 2, L) inputs in one forward pass: (pairs, 2).

    Example:
    ```python
    pair_logps(policy, arrays["token_ids"][:4], arrays["loss_mask"][:4])   # (4, 2)
    ```
    """
    token_ids = ops.convert_to_tensor(token_ids)
    length = ops.shape(token_ids)[-1]
    flat_ids = ops.reshape(token_ids, (-1, length))  # (pairs * 2, L), rows alternate c, r
    flat_mask = ops.reshape(loss_mask, (-1, length))
    logps = sequence_logps(model, flat_ids, flat_mask, training=training, average=average)
    return ops.reshape(logps, (-1, 2))  # (pairs, 2)


def response_lengths(loss_mask):
    """How many tokens `sequence_logps` scores in each row: (..., L) mask -> (...) float32, >= 1.

    Example:
    ```python
    from kzoo.alignment.base import response_lengths
    response_lengths([[0.0, 1.0, 1.0]])   # [2.0]
    ```
    """
    mask = ops.cast(loss_mask, "float32")[..., 1:]  # the first token is never a target
    return ops.maximum(ops.sum(mask, axis=-1), 1.0)


def frozen_copy(model):
    """A non-trainable copy of `model` with the same config and weights (a reference model).

    Example:
    ```python
    from kzoo.models import CausalLM
    from kzoo.alignment.base import frozen_copy
    policy = CausalLM.from_preset("gpt_nano")
    reference = frozen_copy(policy)
    ```
    """
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    copy.trainable = False
    return copy


def check_reference(policy, reference):
    """`reference` checked (a model is frozen in place); one `ValueError` line when it is bad.

    Example:
    ```python
    check_reference(policy, "adapters_off")   # needs policy.enable_lora(rank) first
    ```
    """
    if isinstance(reference, str):
        if reference != ADAPTERS_OFF:
            raise ValueError(f"Unknown `reference`: {reference!r}. Valid: a model, None or "
                             f"{ADAPTERS_OFF!r}")
        if lora_spec(policy) is None:
            raise ValueError(f"reference={ADAPTERS_OFF!r} needs a policy with LoRA "
                             "adapters; call policy.enable_lora(rank) first")
    elif reference is not None:
        reference.trainable = False
    return reference


def score_reference(policy, reference, score):
    """`score(model)` under the reference: `reference` itself, or with "adapters_off" the
    policy with its LoRA adapters skipped (Python flags read while tracing, so a compiled step
    holds both passes). No gradient is stopped here; callers decide.

    Example:
    ```python
    score_reference(policy, "adapters_off", lambda m: sequence_logps(m, ids, mask))
    ```
    """
    if isinstance(reference, str):  # ADAPTERS_OFF, checked by check_reference
        with lora_disabled(policy):
            return score(policy)
    return score(reference)


def global_token_mean(total, tokens):
    """A per-token mean over the global batch from this replica's `total` and `tokens`:
    (this replica's share, to differentiate: summed over the replicas it is the global mean,
    so N replicas step as one device on the whole batch; the global mean, with no gradient,
    to log). One replica: (total / tokens, the same).

    Example:
    ```python
    share, logged = global_token_mean(-ops.sum(token_logps * mask), ops.sum(mask))
    ```
    """
    # max(., 1): a batch with no tokens adds 0, where a plain mean would be NaN.
    tokens = ops.maximum(backend.replica_sum(tokens), 1.0)
    return total / tokens, backend.replica_sum(ops.stop_gradient(total)) / tokens


def pair_values(rewards, logps) -> dict:
    """The per-pair metrics DPO and ORPO log, from (pairs, 2) implied rewards and policy
    log-probs (chosen at [:, 0]): rewards/chosen, /rejected, /accuracy (chosen strictly above),
    /margin, logps/chosen, /rejected; each a (pairs,) tensor with no gradient.

    Example:
    ```python
    self.update_means({"loss": per_pair, **pair_values(rewards, logps)}, weight)
    ```
    """
    rewards, logps = ops.stop_gradient(rewards), ops.stop_gradient(logps)
    return {
        "rewards/chosen": rewards[:, 0],
        "rewards/rejected": rewards[:, 1],
        "rewards/accuracy": ops.cast(rewards[:, 0] > rewards[:, 1], "float32"),
        "rewards/margin": rewards[:, 0] - rewards[:, 1],
        "logps/chosen": logps[:, 0],
        "logps/rejected": logps[:, 1],
    }


class PolicyModel(keras.Model):
    """The base of the alignment models: a policy, maybe a reference, trackers and a config.

    Args:
        policy: CausalLM. the model being tuned (its weights are the only trainable ones).
        reference: CausalLM, None or "adapters_off". for a method with `takes_reference`: a
            frozen model (`frozen_copy`); None: the batches carry precomputed reference
            log-probs; "adapters_off": the LoRA policy with its adapters skipped (such a model
            is not restored from a `.keras` file, which holds merged kernels: keep the adapters
            with `save_lora`).
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Class attributes a subclass sets: `takes_reference` (False: no reference at all, none in
    the config) and `default_optimizer` (what `compile()` uses with no optimizer).

    Example:
    ```python
    from kzoo.alignment import DPOModel
    isinstance(DPOModel(policy), PolicyModel)   # True
    ```
    """

    takes_reference = True
    default_optimizer = "adamw"

    def __init__(self, policy, reference=None, **kwargs):
        super().__init__(**kwargs)
        if not self.takes_reference and reference is not None:
            raise ValueError(f"{type(self).__name__} uses no reference model. Received: "
                             f"reference={reference!r}")
        self.policy = policy
        self.reference = check_reference(policy, reference)
        self.trackers = {}

    def track(self, names):
        """Create one `keras.metrics.Mean` per name (the logged metrics, in order)."""
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.built = True

    @property
    def metrics(self):
        return list(self.trackers.values())

    def compile(self, optimizer=None, jit_compile="auto", **kwargs):
        """Compile with an optimizer only: the loss is the method's, chosen at build.
        `jit_compile` True on PyTorch is kzoo's recorded train step
        (`kzoo.backend.compile_train_step`), not Keras' `torch.compile`; "auto" is Keras'.

        Example:
        ```python
        model.compile(optimizer=keras.optimizers.AdamW(1e-4), jit_compile=False)
        ```
        """
        keras_jit = jit_compile if jit_compile == "auto" else backend.train_jit_compile(
            jit_compile)
        super().compile(optimizer=optimizer or self.default_optimizer, jit_compile=keras_jit,
                        **kwargs)
        if jit_compile != "auto":
            backend.compile_train_step(self, jit_compile)
        # Create the slots now, under the caller's distribution scope, not inside the step.
        self.optimizer.build(self.tuned_variables())

    def tuned_variables(self):
        """The weights a step changes: the policy's trainable ones (a method with a head of
        its own, such as the reward model, adds it)."""
        return self.policy.trainable_variables

    def compile_from_config(self, config):
        # Keras skips restoring compile() for a model that overrides it: a loaded `.keras`
        # file comes back compiled, its optimizer state restored by the loader after this.
        self.compile(**keras.saving.deserialize_keras_object(config))

    def need(self, inputs, key, why):
        """`inputs[key]`, or one `ValueError` line naming the model, the key, why and the keys."""
        if key not in inputs:
            raise ValueError(f"{type(self).__name__} needs {key!r} in every batch ({why}). "
                             f"Batch keys: {sorted(inputs)}")
        return inputs[key]

    def reference_scores(self, score):
        """`score(model)` under the reference, with no gradient (see `score_reference`)."""
        return ops.stop_gradient(score_reference(self.policy, self.reference, score))

    def apply_policy_gradients(self, compute_loss):
        """One optimizer step on the policy's weights: `compute_loss() -> (loss, aux)`; aux."""
        return backend.apply_gradients(self.optimizer, compute_loss,
                                       self.tuned_variables())[1]

    def update_means(self, values, weight=None):
        """Add each value's mean (batch-weighted when `weight` is given) to its tracker; the
        results. Under `tf.distribute` the Mean metrics sum the replicas' weighted values."""
        for name, value in values.items():
            self.trackers[name].update_state(ops.mean(ops.stop_gradient(value)),
                                             sample_weight=weight)
        return self.results()

    def results(self):
        """{name: value} of every tracker."""
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def get_config(self):
        config = {**super().get_config(),
                  "policy": keras.saving.serialize_keras_object(self.policy)}
        if self.takes_reference:
            reference = self.reference
            if reference is not None and not isinstance(reference, str):
                reference = keras.saving.serialize_keras_object(reference)
            config["reference"] = reference
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["policy"] = keras.saving.deserialize_keras_object(config["policy"])
        if config.get("reference") not in (None, ADAPTERS_OFF):
            config["reference"] = keras.saving.deserialize_keras_object(config["reference"])
        return cls(**config)


__all__ = ["ADAPTERS_OFF", "PolicyModel", "check_reference", "frozen_copy", "global_token_mean",
           "pair_logps", "pair_values", "response_lengths", "score_reference", "sequence_logps",
           "target_logps"]
