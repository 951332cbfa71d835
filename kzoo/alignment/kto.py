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

import warnings

import keras
import numpy as np
from keras import ops

from kzoo import backend
from kzoo.alignment.base import PolicyModel, pair_logps, score_reference, sequence_logps
from kzoo.losses import kto as kto_losses

METRIC_NAMES = ("loss", "rewards/chosen", "rewards/rejected", "kl", "logps/chosen",
                "logps/rejected")


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
        return ops.stack([logps, score_reference(policy, reference,
                                                 lambda model: pair_logps(model, ids, mask))])

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
class KTOModel(PolicyModel):
    """Trains `policy` on unpaired desirable / undesirable completions; `fit` drives it.

    Args:
        policy: CausalLM. the model being tuned.
        reference: CausalLM, None or "adapters_off". a frozen reference (`frozen_copy`); None:
            every batch carries "reference_logps" (and "reference_kl_logps") from
            `compute_unpaired_reference_logps`; "adapters_off": the LoRA policy with its
            adapters skipped.
        loss: str. a name from `kzoo.losses.list_unpaired_losses()` ("kto",
            "apo_zero_unpaired"), as `DPOModel`'s `loss`.
        beta: float. KL strength; rewards are beta * (log pi - log pi_ref).
        desirable_weight: float. weight of the desirable rows' losses.
        undesirable_weight: float. weight of the undesirable rows' losses.
        loss_type: str or None. the older name of `loss` (deprecated; a warning).
        **kwargs: passed to `keras.Model`.

    Example:
    ```python
    from kzoo.models import CausalLM
    from kzoo.alignment.kto import KTOModel
    kto = KTOModel(CausalLM.from_preset("gpt_nano"), reference=None, undesirable_weight=1.33)
    kto.compile(optimizer="adam")
    ```
    """

    def __init__(self, policy, reference=None, loss: str = "kto", beta: float = 0.1,
                 desirable_weight: float = 1.0, undesirable_weight: float = 1.0,
                 loss_type: str | None = None, **kwargs):
        super().__init__(policy, reference, **kwargs)
        if loss_type is not None:
            warnings.warn("KTOModel(loss_type=...) is deprecated: use loss=...",
                          DeprecationWarning, stacklevel=2)
            loss = loss_type
        # Fail now, not at the first step, on a bad name or weight.
        kto_losses.kto_loss(np.zeros(1, "float32"), np.ones(1, bool), 0.0, beta,
                            desirable_weight, undesirable_weight, loss)
        self.loss_name = loss  # not `loss`: keras.Model.compile sets that attribute
        self.beta = float(beta)
        self.desirable_weight = float(desirable_weight)
        self.undesirable_weight = float(undesirable_weight)
        self.uses_kl = kto_losses.uses_kl(loss)
        self.track(METRIC_NAMES)

    @property
    def loss_type(self) -> str:
        """The older name of `loss_name` (the unpaired loss's registry name)."""
        return self.loss_name

    def call(self, inputs, training=False):
        """Policy log-probs of the rows, (B,) float32."""
        return sequence_logps(self.policy, inputs["token_ids"], inputs["loss_mask"],
                              training=training)

    def _reference(self, inputs, ids_key, mask_key, precomputed_key):
        if self.reference is None:
            return ops.cast(self.need(inputs, precomputed_key, "reference=None: compute them "
                                      "with compute_unpaired_reference_logps"), "float32")
        return self.reference_scores(lambda model: sequence_logps(
            model, inputs[ids_key], inputs[mask_key], training=False))

    def _kl(self, inputs, training):
        if not self.uses_kl:
            return ops.zeros((), "float32")
        why = (f"loss={self.loss_name!r} estimates the KL from mismatched rows: build them "
               "with kzoo.data.unpaired.with_kl_rows")
        kl_ids = self.need(inputs, "kl_token_ids", why)
        kl_mask = self.need(inputs, "kl_loss_mask", why)
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
                                      self.undesirable_weight, self.loss_name)
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
        return self.results()

    def _labels(self, inputs):
        return ops.cast(self.need(inputs, "labels", "True for a thumbs up"), "bool")

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

        aux = self.apply_policy_gradients(compute_loss)
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
        return {**super().get_config(), "loss": self.loss_name, "beta": self.beta,
                "desirable_weight": self.desirable_weight,
                "undesirable_weight": self.undesirable_weight}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "loss_type" in config:  # a file saved before the argument was named `loss`
            config["loss"] = config.pop("loss_type")
        return super().from_config(config)
