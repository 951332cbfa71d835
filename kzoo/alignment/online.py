"""The train step of on-policy RL: a policy-gradient Keras model for GRPO and RLOO.

`PolicyGradientModel` wraps the policy; each batch is a generation batch (or a slice of one)
built by `kzoo.alignment.rollout`: prompt + completion rows, the completion mask, one advantage
per row, and where needed the log-probs the rows had when they were sampled (`old_logps`) and
under the reference (`ref_logps`). The step is written once with `keras.ops`; its gradients go
through `kzoo.backend`. Log-probs are taken from temperature-scaled logits in float32, as the
sampler saw them (TRL had to fix both).

- GRPO: per-token ratio pi / pi_old, clipped with `epsilon` / `epsilon_high`, plus `beta` times
  the k3 KL to the reference per token, reduced by `loss_type` (DAPO by default).
- RLOO: the ratio of whole-sequence log-probs, clipped the same way (REINFORCE when the
  ratio is 1); its KL is folded into the reward before the advantages (`beta`, k1).

Example:
```python
import keras
from kzoo.models import CausalLM
from kzoo.alignment.online import PolicyGradientModel
policy = CausalLM.from_preset("gpt_nano", vocab_size=16)
model = PolicyGradientModel(policy, algorithm="grpo", temperature=1.0)
model.compile(optimizer=keras.optimizers.Adam(1e-5))
```
"""

from __future__ import annotations

import keras
from keras import ops

from kzoo import backend
from kzoo.alignment.base import PolicyModel
from kzoo.losses import policy_gradient as pg
from kzoo.models.lora import lora_disabled

ALGORITHMS = ("grpo", "rloo")
METRIC_NAMES = ("loss", "kl", "kl/prompt", "entropy", "clip_ratio/low_mean",
                "clip_ratio/high_mean", "clip_ratio/region_mean")


def token_logps(model, token_ids, temperature: float = 1.0, training: bool = False):
    """Log-probs and entropies of every next token from temperature-scaled logits.

    Args:
        model: a `CausalLM`.
        token_ids: int tensor (rows, L).
        temperature: float. the sampling temperature the completions were drawn at.
        training: bool. passed to the model (dropout).

    Returns:
        (logps, entropy): float32 (rows, L - 1); entry t scores token t + 1 given 0..t.
    """
    logits = model(token_ids[:, :-1], training=training)  # (rows, L-1, vocab)
    logits = ops.cast(logits, "float32") / temperature
    log_probs = ops.log_softmax(logits, axis=-1)
    targets = ops.expand_dims(ops.cast(token_ids[:, 1:], "int32"), -1)  # (rows, L-1, 1)
    logps = ops.squeeze(ops.take_along_axis(log_probs, targets, axis=-1), -1)
    entropy = -ops.sum(ops.exp(log_probs) * log_probs, axis=-1)
    return logps, entropy


