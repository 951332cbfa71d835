"""Model recipes assembled from kzoo layers."""

from kzoo.models.causal_lm import CausalLM
from kzoo.models.presets import get_preset, list_presets

__all__ = ["CausalLM", "get_preset", "list_presets"]
