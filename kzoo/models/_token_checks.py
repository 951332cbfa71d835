"""Checks of the token ids a `CausalLM` is called with, cheap enough for every eager call."""

import numpy as np
from keras import ops

from kzoo import backend


def concrete(tensor) -> bool:
    """True when `tensor` holds values now (numpy, or an eager tensor), False while it is
    being traced or compiled (`model.fit`, `predict`, `tf.function`, `jax.jit`): only eager
    calls pay for the vocabulary check, compiled steps never see it."""
    if isinstance(tensor, np.ndarray):
        return True
    return backend.is_concrete(tensor)


def check_vocabulary(vocab_size: int, token_ids) -> None:
    """Refuse ids outside [0, vocab_size) in an eager call (the embedding gather would
    raise a raw backend error on a CPU and return zeros on a GPU). A min and a max over
    the ids in numpy; compiled calls skip it (`concrete`)."""
    if isinstance(token_ids, list | tuple):
        token_ids = np.asarray(token_ids)
    if not concrete(token_ids) or 0 in tuple(token_ids.shape) or "int" not in str(
            token_ids.dtype):
        return  # symbolic, empty, or not ids at all (`_check_token_ids` says so)
    values = ops.convert_to_numpy(token_ids)  # (batch, seq) ints: a small copy
    if values.min() >= 0 and values.max() < vocab_size:
        return
    where = np.argwhere((values < 0) | (values >= vocab_size))[0]
    raise ValueError(
        f"token id {values[tuple(where)]} at {where.tolist()} is outside the vocabulary of "
        f"this model: ids must be in [0, {vocab_size}) (vocab_size={vocab_size})"
    )
