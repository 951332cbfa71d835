"""KTO: a Keras model whose `train_step` trains a policy on unpaired thumbs up / down feedback
against a reference (a frozen copy, precomputed log-probs, or the LoRA policy with its adapters
off), with the KTO-family losses of `kzoo.losses.kto`.

A batch holds rows (see `kzoo.data.unpaired`): "token_ids" and "loss_mask" (B, L) of each
(prompt, completion), "labels" (B,) bool, and for the `kto` loss "kl_token_ids" and
"kl_loss_mask" (B, L): the batch's completions under other prompts (`with_kl_rows`). The KL
reference point is the mean policy-minus-reference log-ratio of those rows, clamped at 0, with
no gradient (the policy scores them outside the gradient); under `tf.distribute` it is
averaged over the replicas, as TRL gathers it over processes. Each replica's loss is divided by
the global batch size, so the batch loss is the mean over all completions.

Logged: loss, rewards/chosen, rewards/rejected (beta * log-ratio, averaged over the desirable,
resp. undesirable rows), kl, logps/chosen, logps/rejected. `implied_reward_accuracy` scores
held-out preference pairs the way DPO logs `rewards/accuracy`.

Example:
```python
import keras
from kzoo.models import CausalLM
from kzoo.alignment.dpo import frozen_copy
from kzoo.alignment.kto import KTOModel
policy = CausalLM.from_preset("gpt_nano", vocab_size=257)
kto = KTOModel(policy, reference=frozen_copy(policy), beta=0.1)
kto.compile(optimizer=keras.optimizers.Adam(1e-4))
# kto.fit(kzoo.data.unpaired.unpaired_dataset(with_kl_rows(arrays, 8), 8), epochs=1)
```
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from kzoo import backend
from kzoo.alignment.dpo import ADAPTERS_OFF, pair_logps, sequence_logps
from kzoo.losses import kto as kto_losses
from kzoo.models.lora import lora_disabled, lora_spec

METRIC_NAMES = ("loss", "rewards/chosen", "rewards/rejected", "kl", "logps/chosen",
                "logps/rejected")


def _reference_logps(reference, policy, token_ids, loss_mask):
    if isinstance(reference, str):  # ADAPTERS_OFF: Python flags read while tracing
        with lora_disabled(policy):
            return sequence_logps(policy, token_ids, loss_mask, training=False)
    return sequence_logps(reference, token_ids, loss_mask, training=False)


def compute_unpaired_reference_logps(reference, arrays: dict, batch_size: int = 32) -> dict:
    """Reference log-probs of every row and every KL row, (N,) float32 each, to train with no
    second model: {"reference_logps", "reference_kl_logps" (when the arrays have KL rows)}.

    Run it with the policy itself before training: at step 0 the policy is the reference.

    Example:
    ```python
    train.update(compute_unpaired_reference_logps(policy, train))
    kto = KTOModel(policy, reference=None)
    ```
    """
    # Not XLA, as compute_reference_logps: a reference equal to the policy gives KL exactly 0.
    fn = backend.compile_function(lambda i, m: sequence_logps(reference, i, m, training=False),
                                  lambda: reference.variables, jit_compile=False)
    out = {}
    for key, ids, mask in (("reference_logps", "token_ids", "loss_mask"),
                           ("reference_kl_logps", "kl_token_ids", "kl_loss_mask")):
        if ids not in arrays:
            continue
        n = len(arrays[ids])
        parts = [ops.convert_to_numpy(fn(arrays[ids][s: s + batch_size],
                                         arrays[mask][s: s + batch_size]))
                 for s in range(0, n, batch_size)]
        out[key] = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
    return out


def implied_reward_accuracy(policy, reference, pairs: dict, beta: float,
                            batch_size: int = 32) -> dict:
    """How often the implied reward beta * (log pi - log pi_ref) of a pair's chosen response
    beats its rejected one's (strictly, as DPO's `rewards/accuracy`), on encoded pairs.

    Args:
        policy: CausalLM. the tuned model.
        reference: CausalLM, "adapters_off" or None (then `pairs["reference_logps"]` (N, 2)
            from `kzoo.alignment.dpo.compute_reference_logps`).
        pairs: dict. from `kzoo.data.preference.encode_pairs`.
        beta: float. the reward scale.
        batch_size: int. pairs per forward pass.

    Returns:
        {"rewards/accuracy", "rewards/margin", "rewards/chosen", "rewards/rejected"}: floats,
        means over the pairs.

    Example:
    ```python
    implied_reward_accuracy(policy, None, val_pairs, beta=0.1)["rewards/accuracy"]
    ```
    """
    if reference is None and "reference_logps" not in pairs:
        raise ValueError("implied_reward_accuracy: reference=None needs pairs['reference_logps'] "
                         "(compute_reference_logps)")
    if len(pairs["token_ids"]) == 0:
        raise ValueError("implied_reward_accuracy: no pairs to score (0 pairs)")

    def score(ids, mask):
        logps = pair_logps(policy, ids, mask)
        if reference is None:
            return logps
        if isinstance(reference, str):
            with lora_disabled(policy):
                return ops.stack([logps, pair_logps(policy, ids, mask)])
        return ops.stack([logps, pair_logps(reference, ids, mask)])

    models = [policy] + ([] if reference is None or isinstance(reference, str) else [reference])
    score = backend.compile_function(score, lambda: [v for m in models for v in m.variables],
                                     jit_compile=False)

    rewards = []
    for s in range(0, len(pairs["token_ids"]), batch_size):
        got = score(pairs["token_ids"][s: s + batch_size], pairs["loss_mask"][s: s + batch_size])
        got = ops.convert_to_numpy(got).astype(np.float64)
        if reference is None:
            ratio = got - pairs["reference_logps"][s: s + batch_size]
        else:
            ratio = got[0] - got[1]
        rewards.append(beta * ratio)
    rewards = np.concatenate(rewards)  # (pairs, 2)
    return {"rewards/accuracy": float(np.mean(rewards[:, 0] > rewards[:, 1])),
            "rewards/margin": float(np.mean(rewards[:, 0] - rewards[:, 1])),
            "rewards/chosen": float(np.mean(rewards[:, 0])),
            "rewards/rejected": float(np.mean(rewards[:, 1]))}


@keras.saving.register_keras_serializable(package="kzoo")
class KTOModel(keras.Model):
    """Trains `policy` on unpaired desirable / undesirable completions; `fit` drives it.

    Args:
        policy: CausalLM. the model being tuned.
        reference: CausalLM, None or "adapters_off". a frozen reference (`frozen_copy`); None:
            every batch carries "reference_logps" (and "reference_kl_logps") from
            `compute_unpaired_reference_logps`; "adapters_off": the LoRA policy with its
            adapters skipped.
        loss_type: str. a name from `kzoo.losses.list_unpaired_losses()` ("kto",
            "apo_zero_unpaired").
        beta: float. KL strength; rewards are beta * (log pi - log pi_ref).
        desirable_weight: float. weight of the desirable rows' losses.
        undesirable_weight: float. weight of the undesirable rows' losses.
        **kwargs: passed to `keras.Model`.

    Example:
    ```python
    from kzoo.models import CausalLM
    from kzoo.alignment.kto import KTOModel
    kto = KTOModel(CausalLM.from_preset("gpt_nano"), reference=None, undesirable_weight=1.33)
    kto.compile(optimizer="adam")
    ```
    """

    def __init__(self, policy, reference=None, loss_type: str = "kto", beta: float = 0.1,
                 desirable_weight: float = 1.0, undesirable_weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        # Fail now, not at the first step, on a bad name or weight.
        kto_losses.kto_loss(np.zeros(1, "float32"), np.ones(1, bool), 0.0, beta,
                            desirable_weight, undesirable_weight, loss_type)
        if isinstance(reference, str):
            if reference != ADAPTERS_OFF:
                raise ValueError(f"Unknown `reference`: {reference!r}. Valid: a model, None or "
                                 f"{ADAPTERS_OFF!r}")
            if lora_spec(policy) is None:
                raise ValueError(f"reference={ADAPTERS_OFF!r} needs a policy with LoRA "
                                 "adapters; call policy.enable_lora(rank) first")
        elif reference is not None:
            reference.trainable = False
        self.policy = policy
        self.reference = reference
        self.loss_type = loss_type
        self.beta = float(beta)
        self.desirable_weight = float(desirable_weight)
        self.undesirable_weight = float(undesirable_weight)
        self.uses_kl = kto_losses.uses_kl(loss_type)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in METRIC_NAMES}
        self.built = True

    @property
    def metrics(self):
        return list(self.trackers.values())

    def compile(self, optimizer="adamw", **kwargs):
        """Compile with an optimizer only: the loss is the unpaired loss chosen at build."""
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.policy.trainable_variables)

    def call(self, inputs, training=False):
        """Policy log-probs of the rows, (B,) float32."""
        return sequence_logps(self.policy, inputs["token_ids"], inputs["loss_mask"],
                              training=training)

    def _need(self, inputs, key, why):
        if key not in inputs:
            raise ValueError(f"KTOModel needs {key!r} in every batch ({why}). Batch keys: "
                             f"{sorted(inputs)}")
        return inputs[key]

    def _reference(self, inputs, ids_key, mask_key, precomputed_key):
        if self.reference is None:
            return ops.cast(self._need(inputs, precomputed_key, "reference=None: compute them "
                                       "with compute_unpaired_reference_logps"), "float32")
        return ops.stop_gradient(_reference_logps(self.reference, self.policy, inputs[ids_key],
                                                 inputs[mask_key]))

    def _kl(self, inputs, training):
        if not self.uses_kl:
            return ops.zeros((), "float32")
        why = (f"loss_type={self.loss_type!r} estimates the KL from mismatched rows: build them "
               "with kzoo.data.unpaired.with_kl_rows")
        kl_ids = self._need(inputs, "kl_token_ids", why)
        kl_mask = self._need(inputs, "kl_loss_mask", why)
        policy_kl = sequence_logps(self.policy, kl_ids, kl_mask, training=training)
        reference_kl = self._reference(inputs, "kl_token_ids", "kl_loss_mask",
                                       "reference_kl_logps")
        # kto_kl's relu(mean(log-ratio)), where TRL averages the processes' mean log-ratios
        # before it clamps: so do the replicas (one replica: kto_kl itself).
        diff = ops.mean(ops.cast(policy_kl, "float32") - ops.cast(reference_kl, "float32"))
        return ops.stop_gradient(ops.relu(backend.replica_mean(diff)))

    def _row_losses(self, policy_logps, reference_logps, labels, kl):
        logratios = policy_logps - reference_logps  # (B,)
        per_row = kto_losses.kto_loss(logratios, labels, kl, self.beta, self.desirable_weight,
                                      self.undesirable_weight, self.loss_type)
        return per_row, self.beta * ops.stop_gradient(logratios)

    def _update_metrics(self, per_row, rewards, policy_logps, labels, kl):
        up = ops.cast(labels, "float32")
        down = 1.0 - up
        n = ops.cast(ops.shape(per_row)[0], "float32")
        # Per-row weights: a side with no rows in this batch leaves its metric unchanged.
        self.trackers["loss"].update_state(ops.mean(per_row), sample_weight=n)
        self.trackers["kl"].update_state(kl, sample_weight=n)
        for side, weight in (("chosen", up), ("rejected", down)):
            self.trackers[f"rewards/{side}"].update_state(rewards, sample_weight=weight)
            self.trackers[f"logps/{side}"].update_state(policy_logps, sample_weight=weight)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    def _labels(self, inputs):
        return ops.cast(self._need(inputs, "labels", "True for a thumbs up"), "bool")

    @backend.stateful_step
    def train_step(self, data):
        inputs, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        labels = self._labels(inputs)
        reference_logps = self._reference(inputs, "token_ids", "loss_mask", "reference_logps")
        # The KL point is a constant of the step: scored outside the gradient (TRL: no_grad).
        kl = self._kl(inputs, training=True)

        def compute_loss():
            policy_logps = self(inputs, training=True)
            per_row, rewards = self._row_losses(policy_logps, reference_logps, labels, kl)
            return backend.average_loss(per_row), {
                "per_row": per_row, "rewards": rewards, "policy_logps": policy_logps}

        _, aux = backend.apply_gradients(self.optimizer, compute_loss,
                                         self.policy.trainable_variables)
        return self._update_metrics(aux["per_row"], aux["rewards"], aux["policy_logps"], labels,
                                    kl)

    @backend.stateful_step
    def test_step(self, data):
        inputs, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        labels = self._labels(inputs)
        kl = self._kl(inputs, training=False)
        policy_logps = self(inputs, training=False)
        per_row, rewards = self._row_losses(policy_logps, self._reference(
            inputs, "token_ids", "loss_mask", "reference_logps"), labels, kl)
        return self._update_metrics(per_row, rewards, policy_logps, labels, kl)

    def get_config(self):
        reference = self.reference
        if reference is not None and not isinstance(reference, str):
            reference = keras.saving.serialize_keras_object(reference)
        return {**super().get_config(),
                "policy": keras.saving.serialize_keras_object(self.policy),
                "reference": reference, "loss_type": self.loss_type, "beta": self.beta,
                "desirable_weight": self.desirable_weight,
                "undesirable_weight": self.undesirable_weight}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["policy"] = keras.saving.deserialize_keras_object(config["policy"])
        if config.get("reference") not in (None, ADAPTERS_OFF):
            config["reference"] = keras.saving.deserialize_keras_object(config["reference"])
        return cls(**config)
