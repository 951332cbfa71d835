"""ORPO: odds-ratio preference optimisation, a Keras model whose `train_step` tunes a policy on
preference pairs with no reference model at all (Hong et al. 2024; TRL's `ORPOTrainer`).

The loss of a batch is the policy's mean NLL per token of the chosen rows plus the pairs' mean
odds-ratio term `kzoo.losses.odds_ratio_loss` (beta times -log sigmoid of the log odds ratio of
the per-token mean response log-probs). As TRL, the NLL counts every real token of the chosen
row, prompt included (`prompt_nll=False`: the response only, as the paper writes it). The real
tokens are those up to the last response token (the end-of-text), so no extra batch key is
needed. One forward pass scores both rows; under `tf.distribute` the NLL is a per-token mean
over the global batch and the odds term a mean over its pairs.

The batch is DPO's: "token_ids" and "loss_mask" (pairs, 2, L), chosen at [:, 0] (see
`kzoo.data.preference.encode_pairs` and `preference_dataset`). Logged: loss, nll_loss,
rewards/chosen, rewards/rejected (beta * the per-token mean log-probs, as TRL),
rewards/accuracy, rewards/margin, logps/chosen, logps/rejected, log_odds_ratio (the mean log
sigmoid of the log odds ratio) and log_odds_chosen (the mean log odds ratio).

Example:
```python
import keras
from kzoo.models import CausalLM
from kzoo.alignment.orpo import ORPOModel
policy = CausalLM.from_preset("gpt_nano", vocab_size=257)
orpo = ORPOModel(policy, beta=0.1)
orpo.compile(optimizer=keras.optimizers.AdamW(8e-6))
# orpo.fit(kzoo.data.preference.preference_dataset(arrays, batch_size=8), epochs=1)
```
"""

from __future__ import annotations

import keras
from keras import ops

from kzoo import backend
from kzoo.alignment.base import PolicyModel, global_token_mean, pair_values, target_logps
from kzoo.losses.orpo import log_odds_ratio, odds_ratio_loss

METRIC_NAMES = ("loss", "nll_loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy",
                "rewards/margin", "logps/chosen", "logps/rejected", "log_odds_ratio",
                "log_odds_chosen")


def real_token_mask(loss_mask):
    """1.0 on every token up to and including a row's last response token: (..., L) float32.

    Example:
    ```python
    real_token_mask([[0.0, 1.0, 1.0, 0.0]])   # [[1.0, 1.0, 1.0, 0.0]]
    ```
    """
    mask = ops.cast(loss_mask, "float32")
    # A suffix sum is positive exactly where some response token still follows.
    after = ops.flip(ops.cumsum(ops.flip(mask, axis=-1), axis=-1), axis=-1)
    return ops.cast(after > 0, "float32")


@keras.saving.register_keras_serializable(package="kzoo")
class ORPOModel(PolicyModel):
    """Trains `policy` on preference pairs with ORPO's loss (NLL + odds ratio); `fit` drives it.

    Args:
        policy: CausalLM. the model being tuned.
        beta: float. weight of the odds-ratio term (the paper's lambda, TRL's beta; 0.1).
        prompt_nll: bool. the NLL counts the prompt tokens of the chosen row too (TRL); False:
            only its response tokens.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:
    ```python
    from kzoo.models import CausalLM
    from kzoo.alignment.orpo import ORPOModel
    orpo = ORPOModel(CausalLM.from_preset("gpt_nano"), beta=0.2, prompt_nll=False)
    orpo.compile(optimizer="adamw")
    ```
    """

    takes_reference = False

    def __init__(self, policy, beta: float = 0.1, prompt_nll: bool = True, **kwargs):
        super().__init__(policy, **kwargs)
        odds_ratio_loss([-1.0], [-1.0], beta)  # fail now, not at the first step, on a bad beta
        if not isinstance(prompt_nll, bool):
            raise ValueError(f"`prompt_nll` must be true or false. Received: {prompt_nll!r}")
        self.beta = float(beta)
        self.prompt_nll = prompt_nll
        self.track(METRIC_NAMES)

    def _scores(self, inputs, training):
        """(per-token mean response log-probs (pairs, 2), this replica's share of the chosen
        rows' NLL, the global NLL to log)."""
        token_ids = ops.convert_to_tensor(inputs["token_ids"])
        length = ops.shape(token_ids)[-1]
        loss_mask = ops.reshape(ops.cast(inputs["loss_mask"], "float32"), (-1, 2, length))
        logps = target_logps(self.policy, ops.reshape(token_ids, (-1, length)), training)
        logps = ops.reshape(logps, (-1, 2, length - 1))  # one pass for both rows
        response = loss_mask[..., 1:]  # target t+1 counts when token t+1 is response
        mean_logps = ops.sum(logps * response, axis=-1) / ops.maximum(
            ops.sum(response, axis=-1), 1.0)
        chosen = loss_mask[:, 0]
        nll_mask = (real_token_mask(chosen) if self.prompt_nll else chosen)[:, 1:]
        nll_share, nll = global_token_mean(-ops.sum(logps[:, 0] * nll_mask), ops.sum(nll_mask))
        return mean_logps, nll_share, nll

    def call(self, inputs, training=False):
        """Per-token mean log-probs of the pairs' responses, (pairs, 2) float32."""
        return self._scores(inputs, training)[0]

    def _loss(self, inputs, training):
        mean_logps, nll_share, nll = self._scores(inputs, training)
        per_pair = odds_ratio_loss(mean_logps[:, 0], mean_logps[:, 1], self.beta)
        # Sum over this replica's pairs / global batch: replicas' gradients then add up.
        loss = nll_share + backend.average_loss(per_pair)
        return loss, {"per_pair": per_pair, "nll": nll, "logps": mean_logps}

    def _update_metrics(self, aux):
        logps = ops.stop_gradient(aux["logps"])
        log_odds = log_odds_ratio(logps[:, 0], logps[:, 1])
        values = {
            "loss": aux["per_pair"] + aux["nll"],  # the batch's whole objective
            "nll_loss": aux["nll"],
            **pair_values(self.beta * logps, logps),  # ORPO's rewards: beta * log-probs (TRL)
            "log_odds_ratio": ops.log_sigmoid(log_odds),
            "log_odds_chosen": log_odds,
        }
        # Each replica adds its batch-weighted values; the Mean metrics sum across replicas.
        return self.update_means(values, ops.cast(ops.shape(logps)[0], "float32"))

    @backend.stateful_step
    def train_step(self, data):
        inputs, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self._update_metrics(
            self.apply_policy_gradients(lambda: self._loss(inputs, training=True)))

    @backend.stateful_step
    def test_step(self, data):
        inputs, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self._update_metrics(self._loss(inputs, training=False)[1])

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "prompt_nll": self.prompt_nll}


__all__ = ["METRIC_NAMES", "ORPOModel", "real_token_mask"]
