"""Token and position embeddings. The token embedding doubles as the output projection."""

import keras
from keras import ops

from kzoo.layers._checks import fresh_initializer, positive_int


@keras.saving.register_keras_serializable(package="kzoo")
class TokenEmbedding(keras.layers.Layer):
    """Token embedding whose transpose can serve as the output projection (weight tying).

    `call(ids)` embeds token ids; `call(hidden, reverse=True)` maps hidden states to vocabulary
    logits, with the transposed embedding matrix when `tie_weights` is true, else with a separate
    `(hidden_dim, vocab_size)` matrix.

    Args:
        vocab_size: int. number of token ids.
        hidden_dim: int. size of each embedding vector.
        tie_weights: bool. reuse the embedding matrix as the output projection.
        embeddings_initializer: str or initializer. for both matrices.
        **kwargs: passed on to `keras.layers.Layer`.

    Example:
    ```python
    import numpy as np
    from kzoo.layers import TokenEmbedding
    emb = TokenEmbedding(vocab_size=10, hidden_dim=4)
    logits = emb(emb(np.array([[1, 2, 3]])), reverse=True)  # (1, 3, 10)
    ```
    """

    def __init__(self, vocab_size: int, hidden_dim: int, tie_weights: bool = True,
                 embeddings_initializer="uniform", **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = positive_int("vocab_size", vocab_size)
        self.hidden_dim = positive_int("hidden_dim", hidden_dim)
        self.tie_weights = tie_weights
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.vocab_size, self.hidden_dim),
            initializer=fresh_initializer(self.embeddings_initializer),
        )
        if not self.tie_weights:
            self.reverse_embeddings = self.add_weight(
                name="reverse_embeddings", shape=(self.hidden_dim, self.vocab_size),
                initializer=fresh_initializer(self.embeddings_initializer),
            )

    def call(self, inputs, reverse: bool = False):
        if reverse:
            kernel = (
                ops.transpose(self.embeddings) if self.tie_weights else self.reverse_embeddings
            )
            return ops.matmul(inputs, ops.cast(kernel, self.compute_dtype))
        return ops.take(ops.cast(self.embeddings, self.compute_dtype), inputs, axis=0)

    def get_config(self):
        config = super().get_config()
        config.update({
            "vocab_size": self.vocab_size,
            "hidden_dim": self.hidden_dim,
            "tie_weights": self.tie_weights,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        })
        return config


@keras.saving.register_keras_serializable(package="kzoo")
class PositionEmbedding(keras.layers.Layer):
    """Learned absolute position embedding (GPT-2), looked up by position id.

    Args:
        max_length: int. number of positions it can embed.
        hidden_dim: int. size of each embedding vector.
        embeddings_initializer: str or initializer.
        **kwargs: passed on to `keras.layers.Layer`.

    Example:
    ```python
    import numpy as np
    from kzoo.layers import PositionEmbedding
    pos = PositionEmbedding(max_length=16, hidden_dim=4)(np.arange(5)[None])  # (1, 5, 4)
    ```
    """

    def __init__(self, max_length: int, hidden_dim: int, embeddings_initializer="uniform",
                 **kwargs):
        super().__init__(**kwargs)
        self.max_length = positive_int("max_length", max_length)
        self.hidden_dim = positive_int("hidden_dim", hidden_dim)
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.max_length, self.hidden_dim),
            initializer=fresh_initializer(self.embeddings_initializer),
        )

    def call(self, position_ids):
        return ops.take(ops.cast(self.embeddings, self.compute_dtype), position_ids, axis=0)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update({
            "max_length": self.max_length,
            "hidden_dim": self.hidden_dim,
            "embeddings_initializer": keras.initializers.serialize(self.embeddings_initializer),
        })
        return config
