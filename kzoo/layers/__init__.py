"""Reusable Keras layers: attention, feed-forward, transformer block, embeddings, norms."""

from kzoo.layers.activations import get_activation, list_activations
from kzoo.layers.attention import CausalSelfAttention
from kzoo.layers.embedding import PositionEmbedding, TokenEmbedding
from kzoo.layers.feedforward import FeedForward
from kzoo.layers.normalization import RMSNorm, get_norm, list_norms
from kzoo.layers.projection import Projection
from kzoo.layers.rotary import apply_rotary, rotary_cos_sin
from kzoo.layers.transformer_block import TransformerBlock

__all__ = [
    "CausalSelfAttention",
    "FeedForward",
    "PositionEmbedding",
    "Projection",
    "RMSNorm",
    "TokenEmbedding",
    "TransformerBlock",
    "apply_rotary",
    "get_activation",
    "get_norm",
    "list_activations",
    "list_norms",
    "rotary_cos_sin",
]
