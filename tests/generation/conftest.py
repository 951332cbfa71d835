import numpy as np
import pytest

from kzoo.models import CausalLM
from tests.generation.reference import causal_logits


@pytest.fixture(scope="session")
def gpt():
    return CausalLM.from_preset("gpt_nano", vocab_size=48, max_sequence_length=64)


@pytest.fixture(scope="session")
def llama():
    return CausalLM.from_preset("llama_nano", vocab_size=48, max_sequence_length=64)


def _full_forward_greedy(model, prompt, steps):
    """Reference decoding without a cache: the whole sequence through the model each step
    (right-padded to one width: see `tests.generation.reference`)."""
    seq = list(prompt)
    logprobs = []
    for _ in range(steps):
        logits = causal_logits(model, seq)[-1]
        log_softmax = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
        token = int(logits.argmax())
        logprobs.append(float(log_softmax[token]))
        seq.append(token)
    return seq[len(prompt):], logprobs


@pytest.fixture(scope="session")
def full_forward_greedy():
    return _full_forward_greedy
