"""`ContrastiveSampler`: contrastive search's settings (Su et al. 2022, "A Contrastive
Framework for Neural Text Generation"); `kzoo.generation.contrastive` runs the search."""

import keras
import numpy as np
from keras import ops

from kzoo.samplers import functional as F
from kzoo.samplers.sampler import Sampler

# What contrastive search combines with, for the refusals here and in the generator.
COMBINES = ("contrastive search combines with ragged batches, stop tokens/sequences, "
            "log-probs and streaming, not with beam search, draft tokens (speculative "
            "decoding), temperature/top-p/min-p or penalties")


def check_penalty_alpha(alpha) -> float:
    """Validate contrastive search's degeneration penalty: a number in [0, 1]."""
    alpha = F._number("penalty_alpha", alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"`penalty_alpha` must be in [0, 1] (0 is greedy decoding). "
                         f"Received: penalty_alpha={alpha}")
    return alpha


def cosine_similarity(context, candidates):
    """Cosine similarity of every candidate to every context vector.

    Args:
        context: float (B, L, H) hidden states of the tokens so far.
        candidates: float (B, K, H) one hidden state per candidate.

    Returns float32 (B, K, L). Like keras-hub's `ContrastiveSampler.similarity`, with the norm
    product floored at 1e-12 so that an all-zero vector (a zeroed slot) gives 0, not NaN.
    """
    context, candidates = ops.cast(context, "float32"), ops.cast(candidates, "float32")
    dots = ops.einsum("bkh,blh->bkl", candidates, context)  # (B, K, L)
    norms = (ops.sqrt(ops.sum(candidates * candidates, axis=-1))[:, :, None]
             * ops.sqrt(ops.sum(context * context, axis=-1))[:, None, :])  # (B, K, L)
    return dots / ops.maximum(norms, 1e-12)


@keras.saving.register_keras_serializable(package="kzoo")
class ContrastiveSampler(Sampler):
    """Contrastive search: of the `top_k` most likely next tokens, take the one maximising
    `(1 - penalty_alpha) * p(token) - penalty_alpha * max cosine(h(token), h(earlier))`, where h
    are the model's final-norm hidden states and "earlier" is every token before it, the
    prompt's included (Su et al. 2022; keras-hub's `ContrastiveSampler(k, alpha)`,
    transformers' `penalty_alpha`, `top_k`). Deterministic; `penalty_alpha=0` is greedy.

    The search needs the hidden states of each candidate, so it runs inside
    `kzoo.generation.Generator` (`kzoo.generation.contrastive`), not on logits alone: as a
    layer it maps logits (batch, vocab) to the `top_k` candidates (batch, top_k), most likely
    first; in keras_hub's protocol (`CausalLM.compile(sampler=...)`) it runs keras-hub's own
    contrastive loop.

    Args:
        penalty_alpha: float. in [0, 1]; the weight of the degeneration penalty.
        top_k: int. >= 1; candidates scored per step.
        **kwargs: passed to `keras.layers.Layer` (name, dtype). The sampling knobs of
            `Sampler` (temperature, top_p, min_p, penalties) and beams are refused.

    Example:
    ```python
    from kzoo import samplers
    from kzoo.generation import Generator
    from kzoo.models import CausalLM
    sampler = samplers.get("contrastive", penalty_alpha=0.6, top_k=4)
    generator = Generator(CausalLM.from_preset("gpt_nano", vocab_size=64), sampler)
    generator.generate([[5, 6, 7]], max_new_tokens=8).token_ids
    ```
    """

    draw_fn = staticmethod(F.greedy_draw)

    def __init__(self, penalty_alpha=0.6, top_k=4, **kwargs):
        refused = sorted(set(kwargs) & {"temperature", "top_p", "min_p", "repetition_penalty",
                                        "frequency_penalty", "presence_penalty", "num_beams"})
        if refused:
            raise ValueError(f"ContrastiveSampler takes penalty_alpha and top_k; got "
                             f"{', '.join(refused)} ({COMBINES}).")
        super().__init__(**kwargs)
        self.penalty_alpha = check_penalty_alpha(penalty_alpha)
        if isinstance(top_k, np.integer):
            top_k = int(top_k)
        # Kept apart from `Sampler.top_k`, which would filter (renormalise) the probabilities
        # the score reads; contrastive search scores the model's own p(token).
        self.k = F._checked_positive_int("top_k", top_k)

    def call(self, logits, token_counts=None):
        del token_counts
        return ops.cast(ops.top_k(ops.cast(logits, "float32"), k=self.k, sorted=True)[1],
                        "int32")

    def compute_output_spec(self, logits, token_counts=None):
        return keras.KerasTensor((logits.shape[0], self.k), dtype="int32")

    # ---- keras_hub protocol: its own contrastive loop, reading `k`, `alpha`, `similarity`
    @property
    def alpha(self) -> float:
        return self.penalty_alpha

    def similarity(self, h1, h2):
        """keras-hub's similarity: h1 (B, L, H) against h2 (B, H) -> (B, L)."""
        return cosine_similarity(h1, h2[:, None, :])[:, 0, :]

    def run_decode_loop(self, next, prompt, cache=None, index=0, mask=None,
                        stop_token_ids=None, hidden_states=None, model=None, **kwargs):
        from keras_hub.samplers import ContrastiveSampler as HubContrastiveSampler

        del kwargs
        return HubContrastiveSampler.__call__(
            self, next, prompt, cache=cache, index=index, mask=mask,
            stop_token_ids=stop_token_ids, hidden_states=hidden_states, model=model)

    def get_config(self):
        # Not Sampler's config: its sampling knobs do not apply (and are refused).
        config = keras.layers.Layer.get_config(self)
        config.update({"penalty_alpha": self.penalty_alpha, "top_k": self.k})
        return config
