"""The GRPO / RLOO train step is written once against `kzoo.backend`: one step on JAX (jitted,
stateless under `backend.stateful_step`) and on PyTorch (child processes with KERAS_BACKEND=jax
or torch) gives the loss, the metrics and the updated weights that TensorFlow gives from the same
weights and batch (float32, to 1e-5); so does a `test_on_batch` after it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

STEP = r'''
import json, sys
import numpy as np
import keras
from kzoo.alignment.online import PolicyGradientModel
from kzoo.models import CausalLM

algorithm, weights, out = sys.argv[1:4]
model = CausalLM(vocab_size=12, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
                 max_sequence_length=16, dropout=0.0)
model(np.zeros((1, 4), "int32"))
model.load_weights(weights)
trainer = PolicyGradientModel(model, algorithm=algorithm, beta=0.1, epsilon=0.2,
                              prompt_kl_coef=0.5)
trainer.compile(optimizer=keras.optimizers.SGD(0.5))
batch = dict(np.load(sys.argv[4]))
logs = trainer.train_on_batch(batch, return_dict=True)
test = trainer.test_on_batch(batch, return_dict=True)
np.savez(out, *[np.asarray(w) for w in model.get_weights()])
print(json.dumps({"backend": keras.backend.backend(),
                  "logs": {k: float(v) for k, v in logs.items()},
                  "test": {k: float(v) for k, v in test.items()}}))
'''


def _batch(path):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 12, (4, 8)).astype("int32")
    completion = np.zeros((4, 8), "float32")
    completion[:, 4:] = 1.0
    prompt = 1.0 - completion
    np.savez(path, token_ids=ids, completion_mask=completion, prompt_mask=prompt,
             advantages=np.array([1.0, -1.0, 0.5, -0.5], "float32"),
             old_logps=rng.normal(-2.3, 0.4, (4, 7)).astype("float32"),
             ref_logps=rng.normal(-2.3, 0.4, (4, 7)).astype("float32"))


def _step(backend, algorithm, tmp_path):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": str(ROOT)}
    out = tmp_path / f"{backend}_{algorithm}.npz"
    proc = subprocess.run(
        [sys.executable, "-c", STEP, algorithm, str(tmp_path / "w.weights.h5"), str(out),
         str(tmp_path / "batch.npz")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend
    weights = np.load(out)
    return {**result["logs"], **{f"test/{k}": v for k, v in result["test"].items()}}, [
        weights[k] for k in weights.files]


@pytest.fixture(scope="module")
def tensorflow_steps(tmp_path_factory):
    """(folder, initial weights, {algorithm: TensorFlow's (logs, weights)}), filled lazily."""
    import keras

    from kzoo.models import CausalLM

    folder = tmp_path_factory.mktemp("train_step_backends")
    keras.utils.set_random_seed(0)
    model = CausalLM(vocab_size=12, num_layers=1, num_heads=2, hidden_dim=16,
                     intermediate_dim=32, max_sequence_length=16, dropout=0.0)
    model(np.zeros((1, 4), "int32"))
    model.save_weights(folder / "w.weights.h5")
    _batch(folder / "batch.npz")
    return folder, model.get_weights(), {}


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_one_step_equals_tensorflow(backend, algorithm, tensorflow_steps):
    pytest.importorskip(backend)
    folder, initial, done = tensorflow_steps
    if algorithm not in done:
        done[algorithm] = _step("tensorflow", algorithm, folder)
    tf_logs, tf_weights = done[algorithm]
    logs, weights = _step(backend, algorithm, folder)
    assert tf_logs.keys() == logs.keys()
    for key in tf_logs:
        assert logs[key] == pytest.approx(tf_logs[key], rel=1e-5, abs=1e-6), key
    assert tf_logs["kl/prompt"] > 0 and tf_logs["loss"] != 0
    assert tf_logs["test/loss"] != tf_logs["loss"]  # evaluated after the step, on new weights
    moved = max(float(np.max(np.abs(a - b))) for a, b in zip(tf_weights, initial))
    assert moved > 1e-4  # the step did change the weights
    for a, b in zip(tf_weights, weights):
        np.testing.assert_allclose(b, a, atol=1e-5)
