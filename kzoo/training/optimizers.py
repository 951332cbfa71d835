"""AdamW configured as in GPT-2/nanoGPT, with no weight decay on norms, biases and embeddings.

Example:

>>> from kzoo.models import CausalLM
>>> from kzoo.training.optimizers import build_adamw, no_decay_variables
>>> model = CausalLM.from_preset("gpt_nano", vocab_size=32)
>>> opt = build_adamw(model, learning_rate=1e-3, weight_decay=0.1)
>>> all(len(v.shape) < 2 or "embedding" in v.path for v in no_decay_variables(model))
True
"""

from __future__ import annotations

import keras

from kzoo import backend


def no_decay_variables(model: keras.Model) -> list:
    """Trainable variables exempt from weight decay: every vector (norm scales/offsets,
    biases) and the weights of embedding layers (token and position tables)."""
    embedding_ids = set()
    for layer in model._flatten_layers(include_self=False):
        if "Embedding" in type(layer).__name__:
            # Lookup tables only: an untied output projection ("reverse_embeddings") is a
            # matmul weight and keeps its decay, as in GPT-2/nanoGPT.
            embedding_ids.update(
                id(v) for v in layer.trainable_variables if v.name == "embeddings"
            )
    return [v for v in model.trainable_variables if len(v.shape) < 2 or id(v) in embedding_ids]


@keras.saving.register_keras_serializable(package="kzoo")
class AdamW(keras.optimizers.AdamW):
    """Keras AdamW whose global-norm clipping sees the gradient of the whole global batch.

    Keras 3 (TensorFlow backend) clips each replica's gradient before the cross-replica sum,
    so under MirroredStrategy/MultiWorkerMirroredStrategy `global_clipnorm` clips a partial
    gradient and training drifts from single-device training. Here, with more than one
    replica, the gradients are summed first, clipped, and divided by the replica count (the
    sum Keras then takes gives back the clipped global gradient). On JAX (one program over
    the global batch, `keras.distribution.DataParallel` included) and PyTorch there are no
    per-replica gradients, so this is Keras' own clipping (`kzoo.backend.clip_global_batch`).
    Same arguments as `keras.optimizers.AdamW`.
    """

    def _clip_gradients(self, grads):
        if not self.global_clipnorm:
            return super()._clip_gradients(grads)
        return backend.clip_global_batch(grads, super()._clip_gradients)


def build_adamw(
    model: keras.Model,
    learning_rate,
    weight_decay: float = 0.1,
    beta_1: float = 0.9,
    beta_2: float = 0.95,
    epsilon: float = 1e-8,
    clip_norm: float | None = 1.0,
) -> AdamW:
    """AdamW with decoupled weight decay on matrices only and global-norm gradient clipping.

    Args:
        model: keras.Model. the model whose variables are exempted (see no_decay_variables).
        learning_rate: float | LearningRateSchedule. learning rate.
        weight_decay: float. decoupled decay applied to matrices.
        beta_1: float. first-moment decay.
        beta_2: float. second-moment decay.
        epsilon: float. denominator epsilon (PyTorch's default 1e-8).
        clip_norm: float | None. clip the global gradient norm to this value; None disables.
    """
    optimizer = AdamW(
        learning_rate=learning_rate, weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2,
        epsilon=epsilon, global_clipnorm=clip_norm,
    )
    optimizer.exclude_from_weight_decay(var_list=no_decay_variables(model))
    return optimizer