def objective(algorithm: str, logps, entropy, inputs, beta: float = 0.0, epsilon: float = 0.2,
              epsilon_high: float | None = None, loss_type: str = "dapo",
              max_completion_length: int | None = None, prompt_kl_coef: float = 0.0):
    """GRPO's or RLOO's loss from the policy's per-token log-probs, and the step's metrics.

    Args:
        algorithm: str. "grpo" or "rloo".
        logps: float32 (rows, L - 1). the policy's log-probs of each next token (`token_logps`).
        entropy: float32 (rows, L - 1). the policy's entropies there (logged only).
        inputs: dict. the batch (see `PolicyGradientModel`).
        beta: float. GRPO's k3 KL weight.
        epsilon: float. lower clip range.
        epsilon_high: float or None. upper clip range (None: epsilon).
        loss_type: str. GRPO's reduction (`kzoo.losses.policy_gradient.LOSS_TYPES`).
        max_completion_length: int or None. "dr_grpo"'s fixed length.
        prompt_kl_coef: float. weight of the k3 KL on the prompt tokens (the policy's
            predictions of the prompt text against the reference's, where the batch has a
            "prompt_mask"): keeps what the policy says outside its completions, which the
            policy-gradient term never constrains.

    Returns:
        (loss, values): the scalar loss and a dict of scalar metrics (`METRIC_NAMES`).
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    mask = ops.cast(inputs["completion_mask"], "float32")[:, 1:]  # targets t + 1
    old = inputs.get("old_logps")
    old = ops.stop_gradient(logps) if old is None else ops.cast(old, "float32")
    advantages = ops.cast(inputs["advantages"], "float32")
    kl = ops.zeros_like(logps)
    if inputs.get("ref_logps") is not None:
        kl = pg.k3_kl(logps, ops.cast(inputs["ref_logps"], "float32"))
    tokens = ops.maximum(ops.sum(mask), 1.0)
    if algorithm == "grpo":
        per_token, ratio = pg.clipped_surrogate(logps - old, advantages[:, None], epsilon,
                                                epsilon_high)
        if beta:
            per_token = per_token + beta * kl
        num_items = inputs.get("num_items")
        if num_items is not None:
            num_items = ops.cast(num_items, "float32")[0]  # every entry holds the same count
        loss = pg.reduce_token_loss(per_token, mask, loss_type, num_items, max_completion_length)
        low, high = pg.clip_flags(ratio, advantages[:, None], epsilon, epsilon_high)
        low, high = ops.sum(low * mask) / tokens, ops.sum(high * mask) / tokens
    else:  # rloo: the whole completion is the action
        log_ratio = ops.sum((logps - old) * mask, axis=-1)  # (rows,)
        per_row, ratio = pg.clipped_surrogate(log_ratio, advantages, epsilon, epsilon_high)
        loss = ops.mean(per_row)
        low, high = pg.clip_flags(ratio, advantages, epsilon, epsilon_high)
        low, high = ops.mean(low), ops.mean(high)
    prompt_kl = ops.zeros(())
    if inputs.get("prompt_mask") is not None and inputs.get("ref_logps") is not None:
        prompt_mask = ops.cast(inputs["prompt_mask"], "float32")[:, 1:]
        prompt_kl = ops.sum(kl * prompt_mask) / ops.maximum(ops.sum(prompt_mask), 1.0)
        if prompt_kl_coef:
            loss = loss + prompt_kl_coef * prompt_kl
    values = {
        "loss": loss,
        "kl": ops.sum(kl * mask) / tokens,
        "kl/prompt": prompt_kl,
        "entropy": ops.sum(ops.stop_gradient(entropy) * mask) / tokens,
        "clip_ratio/low_mean": low,
        "clip_ratio/high_mean": high,
        "clip_ratio/region_mean": low + high,
    }
    return loss, values


@keras.saving.register_keras_serializable(package="kzoo")
class TokenLogps(keras.Model):
    """`predict_on_batch(token_ids)` -> per-token log-probs (rows, L - 1) of `model`.

    With `adapters_off`, the LoRA adapters of `model` are skipped (the reference of a LoRA
    policy). Keras compiles the predict function on any backend.

    Args:
        model: CausalLM. the scored model.
        temperature: float. logits are divided by it.
        adapters_off: bool. score the base weights of a LoRA model.
    """

    def __init__(self, model, temperature: float = 1.0, adapters_off: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        self.temperature = float(temperature)
        self.adapters_off = adapters_off

    def call(self, token_ids):
        if self.adapters_off:
            with lora_disabled(self.model):
                return token_logps(self.model, token_ids, self.temperature)[0]
        return token_logps(self.model, token_ids, self.temperature)[0]


@keras.saving.register_keras_serializable(package="kzoo")
class PolicyGradientModel(PolicyModel):
    """Trains `policy` on scored generation batches with GRPO's or RLOO's loss.

    Args:
        policy: CausalLM. the model being tuned.
        algorithm: str. "grpo" or "rloo".
        beta: float. GRPO: weight of the per-token k3 KL to the reference in the loss (0: no
            reference at all). RLOO folds its KL into the rewards before the step, so the
            step itself does not use beta.
        epsilon: float. lower clip range: ratios below 1 - epsilon stop pushing down.
        epsilon_high: float or None. upper clip range (DAPO's clip-higher); None = epsilon.
        loss_type: str. GRPO's reduction, one of `kzoo.losses.policy_gradient.LOSS_TYPES`.
        temperature: float. the sampling temperature (log-probs use logits / temperature).
        max_completion_length: int or None. "dr_grpo"'s fixed length.
        prompt_kl_coef: float. weight of the k3 KL on the prompt tokens (see `objective`).
        **kwargs: passed to `keras.Model`.

    Batches are dicts: "token_ids" (rows, L) int, "completion_mask" (rows, L) float (1.0 on
    completion tokens that count), "advantages" (rows,), optionally "old_logps" and
    "ref_logps" (rows, L - 1), "prompt_mask" (rows, L) and "num_items" (rows,) (every entry
    the generation batch's completion-token count, DAPO's divisor).
    """

    # The reference's log-probs come in the batch ("ref_logps", scored by the rollout).
    takes_reference = False
    default_optimizer = "adam"

    def __init__(self, policy, algorithm: str = "grpo", beta: float = 0.0,
                 epsilon: float = 0.2, epsilon_high: float | None = None,
                 loss_type: str = "dapo", temperature: float = 1.0,
                 max_completion_length: int | None = None, prompt_kl_coef: float = 0.0,
                 **kwargs):
        super().__init__(policy, **kwargs)
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {list(ALGORITHMS)}. Received: "
                             f"{algorithm!r}")
        if loss_type not in pg.LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {list(pg.LOSS_TYPES)}. Received: "
                             f"{loss_type!r}")
        if loss_type == "dr_grpo" and not max_completion_length:
            raise ValueError("loss_type='dr_grpo' needs max_completion_length")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive. Received: {temperature!r}")
        self.algorithm = algorithm
        self.beta = float(beta)
        self.epsilon = float(epsilon)
        self.epsilon_high = float(epsilon if epsilon_high is None else epsilon_high)
        self.loss_type = loss_type
        self.temperature = float(temperature)
        self.max_completion_length = max_completion_length
        self.prompt_kl_coef = float(prompt_kl_coef)
        self.track(METRIC_NAMES)

    def call(self, token_ids, training=False):
        return token_logps(self.policy, token_ids, self.temperature, training=training)[0]

    def _loss_and_values(self, inputs, training):
        logps, entropy = token_logps(self.policy, inputs["token_ids"], self.temperature,
                                     training=training)  # (rows, L-1) each
        return objective(self.algorithm, logps, entropy, inputs, beta=self.beta,
                         epsilon=self.epsilon, epsilon_high=self.epsilon_high,
                         loss_type=self.loss_type,
                         max_completion_length=self.max_completion_length,
                         prompt_kl_coef=self.prompt_kl_coef)

    @backend.stateful_step
    def train_step(self, data):
        inputs, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        values = self.apply_policy_gradients(lambda: self._loss_and_values(inputs, training=True))
        return self.update_means(values)

    @backend.stateful_step
    def test_step(self, data):
        inputs, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.update_means(self._loss_and_values(inputs, training=False)[1])

    def get_config(self):
        return {
            **super().get_config(),
            "algorithm": self.algorithm,
            "beta": self.beta,
            "epsilon": self.epsilon,
            "epsilon_high": self.epsilon_high,
            "loss_type": self.loss_type,
            "temperature": self.temperature,
            "max_completion_length": self.max_completion_length,
            "prompt_kl_coef": self.prompt_kl_coef,
        }


__all__ = ["ALGORITHMS", "PolicyGradientModel", "TokenLogps", "objective", "token_logps"]
