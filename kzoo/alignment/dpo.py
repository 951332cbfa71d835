"""Direct preference optimisation: a Keras model whose `train_step` trains a policy against a
frozen reference (or precomputed reference log-probs), in the manner of Gemma's DPO wrapper.
A LoRA policy needs neither: `reference="adapters_off"` runs the same network with its adapters
skipped (TRL's trick with PEFT), in the same compiled step, with no second copy of the weights.

The batch holds pairs: "token_ids" (pairs, 2, L) with the chosen row at [:, 0] and the rejected
row at [:, 1], and "loss_mask" (pairs, 2, L) marking response tokens (see
`kzoo.data.preference.encode_pairs`). Both rows go through the model in one forward pass. Sequence
log-probs are computed from float32 logits, so bfloat16 mixed precision changes the matmuls, not
the loss arithmetic. Under `tf.distribute` each replica's loss is divided by the global batch size
(`kzoo.backend.average_loss`) and the optimizer sums the gradients, so N replicas take the same
step as one device on the whole batch. The step is written once with `keras.ops` and runs on
TensorFlow, JAX and PyTorch (`kzoo.backend.stateful_step`).

Logged every step: loss, rewards/chosen, rewards/rejected, rewards/accuracy, rewards/margin,
logps/chosen, logps/rejected (rewards are beta * (log pi - log pi_ref), summed over the response),
and nll_loss when `rpo_alpha` > 0: RPO adds rpo_alpha times the policy's NLL of the chosen
responses, a per-token mean over every chosen token of the batch (TRL's `loss_type=["sigmoid",
"sft"], loss_weights=[1.0, rpo_alpha]`), so the loss also keeps the chosen text likely.

Example:
```python
import keras
from kzoo.models import CausalLM
from kzoo.alignment.dpo import DPOModel, frozen_copy
policy = CausalLM.from_preset("gpt_nano", vocab_size=257)
dpo = DPOModel(policy, reference=frozen_copy(policy), loss="sigmoid", beta=0.1)
dpo.compile(optimizer=keras.optimizers.AdamW(1e-4))
# dpo.fit(kzoo.data.preference.preference_dataset(arrays, batch_size=8), epochs=1)
```
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from kzoo import backend
from kzoo import losses as loss_registry
from kzoo.models.lora import lora_disabled, lora_spec

ADAPTERS_OFF = "adapters_off"
METRIC_NAMES = (
    "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin",
    "logps/chosen", "logps/rejected",
)


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
    from kzoo.alignment.dpo import sequence_logps
    model = CausalLM.from_preset("gpt_nano")
    sequence_logps(model, np.array([[1, 2, 3]]), np.array([[0.0, 1.0, 1.0]]))
    ```
    """
    token_ids = ops.convert_to_tensor(token_ids)
    logits = model(token_ids[:, :-1], training=training)  # (rows, L-1, vocab)
    # The fused op computes log-softmax in the logits' dtype: force float32.
    token_logps = -ops.sparse_categorical_crossentropy(
        ops.cast(token_ids[:, 1:], "int32"), ops.cast(logits, "float32"), from_logits=True
    )  # (rows, L-1): log p of token t+1 given tokens 0..t
    mask = ops.cast(loss_mask, "float32")[:, 1:]  # target t+1 counts when token t+1 is response
    total = ops.sum(token_logps * mask, axis=-1)
    if average:
        total = total / ops.maximum(ops.sum(mask, axis=-1), 1.0)
    return total


