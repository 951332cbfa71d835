"""Generation results for tests/backends/test_cross_backend.py, on the current Keras backend.

Called by `cross_backend_checks.compute` in the TensorFlow parent and in each child backend.
Keys compared across backends, for every family of `cross_backend_checks.FAMILIES` (the nano
presets of GPT-2, Llama and Gemma 3): greedy and beam tokens and log-probs from ragged
(left-padded) prompts, a stop token, an int8 weights snapshot, streamed greedy tokens, greedy
tokens generated past a sliding window (models with one), and a second greedy call after the
weights changed (a program that baked the first weights in would repeat itself).
Keys starting with `own_` hold what only has to hold within one backend (sampling draws from
each backend's own random generator): same seed -> same tokens, stream == generate, one trace
per shape bucket.
"""

from pathlib import Path

import numpy as np

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4]]  # ragged: row 1 is left-padded by 5
NEW = 10


def _padded(lists, fill=-1, width=NEW) -> np.ndarray:
    """Id lists as one (rows, width) array; missing slots are `fill`."""
    out = np.full((len(lists), width), fill, np.float32)
    for r, row in enumerate(lists):
        out[r, :len(row)] = row
    return out


def generation_checks(workdir: Path, out: dict) -> None:
    import keras

    from kzoo import samplers
    from kzoo.generation import Generator, quantize_for_generation
    from tests.backends.cross_backend_checks import FAMILIES, set_fixed_weights

    for family in FAMILIES:
        model = keras.saving.load_model(workdir / f"{family}.keras")
        greedy = Generator(model, "greedy")
        first = greedy.generate(PROMPTS, max_new_tokens=NEW, return_logprobs=True)
        out[f"gen_{family}_greedy"] = _padded(first.token_ids)
        out[f"gen_{family}_greedy_logp"] = _padded(first.logprobs, 0.0)
        stop = first.token_ids[0][4]
        stopped = greedy.generate(PROMPTS, max_new_tokens=NEW, stop_token_ids=[stop])
        out[f"gen_{family}_stop"] = _padded(stopped.token_ids)
        out[f"gen_{family}_stop_reasons"] = np.array(
            [r == "stop" for r in stopped.finish_reasons], np.float32)
        out[f"gen_{family}_stream"] = _padded(
            [list(greedy.stream(PROMPTS[0], max_new_tokens=NEW))])
        beam = Generator(model, samplers.get("beam", num_beams=3)).generate(
            PROMPTS, max_new_tokens=NEW, return_logprobs=True)
        out[f"gen_{family}_beam"] = _padded(beam.token_ids)
        out[f"gen_{family}_beam_logp"] = _padded(beam.logprobs, 0.0)
        int8 = Generator(model, "greedy", weights=quantize_for_generation(model, "int8"))
        out[f"gen_{family}_int8"] = _padded(int8.generate(PROMPTS, max_new_tokens=NEW).token_ids)

        sampler = Generator(model, samplers.get("top_k", k=20))
        a = sampler.generate(PROMPTS, max_new_tokens=NEW, seed=1).token_ids
        b = sampler.generate([[9, 8, 7, 6, 5, 4, 3], [2, 1]], max_new_tokens=NEW, seed=1)
        again = sampler.generate(PROMPTS, max_new_tokens=NEW, seed=1).token_ids
        other = sampler.generate(PROMPTS, max_new_tokens=NEW, seed=2).token_ids
        streamed = list(sampler.stream(PROMPTS[0], max_new_tokens=NEW, seed=1))
        single = sampler.generate([PROMPTS[0]], max_new_tokens=NEW, seed=1).token_ids[0]
        out[f"own_gen_{family}_flags"] = np.array([
            a == again,  # same seed, same draws
            a != other,  # another seed, other draws
            b.token_ids != a,  # other prompts in the same bucket ...
            sampler.trace_count == 4,  # ... reuse the program: 2 rows, 1 row, stream's 2
            streamed == single,  # stream draws as generate does
            greedy.trace_count == 3,  # greedy: generate, stop (same bucket), stream's 2
        ], np.float32)

        # after the trace counts above: this is another shape bucket
        window = getattr(model, "sliding_window", None)
        if window:
            # past the window: the KV-cached decoder's mask must drop the oldest keys alike
            long = greedy.generate(PROMPTS, max_new_tokens=window + NEW).token_ids
            out[f"gen_{family}_past_window"] = _padded(long, width=window + NEW)
        set_fixed_weights(model, seed=77)  # new weights, same compiled programs
        out[f"gen_{family}_after_update"] = _padded(
            greedy.generate(PROMPTS, max_new_tokens=NEW).token_ids)
