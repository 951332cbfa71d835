"""The uncached reference forward the generation tests compare against (importable as
`tests.generation.reference`).

Every reference call is right-padded to one width, `model.max_sequence_length`: a causal
model's logits at a position cannot depend on later positions, so the real positions read the
same as an unpadded call, and every call has one input shape. That matters on JAX, where eager
ops compile again for each new shape (about 1-2 s per shape for a nano model on this CPU): the
references of a test of 3 prompts x 8 steps were most of the JAX run's time. A mask that let
the padding leak into earlier positions would show as a mismatch with the cached generator.
"""

import numpy as np
from keras import ops


def causal_logits(model, seq):
    """The logits of one uncached forward of `seq`, as float64 numpy.

    Args:
        model: kzoo.models.CausalLM. the model.
        seq: list[int]. token ids, at most `model.max_sequence_length` of them.

    Returns:
        np.ndarray (len(seq), vocab): the logits at each position of `seq`.

    Example:
    ```python
    logits = causal_logits(model, [5, 6, 7])  # (3, vocab)
    ```
    """
    seq = list(seq)
    width = model.max_sequence_length
    if not 0 < len(seq) <= width:
        raise ValueError(f"seq: 1 to max_sequence_length={width} ids, got {len(seq)}")
    ids = np.zeros((1, width), "int32")  # (1, width): seq, then padding id 0
    ids[0, :len(seq)] = seq
    return ops.convert_to_numpy(model(ids))[0, :len(seq)].astype("float64")
