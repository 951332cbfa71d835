"""Attention probabilities of a trained model, recomputed from its weights, and a heatmap.

`kzoo.layers.CausalSelfAttention` returns only its output, not the attention pattern. The
functions here recompute the pattern from the layer's own weights: the fused `query_key_value`
projection (kernel `(hidden, (heads + 2 * kv_heads) * head_dim)`, split as
`[queries | keys | values]`), RoPE when the layer uses it, the causal (and padding) mask and the
softmax. `attention_output` finishes the computation with the values and `output_dense`, so
tests can check that the recomputed pattern reproduces the layer's output exactly.

Example:
```python
import numpy as np
from kzoo.models import CausalLM
from kzoo.viz import model_attention
model = CausalLM.from_preset("llama_nano", vocab_size=32)
probs = model_attention(model, np.array([[1, 2, 3, 4]]))
len(probs), probs[0].shape      # 2 layers, each (batch 1, heads 4, queries 4, keys 4)
```
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from keras import ops


def _split_heads(layer, x, position_ids=None):
    """Queries and keys/values of `x` under `layer`'s weights, RoPE applied: the layer's own
    `split_heads` of its `query_key_value` projection."""
    return layer.split_heads(layer.query_key_value(x), 0, position_ids)


def attention_weights(layer, x, padding_mask=None, position_ids=None):
    """The attention probabilities of a `CausalSelfAttention` layer on input `x`.

    Args:
        layer: kzoo.layers.CausalSelfAttention. a built layer (its weights are used).
        x: float tensor. (batch, seq, hidden_dim), the layer's input (after the block's
            `attention_norm` when the layer sits in a `TransformerBlock`).
        padding_mask: optional int/bool tensor. (batch, seq), 1 for real tokens.
        position_ids: optional int tensor. (batch, seq) RoPE positions; default `arange(seq)`.

    Returns:
        float32 numpy array (batch, num_heads, seq, seq): row `t` is how much query `t`
        attends to each key; every row sums to 1 and is 0 right of the diagonal (and, in a
        sliding-window layer, left of the window).

    Example:
    ```python
    import numpy as np
    from kzoo.layers import CausalSelfAttention
    from kzoo.viz import attention_weights
    layer = CausalSelfAttention(hidden_dim=16, num_heads=4, num_kv_heads=2, use_rope=True)
    x = np.random.rand(1, 5, 16).astype("float32")
    layer(x)                                  # builds the weights
    attention_weights(layer, x).shape         # (1, 4, 5, 5)
    ```
    """
    if not getattr(layer, "built", False):
        raise ValueError(f"Layer {layer.name!r} is not built; call it once before reading "
                         "its attention.")
    x = ops.convert_to_tensor(x, dtype=layer.compute_dtype)
    if len(x.shape) != 3 or x.shape[-1] != layer.hidden_dim:
        raise ValueError(f"`x` must have shape (batch, seq, {layer.hidden_dim}); "
                         f"received {tuple(x.shape)}.")
    query, key, _ = _split_heads(layer, x, position_ids)
    seq = ops.shape(query)[1]
    groups = layer.num_heads // layer.num_kv_heads
    # Each kv head serves `groups` consecutive query heads: repeat it to line up with queries.
    key = ops.repeat(key, groups, axis=2)  # (batch, seq, heads, head_dim)
    scores = ops.einsum("bqnh,bknh->bnqk", ops.cast(query, "float32"),
                        ops.cast(key, "float32")) * layer.scale  # (batch, heads, seq, seq)
    # The layer's own mask: causal, its sliding window if any, padding.
    mask = layer.attention_mask(seq, seq, 0, padding_mask)[:, None]  # (1|batch, 1, q, k)
    scores = ops.where(mask, scores, -1e9)
    return np.asarray(ops.convert_to_numpy(ops.softmax(scores, axis=-1)), np.float32)


def attention_output(layer, x, probs, position_ids=None):
    """Finish the attention computation from `probs`: weight the values, project the heads.

    Used to check that `attention_weights` matches what the layer computes:
    `attention_output(layer, x, attention_weights(layer, x))` equals `layer(x)`.

    Args:
        layer: kzoo.layers.CausalSelfAttention. the layer.
        x: float tensor. (batch, seq, hidden_dim), the same input given to `attention_weights`.
        probs: array. (batch, num_heads, seq, seq) from `attention_weights`.
        position_ids: optional int tensor. as for `attention_weights`.

    Returns:
        float32 numpy array (batch, seq, hidden_dim).

    Example:
    ```python
    import numpy as np
    from kzoo.layers import CausalSelfAttention
    from kzoo.viz import attention_output, attention_weights
    layer = CausalSelfAttention(hidden_dim=8, num_heads=2)
    x = np.random.rand(1, 4, 8).astype("float32")
    y = layer(x)
    np.allclose(attention_output(layer, x, attention_weights(layer, x)), y, atol=1e-5)  # True
    ```
    """
    x = ops.convert_to_tensor(x, dtype=layer.compute_dtype)
    _, _, value = _split_heads(layer, x, position_ids)
    batch, seq = ops.shape(value)[0], ops.shape(value)[1]
    groups = layer.num_heads // layer.num_kv_heads
    value = ops.repeat(ops.cast(value, "float32"), groups, axis=2)  # (batch, seq, heads, hd)
    out = ops.einsum("bnqk,bknh->bqnh", ops.convert_to_tensor(probs, "float32"), value)
    out = ops.reshape(out, (batch, seq, layer.num_heads * layer.head_dim))  # (batch, seq, hid)
    out = layer.output_dense(ops.cast(out, layer.compute_dtype))
    return np.asarray(ops.convert_to_numpy(ops.cast(out, "float32")), np.float32)


def as_token_ids(model, token_ids):
    """`token_ids` as an int32 tensor (batch, seq), checked against the model's context."""
    token_ids = np.asarray(token_ids)
    if token_ids.ndim != 2 or not np.issubdtype(token_ids.dtype, np.integer):
        raise ValueError(f"`token_ids` must be an int array (batch, seq); received dtype "
                         f"{token_ids.dtype} and shape {token_ids.shape}.")
    if token_ids.shape[1] > model.max_sequence_length:
        raise ValueError(f"Sequence of length {token_ids.shape[1]} is longer than the model's "
                         f"max_sequence_length={model.max_sequence_length}.")
    return ops.convert_to_tensor(token_ids, "int32")


