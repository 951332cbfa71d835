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
from kzoo.alignment.base import (  # noqa: F401  (the log-prob helpers' older home)
    ADAPTERS_OFF,
    PolicyModel,
    frozen_copy,
    global_token_mean,
    pair_logps,
    pair_values,
    response_lengths,
    sequence_logps,
)

METRIC_NAMES = (
    "loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin",
    "logps/chosen", "logps/rejected",
)


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
class DPOModel(PolicyModel):
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
        super().__init__(policy, reference, **kwargs)
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not beta > 0:
            raise ValueError(f"`beta` must be a positive number. Received: beta={beta!r}")
        if (isinstance(rpo_alpha, bool) or not isinstance(rpo_alpha, int | float)
                or not (rpo_alpha >= 0 and math.isfinite(rpo_alpha))):
            raise ValueError("`rpo_alpha` must be a finite number >= 0. Received: "
                             f"rpo_alpha={rpo_alpha!r}")
        self.loss_fn = loss_registry.get(loss)
        # Fail now, not at the first step, on a smoothing the loss does not take.
        self.loss_fn(np.zeros(1, "float32"), np.zeros(1, "float32"), beta, label_smoothing)
        self.loss_name = loss
        self.beta = float(beta)
        self.label_smoothing = float(label_smoothing)
        self.average_log_prob = average_log_prob
        self.rpo_alpha = float(rpo_alpha)
        # Summed log-ratios must be divided by the response lengths for such a loss.
        self.normalize_logratios = loss_registry.length_normalized(loss) and not average_log_prob
        self.track(METRIC_NAMES + (("nll_loss",) if self.rpo_alpha > 0 else ()))

    def call(self, inputs, training=False):
        """Policy log-probs of the pairs, (pairs, 2) float32."""
        return pair_logps(self.policy, inputs["token_ids"], inputs["loss_mask"],
                          training=training, average=self.average_log_prob)

    def _reference_logps(self, inputs):
        if self.reference is None:
            return ops.cast(self.need(inputs, "reference_logps",
                                      "reference=None: (pairs, 2) from compute_reference_logps"),
                            "float32")
        return self.reference_scores(lambda model: pair_logps(
            model, inputs["token_ids"], inputs["loss_mask"], training=False,
            average=self.average_log_prob))

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
        # The first token is never a target; the count is the global batch's.
        return global_token_mean(-ops.sum(chosen), ops.sum(chosen_mask[:, 1:]))

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
            **pair_values(rewards, policy_logps),
        }
        if nll is not None:
            values["nll_loss"] = nll
        return self.update_means(values, weight)

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

        aux = self.apply_policy_gradients(compute_loss)
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
            "loss": self.loss_name,
            "beta": self.beta,
            "label_smoothing": self.label_smoothing,
            "average_log_prob": self.average_log_prob,
            "rpo_alpha": self.rpo_alpha,
        }
