"""`train_online` (the GRPO / RLOO loop: generation, old and reference log-probs, the train step)
runs 2 generation batches on JAX and PyTorch and logs what TensorFlow logs, to 1e-5.

Sampling is greedy (top_k=1), so every backend draws the same completions from the same weights
(their random generators differ); the rewards are seeded noise, so the groups' advantages are
not zero and the policy-gradient term moves the weights (with 2 iterations: ratios away from 1).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMINGS = ("tokens_per_second", "generation_share", "seconds/")

CHILD = r'''
import json, sys
import numpy as np
import keras
from kzoo.alignment.rl import OnlineConfig, build_trainer, train_online
from kzoo.data.prompts import PromptSet
from kzoo.models import CausalLM
from kzoo.tokenizers import CharTokenizer

folder, algorithm = sys.argv[1:3]
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


policy, reference = causal_lm("policy"), causal_lm("reference")
prompts = PromptSet(["ab", "ba", "cd", "dc"], {}, [f"line {i}" for i in range(4)])
cfg = OnlineConfig(algorithm=algorithm, num_generations=4, batch_size=8, max_new_tokens=3,
                   max_prompt_length=4, top_k=1, num_iterations=2, steps_per_generation=2,
                   beta=0.1)
trainer = build_trainer(policy, cfg, keras.optimizers.SGD(0.02))
history = train_online(trainer, tok, prompts, SeededNoise(), cfg, steps=2, reference=reference,
                       log=lambda m: 0)
np.savez(f"{folder}/{keras.backend.backend()}_{algorithm}.npz",
         *[np.asarray(w) for w in policy.get_weights()])
print(json.dumps({"backend": keras.backend.backend(), "history": history}))
'''


def _run(backend, algorithm, folder):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), algorithm],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    saved = np.load(folder / f"{backend}_{algorithm}.npz")
    return result["history"], [saved[k] for k in saved.files]


@pytest.fixture(scope="module")
def tensorflow_runs(tmp_path_factory):
    """(folder, initial policy weights, {algorithm: TensorFlow's (history, weights)})."""
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
    return folder, initial, {}


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_two_generation_batches_equal_tensorflow(backend, algorithm, tensorflow_runs):
    pytest.importorskip(backend)
    folder, initial, done = tensorflow_runs
    if algorithm not in done:
        done[algorithm] = _run("tensorflow", algorithm, folder)
    tf_history, tf_weights = done[algorithm]
    history, weights = _run(backend, algorithm, folder)
    assert len(history) == len(tf_history) == 2
    for tf_logs, logs in zip(tf_history, history):
        assert logs.keys() == tf_logs.keys()
        for key, value in tf_logs.items():
            if not key.startswith(TIMINGS):
                assert logs[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    assert any(abs(logs["loss"]) > 1e-3 for logs in tf_history)
    assert tf_history[-1]["reward_std"] > 0  # the groups' advantages are not zero
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(tf_weights, initial))
    assert moved > 1e-3
    for a, b in zip(tf_weights, weights):
        np.testing.assert_allclose(b, a, atol=1e-5)