def model_attention(model, token_ids, padding_mask=None, return_hidden_states=False):
    """Attention probabilities of every block of a kzoo `CausalLM`, from its weights.

    Args:
        model: kzoo.models.CausalLM. the model.
        token_ids: int array. (batch, seq) token ids.
        padding_mask: optional int/bool array. (batch, seq), 1 for real tokens.
        return_hidden_states: bool. also return the final-norm hidden states computed along
            the way (they equal `model.hidden_states(token_ids)`; tests use this).

    Returns:
        a list with one float32 array (batch, num_heads, seq, seq) per block, and with
        `return_hidden_states` the pair `(list, hidden_states)`.

    Example:
    ```python
    import numpy as np
    from kzoo.models import CausalLM
    from kzoo.viz import model_attention
    model = CausalLM.from_preset("gpt_nano", vocab_size=20)
    [p.shape for p in model_attention(model, np.array([[1, 2, 3]]))]   # 2 x (1, 2, 3, 3)
    ```
    """
    x = model.embed(as_token_ids(model, token_ids))  # (batch, seq, hidden)
    patterns = []
    for block in model.blocks:
        patterns.append(attention_weights(block.attention, block.attention_norm(x),
                                          padding_mask=padding_mask))
        x = block(x, padding_mask=padding_mask)
    if return_hidden_states:
        return patterns, np.asarray(ops.convert_to_numpy(model.final_norm(x)), np.float32)
    return patterns


def plot_attention(probs, tokens, path, title: str | None = None, heads=None,
                   columns: int = 4, panel_titles=None) -> Path:
    """Save attention heatmaps (one panel per head) as a PNG.

    Args:
        probs: array. (heads, seq, seq) or (seq, seq) attention probabilities of one sequence.
        tokens: list[str]. the `seq` token labels, shown on both axes.
        path: str or Path. the PNG to write (parent folders are created).
        title: str or None. figure title.
        heads: list[int] or None. which heads to draw; default all.
        columns: int. panels per row.
        panel_titles: list[str] or None. one title per drawn head; default "head i".

    Returns the path written.

    Example:
    ```python
    import numpy as np
    from kzoo.viz import plot_attention
    probs = np.tril(np.ones((3, 3))) / np.arange(1, 4)[:, None]
    plot_attention(probs, ["a", "b", "c"], "attention.png")
    ```
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    probs = np.asarray(probs, np.float32)
    if probs.ndim == 2:
        probs = probs[None]
    if probs.ndim != 3 or probs.shape[1] != probs.shape[2]:
        raise ValueError(f"`probs` must be (heads, seq, seq) or (seq, seq); received "
                         f"shape {probs.shape}.")
    if len(tokens) != probs.shape[-1]:
        raise ValueError(f"{len(tokens)} token labels for a sequence of {probs.shape[-1]}.")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"Plot path must end in .png. Received: {path}")
    heads = list(range(probs.shape[0])) if heads is None else list(heads)
    if panel_titles is not None and len(panel_titles) != len(heads):
        raise ValueError(f"{len(panel_titles)} panel titles for {len(heads)} heads.")
    columns = max(1, min(columns, len(heads)))
    rows = math.ceil(len(heads) / columns)
    size = 0.28 * len(tokens) + 1.2
    figure = Figure(figsize=(size * columns + 0.6, size * rows + (0.5 if title else 0.1)))
    FigureCanvasAgg(figure)
    image = None
    for i, head in enumerate(heads):
        axes = figure.add_subplot(rows, columns, i + 1)
        image = axes.imshow(probs[head], cmap="viridis", vmin=0.0, vmax=1.0)
        axes.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
        axes.set_yticks(range(len(tokens)), tokens, fontsize=7)
        axes.set_title(panel_titles[i] if panel_titles else f"head {head}", fontsize=9)
        axes.set_xlabel("attends to (key)", fontsize=7)
        if i % columns == 0:
            axes.set_ylabel("token (query)", fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.colorbar(image, ax=figure.axes, shrink=0.8, label="attention probability")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=90, bbox_inches="tight")
    return path
