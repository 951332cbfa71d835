"""`BeamSampler`: beam search, keeping the `num_beams` most likely continuations."""

import keras
from keras import ops

from kzoo.samplers import functional as F
from kzoo.samplers.sampler import Sampler


@keras.saving.register_keras_serializable(package="kzoo")
class BeamSampler(Sampler):
    """Beam search: at each step keep the `num_beams` sequences of highest total log-probability.

    As a layer it maps logits (batch, vocab) to the `num_beams` best next tokens
    (batch, num_beams), best first; `kzoo.generation.generate` runs the full search with the KV
    cache, and keras_hub's `CausalLM.generate` runs it through `sampler(next, prompt, ...)`.
    With `num_beams=1` it is exactly greedy decoding.

    Args:
        num_beams: int. beams kept per prompt; > 0.
        return_all_beams: bool. in keras_hub's protocol, also return every beam and its score.
        **kwargs: other `Sampler` arguments; `temperature` and the penalties shape the scores.

    Example:
    ```python
    from kzoo.samplers import BeamSampler
    BeamSampler(num_beams=2)([[0.1, 2.0, 0.3]])   # [[1, 2]]
    ```
    """

    draw_fn = staticmethod(F.greedy_draw)

    def __init__(self, num_beams=5, return_all_beams=False, **kwargs):
        super().__init__(**kwargs)
        if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams <= 0:
            raise ValueError(f"`num_beams` must be a positive integer. Received: {num_beams!r}")
        self.num_beams = num_beams
        self.return_all_beams = bool(return_all_beams)

    def log_probabilities(self, logits, token_counts=None):
        """Scores used to rank beams: log-softmax of the processed logits, (batch, vocab)."""
        return ops.log_softmax(self.process_logits(logits, token_counts), axis=-1)

    def call(self, logits, token_counts=None):
        scores = self.log_probabilities(logits, token_counts)
        return ops.cast(ops.top_k(scores, k=self.num_beams, sorted=True)[1], "int32")

    def compute_output_spec(self, logits, token_counts=None):
        return keras.KerasTensor((logits.shape[0], self.num_beams), dtype="int32")

    def run_decode_loop(self, next, prompt, cache=None, index=0, mask=None,
                        stop_token_ids=None, hidden_states=None, model=None, **kwargs):
        """keras_hub's beam loop, reused as is: it only relies on the protocol methods and on
        `num_beams`/`return_all_beams`, which this class provides."""
        from keras_hub.samplers import BeamSampler as HubBeamSampler

        return HubBeamSampler.__call__(
            self, next, prompt, cache=cache, index=index, mask=mask,
            stop_token_ids=stop_token_ids, hidden_states=hidden_states, model=model,
        )

    def get_config(self):
        config = super().get_config()
        config.update({"num_beams": self.num_beams, "return_all_beams": self.return_all_beams})
        return config
