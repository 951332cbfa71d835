"""`CausalLM`'s argument checks and the per-layer settings they resolve to, kept out of
`causal_lm.py` so the model reads as its forward pass.

Owns: the default feed-forward width, the checks of the Qwen3 / Gemma 3 options (`layer_types`,
`sliding_window`, `norm_scale_offset`, `embedding_scale`, `local_rope_max_wavelength`), the
per-block arguments they give (which layers slide, and with which RoPE), the call-input
unpacking and the token-id shape checks.
"""

import inspect
import math

import keras

from kzoo.layers.activations import is_gated
from kzoo.models._token_checks import check_vocabulary

# transformers' names, so a config's `layer_types` is copied as it is.
LAYER_TYPES = ("full_attention", "sliding_attention")

# The constructor arguments `get_config` returns as they are stored on the model.
CONFIG_KEYS = (
    "vocab_size", "num_layers", "num_heads", "hidden_dim", "intermediate_dim", "num_kv_heads",
    "max_sequence_length", "position_embedding", "norm", "activation", "tie_embeddings",
    "use_bias", "dropout", "norm_epsilon", "rope_max_wavelength", "rope_scaling_factor",
    "initializer_range", "attention_impl", "remat", "qkv_bias", "attention_output_bias",
    "feedforward_bias", "head_dim", "qk_norm", "norm_scale_offset", "embedding_scale",
    "post_norms", "sliding_window", "layer_types", "local_rope_max_wavelength",
    "attention_scale",
)


def default_intermediate_dim(hidden_dim: int, activation: str) -> int:
    if not is_gated(activation):
        return 4 * hidden_dim
    # Llama's rule: a gated MLP with 2/3 of 4x keeps the parameter count of a 4x plain MLP.
    return 32 * math.ceil(8 * hidden_dim / 3 / 32)


def _number(name, value, positive=True, optional=True):
    if value is None and optional:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or (positive and value <= 0):
        kind = "a positive number" if positive else "a number"
        raise ValueError(f"`{name}` must be {kind}{' or None' if optional else ''}. "
                         f"Received: {name}={value!r}")
    return float(value)


def check_layer_types(layer_types, num_layers: int, sliding_window):
    """`layer_types` as a list of `LAYER_TYPES` names, one per layer (or None)."""
    if sliding_window is not None and (
            isinstance(sliding_window, bool) or not isinstance(sliding_window, int)
            or sliding_window < 1):
        raise ValueError(f"`sliding_window` must be a positive integer (tokens a sliding layer "
                         f"sees, itself included) or None. Received: "
                         f"sliding_window={sliding_window!r}")
    if layer_types is None:
        return None
    if isinstance(layer_types, str) or not isinstance(layer_types, list | tuple):
        raise ValueError(f"`layer_types` must be a list of {list(LAYER_TYPES)} entries, one per "
                         f"layer, or None. Received: {layer_types!r}")
    unknown = sorted({str(t) for t in layer_types if t not in LAYER_TYPES})
    if unknown:
        raise ValueError(f"Unknown `layer_types` entries: {unknown}. Valid values: "
                         f"{list(LAYER_TYPES)}")
    if len(layer_types) != num_layers:
        raise ValueError(f"`layer_types` has {len(layer_types)} entries; it needs one per layer "
                         f"(num_layers={num_layers}).")
    return list(layer_types)


def check_options(norm_scale_offset, embedding_scale, local_rope_max_wavelength,
                  attention_scale, qk_norm, post_norms):
    """Refuse bad Qwen3 / Gemma 3 options with one line; returns the numbers as floats."""
    for name, value in (("qk_norm", qk_norm), ("post_norms", post_norms)):
        if not isinstance(value, bool):
            raise ValueError(f"`{name}` must be True or False. Received: {name}={value!r}")
    # A non-RMS norm with `norm_scale_offset` or `qk_norm` is refused by the blocks' norms.
    offset = _number("norm_scale_offset", norm_scale_offset, positive=False, optional=False)
    return (offset, _number("embedding_scale", embedding_scale),
            _number("local_rope_max_wavelength", local_rope_max_wavelength),
            _number("attention_scale", attention_scale))


def layer_kinds(layer_types, num_layers: int, sliding_window) -> list[str]:
    """Each layer's type: `layer_types`, else every layer sliding when a window is set."""
    if layer_types is not None:
        return list(layer_types)
    kind = "full_attention" if sliding_window is None else "sliding_attention"
    return [kind] * num_layers


def block_settings(model, i: int) -> dict:
    """The `TransformerBlock` arguments that differ between layer `i`'s types: its window and
    RoPE. As in transformers, the type picks the RoPE, the window applies only when
    `sliding_window` is set (a "sliding_attention" layer without one attends to everything)."""
    sliding = model.layer_kinds[i] == "sliding_attention"
    settings = dict(
        sliding_window=model.sliding_window if sliding else None,
        rope_max_wavelength=model.rope_max_wavelength,
        rope_scaling_factor=model.rope_scaling_factor, rope_scaling=model.rope_scaling,
    )
    if sliding and model.local_rope_max_wavelength is not None:
        # Gemma 3's local layers: their own base, and none of the global rope scaling.
        settings.update(rope_max_wavelength=model.local_rope_max_wavelength,
                        rope_scaling_factor=1.0, rope_scaling=None)
    return settings


def preset_arguments(cls, args: dict, name: str, overrides: dict) -> dict:
    """A preset's arguments `args` with `overrides`, refusing names `cls` does not take."""
    valid = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    valid |= {"name", "dtype"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ValueError(
            f"Unknown override(s) for preset {name!r}: {unknown}. Valid: {sorted(valid)}"
        )
    return {**args, **overrides}


def unpack_inputs(inputs):
    """`(token_ids, padding_mask, position_ids)` from a tensor or a dict of them."""
    if isinstance(inputs, dict):
        unknown = set(inputs) - {"token_ids", "padding_mask", "position_ids"}
        if "token_ids" not in inputs or unknown:
            raise ValueError(
                "CausalLM inputs must be a tensor of token ids or a dict with 'token_ids' "
                f"and optionally 'padding_mask', 'position_ids'. Received keys: "
                f"{sorted(inputs)}"
            )
        return inputs["token_ids"], inputs.get("padding_mask"), inputs.get("position_ids")
    return inputs, None, None


def check_token_ids(model, token_ids, limit: int | None = None):
    """Refuse token ids that are not int (batch, seq) within `limit` (default the context)."""
    shape = tuple(token_ids.shape)
    if len(shape) != 2:
        raise ValueError(f"`token_ids` must have shape (batch, seq). Received shape: {shape}")
    dtype = keras.backend.standardize_dtype(token_ids.dtype)
    if "int" not in dtype:
        raise ValueError(f"`token_ids` must be an integer tensor. Received dtype: {dtype}")
    limit = model.max_sequence_length if limit is None else limit
    if shape[1] is not None and shape[1] > limit:
        raise ValueError(
            f"Sequence of length {shape[1]} is longer than the model's "
            f"max_sequence_length={model.max_sequence_length} (at most {limit} here). "
            "Use a shorter input or a model with more positions."
        )
    check_vocabulary(model.vocab_size, token_ids)
