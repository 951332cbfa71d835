"""`train_online` (the GRPO / RLOO loop: generation, old and reference log-probs, the train step)
runs 2 generation batches on JAX and PyTorch and logs what TensorFlow logs, to 1e-5.

Sampling is greedy (top_k=1), so every backend draws the same completions from the same weights
(their random generators differ); the rewards are seeded noise, so the groups' advantages are
not zero and the policy-gradient term moves the weights (with 2 iterations: ratios away from 1).
"""

import numpy as np
import pytest

from tests.helpers import (
    assert_logs_close,
    assert_weights_close,
    installed,
    run_script_here,
    start_backend_children,
)

BACKENDS = ("jax", "torch")
ALGORITHMS = ("grpo", "rloo")
TIMINGS = ("tokens_per_second", "generation_share", "seconds/")

CHILD = r'''
import json, sys
import numpy as np
import keras
from kzoo.alignment.rl import OnlineConfig, build_trainer, train_online
from kzoo.data.prompts import PromptSet
from kzoo.models import CausalLM
from kzoo.tokenizers import CharTokenizer

folder, algorithms = sys.argv[1], sys.argv[2].split(",")
tok = CharTokenizer("abcdxyz")


class SeededNoise:
    """The same rewards on every backend: a numpy generator seeded by the call count."""

    calls = 0

    def __call__(self, prompts, completions, columns, completion_ids, finished):
        SeededNoise.calls += 1
        r = np.random.default_rng(SeededNoise.calls).normal(size=len(completions))
        return r, {"noise": r}


def causal_lm(name):
    model = CausalLM(vocab_size=tok.vocab_size, num_layers=1, num_heads=2, hidden_dim=16,
                     intermediate_dim=32, max_sequence_length=16)
    model(np.zeros((1, 4), "int32"))
    model.load_weights(f"{folder}/{name}.weights.h5")
    return model


histories = {}
for algorithm in algorithms:  # one process runs every algorithm: imports dominate the time
    SeededNoise.calls = 0  # each algorithm sees the rewards it would see in a fresh process
    policy, reference = causal_lm("policy"), causal_lm("reference")
    prompts = PromptSet(["ab", "ba", "cd", "dc"], {}, [f"line {i}" for i in range(4)])
    cfg = OnlineConfig(algorithm=algorithm, num_generations=4, batch_size=8, max_new_tokens=3,
                       max_prompt_length=4, top_k=1, num_iterations=2, steps_per_generation=2,
                       beta=0.1)
    trainer = build_trainer(policy, cfg, keras.optimizers.SGD(0.02))
    histories[algorithm] = train_online(trainer, tok, prompts, SeededNoise(), cfg, steps=2,
                                        reference=reference, log=lambda m: 0)
    np.savez(f"{folder}/{keras.backend.backend()}_{algorithm}.npz",
             *[np.asarray(w) for w in policy.get_weights()])
print(json.dumps({"backend": keras.backend.backend(), "histories": histories}))
'''


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(folder, initial policy weights, {backend: CompletedChild}): one child per backend runs
    both algorithms; TensorFlow's reference runs the same script in this process meanwhile."""
    import keras

    from kzoo.models import CausalLM
    from kzoo.tokenizers import CharTokenizer

    folder = tmp_path_factory.mktemp("online_backends")
    keras.utils.set_random_seed(0)
    for name in ("policy", "reference"):
        model = CausalLM(vocab_size=CharTokenizer("abcdxyz").vocab_size, num_layers=1,
                         num_heads=2, hidden_dim=16, intermediate_dim=32,
                         max_sequence_length=16)
        model(np.zeros((1, 4), "int32"))
        model.save_weights(folder / f"{name}.weights.h5")
        if name == "policy":
            initial = model.get_weights()
    args = [folder, ",".join(ALGORITHMS)]
    with start_backend_children(["-c", CHILD, *args], installed(BACKENDS)) as kids:
        children = {"tensorflow": run_script_here(CHILD, args), **kids.wait()}
    return folder, initial, children


def _result(runs, backend, algorithm):
    """(history, final policy weights) of `algorithm` on `backend`."""
    folder, _, children = runs
    result = children[backend].json()
    assert result["backend"] == backend
    saved = np.load(folder / f"{backend}_{algorithm}.npz")
    return result["histories"][algorithm], [saved[k] for k in saved.files]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_two_generation_batches_equal_tensorflow(backend, algorithm, runs):
    pytest.importorskip(backend)
    initial = runs[1]
    tf_history, tf_weights = _result(runs, "tensorflow", algorithm)
    history, weights = _result(runs, backend, algorithm)
    assert len(history) == len(tf_history) == 2
    for tf_logs, logs in zip(tf_history, history):
        assert_logs_close(logs, tf_logs, skip=TIMINGS, where=algorithm)
    assert any(abs(logs["loss"]) > 1e-3 for logs in tf_history)
    assert tf_history[-1]["reward_std"] > 0  # the groups' advantages are not zero
    assert_weights_close(weights, tf_weights, initial, moved_more_than=1e-3)
