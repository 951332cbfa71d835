"""A reward model: a scalar head on a `CausalLM`'s final hidden state, trained with `fit` on
preference pairs with the Bradley-Terry loss.

The score of a sequence is the head applied to the hidden state of its last real token (the
end-of-text after the response), so the score has read the whole prompt and response.

Example:
```python
import keras
from kzoo.data.preference import encode_pairs
from kzoo.models import CausalLM
from kzoo.alignment.reward import RewardModel, reward_dataset
backbone = CausalLM.from_preset("gpt_nano", vocab_size=257)
rm = RewardModel(backbone)
rm.compile(optimizer=keras.optimizers.AdamW(1e-4))
# rm.fit(reward_dataset(train_arrays, 16), validation_data=reward_dataset(val_arrays, 16))
```
"""

from __future__ import annotations

import keras
from keras import ops

from kzoo.alignment.base import PolicyModel
from kzoo.losses import BradleyTerryLoss, pairwise_accuracy


@keras.saving.register_keras_serializable(package="kzoo")
class RewardModel(PolicyModel):
    """Scores (pairs, 2, L) token rows; column 0 is the chosen response, column 1 the rejected.

    Call: `model({"token_ids": (pairs, 2, L) ints, "lengths": (pairs, 2) ints})` returns float32
    rewards (pairs, 2). Rows may also be scored alone with `score(token_ids, lengths)`.

    On the alignment base (`kzoo.alignment.base.PolicyModel`, no reference): its `policy` is the
    backbone; `compile` builds the optimizer's slots for the backbone and the head at once. It
    trains through Keras' own step with a compiled loss (Bradley-Terry by default).

    Args:
        backbone: CausalLM. the language model whose hidden states the head reads.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Example:
    ```python
    import numpy as np
    from kzoo.models import CausalLM
    from kzoo.alignment.reward import RewardModel
    rm = RewardModel(CausalLM.from_preset("gpt_nano"))
    rm.score(np.array([[1, 2, 3]]), np.array([3]))   # (1,) float32
    ```
    """

    takes_reference = False

    def __init__(self, backbone, **kwargs):
        super().__init__(backbone, **kwargs)
        self.head = keras.layers.Dense(1, dtype=backbone.dtype_policy, name="reward_head")
        self.head.build((None, backbone.hidden_dim))
        self.built = True

    def score(self, token_ids, lengths, training=False):
        """Rewards of single rows: token_ids (rows, L), lengths (rows,) -> float32 (rows,)."""
        hidden = self.backbone.hidden_states(token_ids, training=training)  # (rows, L, hidden)
        last = ops.maximum(ops.cast(lengths, "int32") - 1, 0)  # index of the last real token
        picked = ops.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]  # (rows, hidden)
        return ops.cast(self.head(picked)[:, 0], "float32")

    def call(self, inputs, training=False):
        ids = inputs["token_ids"]
        length = ops.shape(ids)[-1]
        flat = ops.reshape(ids, (-1, length))  # (pairs * 2, L), rows alternate chosen/rejected
        lengths = ops.reshape(inputs["lengths"], (-1,))
        return ops.reshape(self.score(flat, lengths, training=training), (-1, 2))  # (pairs, 2)

    @property
    def backbone(self):
        """The scored `CausalLM` (the base's `policy`)."""
        return self.policy

    @property
    def metrics(self):
        # Keras' own step: its loss tracker and compiled metrics, not the base's trackers.
        return keras.Model.metrics.fget(self)

    def tuned_variables(self):
        return self.trainable_variables  # the backbone's and the head's

    def compile(self, optimizer="adamw", loss=None, metrics=None, **kwargs):
        """Compile with the Bradley-Terry loss and pairwise accuracy by default."""
        super().compile(
            optimizer=optimizer,
            loss=BradleyTerryLoss() if loss is None else loss,
            metrics=[pairwise_accuracy] if metrics is None else metrics,
            **kwargs,
        )

    def get_config(self):
        config = super().get_config()
        # The key files saved before the base used: old and new `.keras` files load alike.
        config["backbone"] = config.pop("policy")
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
        return cls(backbone, **config)


def reward_dataset(arrays: dict, batch_size: int, shuffle: bool = True, seed: int = 0):
    """(inputs, zeros) batches for `RewardModel.fit`: the label is the column order.

    Example:
    ```python
    ds = reward_dataset(arrays, batch_size=16)
    ```
    """
    from kzoo._quiet import tensorflow

    tf = tensorflow()

    n = len(arrays["token_ids"])
    x = {"token_ids": arrays["token_ids"], "lengths": arrays["lengths"]}
    ds = tf.data.Dataset.from_tensor_slices((x, tf.zeros((n,), tf.float32)))
    if shuffle:
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
