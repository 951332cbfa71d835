"""Named model recipes: flat `CausalLM` arguments for each family and size.

A preset is plain data, so it can be read, printed, diffed and overridden key by key.
"""

import copy

_GPT = dict(
    position_embedding="learned", norm="layernorm", activation="gelu", tie_embeddings=True,
    use_bias=True, norm_epsilon=1e-5,
)
_LLAMA = dict(
    position_embedding="rope", norm="rmsnorm", activation="swiglu", tie_embeddings=False,
    use_bias=False, norm_epsilon=1e-6, rope_max_wavelength=10000.0,
)

PRESETS: dict[str, dict] = {
    "gpt_nano": dict(
        _GPT, vocab_size=256, num_layers=2, num_heads=2, hidden_dim=64, intermediate_dim=256,
        max_sequence_length=128,
        description="GPT-2 style, 2 layers x 64 dims (~0.1M params + embeddings): trains in "
        "seconds on a CPU.",
    ),
    "gpt_baby": dict(
        _GPT, vocab_size=256, num_layers=4, num_heads=4, hidden_dim=128, intermediate_dim=512,
        max_sequence_length=256,
        description="GPT-2 style, nanoGPT's 'baby' CPU shape: 4 layers, 4 heads, 128 dims "
        "(~0.8M params).",
    ),
    "gpt_mini": dict(
        _GPT, vocab_size=256, num_layers=6, num_heads=6, hidden_dim=384, intermediate_dim=1536,
        max_sequence_length=256,
        description="GPT-2 style, nanoGPT's Shakespeare-char shape: 6 layers, 6 heads, 384 dims "
        "(~10.7M params).",
    ),
    "gpt2_124m": dict(
        _GPT, vocab_size=50257, num_layers=12, num_heads=12, hidden_dim=768,
        intermediate_dim=3072, max_sequence_length=1024,
        description="The GPT-2 124M shape: 12 layers, 12 heads, 768 dims, 50,257 tokens, "
        "1,024 positions.",
    ),
    "llama_nano": dict(
        _LLAMA, vocab_size=256, num_layers=2, num_heads=4, num_kv_heads=2, hidden_dim=64,
        intermediate_dim=192, max_sequence_length=128,
        description="Llama style (RoPE, RMSNorm, SwiGLU, grouped-query attention), 2 layers x 64 "
        "dims.",
    ),
    "llama_baby": dict(
        _LLAMA, vocab_size=256, num_layers=4, num_heads=4, num_kv_heads=2, hidden_dim=128,
        intermediate_dim=352, max_sequence_length=256,
        description="Llama style at nanoGPT's baby budget: 4 layers, 4 query / 2 key-value heads, "
        "128 dims.",
    ),
    "llama_mini": dict(
        _LLAMA, vocab_size=256, num_layers=6, num_heads=6, num_kv_heads=2, hidden_dim=384,
        intermediate_dim=1024, max_sequence_length=256,
        description="Llama style, 6 layers, 6 query / 2 key-value heads, 384 dims.",
    ),
    "llama_124m": dict(
        _LLAMA, vocab_size=32000, num_layers=12, num_heads=12, num_kv_heads=4, hidden_dim=768,
        intermediate_dim=2048, max_sequence_length=1024,
        description="Llama style near GPT-2 124M in size: 12 layers, 12 query / 4 key-value "
        "heads, 768 dims, 32,000 tokens.",
    ),
}


def list_presets() -> dict[str, str]:
    """Preset names with a one-line description each.

    Example:
    ```python
    from kzoo.models import list_presets
    for name, description in list_presets().items():
        print(name, "-", description)
    ```
    """
    return {name: preset["description"] for name, preset in PRESETS.items()}


def get_preset(name: str) -> dict:
    """The `CausalLM` arguments of preset `name` (a copy, without its description)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset: {name!r}. Valid presets: {sorted(PRESETS)}")
    args = copy.deepcopy(PRESETS[name])
    args.pop("description")
    return args