def pair_logps(model, token_ids, loss_mask, training=False, average=False):
    """Chosen and rejected log-probs of (pairs, 2, L) inputs in one forward pass: (pairs, 2)."""
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
    from kzoo.alignment.dpo import response_lengths
    response_lengths([[0.0, 1.0, 1.0]])   # [2.0]
    ```
    """
    mask = ops.cast(loss_mask, "float32")[..., 1:]  # the first token is never a target
    return ops.maximum(ops.sum(mask, axis=-1), 1.0)


def frozen_copy(model):
    """A non-trainable copy of `model` with the same config and weights (the DPO reference).

    Example:
    ```python
    from kzoo.models import CausalLM
    from kzoo.alignment.dpo import frozen_copy
    policy = CausalLM.from_preset("gpt_nano")
    reference = frozen_copy(policy)
    ```
    """
    copy = model.__class__.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    copy.trainable = False
    return copy


def compute_reference_logps(reference, arrays: dict, batch_size: int = 32,
                            average: bool = False) -> np.ndarray:
    """Reference log-probs of every pair, (pairs, 2) float32, to train with no second model.

    Run it with the policy itself before training: at step 0 the policy is the reference.

    Example:
    ```python
    arrays["reference_logps"] = compute_reference_logps(policy, arrays)
    dpo = DPOModel(policy, reference=None)
    ```
    """
    ids, mask = arrays["token_ids"], arrays["loss_mask"]
    # Not XLA: the policy's first step scores the same tokens without it, and a reference equal
    # to the policy must give exactly the policy's log-probs (KL and rewards exactly 0).
    fn = backend.compile_function(
        lambda i, m: pair_logps(reference, i, m, training=False, average=average),
        lambda: reference.variables, jit_compile=False)
    out = [ops.convert_to_numpy(fn(ids[s: s + batch_size], mask[s: s + batch_size]))
           for s in range(0, len(ids), batch_size)]
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 2), np.float32)


@keras.saving.register_keras_serializable(package="kzoo")
class DPOModel(keras.Model):
    """Trains `policy` on preference pairs with a DPO-family loss; `fit` drives it.

    Args:
        policy: CausalLM. the model being tuned (its weights are the only trainable ones).
        reference: CausalLM, None or "adapters_off". the frozen reference (see `frozen_copy`);
            None means every batch carries "reference_logps" (pairs, 2) from
            `compute_reference_logps`; "adapters_off" (a policy with LoRA adapters) means the
            policy with its adapters skipped. Such a DPOModel is not restored from a `.keras`
            file (Keras saves merged kernels): keep the adapters with `save_lora`.
        loss: str. a name from `kzoo.losses.list_losses()`.
        beta: float. KL strength; rewards are beta * (log pi - log pi_ref).
        label_smoothing: float. label-noise rate for the "conservative" and "robust" losses.
        average_log_prob: bool. length-normalise sequence log-probs (the logged logps and
            rewards, and what a loss sees). A loss registered `length_normalized` (`ipo`)
            always gets per-token mean log-ratios, whatever this says. Precomputed
            "reference_logps" must use the same setting (`compute_reference_logps(average=)`).
        rpo_alpha: float. weight of the RPO term, the policy's mean NLL per chosen token of
            the batch, added to the loss (0: plain DPO; the RPO paper uses 1.0).
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:
    ```python
    import keras
    from kzoo.models import CausalLM
    from kzoo.alignment.dpo import DPOModel, frozen_copy
    policy = CausalLM.from_preset("gpt_nano")
    dpo = DPOModel(policy, frozen_copy(policy), loss="ipo", beta=0.5)
    dpo.compile(optimizer="adam")
    rpo = DPOModel(policy, frozen_copy(policy), beta=0.1, rpo_alpha=1.0)   # DPO + chosen NLL
    ```
    """

    def __init__(self, policy, reference=None, loss: str = "sigmoid", beta: float = 0.1,
                 label_smoothing: float = 0.0, average_log_prob: bool = False,
                 rpo_alpha: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not beta > 0:
            raise ValueError(f"`beta` must be a positive number. Received: beta={beta!r}")
        if (isinstance(rpo_alpha, bool) or not isinstance(rpo_alpha, int | float)
                or not (rpo_alpha >= 0 and math.isfinite(rpo_alpha))):
            raise ValueError("`rpo_alpha` must be a finite number >= 0. Received: "
                             f"rpo_alpha={rpo_alpha!r}")
        self.loss_fn = loss_registry.get(loss)
        # Fail now, not at the first step, on a smoothing the loss does not take.
        self.loss_fn(np.zeros(1, "float32"), np.zeros(1, "float32"), beta, label_smoothing)
        self.policy = policy
        self.reference = reference
        if isinstance(reference, str):
            if reference != ADAPTERS_OFF:
                raise ValueError(f"Unknown `reference`: {reference!r}. Valid: a model, None or "
                                 f"{ADAPTERS_OFF!r}")
            if lora_spec(policy) is None:
                raise ValueError(f"reference={ADAPTERS_OFF!r} needs a policy with LoRA "
                                 "adapters; call policy.enable_lora(rank) first")
        elif reference is not None:
            reference.trainable = False
        self.loss_name = loss
        self.beta = float(beta)
        self.label_smoothing = float(label_smoothing)
        self.average_log_prob = average_log_prob
        self.rpo_alpha = float(rpo_alpha)
        # Summed log-ratios must be divided by the response lengths for such a loss.
        self.normalize_logratios = loss_registry.length_normalized(loss) and not average_log_prob
        names = METRIC_NAMES + (("nll_loss",) if self.rpo_alpha > 0 else ())
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.built = True

    @property
    def metrics(self):
        return list(self.trackers.values())

    def compile(self, optimizer="adamw", **kwargs):
        """Compile with an optimizer only: the loss is the DPO-family loss chosen at build."""
        super().compile(optimizer=optimizer, **kwargs)
        # Create the slots now, under the caller's distribution scope, not inside the step.
        self.optimizer.build(self.policy.trainable_variables)

    def call(self, inputs, training=False):
        """Policy log-probs of the pairs, (pairs, 2) float32."""
        return pair_logps(self.policy, inputs["token_ids"], inputs["loss_mask"],
                          training=training, average=self.average_log_prob)

    def _reference_logps(self, inputs):
        if self.reference is None:
            if "reference_logps" not in inputs:
                raise ValueError(
                    "DPOModel has no reference model, so every batch needs 'reference_logps' "
                    "(pairs, 2); compute them with `compute_reference_logps`. Batch keys: "
                    f"{sorted(inputs)}"
                )
            return ops.cast(inputs["reference_logps"], "float32")
        if isinstance(self.reference, str):  # ADAPTERS_OFF, checked in __init__
            # Python flags read while tracing: the step's graph holds both passes.
            with lora_disabled(self.policy):
                ref = pair_logps(self.policy, inputs["token_ids"], inputs["loss_mask"],
                                 training=False, average=self.average_log_prob)
        else:
            ref = pair_logps(self.reference, inputs["token_ids"], inputs["loss_mask"],
                             training=False, average=self.average_log_prob)
        return ops.stop_gradient(ref)

    def _pair_losses(self, policy_logps, reference_logps, loss_mask):
        logratios = policy_logps - reference_logps  # (pairs, 2)
        # sum/n - sum_ref/n: the mean log-ratio, as if both log-probs had been averaged.
        scored = logratios / response_lengths(loss_mask) if self.normalize_logratios else logratios
        per_pair = self.loss_fn(scored[:, 0], scored[:, 1], self.beta,
                                self.label_smoothing)  # (pairs,)
        return per_pair, self.beta * ops.stop_gradient(logratios)

    def _chosen_nll(self, policy_logps, loss_mask):
        """RPO's term from the policy log-probs `pair_logps` gave: (this replica's summed NLL of
        the chosen tokens / the chosen tokens of the global batch, that global mean NLL).

        The first is what the loss adds (scaled by rpo_alpha): summed over replicas it is the
        global per-token mean, so N replicas step as one device on the whole batch. The
        second, with no gradient, is what every replica logs."""
        chosen_mask = ops.cast(loss_mask, "float32")[:, 0]  # (pairs, L)
        chosen = policy_logps[:, 0]  # (pairs,)
        if self.average_log_prob:  # undo the per-row mean: the NLL is averaged per token
            chosen = chosen * response_lengths(chosen_mask)
        nll_sum = -ops.sum(chosen)
        # The first token is never a target; the count is the global batch's.
        tokens = backend.replica_sum(ops.sum(chosen_mask[:, 1:]))
        # max(., 1): a batch of empty chosen responses adds 0, where TRL's mean would be NaN.
        tokens = ops.maximum(tokens, 1.0)
        logged = backend.replica_sum(ops.stop_gradient(nll_sum))
        return nll_sum / tokens, logged / tokens

    def _loss(self, per_pair, policy_logps, loss_mask):
        """(the replica's share of the loss to differentiate, the global chosen NLL or None)."""
        # Sum over this replica's pairs / global batch: replicas' gradients then add up.
        loss = backend.average_loss(per_pair)
        if self.rpo_alpha == 0:
            return loss, None
        nll_share, nll = self._chosen_nll(policy_logps, loss_mask)
        return loss + self.rpo_alpha * nll_share, nll

    def _update_metrics(self, per_pair, rewards, policy_logps, nll=None):
        # Each replica adds its batch-weighted values; the Mean metrics sum across replicas.
        weight = ops.cast(ops.shape(per_pair)[0], "float32")
        values = {
            # The batch's whole objective: the pairs' DPO mean plus the global RPO term.
            "loss": per_pair if nll is None else per_pair + self.rpo_alpha * nll,
            "rewards/chosen": rewards[:, 0],
            "rewards/rejected": rewards[:, 1],
            "rewards/accuracy": ops.cast(rewards[:, 0] > rewards[:, 1], "float32"),
            "rewards/margin": rewards[:, 0] - rewards[:, 1],
            "logps/chosen": policy_logps[:, 0],
            "logps/rejected": policy_logps[:, 1],
        }
        if nll is not None:
            values["nll_loss"] = nll
        for name, value in values.items():
            self.trackers[name].update_state(ops.mean(value), sample_weight=weight)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    @backend.stateful_step
    def train_step(self, data):
        inputs, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        reference_logps = self._reference_logps(inputs)

        def compute_loss():
            # The reference pass finishes before the policy pass starts, so their activations
            # are never held at once (TensorFlow would otherwise interleave the two passes).
            with backend.control_dependencies([reference_logps]):
                policy_logps = self(inputs, training=True)
                per_pair, rewards = self._pair_losses(policy_logps, reference_logps,
                                                      inputs["loss_mask"])
                loss, nll = self._loss(per_pair, policy_logps, inputs["loss_mask"])
            aux = {"per_pair": per_pair, "rewards": rewards, "policy_logps": policy_logps}
            return loss, aux if nll is None else {**aux, "nll": nll}

        _, aux = backend.apply_gradients(self.optimizer, compute_loss,
                                         self.policy.trainable_variables)
        return self._update_metrics(aux["per_pair"], aux["rewards"], aux["policy_logps"],
                                    aux.get("nll"))

    @backend.stateful_step
    def test_step(self, data):
        inputs, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        policy_logps = self(inputs, training=False)
        per_pair, rewards = self._pair_losses(policy_logps, self._reference_logps(inputs),
                                              inputs["loss_mask"])
        _, nll = self._loss(per_pair, policy_logps, inputs["loss_mask"])
        return self._update_metrics(per_pair, rewards, policy_logps, nll)

    def get_config(self):
        return {
            **super().get_config(),
            "policy": keras.saving.serialize_keras_object(self.policy),
            "reference": self.reference if self.reference is None
            or isinstance(self.reference, str)
            else keras.saving.serialize_keras_object(self.reference),
            "loss": self.loss_name,
            "beta": self.beta,
            "label_smoothing": self.label_smoothing,
            "average_log_prob": self.average_log_prob,
            "rpo_alpha": self.rpo_alpha,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["policy"] = keras.saving.deserialize_keras_object(config["policy"])
        if config.get("reference") not in (None, ADAPTERS_OFF):
            config["reference"] = keras.saving.deserialize_keras_object(config["reference"])
        return cls(**config)
